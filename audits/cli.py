"""``secure-fml audit RUN_DIR_OR_CONFIG --suite quick|full`` (registered as an entry point).

Exit status (the release gate): 0 every audit conclusive and no violation;
1 a violation, or a positive control that fired; 2 an error (a crashed audit,
a bad target); 3 inconclusive. The claim audited is the run's ledger figure
against the chosen adversary, the one its privacy report states.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="attack audits of a run (empirical ε, MIA, inversion, SecAgg): a release gate",
        description=(
            "Run the attack-audit suite on a run directory (its config.json and privacy ledger) "
            "or a TOML/JSON config; write audit.json and audit.html. Exit status: 0 no "
            "violation and every audit conclusive, 1 violation or positive control fired, "
            "2 error, 3 inconclusive."
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
        help="positive control: inject a fault into the mechanism (the claim stays)",
    )
    p.add_argument(
        "--adversary",
        choices=["coordinator", "outside_observer"],
        default="coordinator",
        help="whose ε the canary audits test (default: the coordinator)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the audit instrumentation")
    p.add_argument(
        "--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress output"
    )
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    from privacy.errors import SecureFMLError

    try:
        return _audit(args)
    except SecureFMLError:
        raise  # one line "error: ..." and exit 2 from the main CLI
    except Exception as exc:  # a crashed audit run is an error (2), never a verdict
        print(f"error: audit crashed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _audit(args: argparse.Namespace) -> int:
    import torch

    import privacy
    from audits._core import AuditRunner, AuditTarget, Control, exit_code
    from audits._report import write_report
    from audits._suites import Suite, build_suite
    from privacy.errors import ConfigError
    from secure_fml.config import load_config, with_overrides

    torch.set_num_threads(1)
    src = Path(args.target)
    cfg_path = src / "config.json" if src.is_dir() else src
    if not cfg_path.exists():
        raise ConfigError(f"{cfg_path} does not exist")
    kind = _run_kind(src) if src.is_dir() else None
    if kind == "site":
        raise ConfigError(
            f"{src} is a deployed site's state directory (its own ledger and policy): "
            f"render it with `secure-fml report {src}`; the audits run on the coordinator's "
            "run directory or on a config"
        )
    config = load_config(cfg_path)
    if args.data_root:
        config = with_overrides(config, {"data.root": args.data_root})
    claims = None
    events = None
    ledger_path = src / privacy.LEDGER_FILENAME if src.is_dir() else None
    if ledger_path is not None and ledger_path.exists():
        entries = privacy.read_ledger(ledger_path)
        events = tuple(e.event for e in entries)
        accountant = config.privacy.accountant if config.privacy.accountant != "gdp" else "rdp"
        claims = privacy.epsilon_by_adversary(
            entries, delta=config.privacy.delta, accountant=accountant
        )
    elif src.is_dir() and config.privacy.enabled:
        raise ConfigError(f"{src} has privacy enabled but no {privacy.LEDGER_FILENAME}")
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent) / "audit"
    audits = build_suite(
        Suite(args.suite),
        rounds=args.rounds,
        control=Control(args.control),
        seed=args.seed,
        adversary=privacy.Adversary(args.adversary),
    )

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"audit: {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    if claims is not None:
        say(
            "claims from the run's ledger: "
            + ", ".join(f"{a.value} ε = {claims[a].epsilon:.4g}" for a in privacy.Adversary)
        )
    with warnings.catch_warnings():
        # Audits seed the canaries and, for reproducible tests, the noise; those
        # warnings are expected here and named in the report instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        target = AuditTarget(
            config=config, seed=args.seed, claims=claims, events=events, progress=say
        )
        if kind == "deployment":
            claim = target.claim_for(privacy.Adversary(args.adversary))
            results = _deployment_results(audits, target, say, claim=claim)
        else:
            results = AuditRunner(audits).run(target)
    code = exit_code(results)
    meta = {
        "target": str(src),
        "suite": args.suite,
        "control": args.control,
        "adversary": args.adversary,
        "run_kind": kind,
        "rounds_override": args.rounds,
        "seconds": round(time.perf_counter() - t0, 1),
        "noise_seeded_insecure_test_mode": config.run.insecure_seed is not None,
        "claims_from_ledger": claims.as_dict() if claims is not None else None,
        "exit_code": int(code),
        "exit_meaning": code.name.lower(),
    }
    jp, hp = write_report(results, out, meta)
    for r in results:
        lb = "-" if r.empirical_lower_bound is None else f"{r.empirical_lower_bound:.2f}"
        print(f"{r.audit:22s} {r.verdict.value:13s} ε_LB={lb:6s} {r.summary}")
    print(f"wrote {jp} and {hp}")
    print(f"exit {int(code)} ({code.name.lower()})")
    return int(code)


#: Why an audit that retrains cannot run on a deployment run directory (one line).
NOT_RUN_ON_DEPLOYMENT = (
    "not run: it retrains the mechanism on the run's data, and a deployment's data stays "
    "at its sites; audit the deployment's config as a simulation on representative data "
    "(secure-fml audit CONFIG)"
)


def _run_kind(run_dir: Path) -> str | None:
    """``deployment`` or ``simulation`` (``run.json``), ``site`` for a site's state dir."""
    import json

    import privacy

    meta = run_dir / privacy.RUN_METADATA_FILENAME
    if meta.exists():
        try:
            kind = json.loads(meta.read_text(encoding="utf-8")).get("kind")
        except (json.JSONDecodeError, AttributeError):
            kind = None
        return str(kind) if kind else None
    try:
        cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return "site" if isinstance(cfg, dict) and "site" in cfg else None


def _deployment_results(
    audits: list[Any], target: Any, say: Any, *, claim: float | None
) -> list[Any]:
    """Run the audits that need no data; the others get an inconclusive record saying why."""
    from audits._core import AuditResult, AuditRunner, Verdict

    ran = iter(AuditRunner([a for a in audits if not a.retrains]).run(target))
    out = []
    for a in audits:
        if not a.retrains:
            out.append(next(ran))
            continue
        say(f"{a.name}: {NOT_RUN_ON_DEPLOYMENT}")
        out.append(
            AuditResult(
                audit=a.name,
                verdict=Verdict.INCONCLUSIVE,
                summary=NOT_RUN_ON_DEPLOYMENT,
                claimed_epsilon=claim,
                details={"not_run": "deployment run directory"},
            )
        )
    return out
