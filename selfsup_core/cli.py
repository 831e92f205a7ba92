"""The ``selfsup`` command line: a thin layer over the Python API.

Every command's options come from its settings dataclass in
:mod:`selfsup_core.config` (one declaration gives the flags, their help with
defaults, the ``--config`` file keys and the checks), so the command line,
config files and the Python API accept the same things. User errors
(:class:`~selfsup_core.errors.SelfsupError`, and a full or read-only disk)
print one line and exit 1; SIGINT and SIGTERM exit 130 and 143, after
training saved its checkpoint, with the command that resumes it.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from selfsup_core import __version__
from selfsup_core import config as settings
from selfsup_core.errors import ConfigError, RunInterrupted, SelfsupError
from selfsup_core.options import Options, add_option_arguments, options_table, parse_value

if TYPE_CHECKING:
    from selfsup_core.plugin.host import PluginHost


@dataclass(frozen=True)
class Command:
    """One command: its settings class, one line of help and what runs it."""

    config: type[Options]
    help: str
    handler: str
    """``module:function`` called with the settings; returns the exit status."""
    extra: Callable[[argparse.ArgumentParser], None] | None = None
    exclude: tuple[str, ...] = ()


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), parse_value(value)


def _task_key_value(text: str) -> tuple[str, str, Any]:
    """``TASK:KEY=VALUE``, or ``TASK.KEY=VALUE`` as pretrain writes a multi-task part's option."""
    name, equals, value = text.partition("=")
    separator = ":" if ":" in name else "."
    task, sep, key = name.partition(separator)
    if not sep or not task.strip() or not equals:
        raise argparse.ArgumentTypeError(f"expected TASK:KEY=VALUE, got {text!r}")
    return (task.strip(), *_key_value(f"{key}={value}"))


def _pretrain_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-option", dest="task_option_items", type=_key_value, action="append",
                        default=argparse.SUPPRESS, metavar="KEY=VALUE",
                        help="a task option, repeatable; lists are written in brackets and quoted for the "
                             "shell, 'crop_scale=[0.7, 1.0]'; selfsup tasks --options NAME lists them "
                             "(default: the task's defaults)")


def _bench_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-option", dest="task_option_items", type=_task_key_value, action="append",
                        default=argparse.SUPPRESS, metavar="TASK:KEY=VALUE",
                        help="an option of one task, e.g. rotation:num_transforms=6 (or "
                             "rotation.num_transforms=6), repeatable (default: each task's defaults)")
    parser.add_argument("--task-epochs", dest="task_epoch_items", type=_key_value, action="append",
                        default=argparse.SUPPRESS, metavar="TASK=N",
                        help="pretext epochs of one task, overriding --pretrain-epochs, repeatable (default: none)")


def _cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "verify", "clear"),
                        help="list the entries (size, images, folder, last used), verify every checksum "
                             "(corrupt entries are removed), or clear them (all, --older-than DAYS, --max-gb GB)")


COMMANDS: dict[str, Command] = {
    "pretrain": Command(settings.PretrainConfig, "pretrain an encoder on a pretext task",
                        "selfsup_core.cli:run_pretrain", _pretrain_flags, exclude=("task_options",)),
    "finetune": Command(settings.FinetuneConfig, "fine-tune a classifier on an encoder (or from scratch)",
                        "selfsup_core.cli:run_finetune"),
    "evaluate": Command(settings.EvaluateConfig, "kNN, linear probe or fine-tune evaluation of an encoder",
                        "selfsup_core.cli:run_evaluate"),
    "cache": Command(settings.CacheConfig, "list, verify or clear the decode cache",
                     "selfsup_core.data.cache:run_command", _cache_flags, exclude=("action",)),
}
BENCHMARKS: dict[str, Command] = {
    "tasks": Command(settings.BenchTasksConfig, "time each task's batch generation against its train step",
                     "selfsup_core.bench.tasks:run"),
    "throughput": Command(settings.BenchThroughputConfig, "images/s of the data path and training loop",
                          "selfsup_core.bench.throughput:run"),
    "eval": Command(settings.BenchEvalConfig, "pretrain, evaluate and compare against a random encoder",
                    "selfsup_core.bench.eval:run", _bench_eval_flags, exclude=("task_options", "task_epochs")),
    "gpu": Command(settings.BenchGpuConfig, "every GPU measurement in one run: tasks, throughput, nvjpeg, data "
                                            "on device, bf16 and compile, each against its counterpart",
                   "selfsup_core.bench.gpu:run"),
}


def _add_command(commands: Any, name: str, command: Command) -> None:
    sub = commands.add_parser(name, help=command.help, description=command.help[0].upper() + command.help[1:] + ".",
                              allow_abbrev=False)
    sub.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                     help="YAML file with any of these options as keys (underscores or dashes); "
                          "the command line wins over the file, the file over the defaults (default: none)")
    sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="show every library's logs, Lightning's banners and warnings, and plugin "
                          "tracebacks, as selfsup -v COMMAND (default: off)")
    add_option_arguments(sub, command.config, exclude=(*command.exclude, "verbose"))
    if command.extra is not None:
        command.extra(sub)
    sub.set_defaults(command_spec=command, command_parser=sub)


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown flag is refused by its command's own parser, with the nearest flag.

    argparse would refuse it at the top level, with ``selfsup``'s usage and
    no hint, and would silently take ``--max-epoch`` for ``--max-epochs``:
    abbreviations are off, so a typo is never read as another flag.

    Raises:
        SystemExit: 2, after the usage and the error (argparse's convention).
    """
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        refusing = getattr(args, "command_parser", parser)
        known = [flag for action in refusing._actions for flag in action.option_strings]
        nearest = [close[0] for flag in unknown if flag.startswith("--")
                   for close in [difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.75)] if close]
        hint = f" (did you mean {'? '.join(nearest)}?)" if nearest else ""
        refusing.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser of every command (imports neither torch nor Lightning)."""
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised pretraining of image encoders.", allow_abbrev=False,
        epilog="selfsup tasks lists the installed pretext tasks; selfsup COMMAND --help, each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and plugin tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tasks = commands.add_parser("tasks", help="list installed tasks and where they come from")
    tasks.add_argument("--options", metavar="NAME", help="show the options of task NAME: type, default, meaning")
    augmentations = commands.add_parser("augmentations", help="list installed augmentations and where they come from")
    augmentations.add_argument("--options", metavar="NAME", help="show the options of augmentation NAME")
    for name, command in COMMANDS.items():
        _add_command(commands, name, command)
    bench = commands.add_parser("bench", help="benchmarks: tasks, throughput, eval, gpu")
    bench_commands = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, command in BENCHMARKS.items():
        _add_command(bench_commands, name, command)
    return parser


def settings_from_args(args: argparse.Namespace, command: Command) -> Options:
    """The command's settings: defaults < ``--config`` file < flags given on the command line."""
    names = {f.name for f in fields(command.config)}
    given = {k: v for k, v in vars(args).items() if k in names and k != "verbose"}  # -v is the parser's own
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        values = {str(k).replace("-", "_"): v for k, v in settings.read_yaml(config_file).items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"config file {config_file}: unknown key(s) {', '.join(unknown)}; "
                              f"known keys: {', '.join(sorted(names))}.")
    values.update(given)
    if getattr(args, "verbose", False) and "verbose" in names:
        values["verbose"] = True
    items = getattr(args, "task_option_items", [])
    if items and len(items[0]) == 2:  # pretrain: KEY=VALUE
        values["task_options"] = {**_mapping(values.get("task_options"), "task_options"), **dict(items)}
    elif items:  # bench eval: TASK:KEY=VALUE
        options = {task: dict(opts) for task, opts in _mapping(values.get("task_options"), "task_options").items()}
        for task, key, value in items:
            options.setdefault(task, {})[key] = value
        values["task_options"] = options
    if getattr(args, "task_epoch_items", None):
        values["task_epochs"] = {**_mapping(values.get("task_epochs"), "task_epochs"), **dict(args.task_epoch_items)}
    source = "selfsup " + (f"bench {args.bench}" if args.command == "bench" else args.command)
    return command.config.from_mapping(values, source=source)


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of names to values, got {value!r}.")
    return value


def run_pretrain(config: settings.PretrainConfig) -> int:
    """``selfsup pretrain``: train, export, then say what to run next."""
    from selfsup_core.training.pretraining import pretrain

    result = pretrain(config)
    if result.primary:  # one report per run, not one per process
        _report(result.metrics, f"encoder: {result.encoder_path}", result.seconds)
        print("\n".join(next_steps(config.data, result.run_dir, result.encoder_path)))
    return 0


def next_steps(data: str | None, run_dir: Any, encoder_path: Any) -> list[str]:
    """What to run after pretraining: judge the encoder against the same network from scratch."""
    from shlex import quote

    run, encoder = quote(str(run_dir)), quote(str(encoder_path))
    tuned, knn = quote(f"{run_dir}-finetune"), quote(f"{run_dir}-knn")  # both kNN lines in one results.jsonl
    if data is None:  # the built-in glyphs carry labels: both commands run as printed
        return ["next: fine-tune it on the glyph labels, then the same network from scratch with the same recipe:",
                f"  selfsup finetune --encoder {encoder} --out {tuned}",
                f"  selfsup finetune --encoder none --like {tuned}",
                "quicker, kNN on frozen features, pretrained then random:",
                f"  selfsup evaluate --protocol knn --encoder {encoder} --out {knn}",
                f"  selfsup evaluate --protocol knn --encoder none --like {run} --out {knn}"]
    labelled = "--data LABELLED/train --val-data LABELLED/val"
    return ["next: fine-tune it on labelled images (one sub-folder per class), then the same network from "
            "scratch on the same images with the same recipe:",
            f"  selfsup finetune --encoder {encoder} {labelled} --out {tuned}",
            f"  selfsup finetune --encoder none --like {tuned}",
            "quicker, kNN on frozen features, pretrained then random:",
            f"  selfsup evaluate --protocol knn --encoder {encoder} {labelled} --out {knn}",
            f"  selfsup evaluate --protocol knn --encoder none --like {run} {labelled} --out {knn}"]


def run_finetune(config: settings.FinetuneConfig) -> int:
    """``selfsup finetune``: train the classifier, print its validation accuracy."""
    from selfsup_core.training.finetuning import finetune

    outcome = finetune(config)
    if not outcome.primary:  # one report per run, not one per process
        return 0
    print(f"val accuracy (final epoch): {outcome.val_acc:.4f}")
    print(f"val accuracy (best epoch, optimistic): {outcome.best_val_acc:.4f}")
    print(f"trained on {outcome.train_images} labelled images in {outcome.seconds:.1f} s; "
          f"run folder: {outcome.run_dir}")
    return 0


def run_evaluate(config: settings.EvaluateConfig) -> int:
    """``selfsup evaluate``: print the result as one JSON line."""
    import json

    from selfsup_core.evaluation.protocols import evaluate

    result = evaluate(config)
    if result.primary:  # one line per evaluation, not one per process
        print(json.dumps(result.as_dict()))
    return 0


def _print_tasks(host: PluginHost | None = None, verbose: bool = False, kind: str = "task") -> int:
    """``selfsup tasks``: one line per task, per conflict and per broken plugin.

    ``kind="augmentation"``: the same for ``selfsup augmentations``.
    """
    from selfsup_core.plugin.host import get_plugin_host

    if host is None:
        # This listing reports every problem: without -v, building the host need not log them too.
        plugin_logger = logging.getLogger("selfsup_core.plugin")
        saved = plugin_logger.level
        plugin_logger.setLevel(plugin_logger.level if verbose else logging.ERROR)
        try:
            host = get_plugin_host()
        finally:
            plugin_logger.setLevel(saved)
    registry = host.augmentations if kind == "augmentation" else host.tasks
    shown: list[object] = []
    for name in registry.names():
        if name in registry.entries:
            entry = registry.entries[name]
            print(f"{name:<12} {entry.spec.summary}  [{entry.distribution}]")
        for conflict in host.conflicts:  # several for one name only across kinds
            if conflict.kind == kind and conflict.name == name:
                print(f"{name:<12} {conflict.describe()}")
                shown.append(conflict)
    # Broken plugins and the conflicts no task line carries (entry points, encoders).
    for problem in [*host.conflicts, *host.failures]:
        if problem not in shown:
            print(f"warning: {problem.describe()}", file=sys.stderr)
    return 0


def _print_task_options(name: str, host: PluginHost | None = None) -> int:
    """``selfsup tasks --options NAME``: the task's declared options, one row each."""
    from selfsup_core.plugin.host import get_plugin_host
    from selfsup_core.tasks.options import options_class

    declared = options_class((host or get_plugin_host()).tasks.get(name).spec.factory)
    if declared is None:
        print(f"task {name!r} declares no Options class: its options are checked only when it is built")
        return 0
    rows = [("option", "type", "default", "meaning")]
    rows += [(i.name, i.type_text, i.default_text, i.help) for i in declared.describe()]
    if len(rows) == 1:
        print(f"task {name!r} takes no options")
        return 0
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    print(f"\nset with: selfsup pretrain --task {name} --task-option NAME=VALUE "
          "(YAML values: 6, 0.5, true, [0.7, 1.0])")
    return 0


def _print_augmentation_options(name: str, host: PluginHost | None = None) -> int:
    """``selfsup augmentations --options NAME``: the augmentation's declared options, as a Markdown table."""
    from selfsup_core.plugin.host import get_plugin_host

    declared = getattr((host or get_plugin_host()).augmentations.get(name).spec.factory, "Options", None)
    if not (isinstance(declared, type) and issubclass(declared, Options)):
        print(f"augmentation {name!r} declares no Options class")
        return 0
    print(options_table(declared))
    print(f"\nuse it by name: selfsup finetune --augment {name}, or in a task option that lists augmentations")
    return 0


class _PlainFormatter(logging.Formatter):
    """selfsup's INFO lines as they are (settings, where files went); warnings and errors with their level."""

    _leveled = logging.Formatter("%(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) if record.levelno <= logging.INFO else self._leveled.format(record)


def _configure_logging(verbose: bool) -> None:
    """selfsup's INFO lines on stderr; with -v, every library's, with logger names.

    Lightning's banners and known warnings are the library's to hide
    (:mod:`selfsup_core.quiet`): the commands pass ``verbose`` on to it.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if verbose
                         else _PlainFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    # The other processes of a multi-process run would repeat every line: they only warn.
    logging.getLogger("selfsup_core").setLevel(logging.INFO if launched_rank() == 0 else logging.WARNING)
    # -v: a broken plugin's traceback (logged at DEBUG) shows its author file:line.
    logging.getLogger("selfsup_core.plugin").setLevel(logging.DEBUG if verbose else logging.NOTSET)


def launched_rank() -> int:
    """This process's global rank as its launcher set it (torchrun, SLURM, Lightning's own launcher),
    readable before any process group exists; 0 when started alone."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):  # the order Lightning reads them in
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def main(argv: Sequence[str] | None = None, host: PluginHost | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        host: The plugin host every command uses (default: the process's,
            :func:`~selfsup_core.plugin.host.get_plugin_host`); tests pass one.
    """
    from selfsup_core.plugin.host import use_plugin_host

    with _terminate_as_exception():
        try:
            return _main(argv, host, use_plugin_host)
        finally:
            _release_process_group()


def _release_process_group() -> None:
    """Destroy the process group a distributed run made, before the interpreter exits.

    Left to the interpreter's exit, gloo's threads sometimes abort a process
    whose run had finished ("terminate called without an active exception",
    SIGABRT), and torchrun then reports the whole run as failed.
    """
    if "torch" not in sys.modules:  # no run started: nothing to release (and no slow import)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _main(argv: Sequence[str] | None, host: PluginHost | None, use_plugin_host: Any) -> int:
    from selfsup_core.ioutil import disk_error

    argv = list(sys.argv[1:] if argv is None else argv)
    resume = f"selfsup {argv[0]} --resume --out RUN" if argv and argv[0] in COMMANDS else "--resume --out RUN"
    try:
        args = parse_command_line(argv)
        _configure_logging(args.verbose)
        if args.command == "tasks" and args.options:
            return _print_task_options(args.options, host)
        if args.command == "tasks":
            return _print_tasks(host, verbose=args.verbose)
        if args.command == "augmentations":
            return (_print_augmentation_options(args.options, host) if args.options
                    else _print_tasks(host, verbose=args.verbose, kind="augmentation"))
        command: Command = args.command_spec
        config = settings_from_args(args, command)
        module, function = command.handler.split(":")
        with use_plugin_host(host):  # commands look plugins up deep down: one host for all of them
            return int(getattr(importlib.import_module(module), function)(config))
    except RunInterrupted as exc:  # training saved a checkpoint and says how to resume
        if launched_rank() == 0:  # once per run, not once per process
            print(f"selfsup: {exc}", file=sys.stderr)
        return exc.exit_code
    except SelfsupError as exc:
        print(f"selfsup: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside training: before its first checkpoint or after its last
        print(f"selfsup: interrupted (SIGINT); a run with a checkpoints/last.ckpt resumes with: {resume}",
              file=sys.stderr)
        return 130
    except _Terminated:
        print(f"selfsup: terminated (SIGTERM); a run with a checkpoints/last.ckpt resumes with: {resume}",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except (OSError, RuntimeError) as exc:  # torch raises a RuntimeError over a failed write
        error = disk_error(exc)  # a full or read-only disk, wherever it was met: one line
        if error is None:
            raise
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 1


class _Terminated(BaseException):
    """SIGTERM outside training (training handles it itself: it saves a checkpoint first)."""


@contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated`, so it ends with a message and exit status 143, not silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(metrics: dict[str, float], where: str, seconds: float) -> None:
    for key in sorted(metrics):  # one value per metric: the final epoch's
        print(f"{key}: {metrics[key]:.4f}")
    print(f"trained in {seconds:.1f} s; {where}")


if __name__ == "__main__":
    sys.exit(main())
