"""Built-in task ``crappify``: restore images degraded on the device.

After fastai's "crappify": each image is made worse by a random chain of
steps, each switched on per image with its own probability (0 switches a step
off): down/up-sampling by a random factor, Gaussian noise, overlaid text,
and JPEG artefacts at a random quality -- in that order. Every step is a
batched tensor op on the images' device (see ``resample``, ``overlay``,
``jpeg``): Kornia's ``RandomGaussianNoise`` draws its per-pixel noise off the
device and its ``RandomJPEG`` is several times slower than block-DCT matmuls.

Example:
    >>> task = CrappifyTask(jpeg_quality=(10, 30), text_p=0.0)
    >>> batch = task.make_batch(torch.rand(4, 3, 32, 32))
    >>> batch.inputs.shape, batch.extras["quality"].shape
    (torch.Size([4, 3, 32, 32]), torch.Size([4]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup_core import PretextBatch, ReconstructionOptions, ReconstructionTask, hookimpl, psnr, range_option
from selfsup_core.options import at_least, option, probability
from selfsup_crappify.jpeg import jpeg
from selfsup_crappify.overlay import overlay_text, render_text_bank
from selfsup_crappify.resample import down_up

Loss = Literal["l1", "ssim", "l1+ssim"]
LOSSES = get_args(Loss)
STEPS = ("resize_p", "noise_p", "text_p", "jpeg_p")
"""The per-step probability options, in the order the steps are applied."""


def ssim(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM (Kornia) of images in ``[0, 1]``, window 11 or the largest odd that fits."""
    window = min(11, (min(target.shape[-2:]) - 1) | 1)
    return kornia.metrics.ssim(prediction.float().clamp(0, 1), target.float(), window).mean()


@dataclass(frozen=True)
class CrappifyOptions(ReconstructionOptions):
    """Options of :class:`CrappifyTask` (after the U-Net's ``drop_skips`` and ``residual``)."""

    residual: bool = option(True, help="predict a correction of the degraded input rather than the "
                                       "image: the output starts as good as the input")
    resize_p: float = option(0.5, check=probability,
                             help="probability that an image is area down-sampled, then bilinearly up-sampled back")
    resize_factor: tuple[float, float] = range_option(
        (1.5, 4.0), low=1.0, high=64.0, help="down-sampling factor (min, max), 1 to 64, drawn log-uniformly")
    noise_p: float = option(0.5, check=probability, help="probability of additive Gaussian noise")
    noise_std: tuple[float, float] = range_option(
        (0.02, 0.1), low=0.0, high=1.0, help="standard deviation (min, max) of the noise, in [0, 1] pixel units")
    text_p: float = option(0.5, check=probability,
                           help="probability of overlaid text: random 1-6 character strings, random colour and opacity")
    text_marks: tuple[int, int] = range_option(
        (1, 3), low=1, high=16, help="strings overlaid per image (min, max), 1 to 16")
    text_height: tuple[float, float] = range_option(
        (0.08, 0.25), low=0.01, high=1.0, help="text height (min, max), as a fraction of the image height")
    jpeg_p: float = option(0.8, check=probability,
                           help="probability of JPEG artefacts (tensor-op JPEG, quality drawn per image)")
    jpeg_quality: tuple[int, int] = range_option(
        (10, 60), low=1, high=100, help="JPEG quality (min, max), whole numbers 1 to 100")
    loss: Loss = option("l1", help="training loss: L1, Kornia's SSIM loss, or their sum")
    bank_size: int = option(64, check=at_least(1), help="rendered strings the text is drawn from")

class CrappifyTask(ReconstructionTask):
    """Degrade images (resolution, noise, text, JPEG) and restore them.

    Options: see :class:`CrappifyOptions`; a ``(min, max)`` range given as one
    number ``x`` means ``(x, x)``.
    """

    name = "crappify"
    summary = "Restore images degraded by down-sampling, noise, overlaid text and JPEG, with a U-Net."
    Options = CrappifyOptions
    options: CrappifyOptions

    def __init__(self, options: CrappifyOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        # Rendered once; a non-persistent buffer follows the task to the device
        # and stays out of checkpoints.
        o = self.options
        bank = render_text_bank(o.bank_size) if o.text_p > 0 else torch.zeros(1, 1, 32, 128)
        self.register_buffer("text_bank", bank, persistent=False)

    def _draw(self, name: str, n: int, device: torch.device) -> Tensor:
        """Per-image flags: does step ``name`` (e.g. ``"jpeg_p"``) hit each image?"""
        return torch.rand(n, device=device) < getattr(self.options, name)

    def degrade(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Apply the enabled steps; return the degraded images and the drawn parameters.

        Parameters are per image: ``factor`` (1 where not resized), ``noise_std``
        (0 where no noise), ``quality`` (100 where no JPEG; informational),
        and a bool ``text`` flag.
        """
        n, device, o = len(images), images.device, self.options
        # Draw which steps hit each image first, then make sure every image
        # gets at least one: an untouched image teaches only the identity and
        # its input PSNR is unbounded, which would swamp the batch mean.
        hits = {name: self._draw(name, n, device) for name in STEPS}
        enabled = [name for name in ("jpeg_p", "noise_p", "resize_p", "text_p") if getattr(o, name) > 0]
        if enabled:
            untouched = ~torch.stack(list(hits.values())).any(dim=0)
            hits[enabled[0]] = hits[enabled[0]] | untouched
        x = images
        lo, hi = o.resize_factor
        factor = torch.empty(n, device=device).uniform_(math.log(lo), math.log(hi)).exp()
        factor = torch.where(hits["resize_p"], factor, torch.ones_like(factor))
        if o.resize_p > 0:
            x = down_up(x, factor)
        std = torch.empty(n, device=device).uniform_(*o.noise_std)
        std = std * hits["noise_p"]
        if o.noise_p > 0:
            x = x + torch.randn_like(x) * std.to(x.dtype)[:, None, None, None]
        x = x.clamp(0, 1)
        text = hits["text_p"]
        if o.text_p > 0:
            x = overlay_text(x, self.text_bank, o.text_marks, o.text_height, apply=text)
        lo_q, hi_q = o.jpeg_quality
        quality = torch.randint(lo_q, hi_q + 1, (n,), device=device)
        compressed = hits["jpeg_p"]
        if o.jpeg_p > 0:
            x = torch.where(compressed[:, None, None, None], jpeg(x, quality), x)
        quality = torch.where(compressed, quality, torch.full_like(quality, 100))
        return x.clamp(0, 1), {"factor": factor, "noise_std": std, "text": text, "quality": quality}

    def make_batch(self, images: Tensor) -> PretextBatch:
        inputs, params = self.degrade(images)
        return PretextBatch(inputs=inputs, targets=images, extras=params)

    def loss(self, outputs: Tensor, batch: PretextBatch) -> Tensor:
        outputs, targets = outputs.float(), batch.targets.float()
        total = torch.zeros((), device=outputs.device)
        if "l1" in self.options.loss:
            total = total + F.l1_loss(outputs, targets)
        if "ssim" in self.options.loss:
            window = min(11, (min(targets.shape[-2:]) - 1) | 1)
            total = total + kornia.losses.ssim_loss(outputs, targets, window)
        return total

    def metrics(self, outputs: Tensor, batch: PretextBatch) -> dict[str, Tensor]:
        return {
            "psnr": psnr(outputs, batch.targets),
            "psnr_input": psnr(batch.inputs, batch.targets),
            "ssim": ssim(outputs, batch.targets),
            "ssim_input": ssim(batch.inputs, batch.targets),
        }


@hookimpl
def selfsup_register_tasks() -> list[type[CrappifyTask]]:
    return [CrappifyTask]
