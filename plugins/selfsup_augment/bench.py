"""Each built-in augmentation against its closest Kornia augmentation, on one resident batch.

Both sides run on the same images, with like-for-like settings (the
built-in's defaults), and are timed with :func:`selfsup_core.bench.time_call`
(median of ``--repeats`` calls, then over ``--rounds`` alternating
rounds). One JSON line per augmentation: images/s of
each and ``speedup`` = ours / Kornia. On the CPU the timing uses one intra-op
thread (``--threads``), as the trainers run augmentations (selfsup_core.threads).

Example:
    $ python -m selfsup_augment.bench --device cpu --size 64 --batch 32
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor

from selfsup_augment.blur import kernel_size
from selfsup_core import create_augmentation
from selfsup_core.bench import time_call

Pair = tuple[str, Callable[[Tensor], Any], str, Callable[[Tensor], Any]]


def pairs(size: int, device: torch.device) -> list[Pair]:
    """``(name, ours, kornia_description, kornia)`` with the same settings on both sides."""
    k = kernel_size(size, size)
    crop_flip = K.AugmentationSequential(K.RandomResizedCrop((size, size), scale=(0.2, 1.0), ratio=(0.75, 1.3333)),
                                         K.RandomHorizontalFlip(p=0.5)).to(device)
    table: list[tuple[str, dict[str, Any], str, torch.nn.Module]] = [
        ("crop_flip", {}, "RandomResizedCrop + RandomHorizontalFlip", crop_flip),
        ("color_jitter", {}, "ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)", K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)),
        ("grayscale", {}, "RandomGrayscale(p=0.2)", K.RandomGrayscale(p=0.2)),
        ("blur", {}, f"RandomGaussianBlur(({k}, {k}), (0.1, 2.0), p=0.5)",
         K.RandomGaussianBlur((k, k), (0.1, 2.0), p=0.5)),
        ("erase", {}, "RandomErasing((0.02, 0.33), (0.3, 3.3), p=0.5)",
         K.RandomErasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5)),
        # Every image augmented: Kornia works on the drawn subset only, ours on the whole batch.
        ("color_jitter", {"p": 1.0}, "ColorJitter(0.4, 0.4, 0.4, 0.1, p=1)", K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)),
        ("grayscale", {"p": 1.0}, "RandomGrayscale(p=1)", K.RandomGrayscale(p=1.0)),
        ("blur", {"p": 1.0}, f"RandomGaussianBlur(({k}, {k}), (0.1, 2.0), p=1)",
         K.RandomGaussianBlur((k, k), (0.1, 2.0), p=1.0)),
        ("erase", {"p": 1.0}, "RandomErasing((0.02, 0.33), (0.3, 3.3), p=1)",
         K.RandomErasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), p=1.0)),
    ]
    return [(name + "".join(f" {k}={v}" for k, v in options.items()),
             create_augmentation(name, **options).to(device), text, kornia.to(device))
            for name, options, text, kornia in table]


def bench_augmentations(device: torch.device, size: int, batch: int, repeats: int,
                        warmup: int = 2, rounds: int = 3) -> list[dict[str, Any]]:
    """Time each pair of :func:`pairs`; one record each.

    Each side's figure is the median over ``rounds`` alternating rounds of
    :func:`~selfsup_core.bench.time_call` (itself a median of ``repeats``
    calls), so a busy spell of a shared machine weighs on both sides alike.
    """
    images = torch.rand(batch, 3, size, size, device=device)
    records = []
    for name, ours, text, kornia in pairs(size, device):
        ours_times, kornia_times = [], []
        for _ in range(rounds):
            ours_times.append(time_call(lambda ours=ours: ours(images), device, repeats, warmup))
            kornia_times.append(time_call(lambda kornia=kornia: kornia(images), device, repeats, warmup))
        ours_s, kornia_s = statistics.median(ours_times), statistics.median(kornia_times)
        records.append({"bench": "augmentation", "augmentation": name, "images_per_s": round(batch / ours_s, 1),
                        "kornia": text, "kornia_images_per_s": round(batch / kornia_s, 1),
                        "speedup": round(kornia_s / ours_s, 2)})
    return records


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m selfsup_augment.bench``."""
    parser = argparse.ArgumentParser(prog="python -m selfsup_augment.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--size", type=int, default=64, help="image side (default: 64)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls, median reported (default: 15)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, median reported (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default: 1)")
    args = parser.parse_args(argv)
    for name in ("size", "batch", "repeats", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(json.dumps({"bench": "setup", "device": str(device), "threads": torch.get_num_threads(),
                      "size": args.size, "batch": args.batch, "repeats": args.repeats, "rounds": args.rounds,
                      "torch": torch.__version__}), flush=True)
    for record in bench_augmentations(device, args.size, args.batch, args.repeats, rounds=args.rounds):
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
