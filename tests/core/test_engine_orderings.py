"""Stateful property test of the round engine under arbitrary message orderings.

A hypothesis state machine drives the deployed coordinator (the engine plus joins and
leases) with four real client pipelines through arbitrary interleavings of joins,
polls, silences, withdrawals (in order, late, repeated), late and duplicate replies and
clock jumps. Invariants after every
step: no round is charged twice, nothing is applied that was not charged first, and
the run never deadlocks (from any state, honest delivery plus the passage of time
finishes the open round).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import privacy
from privacy.errors import ProtocolError, SecureFMLError
from secure_fml.messages import RoundStart, StageReply, StageRequest, Withdrawal
from tests.deploy import _harness as H

NAMES = ("alpha", "beta", "gamma", "delta")


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), NAMES)


def _machine(pki: Path, tmp: Path) -> type[RuleBasedStateMachine]:
    cfg = H.small_config(dp=True, rounds=3)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, insecure_seed=1))
    counter = iter(range(10**6))

    class Orderings(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.clock = ManualClock()
            self.dir = tmp / f"run{next(counter)}"
            self.coord = H.Coordinator(
                cfg,
                sites=NAMES,
                ca_certificate=H.ca_of(pki),
                model_spec=H.model_spec_for(cfg, H.dataset()),
                run_dir=self.dir,
                deadlines=H.Deadlines(train_s=5.0, stage_s=2.0, lease_s=1e9, start_grace_s=1.0),
                min_sites=3,
                clock=self.clock,
            )
            self.coord.open()
            self.sites = {n: H.make_site(cfg, pki, n, f"client_0{i}") for i, n in enumerate(NAMES)}
            self.conn: dict[str, bytes] = {}
            self.inbox: dict[str, list] = {n: [] for n in NAMES}
            self.sent: list[tuple[str, StageReply]] = []
            self.seen: list[tuple[str, RoundStart | StageRequest]] = []
            self.last_state = self.coord.state.clone()
            self.applied: list[int] = []

        def teardown(self) -> None:
            self.coord.close()

        # -------------------------------------------------------------- rules
        @rule(site=st.sampled_from(NAMES))
        def join(self, site: str) -> None:
            # A duplicate connection within the lease is refused.
            with contextlib.suppress(SecureFMLError):
                self.conn[site] = self.coord.join(site, H.cert_der(pki, site))

        @rule(site=st.sampled_from(NAMES))
        def poll(self, site: str) -> None:
            conn = self.conn.get(site)
            if conn is None:
                return
            try:
                msg = self.coord.poll(conn)
            except SecureFMLError:
                return
            if isinstance(msg, RoundStart | StageRequest):
                self.inbox[site].append(msg)

        @rule(site=st.sampled_from(NAMES), newest=st.booleans())
        def process(self, site: str, newest: bool) -> None:
            box = self.inbox[site]
            if not box:
                return
            msg = box.pop(-1 if newest else 0)
            self.seen.append((site, msg))
            try:
                reply = self.sites[site].handle(msg)
            except SecureFMLError:
                return  # the site leaves that round
            if reply is not None:
                self.sent.append((site, reply))

        @rule(data=st.data())
        def withdraw(self, data: st.DataObject) -> None:
            """A site withdraws from any message it ever processed: the open stage, a
            stage already closed, a past round, or again."""
            if not self.seen:
                return
            site, msg = data.draw(st.sampled_from(self.seen))
            conn = self.conn.get(site)
            if conn is None:
                return
            stage = msg.first_stage if isinstance(msg, RoundStart) else msg.stage
            notice = Withdrawal(
                round=msg.round, session_id=msg.session_id, stage=stage, reason="policy"
            )
            with contextlib.suppress(ProtocolError):
                self.coord.withdraw(conn, notice)

        @rule(data=st.data())
        def deliver(self, data: st.DataObject) -> None:
            """Submit any reply ever produced: in order, late, or again (a duplicate)."""
            if not self.sent:
                return
            site, reply = data.draw(st.sampled_from(self.sent))
            conn = self.conn.get(site)
            if conn is None:
                return
            with contextlib.suppress(ProtocolError):
                self.coord.submit(conn, reply)

        @rule(dt=st.floats(0.1, 10.0))
        def wait(self, dt: float) -> None:
            self.clock.now += dt
            self.coord.tick()

        # -------------------------------------------------------------- invariants
        def _ledger_rounds(self) -> list[int]:
            path = self.dir / privacy.LEDGER_FILENAME
            return [e.round for e in privacy.read_ledger(path)] if path.exists() else []

        @invariant()
        def never_charged_twice_and_never_applied_uncharged(self) -> None:
            charged = self._ledger_rounds()
            assert charged == sorted(set(charged)), charged
            if not torch.equal(self.coord.state, self.last_state):
                # The model changed: the round just applied was charged before.
                self.applied.append(self.coord.round)
                assert self.coord.round in charged, (self.coord.round, charged)
                self.last_state = self.coord.state.clone()
            assert set(self.applied) <= set(charged)

        @invariant()
        def never_deadlocks(self) -> None:
            """Honest delivery and time always close the open round (checked on a copy of
            the clock's future: the deadline exists and is finite)."""
            eng = self.coord.engine
            if eng.round_open:
                assert eng.deadline is not None and eng.deadline < float("inf")
                assert eng.deadline <= self.clock.now + 5.0 + 1e-9

    return Orderings


@pytest.mark.slow
def test_engine_message_orderings(pki: Path, tmp_path: Path) -> None:
    machine = _machine(pki, tmp_path)
    machine.TestCase.settings = settings(
        max_examples=12,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()


@pytest.mark.slow
def test_from_any_state_honest_delivery_finishes_the_run(pki: Path, tmp_path: Path) -> None:
    """Liveness: after arbitrary abuse, sites that behave and time that passes finish."""
    machine = _machine(pki, tmp_path)

    class Finish(machine):  # type: ignore[misc,valid-type]
        def teardown(self) -> None:
            for _ in range(400):
                if self.coord.finished:
                    break
                for site in NAMES:
                    if site not in self.conn:
                        self.join(site)
                    self.poll(site)
                    while self.inbox[site]:
                        before = len(self.sent)
                        self.process(site, newest=False)
                        for s, reply in self.sent[before:]:
                            with contextlib.suppress(ProtocolError):
                                self.coord.submit(self.conn[s], reply)
                self.wait(1.0)
            assert self.coord.finished, self.coord.status()
            self.never_charged_twice_and_never_applied_uncharged()
            super().teardown()

    Finish.TestCase.settings = settings(
        max_examples=6,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    Finish.TestCase().runTest()
