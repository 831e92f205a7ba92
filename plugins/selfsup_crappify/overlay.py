"""Overlaid text and marks: glyph masks rendered once with Pillow, composited on the device.

Pillow draws text per image on the CPU, which would stall a GPU pipeline.
So a bank of short strings is rendered once into ``(N, 1, h, w)`` alpha
masks; each batch then places, scales and colours some of them with one
``grid_sample`` per mark slot.

Example:
    >>> bank = render_text_bank(8, seed=0)
    >>> bank.shape[:2]
    torch.Size([8, 1])
    >>> out = overlay_text(torch.rand(2, 3, 32, 32), bank, marks=(1, 2), height=(0.1, 0.3))
"""

from __future__ import annotations

import random
import string

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

_CHARS = string.ascii_letters + string.digits + "#@&%$?!+x*©"
_MASK_HEIGHT = 32
_MASK_WIDTH = 128


def render_text_bank(count: int = 64, seed: int = 0) -> Tensor:
    """Render ``count`` random 1-6 character strings as ``(count, 1, 32, 128)`` masks in ``[0, 1]``.

    Uses Pillow's built-in scalable font (FreeType) when available, else its
    bitmap font scaled up. The same arguments give the same bank.
    """
    rng = random.Random(f"selfsup-crappify-text-{seed}")
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=28)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType
        font = ImageFont.load_default()
    masks = torch.zeros(count, 1, _MASK_HEIGHT, _MASK_WIDTH)
    for i in range(count):
        text = "".join(rng.choice(_CHARS) for _ in range(rng.randint(1, 6)))
        canvas = Image.new("L", (_MASK_WIDTH * 2, _MASK_HEIGHT * 2))
        ImageDraw.Draw(canvas).text((2, 2), text, fill=255, font=font)
        box = canvas.getbbox() or (0, 0, 1, 1)
        # Crop to the ink, then fit into the mask keeping the aspect ratio.
        glyph = canvas.crop(box)
        scale = min(_MASK_WIDTH / glyph.width, _MASK_HEIGHT / glyph.height)
        glyph = glyph.resize(
            (max(1, int(glyph.width * scale)), max(1, int(glyph.height * scale))),
            Image.Resampling.BILINEAR,
        )
        pixels = torch.frombuffer(bytearray(glyph.tobytes()), dtype=torch.uint8)
        masks[i, 0, : glyph.height, : glyph.width] = pixels.view(glyph.height, glyph.width) / 255
    return masks


def overlay_text(
    images: Tensor,
    bank: Tensor,
    marks: tuple[int, int] = (1, 3),
    height: tuple[float, float] = (0.08, 0.25),
    opacity: tuple[float, float] = (0.6, 1.0),
    apply: Tensor | None = None,
) -> Tensor:
    """Composite random strings from ``bank`` onto ``images``.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        bank: Masks from :func:`render_text_bank`, on the images' device.
        marks: Number of strings per image, ``(min, max)``.
        height: Text height as a fraction of the image height, ``(min, max)``.
        opacity: Alpha of each string, ``(min, max)``.
        apply: ``(B,)`` bool; images where it is False are left untouched.
    """
    b, _, h, w = images.shape
    device, k = images.device, marks[1]
    n = b * k
    count = torch.randint(marks[0], marks[1] + 1, (b, 1), device=device)
    active = torch.arange(k, device=device) < count  # (B, K)
    if apply is not None:
        active &= apply[:, None]
    which = torch.randint(len(bank), (n,), device=device)
    mask_aspect = bank.shape[-1] / bank.shape[-2]
    # Box of each string in normalised [-1, 1] image coordinates.
    box_h = torch.empty(n, device=device).uniform_(*height) * 2
    box_w = box_h * mask_aspect * h / w
    cy = torch.rand(n, device=device) * (2 - box_h).clamp_min(0) - 1 + box_h / 2
    cx = torch.rand(n, device=device) * (2 - box_w).clamp_min(0) - 1 + box_w / 2
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = 2 / box_w, -cx * 2 / box_w
    theta[:, 1, 1], theta[:, 1, 2] = 2 / box_h, -cy * 2 / box_h
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    alpha = F.grid_sample(bank[which].to(images.dtype), grid.to(images.dtype), align_corners=False)
    alpha = alpha.view(b, k, 1, h, w)
    alpha = alpha * torch.empty(b, k, 1, 1, 1, device=device).uniform_(*opacity)
    alpha = alpha * active[:, :, None, None, None]
    colour = torch.rand(b, k, 3, 1, 1, device=device, dtype=images.dtype)
    out = images
    for i in range(k):
        out = out * (1 - alpha[:, i]) + colour[:, i] * alpha[:, i]
    return out
