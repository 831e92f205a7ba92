"""The settings of every command, declared once: defaults < YAML file < command line.

Each command (``pretrain``, ``finetune``, ``evaluate``, ``bench tasks``,
``bench throughput``, ``bench eval``) has one :class:`~selfsup_core.options.Options`
dataclass here. The same declaration checks values from Python keywords,
``--config FILE.yaml`` and ``--flags``, and generates ``--help``. Values that
are ``None`` mean "choose for me": :func:`resolve_defaults` fills them from the
data and the device, and says so in each option's help.

This module imports neither torch nor Lightning, so ``selfsup --help`` answers
at once.

Example:
    >>> config = PretrainConfig.from_mapping({"max_epochs": 3, "task": "rotation"}, source="example")
    >>> config.max_epochs, config.lr
    (3, 0.001)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from selfsup_core.errors import ConfigError
from selfsup_core.options import Options, at_least, option, positive, within

ConfigT = TypeVar("ConfigT", bound="RunConfig")

_ONE = at_least(1)
_ZERO = at_least(0)


PRECISIONS = ("64", "32", "16", "bf16", "64-true", "32-true", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "transformer-engine", "transformer-engine-float16")
"""What Lightning 2 accepts as ``precision``."""


def _precision(name: str, value: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def _devices(name: str, value: int | str | list[int]) -> int | str | list[int]:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    ok = (value == "auto" or (isinstance(value, int) and (value >= 1 or value == -1))
          or (isinstance(value, list) and value and all(i >= 0 for i in value)))
    if not ok:
        raise ValueError(f"{name} must be a count of at least 1 (-1: all), a list of device ids such as "
                         f"[0, 1], or auto; got {value!r}")
    return value


def _strategy(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a Lightning strategy name such as ddp or auto, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class ParallelOptions(Options):
    """How many processes a job runs in: Lightning's devices, nodes and strategy (docs/index.md,
    "Multi-GPU and multi-node")."""

    devices: int | str | list[int] = option(1, check=_devices,
                                            help="Lightning devices per machine: a count, a list of GPU ids "
                                                 "written [0,1], or auto (every GPU; one process on a CPU); "
                                                 "more than one runs one process each")
    num_nodes: int = option(1, help="machines working together (each runs --devices processes)", check=_ONE)
    strategy: str = option("auto", check=_strategy,
                           help="Lightning strategy, e.g. ddp; auto is ddp when more than one process runs")


@dataclass(frozen=True)
class RunConfig(ParallelOptions):
    """Settings every training job shares (``pretrain`` and ``finetune``)."""

    data: str | None = option(None, help="image folder", default_text="the built-in glyphs, no download",
                              metavar="DIR")
    image_size: int | None = option(
        None, help="square training size in pixels, at least the architecture's down-sampling "
                   "(ResNets 32, tiny 8)", check=_ONE,
        default_text="32 for the built-in data; folders: 64 on a CPU, 128 on a GPU")
    batch_size: int | None = option(None, help="images per batch in each process", check=_ONE,
                                    default_text="128; 256 for folders on a GPU")
    max_epochs: int | None = option(None, help="training epochs", check=_ONE,
                                    default_text="pretrain 12 (built-in) or 30; finetune 15 or 30")
    lr: float = option(1e-3, help="peak learning rate (AdamW, warm-up then cosine)", check=positive)
    weight_decay: float = option(0.05, help="AdamW weight decay", check=_ZERO)
    seed: int = option(0, help="seed of the split, the subsets, the weights and the augmentations")
    num_workers: int | None = option(None, help="image decoding processes", check=_ZERO,
                                     default_text="0 for the built-in data, else min(4, CPUs)")
    precision: str | None = option(None, convert=lambda v: str(v) if isinstance(v, int) else v,
                                   check=_precision,
                                   help="Lightning precision, e.g. 32-true or bf16-mixed "
                                                 "(config.yaml records the one used)",
                                   default_text="bf16-mixed on GPUs that support it, else 32-true")
    limit: int | None = option(None, help="use a seeded subset of N training images (the built-in data: "
                                          "also N validation images)", check=_ONE,
                               default_text="all images")
    out: str | None = option(None, help="run folder", default_text="a new folder in runs/", metavar="DIR")
    resume: bool = option(False, help="continue the run in --out from its last checkpoint")
    overwrite: bool = option(False, help="reuse a non-empty --out, replacing what is there")
    cache: bool = option(True, help="decode images once into the decode cache and reuse them")
    strict: bool = option(False, help="fail on the first file or class folder that cannot be used "
                                      "(one line naming it) instead of skipping it and listing it")
    data_on_device: bool | None = option(
        None, help="keep decoded images in GPU memory and sample there",
        default_text="on a GPU, when they fit in a quarter of its free memory")
    compile: bool = option(False, help="torch.compile encoder and head (slow start, faster GPU steps)")
    progress: bool | None = option(None, help="show progress bars",
                                   default_text="when the output is a terminal, not in a log file")
    keep_checkpoint: bool = option(
        True, help="keep checkpoints/last.ckpt when the run ends (only --resume needs it; "
                   "deleting it loses nothing else)")
    verbose: bool = option(False, help="show PyTorch Lightning's banners, tips and known warnings "
                                       "(selfsup -v on the command line)")
    checkpoint_every_steps: int | None = option(
        None, help="also save checkpoints/last.ckpt every N training steps", check=_ONE,
        default_text="at the end of every epoch only")
    checkpoint_every_minutes: float | None = option(
        None, help="also save checkpoints/last.ckpt every N minutes of training", check=positive,
        default_text="at the end of every epoch only")


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """``selfsup pretrain`` settings."""

    task: str = option("rotation", help="pretext task (selfsup tasks lists them)")
    task_options: dict[str, Any] = option(help="options of the task (selfsup tasks --options NAME)",
                                          default_factory=dict, default_text="the task's defaults")
    arch: str = option("resnet18", help="encoder architecture: resnet18, resnet34, tiny or a plugin's")
    val_fraction: float = option(0.1, help="share of --data held out to validate the pretext",
                                 check=within(0.0, 0.9))


def _name_list(value: Any) -> Any:
    """For ``convert=``: a comma-separated string of names is the list of those names."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _help_of(cls: type[Options], name: str) -> str:
    """The help text ``cls`` declares for option ``name``: a subclass that only changes the
    default text of an inherited option keeps its meaning in one place."""
    return cls.__dataclass_fields__[name].metadata["help"]


def _val_fraction_option() -> Any:
    """``--val-fraction`` of the commands that hold out part of a labelled folder (finetune, evaluate)."""
    return option(0.2, help="share of --data held out when there is no --val-data", check=within(0.0, 0.9),
                  default_text="--like's, else 0.2")


def _stage_option() -> Any:
    """``--stage`` of the commands that read frozen features (evaluate, bench eval)."""
    return option(None, help="kNN and the probe read the mean-pooled map of this encoder stage, shallow to deep "
                             "from 0 (ResNets: 0 stem, 1-4 layer1-layer4; -1 the deepest), instead of its "
                             "pooled output", default_text="the encoder's output", metavar="N")


@dataclass(frozen=True)
class FinetuneConfig(RunConfig):
    """``selfsup finetune`` settings. ``encoder="none"`` trains from scratch."""

    encoder: str = option("none", help="encoder.safetensors from pretrain, or none (from scratch)",
                         metavar="FILE|none")
    like: str | None = option(
        None, help="mirror a run: take architecture and image size from its encoder.json, and from a "
                   "finetune run folder also epochs, batch size, lr, weight decay, label fraction, --augment, "
                   "--data, --val-data, and the --seed, --val-fraction and --limit that pick the labelled images "
                   "(settings given here win, with a warning where they differ)",
        default_text="none: the stated defaults", metavar="RUN|FILE")
    arch: str | None = option(None, help="encoder architecture",
                              default_text="the encoder's, else --like's, else resnet18")
    data: str | None = option(None, help=_help_of(RunConfig, "data"), default_text="--like's, else the built-in "
                              "glyphs, no download", metavar="DIR")
    val_data: str | None = option(None, help="labelled validation folder",
                                  default_text="--like's, else --val-fraction of --data", metavar="DIR")
    val_fraction: float = _val_fraction_option()
    image_size: int | None = option(None, help=_help_of(RunConfig, "image_size"), check=_ONE,
                                    default_text="the encoder's, else --like's, else 32 for the built-in data; "
                                                 "folders: 64 on a CPU, 128 on a GPU")
    seed: int = option(0, help=_help_of(RunConfig, "seed"), default_text="--like's, else 0")
    limit: int | None = option(None, help=_help_of(RunConfig, "limit"), check=_ONE,
                               default_text="--like's, else all images")
    max_epochs: int | None = option(None, help=_help_of(RunConfig, "max_epochs"), check=_ONE,
                                    default_text="--like's, else 15 (built-in data) or 30")
    batch_size: int | None = option(None, help=_help_of(RunConfig, "batch_size"), check=_ONE,
                                    default_text="--like's, else 128; 256 for folders on a GPU")
    label_fraction: float | None = option(None, help="seeded, class-balanced share of the labels to train on",
                                          check=within(1e-9, 1.0), default_text="--like's, else 1.0")
    lr: float | None = option(None, help="peak learning rate (AdamW, warm-up then cosine)", check=positive,
                              default_text="--like's, else 0.001")
    weight_decay: float | None = option(None, help="AdamW weight decay", check=_ZERO,
                                        default_text="--like's, else 0.05")
    augment: list[str] = option(
        default_factory=lambda: ["crop_flip"], convert=_name_list, metavar="NAMES",
        help="augmentations of each training batch, in order, written [crop_flip, color_jitter] or "
             "crop_flip,color_jitter ([] for none); selfsup augmentations lists them; each takes its "
             "defaults, but crop_flip its fine-tuning scale [0.35, 1.0]")


@dataclass(frozen=True)
class EvaluateConfig(ParallelOptions):
    """``selfsup evaluate`` settings."""

    encoder: str | None = option(None, help="encoder.safetensors from pretrain, or none (random init)",
                                 default_text="required", metavar="FILE|none")
    protocol: Literal["knn", "linear", "finetune"] | None = option(
        None, help="knn, linear (probe on frozen features) or finetune", default_text="required")
    like: str | None = option(
        None, help="mirror a run (with --encoder none): architecture and image size from its encoder.json; "
                   "from a finetune run folder also epochs, batch size, label fraction (and for --protocol "
                   "finetune its lr, weight decay and --augment), --data, --val-data, and the --seed, "
                   "--val-fraction and --limit that pick the labelled images (settings given here win, with a "
                   "warning where they differ)",
        default_text="none: the stated defaults", metavar="RUN|FILE")
    arch: str | None = option(None, help="encoder architecture",
                              default_text="the encoder's, else --like's, else resnet18")
    data: str | None = option(None, help="labelled train folder", default_text="--like's, else the built-in glyphs",
                              metavar="DIR")
    val_data: str | None = option(None, help="labelled validation folder",
                                  default_text="--like's, else --val-fraction of --data", metavar="DIR")
    val_fraction: float = _val_fraction_option()
    label_fraction: float | None = option(None, help="seeded, class-balanced share of the train labels",
                                          check=within(1e-9, 1.0), default_text="--like's, else 1.0")
    max_epochs: int | None = option(None, help="fine-tune epochs", check=_ONE,
                                    default_text="--like's, else as selfsup finetune chooses")
    seed: int = option(0, help="seed of the split, the label subset, the random encoder and the training",
                       default_text="--like's, else 0")
    stage: int | None = _stage_option()  # knn and linear only (validate)
    image_size: int | None = option(None, help="square image size", check=_ONE,
                                    default_text="the encoder's, else --like's, else as selfsup finetune")
    batch_size: int | None = option(None, help="images per batch", check=_ONE,
                                    default_text="--like's, else as selfsup finetune chooses")
    limit: int | None = option(None, help="use a seeded subset of N train images (the built-in data: "
                                          "also N validation images)", check=_ONE,
                               default_text="--like's, else all images")
    out: str | None = option(None, help="folder for results.jsonl", default_text="a new folder in runs/",
                             metavar="DIR")
    progress: bool = option(False, help="show fine-tuning progress bars")
    strict: bool = option(False, help="fail on the first file or class folder that cannot be used "
                                      "instead of skipping it and listing it")
    verbose: bool = option(False, help="show PyTorch Lightning's banners, tips and known warnings "
                                       "(selfsup -v on the command line)")

    def validate(self) -> None:
        if self.encoder is None:
            raise ValueError("encoder is required: an encoder.safetensors written by pretrain, or none")
        if self.protocol is None:
            raise ValueError("protocol is required: knn, linear or finetune")
        if self.stage is not None and self.protocol == "finetune":
            raise ValueError("--stage applies to the frozen protocols (knn, linear): finetune trains the whole "
                             "network")


@dataclass(frozen=True)
class CacheConfig(Options):
    """``selfsup cache`` settings."""

    action: Literal["list", "verify", "clear"] | None = option(
        None, help="list the entries, verify their checksums, or clear them", default_text="required")
    cache_dir: str | None = option(None, help="decode cache folder",
                                   default_text="$SELFSUP_CACHE_DIR, else $XDG_CACHE_HOME/selfsup or ~/.cache/selfsup",
                                   metavar="DIR")
    older_than: float | None = option(None, help="clear: only entries not used for this many days", check=_ZERO,
                                      default_text="every entry", metavar="DAYS")
    max_gb: float | None = option(None, help="clear: the least recently used entries until the rest fit in "
                                             "this many GB", check=_ZERO, default_text="no size limit",
                                  metavar="GB")

    def validate(self) -> None:
        if self.action is None:
            raise ValueError("action is required: list, verify or clear")


@dataclass(frozen=True)
class BenchTasksConfig(Options):
    """``selfsup bench tasks`` settings."""

    device: str | None = option(None, help="cuda or cpu", default_text="cuda when available")
    image_size: int | None = option(None, help="image side in pixels", check=_ONE,
                                    default_text="224 on a GPU, 64 on a CPU")
    batch_size: int | None = option(None, help="images per batch", check=_ONE,
                                    default_text="256 on a GPU, 32 on a CPU")
    arch: str = option("resnet34", help="encoder of the timed model")
    repeats: int | None = option(None, help="timed calls; the median is reported", check=_ONE,
                                 default_text="20 on a GPU, 5 on a CPU")
    warmup: int = option(2, help="untimed calls first", check=_ZERO)
    tasks: str = option("*", help="shell pattern of the task names to time")


@dataclass(frozen=True)
class BenchThroughputConfig(Options):
    """``selfsup bench throughput`` settings."""

    data: str | None = option(None, help="image folder (any tree of images)", default_text="required",
                              metavar="DIR")
    image_size: int = option(64, help="square training size", check=_ONE)
    arch: str = option("resnet18", help="encoder architecture")
    task: str = option("rotation", help="pretext task of selfsup's loop")
    num_workers: int = option(2, help="loader processes of the tutorial's pipeline and selfsup's", check=_ZERO)
    batch_size: int = option(128, help="images per batch", check=_ONE)
    steps: int = option(10, help="timed train steps per measurement", check=_ONE)
    data_steps: int = option(30, help="timed batches per data-path measurement", check=_ONE)
    warmup: int = option(2, help="untimed steps before each measurement", check=_ZERO)
    repeats: int = option(3, help="interleaved repetitions; medians are reported", check=_ONE)
    limit: int | None = option(None, help="use a seeded, class-stratified subset of N images", check=_ONE,
                               default_text="all images")
    cache_dir: str | None = option(None, help="decode cache folder",
                                   default_text="a fresh temporary one, so the build is timed", metavar="DIR")
    device: str | None = option(None, help="cuda or cpu", default_text="cuda when available")
    threads: int | None = option(None, help="intra-op CPU threads of the main process", check=_ONE,
                                 default_text="PyTorch's choice")
    seed: int = option(0, help="seed of the subset and the shuffling")

    def validate(self) -> None:
        if self.data is None:
            raise ValueError("data is required: an image folder to read")


IMAGENETTE_ENV = "SELFSUP_IMAGENETTE"


@dataclass(frozen=True)
class BenchEvalConfig(Options):
    """``selfsup bench eval`` settings."""

    data: str | None = option(None, help="Imagenette root with train/ and val/",
                              default_text=f"${IMAGENETTE_ENV}", metavar="DIR")
    tasks: str = option("rotation,cutout,crappify", help="comma-separated tasks to pretrain")
    task_options: dict[str, dict[str, Any]] = option(
        help="options per task, e.g. {rotation: {num_transforms: 6}}", default_factory=dict,
        default_text="each task's defaults")
    arch: str = option("resnet18", help="encoder architecture")
    image_size: int = option(32, help="square image size", check=_ONE)
    batch_size: int = option(128, help="images per batch", check=_ONE)
    pretrain_epochs: int = option(30, help="pretext epochs of each task, per seed", check=_ONE)
    task_epochs: dict[str, int] = option(help="pretext epochs of one task, overriding --pretrain-epochs",
                                         default_factory=dict, default_text="none")
    finetune_epochs: int = option(30, help="fine-tune epochs", check=_ONE)
    seeds: int = option(2, help="seeds: each pretrains, probes and fine-tunes anew (2 or more measure the "
                                "spread)", check=_ONE)
    label_fraction: float = option(0.1, help="share of the train labels for fine-tuning",
                                   check=within(1e-9, 1.0))
    full_finetune: bool = option(False, help="also fine-tune with all labels (same epochs)")
    stage: int | None = _stage_option()
    limit: int | None = option(None, help="use a seeded, class-stratified subset of N train images (each seed's "
                                    "pretraining and fine-tunes draw their own, shared by every encoder; "
                                    "kNN and the probe use seed 0's)",
                               check=_ONE, default_text="all images")
    threads: int | None = option(None, help="intra-op CPU threads (1 is faster on a busy machine)", check=_ONE,
                                 default_text="PyTorch's choice")
    num_workers: int | None = option(None, help="decoding processes", check=_ZERO, default_text="min(2, CPUs)")
    out: str | None = option(None, help="report folder", default_text="a new folder in runs/", metavar="DIR")

    def task_list(self) -> list[str]:
        """The names in :attr:`tasks`."""
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def validate(self) -> None:
        names = self.task_list()
        # A multi-task row is its own name: rotation=N does not reach rotation+cutout.
        for flag, given, example in (("--task-option", self.task_options, "rotation+cutout:cutout.boxes=[1,4]"),
                                     ("--task-epochs", self.task_epochs, "rotation+cutout=N")):
            for name in given:
                if name not in names:
                    raise ValueError(f"{flag} names task {name!r}, which is not in tasks ({', '.join(names)}); "
                                     f"a multi-task row takes its own, e.g. {flag} {example}")


@dataclass(frozen=True)
class BenchGpuConfig(Options):
    """``selfsup bench gpu`` settings: every GPU measurement in one run, sized to a time budget."""

    data: str | None = option(None, help="Imagenette root (its train/ is read) or any image folder",
                              default_text=f"${IMAGENETTE_ENV}", metavar="DIR")
    device: str | None = option(None, help="cuda, or cpu for a smoke test at tiny sizes (GPU-only parts skipped)",
                                default_text="cuda; an error without a GPU")
    budget_minutes: float = option(10.0, help="wall time the whole run must fit in: sizes the steps and the "
                                              "nvjpeg decode subset; a section is skipped once it is spent",
                                   check=positive)
    image_size: int = option(128, help="square size of the throughput and comparison sections", check=_ONE)
    tasks_image_size: int = option(224, help="square size of the tasks section", check=_ONE)
    batch_size: int = option(256, help="images per batch, every section", check=_ONE)
    arch: str = option("resnet34", help="encoder of the throughput and comparison sections")
    tasks_arch: str = option("resnet18", help="encoder of the tasks section")
    tasks: str = option("*", help="shell pattern of the task names the tasks section times")
    task: str = option("rotation", help="pretext task of the throughput and comparison sections")
    steps: int | None = option(None, help="timed steps per measurement (tasks section: timed calls); fixed "
                                          "steps leave the budget only the skipping", check=_ONE,
                               default_text="what fits the budget, at most 20")
    repeats: int = option(3, help="interleaved repetitions of each measurement; medians are reported", check=_ONE)
    warmup: int = option(2, help="untimed steps before each measurement", check=_ZERO)
    num_workers: int | None = option(None, help="loader and PIL decoding processes", check=_ZERO,
                                     default_text="min(4, CPUs)")
    limit: int | None = option(None, help="use a seeded, class-stratified subset of N images", check=_ONE,
                               default_text="all images")
    threads: int | None = option(None, help="intra-op CPU threads of the main process", check=_ONE,
                                 default_text="PyTorch's choice")
    seed: int = option(0, help="seed of the subsets and the shuffling")
    out: str | None = option(None, help="report folder: bench_gpu.md and bench_gpu.jsonl",
                             default_text="a new folder in runs/", metavar="DIR")


# -- reading and resolving -------------------------------------------------------------------

# Defaults chosen from where the data comes from and what runs it.
_BUILTIN = {"image_size": 32, "batch_size": 128}
_FOLDER_CPU = {"image_size": 64, "batch_size": 128}
_FOLDER_GPU = {"image_size": 128, "batch_size": 256}
_EPOCHS = {("pretrain", True): 12, ("pretrain", False): 30, ("finetune", True): 15, ("finetune", False): 30}
# Fine-tune settings that are None until --like or these defaults fill them.
_RECIPE = {"lr": RunConfig.lr, "weight_decay": RunConfig.weight_decay, "label_fraction": 1.0}


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML configuration file (a mapping at the top level).

    Relative paths inside it are read as given, from the current folder.
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values.")
    return loaded


def resolve_defaults(config: ConfigT, job: Literal["pretrain", "finetune"]) -> ConfigT:
    """Fill every ``None`` size/epoch/worker/precision/recipe setting from the data source and the device."""
    import torch  # only here: the rest of this module stays light

    builtin = config.data is None
    table = _BUILTIN if builtin else (_FOLDER_GPU if torch.cuda.is_available() else _FOLDER_CPU)
    updates: dict[str, Any] = {k: v for k, v in table.items() if getattr(config, k) is None}
    if config.max_epochs is None:
        updates["max_epochs"] = _EPOCHS[(job, builtin)]
    if config.num_workers is None:
        updates["num_workers"] = 0 if builtin else min(4, os.cpu_count() or 1)
    if config.precision is None:
        updates["precision"] = default_precision()
    updates.update({k: v for k, v in _RECIPE.items() if getattr(config, k, 0) is None})
    return config.replace(**updates)


def default_precision() -> str:
    """bf16 autocast where the GPU supports it, fp32 elsewhere."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
