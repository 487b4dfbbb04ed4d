"""``msfer evaluate``: measure a model on one split of a dataset: face crops through the engine
(:func:`msfer.engine.evaluate.evaluate_crops`), whole photos through the pipeline
(:func:`msfer.inference.detect_eval.evaluate_photos`).

    msfer evaluate --data /data/fer2013 --format fer2013 --split public_test --out eval/ [--weights W] [--tta]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.evaluate import evaluate_crops, split_samples, write_evaluation
from ..errors import MsferError
from ..files import ready_folder
from ..inference.detect_eval import evaluate_photos
from ..inference.recognizer import EmotionRecognizer
from .options import add_decision_argument, add_model_arguments, check_at_least_one, model_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset root (or file, for CSV formats)")
    parser.add_argument("--format", required=True, help="dataset format, e.g. fer2013, rafdb, ferplus, folder")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (e.g. public_test, test); default: every sample of the dataset")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json and confusion_matrix.png")
    parser.add_argument("--tta", action="store_true",
                        help="horizontal-flip test-time augmentation (mean of both softmaxes)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="region pseudo-labels (JSONL of 'msfer annotate') to score the region detector against")
    parser.add_argument("--region-source", choices=("pseudo",), default=None,
                        help="where the head's regions come from: the model's own (its region_source: learned, "
                             "pseudo or none; default), or 'pseudo': the --annotations pseudo-labels")
    add_decision_argument(parser)
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loading worker processes (default 2)")
    parser.add_argument("--detect-faces", action="store_true",
                        help="uncropped photos (JAFFE style): find faces with RetinaFace and classify the largest; "
                             "a photo without a detected face counts as wrong (see 'detection' in metrics.json)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..weights import default_weights_path

    if args.region_source == "pseudo" and args.annotations is None:
        raise MsferError("--region-source pseudo needs --annotations FILE (the pseudo-labels of this dataset)")
    check_at_least_one(args, "batch_size")
    ready_folder(args.out, "--out")  # before the evaluation, not after it
    options = model_options(args)
    options["weights"] = options["weights"] or default_weights_path()
    if args.detect_faces:
        # the recognizer first: it refuses a decision rule the model lacks before the data is read
        recognizer = EmotionRecognizer(**options, tta=args.tta, batch_size=args.batch_size, decision=args.decision)
        samples = split_samples(args.data, args.format, args.split)
        metrics, predictions = evaluate_photos(recognizer, samples)
        metrics.update({"weights": str(options["weights"]), "data": str(args.data), "format": args.format,
                        "split": args.split, "tta": args.tta, "backend": options["backend"], "detect_faces": True})
        detection = metrics["detection"]
        print(f"faces found in {detection['faces_found']} of {len(samples)} photos ({detection['faces_missed']} "
              "missed, counted as wrong)")
    else:
        if options["backend"] != "torch":
            raise MsferError("--backend onnx is for the whole pipeline (--detect-faces), and so is an .onnx file, "
                             "which runs with it: the evaluation of face crops reads the PyTorch model's region "
                             "outputs")
        about = {"weights": str(options["weights"]), "data": str(args.data), "format": args.format,
                 "split": args.split, "tta": args.tta}
        metrics, predictions = evaluate_crops(
            lambda: split_samples(args.data, args.format, args.split), options["weights"], options["device"],
            args.annotations, args.region_source, args.tta, args.decision, args.batch_size, args.num_workers, about)
    written = write_evaluation(metrics, args.out, predictions)
    print("wrote " + ", ".join(map(str, written)))
    return 0
