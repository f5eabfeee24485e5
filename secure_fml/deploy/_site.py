"""A deployed site: the engine's client pipeline, with its own policy, ledger and peers.

Everything a site does in a round -- model and roster checks, local update,
clipping, encoding, its noise share, the aggregation client session -- is
:class:`~secure_fml.pipeline.ClientPipeline`, the code every simulated client
runs. What a deployment adds:

- who the peers are: each roster entry carries a DER certificate that must chain
  to the consortium CA and name that participant (and its CA-attested SecAgg key);
- the site's own :class:`~secure_fml.deploy.SitePolicy`: every round start is
  checked against it before anything is computed, and the site's secure-aggregation
  sessions run under the site's own :class:`aggregation.ClientPolicy`;
- the site's own durable state in ``state_dir`` (``secure-fml report STATE_DIR``
  renders it; ``config.json`` there records the policy): ``site_rounds.json`` (the last
  round it joined, the session, whether it released its update there) and its own
  hash-chained, fsync'ed privacy ledger (``privacy_ledger.jsonl``) with the epsilon
  it computed itself against the coordinator. Both are written before the update
  leaves, so a restart never reopens a round the site already contributed to;
- record-level (patient-level) DP when its policy sets ``record_clip_norm``: every
  local gradient step is DP-SGD (:class:`~secure_fml.record_dp.RecordDPAlgorithm`)
  with the sigma its own policy decides (:meth:`SitePolicy.record_sigma`:
  a round start asking for less is refused), its
  :class:`RecordLevelRelease` is charged to its own ledger (within its own
  ``record_max_epsilon``) before the update leaves, and travels with the update so
  the coordinator's ledger keeps a copy. That epsilon holds against the coordinator
  and every other site together: the update itself is the output of the mechanism.

Replays: a round start for an earlier round than one the site joined, or the same
round start (session) again, is refused (:class:`~privacy.errors.StaleMessage`);
so is any round start for a round the site already released an update in. A
coordinator may restart a round the site joined but never contributed to (a
coordinator crash): nothing derived from the site's data left in the first
attempt, and the new attempt draws fresh randomness, so at most one update per
round index ever leaves a site.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import privacy
from privacy import (
    Adversary,
    Csprng,
    EpsilonCache,
    PrivacyEvent,
    PrivacyLedger,
    RecordLevelRelease,
    atomic_write_bytes,
)
from privacy.errors import (
    CheckpointError,
    ConfigError,
    InsecureModeError,
    PolicyViolation,
    PrivacyBudgetExhausted,
    PrivacyError,
    StaleMessage,
)
from secure_fml._functional import Batch
from secure_fml.algorithms import Algorithm, ClientUpdate, SplitMode
from secure_fml.deploy._pki import verify_site_certificate
from secure_fml.deploy._policy import AdmittedRound, SitePolicy
from secure_fml.messages import Peer, RoundStart
from secure_fml.pipeline import ClientPipeline, seeded_generator
from secure_fml.record_dp import (
    RecordDPAlgorithm,
    RecordLevelDP,
    num_units,
    refuse_unsupported,
    site_schedule,
)

__all__ = ["ROUNDS_FILE", "Site"]

log = logging.getLogger(__name__)

#: The site's record of the rounds it joined (next to its privacy ledger).
ROUNDS_FILE = "site_rounds.json"


@dataclass
class _Joined:
    round: int = 0
    session: str = ""
    released: bool = False
    contributions: int = 0


def _load_joined(path: Path) -> _Joined:
    if not path.exists():
        return _Joined()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        j = _Joined(
            round=int(raw["round"]),
            session=str(raw["session"]),
            released=bool(raw["released"]),
            contributions=int(raw["contributions"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Never treated as empty: a lost record would reopen every round to a replay.
        raise CheckpointError(f"{path}: unreadable site round record ({e})") from None
    return j


class Site(ClientPipeline):
    """One site's side of the rounds it is sampled for (see module docstring).

    ``policy`` is the site's own; ``state_dir`` holds its round record and ledger
    (one process per directory: the ledger is locked while open; :meth:`close`).
    Mini-batches, keys, masks and noise come from the CSPRNG: every release draws
    fresh randomness, so a replayed round start never reproduces an earlier update.
    ``seed`` and ``randomness`` (reproducible runs) are the insecure test mode only:
    ``seed`` without ``randomness`` is refused.
    """

    def __init__(
        self,
        *,
        name: str,
        algorithm: Algorithm,
        data: Batch,
        identity_key: Ed25519PrivateKey,
        ca_certificate: x509.Certificate,
        policy: SitePolicy,
        state_dir: Path | str,
        seed: int | None = None,
        randomness: Callable[[int], Csprng] | None = None,
    ) -> None:
        if not isinstance(policy, SitePolicy):
            raise TypeError("policy must be a SitePolicy")
        if seed is not None and randomness is None:
            raise InsecureModeError(
                "a site seed makes its training randomness reproducible from (seed, round), "
                "so a replayed round could be averaged; it is only allowed in the insecure "
                "test mode (run.insecure_seed)"
            )
        self.ca = ca_certificate
        self.policy = policy
        #: The site's record-level step schedule (None: no record-level DP).
        self.record_schedule = _record_schedule(policy, algorithm, data)
        generator = seeded_generator(seed, name) if seed is not None else None
        super().__init__(
            name=name,
            algorithm=algorithm,
            data=data,
            identity_key=identity_key,
            verify_peer=self._verify_peer_certificate,
            training_generator=generator,
            randomness=randomness,
            require_noise=policy.require_noise,
            secagg_policy=policy.secagg_policy(),
        )
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._rounds_path = self.state_dir / ROUNDS_FILE
        # What ``secure-fml report STATE_DIR`` needs (delta, accountant), plus the policy
        # the site ran with: its privacy officer reads this directory alone.
        atomic_write_bytes(
            self.state_dir / "config.json",
            json.dumps(
                {
                    "privacy": {
                        "enabled": True,
                        "delta": policy.delta,
                        "accountant": "rdp",
                        "max_epsilon": policy.max_epsilon,
                    },
                    "site": {"name": name, "policy": dataclasses.asdict(policy)},
                },
                indent=2,
            ).encode()
            + b"\n",
        )
        self._joined = _load_joined(self._rounds_path)
        #: The site's own privacy ledger (what it released, the epsilon it computed).
        self.ledger = PrivacyLedger.open(
            self.state_dir / privacy.LEDGER_FILENAME,
            budget=policy.budget(),
            record_budget=policy.record_budget(),
        )
        # The last round this site released anything in: a client-level release, or its
        # patients' record-level release (recorded first, and with no round order of
        # its own in the ledger).
        rounds = [e.round for e in self.ledger.entries if isinstance(e.event, RecordLevelRelease)]
        last = max([r for r in (self.ledger.last_round, *rounds) if r is not None], default=None)
        j = self._joined
        if last is not None and (last > j.round or (last == j.round and not j.released)):
            # Recorded in the ledger, not yet in the round record (a crash in between).
            self._joined = _Joined(last, "", True, j.contributions + 1)
        self._admitted: AdmittedRound | None = None
        #: This round's record-level DP-SGD (sigma from the site's own policy), and the
        #: release it planned (charged before the update leaves).
        self._record_algorithms: dict[float, RecordDPAlgorithm] = {}
        self._record_round: tuple[RecordDPAlgorithm, RecordLevelRelease] | None = None
        self._epsilon_after: float | None = None
        self._eps_cache = EpsilonCache()
        log.info("site %s policy: %s", name, policy.describe())
        # Load the accountant now: its first epsilon imports Opacus (about 2 s here, many
        # more on a loaded host), which would otherwise come out of the first round's
        # training deadline. An empty ledger's epsilon is 0 without it, so compose one
        # throwaway release.
        warm = privacy.create_accountant("rdp")
        warm.step(noise_multiplier=1.0, sample_rate=1.0)
        warm.get_epsilon(policy.delta)
        log.info(
            "site %s ledger %s: %d release(s), epsilon %.4g against the coordinator (delta %g)",
            name,
            self.ledger.path,
            len(self.ledger.entries),
            self.epsilon(),
            policy.delta,
        )

    def close(self) -> None:
        self.ledger.close()

    def _verify_peer_certificate(self, peer: Peer) -> Ed25519PublicKey:
        return verify_site_certificate(
            peer.identity, ca_cert=self.ca, expected_name=peer.name
        ).public_key

    # ------------------------------------------------------------------ state

    def _persist(self, joined: _Joined) -> None:
        data = json.dumps(joined.__dict__, sort_keys=True).encode() + b"\n"
        atomic_write_bytes(self._rounds_path, data)
        self._joined = joined

    @property
    def contributions(self) -> int:
        """Rounds this site released an update in (across restarts)."""
        return self._joined.contributions

    def epsilon(self, events: tuple[PrivacyEvent, ...] | None = None) -> float:
        """This site's epsilon against the coordinator, from its own ledger (or ``events``)."""
        return privacy.adversary_epsilon(
            self.ledger.events if events is None else events,
            adversary=Adversary.COORDINATOR,
            delta=self.policy.delta,
            cache=self._eps_cache,
        ).epsilon

    # ------------------------------------------------------------------ hooks

    def admit(self, msg: RoundStart) -> None:
        self._admitted = None
        self._record_round = None
        j = self._joined
        sid = msg.session_id.hex()
        if msg.round < j.round:
            raise StaleMessage(
                f"round {msg.round} is before round {j.round}, which this site already joined"
            )
        if msg.round == j.round and j.round > 0:
            if j.released:
                raise StaleMessage(
                    f"this site already released its update in round {msg.round}; refused"
                )
            if sid == j.session:
                raise StaleMessage(f"round start of round {msg.round} replayed; refused")
        pol = self.policy
        if pol.max_rounds is not None and j.contributions >= pol.max_rounds:
            raise PrivacyBudgetExhausted(
                f"site {self.name} contributed to {j.contributions} rounds, its policy's "
                f"maximum: it stops contributing"
            )
        admitted = pol.admit(msg, update_dimension=self.dim + msg.settings.extra_coordinates())
        record = self._admit_record_level(msg)
        if admitted.event is not None:
            try:
                self.ledger.check(admitted.event)
            except PrivacyBudgetExhausted as e:
                raise PrivacyBudgetExhausted(
                    f"site {self.name} is at its own budget, it stops contributing: {e}"
                ) from None
            except PrivacyError as e:
                raise PolicyViolation(
                    f"round {msg.round} cannot enter this site's ledger: {e}"
                ) from None
        self._persist(_Joined(msg.round, sid, False, j.contributions))
        self._admitted = admitted
        self._record_round = record
        # The epsilon after this release, computed now (during local training, not inside
        # a stage deadline).
        self._epsilon_after = (
            self.epsilon((*self.ledger.events, admitted.event))
            if admitted.event is not None
            else None
        )
        log.info(
            "site %s accepted round %d (%d peers, noise multiplier %s against the coordinator)",
            self.name,
            msg.round,
            admitted.peers,
            "none" if admitted.noise_multiplier is None else f"{admitted.noise_multiplier:.4g}",
        )

    def _admit_record_level(
        self, msg: RoundStart
    ) -> tuple[RecordDPAlgorithm, RecordLevelRelease] | None:
        """The round's DP-SGD and the release it will cost, or a typed refusal."""
        pol = self.policy
        sigma = pol.record_sigma(
            msg.settings.record_level,
            algorithm=self.algorithm.name.value,
            schedule=self.record_schedule or (),
        )
        if sigma is None:
            return None
        assert pol.record_clip_norm is not None and self.record_schedule is not None
        event = RecordLevelRelease(
            round=msg.round,
            site_id=self.name,
            unit=pol.record_unit,
            noise_multiplier=sigma,
            clip_norm=pol.record_clip_norm,
            sample_rates=tuple(q for q, _ in self.record_schedule),
            steps=tuple(k for _, k in self.record_schedule),
        )
        try:
            self.ledger.check(event)
        except PrivacyBudgetExhausted as e:
            raise PrivacyBudgetExhausted(
                f"site {self.name} is at its own record-level budget, it stops contributing: {e}"
            ) from None
        alg = self._record_algorithms.get(sigma)
        if alg is None:
            dp = RecordLevelDP(
                clip_norm=pol.record_clip_norm,
                noise_multiplier=sigma,
                delta=pol.delta,
                unit=pol.record_unit,
            )
            alg = self._record_algorithms[sigma] = RecordDPAlgorithm(self.algorithm, dp)
        return alg, event

    def local_update(self, state: torch.Tensor, round_: int) -> ClientUpdate:
        rec = self._record_round
        if rec is None:
            return super().local_update(state, round_)
        alg, event = rec
        upd = alg.client_update(state, self.data, self.training_generator(round_))
        r = upd.receipt
        if r is None or r.event(round=round_, site_id=self.name) != event:
            raise PrivacyError(
                f"round {round_}: the DP-SGD steps taken differ from the release this site "
                "planned; withheld"
            )
        return upd

    def before_release(self, msg: RoundStart) -> None:
        a = self._admitted
        j = self._joined
        if a is None or a.round != msg.round or j.round != msg.round or j.released:
            raise StaleMessage(f"round {msg.round} was not admitted by this site; withheld")
        rec = self._record_round
        record = rec[1] if rec is not None and rec[1].round == msg.round else None
        if self.policy.record_level and record is None:
            raise StaleMessage(f"round {msg.round} has no record-level release; withheld")
        if record is not None:
            # The patients' release first: durable (fsync'ed, within the site's own
            # record-level budget) before the update leaves.
            self.ledger.record(record)
        if a.event is not None:
            # Durable (fsync'ed, budget-checked) before the update leaves.
            self.ledger.record(a.event)
        self._persist(_Joined(j.round, j.session, True, j.contributions + 1))
        if record is not None:
            eps = self.ledger.record_accountant(self.name).get_epsilon(self.policy.delta)
            log.info(
                "site %s released round %d: record-level epsilon %.4g per %s (delta %g), "
                "against the coordinator and every other site",
                self.name,
                msg.round,
                eps,
                record.unit,
                self.policy.delta,
            )
        if a.event is not None and self._epsilon_after is not None:
            log.info(
                "site %s released round %d: epsilon %.4g against the coordinator (delta %g)",
                self.name,
                msg.round,
                self._epsilon_after,
                self.policy.delta,
            )


def _record_schedule(
    policy: SitePolicy, algorithm: Algorithm, data: Batch
) -> tuple[tuple[float, int], ...] | None:
    """The per-round DP-SGD schedule of a site whose policy runs record-level DP."""
    if not policy.record_level:
        return None
    refuse_unsupported(algorithm)
    if algorithm.config.split is SplitMode.FIXED:
        raise ConfigError(
            "algorithm.split = fixed is not available under record-level DP (the "
            "support/query split is part of the private sampling); use per-round"
        )
    if (policy.unit_column is not None) != (data.unit is not None):
        raise ConfigError(
            f"policy.unit_column = {policy.unit_column!r} but this site's records are "
            + ("grouped by person" if data.unit is not None else "not grouped by person")
            + " (load them with load_csv(..., unit_column=...) and name that column)"
        )
    return site_schedule(algorithm, num_records=len(data), num_units=num_units(data))
