"""A client's roster checks: the roster-wide part runs once per process and round (an
in-memory transport shares one roster tuple), every client's own checks still run."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy import Sampling
from privacy.errors import InvalidMessage, PolicyViolation
from secure_fml.config import config_from_dict
from secure_fml.engine import plan_round, privacy_setup
from secure_fml.messages import Peer, RoundStart
from secure_fml.pipeline import ClientPipeline, raw_ed25519_peer
from secure_fml.rounds import SampledRound
from secure_fml.simulation import Simulation

N = 5
CONFIG = {
    "data": {
        "preset": "synthetic",
        "options": {"num_clients": N, "max_samples": 60},
        "client_fractions": [1.0, 0.0, 0.0],
    },
    "model": {"kind": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "server": {"rounds": 1, "sampling": "all"},
    "secure_aggregation": {"protocol": "secagg+", "max_dropout_fraction": 0.2},
    "privacy": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0},
}


class _Round:
    def __init__(self) -> None:
        cfg = config_from_dict(CONFIG)
        self.sim = Simulation(cfg)
        self.names = tuple(c.client_id for c in self.sim.split.train[:N])
        self.keys = {nm: Ed25519PrivateKey.generate() for nm in self.names}
        self.calls = 0
        dim = self.sim.client_algorithm.state_dim
        plan = plan_round(
            cfg,
            privacy_setup(cfg, population=N),
            sampled=SampledRound(1, self.names, Sampling.full(population=N)),
            participants=self.names,
            dimension=int(dim),
            clip_norm=cfg.privacy.clip_norm,
        )
        model = np.zeros(int(dim), np.float32)
        model.setflags(write=False)
        self.start = RoundStart(
            round=1,
            session_id=bytes(16),
            client_index=0,
            peers=self.peers(),
            model=model,
            model_hash=hashlib.sha256(model.astype("<f4").tobytes()).digest(),
            settings=plan.settings,
        )
        assert plan.settings.protocol.secure

    def peers(self) -> tuple[Peer, ...]:
        return tuple(
            Peer(i, nm, self.keys[nm].public_key().public_bytes_raw())
            for i, nm in enumerate(self.names)
        )

    def verify(self) -> Callable[[Peer], Ed25519PublicKey]:
        def counted(peer: Peer) -> Ed25519PublicKey:
            self.calls += 1
            return raw_ed25519_peer(peer)

        return counted

    def client(
        self,
        name: str,
        verify: Callable[[Peer], Ed25519PublicKey],
        key: Ed25519PrivateKey | None = None,
    ) -> ClientPipeline:
        return ClientPipeline(
            name=name,
            algorithm=self.sim.client_algorithm,
            data=self.sim.batch(name),
            identity_key=key or self.keys[name],
            verify_peer=verify,
        )

    def start_for(self, i: int, peers: tuple[Peer, ...] | None = None) -> RoundStart:
        return dataclasses.replace(self.start, client_index=i, peers=peers or self.start.peers)


@pytest.fixture(scope="module")
def rd() -> _Round:
    return _Round()


def test_the_roster_is_verified_once_per_round_not_once_per_client(rd: _Round) -> None:
    verify = rd.verify()
    rd.calls = 0
    for i, nm in enumerate(rd.names):
        assert rd.client(nm, verify).handle(rd.start_for(i)) is not None
    assert rd.calls == N  # one verification per roster entry, not N per entry
    # The same roster arriving as a fresh object (as over a network) is checked again.
    assert rd.client(rd.names[1], verify).handle(rd.start_for(1, rd.peers())) is not None
    assert rd.calls == 2 * N


def test_a_cached_roster_still_runs_every_clients_own_checks(rd: _Round) -> None:
    verify = rd.verify()
    assert rd.client(rd.names[0], verify).handle(rd.start_for(0)) is not None  # cached now
    with pytest.raises(InvalidMessage, match="at its index"):
        rd.client(rd.names[2], verify).handle(rd.start_for(3))
    with pytest.raises(InvalidMessage, match="at its index"):
        rd.client(rd.names[2], verify).handle(rd.start_for(N))
    impostor = Ed25519PrivateKey.generate()
    with pytest.raises(InvalidMessage, match="another identity key"):
        rd.client(rd.names[2], verify, key=impostor).handle(rd.start_for(2))


def test_sybil_rosters_are_refused_every_time(rd: _Round) -> None:
    verify = rd.verify()
    p = rd.start.peers
    twice_named = (*p[:4], Peer(4, p[3].name, p[4].identity))
    twice_keyed = (*p[:4], Peer(4, p[4].name, p[3].identity))
    gap = (*p[:4], Peer(5, p[4].name, p[4].identity))
    for peers, match in ((twice_named, "name"), (twice_keyed, "identity"), (gap, "0..n-1")):
        for _ in range(2):  # a refusal is not cached as an acceptance
            with pytest.raises(InvalidMessage, match=match):
                rd.client(rd.names[0], verify).handle(rd.start_for(0, peers))
    # Two identities that verify to one key (e.g. two certificates of one key pair).
    same_key = (*p[:4], Peer(4, p[4].name, b"\x00" + p[3].identity))

    def strip(peer: Peer) -> Ed25519PublicKey:
        return raw_ed25519_peer(Peer(peer.index, peer.name, peer.identity[-32:]))

    with pytest.raises(PolicyViolation, match="Sybil"):
        rd.client(rd.names[0], strip).handle(rd.start_for(0, same_key))
