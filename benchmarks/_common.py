"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_root() -> Path:
    return Path(os.environ.get("SECURE_FML_DATA", DEFAULT_DATA))


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "commit": commit,
    }


def run_isolated(module: str, *args: object) -> dict[str, Any]:
    """Run ``python -m module --one ARGS`` in a fresh process; its last stdout line (JSON)."""
    import sys

    res = subprocess.run(
        [sys.executable, "-m", module, "--one", *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
