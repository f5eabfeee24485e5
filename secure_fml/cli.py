"""The ``secure-fml`` command line. Only this module prints; the library logs.

Every error the library raises on purpose (:class:`SecureFMLError`) is shown as
one line ``error: ...`` naming the field, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from privacy.errors import ConfigError, SecureFMLError

__all__ = ["main"]


def _parse_set(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        if "=" not in item:
            raise ConfigError(f"--set expects section.field=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


_FLAG_FIELDS = {
    "rounds": "server.rounds",
    "clients_per_round": "server.clients_per_round",
    "algorithm": "algorithm.name",
    "preset": "data.preset",
    "data_root": "data.root",
    "seed": "run.seed",
    "name": "run.name",
    "out": "run.out_dir",
    "threads": "run.threads",
    "secure_aggregation": "secure_aggregation.protocol",
}


def _cmd_simulate(args: argparse.Namespace) -> int:
    from secure_fml.config import Config, load_config, with_overrides
    from secure_fml.simulation import Simulation

    if args.resume:
        run_dir = Path(args.resume)
        config = load_config(run_dir / "config.json")
    else:
        config = load_config(args.config) if args.config else Config()
        overrides: dict[str, Any] = {
            field: getattr(args, flag)
            for flag, field in _FLAG_FIELDS.items()
            if getattr(args, flag, None) is not None
        }
        overrides.update(_parse_set(args.set or []))
        if overrides:
            config = with_overrides(config, overrides)
        run_dir = Path(config.run.out_dir) / config.run.name
        if (run_dir / "privacy_ledger.jsonl").exists():
            raise ConfigError(
                f"run directory {run_dir} holds a privacy ledger; a spent budget is never "
                f"discarded: use --resume {run_dir} or another --name"
            )
        if (run_dir / "checkpoint.pt").exists() and not args.overwrite:
            raise ConfigError(
                f"run directory {run_dir} already holds a run; use --resume {run_dir}, "
                "--overwrite, or another --name"
            )
    sim = Simulation(config, run_dir=run_dir)
    result = sim.run(progress=not args.no_progress, resume=bool(args.resume))
    print(f"run directory: {run_dir}")
    if result.final is not None:
        f = result.final
        print(
            f"test clients: {f.num_clients} ({f.num_query_points} query points)\n"
            f"global accuracy:       {f.global_accuracy:.4f}\n"
            f"personalized accuracy: {f.personalized_accuracy:.4f}  "
            f"(per client mean {f.as_dict()['per_client_personalized']['mean']:.4f}, "
            f"p10 {f.as_dict()['per_client_personalized']['p10']:.4f})"
        )
    return 0


def _load_adapt_data(args: argparse.Namespace) -> Any:
    from secure_fml.data import Impute, InputKind, load_csv, load_npz, load_preset

    src = args.data
    p = Path(src)
    if p.suffix == ".csv":
        if not args.client_column or not args.label_column:
            raise ConfigError("--data *.csv needs --client-column and --label-column")
        return load_csv(
            p,
            client_column=args.client_column,
            label_column=args.label_column,
            impute=Impute.parse(args.impute),
            standardize=args.standardize,
        )
    if p.suffix == ".npz":
        return load_npz(p, input_kind=InputKind(args.input_kind))
    return load_preset(src, root=args.data_root)


def _cmd_adapt(args: argparse.Namespace) -> int:
    import torch

    from secure_fml._functional import FunctionalModel
    from secure_fml.algorithms import make_algorithm
    from secure_fml.checkpoint import load_checkpoint
    from secure_fml.config import config_from_dict
    from secure_fml.evaluation import evaluate
    from secure_fml.simulation import build_model

    ckpt_path = Path(args.checkpoint)
    if ckpt_path.is_dir():
        ckpt_path = ckpt_path / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path)
    config = config_from_dict(ckpt.config)
    ds = _load_adapt_data(args)
    spec = ckpt.model_spec
    if list(ds.sample_shape) != list(spec["sample_shape"]) or ds.num_classes > spec["num_classes"]:
        raise ConfigError(
            f"--data has samples {list(ds.sample_shape)} and {ds.num_classes} classes; the "
            f"checkpoint's model expects {spec['sample_shape']} and {spec['num_classes']}"
        )
    client = ds.client(args.client)
    fm = FunctionalModel(build_model(spec))
    alg = make_algorithm(config.algorithm, fm)
    state = ckpt.state.to(torch.float32)
    support_fraction = args.support_fraction or config.algorithm.support_fraction
    res = evaluate(
        alg,
        state,
        [client],
        input_kind=ds.input_kind,
        support_fraction=support_fraction,
        seed=args.seed,
        adapt_steps=args.steps,
    )
    out = {
        "client": client.client_id,
        "samples": len(client),
        "support_fraction": support_fraction,
        "steps": args.steps or config.algorithm.adapt_steps or config.algorithm.inner_steps,
        "query_points": res.num_query_points,
        "accuracy_before": res.global_accuracy,
        "accuracy_after": res.personalized_accuracy,
        "loss_before": res.global_loss,
        "loss_after": res.personalized_loss,
        "checkpoint_round": ckpt.round,
        "algorithm": config.algorithm.name.value,
    }
    print(
        f"site {client.client_id}: {len(client)} samples, adapted {out['steps']} steps on "
        f"{support_fraction:.0%} support, evaluated on {res.num_query_points} query points\n"
        f"accuracy before adaptation: {res.global_accuracy:.4f}\n"
        f"accuracy after adaptation:  {res.personalized_accuracy:.4f}"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"saved: {args.output}")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from secure_fml.data import describe_presets

    for info in describe_presets(args.data_root):
        status = "ready" if info.present else f"missing {', '.join(info.missing)}"
        files = ", ".join(info.files) if info.files else "(no files: generated)"
        print(f"{info.name:12s} {status}")
        print(f"    {info.description}")
        print(f"    files: {files}  (root: {info.root})")
        if info.options:
            print(f"    options: {', '.join(info.options)}")
    return 0


def _cmd_privacy_plan(args: argparse.Namespace) -> int:
    import privacy
    from secure_fml.privacy_text import render_plan, render_projection

    if args.sampling == "poisson":
        if args.clients_per_round is None:
            raise ConfigError("privacy plan: --clients-per-round (expected m) is required")
        sampling = privacy.Sampling.poisson(
            sample_rate=args.clients_per_round / args.population, population=args.population
        )
    elif args.sampling == "fixed":
        if args.clients_per_round is None:
            raise ConfigError("privacy plan: --clients-per-round is required for fixed sampling")
        sampling = privacy.Sampling.fixed_size(
            clients_per_round=args.clients_per_round, population=args.population
        )
    else:
        sampling = privacy.Sampling.full(population=args.population)
    p = privacy.plan(
        target_epsilon=args.epsilon,
        delta=args.delta,
        rounds=args.rounds,
        sampling=sampling,
        accountant=args.accountant,
    )
    print(render_plan(p))
    if args.project:
        proj = privacy.project(
            target_epsilon=args.epsilon,
            rounds=args.rounds,
            clients_per_round=int(args.clients_per_round or args.population),
            populations=tuple(args.project),
            noise_multiplier=p.noise_multiplier,
            accountant=args.accountant,
        )
        print()
        print(render_projection(proj))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import privacy

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory")
    cfg_path = Path(args.config) if args.config else run_dir / "config.json"
    config: dict[str, Any] = {}
    if cfg_path.exists():
        if cfg_path.suffix == ".toml":
            import tomllib

            config = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        else:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
    elif args.config:
        raise ConfigError(f"--config {cfg_path} does not exist")
    elif args.delta is None:
        raise ConfigError(
            f"{run_dir} has no config.json (a deployment directory?): pass --config FILE "
            "or --delta"
        )
    if not (run_dir / privacy.LEDGER_FILENAME).exists() and not config:
        raise ConfigError(f"{run_dir} has neither a privacy ledger nor a config")
    out = Path(args.out) if args.out else run_dir
    paths = privacy.write_report(run_dir, config, out, delta=args.delta)
    for p in (paths.json, paths.markdown, paths.html):
        print(p)
    return 0


def _register_plugins(sub: Any) -> None:
    """Commands contributed by other installed packages (entry-point group
    ``secure_fml.commands``; each entry is ``register(subparsers) -> None``).

    This is how ``audits`` adds ``secure-fml audit`` without ``secure_fml``
    importing it: the dependency is declared in packaging, resolved at run time.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="secure_fml.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as e:
            logging.getLogger(__name__).warning("command plugin %s unavailable: %s", ep.name, e)
            continue
        register(sub)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="secure-fml",
        description="Privacy-hardened federated meta-learning (FedMeta, Reptile, Per-FedAvg).",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run federated training in one process")
    sim.add_argument("--config", help="run.toml (default: the embedded synthetic task)")
    sim.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    sim.add_argument("--rounds", type=int)
    sim.add_argument("--clients-per-round", type=int)
    sim.add_argument(
        "--algorithm",
        help="maml fomaml metasgd reptile perfedavg-fo perfedavg-hf fedavg fedavg-meta",
    )
    sim.add_argument("--preset", help="synthetic femnist shakespeare heart")
    sim.add_argument("--data-root")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--name", help="run name (directory under --out)")
    sim.add_argument("--out", help="parent directory of run directories (default runs/)")
    sim.add_argument("--threads", type=int)
    sim.add_argument("--secure-aggregation", choices=["none", "secagg", "secagg+"])
    sim.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set algorithm.inner_lr=0.1",
    )
    sim.add_argument("--no-progress", action="store_true")
    sim.set_defaults(func=_cmd_simulate)

    ad = sub.add_parser("adapt", help="personalize a trained model for one site")
    ad.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run directory")
    ad.add_argument("--data", required=True, help="preset name, or a .npz / .csv file")
    ad.add_argument("--client", required=True, help="the site's client id")
    ad.add_argument("--steps", type=int, help="adaptation steps (default: the run's)")
    ad.add_argument("--support-fraction", type=float)
    ad.add_argument("--seed", type=int, default=0, help="support/query split seed")
    ad.add_argument("--data-root")
    ad.add_argument("--client-column")
    ad.add_argument("--label-column")
    ad.add_argument("--impute", default="none", help="none | mean | median (CSV)")
    ad.add_argument("--standardize", action="store_true", help="per-site z-score (CSV)")
    ad.add_argument("--input-kind", default="tabular", choices=["image", "sequence", "tabular"])
    ad.add_argument("--output", help="write the before/after result as JSON")
    ad.set_defaults(func=_cmd_adapt)

    ds = sub.add_parser("datasets", help="list dataset presets and the files they need")
    ds.add_argument("--data-root")
    ds.set_defaults(func=_cmd_datasets)

    pv = sub.add_parser("privacy", help="differential-privacy planning")
    pv_sub = pv.add_subparsers(dest="privacy_command", required=True)
    pl = pv_sub.add_parser("plan", help="noise multiplier for a target (epsilon, delta)")
    pl.add_argument("--epsilon", type=float, required=True)
    pl.add_argument("--delta", type=float, default=1e-5)
    pl.add_argument("--rounds", type=int, required=True)
    pl.add_argument("--population", type=int, required=True, help="eligible clients N")
    pl.add_argument("--clients-per-round", type=int, help="m (expected m for Poisson)")
    pl.add_argument("--sampling", choices=["poisson", "fixed", "all"], default="poisson")
    pl.add_argument(
        "--accountant",
        choices=["rdp", "pld", "prv", "gdp"],
        default="rdp",
        help="upper-bound accountant (gdp is an approximation and is refused for calibration)",
    )
    pl.add_argument(
        "--project",
        type=int,
        nargs="*",
        metavar="N",
        help="also project epsilon/sigma to these populations (e.g. 300 3000 30000)",
    )
    pl.set_defaults(func=_cmd_privacy_plan)

    rp = sub.add_parser("report", help="privacy report of a run (json, md, html)")
    rp.add_argument("run_dir", help="simulation or deployment run directory")
    rp.add_argument("--out", help="output directory (default: the run directory)")
    rp.add_argument("--config", help="the run's config (default: RUN_DIR/config.json)")
    rp.add_argument("--delta", type=float, help="δ, when the directory has no config")
    rp.set_defaults(func=_cmd_report)

    _register_plugins(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        rc: int = args.func(args)
        return rc
    except SecureFMLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
