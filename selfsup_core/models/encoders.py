"""Encoder backbones: torchvision ResNets from scratch and a tiny test CNN.

Every encoder follows the :class:`Encoder` protocol, so that tasks can put a
classifier on its pooled features or a decoder on its stages. The ResNets are
torchvision's own classes with ``fc`` replaced by ``nn.Identity()``: their
state dicts load into ``torchvision.models.resnet18()`` with ``strict=True``.

Example:
    >>> enc = build_encoder("tiny")
    >>> enc(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from selfsup_core.errors import ConfigError
from selfsup_core.plugin.markers import hookimpl
from selfsup_core.plugin.registry import EncoderSpec, build_encoder_registry

if TYPE_CHECKING:
    from selfsup_core.plugin.host import PluginHost


@runtime_checkable
class Encoder(Protocol):
    """What a task may rely on in an encoder.

    Attributes:
        feature_dim: Width of the pooled features ``encoder(x)`` returns.
        stage_channels: Channels of each stage's feature map, shallow to deep.
        stage_strides: Down-sampling factor of each stage relative to the input.
    """

    feature_dim: int
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]

    def __call__(self, x: Tensor) -> Tensor: ...

    def forward_stages(self, x: Tensor) -> list[Tensor]: ...


class ResNetEncoder(ResNet):
    """A torchvision ResNet without its classifier (``fc = Identity``)."""

    stage_strides = (2, 4, 8, 16, 32)

    def __init__(self, layers: list[int]) -> None:
        super().__init__(BasicBlock, layers)
        self.feature_dim = self.fc.in_features
        self.fc = nn.Identity()
        self.stage_channels = (64, 64, 128, 256, 512)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Feature maps after the stem (stride 2) and after each residual layer."""
        stem = self.relu(self.bn1(self.conv1(x)))
        out = self.maxpool(stem)
        stages = [stem]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(out)
            stages.append(out)
        return stages


class TinyEncoder(nn.Module):
    """Three strided conv blocks and global pooling: for tests and smoke runs."""

    stage_channels = (16, 32, 64)
    stage_strides = (2, 4, 8)
    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        blocks, in_channels = [], 3
        for out_channels in self.stage_channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Feature map after each block."""
        stages = []
        for block in self.blocks:
            x = block(x)
            stages.append(x)
        return stages

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1].mean(dim=(2, 3))


def resnet18() -> ResNetEncoder:
    """ResNet-18 (torchvision definition), randomly initialised, no classifier."""
    return ResNetEncoder([2, 2, 2, 2])


def resnet34() -> ResNetEncoder:
    """ResNet-34 (torchvision definition), randomly initialised, no classifier."""
    return ResNetEncoder([3, 4, 6, 3])


@hookimpl
def selfsup_register_encoders() -> list[EncoderSpec]:
    """The built-in encoders."""
    return [
        EncoderSpec("resnet18", resnet18, "torchvision ResNet-18, from scratch"),
        EncoderSpec("resnet34", resnet34, "torchvision ResNet-34, from scratch"),
        EncoderSpec("tiny", TinyEncoder, "3-layer CNN for tests and smoke runs"),
    ]


def list_encoders(host: PluginHost | None = None) -> list[str]:
    """Names accepted by ``--arch`` (those of ``host``; ``None``: the process's host)."""
    return build_encoder_registry(host).names()


def build_encoder(arch: str, host: PluginHost | None = None) -> nn.Module:
    """A new, randomly initialised encoder of architecture ``arch``.

    Args:
        arch: A registered encoder name.
        host: Whose plugins to use; ``None`` is the process's host.

    Raises:
        UnknownTaskError: (a :class:`~selfsup_core.errors.SelfsupError`) for an
            unknown name, listing the known ones.
    """
    return build_encoder_registry(host).get(arch).spec.factory()


def minimum_image_size(encoder: nn.Module) -> int:
    """The smallest square input ``encoder`` is built for: its total down-sampling
    (the deepest stage's stride; 32 for the ResNets, 8 for ``tiny``).

    Smaller images still run (padding keeps every map at least 1 px), but the
    deepest stages then shrink a 1 x 1 map further and learn from padding.
    Encoders without ``stage_strides`` get 1.
    """
    strides = getattr(encoder, "stage_strides", None)
    return int(max(strides)) if strides else 1


def check_image_size(arch: str, image_size: int | None, host: PluginHost | None = None) -> nn.Module:
    """Build ``arch`` and check that ``image_size`` is at least :func:`minimum_image_size`.

    Call it before any data is read: a bad size fails at once.

    Returns:
        The (randomly initialised) encoder.

    Raises:
        UnknownTaskError: an unknown architecture.
        ConfigError: ``image_size`` is below the architecture's down-sampling.
    """
    encoder = build_encoder(arch, host=host)
    least = minimum_image_size(encoder)
    if image_size is not None and image_size < least:
        raise ConfigError(f"--image-size {image_size} is too small for {arch}, which down-samples {least}x: "
                          f"use at least {least} px.")
    return encoder
