"""Training and inference speed (images/s) of the registered models on this machine.

    python benchmarks/model_speed.py [--models msfer_mobilenetv2 classifier_resnet18] [--size 112] [--channels-last]
        [--out speed.json]

Training: forward with targets (synthetic labels and region boxes) + backward + Adam step at
batch 32. Inference: eval forward under ``torch.no_grad`` at batch 1 and 32. ``--channels-last``
puts model and images in that memory format, as ``train.channels_last`` does. Numbers depend on
whatever else runs on the machine; run it alone for figures worth quoting.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from msfer.model import MODELS, build_model

DEFAULT_MODELS = ["msfer_mobilenetv2", "msfer_resnet18", "msfer_resnet34", "msfer_resnet50",
                  "classifier_mobilenetv2", "classifier_resnet18"]


def synthetic_batch(model: torch.nn.Module, batch: int, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = torch.randn(batch, 3, size, size)
    face = torch.tensor([0.05, 0.05, 0.95, 0.95]) * size
    num_regions = len(model.region_names)
    boxes = model.default_layout(face.expand(batch, 4)) if num_regions else torch.zeros(batch, 0, 4)
    targets = {"labels": torch.randint(0, 7, (batch,)), "boxes": boxes,
               "box_valid": torch.ones(batch, num_regions, dtype=torch.bool)}
    return images, targets


def images_per_second(step, batch: int, seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        step()
        count += 1
    return count * batch / (time.perf_counter() - start)


def measure(name: str, size: int, seconds: float, channels_last: bool = False) -> dict[str, float]:
    model = build_model({"name": name, "pretrained": False, "input_size": size})
    images, targets = synthetic_batch(model, 32, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        loss = sum(model(images, targets)["losses"].values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    result = {"train_b32": images_per_second(train_step, 32, seconds)}
    model.eval()
    with torch.no_grad():
        for batch in (1, 32):
            result[f"infer_b{batch}"] = images_per_second(lambda batch=batch: model(images[:batch]), batch, seconds)
    result["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(MODELS))
    parser.add_argument("--size", type=int, default=112, help="input size in pixels (default 112)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last memory format (train.channels_last)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    print(f"{'model':24s} {'train b32':>10s} {'infer b1':>10s} {'infer b32':>10s} {'params M':>9s}   "
          f"(images/s, {args.size} px, "
          f"{torch.get_num_threads()} threads{', channels-last' if args.channels_last else ''})")
    for name in args.models:
        r = results[name] = measure(name, args.size, args.seconds, args.channels_last)
        print(f"{name:24s} {r['train_b32']:10.1f} {r['infer_b1']:10.1f} {r['infer_b32']:10.1f} {r['params_m']:9.2f}",
              flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": args.size, "channels_last": args.channels_last, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
