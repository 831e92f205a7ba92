"""The tensor-op JPEG against Pillow's libjpeg at the same quality."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from selfsup_crappify.jpeg import CHROMA_TABLE, LUMA_TABLE, dct_matrix, jpeg, quality_tables

from selfsup_core.data.glyphs import generate_glyphs
from selfsup_core.tasks.metrics import psnr

# Measured gaps were below 0.05 dB at qualities 10-50 (see docs/tasks.md).
PSNR_TOLERANCE_DB = 0.15


def pillow_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip uint8 ``(B, 3, H, W)`` images through Pillow's JPEG."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
        decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        pixels = torch.frombuffer(bytearray(decoded.tobytes()), dtype=torch.uint8)
        out.append(pixels.view(decoded.height, decoded.width, 3).permute(2, 0, 1))
    return torch.stack(out)


def smooth_and_texture(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Photo-like uint8 images: smooth colour gradients, blobs and fine texture."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        a = torch.rand(3, 6, generator=g)
        channels = []
        for c in range(3):
            base = a[c, 0] + 0.3 * torch.sin(2 * math.pi * (a[c, 1] * x + a[c, 2] * y) * 2)
            blob = 0.4 * torch.exp(-((x - a[c, 3]) ** 2 + (y - a[c, 4]) ** 2) / 0.02)
            texture = 0.08 * torch.sin(2 * math.pi * 9 * (x + a[c, 5] * y))
            channels.append(base + blob + texture)
        noise = 0.03 * torch.randn(3, size, size, generator=g)
        images.append(((torch.stack(channels) + noise).clamp(0, 1) * 255).round())
    return torch.stack(images).to(torch.uint8)


def assert_like_pillow(images: torch.Tensor, quality: int) -> None:
    original = images.float() / 255
    ours = jpeg(original, quality)
    theirs = pillow_jpeg(images, quality).float() / 255
    gap = (psnr(ours, original) - psnr(theirs, original)).abs().item()
    assert gap < PSNR_TOLERANCE_DB, f"quality {quality}: PSNR gap {gap:.3f} dB"
    # Not just the same error level: nearly the same pixels.
    assert psnr(ours, theirs) > 38


@pytest.mark.parametrize("quality", [10, 30, 50, 90])
def test_matches_pillow_on_glyph_images(quality: int) -> None:
    assert_like_pillow(generate_glyphs(6, size=64, seed=3).images, quality)


@pytest.mark.parametrize("quality", [10, 30, 50])
def test_matches_pillow_on_photo_like_images(quality: int) -> None:
    assert_like_pillow(smooth_and_texture(4, 64), quality)


@pytest.mark.imagenette
def test_matches_pillow_on_imagenette(imagenette: Path) -> None:
    files = sorted((imagenette / "val").glob("*/*.JPEG"))[::300][:6]
    images = torch.stack([
        torch.frombuffer(bytearray(Image.open(f).convert("RGB").resize((96, 96)).tobytes()),
                         dtype=torch.uint8).view(96, 96, 3).permute(2, 0, 1)
        for f in files
    ])
    for quality in (10, 30, 50):
        assert_like_pillow(images, quality)


def test_artefacts_shrink_with_quality() -> None:
    original = smooth_and_texture(2, 64).float() / 255
    scores = [psnr(jpeg(original, q), original).item() for q in (5, 20, 50, 95)]
    assert scores == sorted(scores) and scores[0] < 30 < scores[-1]


def test_per_image_quality_equals_separate_calls() -> None:
    original = generate_glyphs(3, size=32).images.float() / 255
    together = jpeg(original, torch.tensor([10, 40, 80]))
    for i, q in enumerate((10, 40, 80)):
        assert torch.equal(together[i], jpeg(original[i : i + 1], q)[0])


def test_quality_tables_follow_libjpeg_scaling() -> None:
    luma, chroma = quality_tables(torch.tensor([50, 100, 1]))
    assert torch.equal(luma[0].flatten(), torch.tensor(LUMA_TABLE, dtype=torch.float32))
    assert torch.equal(chroma[0].flatten(), torch.tensor(CHROMA_TABLE, dtype=torch.float32))
    assert (luma[1] == 1).all() and (chroma[1] == 1).all()
    assert luma[2].max() == 255  # baseline tables clamp to 8 bits


def test_dct_is_orthonormal() -> None:
    d = dct_matrix(dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_odd_sizes_dtype_and_8_bit_output(dtype: torch.dtype) -> None:
    images = torch.rand(2, 3, 37, 21, dtype=dtype)
    out = jpeg(images, 30)
    assert out.shape == images.shape and out.dtype == dtype
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="jpeg needs"):
        jpeg(torch.rand(2, 1, 16, 16), 50)
