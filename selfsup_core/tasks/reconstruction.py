"""Shared base of the image-restoration tasks (cutout, crappify).

A restoration task only has to say how it degrades images (:meth:`make_batch`)
and how it scores the result; this base builds the U-Net decoder as the head,
feeds it the encoder's stages and makes the preview columns.

Example:
    >>> class Blur(ReconstructionTask):
    ...     name = "blur"
    ...     def make_batch(self, images):
    ...         return PretextBatch(inputs=images.roll(1, -1), targets=images)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_core.models.unet import UNetDecoder
from selfsup_core.options import option, probability, skip_count
from selfsup_core.tasks.base import PretextBatch, PretextTask
from selfsup_core.tasks.options import TaskOptions


@dataclass(frozen=True)
class ReconstructionOptions(TaskOptions):
    """Options of every restoration task: the shape of its U-Net head.

    Subclasses add their own options and may change a default by declaring
    the field again (crappify: ``drop_skips="all"`` by default).
    """

    drop_skips: int | Literal["all"] = option(0, check=skip_count,
                                              help="shallowest U-Net skip connections left out (0: all kept; "
                                                   "all: none kept)")
    residual: bool = option(False, help="the decoder predicts a correction added to the degraded input "
                                        "instead of the image")
    skip_dropout: float = option(0.0, check=probability,
                                 help="share of the images whose skips are all dropped at each training step "
                                      "(drawn per image; the finished U-Net keeps its skips; needs drop_skips "
                                      "below all)")

    def validate(self) -> None:
        if self.skip_dropout > 0 and self.drop_skips == "all":
            raise ValueError("skip_dropout drops skips, but drop_skips=all leaves none: "
                             "set drop_skips below all (0 keeps every skip)")

class ReconstructionTask(PretextTask):
    """A task whose head is a U-Net decoder and whose targets are clean images.

    Options (:class:`ReconstructionOptions`): ``drop_skips``, the shallowest
    skip connections the U-Net leaves out (see
    :class:`~selfsup_core.models.unet.UNetDecoder`), and ``residual``: the
    decoder predicts a correction added to the degraded input (suits mild
    degradations: the output starts as good as the input) instead of the
    image itself.
    """

    reconstructs = True
    Options = ReconstructionOptions
    options: ReconstructionOptions

    def build_head(self, encoder: nn.Module) -> nn.Module:
        return UNetDecoder.for_encoder(encoder, drop_skips=self.options.drop_skips,
                                       residual=self.options.residual, skip_dropout=self.options.skip_dropout)

    def forward_model(self, encoder: nn.Module, head: nn.Module, inputs: Any, batch: PretextBatch) -> Tensor:
        # A residual decoder corrects the degraded image itself: the batch's
        # inputs, in [0, 1], before normalisation.
        base = batch.inputs if self.options.residual else None
        return head(encoder.forward_stages(inputs), size=tuple(inputs.shape[-2:]), base=base)

    def loss(self, outputs: Tensor, batch: PretextBatch) -> Tensor:
        return F.l1_loss(outputs, batch.targets)

    def preview(self, outputs: Tensor, batch: PretextBatch) -> dict[str, Tensor]:
        return {
            "input": batch.inputs.detach().clamp(0, 1),
            "restored": outputs.detach().float().clamp(0, 1),
            "original": batch.targets.detach(),
        }
