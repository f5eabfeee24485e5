"""The README's main command (scripts/demo.sh) runs, shortened, in the test suite, and the
README shows the table of the committed demo run."""

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


def test_readme_first_screen_shows_the_committed_demo_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = (ROOT / "docs" / "examples" / "demo" / "demo.md").read_text(encoding="utf-8")
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(rows) == 9  # header + 8 methods
    for row in rows:
        assert row in readme, row
    first_screen = "\n".join(readme.splitlines()[:60])
    assert "FedMeta (Meta-SGD)" in first_screen and "bash scripts/demo.sh" in first_screen
    out = (ROOT / "docs" / "examples" / "demo" / "output.txt").read_text(encoding="utf-8")
    assert all(row in out for row in rows)  # the table is what the command printed


@pytest.mark.slow  # trains three algorithms and the baselines (about 10 s of CPU)
def test_demo_commands_run_shortened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = _demo_commands()
    assert [c[0] for c in commands] == ["demo", "adapt"]
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        if argv[0] == "demo":
            argv = [*argv, "--rounds", "3", "--no-progress"]
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "FedMeta (Meta-SGD)" in out and "local only" in out
    assert "accuracy after adaptation" in out
    assert re.search(r"site client_095: \d+ samples", out)
