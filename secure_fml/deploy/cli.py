"""``secure-fml pki | server | client | status`` (registered through the
``secure_fml.commands`` entry point; see ``secure_fml.cli._register_plugins``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _out(text: str, *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout)


def _setup_logging(args: argparse.Namespace, *, party: str | None = None) -> None:
    """Text lines, or JSON lines only: in JSON mode everything else that reaches fd 2
    (gRPC's C core, stray prints, tracebacks) is captured and re-emitted as JSON."""
    from secure_fml.deploy._logs import JsonFormatter, StderrCapture

    root = logging.getLogger()
    if args.log_format == "json":
        handler = logging.StreamHandler(StderrCapture().stream)
        handler.setFormatter(JsonFormatter(party))
        logging.captureWarnings(True)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("secure_fml.deploy._site").setLevel(logging.INFO)


def _name_party(party: str) -> None:
    """Name the process's party in every later JSON record (once its config is read)."""
    from secure_fml.deploy._logs import JsonFormatter

    for h in logging.getLogger().handlers:
        if isinstance(h.formatter, JsonFormatter):
            h.formatter.party = party


def _cmd_pki(args: argparse.Namespace) -> int:
    from secure_fml.deploy._pki import init_ca, issue_server, issue_site

    d = Path(args.dir)
    if args.pki_command == "init":
        _out(f"CA written to {init_ca(d)} (keep {d / 'ca.key'} offline)")
    elif args.pki_command == "issue-server":
        _out(f"server certificate written to {issue_server(d, hosts=tuple(args.host))}")
    elif args.pki_command == "kit":
        from secure_fml.deploy._pki import make_kit

        shared = ""
        if args.coordinator_config:
            # The consortium's model and algorithm, as the coordinator runs them.
            import tomllib

            raw = tomllib.loads(Path(args.coordinator_config).read_text(encoding="utf-8"))
            keep = {k: raw[k] for k in ("model", "algorithm") if k in raw}
            shared = "\n".join(
                f"[{k}]\n" + "\n".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())
                for k, v in keep.items()
            )
        out = make_kit(
            d,
            args.name,
            Path(args.out or f"kit-{args.name}"),
            server=args.server,
            client=args.client,
            shared_config=shared,
        )
        _out(f"startup kit for {args.name} written to {out} (hand it to the site)")
    else:
        _out(f"site certificate written to {issue_site(d, args.name)}")
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from secure_fml.deploy._config import load_coordinator_config
    from secure_fml.deploy._process import INSECURE_WARNING, run_server

    _setup_logging(args, party="coordinator")
    settings, config = load_coordinator_config(args.config)
    if args.insecure:
        settings = dataclasses.replace(settings, insecure=True)
    if args.address:
        settings = dataclasses.replace(settings, address=args.address)
    if settings.insecure:
        _out(f"WARNING: {INSECURE_WARNING}", err=True)
    coord = run_server(settings, config)
    last = coord.status()["last"]
    _out(json.dumps({"finished": coord.finished, "round": coord.round, "last": last}))
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    from secure_fml.deploy._config import load_site_config
    from secure_fml.deploy._process import INSECURE_WARNING, run_client

    _setup_logging(args)
    settings, config = load_site_config(args.config)
    _name_party(settings.name)
    if args.insecure:
        settings = dataclasses.replace(settings, insecure=True)
    if args.server:
        settings = dataclasses.replace(settings, server=args.server)
    if settings.insecure:
        _out(f"WARNING: {INSECURE_WARNING}", err=True)
    rounds = run_client(settings, config)
    _out(json.dumps({"site": settings.name, "rounds": rounds, "model": str(settings.download)}))
    return 0


def _status_line(line: dict[str, Any]) -> str:
    """One round of a run's metrics (deployment or simulation: the same engine writes both)."""
    parts = [f"round {line.get('round', '?')}: {line.get('status', '?')}"]
    if "participants" in line:
        parts.append(f"sites seen {line['participants']}")
    if line.get("dropped") is not None:
        parts.append(f"dropped {line['dropped']}")
    if line.get("contributors") is not None:
        parts.append(f"contributors {line['contributors']}")
    if isinstance(line.get("train_loss"), int | float):
        parts.append(f"loss {line['train_loss']:.4f}")
    if isinstance(line.get("val_personalized_accuracy"), int | float):
        parts.append(f"val personalized {line['val_personalized_accuracy']:.4f}")
    if isinstance(line.get("epsilon"), int | float):
        parts.append(f"epsilon {line['epsilon']:.3f}")
    if isinstance(line.get("round_s"), int | float):
        parts.append(f"{line['round_s']:.2f}s")
    if line.get("reason"):
        parts.append(f"({line['reason']})")
    return ", ".join(parts)


def _cmd_status(args: argparse.Namespace) -> int:
    if args.run_dir:
        path = Path(args.run_dir) / "metrics.jsonl"
        if not path.exists():
            _out(f"error: {path} not found (is {args.run_dir} a run directory?)", err=True)
            return 2
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or "round" not in line:
                    raise ValueError("no round")
            except ValueError:
                _out(f"error: {path}: line {n} is not a metrics record", err=True)
                return 2
            _out(_status_line(line))
        return 0
    import grpc

    from secure_fml.deploy._pki import site_paths
    from secure_fml.deploy._transport import GrpcTransport

    if args.insecure:
        creds = None
    else:
        if not args.site:
            _out("error: --site NAME (whose certificate to use) is required with TLS", err=True)
            return 2
        cert, key, _ = site_paths(Path(args.pki_dir), args.site)
        creds = grpc.ssl_channel_credentials(
            (Path(args.pki_dir) / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
        )
    t = GrpcTransport(args.server, credentials=creds, rpc_timeout_s=10)
    try:
        st = t.status()
    finally:
        t.close()
    if args.json:
        _out(json.dumps(st, indent=2))
    else:
        _out(
            f"round {st['round']}/{st['rounds']}, finished {st['finished']}, "
            f"connected {len(st['connected'])}: {', '.join(st['connected'])}"
        )
        if st["last"]:
            _out(_status_line(st["last"]))
    return 0


def register(sub: Any) -> None:
    """Add ``pki``, ``server``, ``client`` and ``status`` to the ``secure-fml`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="log line format"
    )

    p = sub.add_parser("pki", help="consortium CA and certificates for deployment")
    psub = p.add_subparsers(dest="pki_command", required=True)
    for name, helptext in (
        ("init", "create the consortium CA (ca.pem, ca.key)"),
        ("issue-server", "issue the coordinator's certificate"),
        ("issue-site", "issue a site's certificate and SecAgg identity key"),
        ("kit", "write a site's startup kit (certificates, keys, site.toml with its policy)"),
    ):
        q = psub.add_parser(name, help=helptext)
        q.add_argument("--dir", default="pki", help="PKI directory (default: pki)")
        if name == "issue-server":
            q.add_argument(
                "--host", action="append", default=None, help="DNS name or IP (repeatable)"
            )
        if name in ("issue-site", "kit"):
            q.add_argument("name", help="site name (the certificate CN)")
        if name == "kit":
            q.add_argument("--out", help="kit directory (default: kit-NAME)")
            q.add_argument("--server", default="127.0.0.1:50051", help="coordinator address")
            q.add_argument("--client", default="CHANGE-ME", help="the site's data client id")
            q.add_argument("--coordinator-config", help="copy [model]/[algorithm] from it")
    p.set_defaults(func=_cmd_pki_defaults)

    s = sub.add_parser("server", parents=[common], help="run the coordinator (gRPC, mTLS)")
    s.add_argument("--config", required=True, help="coordinator.toml")
    s.add_argument("--address", help="override deploy.address, e.g. 127.0.0.1:50051")
    s.add_argument(
        "--insecure", action="store_true", help="no TLS: local experiments only (warns loudly)"
    )
    s.set_defaults(func=_cmd_server)

    c = sub.add_parser("client", parents=[common], help="run one site (gRPC, mTLS)")
    c.add_argument("--config", required=True, help="site.toml")
    c.add_argument("--server", help="override site.server")
    c.add_argument(
        "--insecure", action="store_true", help="no TLS: local experiments only (warns loudly)"
    )
    c.set_defaults(func=_cmd_client)

    t = sub.add_parser(
        "status", help="round status of a coordinator (live) or of any run directory"
    )
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--server", help="coordinator address")
    g.add_argument("--run-dir", help="a coordinator's or a simulation's run directory")
    t.add_argument("--pki-dir", default="pki", help="PKI directory holding ca.pem")
    t.add_argument("--site", help="site whose certificate authenticates the query")
    t.add_argument("--insecure", action="store_true", help="no TLS (local experiments only)")
    t.add_argument("--json", action="store_true", help="print the live status as JSON")
    t.set_defaults(func=_cmd_status)


def _cmd_pki_defaults(args: argparse.Namespace) -> int:
    if getattr(args, "host", None) is None and args.pki_command == "issue-server":
        args.host = ["localhost", "127.0.0.1"]
    return _cmd_pki(args)
