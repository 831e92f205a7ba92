"""crappify's degradation against Kornia's nearest equivalent, on one resident batch.

Times, in one run and on the same images, Kornia's down/up-sampling +
``RandomJPEG`` + ``RandomGaussianNoise`` pipeline against crappify's own
tensor-op degradation (and each step alone), and prints one JSON line per
pipeline with images/s and the ratio to Kornia's pipeline.

Example:
    $ python -m selfsup_crappify.bench --device cpu --size 64 --batch 32
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup_core.bench import time_call
from selfsup_crappify import CrappifyTask
from selfsup_crappify.jpeg import jpeg


def degradation_pipelines(device: torch.device) -> dict[str, Callable[[Tensor], Tensor]]:
    """Kornia's and crappify's degradations, with like-for-like settings where possible."""
    kornia_jpeg = K.RandomJPEG(jpeg_quality=(10.0, 60.0), p=1.0).to(device)
    kornia_noise = K.RandomGaussianNoise(std=0.05, p=1.0).to(device)
    kornia_both = K.AugmentationSequential(kornia_jpeg, kornia_noise).to(device)

    def kornia_pipeline(x: Tensor) -> Tensor:
        # Kornia has no random down/up-sampling; a fixed factor 2 is the cheapest stand-in.
        small = F.interpolate(x, scale_factor=0.5, mode="area")
        x = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return kornia_both(x)

    same_steps = CrappifyTask(resize_p=1.0, noise_p=1.0, jpeg_p=1.0, text_p=0.0).to(device)
    default = CrappifyTask().to(device)
    everything = CrappifyTask(resize_p=1.0, noise_p=1.0, jpeg_p=1.0, text_p=1.0).to(device)

    def quality(x: Tensor) -> Tensor:
        return torch.randint(10, 61, (len(x),), device=x.device)

    return {
        "kornia: down/up x2 + RandomJPEG + RandomGaussianNoise": kornia_pipeline,
        "crappify: down/up + jpeg + noise (all p=1, no text)": lambda x: same_steps.degrade(x)[0],
        "crappify: all four steps p=1": lambda x: everything.degrade(x)[0],
        "crappify: defaults": lambda x: default.degrade(x)[0],
        "kornia: RandomJPEG alone": kornia_jpeg,
        "crappify: jpeg alone": lambda x: jpeg(x, quality(x)),
        "kornia: RandomGaussianNoise alone": kornia_noise,
        "torch.randn noise alone": lambda x: (x + 0.05 * torch.randn_like(x)).clamp(0, 1),
    }


def bench_degradations(device: torch.device, size: int, batch: int, repeats: int,
                       warmup: int = 2) -> list[dict[str, Any]]:
    """Time each pipeline of :func:`degradation_pipelines`; one record each."""
    images = torch.rand(batch, 3, size, size, device=device)
    records = []
    for name, fn in degradation_pipelines(device).items():
        seconds = time_call(lambda fn=fn: fn(images), device, repeats, warmup)
        records.append({"bench": "degradation", "pipeline": name, "images_per_s": round(batch / seconds, 1)})
    base = records[0]["images_per_s"]
    for record in records:
        record["vs_kornia_pipeline"] = round(record["images_per_s"] / base, 2)
    return records


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m selfsup_crappify.bench``."""
    parser = argparse.ArgumentParser(prog="python -m selfsup_crappify.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--size", type=int, default=64, help="image side (default: 64)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls, median reported (default: 5)")
    args = parser.parse_args(argv)
    for name in ("size", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for record in bench_degradations(device, args.size, args.batch, args.repeats):
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
