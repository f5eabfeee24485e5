"""``secure-fml audit RUN_DIR_OR_CONFIG --suite quick|full`` (registered as an entry point)."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="attack audits of a run's configuration (empirical ε, MIA, inversion, SecAgg)",
        description=(
            "Run the attack-audit suite on a run directory (its config.json) or a TOML config; "
            "write audit.json and audit.html. Exit status 1 when an empirical ε lower bound "
            "exceeds the claimed ε (a bug), 2 on errors."
        ),
    )
    p.add_argument("target", help="run directory (with config.json) or a config .toml/.json")
    p.add_argument("--suite", choices=["quick", "full"], default="quick")
    p.add_argument("--out", default=None, help="output directory (default: TARGET/audit)")
    p.add_argument("--rounds", type=int, default=None, help="override training rounds")
    p.add_argument("--data-root", default=None, help="override data.root")
    p.add_argument(
        "--control",
        choices=["none", "noise_off", "clipping_off", "secagg_off"],
        default="none",
        help="positive control: sabotage the mechanism on purpose (the claim stays)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the audit instrumentation")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    import torch

    from audits._core import AuditRunner, AuditTarget, Control
    from audits._report import write_report
    from audits._suites import Suite, build_suite
    from secure_fml.config import load_config, with_overrides
    from secure_fml.observability import stage

    torch.set_num_threads(1)
    src = Path(args.target)
    cfg_path = src / "config.json" if src.is_dir() else src
    config = load_config(cfg_path)
    if args.data_root:
        config = with_overrides(config, {"data.root": args.data_root})
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent) / "audit"
    audits = build_suite(
        Suite(args.suite), rounds=args.rounds, control=Control(args.control), seed=args.seed
    )
    t0 = time.perf_counter()
    target = AuditTarget(config=config, seed=args.seed)
    results = []
    with warnings.catch_warnings():
        # Audits seed the canaries and, for reproducible tests, the noise; those
        # warnings are expected here and named in the report instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, audit in enumerate(audits, 1):
            with stage(f"audit {i}/{len(audits)}: {audit.name}", enabled=not args.no_progress):
                results += AuditRunner([audit]).run(target)
    meta = {
        "target": str(src),
        "suite": args.suite,
        "control": args.control,
        "rounds_override": args.rounds,
        "seconds": round(time.perf_counter() - t0, 1),
        "noise_seeded_insecure_test_mode": config.run.insecure_seed is not None,
    }
    jp, hp = write_report(results, out, meta)
    for r in results:
        lb = "-" if r.empirical_lower_bound is None else f"{r.empirical_lower_bound:.2f}"
        print(f"{r.audit:22s} {r.verdict.value:13s} ε_LB={lb:6s} {r.summary}")
    print(f"wrote {jp} and {hp}")
    return 1 if any(r.bound_exceeds_claim for r in results) else 0
