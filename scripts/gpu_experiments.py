"""Train the shipped model and the ablation study on one GPU, in one call of about 9 minutes.

Run from the repository root on a machine with a CUDA GPU, with ``CARRY`` holding
``fer2013.tar.gz`` (from ../shared/data), ``fer2013.jsonl.gz`` (``msfer annotate`` over
both FER2013 splits) and ``mobilenet_v2-b0353104.pth`` (torchvision's ImageNet file)::

    python scripts/gpu_experiments.py --carry .carry --out "$OUT" --minutes 7

1. Measures each run's training speed on the GPU (random batches, a few steps each).
2. Chooses the epochs so that all runs fit in ``--minutes`` if run one after another
   (they run concurrently, which only makes them finish sooner): the ablation rows share
   one equal epoch budget, the shipped model gets the rest.
3. Trains everything concurrently (``msfer train``; validation on FER2013 public_test
   selects each best.pt), then scores every ablation run as scripts/ablation_study.py does
   on a CPU (FER2013 public_test, the full models also with pseudo-label regions, and TCCE
   val through the whole pipeline when ``CARRY`` holds ``tcce.tar.gz``).
4. Writes ``summary.json``, ``runs.tar.gz`` (configs, logs, metrics, the ablation table;
   no checkpoints) and the shipped model (``msfer_fer2013.pt``, half precision) to ``--out``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ablation_study import NEEDS_NO_REGIONS, ROWS, score, summarize  # scripts/, the folder of this file

TRAIN_IMAGES = 28709
SHIPPED = ("shipped", "configs/gpu.yaml", 0)
# The ablation configs hold the CPU recipe's budget; on the GPU every row gets the same batch, precision and loader.
ABLATION_GPU = {"train.batch_size": "256", "train.lr": "4.0e-3", "train.amp": "bf16", "train.channels_last": "true",
                "data.num_workers": "3"}
# (row name, config, seed) of every ablation run, at one equal epoch budget (scripts/ablation_study.py).
ABLATIONS = [(name, f"configs/ablations/{config}", seed) for name, _, config, seeds in ROWS for seed in seeds]


def msfer(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "msfer.cli", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def run_all(jobs: list, parallel: int) -> None:
    """Start the ``jobs`` (label, callable returning a Popen), at most ``parallel`` at a time; fail on any error."""
    running: list[tuple[str, subprocess.Popen]] = []
    for label, start in jobs:
        if len(running) >= parallel:
            _wait(running.pop(0))
        running.append((label, start()))
        print(f"started {label}", flush=True)
    for item in running:
        _wait(item)


def _wait(item: tuple[str, subprocess.Popen]) -> None:
    label, process = item
    if process.wait() != 0:
        raise SystemExit(f"{label} failed (exit {process.returncode}): see its log")
    print(f"finished {label}", flush=True)


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
    if (carry / "tcce.tar.gz").exists() and not (data / "tcce").is_dir():
        with tarfile.open(carry / "tcce.tar.gz") as tar:
            tar.extractall(data, filter="data")
    return {"data.root": str(data / "fer2013"), "data.annotations": str(annotations)}


def images_per_second(config_path: str, overrides: dict[str, str], steps: int = 12) -> float:
    """Training speed of one config on the GPU, measured on random batches (data loading excluded: it is cached)."""
    import torch

    from msfer.engine.config import load_config
    from msfer.model import build_model

    cuda = torch.cuda.is_available()  # the CPU path only rehearses the script (--smoke)
    device = torch.device("cuda" if cuda else "cpu")
    config = load_config(ROOT / config_path, [f"{k}={v}" for k, v in overrides.items()])
    model = build_model(config["model"]).to(device).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, size = config["train"]["batch_size"] if cuda else 8, model.input_size
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    regions = len(getattr(model, "region_names", ())) or 1
    corner = torch.rand(batch, regions, 2, device=device) * size * 0.5
    targets = {
        "labels": torch.randint(0, 7, (batch,), device=device),
        "boxes": torch.cat([corner, corner + size * 0.3], dim=2),
        "box_valid": torch.ones(batch, regions, dtype=torch.bool, device=device),
    }
    steps = steps if cuda else 1
    for step in range(steps + 3):
        if step == 3:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = sum(model(images, targets)["losses"].values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def plan_epochs(rates: dict[str, float], seconds: float, ablation_share: float, max_ablation: int, max_shipped: int):
    """Epochs for the ablation rows (one equal budget) and the shipped model, fitting ``seconds`` run back to back."""
    epoch_seconds = {name: TRAIN_IMAGES / rate * 1.15 for name, rate in rates.items()}  # +15%: validation, loader
    ablation_epoch = sum(epoch_seconds[name] for name, _, _ in ABLATIONS)
    ablation_epochs = max(1, min(max_ablation, int(seconds * ablation_share / ablation_epoch)))
    left = seconds - ablation_epochs * ablation_epoch
    shipped_epochs = max(1, min(max_shipped, int(left / epoch_seconds["shipped"])))
    return ablation_epochs, shipped_epochs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carry", type=Path, default=ROOT / ".carry",
                        help="folder with the data, annotations and weights")
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

    import torch

    if not torch.cuda.is_available():  # a rehearsal on the CPU
        overrides.update({"train.batch_size": "16", "data.num_workers": "0"})
    ablation_overrides = {**overrides, **(ABLATION_GPU if torch.cuda.is_available() else {})}
    rates = {"shipped": images_per_second(SHIPPED[1], overrides)}
    rates.update({name: images_per_second(config, ablation_overrides) for name, config, _ in ABLATIONS})
    print("training images/s on this GPU:", json.dumps({k: round(v) for k, v in rates.items()}), flush=True)
    if args.smoke:
        ablation_epochs, shipped_epochs = 1, 1
    else:
        ablation_epochs, shipped_epochs = plan_epochs(rates, args.minutes * 60, args.ablation_share,
                                                      args.max_ablation_epochs, args.max_shipped_epochs)
    print(f"plan: ablation rows {ablation_epochs} epochs each, shipped model {shipped_epochs} epochs", flush=True)

    runs_overrides = [f"{k}={v}" for k, v in overrides.items()]
    ablation_args = [f"{k}={v}" for k, v in ablation_overrides.items()] + ["eval.tta=false"]
    budget = f"train.max_minutes={args.minutes + 1.0}"  # the engine's own stop: a run never outlives the call
    jobs = [("shipped", lambda: msfer("train", "--config", str(ROOT / SHIPPED[1]),
                                      "--output-dir", str(runs / "shipped"), f"train.epochs={shipped_epochs}", budget,
                                      *runs_overrides, log=runs / "shipped.log"))]
    jobs += [(f"{name} seed {seed}", lambda n=name, c=config, s=seed: msfer(
                 "train", "--config", str(ROOT / c), "--output-dir", str(runs / f"{n}_seed{s}"), f"train.seed={s}",
                 *[a for a in ablation_args if not (n in NEEDS_NO_REGIONS and a.startswith("data.annotations="))],
                 f"train.epochs={ablation_epochs}", budget, log=runs / f"{n}_seed{s}.log"))
             for name, config, seed in ABLATIONS]
    run_all(jobs, parallel=len(jobs))
    tcce = args.work / "data" / "tcce"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, _, seed in ABLATIONS:
        score(runs / f"{name}_seed{seed}", Path(overrides["data.root"]), Path(overrides["data.annotations"]),
              tcce if tcce.is_dir() else None, pseudo=name == "full", device=device)
    table = summarize(runs, {"epochs": ablation_epochs, "train_images": TRAIN_IMAGES,
                             "description": f"all 28,709 FER2013 train images, {ablation_epochs} epochs, batch 256, "
                                            "bf16, one GPU shared by all runs; validation without TTA"})
    summary = {"rates": rates, "ablation_epochs": ablation_epochs, "shipped_epochs": shipped_epochs, "ablation": table,
               "seconds": time.time() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    with tarfile.open(args.out / "runs.tar.gz", "w:gz") as tar:
        tar.add(runs, arcname="runs", filter=lambda info: None if info.name.endswith(".pt") else info)
    from msfer.engine.checkpoint import export_weights

    export_weights(runs / "shipped" / "best.pt", args.out / "msfer_fer2013.pt", half=True)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
