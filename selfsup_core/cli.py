"""The ``selfsup`` command line: a thin layer over the Python API.

Every sub-command calls a library function; user errors
(:class:`~selfsup_core.errors.SelfsupError`) print one message and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import yaml

from selfsup_core import __version__
from selfsup_core.errors import SelfsupError

# Sub-commands implemented in modules of their own: name -> (module, help).
BENCHMARKS = {
    "tasks": ("selfsup_core.bench.tasks", "time each task's batch generation against its train step"),
    "throughput": ("selfsup_core.bench.throughput", "images/s of the data path and training loop"),
    "eval": ("selfsup_core.bench.eval", "pretrain, evaluate and compare against a random encoder"),
}
EVALUATE = ("selfsup_core.evaluation.protocols", "kNN, linear probe or fine-tune evaluation of an encoder")


def _task_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    # YAML typing: 6 -> int, 0.5 -> float, true -> bool, [1, 2] -> list.
    return key.strip().replace("-", "_"), yaml.safe_load(value)


def _installed_tasks_text() -> str:
    from selfsup_core.plugin.registry import build_task_registry

    registry = build_task_registry()
    lines = [f"  {name:<12} {registry.entries[name].spec.summary if name in registry.entries else '(conflict)'}"
             for name in registry.names()]
    return "installed tasks:\n" + "\n".join(lines or ["  (none)"])


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS  # only flags given on the command line override the file
    parser.add_argument("--config", metavar="FILE.yaml", default=s, help="YAML file with the same keys")
    parser.add_argument("--data", metavar="DIR", default=s, help="image folder (default: built-in glyphs)")
    parser.add_argument("--image-size", type=int, default=s, help="square training size")
    parser.add_argument("--batch-size", type=int, default=s)
    parser.add_argument("--max-epochs", type=int, default=s)
    parser.add_argument("--lr", type=float, default=s, help="peak learning rate (AdamW, cosine)")
    parser.add_argument("--seed", type=int, default=s)
    parser.add_argument("--num-workers", type=int, default=s, help="image decoding processes")
    parser.add_argument("--devices", default=s, help="Lightning devices (default: auto)")
    parser.add_argument("--precision", default=s, help="e.g. 32-true, bf16-mixed (default: bf16 on GPU)")
    parser.add_argument("--limit", type=int, default=s, help="seeded subset of N training images")
    parser.add_argument("--out", metavar="DIR", default=s, help="run folder (default: new one in runs/)")
    parser.add_argument("--resume", action="store_true", default=s, help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", default=s, help="reuse a non-empty --out")
    parser.add_argument("--no-cache", dest="cache", action="store_false", default=s,
                        help="decode images every run instead of using the decode cache")
    parser.add_argument("--data-on-device", action=argparse.BooleanOptionalAction, default=s,
                        help="keep decoded images in GPU memory (default: when they fit)")
    parser.add_argument("--compile", action="store_true", default=s,
                        help="torch.compile encoder and head (slow start, faster steps on GPUs)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=s)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser. Modules of sub-commands named in ``argv`` are
    imported to add their options; the others stay unimported (fast start)."""
    wanted = set(argv)
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised pretraining of image encoders.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_installed_tasks_text(),
    )
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("tasks", help="list installed tasks and where they come from")

    pre = commands.add_parser(
        "pretrain", help="pretrain an encoder on a pretext task",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_installed_tasks_text(),
    )
    pre.add_argument("--task", default=argparse.SUPPRESS, help="task name (default: rotation)")
    pre.add_argument("--arch", default=argparse.SUPPRESS, help="encoder: resnet18, resnet34, tiny")
    pre.add_argument("--val-fraction", type=float, default=argparse.SUPPRESS)
    pre.add_argument("--task-option", dest="task_options", type=_task_option, action="append",
                     default=argparse.SUPPRESS, metavar="KEY=VALUE", help="task option (repeatable)")
    _add_run_arguments(pre)

    fine = commands.add_parser("finetune", help="fine-tune a classifier on an encoder (or from scratch)")
    fine.add_argument("--encoder", required=True, metavar="FILE|none",
                      help="encoder.safetensors from pretrain, or 'none' for the from-scratch baseline")
    fine.add_argument("--arch", default=argparse.SUPPRESS, help="architecture (default: the encoder's)")
    fine.add_argument("--val-data", metavar="DIR", default=argparse.SUPPRESS)
    fine.add_argument("--val-fraction", type=float, default=argparse.SUPPRESS)
    fine.add_argument("--label-fraction", type=float, default=argparse.SUPPRESS,
                      help="seeded, stratified share of the labelled images to train on")
    _add_run_arguments(fine)

    for name, (module, help_text) in [("evaluate", EVALUATE)]:
        _add_module_command(commands, name, module, help_text, name in wanted)
    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        _add_module_command(bench_commands, name, module, help_text, "bench" in wanted and name in wanted)
    return parser


def _add_module_command(commands: Any, name: str, module_name: str, help_text: str, load: bool) -> None:
    sub = commands.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
    if load:
        module = importlib.import_module(module_name)
        sub.description = module.__doc__
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)


def _merged(args: argparse.Namespace, skip: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    given = {k: v for k, v in vars(args).items() if k not in skip}
    config_file = given.pop("config", None)
    if config_file:
        from selfsup_core.training.config import read_yaml

        values.update(read_yaml(config_file))
    if "task_options" in given:
        options = dict(values.get("task_options") or {})
        options.update(dict(given.pop("task_options")))
        given["task_options"] = options
    values.update(given)
    return values


def _print_tasks() -> int:
    from selfsup_core.plugin.registry import build_task_registry

    registry = build_task_registry()
    for name in registry.names():
        if name in registry.conflicts:
            owners = ", ".join(f"{e.distribution} ({e.plugin})" for e in registry.conflicts[name])
            print(f"{name:<12} CONFLICT: registered by {owners}")
            continue
        entry = registry.entries[name]
        print(f"{name:<12} {entry.spec.summary}  [{entry.distribution}]")
    for failure in registry.failures:
        print(f"warning: plugin {failure.name!r} ({failure.distribution}) failed to load: {failure.error}",
              file=sys.stderr)
    return 0


def _quiet_lightning(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning_fabric",
                 "lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("selfsup_core").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*on_after_batch_transfer.*")
    warnings.filterwarnings("ignore", ".*litlogger.*")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        _quiet_lightning(args.verbose)
        if args.command == "tasks":
            return _print_tasks()
        if args.command == "pretrain":
            from selfsup_core.training.config import PretrainConfig, config_from_mapping
            from selfsup_core.training.pretraining import pretrain

            config = config_from_mapping(PretrainConfig, _merged(args, ("command", "verbose")), "pretrain")
            result = pretrain(config)
            _report(result.metrics, f"encoder: {result.encoder_path}", result.seconds)
            return 0
        if args.command == "finetune":
            from selfsup_core.training.config import FinetuneConfig, config_from_mapping
            from selfsup_core.training.finetuning import finetune

            config = config_from_mapping(FinetuneConfig, _merged(args, ("command", "verbose")), "finetune")
            outcome = finetune(config)
            print(f"val accuracy (final epoch): {outcome.val_acc:.4f}")
            print(f"val accuracy (best epoch, optimistic): {outcome.best_val_acc:.4f}")
            print(f"trained on {outcome.train_images} labelled images in {outcome.seconds:.1f} s; "
                  f"run folder: {outcome.run_dir}")
            return 0
        return int(args.handler(args))
    except SelfsupError as exc:
        print(f"selfsup: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfsup: interrupted; resume with --resume --out RUN_DIR", file=sys.stderr)
        return 130


def _report(metrics: dict[str, float], where: str, seconds: float) -> None:
    shown = {k: v for k, v in metrics.items() if k.startswith("val/") or k.endswith("_epoch")}
    for key in sorted(shown):
        print(f"{key}: {shown[key]:.4f}")
    print(f"trained in {seconds:.1f} s; {where}")


if __name__ == "__main__":
    sys.exit(main())
