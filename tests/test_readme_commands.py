"""Every `moec` command README.md shows runs as written (issue 14).

The commands are read from README.md itself: the quick start and the lines of the ``## Commands``
block. Optional parts (``[--json]``) are left out, and no line may hold a placeholder (``MODEL``). They run in-process, in order, in a temporary folder that links the repository's ``models/`` and ``examples/`` (so nothing
is left in the checkout); the slow ones are listed in :data:`SLOW` and run with ``-m slow``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from moec.compiler.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

#: Commands that take more than a few seconds (prefixes), run only with ``-m slow``.
SLOW = (
    "moec bench --model paper",  # 64 runs
    "moec bench --model qwen3-30b-a3b --ablation",  # 4 token counts x 5 steps
    "moec eval ",  # the whole held-out text through ONNX Runtime
    "moec sweep ",  # 210 points, then the plot of them
)
OPTIONAL = re.compile(r"\s*\[[^\]]*\]")
PLACEHOLDER = re.compile(r"\b(MODEL|PIPELINE|FILE|NAME)\b|\.\.\.")


def readme_commands() -> list[str]:
    """The `moec ...` commands README.md shows, comments and prompts stripped, in order."""
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                cmd = OPTIONAL.sub("", part.split("  #", 1)[0]).strip()
                if cmd.startswith("moec "):
                    out.append(cmd)
    return out


COMMANDS = readme_commands()
RUNNABLE = [c for c in COMMANDS if not PLACEHOLDER.search(c)]


def test_readme_has_commands() -> None:
    assert len(COMMANDS) >= 20 and RUNNABLE == COMMANDS, "every command concrete"
    assert not any(" / moec " in c for c in COMMANDS), "two commands on one line"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    for name in ("models", "examples"):
        (work / name).symlink_to(ROOT / name)
    return work


def _run(cmd: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    assert main(shlex.split(cmd)[1:]) == 0, cmd


@pytest.mark.parametrize("cmd", [c for c in RUNNABLE if not c.startswith(SLOW)])
def test_fast_readme_command(cmd: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # commands may read what an earlier one wrote (run reads compile's program)
    _run(cmd, folder, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in RUNNABLE if c.startswith(SLOW)])
def test_slow_readme_command(cmd: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(cmd, folder, monkeypatch)
