"""Every code block in README.md and docs/*.md is checked, so a stale example fails CI, not a user.

Python blocks (fenced ```python) are compiled and their imports executed (the README's API example
and data recipe also run whole: tests/onnxprune/test_api.py, tests/integration/test_data_recipe.py). Shell blocks: every
``onnxprune`` command must name a real subcommand and only options it takes; ``python -m`` and
``celery -A`` modules must import, scripts and test files named must exist, pip extras must be
declared by the package. The few blocks that are diagrams, not commands, are listed by name.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from markdown_it import MarkdownIt

from onnxprune.service.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Blocks that draw the layout or the pipeline (no commands in them), by their first words.
DIAGRAMS = ("onnxprune/  ", "analyse_model (")
# Commands a shell block may run besides those checked below: tools the README's install line brings.
TOOLS = {"ruff", "mypy", "pre-commit", "docker", "export", ".", "curl"}
SEPARATORS = {"&&", "||", "&", ";", "|"}


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"


def code_blocks() -> list[Block]:
    blocks = []
    for path in DOCUMENTS:
        for token in MarkdownIt().parse(path.read_text()):
            if token.type in ("fence", "code_block") and token.map is not None:
                blocks.append(Block(path.name, token.map[0] + 1, token.info.strip(), token.content))
    return blocks


BLOCKS = code_blocks()
PYTHON = [b for b in BLOCKS if b.info == "python"]
SHELL = [b for b in BLOCKS if b.info != "python" and not b.text.startswith(DIAGRAMS)]


def test_the_documents_have_code_blocks_of_every_kind():
    assert len(PYTHON) >= 3 and len(SHELL) >= 10  # the collector finds them (a broken parser finds none)
    assert all(b.info in ("", "bash", "python") for b in BLOCKS)


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_a_python_block_compiles_and_its_imports_work_for_an_installed_user(block):
    tree = ast.parse(block.text, filename=block.where)
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in imports:
        module = node.module if isinstance(node, ast.ImportFrom) else None
        for alias in node.names:
            name = f"{module}.{alias.name}" if module else alias.name
            # The layers exist only as onnxprune.<layer> for users (README "Layout").
            assert name.split(".")[0] not in {"service", "workers", "jobs", "graphops", "roundtrip"}, block.where
            if module is None:
                importlib.import_module(alias.name)
            else:
                assert hasattr(importlib.import_module(module), alias.name), f"{block.where}: {name}"


@pytest.mark.parametrize("block", SHELL, ids=[b.where for b in SHELL])
def test_a_shell_block_runs_real_commands_with_real_options(block):
    assert not re.search(r"^\s*(from \S+ import|import \S+$)", block.text, re.M), (
        f"{block.where}: Python in a shell block: fence it ```python"
    )
    commands = list(shell_commands(block.text))
    assert commands, f"{block.where}: no command in the block (a diagram? add it to DIAGRAMS)"
    for words in commands:
        check_command(words, block.where)


def shell_commands(text: str):
    """Each simple command of a block: continuation lines joined, comments dropped, split at && | ; &,
    leading VAR=value assignments skipped."""
    for line in text.replace("\\\n", " ").splitlines():
        words: list[str] = []
        for word in [*shlex.split(line, comments=True), "&&"]:
            if word in SEPARATORS:
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)
                if words:
                    yield words
                words = []
            else:
                words.append(word)


def check_command(words: list[str], where: str) -> None:
    program, args = words[0], words[1:]
    if program == "onnxprune":
        check_onnxprune(args, where)
    elif program in ("python", "python3"):
        if args[:1] == ["-m"]:
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: python -m {args[1]}"
        else:
            assert (ROOT / args[0]).is_file(), f"{where}: {args[0]} does not exist"
    elif program == "pip":
        check_pip(args, where)
    elif program == "pytest":
        for arg in args:
            if arg.endswith(".py") or arg.startswith("tests/"):
                assert (ROOT / arg).exists(), f"{where}: {arg} does not exist"
    elif program == "bash":
        assert (ROOT / args[0]).is_file(), f"{where}: {args[0]} does not exist"
    elif program == "celery":
        module = args[args.index("-A") + 1]
        assert importlib.util.find_spec(module) is not None, f"{where}: celery -A {module}"
    else:
        assert program in TOOLS, f"{where}: unknown command {program!r}"


def check_onnxprune(args: list[str], where: str) -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]  # a click group
    assert args and args[0] in commands, f"{where}: 'onnxprune {args[0] if args else ''}' is no command"
    command = commands[args[0]]
    known = {"--help"}
    for param in command.params:
        known.update(getattr(param, "opts", []))
        known.update(getattr(param, "secondary_opts", []))
    for word in args[1:]:
        if word.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", word):
            assert word.split("=")[0] in known, f"{where}: 'onnxprune {args[0]}' takes no option {word}"


def check_pip(args: list[str], where: str) -> None:
    extras = set(importlib.metadata.metadata("onnxprune").get_all("Provides-Extra") or [])
    for flag, value in zip(args, args[1:]):
        if flag == "-c":
            assert (ROOT / value).is_file(), f"{where}: constraints file {value}"
        if flag == "-e":
            for extra in re.findall(r"\[(.*)\]", value)[:1]:
                assert set(extra.split(",")) <= extras, f"{where}: pip extra {extra} not in pyproject.toml"
