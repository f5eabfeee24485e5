"""``coordinator.toml`` / ``site.toml``: a ``[deploy]`` or ``[site]`` table plus the
usual config sections (``[algorithm]``, ``[server]``, ``[privacy]``, ...), which
are validated by :func:`secure_fml.config.config_from_dict` exactly as for the
simulation. A site config may carry a ``[policy]`` table: the site's own privacy
policy (:class:`~secure_fml.deploy.SitePolicy`; absent, its defaults)."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from privacy.errors import ConfigError
from secure_fml.config import Config, check_positive, config_from_dict
from secure_fml.deploy._policy import SitePolicy, policy_from_dict

__all__ = ["CoordinatorSettings", "SiteSettings", "load_coordinator_config", "load_site_config"]


def _build(cls: type, where: str, raw: Mapping[str, Any], base: Path) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]} is not a known field (valid: {', '.join(sorted(known))})"
        )
    values = dict(raw)
    for k in ("pki_dir", "run_dir", "download", "state_dir"):
        if k in values and values[k] is not None:
            p = Path(values[k])
            values[k] = p if p.is_absolute() else base / p
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


@dataclass(frozen=True, kw_only=True)
class CoordinatorSettings:
    sites: tuple[str, ...]
    sample_shape: tuple[int, ...]
    num_classes: int
    input_kind: str = "image"
    address: str = "127.0.0.1:50051"
    pki_dir: Path = Path("pki")
    run_dir: Path = Path("runs/deploy")
    insecure: bool = False
    min_sites: int = 3
    train_timeout_s: float = 300.0
    stage_timeout_s: float = 60.0
    lease_s: float = 15.0
    start_grace_s: float = 10.0
    quorum_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        object.__setattr__(self, "sample_shape", tuple(int(x) for x in self.sample_shape))
        object.__setattr__(self, "pki_dir", Path(self.pki_dir))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if not isinstance(self.insecure, bool):
            raise ConfigError("deploy.insecure must be true or false")
        if not all(isinstance(s, str) and s for s in self.sites):
            raise ConfigError("deploy.sites must be a list of site names")

    def model_spec(self, config: Config) -> dict[str, Any]:
        """The model the sites build from their data, resolved by the same function
        (``model.kind = "auto"`` gives the LSTM for sequence data on both sides)."""
        from secure_fml.simulation import model_spec

        try:
            return model_spec(
                config.model.kind,
                input_kind=self.input_kind,
                sample_shape=self.sample_shape,
                num_classes=self.num_classes,
                hidden=config.model.hidden,
            )
        except ValueError:
            raise ConfigError(
                f"deploy.input_kind must be image, sequence or tabular, got {self.input_kind!r}"
            ) from None


@dataclass(frozen=True, kw_only=True)
class SiteSettings:
    name: str
    client: str
    server: str = "127.0.0.1:50051"
    pki_dir: Path = Path("pki")
    insecure: bool = False
    download: Path | None = None
    #: The site's own round record and privacy ledger (default: ``state-<name>`` next
    #: to the config file).
    state_dir: Path | None = None
    #: Mini-batch seed: the insecure test mode only (with run.insecure_seed).
    seed: int | None = None
    poll_wait_s: float = 5.0
    reconnect_timeout_s: float = 120.0
    #: The longest wait between two attempts to join again after a transport failure.
    reconnect_backoff_max_s: float = 2.0
    #: The ``[policy]`` table (not part of ``[site]``).
    policy: SitePolicy = field(default_factory=SitePolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pki_dir", Path(self.pki_dir))
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError("site.name must be a plain site name")
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(self.state_dir))
        if not isinstance(self.insecure, bool):
            raise ConfigError("site.insecure must be true or false")
        if not isinstance(self.policy, SitePolicy):
            raise ConfigError("site.policy must be a SitePolicy")
        for key in ("poll_wait_s", "reconnect_timeout_s", "reconnect_backoff_max_s"):
            check_positive(f"site.{key}", getattr(self, key))


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_coordinator_config(path: Path | str) -> tuple[CoordinatorSettings, Config]:
    p = Path(path)
    raw = _read(p)
    dep = raw.pop("deploy", None)
    if dep is None:
        raise ConfigError(f"{p}: missing [deploy] table")
    return _build(CoordinatorSettings, "deploy", dep, p.parent), config_from_dict(raw)


def load_site_config(path: Path | str) -> tuple[SiteSettings, Config]:
    p = Path(path)
    raw = _read(p)
    site = raw.pop("site", None)
    if site is None:
        raise ConfigError(f"{p}: missing [site] table")
    policy = policy_from_dict(raw.pop("policy", None))
    if "policy" in site:
        raise ConfigError("site.policy: the policy is its own [policy] table")
    settings = _build(SiteSettings, "site", site, p.parent)
    state = settings.state_dir or p.parent / f"state-{settings.name}"
    settings = dataclasses.replace(settings, state_dir=state, policy=policy)
    return settings, config_from_dict(raw)
