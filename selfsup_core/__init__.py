"""selfsup: self-supervised pretraining of image encoders with pluggable pretext tasks.

The public API is what this module exports; the README and the plugin guide
show it. Jobs::

    from selfsup_core import pretrain, finetune, evaluate, load_encoder

Plugins and task authors::

    from selfsup_core import hookimpl, PretextTask, PretextBatch, ClassificationTask, TaskOptions
    from selfsup_core.options import option, within   # declaring options
    from selfsup_core.testing import TaskContract      # the contract suite

The public modules are this one, :mod:`selfsup_core.options`,
:mod:`selfsup_core.testing` and :mod:`selfsup_core.bench`; everything else
is internal and may change.

Names are imported on first use, so ``import selfsup_core`` stays light (no
torch, no Lightning) and ``selfsup --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from selfsup_core.errors import (
    ConfigError,
    DataError,
    EncoderFileError,
    PluginError,
    SelfsupError,
    TaskConflictError,
    TaskOptionError,
    UnknownTaskError,
)
from selfsup_core.plugin.markers import hookimpl, hookspec

__version__ = "0.2.0"

# Public name -> module that defines it. Module names differ from the names
# they export (``training.pretraining`` defines ``pretrain``), so importing a
# module can never shadow a function of the same name.
_LAZY = {
    # jobs
    "pretrain": "selfsup_core.training.pretraining",
    "PretrainConfig": "selfsup_core.config",
    "PretrainResult": "selfsup_core.training.pretraining",
    "finetune": "selfsup_core.training.finetuning",
    "FinetuneConfig": "selfsup_core.config",
    "FinetuneResult": "selfsup_core.training.finetuning",
    "evaluate": "selfsup_core.evaluation.protocols",
    "EvalResult": "selfsup_core.evaluation.protocols",
    # encoders
    "load_encoder": "selfsup_core.models.export",
    "save_encoder": "selfsup_core.models.export",
    "read_encoder_info": "selfsup_core.models.export",
    "EncoderInfo": "selfsup_core.models.export",
    "build_encoder": "selfsup_core.models.encoders",
    "list_encoders": "selfsup_core.models.encoders",
    "Encoder": "selfsup_core.models.encoders",
    "Normalizer": "selfsup_core.models.normalization",
    "UNetDecoder": "selfsup_core.models.unet",
    # the plugin host and registries
    "PluginHost": "selfsup_core.plugin.host",
    "get_plugin_host": "selfsup_core.plugin.host",
    "build_plugin_host": "selfsup_core.plugin.host",
    "use_plugin_host": "selfsup_core.plugin.host",
    "TaskSpec": "selfsup_core.plugin.registry",
    "AugmentationSpec": "selfsup_core.plugin.registry",
    "list_augmentations": "selfsup_core.plugin.registry",
    "create_augmentation": "selfsup_core.plugin.registry",
    "Augmentation": "selfsup_core.augment.base",
    "AugmentationOptions": "selfsup_core.augment.base",
    "Pipeline": "selfsup_core.augment.base",
    "EncoderSpec": "selfsup_core.plugin.registry",
    "list_tasks": "selfsup_core.plugin.registry",
    "create_task": "selfsup_core.plugin.registry",
    # writing tasks
    "PretextTask": "selfsup_core.tasks.base",
    "PretextBatch": "selfsup_core.tasks.base",
    "ClassificationTask": "selfsup_core.tasks.base",
    "map_inputs": "selfsup_core.tasks.base",
    "mlp_head": "selfsup_core.tasks.base",
    "TaskOptions": "selfsup_core.tasks.options",
    "range_option": "selfsup_core.tasks.options",
    "ReconstructionTask": "selfsup_core.tasks.reconstruction",
    "ReconstructionOptions": "selfsup_core.tasks.reconstruction",
    "accuracy": "selfsup_core.tasks.metrics",
    "psnr": "selfsup_core.tasks.metrics",
    "pretext_step": "selfsup_core.training.step",
}

__all__ = sorted([
    "ConfigError", "DataError", "EncoderFileError", "PluginError", "SelfsupError", "TaskConflictError",
    "TaskOptionError", "UnknownTaskError", "__version__", "hookimpl", "hookspec", *_LAZY,
])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'selfsup_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from selfsup_core.augment.base import Augmentation, AugmentationOptions, Pipeline
    from selfsup_core.config import FinetuneConfig, PretrainConfig
    from selfsup_core.evaluation.protocols import EvalResult, evaluate
    from selfsup_core.models.encoders import Encoder, build_encoder, list_encoders
    from selfsup_core.models.export import EncoderInfo, load_encoder, read_encoder_info, save_encoder
    from selfsup_core.models.normalization import Normalizer
    from selfsup_core.models.unet import UNetDecoder
    from selfsup_core.plugin.host import PluginHost, build_plugin_host, get_plugin_host, use_plugin_host
    from selfsup_core.plugin.registry import (
        AugmentationSpec,
        EncoderSpec,
        TaskSpec,
        create_augmentation,
        create_task,
        list_augmentations,
        list_tasks,
    )
    from selfsup_core.tasks.base import ClassificationTask, PretextBatch, PretextTask, map_inputs
    from selfsup_core.tasks.metrics import accuracy, psnr
    from selfsup_core.tasks.options import TaskOptions, range_option
    from selfsup_core.tasks.reconstruction import ReconstructionOptions, ReconstructionTask
    from selfsup_core.training.finetuning import FinetuneResult, finetune
    from selfsup_core.training.pretraining import PretrainResult, pretrain
    from selfsup_core.training.step import pretext_step
