"""The README's main command (scripts/demo.sh) runs, shortened, in the test suite."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from secure_fml.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _demo_commands() -> list[list[str]]:
    text = (ROOT / "scripts" / "demo.sh").read_text(encoding="utf-8").replace("\\\n", " ")
    return [
        shlex.split(line.strip())[1:]
        for line in text.splitlines()
        if line.startswith("secure-fml ")
    ]


def test_readme_points_at_the_demo_and_ci_scripts() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/demo.sh" in readme and "bash .ci/run" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pytest" in ci and "torch==2.13.0" in ci


def test_demo_commands_run_shortened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = _demo_commands()
    assert [c[0] for c in commands] == ["simulate", "adapt"]
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        if argv[0] == "simulate":
            argv = [re.sub(r"^100$", "5", a) for a in argv] + ["--no-progress"]
            assert "--rounds" in argv and argv[argv.index("--rounds") + 1] == "5"
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "personalized accuracy" in out and "accuracy after adaptation" in out
