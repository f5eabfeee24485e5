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


def _passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes | None:
    """The CA key's passphrase: from the environment variable or the file the user
    named, else asked on the terminal; never a command-line literal. None: none given
    and no terminal to ask on."""
    import os

    from privacy.errors import ConfigError

    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise ConfigError(f"environment variable {args.passphrase_env} is not set or empty")
        return value.encode()
    if args.passphrase_file:
        try:
            raw = Path(args.passphrase_file).read_bytes()
        except OSError as e:
            raise ConfigError(f"passphrase file {args.passphrase_file}: {e.strerror}") from None
        return raw.rstrip(b"\r\n")
    if not sys.stdin.isatty():
        return None
    import getpass

    first = getpass.getpass("CA key passphrase: ").encode()
    if confirm and getpass.getpass("again: ").encode() != first:
        raise ConfigError("the two passphrases differ")
    return first


def _name_party(party: str) -> None:
    """Name the process's party in every later JSON record (once its config is read)."""
    from secure_fml.deploy._logs import JsonFormatter

    for h in logging.getLogger().handlers:
        if isinstance(h.formatter, JsonFormatter):
            h.formatter.party = party


def _cmd_pki(args: argparse.Namespace) -> int:
    from secure_fml.deploy._pki import ca_key_encrypted, init_ca, issue_server, issue_site

    d = Path(args.dir)

    def ca_passphrase() -> bytes | None:
        # Asked only when the CA key is encrypted (a missing CA is reported by the issuer).
        return _passphrase(args, confirm=False) if ca_key_encrypted(d) else None

    if args.pki_command == "init":
        insecure = bool(args.insecure_unencrypted_ca_key)
        if insecure:
            from secure_fml.deploy._pki import UNENCRYPTED_CA_KEY_WARNING

            _out(f"WARNING: {UNENCRYPTED_CA_KEY_WARNING}", err=True)
        secret = None if insecure else _passphrase(args, confirm=True)
        path = init_ca(d, passphrase=secret, insecure_unencrypted=insecure)
        _out(f"CA written to {path} (keep {d / 'ca.key'} and its passphrase offline)")
    elif args.pki_command == "issue-server":
        path = issue_server(d, hosts=tuple(args.host), passphrase=ca_passphrase())
        _out(f"server certificate written to {path}")
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
        from secure_fml.deploy._pki import site_paths

        issuing = not site_paths(d, args.name)[0].exists()
        out = make_kit(
            d,
            args.name,
            Path(args.out or f"kit-{args.name}"),
            server=args.server,
            client=args.client,
            shared_config=shared,
            passphrase=ca_passphrase() if issuing else None,
        )
        _out(f"startup kit for {args.name} written to {out} (hand it to the site)")
    else:
        path = issue_site(d, args.name, passphrase=ca_passphrase())
        _out(f"site certificate written to {path}")
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
    if isinstance(line.get("newly_excluded"), dict):
        parts.extend(f"excluded {k} (proven {v})" for k, v in line["newly_excluded"].items())
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
        src = q.add_mutually_exclusive_group()
        src.add_argument(
            "--passphrase-env",
            metavar="NAME",
            help="read the CA key passphrase from environment variable NAME",
        )
        src.add_argument(
            "--passphrase-file",
            metavar="PATH",
            help="read the CA key passphrase from PATH (first line; keep it 0600)",
        )
        if name == "init":
            src.add_argument(
                "--insecure-unencrypted-ca-key",
                action="store_true",
                help="write ca.key unencrypted (throw-away CAs only; warns)",
            )
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
