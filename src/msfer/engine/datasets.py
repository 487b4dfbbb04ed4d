"""The torch side of the data: fixed-size ``uint8`` images with their region boxes.

Work is split so that the CPU does as little as possible per image: a worker decodes
and resizes to ``image_size`` (or reads the in-memory cache), and everything random
happens batched on the device (:mod:`msfer.engine.augment`). The resize is
:func:`msfer.data.transforms.resize_square`, the one every evaluation and inference path
uses. A training set's ``image_size`` may be smaller than the model's input (48 for
FER2013): the augmentation's resampling does the upscaling on the device, and the cache
stays small (FER2013 train: 28,709 x 3 x 48 x 48 bytes = 200 MB). A set that is evaluated
is held at the model's input size, so that its crops are resized once, as in inference.

A set of whole photos (``crop_rule`` given) is cropped by the model's crop rule
(:func:`msfer.faces.crop.crop_face`, the function inference crops detected faces with) around
the face its ``msfer annotate`` record gives (five landmarks and the detector's box, not clipped to
the image, as inference crops it: :func:`msfer.regions.annotations.face_box`), and its
region boxes go through the same 2 x 3 map. Photos without a usable record (status ``ok``) are
left out when the set is built: counted by status in :attr:`FaceDataset.left_out` and logged.

A run's sets are assembled from its config by :func:`build_datasets`: the main set's splits (or
a held-out part of its training split), the weighted extra training sets, and the check that no
training image is a validation image (:func:`check_disjoint`).
"""
from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from ..data.samples import Sample
from ..data.transforms import resize_square
from ..errors import MsferError
from ..faces.crop import CropRule, crop_face, face_transform, map_boxes
from ..labels import EMOTIONS
from ..regions.annotations import face_box, face_box_maybe_clipped
from .config import Config
from .distributed import DistInfo

log = logging.getLogger(__name__)


def region_boxes(record: dict | None, region_names: Sequence[str], image_size: int,
                 transform: np.ndarray | None = None, min_visible: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (``R x 4``, pixels of the ``image_size`` square) and validity (``R``) from an annotation record.

    Only records with status ``ok`` count. ``eyes`` (merged-eyes models) is the union of both eye boxes.
    Without ``transform`` the whole image is the square (scaled per axis); with it (the 2 x 3 map from
    original pixels to a face crop of ``image_size``) each box is the axis-aligned box around its mapped
    corners, clipped to the crop, and valid only if at least ``min_visible`` of its area is left there
    (the rule, and default, of the augmentation's ``data.augment.min_box_visible``: a sliver of a mouth
    at the crop's edge is no detector target).
    """
    boxes = np.zeros((len(region_names), 4), dtype=np.float32)
    valid = np.zeros(len(region_names), dtype=bool)
    if not record or record.get("status") != "ok":
        return boxes, valid
    regions = record["regions"]
    scale = np.array([image_size / record["width"], image_size / record["height"]] * 2, dtype=np.float32)
    for i, name in enumerate(region_names):
        if name == "eyes" and "left_eye" in regions and "right_eye" in regions:
            left, right = regions["left_eye"], regions["right_eye"]
            box = [min(left[0], right[0]), min(left[1], right[1]), max(left[2], right[2]), max(left[3], right[3])]
        elif name in regions:
            box = regions[name]
        else:
            continue
        if transform is None:
            boxes[i] = np.asarray(box, dtype=np.float32) * scale
            valid[i] = True
        else:
            whole = map_boxes(box, transform)[0]
            mapped = np.clip(whole, 0, image_size)
            area = (whole[2] - whole[0]) * (whole[3] - whole[1])
            kept = max(mapped[2] - mapped[0], 0) * max(mapped[3] - mapped[1], 0)
            boxes[i] = mapped
            valid[i] = area > 0 and kept >= min_visible * area
    return boxes, valid


def usable_face(record: dict | None) -> bool:
    """Whether an annotation record gives a face to crop by: status ``ok``, a face box and five landmarks."""
    return bool(record) and record.get("status") == "ok" and "face" in (record.get("regions") or {}) \
        and record.get("landmarks") is not None and len(record["landmarks"]) == 5


class FaceDataset(Dataset):
    """Samples as dicts: ``image`` (``3 x S x S`` uint8), ``grey``, ``boxes``, ``box_valid``, ``label``, ``id``,
    and, when ``soft_label_weight`` w > 0, ``soft_label``: the training target ``w * Sample.soft_label +
    (1 - w) * one-hot(label)`` (7 floats summing to 1; the one-hot alone for a sample without a soft label).

    ``crop_rule``: the images are whole photos, each cropped by the rule around its annotation's face
    (samples without a usable one are left out, see the module docstring); None: each image is the face.
    ``name`` says which set it is in log lines.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        region_names: Sequence[str],
        annotations: dict[str, dict] | None = None,
        soft_label_weight: float = 0.0,
        crop_rule: CropRule | None = None,
        name: str = "dataset",
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.region_names = tuple(region_names)
        self.annotations = annotations or {}
        self.crop_rule = crop_rule
        self.left_out: Counter = Counter()  # photos without a usable face, by annotation status
        self._transforms: list[np.ndarray] = []  # per sample, original pixels -> image_size crop (crop_rule only)
        if crop_rule is not None:
            kept = []
            for sample in self.samples:
                record = self.annotations.get(sample.id)
                if usable_face(record):
                    kept.append(sample)
                    transform, side = face_transform(face_box(record), np.asarray(record["landmarks"]), crop_rule)
                    self._transforms.append(transform * (image_size / side))
                else:
                    self.left_out[record.get("status", "no record") if record else "no record"] += 1
            if self.left_out:
                missing = [s.id for s in self.samples if not usable_face(self.annotations.get(s.id))]
                log.warning("%s: %d of %d photos have no usable face annotation and are left out (%s; e.g. %s)",
                            name, len(missing), len(self.samples),
                            ", ".join(f"{status}: {n}" for status, n in sorted(self.left_out.items())),
                            ", ".join(missing[:3]))
            clipped = [s.id for s in kept if face_box_maybe_clipped(self.annotations[s.id])]
            if clipped and crop_rule.method != "similarity":  # similarity is framed by the landmarks alone
                log.warning("%s: %d of %d photos have a face at the image's edge and an annotation without "
                            "face_box (written before msfer recorded the detector's unclipped box): they are "
                            "cropped around the face box clipped to the image, framed unlike inference's crop of "
                            "the same face; annotate the set again with msfer annotate --overwrite (e.g. %s)",
                            name, len(clipped), len(kept), ", ".join(clipped[:3]))
            if not kept:
                raise MsferError(f"{name}: none of its {len(self.samples)} photos has a usable face annotation "
                                 "(status ok): annotate them with 'msfer annotate' and give the file as its "
                                 "annotations")
            self.samples = kept
        self.soft_label_weight = float(soft_label_weight)
        self._cache: np.ndarray | None = None  # N x 3 x S x S uint8
        self._cache_grey: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def annotated_fraction(self) -> float:
        """Share of samples with a usable (status ``ok``) annotation."""
        usable = sum(1 for s in self.samples if self.annotations.get(s.id, {}).get("status") == "ok")
        return usable / max(len(self.samples), 1)

    def decode(self, index: int) -> tuple[np.ndarray, bool]:
        """Image ``index`` as ``3 x S x S`` uint8, and whether its channels are equal (a grey image)."""
        sample = self.samples[index]
        if self.crop_rule is None:
            pixels = resize_square(sample.load(), self.image_size)
        else:
            record, image = self.annotations[sample.id], np.asarray(sample.load())
            if image.shape[:2] != (record["height"], record["width"]):
                raise MsferError(f"{sample.path or sample.id}: the image is {image.shape[1]} x {image.shape[0]} px but "
                                 f"its annotation was made of a {record['width']} x {record['height']} one: annotate "
                                 "this copy of the dataset again")
            pixels, _ = crop_face(image, face_box(record), np.asarray(record["landmarks"]), self.crop_rule,
                                  self.image_size)
        grey = bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]))
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), grey

    def cache_images(self, num_workers: int = 0) -> None:
        """Decode every image once into one array (shared copy-on-write with DataLoader workers forked later)."""
        size = self.image_size
        cache = np.empty((len(self), 3, size, size), dtype=np.uint8)
        grey = np.empty(len(self), dtype=bool)
        loader = DataLoader(_Decoded(self), batch_size=256, num_workers=num_workers)
        start = 0
        for images, flags in tqdm(loader, desc="caching images", unit="batch", leave=False):
            cache[start : start + len(images)] = images.numpy()
            grey[start : start + len(images)] = flags.numpy()
            start += len(images)
        self._cache, self._cache_grey = cache, grey
        log.info("cached %d images (%.0f MB)", len(self), cache.nbytes / 2**20)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        if self._cache is not None:
            pixels, grey = self._cache[index], bool(self._cache_grey[index])
        else:
            pixels, grey = self.decode(index)
        transform = self._transforms[index] if self.crop_rule is not None else None
        boxes, valid = region_boxes(self.annotations.get(sample.id), self.region_names, self.image_size, transform)
        item = {
            "image": torch.from_numpy(np.array(pixels)),
            "grey": grey,
            "boxes": torch.from_numpy(boxes),
            "box_valid": torch.from_numpy(valid),
            "label": sample.label,
            "id": sample.id,
        }
        if self.soft_label_weight:
            target = np.eye(len(EMOTIONS), dtype=np.float32)[sample.label]
            if sample.soft_label is not None:
                target = self.soft_label_weight * np.asarray(sample.soft_label, np.float32) + \
                    (1 - self.soft_label_weight) * target
            item["soft_label"] = torch.from_numpy(target)
        return item


class ConcatFaceDataset(ConcatDataset):
    """Several :class:`FaceDataset` of one image size drawn as one training set; ``shares[i]`` is the part
    of each epoch's draws set ``i`` gets (see :class:`msfer.engine.distributed.EpochSampler`)."""

    def __init__(self, datasets: Sequence[FaceDataset], shares: Sequence[float]) -> None:
        super().__init__(datasets)
        sizes = {dataset.image_size for dataset in datasets}
        if len(sizes) != 1:
            raise ValueError(f"the training sets hold images of different sizes {sorted(sizes)}")
        self.image_size, self.region_names = datasets[0].image_size, datasets[0].region_names
        self.shares = tuple(float(share) for share in shares)
        self.samples = [sample for dataset in datasets for sample in dataset.samples]

    @property
    def sizes(self) -> list[int]:
        return [len(dataset) for dataset in self.datasets]

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([dataset.labels for dataset in self.datasets])

    def annotated_fraction(self) -> float:
        return float(sum(d.annotated_fraction() * len(d) for d in self.datasets) / max(len(self), 1))

    def drawn_class_frequencies(self, num_classes: int) -> np.ndarray:
        """Each class's share of an epoch's draws (``num_classes``, sums to 1): the sets' class frequencies
        weighted by their ``shares``, not by their sizes (829 photos at share 0.1 count as a tenth)."""
        return sum(share * np.bincount(dataset.labels, minlength=num_classes) / max(len(dataset), 1)
                   for dataset, share in zip(self.datasets, self.shares))


class _Decoded(Dataset):
    """Just the decoded images of a :class:`FaceDataset`, for filling its cache with workers."""

    def __init__(self, dataset: FaceDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        pixels, grey = self.dataset.decode(index)
        return torch.from_numpy(pixels), grey


def build_datasets(config: Config, model: torch.nn.Module, roles: tuple[str, ...], info: DistInfo,
                   photo_val: list | None = None) -> dict[str, FaceDataset]:
    """The datasets of ``roles`` (``train_split``, ``val_split``), sized and ordered for ``model``.

    The training set is the main set's ``train_split`` alone, or with ``data.extra_train`` a
    :class:`ConcatFaceDataset` of it and the extra sets (their ``shares`` for the sampler). Sets with
    ``crop`` are cropped by ``data.crop_rule`` from their annotations. When both roles are built, no
    training sample may be a validation sample (of ``val_split``, or of ``photo_val``: its samples).
    """
    from ..data.readers import read_dataset
    from ..regions.annotations import load_annotations

    data = config["data"]
    if data["root"] is None:
        raise MsferError("data.root is not set: pass data.root=/path/to/dataset")
    learns_regions = getattr(model, "region_source", "none") != "none"
    if learns_regions and not data["annotations"]:
        raise MsferError(f"this model learns from emotion regions (region_source={model.region_source}) but "
                         "data.annotations is not set: make them with 'msfer annotate' and pass data.annotations=FILE, "
                         "or train without regions (model.region_source=none, or a classifier_* model)")
    if data["crop"] and not data["annotations"]:
        raise MsferError("data.crop is on: its faces come from data.annotations, which is not set (make them with "
                         "'msfer annotate' and pass data.annotations=FILE)")
    rule = CropRule.from_dict(data["crop_rule"])
    index = read_dataset(data["root"], data["format"], **data["reader_options"])
    annotations = load_annotations(data["annotations"]) if data["annotations"] else None
    extras = data["extra_train"] if "train_split" in roles else []
    # Every set's samples first: a validation image in a training set stops the run before any image is decoded.
    role_sets, sources = {}, {}
    for role in roles:
        samples = role_samples(index, data, role)
        # A fixed subset (the same for every seed), and never of the validation split: numbers stay comparable.
        if data["limit"] and role == "train_split" and len(samples) > data["limit"]:
            keep = np.random.default_rng(0).choice(len(samples), data["limit"], replace=False)
            samples = [samples[i] for i in sorted(keep)]
        role_sets[role] = samples
        sources[role] = [(f"data.{role}={data[role] or 'holdout'!r} of {data['root']}", data["root"], samples)]
    extra_sets = _extra_samples(extras, learns_regions)
    if "train_split" in roles and data["soft_label_file"]:
        role_sets["train_split"], extra_sets = _teacher_labels(data, role_sets["train_split"], extra_sets, info)
    if "train_split" in roles:
        _check_soft_labels([role_sets["train_split"], *(samples for _, _, samples in extra_sets)], data, info)
    for name, entry, samples in extra_sets:
        sources["train_split"].append((f"{name} (split {entry['split']!r} of {entry['root']})", entry["root"],
                                       samples))
    if "train_split" in roles and ("val_split" in roles or photo_val):
        validation = sources.get("val_split", [])
        if photo_val:
            validation = validation + [(f"data.photo_val (split {data['photo_val']['split']!r} of "
                                        f"{data['photo_val']['root']})", data["photo_val"]["root"], photo_val)]
        check_disjoint(sources["train_split"], validation)

    datasets = {}
    for role, samples in role_sets.items():
        # Only the training set may be stored smaller (its augmentation resamples it); the validation set is
        # held at the input size, resized once as msfer evaluate and inference resize (msfer.data.transforms).
        size = (data["image_size"] or model.input_size) if role == "train_split" else model.input_size
        dataset = FaceDataset(samples, size, model.region_names, annotations,
                              soft_label_weight=data["soft_label_weight"] if role == "train_split" else 0.0,
                              crop_rule=rule if data["crop"] else None, name=f"data.{role}")
        if annotations is not None and info.is_main:
            log.info("%s %r: %d images, %.1f%% with usable region annotations", role, data[role], len(dataset),
                     100 * dataset.annotated_fraction())
        if data["cache_images"]:
            dataset.cache_images(data["num_workers"])
        datasets[role] = dataset
    if extra_sets:
        datasets["train_split"] = _with_extra_sets(datasets["train_split"], extra_sets, model, rule, data, info)
    return datasets


def _check_soft_labels(sets: list[list], data: Config, info: DistInfo) -> None:
    """Say what the training targets are (``sets``: the samples of each training set); refuse a soft-label weight
    without soft labels."""
    weight, samples = data["soft_label_weight"], [sample for part in sets for sample in part]
    soft, total = sum(sample.soft_label is not None for sample in samples), len(samples)
    if weight and not soft:
        raise MsferError(f"data.soft_label_weight={weight} but no training sample (of {data['root']} or "
                         "data.extra_train) has a soft label: read FER+ with data.reader_options={soft_labels: true}, "
                         "or FER2013 with data.reader_options={ferplus: FOLDER}, give a teacher's with "
                         "data.soft_label_file, or set data.soft_label_weight=0")
    if info.is_main and weight:
        log.info("training targets: %g x soft label + %g x one-hot label (%d of the %d training images have a soft "
                 "label; the others train on their label)", weight, 1 - weight, soft, total)
    elif info.is_main and soft:
        log.warning("%d training images have a soft label, unused: data.soft_label_weight is 0 (set it, e.g. 0.5, "
                    "to train on them)", soft)


def _teacher_labels(data: Config, train: list, extra_sets: list[tuple[str, Config, list]],
                    info: DistInfo) -> tuple[list, list[tuple[str, Config, list]]]:
    """The training samples with the soft labels of ``data.soft_label_file`` (:mod:`msfer.engine.teacher`);
    refused when it names none of them (a file made for other data)."""
    from .teacher import load_soft_labels, with_soft_labels

    soft_labels = load_soft_labels(data["soft_label_file"])
    train, found = with_soft_labels(train, data["root"], soft_labels)
    per_set = [("data.root", len(train), found)]
    labelled = []
    for name, entry, samples in extra_sets:
        samples, more = with_soft_labels(samples, entry["root"], soft_labels)
        labelled.append((name, entry, samples))
        per_set.append((name, len(samples), more))
        found += more
    total = len(train) + sum(len(samples) for _, _, samples in extra_sets)
    if not found:
        raise MsferError(f"data.soft_label_file {data['soft_label_file']} names none of the {total} training images "
                         "(its keys are FOLDER/ID: made for other data?); make it for this config with "
                         "scripts/teacher_targets.py")
    if info.is_main:
        log.info("data.soft_label_file: a teacher's soft label for %d of the %d training images", found, total)
        for name, size, named in per_set:
            if size and not named:  # a set added after the file was made trains on its labels alone
                log.warning("data.soft_label_file names none of the %d images of %s: they train on their labels "
                            "only (make the file again with scripts/teacher_targets.py to include them)", size, name)
    return train, labelled


def _extra_samples(extras: list[Config], learns_regions: bool) -> list[tuple[str, Config, list]]:
    """``(name, entry, samples)`` of each ``data.extra_train`` entry, its split read and checked."""
    from ..data.readers import read_dataset

    extra_sets = []
    for i, entry in enumerate(extras):
        name = f"data.extra_train[{i}]"
        if learns_regions and not entry["annotations"]:
            raise MsferError(f"{name} has no annotations, but this model learns from emotion regions: make them "
                             f"with 'msfer annotate {entry['root']}' and give the file as its annotations")
        if entry["crop"] and not entry["annotations"]:
            raise MsferError(f"{name} is cropped (crop: true) but has no annotations to take its faces from")
        extra_index = read_dataset(entry["root"], entry["format"], **entry["reader_options"])
        samples = [s for s in extra_index.samples if s.split == entry["split"]]
        if not samples:
            raise MsferError(f"{name}: split {entry['split']!r} has no samples in {entry['root']}; "
                             f"splits present: {', '.join(extra_index.splits())}")
        extra_sets.append((name, entry, samples))
    return extra_sets


def _with_extra_sets(main: FaceDataset, extra_sets: list[tuple[str, Config, list]], model: torch.nn.Module,
                     rule: CropRule, data: Config, info: DistInfo) -> ConcatFaceDataset:
    """The main training set and the extra sets, each drawn at its weight's share of every epoch."""
    from ..regions.annotations import load_annotations

    parts, shares = [main], [1 - sum(entry["weight"] for _, entry, _ in extra_sets)]
    for name, entry, samples in extra_sets:
        extra = FaceDataset(samples, main.image_size, model.region_names,
                            load_annotations(entry["annotations"]) if entry["annotations"] else None,
                            soft_label_weight=data["soft_label_weight"], crop_rule=rule if entry["crop"] else None,
                            name=name)
        if info.is_main:
            log.info("%s: %d images (%d left out), weight %.3f of each epoch", name, len(extra),
                     sum(extra.left_out.values()), entry["weight"])
        if data["cache_images"]:
            extra.cache_images(data["num_workers"])
        parts.append(extra)
        shares.append(entry["weight"])
    return ConcatFaceDataset(parts, shares)


def sample_key(sample, root: str) -> str:
    """What identifies a sample across datasets: its file's real path, or for images held in a label file
    (CSV) the file's real path and the sample's id."""
    if sample.path is None:
        return f"{_real_folder(str(root))}::{sample.id}"
    path = str(sample.path)
    if os.path.islink(path):  # a linked file: where it points
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    return os.path.join(_real_folder(folder), name)


@functools.lru_cache(maxsize=4096)
def _real_folder(path: str) -> str:
    return os.path.realpath(path)  # one resolution per folder: FER2013 has 30,000 files in 14 folders


def check_disjoint(training: list[tuple[str, str, list]], validation: list[tuple[str, str, list]]) -> None:
    """Raise :class:`MsferError` when a training sample is also a validation sample.

    Each list holds ``(name, root, samples)``; samples are compared by :func:`sample_key`.
    """
    for val_name, val_root, val_samples in validation:
        keys = {sample_key(sample, val_root): sample.id for sample in val_samples}
        for train_name, train_root, train_samples in training:
            shared = [sample.id for sample in train_samples if sample_key(sample, train_root) in keys]
            if shared:
                raise MsferError(f"{len(shared)} training images of {train_name} are also validation images of "
                                 f"{val_name} (e.g. {', '.join(shared[:3])}): a validation set is never trained on; "
                                 "train on another split")


def role_samples(index, data: Config, role: str) -> list:
    """The samples of ``role`` (``train_split`` or ``val_split``); with ``data.holdout``, the two sides of
    :func:`msfer.data.splits.stratified_split` of the training split."""
    from ..data.splits import stratified_split

    source = "train_split" if data["holdout"] else role
    samples = [s for s in index.samples if s.split == data[source]]
    if not samples:
        raise MsferError(f"data.{source}={data[source]!r} has no samples in {data['root']}; "
                         f"splits present: {', '.join(index.splits())}")
    if data["holdout"]:
        train, held_out = stratified_split(samples, data["holdout"]["fraction"], data["holdout"]["seed"])
        samples = train if role == "train_split" else held_out
    return samples
