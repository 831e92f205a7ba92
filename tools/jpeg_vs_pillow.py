"""crappify's tensor-op JPEG against Pillow's libjpeg: the table in docs/tasks.md.

For each quality, the PSNR to the original of our JPEG minus that of Pillow's
(dB; positive: ours loses less), and the PSNR of ours against Pillow's decoded
pixels (how close the two outputs are). Rows: 8 built-in glyph images at
64 px, and, when ``$SELFSUP_IMAGENETTE`` (or ``--imagenette``) is given, 8
Imagenette val images (every 300th file) resized to 96 px. CPU only.

Example:
    $ python tools/jpeg_vs_pillow.py
    $ SELFSUP_IMAGENETTE=imagenette2-224 python tools/jpeg_vs_pillow.py
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import torch
from PIL import Image
from selfsup_crappify.jpeg import jpeg

from selfsup_core.data.glyphs import generate_glyphs
from selfsup_core.tasks.metrics import psnr

QUALITIES = (10, 20, 30, 50, 75, 90)


def pillow_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip uint8 ``(B, 3, H, W)`` images through Pillow's JPEG encoder and decoder."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
        decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        pixels = torch.frombuffer(bytearray(decoded.tobytes()), dtype=torch.uint8)
        out.append(pixels.view(decoded.height, decoded.width, 3).permute(2, 0, 1))
    return torch.stack(out)


def imagenette_images(root: Path, count: int = 8, size: int = 96) -> torch.Tensor:
    files = sorted((root / "val").glob("*/*.JPEG"))[::300][:count]
    return torch.stack([
        torch.frombuffer(bytearray(Image.open(f).convert("RGB").resize((size, size)).tobytes()),
                         dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
        for f in files
    ])


def row(name: str, images: torch.Tensor) -> str:
    original = images.float() / 255
    gaps, agreement = [], []
    for quality in QUALITIES:
        ours = jpeg(original, quality)
        theirs = pillow_jpeg(images, quality).float() / 255
        gaps.append(f"{(psnr(ours, original) - psnr(theirs, original)).item():+.3f}")
        agreement.append(psnr(ours, theirs).item())
    return f"| {name} | " + " | ".join(gaps) + f" | {min(agreement):.0f}-{max(agreement):.0f} dB |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imagenette", type=Path, default=os.environ.get("SELFSUP_IMAGENETTE"),
                        help="Imagenette root with val/ (default: $SELFSUP_IMAGENETTE; none: glyphs only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| images | " + " | ".join(f"q={q}" for q in QUALITIES) + " | ours vs Pillow |")
    print("|---|" + "---|" * (len(QUALITIES) + 1))
    if args.imagenette:
        print(row("8 Imagenette val images, 96 px", imagenette_images(Path(args.imagenette))))
    print(row("8 glyph images, 64 px", generate_glyphs(8, size=64, seed=0).images))


if __name__ == "__main__":
    main()
