"""Studies of trainings at an equal budget, for the scripts that run them (``scripts/study.py``,
``scripts/ablation_study.py``, ``tools/gpu_experiments.py``).

:func:`train_to` trains or resumes one run to its budget with ``msfer train`` in a child process
(its output in the run's log beside it); the ablation study's rows (:data:`ROWS`), the scores of a
finished run (:func:`score`) and the tables of all of them (:func:`summarize`, :func:`table`) are
shared by the ablation study and the GPU experiments. The children run the msfer this module is
part of, from the folder ``cwd``, so that a study's relative paths mean what they meant to the script.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from .files import write_text

# The folder that holds this msfer package: the children import it, not another installed copy.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def run_msfer(run: Path, *args: str, cwd: Path | None = None) -> int:
    """``msfer ARGS`` in a child process run from ``cwd``, its output appended to the run's log; its exit status."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT), "PYTHONUNBUFFERED": "1"}
    with open(log_of(run), "a") as out:
        return subprocess.call([sys.executable, "-m", "msfer.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                               cwd=cwd, env=env)


def log_of(run: Path) -> Path:
    return run.parent / f"{run.name}.log"


def trained_epochs(run: Path) -> int:
    """Epochs in ``run/last.pt`` (0 if there is none)."""
    from .model.checkpoint import load_checkpoint

    return int(load_checkpoint(run / "last.pt")["epoch"]) if (run / "last.pt").exists() else 0


def train_to(run: Path, config: Path, overrides: list[str], epochs: int, on_resume: list[str] = (),
             cwd: Path | None = None) -> None:
    """Train ``run`` to ``epochs`` epochs from ``config`` + ``overrides``, continuing an interrupted run with
    its saved config + ``on_resume`` (overrides that may differ between sessions, such as data locations).

    Raises SystemExit naming the log when ``msfer train`` fails."""
    done = trained_epochs(run)
    if done == epochs:
        return
    if done > epochs:  # its scores would pass for this budget's
        raise SystemExit(f"{run.name} has {done} epochs, more than the study's {epochs}: delete {run} "
                         "or restore the study's epochs")
    if done:
        # the run's own config: a changed budget is refused by the schedule (onecycle, cosine), so say so here
        planned = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
        if planned != epochs:
            raise SystemExit(f"{run.name} was planned for {planned} epochs, the study now says {epochs}: "
                             f"delete {run} to train it afresh, or restore the study's epochs")
        args = ["train", "--resume", str(run), *on_resume]
    else:
        args = ["train", "--config", str(config), "--output-dir", str(run), "--overwrite", *overrides,
                f"train.epochs={epochs}"]
    print(f"{'resuming' if done else 'training'} {run.name} ({done}/{epochs} epochs done)", flush=True)
    code = run_msfer(run, *args, cwd=cwd)
    if code != 0 or trained_epochs(run) < epochs:
        raise SystemExit(f"{run.name} failed (exit {code}): see {log_of(run)}")


# (row, what it is, config, seeds); trained in this order, so that the comparison that matters
# most (full against the plain classifier) is complete first
ROWS = [
    ("full", "full: organs + face + global (scales 1-3), learned regions, focal loss", "full.yaml", (0, 1)),
    ("baseline", "plain classifier (ImageNet MobileNetV2, GAP, linear)", "baseline.yaml", (0, 1)),
    ("full_template", "full, fixed template layout instead of a detector", "full_template.yaml", (0,)),
    ("scales23", "face + global (scales 2-3)", "scales23.yaml", (0,)),
    ("scale3", "global P3 only (scale 3)", "scale3.yaml", (0,)),
    ("full_ce", "full, cross-entropy instead of focal loss", "full_ce.yaml", (0,)),
]
PSEUDO_ROW = ("full_pseudo", "full, pseudo-label regions at test time instead of learned ones")
NEEDS_NO_REGIONS = ("baseline", "full_template", "scale3")


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}_seed{seed}"


def score(run: Path, data: Path, annotations: Path, tcce: Path | None, pseudo: bool, device: str = "cpu") -> dict:
    """Per-image predictions of ``run/best.pt`` on both validation sets; written to ``run/scores.json``."""
    import torch

    from .data.readers import read_dataset
    from .engine.datasets import FaceDataset
    from .engine.evaluate import predict_split, split_metrics
    from .inference.detect_eval import predict_with_detection
    from .inference.recognizer import EmotionRecognizer
    from .model.checkpoint import load_model
    from .regions.annotations import load_annotations

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(device)
    samples = [s for s in read_dataset(data, "fer2013").samples if s.split == "public_test"]
    scores = {}
    variants = [("fer2013_public_test", None)]
    if pseudo:
        variants.append(("fer2013_public_test_pseudo", {"region_source": "pseudo"}))
    for key, overrides in variants:
        model, _ = load_model(run / "best.pt", device, model_overrides=overrides)
        regions = annotations if (model.region_names and annotations) else None
        dataset = FaceDataset(samples, model.input_size, model.region_names,
                              load_annotations(regions) if regions else None)
        predictions = predict_split(model, dataset, device, batch_size=256, pseudo_regions=overrides is not None)
        metrics = split_metrics(predictions, model.region_names,
                                score_regions=getattr(model, "detector", None) is not None)
        scores[key] = {"y_true": predictions["y_true"].tolist(), "y_pred": predictions["probs"].argmax(1).tolist(),
                       **{k: metrics[k] for k in ("overall_accuracy", "mean_class_accuracy")},
                       **{k: metrics[k] for k in ("region_detection", "region_detection_stages") if k in metrics}}
    if tcce is not None:
        val = [s for s in read_dataset(tcce, "folder").samples if s.split == "val"]
        y_pred = predict_with_detection(EmotionRecognizer(run / "best.pt", device=str(device), batch_size=32), val)
        y_true = np.asarray([s.label for s in val])
        scores["tcce_val"] = {"y_true": y_true.tolist(), "y_pred": y_pred.tolist(), **accuracies(y_true, y_pred)}
    write_text(run / "scores.json", json.dumps(scores))
    return scores


def accuracies(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Overall and mean class accuracy (a prediction of 7, no face found, is wrong for every class)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return {"overall_accuracy": float((y_true == y_pred).mean()), "mean_class_accuracy": float(np.mean(recalls))}


def paired_difference(full: list[dict], baseline: list[dict], key: str, resamples: int = 10_000) -> dict:
    """Full minus baseline on validation set ``key``: mean over images of (fraction of full's seeds right -
    fraction of baseline's seeds right), with its 95% percentile-bootstrap interval over images, and
    McNemar's exact test (two-sided) for each seed pair."""
    truth = np.asarray(full[0][key]["y_true"])
    right = {name: np.mean([np.asarray(r[key]["y_pred"]) == truth for r in runs], axis=0)
             for name, runs in (("full", full), ("baseline", baseline))}
    per_image = right["full"] - right["baseline"]
    rng = np.random.default_rng(0)
    means = per_image[rng.integers(0, len(per_image), size=(resamples, len(per_image)))].mean(axis=1)
    mcnemar = []
    for f, b in zip(full, baseline):
        f_right, b_right = np.asarray(f[key]["y_pred"]) == truth, np.asarray(b[key]["y_pred"]) == truth
        only_full, only_base = int((f_right & ~b_right).sum()), int((~f_right & b_right).sum())
        mcnemar.append({"only_full_right": only_full, "only_baseline_right": only_base,
                        "p_value": mcnemar_exact(only_full, only_base)})
    return {"overall_accuracy": float(per_image.mean()),
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "images": int(len(per_image)), "seed_pairs": len(mcnemar), "mcnemar": mcnemar}


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for ``b`` and ``c`` discordant pairs: the binomial(b + c, 1/2) tail."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def summarize(out: Path, budget: dict) -> dict:
    """ablation.json and ablation.md from the finished runs."""
    rows, loaded = {}, {}
    for name, what, _, seeds in ROWS + [(PSEUDO_ROW[0], PSEUDO_ROW[1], None, ROWS[0][3])]:
        source = "full" if name == "full_pseudo" else name
        key = "fer2013_public_test_pseudo" if name == "full_pseudo" else "fer2013_public_test"
        runs = []
        for seed in seeds:
            path = run_dir(out, source, seed) / "scores.json"
            if not path.exists():
                continue
            scores = json.loads(path.read_text())
            if name != "full_pseudo":
                loaded.setdefault(name, []).append(scores)
            run = {"seed": seed, **{k: scores[key][k] for k in ("overall_accuracy", "mean_class_accuracy")}}
            if "tcce_val" in scores and name != "full_pseudo":
                run["tcce_val"] = {k: scores["tcce_val"][k] for k in ("overall_accuracy", "mean_class_accuracy")}
            for extra in ("region_detection", "region_detection_stages"):
                if extra in scores[key]:
                    run[extra] = scores[key][extra]
            runs.append(run)
        rows[name] = {"description": what, "runs": runs}
    result = {"budget": budget, "rows": rows}
    if len(loaded.get("full", [])) and len(loaded.get("baseline", [])):
        pairs = min(len(loaded["full"]), len(loaded["baseline"]))
        full, base = loaded["full"][:pairs], loaded["baseline"][:pairs]
        result["full_minus_baseline"] = paired_difference(full, base, "fer2013_public_test")
        if all("tcce_val" in s for s in full + base):
            result["full_minus_baseline_tcce_val"] = paired_difference(full, base, "tcce_val")
    write_text(out / "ablation.json", json.dumps(result, indent=1) + "\n")
    write_text(out / "ablation.md", table(result))
    print(table(result))
    return result


def table(result: dict) -> str:
    def cell(runs: list[dict], get) -> str:
        values = [100 * get(r) for r in runs]
        if not values:
            return "-"
        return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")

    lines = [f"Budget per row: {result['budget']['description']}.", "",
             "| row | seeds | FER2013 public_test overall (%) | mean class (%) | TCCE val overall (%) "
             "| mean class (%) |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"].values():
        runs = row["runs"]
        tcce = [r for r in runs if "tcce_val" in r]
        lines.append(f"| {row['description']} | {len(runs)} | {cell(runs, lambda r: r['overall_accuracy'])} | "
                     f"{cell(runs, lambda r: r['mean_class_accuracy'])} | "
                     f"{cell(tcce, lambda r: r['tcce_val']['overall_accuracy'])} | "
                     f"{cell(tcce, lambda r: r['tcce_val']['mean_class_accuracy'])} |")
    for key, label in (("full_minus_baseline", "FER2013 public_test"), ("full_minus_baseline_tcce_val", "TCCE val")):
        if key in result:
            d = result[key]
            lines.append(f"\nFull minus plain classifier, {label} ({d['images']} images, "
                         f"{d['seed_pairs']} seed pair(s)): "
                         f"{100 * d['overall_accuracy']:+.1f} points overall accuracy, 95% interval "
                         f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]; McNemar p = "
                         + ", ".join(f"{m['p_value']:.3g}" for m in d["mcnemar"]) + ".")
    return "\n".join(lines) + "\n"
