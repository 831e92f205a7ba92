"""selfsup: self-supervised pretraining of image encoders with pluggable pretext tasks.

Public API::

    from selfsup_core import list_tasks, create_task, pretrain, finetune, load_encoder
"""

from selfsup_core._markers import hookimpl, hookspec
from selfsup_core.errors import SelfsupError
from selfsup_core.registry import EncoderSpec, TaskSpec, create_task, list_tasks
from selfsup_core.task import ClassificationTask, PretextBatch, PretextTask

__version__ = "0.1.0"

__all__ = [
    "ClassificationTask",
    "EncoderSpec",
    "PretextBatch",
    "PretextTask",
    "SelfsupError",
    "TaskSpec",
    "__version__",
    "create_task",
    "finetune",
    "hookimpl",
    "hookspec",
    "list_tasks",
    "load_encoder",
    "pretrain",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy imports keep `import selfsup_core` light
    if name == "pretrain":
        from selfsup_core.pretrain import pretrain

        return pretrain
    if name == "finetune":
        from selfsup_core.finetune import finetune

        return finetune
    if name == "load_encoder":
        from selfsup_core.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'selfsup_core' has no attribute {name!r}")
