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
from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup_core import PretextBatch, TaskSpec, hookimpl
from selfsup_core.tasks.reconstruction import ReconstructionTask, check_probability, check_range
from selfsup_core.tasks.metrics import psnr
from selfsup_crappify.jpeg import jpeg
from selfsup_crappify.overlay import overlay_text, render_text_bank
from selfsup_crappify.resample import down_up

LOSSES = ("l1", "ssim", "l1+ssim")


def ssim(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM (Kornia) of images in ``[0, 1]``, window 11 or the largest odd that fits."""
    window = min(11, (min(target.shape[-2:]) - 1) | 1)
    return kornia.metrics.ssim(prediction.float().clamp(0, 1), target.float(), window).mean()


class CrappifyTask(ReconstructionTask):
    """Degrade images (resolution, noise, text, JPEG) and restore them.

    Args:
        resize_p: Probability that an image is down- then up-sampled.
        resize_factor: Down-sampling factor ``(min, max)``, drawn log-uniformly, >= 1.
        noise_p: Probability of additive Gaussian noise.
        noise_std: Its standard deviation ``(min, max)`` in ``[0, 1]`` pixel units.
        text_p: Probability of overlaid text.
        text_marks: Strings per image ``(min, max)``.
        text_height: Text height as a fraction of the image height ``(min, max)``.
        jpeg_p: Probability of JPEG artefacts.
        jpeg_quality: JPEG quality ``(min, max)``, integers in 1-100.
        loss: ``"l1"`` (default), ``"ssim"`` (Kornia's SSIM loss) or ``"l1+ssim"``.
        drop_skips: Shallowest U-Net skips left out (see :class:`~selfsup_core.unet.UNetDecoder`).
        residual: Predict a correction of the degraded input (default) rather
            than the image: the output starts as good as the input.
        bank_size: Number of rendered strings to draw text from.

    Raises:
        ValueError: Any option out of range, naming it.
    """

    name = "crappify"
    summary = "Restore images degraded by down-sampling, noise, overlaid text and JPEG, with a U-Net."

    def __init__(
        self,
        resize_p: float = 0.5,
        resize_factor: float | Sequence[float] = (1.5, 4.0),
        noise_p: float = 0.5,
        noise_std: float | Sequence[float] = (0.02, 0.1),
        text_p: float = 0.5,
        text_marks: int | Sequence[int] = (1, 3),
        text_height: float | Sequence[float] = (0.08, 0.25),
        jpeg_p: float = 0.8,
        jpeg_quality: int | Sequence[int] = (10, 60),
        loss: str = "l1",
        drop_skips: int = 0,
        residual: bool = True,
        bank_size: int = 64,
    ) -> None:
        probs = {
            name: check_probability(name, value)
            for name, value in (
                ("resize_p", resize_p), ("noise_p", noise_p), ("text_p", text_p), ("jpeg_p", jpeg_p)
            )
        }  # fmt: skip
        ranges = {
            "resize_factor": check_range("resize_factor", resize_factor, 1.0, 64.0),
            "noise_std": check_range("noise_std", noise_std, 0.0, 1.0),
            "text_marks": check_range("text_marks", text_marks, 1, 16, integer=True),
            "text_height": check_range("text_height", text_height, 0.01, 1.0),
            "jpeg_quality": check_range("jpeg_quality", jpeg_quality, 1, 100, integer=True),
        }
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 1:
            raise ValueError(f"bank_size must be a positive integer, got {bank_size!r}")
        super().__init__(
            drop_skips=drop_skips,
            residual=residual,
            **probs,
            **{k: list(v) for k, v in ranges.items()},
            loss=loss,
            bank_size=bank_size,
        )
        self.probs = probs
        self.ranges = ranges
        self.loss_name = loss
        # Rendered once; a non-persistent buffer follows the task to the device
        # and stays out of checkpoints.
        bank = render_text_bank(bank_size) if probs["text_p"] > 0 else torch.zeros(1, 1, 32, 128)
        self.register_buffer("text_bank", bank, persistent=False)

    def _draw(self, name: str, n: int, device: torch.device) -> Tensor:
        """Per-image flags: does step ``name`` (e.g. ``"jpeg_p"``) hit each image?"""
        return torch.rand(n, device=device) < self.probs[name]

    def degrade(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Apply the enabled steps; return the degraded images and the drawn parameters.

        Parameters are per image: ``factor`` (1 where not resized), ``noise_std``
        (0 where no noise), ``quality`` (100 where no JPEG; informational),
        and a bool ``text`` flag.
        """
        n, device = len(images), images.device
        # Draw which steps hit each image first, then make sure every image
        # gets at least one: an untouched image teaches only the identity and
        # its input PSNR is unbounded, which would swamp the batch mean.
        hits = {name: self._draw(name, n, device) for name in self.probs}
        enabled = [name for name in ("jpeg_p", "noise_p", "resize_p", "text_p") if self.probs[name] > 0]
        if enabled:
            untouched = ~torch.stack(list(hits.values())).any(dim=0)
            hits[enabled[0]] = hits[enabled[0]] | untouched
        x = images
        lo, hi = self.ranges["resize_factor"]
        factor = torch.empty(n, device=device).uniform_(math.log(lo), math.log(hi)).exp()
        factor = torch.where(hits["resize_p"], factor, torch.ones_like(factor))
        if self.probs["resize_p"] > 0:
            x = down_up(x, factor)
        std = torch.empty(n, device=device).uniform_(*self.ranges["noise_std"])
        std = std * hits["noise_p"]
        if self.probs["noise_p"] > 0:
            x = x + torch.randn_like(x) * std.to(x.dtype)[:, None, None, None]
        x = x.clamp(0, 1)
        text = hits["text_p"]
        if self.probs["text_p"] > 0:
            x = overlay_text(
                x, self.text_bank, self.ranges["text_marks"], self.ranges["text_height"], apply=text
            )
        lo_q, hi_q = self.ranges["jpeg_quality"]
        quality = torch.randint(lo_q, hi_q + 1, (n,), device=device)
        compressed = hits["jpeg_p"]
        if self.probs["jpeg_p"] > 0:
            x = torch.where(compressed[:, None, None, None], jpeg(x, quality), x)
        quality = torch.where(compressed, quality, torch.full_like(quality, 100))
        return x.clamp(0, 1), {"factor": factor, "noise_std": std, "text": text, "quality": quality}

    def make_batch(self, images: Tensor) -> PretextBatch:
        inputs, params = self.degrade(images)
        return PretextBatch(inputs=inputs, targets=images, extras=params)

    def loss(self, outputs: Tensor, batch: PretextBatch) -> Tensor:
        outputs, targets = outputs.float(), batch.targets.float()
        total = torch.zeros((), device=outputs.device)
        if "l1" in self.loss_name:
            total = total + F.l1_loss(outputs, targets)
        if "ssim" in self.loss_name:
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
def selfsup_register_tasks() -> list[TaskSpec]:
    return [TaskSpec(CrappifyTask.name, CrappifyTask, CrappifyTask.summary)]
