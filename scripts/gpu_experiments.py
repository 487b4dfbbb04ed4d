"""Train the shipped model and the ablation study on one GPU, in one call of about 9 minutes.

Run from the repository root on a machine with a CUDA GPU, with ``CARRY`` holding
``fer2013.tar.gz`` (from ../shared/data), ``fer2013.jsonl.gz`` (``msfer annotate`` over
both FER2013 splits) and ``mobilenet_v2-b0353104.pth`` (torchvision's ImageNet file)::

    python scripts/gpu_experiments.py --carry .carry --out "$OUT" --minutes 7

1. Measures each run's training speed on the GPU (random batches, a few steps each).
2. Chooses the epochs so that all runs fit in ``--minutes`` if run one after another
   (they run concurrently, which only makes them finish sooner): the ablation rows share
   one equal epoch budget, the shipped model gets the rest.
3. Trains everything concurrently (``msfer train``), then evaluates every best checkpoint
   on FER2013 public_test (validation) with and without flip TTA, and the full models
   also with pseudo-label regions at test time (``msfer evaluate``).
4. Writes ``summary.json``, ``runs.tar.gz`` (configs, logs, metrics; no checkpoints) and
   the shipped model (``msfer_fer2013.pt``, half precision) to ``--out``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TRAIN_IMAGES = 28709
SHIPPED = ("shipped", "configs/gpu.yaml", 0)
# (row name, config, seed): the ablation study of issue 5, at one equal epoch budget.
ABLATIONS = [
    ("baseline", "configs/ablations/baseline.yaml", 0),
    ("baseline", "configs/ablations/baseline.yaml", 1),
    ("scale3", "configs/ablations/scale3.yaml", 0),
    ("scales23", "configs/ablations/scales23.yaml", 0),
    ("full", "configs/ablations/full.yaml", 0),
    ("full", "configs/ablations/full.yaml", 1),
    ("full_ce", "configs/ablations/full_ce.yaml", 0),
]


def setup(carry: Path, work: Path) -> dict[str, str]:
    data = work / "data"
    if not (data / "fer2013").is_dir():
        data.mkdir(parents=True, exist_ok=True)
        with tarfile.open(carry / "fer2013.tar.gz") as tar:
            tar.extractall(data, filter="data")
    annotations = data / "fer2013.jsonl"
    with gzip.open(carry / "fer2013.jsonl.gz", "rb") as src, open(annotations, "wb") as dst:
        shutil.copyfileobj(src, dst)
    torch_home = work / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(carry / "mobilenet_v2-b0353104.pth", torch_home / "hub" / "checkpoints")
    os.environ["TORCH_HOME"] = str(torch_home)
    return {"data.root": str(data / "fer2013"), "data.annotations": str(annotations)}


def images_per_second(config_path: str, overrides: dict[str, str], steps: int = 12) -> float:
    """Training speed of one config on the GPU, measured on random batches (data loading excluded: it is cached)."""
    import torch

    from msfer.engine.config import load_config
    from msfer.model import build_model

    config = load_config(ROOT / config_path, [f"{k}={v}" for k, v in overrides.items()])
    model = build_model(config["model"]).cuda().train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, size = config["train"]["batch_size"], model.input_size
    images = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    regions = len(getattr(model, "region_names", ())) or 1
    corner = torch.rand(batch, regions, 2, device="cuda") * size * 0.5
    targets = {
        "labels": torch.randint(0, 7, (batch,), device="cuda"),
        "boxes": torch.cat([corner, corner + size * 0.3], dim=2),
        "box_valid": torch.ones(batch, regions, dtype=torch.bool, device="cuda"),
    }
    for step in range(steps + 3):
        if step == 3:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(model(images, targets)["losses"].values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    rate = steps * batch / (time.perf_counter() - start)
    del model, optimizer
    torch.cuda.empty_cache()
    return rate


def plan_epochs(rates: dict[str, float], seconds: float, ablation_share: float, max_ablation: int, max_shipped: int):
    """Epochs for the ablation rows (one equal budget) and the shipped model, fitting ``seconds`` run back to back."""
    epoch_seconds = {name: TRAIN_IMAGES / rate * 1.15 for name, rate in rates.items()}  # +15%: validation, loader
    ablation_epoch = sum(epoch_seconds[name] for name, _, _ in ABLATIONS)
    ablation_epochs = max(1, min(max_ablation, int(seconds * ablation_share / ablation_epoch)))
    left = seconds - ablation_epochs * ablation_epoch
    shipped_epochs = max(1, min(max_shipped, int(left / epoch_seconds["shipped"])))
    return ablation_epochs, shipped_epochs


def launch(name: str, config: str, seed: int, epochs: int, overrides: dict[str, str], runs: Path, minutes: float):
    out = runs / name
    args = [sys.executable, "-m", "msfer.cli", "train", "--config", config, "--output-dir", str(out),
            f"train.epochs={epochs}", f"train.seed={seed}", f"train.max_minutes={minutes}",
            *[f"{k}={v}" for k, v in overrides.items()]]
    log = open(runs / f"{name}.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"})


def evaluate(run: Path, data_root: str, annotations: str, tta: bool, pseudo: bool) -> subprocess.Popen:
    tag = "eval" + ("_tta" if tta else "") + ("_pseudo" if pseudo else "")
    args = [sys.executable, "-m", "msfer.cli", "evaluate", "--weights", str(run / "best.pt"), "--data", data_root,
            "--format", "fer2013", "--split", "public_test", "--out", str(run / tag), "--annotations", annotations,
            "--batch-size", "512", "--num-workers", "2"]
    if tta:
        args.append("--tta")
    if pseudo:
        args += ["--regions", "pseudo"]
    log = open(run / f"{tag}.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carry", type=Path, default=ROOT / ".carry", help="folder with the data, annotations and weights")
    parser.add_argument("--out", type=Path, required=True, help="where summary.json, runs.tar.gz and the model go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/msfer-gpu"), help="scratch folder")
    parser.add_argument("--minutes", type=float, default=7.0, help="training time budget, all runs together")
    parser.add_argument("--ablation-share", type=float, default=0.45, help="part of the budget for the ablation rows")
    parser.add_argument("--max-ablation-epochs", type=int, default=10)
    parser.add_argument("--max-shipped-epochs", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="tiny data limit and 1 epoch: check the script end to end")
    args = parser.parse_args()

    started = time.time()
    overrides = setup(args.carry, args.work)
    if args.smoke:
        overrides["data.limit"] = "512"
    runs = args.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)

    configs = {"shipped": SHIPPED[1], **{name: config for name, config, _ in ABLATIONS}}
    rates = {name: images_per_second(config, overrides) for name, config in configs.items()}
    print("training images/s on this GPU:", json.dumps({k: round(v) for k, v in rates.items()}), flush=True)
    if args.smoke:
        ablation_epochs, shipped_epochs = 1, 1
    else:
        ablation_epochs, shipped_epochs = plan_epochs(rates, args.minutes * 60, args.ablation_share,
                                                      args.max_ablation_epochs, args.max_shipped_epochs)
    print(f"plan: ablation rows {ablation_epochs} epochs each, shipped model {shipped_epochs} epochs", flush=True)

    budget = args.minutes + 1.0  # the engine's own stop: a run never outlives the call
    jobs = {"shipped": launch("shipped", SHIPPED[1], SHIPPED[2], shipped_epochs, overrides, runs, budget)}
    for name, config, seed in ABLATIONS:
        jobs[f"{name}_seed{seed}"] = launch(f"{name}_seed{seed}", config, seed, ablation_epochs, overrides, runs, budget)
    for name, job in jobs.items():
        print(f"{name}: exit {job.wait()} at {time.time() - started:.0f}s", flush=True)

    evals = []
    for name in jobs:
        run = runs / name
        if not (run / "best.pt").is_file():
            continue
        for tta in (False, True):
            evals.append(evaluate(run, overrides["data.root"], overrides["data.annotations"], tta, pseudo=False))
        if name.startswith(("full", "shipped")):
            evals.append(evaluate(run, overrides["data.root"], overrides["data.annotations"], True, pseudo=True))
            evals.append(evaluate(run, overrides["data.root"], overrides["data.annotations"], False, pseudo=True))
    for job in evals:
        job.wait()

    summary = {"rates": rates, "ablation_epochs": ablation_epochs, "shipped_epochs": shipped_epochs, "runs": {}}
    for name in jobs:
        run = runs / name
        summary["runs"][name] = {
            tag.name: {k: json.loads(tag.joinpath("metrics.json").read_text()).get(k)
                       for k in ("n", "overall_accuracy", "mean_class_accuracy", "region_detection")}
            for tag in sorted(run.glob("eval*")) if (tag / "metrics.json").is_file()
        }
    summary["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    with tarfile.open(args.out / "runs.tar.gz", "w:gz") as tar:
        tar.add(runs, arcname="runs", filter=lambda info: None if info.name.endswith(".pt") else info)
    if (runs / "shipped" / "best.pt").is_file():
        from msfer.engine.checkpoint import export_weights

        export_weights(runs / "shipped" / "best.pt", args.out / "msfer_fer2013.pt", half=True)
        export_weights(runs / "shipped" / "best.pt", args.out / "msfer_fer2013_fp32.pt", half=False)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
