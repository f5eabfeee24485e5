"""The ``secure-fml`` command line. Only this module prints; the library logs.

Every user mistake is one line ``error: ...`` naming the field, flag or file,
with exit status 2: errors the library raises on purpose
(:class:`SecureFMLError`), files that cannot be read or written (``OSError``),
and bad flags (argparse errors are reduced to one line too). Notices (e.g. a
clamped setting) go to stderr as ``notice: ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from privacy import Sampling
from privacy.errors import ConfigError, SecureFMLError

__all__ = ["build_parser", "main"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after each flag's help, except where there is nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Shows defaults in ``--help`` and reports bad flags on one line (exit status 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secure-fml")
    except PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


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
    "device": "run.device",
    "secure_aggregation": "secure_aggregation.protocol",
    "executor": "simulation.executor",
    "workers": "simulation.workers",
    "ray_address": "simulation.ray_address",
}

# With --resume the run's own config.json is the config: these flags would change what the
# resumed run is (or where it lives), so they are refused instead of silently ignored.
# --rounds extends (or confirms) the run; --data-root and --threads change neither results'
# meaning nor identity; --no-progress and --log-to only change what is shown.
_RESUME_REFUSED = (
    "config",
    "overwrite",
    "clients_per_round",
    "algorithm",
    "preset",
    "seed",
    "name",
    "out",
    "secure_aggregation",
    "set",
)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _resume_config(args: argparse.Namespace) -> tuple[Any, Path, int]:
    """The resumed run's config (with --rounds), its directory and its checkpoint round."""
    from secure_fml.checkpoint import load_checkpoint
    from secure_fml.config import load_config, with_overrides

    given = [_flag(d) for d in _RESUME_REFUSED if getattr(args, d, None) not in (None, False, [])]
    if given:
        raise ConfigError(
            f"--resume continues a run with its own config.json; {', '.join(given)} cannot "
            "change it (only --rounds, --data-root, --threads, --no-progress, --log-to apply)"
        )
    run_dir = Path(args.resume)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.json)")
    config = load_config(run_dir / "config.json")
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        ledger = (run_dir / "privacy_ledger.jsonl").exists()
        raise ConfigError(
            f"--resume {run_dir}: no checkpoint yet (the first is written at round "
            f"{config.run.checkpoint_every}), so there is nothing to resume; "
            + (
                "its privacy ledger stays spent: start a new run under another --name"
                if ledger
                else f"start it again with --config {run_dir / 'config.json'} --overwrite"
            )
        )
    done = load_checkpoint(ckpt_path).round
    overrides: dict[str, Any] = {}
    if args.rounds is not None:
        if args.rounds < done:
            raise ConfigError(
                f"--rounds {args.rounds}: the run in {run_dir} already completed {done} rounds"
            )
        overrides["server.rounds"] = args.rounds
    if args.data_root is not None:
        overrides["data.root"] = args.data_root
    if args.threads is not None:
        overrides["run.threads"] = args.threads
    for flag in ("executor", "workers", "ray_address", "device"):  # where clients run
        if getattr(args, flag, None) is not None:
            overrides[_FLAG_FIELDS[flag]] = getattr(args, flag)
    if overrides:
        config = with_overrides(config, overrides)
    return config, run_dir, done


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _metrics_text(m: dict[str, Any] | None) -> str:
    """``accuracy 0.8 | balanced 0.7 | sens 0.9 | spec 0.5 | AUROC 0.81`` (binary extras)."""
    if not m:
        return "-"
    parts = [f"accuracy {_fmt(m.get('accuracy'))}"]
    if "balanced_accuracy" in m:
        parts.append(f"balanced {_fmt(m['balanced_accuracy'])}")
    if "sensitivity" in m:
        parts += [
            f"sensitivity {_fmt(m.get('sensitivity'))}",
            f"specificity {_fmt(m.get('specificity'))}",
            f"AUROC {_fmt(m.get('auroc'))}",
        ]
    return " | ".join(parts)


def _print_results(summary: dict[str, Any]) -> None:
    test = summary.get("test")
    if not test:
        print("no test clients: nothing evaluated")
        return
    held = summary.get("held_out")
    who = f"held-out site {held}" if held else f"test clients: {test['num_clients']}"
    print(f"{who} ({test['num_query_points']} query points)")
    pc = test["per_client_personalized"]
    print(
        f"global accuracy:       {_fmt(test['global_accuracy'])}\n"
        f"personalized accuracy: {_fmt(test['personalized_accuracy'])}  "
        f"(per client mean {_fmt(pc['mean'])}, p10 {_fmt(pc['p10'])})"
    )
    rows: list[tuple[str, dict[str, Any] | None]] = [
        ("global (no adaptation)", test.get("global_metrics")),
        ("personalized", test.get("personalized_metrics")),
    ]
    base = summary.get("baselines") or {}
    rows += [
        ("  chance (uniform guess)", base.get("chance")),
        ("  majority class", base.get("majority")),
        ("  untrained + adapted", base.get("untrained_adapted")),
        ("  local only (alone)", base.get("local_only")),
    ]
    for label, m in rows:
        if m is not None:
            print(f"{label:26s} {_metrics_text(m)}")
    pers = (test.get("personalized_metrics") or {}).get("accuracy")
    bars = [
        (name, (base.get(key) or {}).get("accuracy"))
        for name, key in (("majority class", "majority"), ("local only", "local_only"))
    ]
    below = [name for name, acc in bars if acc is not None and pers is not None and pers <= acc]
    if below:
        _notice(f"personalized accuracy does not beat {' or '.join(below)} on these clients")


def _load_run_data(config: Any) -> tuple[Any, Any, list[str]]:
    """Load the dataset once (an outline of it when the workers of a pool or Ray
    executor may load the training partitions), resolve population-dependent settings
    (with notices)."""
    from secure_fml.config import resolve_for_population
    from secure_fml.observability import stage
    from secure_fml.simulation import (
        driver_outlines,
        load_dataset,
        outline_dataset,
        split_dataset,
    )

    outline = driver_outlines(config)
    with stage(f"loading {config.data.preset} data", enabled=config.data.preset != "fewshot"):
        if outline:
            ds: Any = outline_dataset(config)
            population = len(ds.train_ids)
        else:
            ds = load_dataset(config)
            population = len(split_dataset(config, ds).train)
    if not population:
        raise ConfigError("the client split left no training clients")
    config, notices = resolve_for_population(config, population)
    return config, ds, notices


def _cmd_simulate(args: argparse.Namespace) -> int:
    from secure_fml.config import Config, load_config, with_overrides
    from secure_fml.observability import build_sink
    from secure_fml.simulation import Simulation

    if args.resume:
        config, run_dir, done = _resume_config(args)
    else:
        from secure_fml.demo import default_run_config

        done = 0
        if args.config:
            config = load_config(args.config)
        else:
            # No config file: a named preset starts from the library defaults; no preset
            # either is the embedded default run (FedMeta on the few-shot task, tuned).
            config = Config() if args.preset else default_run_config()
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
    config, ds, notices = _load_run_data(config)
    for n in notices:
        _notice(n)
    if config.data.leave_out:
        print(f"leave-one-out: {config.data.leave_out} is the new, unseen site")
    # Optional sinks (TensorBoard, MLflow, JSON log lines); metrics.jsonl is written by the run.
    sink = build_sink(args.log_to or [], run_dir=run_dir, run_name=config.run.name)
    sim = Simulation(config, dataset=ds, run_dir=run_dir, sinks=[sink])
    if args.resume and done >= config.server.rounds:
        _notice(f"the run already completed {done} rounds; evaluating it again")
    result = sim.run(progress=not args.no_progress, resume=bool(args.resume))
    print(f"run directory: {run_dir}")
    _print_results(result.summary)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from secure_fml.demo import render_table, run_demo

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{out} is not empty; use --overwrite or another --out")
    if args.overwrite and out.exists():
        import shutil

        for child in ("fedavg", "maml", "metasgd"):
            if (out / child / "privacy_ledger.jsonl").exists():
                raise ConfigError(f"{out / child} holds a privacy ledger; use another --out")
            shutil.rmtree(out / child, ignore_errors=True)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be an integer >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    res = run_demo(rounds=args.rounds, seed=args.seed, out_dir=out, progress=not args.no_progress)
    print(render_table(res))
    print(
        f"\n{res.seconds:.0f}s; results in {out}/demo.md and demo.json; checkpoints in "
        f"{out}/fedavg, {out}/maml, {out}/metasgd"
    )
    return 0


def _load_adapt_data(args: argparse.Namespace, loaded: Any) -> Any:
    from secure_fml.adaptation import load_site_csv
    from secure_fml.data import Impute, InputKind, describe_presets, load_npz, load_preset

    src = args.data
    p = Path(src)
    ignore = [c.strip() for c in (args.ignore_columns or "").split(",") if c.strip()]
    if p.suffix == ".csv":
        if not args.client_column or not args.label_column:
            raise ConfigError("--data *.csv needs --client-column and --label-column")
        ds, notices = load_site_csv(
            p,
            data_spec=loaded.data_spec,
            client_column=args.client_column,
            label_column=args.label_column,
            ignore_columns=ignore,
            impute=args.impute,
            standardize=args.standardize,
        )
        for n in notices:
            _notice(n)
        return ds
    if ignore:
        raise ConfigError("--ignore-columns applies to --data *.csv only")
    if p.suffix == ".npz":
        spec = loaded.data_spec or {}
        return load_npz(
            p,
            input_kind=InputKind(args.input_kind or spec.get("input_kind", "tabular")),
            impute=Impute.parse(args.impute or spec.get("impute", "none")),
            standardize=(
                args.standardize
                if args.standardize is not None
                else bool(spec.get("standardize", False))
            ),
        )
    dc = loaded.config.data
    # A preset with a pixel transform option loads in the checkpoint's encoding (an
    # older checkpoint records none: LEAF's raw pixels).
    takes_pixels = any(i.name == src and "pixels" in i.options for i in describe_presets())
    pixels = {"pixels": (loaded.data_spec or {}).get("pixel_transform", "none")}
    if src == dc.preset:
        # The training preset: the same options (e.g. a generated family's seed and size).
        opts = {**(pixels if takes_pixels else {}), **dc.options}
        return load_preset(src, root=args.data_root or dc.root, **opts)
    return load_preset(src, root=args.data_root, **(pixels if takes_pixels else {}))


def _cmd_adapt(args: argparse.Namespace) -> int:
    from secure_fml.adaptation import load_for_adaptation
    from secure_fml.baselines import local_only, majority_class
    from secure_fml.evaluation import evaluate

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be an integer >= 1, got {args.steps}")
    if args.support_fraction is not None and not 0 < args.support_fraction < 1:
        raise ConfigError(f"--support-fraction must be in (0, 1), got {args.support_fraction}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {args.seed}")
    from secure_fml.data import align_preprocessing

    loaded = load_for_adaptation(args.checkpoint)
    config = loaded.config
    ds, notices = align_preprocessing(_load_adapt_data(args, loaded), loaded.data_spec)
    for n in notices:
        _notice(n)
    spec = loaded.checkpoint.model_spec
    if list(ds.sample_shape) != list(spec["sample_shape"]) or ds.num_classes > spec["num_classes"]:
        raise ConfigError(
            f"--data has samples {list(ds.sample_shape)} and {ds.num_classes} classes; the "
            f"checkpoint's model expects {spec['sample_shape']} and {spec['num_classes']}"
        )
    client = ds.client(args.client)
    support_fraction = args.support_fraction or config.algorithm.support_fraction
    steps = args.steps or config.algorithm.adapt_steps or config.algorithm.inner_steps
    res = evaluate(
        loaded.algorithm,
        loaded.state,
        [client],
        input_kind=ds.input_kind,
        support_fraction=support_fraction,
        seed=args.seed,
        adapt_steps=steps,
    )
    k = int(spec["num_classes"])
    majority = majority_class(
        [client], num_classes=k, support_fraction=support_fraction, seed=args.seed
    )
    alone = None
    if args.local_steps > 0:
        init = loaded.algorithm.theta(
            loaded.algorithm.initial_state(loaded.algorithm.model.initial_parameters())
        )
        alone = local_only(
            loaded.algorithm.model,
            init,
            [client],
            input_kind=ds.input_kind,
            support_fraction=support_fraction,
            seed=args.seed,
            steps=args.local_steps,
            lrs=config.eval.local_only_lrs,
        )
    out = {
        "client": client.client_id,
        "samples": len(client),
        "support_fraction": support_fraction,
        "steps": steps,
        "query_points": res.num_query_points,
        "accuracy_before": res.global_accuracy,
        "accuracy_after": res.personalized_accuracy,
        "loss_before": res.global_loss,
        "loss_after": res.personalized_loss,
        "metrics_before": res.global_metrics,
        "metrics_after": res.personalized_metrics,
        "baselines": {"chance": {"accuracy": 1.0 / k}, "majority": majority, "local_only": alone},
        "checkpoint_round": loaded.checkpoint.round,
        "algorithm": config.algorithm.name.value,
    }
    print(
        f"site {client.client_id}: {len(client)} samples, adapted {steps} steps on "
        f"{support_fraction:.0%} support, evaluated on {res.num_query_points} query points\n"
        f"accuracy before adaptation: {res.global_accuracy:.4f}\n"
        f"accuracy after adaptation:  {res.personalized_accuracy:.4f}"
    )
    for label, m in (
        ("after adaptation", res.personalized_metrics),
        ("  chance (uniform guess)", {"accuracy": 1.0 / k}),
        ("  majority class", majority),
        ("  local only (alone)", alone),
    ):
        if m is not None:
            print(f"{label:26s} {_metrics_text(m)}")
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


def _plan_sampling(args: argparse.Namespace) -> Sampling:
    """The client sampling ``privacy plan`` describes (--sampling, --clients-per-round,
    --population), validated."""
    m, n = args.clients_per_round, args.population
    if args.sampling != "all" and (m < 1 or m > n):
        raise ConfigError(f"--clients-per-round must be in [1, --population {n}], got {m}")
    if args.sampling == "poisson":
        return Sampling.poisson(sample_rate=m / n, population=n)
    if args.sampling == "fixed":
        return Sampling.fixed_size(clients_per_round=m, population=n)
    return Sampling.full(population=n)


def _privacy_plan_record(args: argparse.Namespace) -> int:
    """``privacy plan --unit record``: σ per site (and one common σ) for record-level DP."""
    import privacy

    if not args.site_sizes:
        raise ConfigError("privacy plan --unit record: --site-sizes N [N ...] is required")
    if args.local_steps is None and args.inner_steps is None:
        raise ConfigError(
            "privacy plan --unit record: give --local-steps (FedAvg, Reptile, Per-FedAvg FO) "
            "or --support-fraction and --inner-steps (FOMAML, Meta-SGD FO)"
        )
    if (args.support_fraction is None) != (args.inner_steps is None):
        raise ConfigError(
            "privacy plan --unit record: --support-fraction and --inner-steps go together"
        )
    rounds = args.rounds
    if args.population is not None and args.sampling != "all":
        # Under client sampling a site spends record-level privacy only in the rounds it
        # joins: plan for the participation bound, exactly as `simulate` calibrates.
        from secure_fml.rounds import participation_bound

        m = args.clients_per_round
        rounds = participation_bound(_plan_sampling(args), rounds=args.rounds)
        print(
            f"notice: {m} of {args.population} sites per round ({args.sampling}): each site is "
            f"planned for the {rounds} of {args.rounds} rounds it joins at most (every site, "
            "with probability 0.99); set record_max_epsilon to stop a site that joins more",
            file=sys.stderr,
        )
    p = privacy.plan_record_level(
        site_sizes=args.site_sizes,
        site_names=args.site_names,
        rounds=rounds,
        delta=args.delta,
        local_steps=args.local_steps or 1,
        batch_size=args.batch_size,
        target_epsilon=args.epsilon if args.noise_multiplier is None else None,
        noise_multiplier=args.noise_multiplier,
        support_fraction=args.support_fraction,
        inner_steps=args.inner_steps,
        query_batch_size=args.query_batch_size,
        accountant=args.accountant,
    )
    print(privacy.render_record_level_plan(p))
    return 0


def _cmd_privacy_plan(args: argparse.Namespace) -> int:
    import privacy
    from secure_fml.config import PrivacyConfig
    from secure_fml.privacy_text import render_plan, render_projection

    if args.unit == "record":
        return _privacy_plan_record(args)
    for flag in ("epsilon", "population"):
        if getattr(args, flag) is None:
            raise ConfigError(f"privacy plan: --{flag} is required (client unit)")
    # The same range checks as a run's [privacy] section.
    PrivacyConfig(target_epsilon=args.epsilon, delta=args.delta, accountant=args.accountant)
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be an integer >= 1, got {args.rounds}")
    if args.population < 1:
        raise ConfigError(f"--population must be an integer >= 1, got {args.population}")
    if args.delta >= 1.0 / args.population:
        raise ConfigError(
            f"--delta {args.delta:g} is not below 1/N = {1.0 / args.population:.3g} for "
            f"--population {args.population}"
        )
    m = args.clients_per_round
    sampling = _plan_sampling(args)
    from secure_fml.observability import stage

    with stage("calibrating the noise multiplier"):
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
            clients_per_round=int(m if args.sampling != "all" else args.population),
            populations=tuple(args.project),
            noise_multiplier=p.noise_multiplier,
            accountant=args.accountant,
        )
        print()
        print(render_projection(proj))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import privacy
    from secure_fml.observability import stage

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
            f"{run_dir} has no config.json (a deployment directory?): pass --config FILE or --delta"
        )
    if not (run_dir / privacy.LEDGER_FILENAME).exists() and not config:
        raise ConfigError(f"{run_dir} has neither a privacy ledger nor a config")
    out = Path(args.out) if args.out else run_dir
    with stage(f"privacy report of {run_dir}", enabled=not args.no_progress):
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
    from secure_fml.observability import SINK_KINDS

    ap = _Parser(
        prog="secure-fml",
        description="Privacy-hardened federated meta-learning (FedMeta, Reptile, Per-FedAvg).",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("--version", action="version", version=f"secure-fml {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser(
        "simulate",
        help="run federated training in one process",
        description="Train in one process; prints test results beside the baselines "
        "(chance, majority class, untrained + adapted, local only). Flags override the "
        "config file; unset flags keep the config's (or the default's) values.",
    )
    sim.add_argument(
        "--config",
        help="run.toml or a run's config.json (default, without --preset: the embedded run, "
        "FedMeta(MAML) on the few-shot task with the demo's settings)",
    )
    sim.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last checkpoint (with --rounds N: up to round N)",
    )
    sim.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    sim.add_argument("--rounds", type=int, help="training rounds [server.rounds]")
    sim.add_argument(
        "--clients-per-round", type=int, help="clients sampled per round [server.clients_per_round]"
    )
    sim.add_argument(
        "--algorithm",
        help="maml fomaml metasgd reptile perfedavg-fo perfedavg-hf fedavg fedavg-meta "
        "[algorithm.name]",
    )
    sim.add_argument("--preset", help="fewshot synthetic femnist shakespeare heart [data.preset]")
    sim.add_argument("--data-root", help="folder holding the preset's files [data.root]")
    sim.add_argument("--seed", type=int, help="model init and sampling seed >= 0 [run.seed]")
    sim.add_argument("--name", help="run name: the directory under --out [run.name]")
    sim.add_argument("--out", help="parent directory of run directories [run.out_dir]")
    sim.add_argument("--threads", type=int, help="torch threads >= 1 [run.threads]")
    sim.add_argument(
        "--device",
        help="where clients train and evaluation runs: cpu, cuda, cuda:N, auto [run.device]",
    )
    sim.add_argument(
        "--executor",
        choices=["auto", "sequential", "pool", "ray"],
        help="where clients run: in this process, a process pool with one worker per "
        "core, or Ray actors (pip install 'secure-fml[ray]'); auto: the pool for rounds "
        "of 64+ clients [simulation.executor]",
    )
    sim.add_argument(
        "--ray-address",
        help="with --executor ray: auto or HOST:PORT of an existing Ray cluster "
        "(default: a local Ray instance) [simulation.ray_address]",
    )
    sim.add_argument(
        "--workers",
        type=int,
        help="pool worker processes >= 1 (default: one per core) [simulation.workers]",
    )
    sim.add_argument(
        "--secure-aggregation",
        choices=["none", "secagg", "secagg+"],
        help="[secure_aggregation.protocol]",
    )
    sim.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set algorithm.inner_lr=0.1 or "
        '--set "data.client_fractions=[0.7, 0.15, 0.15]" (repeatable)',
    )
    sim.add_argument(
        "--log-to",
        action="append",
        choices=[k for k in SINK_KINDS if k != "jsonl"],
        help="also send per-round metrics to TensorBoard (RUN_DIR/tensorboard), MLflow, or "
        "the log as JSON lines (repeatable; metrics.jsonl is always written)",
    )
    sim.add_argument("--no-progress", action="store_true", help="no progress output")
    sim.set_defaults(func=_cmd_simulate)

    dm = sub.add_parser(
        "demo",
        help="what meta-learning buys a new site: FedMeta vs every baseline, as a table",
        description="Train FedAvg, FedMeta(MAML) and FedMeta(Meta-SGD) on the embedded "
        "few-shot task and print their accuracy on unseen sites beside chance, majority "
        "class, untrained + adapted, local only and FedAvg + fine-tune.",
    )
    dm.add_argument("--out", default="runs/demo", help="results and one run per algorithm")
    dm.add_argument("--rounds", type=int, default=None, help="training rounds (default 300)")
    dm.add_argument("--seed", type=int, default=0, help="model init and sampling seed")
    dm.add_argument("--threads", type=int, default=None, help="torch threads")
    dm.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    dm.add_argument("--no-progress", action="store_true", help="no progress output")
    dm.set_defaults(func=_cmd_demo)

    ad = sub.add_parser(
        "adapt",
        help="personalize a trained model for one site",
        description="Adapt the model on the site's support set, evaluate on its query set "
        "and print the result beside the site's majority-class and local-only baselines. "
        "A CSV is matched to the model's features by column name and preprocessed as the "
        "training data was (imputation, standardization, with the site's own statistics).",
    )
    ad.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run directory")
    ad.add_argument("--data", required=True, help="preset name, or a .npz / .csv file")
    ad.add_argument("--client", required=True, help="the site's client id")
    ad.add_argument("--steps", type=int, help="adaptation steps >= 1 (default: the run's)")
    ad.add_argument(
        "--support-fraction", type=float, help="support share in (0, 1) (default: the run's)"
    )
    ad.add_argument("--seed", type=int, default=0, help="support/query split seed")
    ad.add_argument("--data-root", help="folder holding the preset's files")
    ad.add_argument("--client-column", help="CSV: the column naming the site")
    ad.add_argument("--label-column", help="CSV: the label column")
    ad.add_argument(
        "--ignore-columns",
        metavar="A,B",
        help="CSV: columns to drop (e.g. patient_id); any other non-feature column is refused",
    )
    ad.add_argument(
        "--impute",
        default=None,
        help="none | mean | median (default: as the training data was)",
    )
    ad.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-site z-score (default: as the training data was)",
    )
    ad.add_argument(
        "--input-kind",
        default=None,
        choices=["image", "sequence", "tabular"],
        help=".npz: the sample kind (default: the training data's)",
    )
    ad.add_argument(
        "--local-steps",
        type=int,
        default=100,
        help="Adam steps of the local-only baseline (0: skip it)",
    )
    ad.add_argument("--output", help="write the before/after result as JSON")
    ad.set_defaults(func=_cmd_adapt)

    ds = sub.add_parser("datasets", help="list dataset presets and the files they need")
    ds.add_argument("--data-root", help="data root to check (default: the search order)")
    ds.set_defaults(func=_cmd_datasets)

    pv = sub.add_parser("privacy", help="differential-privacy planning")
    pv_sub = pv.add_subparsers(dest="privacy_command", required=True, metavar="COMMAND")
    pl = pv_sub.add_parser(
        "plan",
        help="noise multiplier for a target (epsilon, delta)",
        description="The defaults are simulate's: fixed-size sampling of 4 clients per round.",
    )
    pl.add_argument(
        "--unit",
        choices=["client", "record"],
        default="client",
        help="privacy unit: client (a whole site) or record (a patient inside each site)",
    )
    pl.add_argument(
        "--epsilon", type=float, help="target epsilon in (0, 100] (required for --unit client)"
    )
    pl.add_argument("--delta", type=float, default=1e-5, help="delta, below 1/population")
    pl.add_argument("--rounds", type=int, required=True, help="training rounds")
    pl.add_argument(
        "--population",
        type=int,
        help="eligible clients N (--unit record: with --sampling fixed|poisson, each "
        "site is planned for the rounds it may join)",
    )
    pl.add_argument(
        "--clients-per-round", type=int, default=4, help="m (the expected m for Poisson)"
    )
    pl.add_argument(
        "--sampling",
        choices=["fixed", "poisson", "all"],
        default="fixed",
        help="as server.sampling",
    )
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
    rec = pl.add_argument_group("record-level (--unit record)")
    rec.add_argument("--site-sizes", type=int, nargs="+", metavar="N", help="units per site")
    rec.add_argument("--site-names", nargs="+", metavar="NAME", help="labels for the sites")
    rec.add_argument("--local-steps", type=int, help="DP-SGD steps per round at q = B/n")
    rec.add_argument("--batch-size", type=int, help="expected batch B (default: full pool, q=1)")
    rec.add_argument("--support-fraction", type=float, help="meta-learning: support share p")
    rec.add_argument("--inner-steps", type=int, help="meta-learning: support steps per round")
    rec.add_argument("--query-batch-size", type=int, help="meta-learning: query batch B_q")
    rec.add_argument(
        "--noise-multiplier", type=float, help="evaluate this sigma instead of calibrating"
    )
    pl.set_defaults(func=_cmd_privacy_plan)

    rp = sub.add_parser("report", help="privacy report of a run (json, md, html)")
    rp.add_argument("run_dir", help="simulation or deployment run directory")
    rp.add_argument("--out", help="output directory (default: the run directory)")
    rp.add_argument("--config", help="the run's config (default: RUN_DIR/config.json)")
    rp.add_argument("--delta", type=float, help="δ, when the directory has no config")
    rp.add_argument("--no-progress", action="store_true", help="no progress output")
    rp.set_defaults(func=_cmd_report)

    _register_plugins(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core reads its log level once, when grpc is first imported (building the
    # parser loads the deployment commands, which import it). Unset, it logs every
    # refused TLS handshake at INFO as a plain-text line; ERROR is gRPC's documented
    # default, and an operator's own setting wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
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
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        # A file or directory the user named cannot be read or written.
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
