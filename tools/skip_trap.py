"""The shallow-skip trap table of docs/tasks.md: what a U-Net pretext teaches the encoder.

A plain loop, the same for every row (not the trainer, so that every setting
runs exactly alike): ResNet-18 from scratch on the built-in glyphs at
32 x 32, 2,000 train images, 8 epochs, Adam 1e-3, batch 64, inputs
normalised as the trainer does (``selfsup_core.training.step``). Then:

* kNN (k = 20, cosine, temperature 0.07) of the pooled, frozen encoder
  features: the 1,000 val glyphs against the 2,000 train glyphs (``selfsup
  evaluate``'s protocol);
* restoration metrics (input and output against the original) on 256
  held-out val glyphs, with the same random damage for every row;
* the mean training loss of the last epoch.

One seed per row: differences of 1-2 points are noise. Prints one Markdown
table row per setting (``--rows`` picks some; the default is every row of the
docs' table).

Example:
    $ OMP_NUM_THREADS=1 python tools/skip_trap.py
    $ python tools/skip_trap.py --rows random rotation cutout-0 --epochs 1 --train 256   # a smoke run
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from selfsup_core import create_task
from selfsup_core.data.glyphs import builtin_split
from selfsup_core.evaluation.protocols import LoadedEncoder, frozen_protocols
from selfsup_core.models.encoders import build_encoder
from selfsup_core.models.normalization import Normalizer
from selfsup_core.training.step import pretext_step

# name -> (task, options, U-Net setting as shown)
ROWS: dict[str, tuple[str | None, dict[str, Any], str]] = {
    "random": (None, {}, "-"),
    "rotation": ("rotation", {}, "-"),
    "crappify-sigmoid": ("crappify", {"drop_skips": 0, "residual": False}, "`drop_skips=0`, `residual=false`"),
    "crappify-0": ("crappify", {"drop_skips": 0, "residual": True}, "`drop_skips=0`, `residual=true` (default)"),
    "crappify-1": ("crappify", {"drop_skips": 1, "residual": True}, "`drop_skips=1`, `residual=true`"),
    "crappify-2": ("crappify", {"drop_skips": 2, "residual": True}, "`drop_skips=2`, `residual=true`"),
    "cutout-0": ("cutout", {"drop_skips": 0}, "`drop_skips=0` (default)"),
    "cutout-1": ("cutout", {"drop_skips": 1}, "`drop_skips=1`"),
    "cutout-2": ("cutout", {"drop_skips": 2}, "`drop_skips=2`"),
    "cutout-4": ("cutout", {"drop_skips": 4}, "`drop_skips=4` (no skips)"),
}
VAL_SEED = 12345


def run_row(name: str, args: argparse.Namespace) -> str:
    task_name, options, setting = ROWS[name]
    torch.manual_seed(args.seed)
    train = builtin_split("train", 32, args.train)
    val = builtin_split("val", 32)
    encoder = build_encoder("resnet18")
    normalizer = Normalizer()
    started = time.perf_counter()
    loss_text, restoration = "-", "-"
    if task_name is not None:
        task = create_task(task_name, **options)
        head = task.build_head(encoder)
        optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
        images = train.images.float() / 255
        for _ in range(args.epochs):
            encoder.train()
            head.train()
            losses = []
            for batch in torch.randperm(len(images)).split(64):
                result = pretext_step(task, encoder, head, images[batch], normalizer)
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                optimizer.step()
                losses.append(result.loss.item())
        loss_text = f"{sum(losses) / len(losses):.3f}"
        encoder.eval()
        head.eval()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(VAL_SEED)
            held_out = pretext_step(task, encoder, head, val.take(slice(0, 256)).float() / 255, normalizer)
        m = {k: float(v) for k, v in held_out.metrics.items()}
        if "psnr_masked" in m:
            restoration = (f"masked {m['psnr_masked_input']:.2f} -> {m['psnr_masked']:.2f}; "
                           f"whole {m['psnr_input']:.2f} -> {m['psnr']:.2f} | -")
        elif "psnr" in m:
            restoration = (f"{m['psnr_input']:.2f} -> {m['psnr']:.2f} | "
                           f"{m.get('ssim_input', float('nan')):.3f} -> {m.get('ssim', float('nan')):.3f}")
        elif "acc" in m:
            restoration = f"- (pretext acc {m['acc'] * 100:.1f} %) | -"
    else:
        restoration = "- | -"
    loaded = LoadedEncoder(encoder.eval(), "trained" if task_name else "none", task_name or "none", "resnet18", 32)
    (knn,) = frozen_protocols(loaded, train, val, ("knn",), seed=args.seed)
    shown = {"random": "none (random init)", "rotation": "rotation (4-way), for reference"}.get(name, task_name)
    seconds = time.perf_counter() - started
    return f"| {shown} | {setting} | {restoration} | {loss_text} | {knn.top1 * 100:.1f} % |  <!-- {seconds:.0f} s -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train", type=int, default=2000, help="train glyphs (pretext and kNN bank)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| pretext | U-Net setting | val PSNR in -> out (dB) | val SSIM in -> out | final epoch loss | kNN top-1 |")
    print("|---|---|---|---|---|---|")
    for name in args.rows:
        print(run_row(name, args), flush=True)


if __name__ == "__main__":
    main()
