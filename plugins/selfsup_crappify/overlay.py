"""Overlaid text and marks: glyph masks rendered once with Pillow, composited on the device.

Pillow draws text per image on the CPU, which would stall a GPU pipeline.
So a bank of short strings is rendered once into ``(N, 1, h, w)`` alpha
masks; each batch then draws where some of them go (:func:`draw_marks`) and
places, scales and colours them with one ``grid_sample`` per mark slot
(:func:`composite_marks`).

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


def draw_marks(
    images: Tensor,
    bank_size: int,
    marks: tuple[int, int] = (1, 3),
    height: tuple[float, float] = (0.08, 0.25),
    opacity: tuple[float, float] = (0.6, 1.0),
) -> dict[str, Tensor]:
    """Draw where strings go on each image of ``images``, batch-wise on its device.

    Args:
        images: ``(B, 3, H, W)``; only its shape, device and dtype are used.
        bank_size: Number of masks to pick from.
        marks: Number of strings per image, ``(min, max)``.
        height: Text height as a fraction of the image height, ``(min, max)``.
        opacity: Alpha of each string, ``(min, max)``.

    Returns:
        For ``K = marks[1]`` slots per image: ``active`` ``(B, K)`` bool (the
        first ``count`` slots), ``which`` ``(B, K)`` mask index, ``box``
        ``(B, K, 4)`` centre x, centre y, width, height in normalised
        ``[-1, 1]`` coordinates, ``opacity`` ``(B, K)``, ``colour`` ``(B, K, 3)``.
    """
    b, _, h, w = images.shape
    device, k = images.device, marks[1]
    count = torch.randint(marks[0], marks[1] + 1, (b, 1), device=device)
    active = torch.arange(k, device=device) < count  # (B, K)
    which = torch.randint(bank_size, (b, k), device=device)
    # Box of each string in normalised [-1, 1] image coordinates.
    box_h = torch.empty(b, k, device=device).uniform_(*height) * 2
    box_w = box_h * (_MASK_WIDTH / _MASK_HEIGHT) * h / w
    cy = torch.rand(b, k, device=device) * (2 - box_h).clamp_min(0) - 1 + box_h / 2
    cx = torch.rand(b, k, device=device) * (2 - box_w).clamp_min(0) - 1 + box_w / 2
    return {
        "active": active,
        "which": which,
        "box": torch.stack([cx, cy, box_w, box_h], dim=-1),
        "opacity": torch.empty(b, k, device=device).uniform_(*opacity),
        "colour": torch.rand(b, k, 3, device=device, dtype=images.dtype),
    }


def composite_marks(images: Tensor, bank: Tensor, marks: dict[str, Tensor], apply: Tensor | None = None) -> Tensor:
    """Composite the strings drawn by :func:`draw_marks` onto ``images``.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        bank: Masks from :func:`render_text_bank`, on the images' device.
        marks: What :func:`draw_marks` drew for these images.
        apply: ``(B,)`` bool; images where it is False are left untouched.
    """
    b, _, h, w = images.shape
    active = marks["active"] if apply is None else marks["active"] & apply[:, None]
    k = active.shape[1]
    n = b * k
    cx, cy, box_w, box_h = marks["box"].reshape(n, 4).unbind(-1)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = 2 / box_w, -cx * 2 / box_w
    theta[:, 1, 1], theta[:, 1, 2] = 2 / box_h, -cy * 2 / box_h
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    alpha = F.grid_sample(bank[marks["which"].reshape(n)].to(images.dtype), grid.to(images.dtype),
                          align_corners=False)
    alpha = alpha.view(b, k, 1, h, w)
    alpha = alpha * marks["opacity"].to(images.dtype)[:, :, None, None, None]
    alpha = alpha * active[:, :, None, None, None]
    colour = marks["colour"].to(images.dtype)[:, :, :, None, None]
    out = images
    for i in range(k):
        out = out * (1 - alpha[:, i]) + colour[:, i] * alpha[:, i]
    return out


def overlay_text(
    images: Tensor,
    bank: Tensor,
    marks: tuple[int, int] = (1, 3),
    height: tuple[float, float] = (0.08, 0.25),
    opacity: tuple[float, float] = (0.6, 1.0),
    apply: Tensor | None = None,
) -> Tensor:
    """Composite random strings from ``bank`` onto ``images``: :func:`draw_marks`, then
    :func:`composite_marks` (arguments as there)."""
    return composite_marks(images, bank, draw_marks(images, len(bank), marks, height, opacity), apply)
