"""A teacher's soft labels for a config's training images, to distil it (or an ensemble) into one model.

    python scripts/teacher_targets.py --config configs/v3.yaml data.root=DATA/fer2013 \\
        --weights runs/v3/last.pt runs/v3_seed1/last.pt --out runs/v3_ensemble.npz
    msfer train --config configs/v3.yaml data.root=DATA/fer2013 \\
        data.soft_label_file=runs/v3_ensemble.npz data.soft_label_weight=0.5 output_dir=runs/v3_distilled

Every training image of the config (its main set's training split and each data.extra_train set, cropped as
training crops them) is classified by each model of --weights, without augmentation, and the mean of their
probabilities is written (:mod:`msfer.engine.teacher`). Give the training run the same data and sets.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from msfer.engine.config import load_config
from msfer.engine.teacher import save_soft_labels, teacher_soft_labels
from msfer.errors import MsferError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the training config the student will run")
    parser.add_argument("overrides", nargs="*", help="config overrides, as msfer train takes them (data.root=...)")
    parser.add_argument("--weights", nargs="+", required=True, type=Path,
                        help="the teacher: one model, or several whose probabilities are averaged")
    parser.add_argument("--out", type=Path, required=True, help="the soft-label file to write (.npz)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    misplaced = [str(path) for path in args.weights if "=" in str(path) and not path.exists()]
    if misplaced:
        parser.error(f"{', '.join(misplaced)}: config overrides go before --weights")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        config = load_config(args.config, args.overrides)
        keys, probs = teacher_soft_labels(config, args.weights, args.device)
        save_soft_labels(args.out, keys, probs)
    except MsferError as error:
        parser.error(str(error))
    print(f"{len(keys)} training images' soft labels (mean of {len(args.weights)} teachers) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
