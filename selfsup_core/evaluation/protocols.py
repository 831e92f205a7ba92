"""Judge an encoder on labelled images: kNN, linear probe or fine-tune.

Three protocols, each against the same architecture randomly initialised
(``--encoder none``), the baseline every number must be read against:

* ``knn``: frozen encoder (eval mode), L2-normalised pooled features, cosine
  similarity to every labelled train image (the bank), the k = 20 nearest
  vote with weights ``exp(similarity / 0.07)``.
* ``linear``: frozen encoder, features computed once (centre crops, no
  augmentation) and standardised; a linear classifier trained on them
  full-batch with AdamW.
* ``finetune``: the whole network, exactly as ``selfsup finetune`` does it.

``--stage N`` makes ``knn`` and ``linear`` read the mean-pooled map of the
encoder's stage N instead of its pooled output: a pretext may specialise the
deepest stage on itself, and a shallower one shows what the rest learnt.

Each evaluation prints one JSON line (protocol, encoder, task, label
fraction, seed, top-1 of the final epoch, wall time and the protocol's
settings) and appends it to ``results.jsonl`` in the run folder.

Example:
    selfsup evaluate --encoder runs/rotation/encoder.safetensors \\
        --data imagenette2-224/train --val-data imagenette2-224/val --protocol knn
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from selfsup_core.config import EvaluateConfig, FinetuneConfig, ParallelOptions, resolve_defaults
from selfsup_core.data.decoded import DecodedImages, label_subset
from selfsup_core.data.sources import Split, load_split
from selfsup_core.errors import ConfigError, DataError
from selfsup_core.evaluation.features import StageFeatures, check_stage, extract_features
from selfsup_core.evaluation.knn import KNN_K, KNN_TEMPERATURE, knn_predict
from selfsup_core.evaluation.probe import PROBE_STEPS, train_linear_probe
from selfsup_core.models.encoders import build_encoder, check_image_size
from selfsup_core.models.export import load_encoder, read_encoder_info, read_matching_info
from selfsup_core.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from selfsup_core.plugin.host import PluginHost
from selfsup_core.quiet import quiet_job
from selfsup_core.tasks.metrics import top1
from selfsup_core.training.runs import apply_like, holds_out, new_run_dir, settings_line

if TYPE_CHECKING:
    from lightning_fabric import Fabric

logger = logging.getLogger(__name__)

PROTOCOLS = ("knn", "linear", "finetune")
RESULTS_NAME = "results.jsonl"


@dataclass
class EvalResult:
    """One evaluation: what was judged, how, and the top-1 it got.

    Attributes:
        protocol: ``knn``, ``linear`` or ``finetune``.
        encoder: The encoder file, or ``none``.
        task: The pretext task from ``encoder.json``, or ``none``.
        arch: Encoder architecture.
        image_size: Square image size of train and val images.
        label_fraction: Share of the labelled train images used.
        seed: Seed of the label subset, the random encoder and the training.
        top1: Validation top-1 (for trained protocols, of the final epoch).
        seconds: Wall time of the evaluation, feature extraction included.
        details: Protocol settings and extra measurements.
        primary: False in the other processes of a multi-process evaluation
            (they write and print nothing).
    """

    protocol: str
    encoder: str
    task: str
    arch: str
    image_size: int
    label_fraction: float
    seed: int
    top1: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    primary: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain values for one JSON line, details flattened in."""
        plain = dataclasses.asdict(self)
        details = plain.pop("details")
        del plain["primary"]
        return {**plain, **details}


# ---------------------------------------------------------------- encoders and data


@dataclass(frozen=True)
class LoadedEncoder:
    """An encoder ready to judge, with what describes it."""

    module: nn.Module
    name: str
    task: str
    arch: str
    image_size: int | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def open_encoder(
    encoder: str, arch: str | None = None, seed: int = 0, host: PluginHost | None = None
) -> LoadedEncoder:
    """Load an exported encoder, or build a seeded random one for ``"none"``.

    Raises:
        EncoderFileError: a missing or mismatched encoder file.
        ConfigError: ``arch`` differs from the file's.
    """
    if encoder == "none":
        arch = arch or "resnet18"
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = build_encoder(arch, host=host)
        return LoadedEncoder(module, "none", "none", arch, None)
    info = read_matching_info(encoder, arch)
    return LoadedEncoder(load_encoder(encoder), str(encoder), info.task, info.arch, info.image_size,
                         info.mean, info.std)


def labelled_split(
    data: str | None, val_data: str | None, image_size: int, *, limit: int | None = None,
    seed: int = 0, num_workers: int = 0, cache: bool = True, strict: bool = False,
    report_to: Path | None = None, val_fraction: float = FinetuneConfig.val_fraction,
) -> Split:
    """Labelled train/val images, chosen as ``selfsup finetune`` chooses them.

    Without ``val_data`` a folder gives up a seeded ``val_fraction`` (20 %)
    for validation; ``data=None`` gives the built-in glyph train and val splits.
    """
    split = load_split(data, image_size, val_data=val_data, val_fraction=val_fraction,
                       limit=limit, labelled=True, seed=seed, num_workers=num_workers, cache=cache,
                       strict=strict, report_to=report_to)
    if split.val is None or len(split.val) == 0 or split.val.labels is None:
        raise DataError("evaluation needs labelled validation images: give --val-data.")
    return split


# ---------------------------------------------------------------- protocols on cached features


def frozen_protocols(
    encoder: LoadedEncoder,
    train: DecodedImages,
    val: DecodedImages,
    protocols: tuple[str, ...] = ("knn", "linear"),
    *,
    label_fraction: float = 1.0,
    seed: int = 0,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    probe_steps: int = PROBE_STEPS,
    batch_size: int = 256,
    processes: Fabric | None = None,
    stage: int | None = None,
) -> list[EvalResult]:
    """Run the frozen-feature protocols, computing the features once for all.

    Args:
        encoder: From :func:`open_encoder`.
        train: Labelled train images (the kNN bank / probe training set).
        val: Labelled validation images.
        protocols: Any of ``knn`` and ``linear``.
        label_fraction: Use a seeded, class-balanced share of ``train``.
        processes: A launched Lightning ``Fabric`` of several processes: they
            share the feature extraction, and each gets every feature (the
            kNN vote and the probe then run alike in each).
        stage: Read the mean-pooled map of this stage of the encoder
            (:class:`~selfsup_core.evaluation.features.StageFeatures`) instead
            of its pooled output; ``None``: the output.

    Returns:
        One :class:`EvalResult` per protocol; ``seconds`` includes the
        feature extraction (shared time is counted in each).
    """
    unknown = set(protocols) - {"knn", "linear"}
    if unknown:
        raise ConfigError(f"not a frozen-feature protocol: {', '.join(sorted(unknown))}.")
    assert val.labels is not None
    labelled = label_subset(train, label_fraction, seed)
    assert labelled.labels is not None
    num_classes = max(len(train.classes), int(labelled.labels.max()) + 1, int(val.labels.max()) + 1)
    module = encoder.module if stage is None else StageFeatures(encoder.module, stage)
    started = time.perf_counter()
    bank = extract_features(module, labelled, mean=encoder.mean, std=encoder.std,
                            batch_size=batch_size, processes=processes)
    queries = extract_features(module, val, mean=encoder.mean, std=encoder.std,
                               batch_size=batch_size, processes=processes)
    feature_seconds = time.perf_counter() - started
    common = {"encoder": encoder.name, "task": encoder.task, "arch": encoder.arch,
              "image_size": train.image_size, "label_fraction": label_fraction, "seed": seed}
    results = []
    for protocol in protocols:
        begun = time.perf_counter()
        if protocol == "knn":
            fewest, votes = int(torch.bincount(labelled.labels).min()), min(k, len(bank))
            if votes > fewest:  # the standard k = 20 assumes a bank of many images per class
                logger.warning("kNN votes over k = %d neighbours in a bank of %d images, %d in its smallest "
                               "class: every vote counts other classes' images, so the score is coarse at this "
                               "size", votes, len(bank), fewest)
            predicted = knn_predict(bank, labelled.labels, queries, num_classes, k=k, temperature=temperature)
            details: dict[str, Any] = {"k": votes, "temperature": temperature,
                                       "bank_size": len(bank)}
        else:
            probe = train_linear_probe(bank, labelled.labels, num_classes, steps=probe_steps, seed=seed)
            with torch.no_grad():
                predicted = probe(queries).argmax(1)
            details = {"optimizer": "AdamW full-batch, cosine", "steps": probe_steps,
                       "standardised": True, "train_images": len(bank)}
        seconds = feature_seconds + time.perf_counter() - begun
        details.update(val_images=len(val), feature_dim=int(bank.shape[1]), feature_seconds=feature_seconds)
        if stage is not None:
            details["stage"] = stage
        results.append(EvalResult(protocol=protocol, top1=float(top1(predicted, val.labels)), seconds=seconds,
                                  details=details, **common))
    return results


# ---------------------------------------------------------------- the one-call API


@quiet_job
def evaluate(
    config: EvaluateConfig | None = None, *, host: PluginHost | None = None, **overrides: Any
) -> EvalResult:
    """Evaluate one encoder with one protocol and append the result to ``results.jsonl``.

    Args:
        config: Settings (:class:`~selfsup_core.config.EvaluateConfig`);
            ``None`` starts from the defaults.
        host: Whose plugins provide the encoder; ``None`` is the process's host.
        **overrides: Any of its fields, for example ``encoder`` (an
            ``encoder.safetensors`` or its folder, or ``"none"`` for a seeded
            random encoder of ``arch``), ``protocol`` (``knn``, ``linear`` or
            ``finetune``), ``data``, ``val_data``, ``label_fraction``, and
            ``like`` (a run whose architecture, image size and recipe a
            ``"none"`` baseline mirrors).

    The settings used are logged (INFO) in one line. Lightning's banners and
    known warnings are hidden unless ``verbose=True``.

    Example:
        >>> result = evaluate(encoder="none", protocol="knn", arch="tiny", limit=100)  # doctest: +SKIP
        >>> result.as_dict()["k"]
        20
    """
    config = (config or EvaluateConfig(encoder="none", protocol="knn")).updated(overrides, source="evaluate()")
    config = apply_like(config)  # --like RUN: its architecture, image size and recipe, where not given
    if config.label_fraction is None:
        config = config.replace(label_fraction=1.0)
    encoder, protocol, arch, seed = config.encoder, config.protocol, config.arch, config.seed
    data, val_data, label_fraction, limit = config.data, config.val_data, config.label_fraction, config.limit
    image_size, batch_size, out = config.image_size, config.batch_size, config.out
    assert encoder is not None and protocol is not None  # EvaluateConfig.validate
    run_dir = Path(out) if out is not None else new_run_dir(f"evaluate-{protocol}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder.")
    # Fine-tuning starts its own processes (Lightning's trainer); the frozen protocols start them here.
    processes = None if protocol == "finetune" else launch_processes(config)
    primary = processes is None or processes.is_global_zero
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if protocol == "finetune":
        result = _finetune_protocol(encoder, arch=arch, data=data, val_data=val_data,
                                    label_fraction=label_fraction, max_epochs=config.max_epochs, seed=seed,
                                    image_size=image_size, batch_size=batch_size, limit=limit,
                                    run_dir=run_dir, progress=config.progress, host=host, like=config.like,
                                    strict=config.strict, parallel=config, val_fraction=config.val_fraction)
        primary = result.primary
    else:
        loaded = open_encoder(encoder, arch, seed, host=host)
        settings = resolve_defaults(FinetuneConfig(data=data, image_size=image_size or loaded.image_size,
                                                   batch_size=batch_size, max_epochs=1), "finetune")
        assert settings.image_size is not None and settings.num_workers is not None
        check_image_size(loaded.arch, settings.image_size, host=host)  # before any data is read
        if config.stage is not None:
            check_stage(loaded.module, config.stage)  # likewise
        logger.info(settings_line(config.replace(arch=loaded.arch, image_size=settings.image_size),
                                  f"evaluate {protocol}"))
        split = labelled_split(data, val_data, settings.image_size, limit=limit, seed=seed,
                               val_fraction=config.val_fraction,
                               num_workers=settings.num_workers, strict=config.strict,
                               report_to=run_dir if primary else None)
        assert split.val is not None
        (result,) = frozen_protocols(loaded, split.train, split.val, (protocol,),
                                     label_fraction=label_fraction, seed=seed,
                                     batch_size=max(256, settings.batch_size or 0), processes=processes,
                                     stage=config.stage)
        result.details["data"] = split.source
        result.details["processes"] = 1 if processes is None else processes.world_size
        result.primary = primary
    if limit is not None:
        result.details["limit"] = limit
    if holds_out(config):
        result.details["val_fraction"] = config.val_fraction
    if config.val_data is not None:
        result.details["val_data"] = str(config.val_data)
    if config.like:
        result.details["like"] = str(config.like)
    result.seconds = time.perf_counter() - started
    if primary:  # one line per evaluation, however many processes computed it
        append_result(run_dir / RESULTS_NAME, result)
    return result


def launch_processes(config: ParallelOptions) -> Fabric | None:
    """Start the processes ``--devices``, ``--num-nodes`` and ``--strategy`` ask for, as Lightning does
    (its own launcher runs this command again; under torchrun or SLURM they exist already).

    Returns:
        The launched ``Fabric``, or ``None`` for one process.

    Raises:
        ConfigError: Lightning refuses the settings (one line, its reason).
    """
    from lightning_fabric import Fabric

    from selfsup_core.training.trainer import check_launch, default_accelerator, refused_by_lightning

    check_launch(config.devices, config.num_nodes)
    try:
        fabric = Fabric(accelerator=default_accelerator(), devices=config.devices, num_nodes=config.num_nodes,
                        strategy=config.strategy)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise refused_by_lightning(config.devices, config.num_nodes, config.strategy, exc) from None
    if fabric.world_size == 1:
        return None
    if getattr(config, "out", "") is None:  # each process would name its own folder
        raise ConfigError(f"{fabric.world_size} processes need --out DIR: every process must find the same "
                          f"run folder.")
    fabric.launch()
    return fabric


def _finetune_protocol(encoder: str, *, arch: str | None, data: str | None, val_data: str | None,
                       label_fraction: float, max_epochs: int | None, seed: int, image_size: int | None,
                       batch_size: int | None, limit: int | None, run_dir: Path,
                       progress: bool, host: PluginHost | None = None, like: str | None = None,
                       strict: bool = False, parallel: ParallelOptions | None = None,
                       val_fraction: float = FinetuneConfig.val_fraction) -> EvalResult:
    from selfsup_core.training.finetuning import finetune  # Lightning import: only when fine-tuning

    task = "none" if encoder == "none" else read_encoder_info(encoder).task
    tag = "none" if encoder == "none" else task
    outcome = finetune(encoder=encoder, arch=arch, data=data, val_data=val_data,
                       label_fraction=label_fraction, max_epochs=max_epochs, seed=seed,
                       image_size=image_size, batch_size=batch_size, limit=limit, progress=progress, host=host,
                       like=like, strict=strict, val_fraction=val_fraction,
                       keep_checkpoint=False,  # an evaluation is not resumed: no checkpoint to keep
                       out=str(_finetune_dir(run_dir, tag, seed, several=parallel is not None and (
                           parallel.devices != 1 or parallel.num_nodes != 1))),
                       **({} if parallel is None else {"devices": parallel.devices, "num_nodes": parallel.num_nodes,
                                                      "strategy": parallel.strategy}))
    recorded = _read_config(outcome.run_dir)  # written before training, by the first process
    return EvalResult(
        protocol="finetune", encoder=str(encoder), task=task, arch=str(recorded["arch"]),
        image_size=int(recorded.get("image_size") or 0), label_fraction=label_fraction, seed=seed,
        top1=outcome.val_acc, seconds=outcome.seconds,
        details={"best_top1_optimistic": outcome.best_val_acc, "epochs": len(outcome.history),
                 "train_images": outcome.train_images, "history": outcome.history,
                 "finetune_run": str(outcome.run_dir)},
        primary=outcome.primary,
    )


def _finetune_dir(run_dir: Path, tag: str, seed: int, several: bool) -> Path:
    """The fine-tuning run's folder inside ``run_dir``: timestamped, or with several processes (which
    must all name the same folder, whenever each starts) ``finetune-TAG-seedN``; a second such
    evaluation then needs another ``--out``."""
    if not several:
        return new_run_dir(f"finetune-{tag}-seed{seed}", root=run_dir)
    return run_dir / f"finetune-{tag}-seed{seed}"


def _read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def append_result(path: Path, result: EvalResult) -> None:
    """Append ``result`` as one JSON line (the file is a log: earlier lines stay)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(result.as_dict()) + "\n")
