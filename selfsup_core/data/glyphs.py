"""The built-in data set: asymmetric glyphs, generated deterministically.

With no ``--data``, selfsup trains on these, so the main job runs on a fresh
machine without a download. Each image shows one of ten upright glyphs
(letters and arrows that look different when turned or mirrored) at a random
scale, position, small tilt and colour, on a random two-colour background
whose gradient direction is random too (so it gives away no orientation).
The glyph is the class label, for fine-tuning.

Example:
    >>> data = generate_glyphs(8, size=32, seed=0)
    >>> data.images.shape, data.labels.tolist()[:4]  # doctest: +SKIP
    (torch.Size([8, 3, 32, 32]), [6, 3, 0, 9])
"""

from __future__ import annotations

import math
import random

import torch
from PIL import Image, ImageDraw

from selfsup_core.data.decoded import DecodedImages
from selfsup_core.threads import one_cpu_thread

# Polygons in a [-1, 1] square, y pointing down (image coordinates).
GLYPHS: dict[str, list[tuple[float, float]]] = {
    "L": [(-0.6, -0.9), (-0.2, -0.9), (-0.2, 0.5), (0.6, 0.5), (0.6, 0.9), (-0.6, 0.9)],
    "F": [(-0.6, -0.9), (0.7, -0.9), (0.7, -0.5), (-0.2, -0.5), (-0.2, -0.15), (0.4, -0.15),
          (0.4, 0.25), (-0.2, 0.25), (-0.2, 0.9), (-0.6, 0.9)],
    "7": [(-0.7, -0.9), (0.7, -0.9), (0.7, -0.5), (0.0, 0.9), (-0.45, 0.9), (0.2, -0.5),
          (-0.7, -0.5)],
    "J": [(0.1, -0.9), (0.5, -0.9), (0.5, 0.9), (-0.6, 0.9), (-0.6, 0.3), (-0.2, 0.3),
          (-0.2, 0.5), (0.1, 0.5)],
    "P": [(-0.6, -0.9), (0.6, -0.9), (0.6, 0.1), (-0.2, 0.1), (-0.2, 0.9), (-0.6, 0.9)],
    "arrow": [(0.0, -0.95), (0.7, -0.2), (0.25, -0.2), (0.25, 0.9), (-0.25, 0.9),
              (-0.25, -0.2), (-0.7, -0.2)],
    "flag": [(-0.6, -0.9), (0.7, -0.6), (-0.2, -0.25), (-0.2, 0.9), (-0.6, 0.9)],
    "T": [(-0.8, -0.9), (0.8, -0.9), (0.8, -0.5), (0.2, -0.5), (0.2, 0.9), (-0.2, 0.9),
          (-0.2, -0.5), (-0.8, -0.5)],
    "wedge": [(-0.8, 0.9), (0.8, 0.9), (0.8, 0.4), (-0.2, -0.9), (-0.8, -0.9)],
    "step": [(-0.8, 0.9), (-0.8, 0.3), (-0.25, 0.3), (-0.25, -0.3), (0.3, -0.3), (0.3, -0.9),
             (0.8, -0.9), (0.8, 0.9)],
}
CLASSES = tuple(GLYPHS)
_SUPERSAMPLE = 4


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))  # type: ignore[return-value]


def _contrasting(rng: random.Random, background: tuple[int, int, int]) -> tuple[int, int, int]:
    while True:
        colour = _colour(rng)
        if sum(abs(a - b) for a, b in zip(colour, background)) > 200:
            return colour


def _render(rng: random.Random, label: int, size: int) -> Image.Image:
    big = size * _SUPERSAMPLE
    start, end = _colour(rng), _colour(rng)
    # Background: a linear gradient in a random direction.
    angle = rng.uniform(0, 2 * math.pi)
    ramp = torch.linspace(-1, 1, big)
    t = (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]) * 0.5 + 0.5
    pixels = torch.stack([a + (b - a) * t for a, b in zip(start, end)], dim=-1)
    image = Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy(), "RGB")
    mid = tuple((a + b) // 2 for a, b in zip(start, end))
    scale = rng.uniform(0.5, 0.8) * big / 2
    tilt = math.radians(rng.uniform(-15, 15))
    cx = big / 2 + rng.uniform(-0.15, 0.15) * big
    cy = big / 2 + rng.uniform(-0.15, 0.15) * big
    cos_t, sin_t = math.cos(tilt), math.sin(tilt)
    points = [
        (cx + scale * (x * cos_t - y * sin_t), cy + scale * (x * sin_t + y * cos_t))
        for x, y in GLYPHS[CLASSES[label]]
    ]
    ImageDraw.Draw(image).polygon(points, fill=_contrasting(rng, mid))  # type: ignore[arg-type]
    return image.resize((size, size), Image.Resampling.BOX)


def generate_glyphs(n: int, size: int = 32, seed: int = 0) -> DecodedImages:
    """``n`` glyph images of ``size`` x ``size``, the same for the same arguments.

    Classes are balanced (image ``i`` shows glyph ``i % 10`` before shuffling).
    """
    rng = random.Random(f"selfsup-glyphs-{seed}")
    labels = [i % len(CLASSES) for i in range(n)]
    rng.shuffle(labels)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    # Each image's tensors are small: one thread renders them 2x faster than two, and on a busy
    # machine a thread pool waiting for its share of the cores made the 5,000 built-in images take 30 s.
    with one_cpu_thread("cpu"):
        for i, label in enumerate(labels):
            rendered = _render(rng, label, size)
            images[i] = torch.frombuffer(bytearray(rendered.tobytes()), dtype=torch.uint8).view(
                size, size, 3
            ).permute(2, 0, 1)
    return DecodedImages(images, torch.tensor(labels, dtype=torch.long), CLASSES)


BUILTIN_TRAIN_SIZE = 4000
BUILTIN_VAL_SIZE = 1000


def builtin_split(split: str, size: int, limit: int | None = None) -> DecodedImages:
    """The built-in data set's ``"train"`` or ``"val"`` split (disjoint seeds)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    n = BUILTIN_TRAIN_SIZE if split == "train" else BUILTIN_VAL_SIZE
    if limit is not None:
        n = min(n, limit)
    return generate_glyphs(n, size=size, seed=0 if split == "train" else 1)
