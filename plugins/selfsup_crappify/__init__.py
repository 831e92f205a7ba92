"""Built-in task ``crappify``: restore images degraded on the device.

After fastai's "crappify": each image is made worse by a random chain of
steps, each switched on per image with its own probability (0 switches a step
off): down/up-sampling by a random factor, Gaussian noise, overlaid text,
and JPEG artefacts at a random quality -- in that order. The steps are
augmentations named in the ``degradations`` option (``down_up``, ``noise``,
``text``, ``jpeg``, registered by this package, see ``degradations.py``; any
installed augmentation can join them). Every step is a batched tensor op on
the images' device (see ``resample``, ``overlay``, ``jpeg``): Kornia's
``RandomGaussianNoise`` draws its per-pixel noise off the device and its
``RandomJPEG`` is several times slower than block-DCT matmuls.

Example:
    >>> task = CrappifyTask(jpeg_quality=(10, 30), text_p=0.0)
    >>> batch = task.make_batch(torch.rand(4, 3, 32, 32))
    >>> batch.inputs.shape, batch.extras["quality"].shape
    (torch.Size([4, 3, 32, 32]), torch.Size([4]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_core import (
    Augmentation,
    PretextBatch,
    ReconstructionOptions,
    ReconstructionTask,
    SelfsupError,
    TaskOptionError,
    create_augmentation,
    hookimpl,
    psnr,
    range_option,
)
from selfsup_core.options import at_least, option, probability, skip_count
from selfsup_crappify.degradations import DEGRADATIONS, DownUp, Jpeg, Noise, Text

Loss = Literal["l1", "ssim", "l1+ssim"]
LOSSES = get_args(Loss)
OWN_STEPS: dict[str, tuple[type[Augmentation], dict[str, str]]] = {
    "down_up": (DownUp, {"p": "resize_p", "factor": "resize_factor"}),
    "noise": (Noise, {"p": "noise_p", "std": "noise_std"}),
    "text": (Text, {"p": "text_p", "marks": "text_marks", "height": "text_height", "bank_size": "bank_size"}),
    "jpeg": (Jpeg, {"p": "jpeg_p", "quality": "jpeg_quality"}),
}
"""crappify's own degradations: each augmentation option and the task option that sets it."""
FORCED_FIRST = ("jpeg", "noise", "down_up", "text")
"""Which step an image that drew none gets: the first of these in ``degradations``, else the first listed."""


def ssim(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM (Kornia) of images in ``[0, 1]``, window 11 or the largest odd that fits."""
    window = min(11, (min(target.shape[-2:]) - 1) | 1)
    return kornia.metrics.ssim(prediction.float().clamp(0, 1), target.float(), window).mean()


@dataclass(frozen=True)
class CrappifyOptions(ReconstructionOptions):
    """Options of :class:`CrappifyTask` (after the U-Net's ``drop_skips`` and ``residual``)."""

    drop_skips: int | Literal["all"] = option(
        "all", check=skip_count,
        help="shallowest U-Net skip connections left out (all: none kept, the image passes through the "
             "deepest stage, which frozen features read; 0 with residual=true: the best restoration, "
             "see docs/tasks.md)")
    residual: bool = option(False, help="predict a correction of the degraded input rather than the image "
                                        "(with skips kept, the output starts as good as the input)")
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
    degradations: list[str] = option(
        default_factory=lambda: ["down_up", "noise", "text", "jpeg"],
        help="the steps, in order: augmentation names (selfsup augmentations); down_up, noise, text and "
             "jpeg take the options above, any other its own defaults or degradation_options")
    degradation_options: dict[str, dict[str, Any]] = option(
        default_factory=dict, help="options of the other steps, by name, e.g. {posterize: {p: 0.3}}")

    def validate(self) -> None:
        super().validate()
        repeated = sorted({name for name in self.degradations if self.degradations.count(name) > 1})
        if repeated:
            raise ValueError(f"degradations names {', '.join(repeated)} more than once")
        for name in self.degradation_options:
            if name in OWN_STEPS:
                raise ValueError(f"degradation_options: set {name}'s options with crappify's own options "
                                 f"({', '.join(OWN_STEPS[name][1].values())})")
            if name not in self.degradations:
                raise ValueError(f"degradation_options names {name!r}, which is not in degradations")


class CrappifyTask(ReconstructionTask):
    """Degrade images (resolution, noise, text, JPEG) and restore them.

    By default the U-Net keeps no skips and predicts the image itself, which
    makes the deepest stage carry it: the encoder's frozen features beat a
    random network's, while the output is blurrier than the input at 32 px.
    ``drop_skips=0, residual=True`` restores best and trains the deep stages
    least (docs/tasks.md has both sides measured).

    Options: see :class:`CrappifyOptions`; a ``(min, max)`` range given as one
    number ``x`` means ``(x, x)``.
    """

    name = "crappify"
    summary = "Restore images degraded by down-sampling, noise, overlaid text and JPEG, with a U-Net."
    Options = CrappifyOptions
    options: CrappifyOptions

    def __init__(self, options: CrappifyOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        # Augmentations hold no weights; the text step's rendered strings are a
        # non-persistent buffer: they follow the task to the device and stay out of checkpoints.
        self.steps = nn.ModuleDict({name: self._build_step(name) for name in self.options.degradations})

    def _build_step(self, name: str) -> Augmentation:
        o = self.options
        if name in OWN_STEPS:
            step, names = OWN_STEPS[name]
            return step(**{key: getattr(o, option) for key, option in names.items()})
        try:
            return create_augmentation(name, **o.degradation_options.get(name, {}))
        except (SelfsupError, TypeError, ValueError) as exc:  # unknown name, rejected options
            raise TaskOptionError(f"task 'crappify': degradations: {exc}") from None

    @property
    def text_bank(self) -> Tensor:
        """The strings the ``text`` step draws from (rendered once; none when ``text_p`` is 0)."""
        if "text" not in self.steps:
            raise AttributeError("text_bank")  # no text step: nn.Module reports the missing attribute
        return self.steps["text"].bank

    def degrade(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Apply the steps; return the degraded images and the drawn parameters.

        Every step's parameters are kept as ``NAME.PARAM`` (``jpeg.quality``).
        crappify's own steps also give, per image: ``factor`` (1 where not
        resized), ``noise_std`` (0 where no noise), ``quality`` (100 where no
        JPEG; informational), and a bool ``text`` flag.
        """
        # Draw every step's parameters first, then make sure every image gets
        # at least one step: an untouched image teaches only the identity and
        # its input PSNR is unbounded, which would swamp the batch mean. A step
        # says which images it changes with its `applied` flags; one without
        # them changes every image.
        drawn = {name: step.sample(images) for name, step in self.steps.items()}
        enabled = [name for name, step in self.steps.items() if _probability(step) > 0]
        if enabled and all("applied" in params for params in drawn.values()):
            first = min(enabled, key=lambda name: (FORCED_FIRST + tuple(enabled)).index(name))
            untouched = ~torch.stack([params["applied"] for params in drawn.values()]).any(dim=0)
            drawn[first]["applied"] = drawn[first]["applied"] | untouched
        x = images
        # Full precision even under the trainer's autocast, as Augmentation.forward does:
        # bf16 matmuls would swamp the JPEG quantisation error and the down-sampling.
        with torch.autocast(images.device.type, enabled=False):
            for name, step in self.steps.items():
                if name in enabled:
                    x = step.apply(x, drawn[name])
        extras = {f"{name}.{key}": value for name, params in drawn.items() for key, value in params.items()}
        if "down_up" in drawn:
            extras["factor"] = torch.where(drawn["down_up"]["applied"], drawn["down_up"]["factor"], 1.0)
        if "noise" in drawn:
            extras["noise_std"] = drawn["noise"]["std"] * drawn["noise"]["applied"]
        if "text" in drawn:
            extras["text"] = drawn["text"]["applied"]
        if "jpeg" in drawn:
            extras["quality"] = torch.where(drawn["jpeg"]["applied"], drawn["jpeg"]["quality"], 100)
        return x.clamp(0, 1), extras

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


def _probability(step: Augmentation) -> float:
    """A step's probability option ``p``; 1 for an augmentation that has none."""
    return float(getattr(step.options, "p", 1.0))


@hookimpl
def selfsup_register_tasks() -> list[type[CrappifyTask]]:
    return [CrappifyTask]


@hookimpl
def selfsup_register_augmentations() -> list[type[Augmentation]]:
    return list(DEGRADATIONS)
