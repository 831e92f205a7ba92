"""``selfsup bench eval``: does pretraining beat a random encoder?

For each chosen task and each seed (``--seeds``: two or more measure the
spread; one gives no verdict) it pretrains an encoder on Imagenette
``train`` without labels, then judges it on ``val`` three ways, next to the
same architecture randomly initialised with the same seed, measured in the
same run:

* kNN (k = 20, cosine, votes weighted by exp(sim / 0.07)) on frozen features,
  bank = every labelled train image;
* linear probe on frozen, cached, standardised features;
* fine-tune of the whole network with a seeded, class-balanced 10 % of the
  train labels;
* optionally (``--full-finetune``) fine-tune with all labels.

The random encoder's fine-tunes mirror the first task's fine-tune runs
(``--encoder none --like RUN``), so both rows train the same network at the
same size with the same recipe.

Every seed repeats the pretraining too, so the seed range of a row holds
the pretraining's spread as well as the evaluation's: multi-threaded CPU
kernels alone make two pretrainings with the same seed differ by several
kNN points. "Beats random" means the gain exceeds the larger of the two
rows' seed ranges. It writes ``bench_eval.md`` (the table), ``bench_eval.json`` (every
number), ``bench_eval.png`` (a bar chart, when matplotlib is installed: the
``plot`` extra: mean bars, seed-range error bars, chance line; embedded in
the Markdown with the command that reproduces it) and ``results.jsonl`` (one
line per evaluation) into ``--out``.

Default size, and why: 32 x 32 px, ResNet-18, 30 pretext epochs on all of
train for each of 2 seeds, 30 fine-tune epochs. On 2 idle CPU cores a
ResNet-18 train step runs at ~1,100 images/s at 32 px but ~240 at 64 px;
an epoch of a U-Net task (cutout, crappify) or of simclr costs about 1.75
rotation epochs (``docs/performance.md``). At 64 px a ~90-minute budget
leaves too few pretext epochs to matter. Measured
on 2 cores shared with other jobs (about 4x slower than idle): 8 pretext
epochs of the three tasks took 162 + 523 + 657 s and each 20-epoch
fine-tune 96-229 s; scaled to idle cores, 30 epochs of the three default
tasks for each of 2 seeds come to about 40 min of pretraining in all, and
the fine-tunes to about 10. For a 64 px protocol pass ``--image-size 64
--pretrain-epochs 12``. On a busy shared machine use ``--threads 1``: with
other processes on the cores, two intra-op threads ran a ResNet-18 step 17x
slower than one. Each seed pretrains anew, so the pretraining time grows
with ``--seeds``; ``--seeds 1`` measures no spread and gives no verdict.
Results in ``docs/benchmarks.md``.

Example:
    $ selfsup bench eval --tasks rotation --pretrain-epochs 10 --threads 1
    $ selfsup bench eval --limit 3000 --task-option rotation:num_transforms=6
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfsup_core.bench.timing import machine
from selfsup_core.config import IMAGENETTE_ENV, BenchEvalConfig
from selfsup_core.errors import DataError
from selfsup_core.evaluation.features import check_stage
from selfsup_core.evaluation.protocols import (
    RESULTS_NAME,
    append_result,
    frozen_protocols,
    labelled_split,
    open_encoder,
)
from selfsup_core.models.encoders import check_image_size
from selfsup_core.plugin.registry import create_task
from selfsup_core.training.runs import new_run_dir, package_versions, write_json
from selfsup_core.wording import counted

logger = logging.getLogger(__name__)

DEFAULT_TASKS = ("rotation", "cutout", "crappify")
RANDOM = "random init"
CHART_NAME = "bench_eval.png"


def default_data() -> Path | None:
    """``$SELFSUP_IMAGENETTE``, where it is set."""
    value = os.environ.get(IMAGENETTE_ENV)
    return Path(value).expanduser() if value else None


@dataclass
class Row:
    """One encoder's measurements (several values = one per seed)."""

    encoder: str
    task_options: dict[str, Any] = field(default_factory=dict)
    resolved_options: dict[str, Any] = field(default_factory=dict)
    pretrain_epochs: int = 0
    pretrain_seconds: list[float] = field(default_factory=list)  # per seed
    pretrain_metrics: list[dict[str, float]] = field(default_factory=list)  # per seed
    knn: list[float] = field(default_factory=list)
    linear: list[float] = field(default_factory=list)
    finetune: list[float] = field(default_factory=list)
    finetune_full: list[float] = field(default_factory=list)


def run(args: BenchEvalConfig) -> int:
    """Run the benchmark, write the table, JSON and chart; returns 0."""
    started = time.perf_counter()
    tasks, options, task_epochs = args.task_list(), args.task_options, args.task_epochs
    root = Path(args.data).expanduser() if args.data else default_data()
    if root is None:
        raise DataError(f"no data: pass --data IMAGENETTE_ROOT or set {IMAGENETTE_ENV} (see docs/benchmarks.md).")
    train_dir, val_dir = root / "train", root / "val"
    if not (train_dir.is_dir() and val_dir.is_dir()):
        raise DataError(f"{root} needs train/ and val/ folders (Imagenette layout): download Imagenette "
                        f"and pass --data or set {IMAGENETTE_ENV}.")
    encoder = check_image_size(args.arch, args.image_size)  # before any data is read
    if args.stage is not None:
        check_stage(encoder, args.stage)  # likewise
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else new_run_dir("bench-eval")
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    workers = args.num_workers if args.num_workers is not None else min(2, os.cpu_count() or 1)
    common = {"arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
              "limit": args.limit, "num_workers": workers, "progress": False}

    split = labelled_split(str(train_dir), str(val_dir), args.image_size, limit=args.limit, seed=0,
                           num_workers=workers)
    assert split.val is not None
    log = out / RESULTS_NAME

    def finetune_rows(encoders: dict[int, str], row: Row, tag: str,
                      like: dict[tuple[float, int], str] | None = None) -> dict[tuple[float, int], str]:
        """Fine-tune per label fraction and seed (``encoders[seed]``); returns the fine-tune run folders.

        With ``like``, each fine-tune mirrors the run of the same fraction and
        seed (``--encoder none --like RUN``: same network, size and recipe).
        """
        from selfsup_core.evaluation.protocols import evaluate

        fractions = [(args.label_fraction, row.finetune)] + ([(1.0, row.finetune_full)] if args.full_finetune else [])
        runs = {}
        for fraction, values in fractions:
            for seed in seeds:
                where = {"encoder": encoders[seed], "protocol": "finetune", "data": str(train_dir),
                         "val_data": str(val_dir), "seed": seed, "limit": args.limit, "out": out}
                if like:
                    recipe = {"like": like[(fraction, seed)]}
                else:
                    recipe = {"label_fraction": fraction, "max_epochs": args.finetune_epochs, "arch": args.arch,
                              "image_size": args.image_size, "batch_size": args.batch_size}
                result = evaluate(**where, **recipe)
                values.append(result.top1)
                runs[(fraction, seed)] = result.details["finetune_run"]
                logger.info("%s fine-tune %.0f%% seed %d: %.4f", tag, fraction * 100, seed, result.top1)
        return runs

    def frozen_rows(encoder: str, row: Row, seed: int) -> None:
        loaded = open_encoder(encoder, args.arch, seed)
        for result in frozen_protocols(loaded, split.train, split.val, ("knn", "linear"), seed=seed,
                                       batch_size=256, stage=args.stage):
            result.details["data"] = str(root)
            append_result(log, result)
            getattr(row, result.protocol).append(result.top1)
            logger.info("%s %s seed %d: %.4f", row.encoder, result.protocol, seed, result.top1)

    rows = []
    tuned: dict[tuple[float, int], str] | None = None  # the first task's fine-tune runs, for the baseline

    from selfsup_core.training.pretraining import pretrain

    for task in tasks:
        epochs = task_epochs.get(task, args.pretrain_epochs)
        # Every option the task ran with, defaults included: defaults change between versions.
        resolved = create_task(task, **options.get(task, {})).options.to_dict()
        row = Row(task, options.get(task, {}), resolved, epochs)
        encoders = {}
        for seed in seeds:  # one pretraining per seed: the row's spread holds the pretraining's
            logger.info("pretraining %s for %d epoch(s), seed %d", task, epochs, seed)
            pre = pretrain(task=task, task_options=options.get(task, {}), data=str(train_dir),
                           max_epochs=epochs, seed=seed, out=str(out / f"pretrain-{task}-seed{seed}"),
                           overwrite=True, keep_checkpoint=False, **common)  # the encoder file is what is kept
            row.pretrain_seconds.append(pre.seconds)
            row.pretrain_metrics.append(pre.metrics)
            encoders[seed] = str(pre.encoder_path)
            frozen_rows(encoders[seed], row, seed)
        runs = finetune_rows(encoders, row, task)
        tuned = tuned or runs
        rows.append(row)

    # The baseline: the same architecture randomly initialised, one encoder per seed. Fine-tuned, it
    # mirrors the first task's fine-tune runs (--encoder none --like RUN): same network, size and recipe.
    baseline = Row(RANDOM)
    for seed in seeds:
        frozen_rows("none", baseline, seed)
    finetune_rows(dict.fromkeys(seeds, "none"), baseline, RANDOM, like=tuned)
    rows.insert(0, baseline)

    seconds = time.perf_counter() - started
    settings = {**args.to_dict(), "data": str(root), "train_images": len(split.train),
                "val_images": len(split.val), "num_classes": len(split.train.classes), "seeds": seeds}
    report = {"settings": settings, "machine": machine(), "versions": package_versions(),
              "wall_seconds": seconds, "command": reproduce_command(args),
              "rows": [summarise(r, baseline) for r in rows]}
    write_json(out / "bench_eval.json", report)
    chart_note = write_chart(report, out / CHART_NAME)
    table = markdown_table(report)
    (out / "bench_eval.md").write_text(markdown_report(report, table, chart=(out / CHART_NAME).is_file()))
    print(table)
    print(chart_note)
    print(f"wall time {seconds / 60:.1f} min; results in {out}")
    return 0


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def summarise(row: Row, baseline: Row) -> dict[str, Any]:
    """Means, seed ranges, gains over the random encoder and the beats verdicts of one row."""
    summary: dict[str, Any] = {"encoder": row.encoder, "task_options": row.task_options,
                               "resolved_task_options": row.resolved_options,
                               "pretrain_epochs": row.pretrain_epochs, "pretrain_seconds": row.pretrain_seconds,
                               "pretrain_metrics": row.pretrain_metrics}
    for protocol in ("knn", "linear", "finetune", "finetune_full"):
        values, base = getattr(row, protocol), getattr(baseline, protocol)
        if not values:
            continue
        mean = statistics.fmean(values)
        entry: dict[str, Any] = {"values": values, "mean": mean, "spread": _spread(values)}
        if row is not baseline and base:
            gain = mean - statistics.fmean(base)
            noise = max(_spread(values), _spread(base))
            measured = len(values) > 1 and len(base) > 1
            # One seed measures no spread: no verdict rather than "yes" against a noise of 0.
            entry.update(gain=gain, noise=noise, beats=gain > noise if measured else None, measured_spread=measured)
        summary[protocol] = entry
    return summary


def row_name(row: dict[str, Any]) -> str:
    """A row's name in the table and the chart: the encoder, then the task options it was given."""
    return " ".join([row["encoder"], *(f"{k}={v}" for k, v in row["task_options"].items())])


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    text = f"{entry['mean'] * 100:.1f}"
    if len(entry["values"]) > 1:
        text += f" ({min(entry['values']) * 100:.1f}-{max(entry['values']) * 100:.1f})"
    return text


def _gain(entry: dict[str, Any] | None) -> str:
    if entry is None or "gain" not in entry:
        return "-"
    if entry["beats"] is None:
        return f"{entry['gain'] * 100:+.1f} (one seed: noise not measured)"
    verdict = "yes" if entry["beats"] else "no"
    return f"{entry['gain'] * 100:+.1f} ({verdict}, noise {entry['noise'] * 100:.1f})"


def markdown_table(report: dict[str, Any]) -> str:
    """The table: top-1 % (seed range), gain over random init (beats? noise floor)."""
    s = report["settings"]
    full = any("finetune_full" in r for r in report["rows"])
    frac = f"{s['label_fraction'] * 100:g} %"
    header = ["encoder", "pretext epochs (s)", "kNN top-1", "vs random", "linear top-1", "vs random",
              f"fine-tune {frac} labels", "vs random"] + (["fine-tune 100 %", "vs random"] if full else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rows"]:
        name = row_name(r)
        seconds = r["pretrain_seconds"]
        pre = f"{r['pretrain_epochs']} ({statistics.fmean(seconds):.0f})" if r["pretrain_epochs"] else "-"
        cells = [name, pre]
        for protocol in ("knn", "linear", "finetune") + (("finetune_full",) if full else ()):
            cells += [_cell(r.get(protocol)), _gain(r.get(protocol))]
        lines.append("| " + " | ".join(cells) + " |")
    epochs = counted(s['finetune_epochs'], "epoch")
    notes = [
        "",
        f"Top-1 % on {s['val_images']} val images, final epoch; "
        + (f"(a-b) = range over seeds {s['seeds']}. " if len(s["seeds"]) > 1 else f"one seed ({s['seeds'][0]}). ")
        + f"{s['arch']}, {s['image_size']} x {s['image_size']} px, {s['train_images']} train images, "
        f"fine-tune {epochs}. "
        + ("" if s.get("stage") is None else
           f"kNN and probe read the mean-pooled map of encoder stage {s['stage']}, not the encoder's output. ")
        + "kNN: k=20, T=0.07, bank = all labelled train images. "
        f"Linear probe: standardised frozen features, full-batch AdamW, 300 steps. "
        f"Each seed pretrains, probes and fine-tunes anew; pretext seconds are per pretraining. "
        f"'yes' = gain larger than the noise floor (the larger seed range of the two rows). "
        f"The random-init fine-tunes mirror the first task's "
        f"(--encoder none --like RUN: same network, image size and recipe). "
        f"Wall time {report['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines + notes)


def reproduce_command(args: BenchEvalConfig) -> str:
    """The ``selfsup bench eval`` command line that repeats this run (options that differ from the defaults)."""
    from shlex import quote

    from selfsup_core.options import _value_text

    defaults = BenchEvalConfig()
    parts = ["selfsup bench eval"]
    for name, value in args.to_dict().items():
        if value == getattr(defaults, name) or name in ("out",):
            continue
        if name == "task_options":
            parts += [f"--task-option {quote(f'{task}:{key}={_value_text(v)}')}"
                      for task, options in value.items() for key, v in options.items()]
        elif name == "task_epochs":
            parts += [f"--task-epochs {task}={n}" for task, n in value.items()]
        elif isinstance(value, bool):
            parts.append(f"--{'' if value else 'no-'}{name.replace('_', '-')}")
        else:
            parts.append(f"--{name.replace('_', '-')} {quote(_value_text(value))}")
    return " ".join(parts)


def markdown_report(report: dict[str, Any], table: str, *, chart: bool) -> str:
    """``bench_eval.md``: the table, the chart (when drawn) and the command that reproduces both."""
    lines = ["# selfsup bench eval", "", table]
    if chart:
        lines += [f"![val top-1 per protocol, bars = mean, error bars = range over seeds]({CHART_NAME})", ""]
    lines += ["Reproduce (Imagenette: https://github.com/fastai/imagenette, `imagenette2` at 224 px or "
              "the full-size one resized; `--data` is its root, with `train/` and `val/`):", "",
              "```bash", report.get("command", "selfsup bench eval"), "```", ""]
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: Path) -> str:
    """A grouped bar chart (one group per protocol); returns a one-line note.

    Bars are the mean top-1 over seeds; error bars span the range (min to max)
    over the seeds, drawn only where there are two or more values; a bar
    measured once (``--seeds 1``) is marked "1 seed". The legend names each
    row as the table does, options included. The dashed line is chance,
    1 / classes.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install 'selfsup[plot]')."
    protocols = [p for p in ("knn", "linear", "finetune", "finetune_full")
                 if any(p in r for r in report["rows"])]
    s = report["settings"]
    labels = {"knn": "kNN", "linear": "linear probe",
              "finetune": f"fine-tune {s['label_fraction'] * 100:g} % labels",
              "finetune_full": "fine-tune 100 % labels"}
    rows = report["rows"]
    width = 0.8 / len(rows)
    seeds = len(s.get("seeds", ())) or max((len(r[p]["values"]) for r in rows for p in protocols if p in r),
                                           default=1)
    figure, axes = plt.subplots(figsize=(2.5 + 2.2 * len(protocols), 4.6))
    top = 0.0
    for i, row in enumerate(rows):
        offset = (i - (len(rows) - 1) / 2) * width
        xs = [j + offset for j, p in enumerate(protocols) if p in row]  # no bar where nothing was measured
        entries = [row[p] for p in protocols if p in row]
        means = [e["mean"] * 100 for e in entries]
        bars = axes.bar(xs, means, width, label=row_name(row))
        for x, entry, mean in zip(xs, entries, means):
            values = [v * 100 for v in entry["values"]]
            top = max(top, *values)
            if len(values) > 1:
                axes.errorbar(x, mean, yerr=[[mean - min(values)], [max(values) - mean]], fmt="none",
                              ecolor="black", capsize=3, linewidth=1)
            else:
                axes.annotate("1 seed", (x, mean), xytext=(0, 3), textcoords="offset points", ha="center",
                              va="bottom", fontsize=6, rotation=90, color=bars.patches[0].get_facecolor())
    num_classes = s.get("num_classes")
    if num_classes:
        chance = 100 / num_classes
        axes.axhline(chance, color="gray", linestyle="--", linewidth=1,
                     label=f"chance (1/{num_classes} = {chance:.0f} %)")
    axes.set_ylim(0, min(100, top * 1.15 + 8))
    axes.set_xticks(range(len(protocols)), [labels[p] for p in protocols])
    axes.set_ylabel("val top-1 (%)")
    axes.set_title(f"{s['arch']}, {s['image_size']} px, {s.get('val_images', '?')} val images "
                   f"({Path(str(s.get('data', 'Imagenette'))).name})", fontsize=9)
    axes.legend(fontsize=7, loc="upper left")
    note = (f"bars: mean over seeds; error bars: range (min to max) over {seeds} seeds, each pretrained "
            "anew" if seeds > 1 else
            "one seed: every bar measured once (\"1 seed\"), no spread measured, no error bars")
    figure.text(0.01, 0.01, note, fontsize=7, color="dimgray")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"chart written to {path}"
