#!/usr/bin/env python
"""A cheap first signal for a backbone's starting point: linear probes on frozen pooled features, and FLOPs.

    python benchmarks/backbone_probe.py --data ../shared/data [--sizes 112 224] [--fer-train 3000] [--fer-test N]
                                        [--tcce-train 300]
    python benchmarks/backbone_probe.py --flops-only

For each backbone (ImageNet MobileNetV2, the face-identity MobileNet v1 ``faceres``; each with its own
input normalisation) and input size, the frozen network (eval mode) turns every face crop into

* ``last``: the spatial mean of its last feature map (MobileNetV2: the 1280-channel 1x1 conv that msfer
  drops; faceres: ``conv_pw_13``, 1024 ch, its identity descriptor), and
* ``c345``: the spatial means of the C3, C4 and C5 maps msfer's FPN takes, concatenated.

A logistic regression (features standardised; C from {0.01, 0.1, 1} by 3-fold cross-validation on the
train side only) is fitted on a stratified sample of FER2013 train and scored on all of FER2013
public_test, and likewise TCCE train -> all of TCCE val. FER2013 crops are used whole; TCCE photos
(256 px head and shoulders) are cropped like ``msfer predict`` does (RetinaFace's largest face, a square
of the box's longer side), the whole photo where no face is found. Crops are resized with msfer's
``resize_square``. Features are cached in ``--cache`` so a rerun only refits.

This is not the equal-budget fine-tuning comparison (the v2 study's faceres row): a frozen probe says how much
expression the pretrained features already separate linearly, not how well they fine-tune.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from msfer.data.images import load_rgb_array
from msfer.data.transforms import model_input, resize_square
from msfer.faces.crop import DEFAULT_CROP_RULE, native_crop
from msfer.labels import EMOTIONS
from msfer.model.backbones import build_backbone
from msfer.model.mobilenet_v1 import FACERES_MEAN, FACERES_STD
from msfer.model.registry import IMAGENET_MEAN, IMAGENET_STD, build_model, model_config

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {"mobilenet_v2 (ImageNet)": ("mobilenet_v2", IMAGENET_MEAN, IMAGENET_STD),
             "faceres (VGGFace2 identity)": ("faceres", FACERES_MEAN, FACERES_STD)}


def stratified(files: list[tuple[Path, int]], count: int | None, seed: int = 0) -> list[tuple[Path, int]]:
    """``count`` of ``files`` with each class in its share (all of them when ``count`` is None)."""
    if count is None or count >= len(files):
        return files
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in files])
    chosen = []
    for label in range(len(EMOTIONS)):
        members = np.flatnonzero(labels == label)
        take = int(round(count * len(members) / len(files)))
        chosen += list(rng.choice(members, size=min(take, len(members)), replace=False))
    return [files[i] for i in sorted(chosen)]


def listing(folder: Path) -> list[tuple[Path, int]]:
    return [(path, EMOTIONS.index(cls)) for cls in EMOTIONS for path in sorted((folder / cls).glob("*.jpg"))]


def face_crops(files: list[tuple[Path, int]]) -> tuple[list[np.ndarray], int]:
    """Native-resolution face crops of photos, as ``msfer predict`` crops them; (crops, photos without a face)."""
    from msfer.faces.retinaface import RetinaFaceDetector

    detector = RetinaFaceDetector()
    crops, missed = [], 0
    for path, _ in files:
        image = load_rgb_array(path)
        faces = detector.detect([image])[0]
        if not faces:
            crops.append(image)
            missed += 1
            continue
        face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        crops.append(native_crop(image, face.box, face.landmarks, DEFAULT_CROP_RULE)[0])
    return crops, missed


@torch.no_grad()
def features(name: str, mean: list[float], std: list[float], crops: list[np.ndarray], size: int,
             batch: int = 64) -> dict[str, np.ndarray]:
    backbone = build_backbone(name, pretrained=True).eval()
    last_conv = None
    if name == "mobilenet_v2":  # msfer drops the final 1x1 conv to 1280 ch; the probe's "last" keeps it
        from torchvision import models

        from msfer.model.pretrained import imagenet_weights_path
        net = models.mobilenet_v2(weights=None)
        net.load_state_dict(torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True))
        last_conv = net.features[18].eval()
    last, c345 = [], []
    for start in range(0, len(crops), batch):
        pixels = np.stack([resize_square(c, size) for c in crops[start:start + batch]])
        taps = backbone(model_input(pixels, mean, std))
        pooled = [t.mean(dim=(2, 3)) for t in taps.values()]
        c345.append(torch.cat(pooled, 1).numpy())
        last.append((last_conv(taps["c5"]).mean(dim=(2, 3)) if last_conv is not None else pooled[-1]).numpy())
    return {"last": np.concatenate(last), "c345": np.concatenate(c345)}


def probe(train_x, train_y, test_x, test_y) -> tuple[float, float, float]:
    """(overall accuracy, mean class accuracy, chosen C) of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    search = GridSearchCV(pipeline, {"logisticregression__C": [0.01, 0.1, 1.0]}, cv=3, n_jobs=1)
    search.fit(train_x, train_y)
    predicted = search.predict(test_x)
    return (float((predicted == test_y).mean()), float(balanced_accuracy_score(test_y, predicted)),
            search.best_params_["logisticregression__C"])


def flops_table(size: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    print(f"FLOPs (multiply and add counted apart) and parameters at {size} px, batch 1, eval mode:")
    print("| model | backbone | MFLOPs, whole | MFLOPs, backbone | parameters, whole | parameters, backbone |")
    print("|---|---|---|---|---|---|")
    for name in ("msfer_mobilenetv2", "msfer_faceres", "classifier_mobilenetv2", "classifier_faceres"):
        model = build_model({"name": name, "pretrained": False, "input_size": size}).eval()
        images = torch.randn(1, 3, size, size)
        with torch.no_grad(), FlopCounterMode(display=False) as whole:
            model(images)
        with torch.no_grad(), FlopCounterMode(display=False) as body:
            model.backbone(images)
        params = sum(p.numel() for p in model.parameters())
        body_params = sum(p.numel() for p in model.backbone.parameters())
        backbone = model_config(name)["backbone"]
        print(f"| {name} | {backbone} | {whole.get_total_flops() / 1e6:.1f} | {body.get_total_flops() / 1e6:.1f} | "
              f"{params / 1e6:.2f} M | {body_params / 1e6:.2f} M |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder with fer2013/{train,public_test} and tcce/{train,val}")
    parser.add_argument("--sizes", type=int, nargs="+", default=[112])
    parser.add_argument("--fer-train", type=int, default=3000, help="stratified sample of FER2013 train")
    parser.add_argument("--fer-test", type=int, default=None,
                        help="stratified sample of FER2013 public_test (default: all 3,589)")
    parser.add_argument("--tcce-train", type=int, default=300, help="stratified sample of TCCE train")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "probe")
    parser.add_argument("--flops-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    flops_table(112)
    if args.flops_only:
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)

    # TCCE first: it is small, so a run cut short still says something
    sets = {}
    tcce = args.data / "tcce"
    sets["TCCE"] = (stratified(listing(tcce / "train"), args.tcce_train), listing(tcce / "val"), True)
    fer = args.data / "fer2013"
    sets["FER2013"] = (stratified(listing(fer / "train"), args.fer_train),
                       stratified(listing(fer / "public_test"), args.fer_test), False)

    def crops_of(dataset: str, side: str, files: list[tuple[Path, int]], detect: bool) -> list[np.ndarray]:
        if not detect:
            return [load_rgb_array(path) for path, _ in files]
        cached = args.cache / f"crops_{dataset}_{side}_{len(files)}.npy"
        if cached.is_file():
            return list(np.load(cached, allow_pickle=True))
        crops, missed = face_crops(files)
        print(f"{dataset} {side}: {len(files)} photos, {missed} without a face (used whole)", flush=True)
        stored = np.empty(len(crops), dtype=object)
        stored[:] = crops
        np.save(cached, stored, allow_pickle=True)
        return crops

    rows = []
    for dataset, (train, test, detect) in sets.items():
        crops = {side: crops_of(dataset, side, files, detect) for side, files in (("train", train), ("test", test))}
        train_y = np.array([y for _, y in train])
        test_y = np.array([y for _, y in test])
        for label, (name, mean, std) in BACKBONES.items():
            for size in args.sizes:
                found = {}
                for side in ("train", "test"):
                    cached = args.cache / f"{name}_{size}_{dataset}_{side}_{len(crops[side])}.npz"
                    if not cached.is_file():
                        started = time.process_time()
                        np.savez(cached, **features(name, mean, std, crops[side], size))
                        print(f"{label} {size}px {dataset} {side}: {len(crops[side])} crops, "
                              f"{time.process_time() - started:.0f} CPU s", flush=True)
                    found[side] = dict(np.load(cached))
                for kind in ("last", "c345"):
                    overall, mean_class, c = probe(found["train"][kind], train_y, found["test"][kind], test_y)
                    rows.append((label, size, kind, found["train"][kind].shape[1], dataset, len(train), len(test),
                                 overall, mean_class, c))
                    print(rows[-1], flush=True)
    print()
    print("| backbone | input | features | dims | set (train -> val) | overall | mean class | C |")
    print("|---|---|---|---|---|---|---|---|")
    for label, size, kind, dims, dataset, n_train, n_test, overall, mean_class, c in rows:
        names = {"FER2013": "FER2013 train -> public_test", "TCCE": "TCCE train -> val"}
        print(f"| {label} | {size} px | {kind} | {dims} | {names[dataset]} ({n_train} -> {n_test}) | "
              f"{overall:.1%} | {mean_class:.1%} | {c} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
