"""Hand-written code vs a well-kept library: the measurements behind each choice.

- CSV: ``secure_fml.data.load_csv`` (stdlib ``csv``, validating every cell with a
  line/column error) against ``pandas.read_csv`` followed by the same per-client
  split, on a generated heart-disease-shaped CSV (14 numeric columns, a site column)
  of ``--rows`` rows.
- Config: cost of importing pydantic (a second validation layer would add it to
  every CLI start) beside the time ``config_from_dict`` takes to validate the
  shipped FEMNIST config.
- TOML writing is already ``tomli-w`` (a library); nothing to measure.

pandas and pydantic are not dependencies: install them anywhere on ``sys.path``
(e.g. ``pip install --target DIR pandas pydantic`` and ``--extra-path DIR``).

    python -m benchmarks.library_choices [--rows 200000] [--extra-path DIR]

Writes benchmarks/results/library_choices.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, environment, write_json
from secure_fml.config import config_from_dict
from secure_fml.data import load_csv

COLUMNS = [f"f{i}" for i in range(13)]


def _write_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, len(COLUMNS))).round(4)
    y = rng.integers(0, 2, size=rows)
    sites = rng.integers(0, 4, size=rows)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site", *COLUMNS, "label"])
        for i in range(rows):
            w.writerow([f"s{sites[i]}", *x[i].tolist(), int(y[i])])


def _time(fn: Any, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _pandas_load(path: Path) -> Any:
    import pandas as pd

    df = pd.read_csv(path)
    if df[COLUMNS].isna().any().any():
        raise ValueError("missing values")
    return {
        site: (g[COLUMNS].to_numpy(np.float32), g["label"].to_numpy(np.int64))
        for site, g in df.groupby("site", sort=False)
    }


def _import_s(module: str, extra: str | None) -> float | None:
    code = (
        f"import sys,time; sys.path.append({extra!r}) if {extra!r} != 'None' else None; "
        f"t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(out.stdout.strip()) if out.returncode == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--extra-path", default=None)
    args = ap.parse_args()
    if args.extra_path:
        sys.path.append(args.extra_path)  # after site-packages: never shadows numpy
    have_pandas = importlib.util.find_spec("pandas") is not None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sites.csv"
        _write_csv(path, args.rows)
        ours = _time(lambda: load_csv(path, client_column="site", label_column="label"), args.reps)
        theirs = _time(lambda: _pandas_load(path), args.reps) if have_pandas else None
    shipped = Path(__file__).resolve().parents[1] / "configs" / "femnist_dp_secagg.toml"
    raw = tomllib.loads(shipped.read_text())
    cfg_s = _time(lambda: config_from_dict(raw), 50)
    rows = {
        "csv_rows": args.rows,
        "load_csv_s": ours,
        "pandas_read_csv_s": theirs,
        "config_from_dict_ms": cfg_s * 1e3,
        "import_pydantic_s": _import_s("pydantic", args.extra_path),
        "import_pandas_s": _import_s("pandas", args.extra_path),
    }
    for k, v in rows.items():
        print(f"{k:24s} {v}")
    payload = {"environment": environment(), "results": rows}
    write_json("library_choices.json", payload)

    def f(v: float | None, unit: str = "s", scale: float = 1.0) -> str:
        return "not installed" if v is None else f"{v * scale:.3f} {unit}"

    md = [
        "# Hand-written code vs libraries: what we measured and chose",
        "",
        f"`python -m benchmarks.library_choices --rows {args.rows}"
        + (" --extra-path DIR` (pandas, pydantic installed in DIR) " if args.extra_path else "` ")
        + f"(2 shared CPUs, commit {payload['environment']['commit']}).",
        "",
        "| question | ours | library | choice |",
        "|---|---|---|---|",
        f"| CSV, {args.rows:,} rows x 15 columns, split by site | `load_csv` "
        f"{f(ours)} | `pandas.read_csv` + groupby {f(theirs)} | keep ours (see below) |",
        f"| config validation (shipped config) | `config_from_dict` {f(cfg_s, 'ms', 1e3)} | "
        f"`import pydantic` alone {f(rows['import_pydantic_s'])} | keep frozen dataclasses |",
        "| TOML writing | - | `tomli-w` | library (already) |",
        "",
        "CSV: pandas' C parser is faster (ratio in the table; ours is the stdlib `csv` reader "
        "plus column-wise numpy conversion). A hospital's file of thousands of rows loads in "
        "milliseconds either way and once per run; ours names the line and column of every "
        "bad cell, refuses non-finite values and "
        "keeps per-client imputation and standardization, which with pandas would be the "
        "same amount of our code on top of a ~60 MB dependency "
        f"(import {f(rows['import_pandas_s'])}). Config: the dataclasses validate in "
        "`__post_init__` with the field's dotted name in every error, which the CLI prints "
        "as one line; pydantic would add a second model of the same fields.",
    ]
    (RESULTS / "library_choices.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / 'library_choices.md'}")


if __name__ == "__main__":
    main()
