"""The documentation's examples work: Python blocks run, shell commands name real flags.

Files are read when the tests run (others edit them), so a block added to the
README is tested without touching this file.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from selfsup_core.cli import build_parser

ROOT = Path(__file__).parents[1]
# Files whose ```python blocks are meant to run as written, in order.
RUNNABLE_DOCS = ["README.md", "docs/writing-a-plugin.md"]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
PYTHON_LANGUAGES = {"python", "py", "python3"}
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
ENCODER_PATH = re.compile(r"""["']((?:[\w.-]+/)*runs/[\w.-]+)/encoder\.safetensors["']""")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str


def fenced_blocks(relative: str) -> list[Block]:
    """Every fenced code block of ``ROOT / relative``, in file order."""
    blocks: list[Block] = []
    lines = (ROOT / relative).read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language, start = match.group(1), match.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append(Block(relative, start + 1, language, "\n".join(body) + "\n"))
        i += 1  # past the closing fence
    return blocks


def write_doc_data(root: Path) -> None:
    """The folders the README's examples name, as tiny generated images."""
    write_image_folder(root / "unlabelled", per_class=4, size=40)
    write_image_folder(root / "labelled" / "train", per_class=4, size=40)
    write_image_folder(root / "labelled" / "val", per_class=2, size=40, seed=1)


def provide_encoders(code: str, root: Path) -> None:
    """Pretrain, at tiny size, every ``runs/NAME/encoder.safetensors`` a block
    reads that no earlier block produced (the README makes it with a shell command)."""
    from selfsup_core import pretrain

    for run in ENCODER_PATH.findall(code):
        if not (root / run / "encoder.safetensors").is_file():
            # resnet18: the "loading by hand" example loads it into torchvision's.
            pretrain(task="rotation", data=str(root / "unlabelled"), out=str(root / run), arch="resnet18",
                     image_size=32, max_epochs=1, progress=False, keep_checkpoint=False)  # 0.14 GB less disk


@pytest.mark.parametrize("relative", RUNNABLE_DOCS)
def test_python_blocks_run_as_written(relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file's ```python blocks run in order, in one namespace, on tiny data."""
    blocks = [b for b in fenced_blocks(relative) if b.language in PYTHON_LANGUAGES]
    assert blocks, f"{relative} has no python block: the list RUNNABLE_DOCS is out of date"
    monkeypatch.chdir(tmp_path)
    write_doc_data(tmp_path)
    # A real module, registered: dataclasses and pickling look classes up in sys.modules.
    module = types.ModuleType("docs_" + re.sub(r"\W", "_", Path(relative).stem))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    # One intra-op thread: the blocks run unchanged (same epochs, same sizes), but
    # on a busy 2-core machine two threads stall each other and a 10 s run takes
    # minutes (see selfsup_core.threads). Restored after, like a process default.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in blocks:
            provide_encoders(block.code, tmp_path)
            try:
                exec(compile(block.code, f"{relative}:{block.line}", "exec", dont_inherit=True), namespace)
            except Exception as exc:  # noqa: BLE001 - say which block broke, whatever broke it
                pytest.fail(f"{relative}, python block at line {block.line} fails as written: "
                            f"{type(exc).__name__}: {exc}\n{block.code}")
    finally:
        torch.set_num_threads(threads)


# -- shell commands ---------------------------------------------------------------


def shell_doc_files() -> list[str]:
    """README.md and every page under docs/, as paths relative to the project root."""
    return ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def selfsup_commands(block: Block) -> list[list[str]]:
    """The ``selfsup ...`` commands of a shell block, as argument lists (without ``selfsup``)."""
    text = re.sub(r"\\\n\s*", " ", block.code)  # join continued lines
    commands = []
    for line in text.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
            part = part.strip().removeprefix("$ ")
            # Untagged blocks also hold output and file trees: only commands are split.
            if part == "selfsup" or part.startswith("selfsup "):
                commands.append(shlex.split(part)[1:])
    return commands


def _sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:  # argparse offers no public way to walk sub-commands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_words(argv: list[str]) -> list[str]:
    """Sub-commands and ``--flags`` of ``selfsup ARGV`` that its parser does not define.

    Flags are matched exactly: argparse would accept an abbreviation, but docs
    should spell flags out.
    """
    parser = build_parser(argv)  # loads the options of the sub-commands named
    problems: list[str] = []
    expect_command = True
    for word in argv:
        commands = _sub_parsers(parser)
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            if flag not in parser._option_string_actions:
                problems.append(f"{flag} (not an option of '{parser.prog}')")
        elif commands and expect_command:
            if word not in commands:
                problems.append(f"{word} (not a sub-command of '{parser.prog}': {', '.join(commands)})")
                break
            parser = commands[word]
            expect_command = bool(_sub_parsers(parser))
    return problems


def test_documented_commands_name_real_sub_commands_and_flags() -> None:
    """Every ``selfsup`` command shown in README.md and docs/*.md parses: no stale flag."""
    checked, problems = 0, []
    for relative in shell_doc_files():
        for block in fenced_blocks(relative):
            if block.language not in SHELL_LANGUAGES:
                continue
            for argv in selfsup_commands(block):
                checked += 1
                problems += [f"{relative}:{block.line}: selfsup {' '.join(argv)}: {p}" for p in unknown_words(argv)]
    assert checked, "no selfsup command found in the docs: the block parser is broken"
    assert not problems, "documented commands use what the CLI lacks:\n" + "\n".join(problems)


def test_the_command_checker_catches_a_wrong_flag() -> None:
    assert unknown_words(["pretrain", "--task", "rotation", "--max-epochs", "2"]) == []
    assert unknown_words(["-v", "bench", "eval", "--tasks", "crappify"]) == []
    assert unknown_words(["pretrain", "--epochs", "2"]) == ["--epochs (not an option of 'selfsup pretrain')"]
    assert unknown_words(["bench", "speed"])[0].startswith("speed (not a sub-command")
    assert unknown_words(["finetune", "--encoder=none", "--label-fraction=0.1"]) == []
