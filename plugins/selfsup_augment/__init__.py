"""Built-in augmentations, registered as a plugin like any third-party one.

Every augmentation works on a whole ``(B, C, H, W)`` float batch in ``[0, 1]``
on its device, draws its parameters there with torch's seeded generators, and
returns them (``images, params = augmentation(images)``):

- ``crop_flip``: random resized crop + horizontal flip in one resampling
  (params ``box`` as cx, cy, w, h fractions, ``flip``);
- ``color_jitter``: brightness, contrast, saturation, hue, in that fixed
  order (``applied`` and the four factors);
- ``grayscale``: luma in all three channels (``applied``);
- ``blur``: Gaussian blur, a sigma per image (``applied``, ``sigma``);
- ``erase``: boxes filled with noise, zero or the mean (``applied``,
  ``boxes``, ``active``, ``mask``; ``noise`` for a noise fill).

Each is plain tensor ops: ``python -m selfsup_augment.bench`` times them
against their closest Kornia augmentations (docs/tasks.md, "Augmentations").
crappify's degradations (``down_up``, ``noise``, ``text``, ``jpeg``) are
registered by the ``selfsup_crappify`` plugin.

Example:
    >>> from selfsup_core import Pipeline, create_augmentation
    >>> pipeline = Pipeline([create_augmentation("crop_flip"), create_augmentation("color_jitter")])
    >>> views, params = pipeline(torch.rand(8, 3, 32, 32))
    >>> sorted(params)[:2]
    ['color_jitter.applied', 'color_jitter.brightness']
"""

from __future__ import annotations

from selfsup_augment.blur import Blur, BlurOptions
from selfsup_augment.color import ColorJitter, ColorJitterOptions, Grayscale, GrayscaleOptions
from selfsup_augment.erase import Erase, EraseOptions, boxes_to_mask, draw_boxes
from selfsup_augment.geometry import CropFlip, CropFlipOptions
from selfsup_core import Augmentation, hookimpl

AUGMENTATIONS: tuple[type[Augmentation], ...] = (CropFlip, ColorJitter, Grayscale, Blur, Erase)

__all__ = [
    "AUGMENTATIONS", "Blur", "BlurOptions", "ColorJitter", "ColorJitterOptions", "CropFlip", "CropFlipOptions",
    "Erase", "EraseOptions", "Grayscale", "GrayscaleOptions", "boxes_to_mask", "draw_boxes",
]


@hookimpl
def selfsup_register_augmentations() -> list[type[Augmentation]]:
    return list(AUGMENTATIONS)
