"""A site that refuses a round says so (a :class:`~secure_fml.messages.Withdrawal`): the
coordinator treats it as silent at once, so the stage closes as soon as everyone else
answered instead of waiting out its deadline, and the round's metrics line names the
site and its reason. A withdrawal the engine cannot place (another session, another
stage, a second one, one after the site's reply) is refused with a typed error and
changes nothing. The clock never moves in these tests: a stage that waited for the
withdrawn site would never close."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregation import Stage
from privacy.errors import InvalidMessage, OutOfOrder, ProtocolError, Refused, StaleMessage
from secure_fml.deploy import Coordinator, Deadlines, Site
from secure_fml.deploy._convert import site_message_from_proto, withdrawal_to_proto, write_stream
from secure_fml.messages import MAX_WITHDRAWAL_REASON, RoundStart, StageRequest, Withdrawal
from secure_fml.proto import secure_fml_v1_pb2 as pb
from secure_fml.simulation import model_spec_for
from tests.deploy import _harness as H

NAMES = H.SITES  # five: max_dropout_fraction 0.2 tolerates one silent site


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), NAMES)


class _Still:
    """A clock that never moves."""

    def __call__(self) -> float:
        return 0.0


def _start(pki: Path, tmp: Path) -> tuple[Coordinator, dict[str, bytes], dict[str, Site]]:
    cfg = H.small_config(dp=True, rounds=2)
    coord = Coordinator(
        cfg,
        sites=NAMES,
        ca_certificate=H.ca_of(pki),
        model_spec=model_spec_for(cfg, H.dataset()),
        run_dir=tmp / "run",
        deadlines=Deadlines(train_s=60.0, stage_s=60.0, lease_s=1e9),
        min_sites=3,
        clock=_Still(),
    )
    coord.open()
    conns = {n: coord.join(n, H.cert_der(pki, n)) for n in NAMES}
    sites = {n: H.make_site(cfg, pki, n, f"client_0{i}") for i, n in enumerate(NAMES)}
    coord.tick()  # everyone is connected: round 1 starts
    return coord, conns, sites


def _notice(msg: RoundStart | StageRequest, **kw: object) -> Withdrawal:
    stage = msg.first_stage if isinstance(msg, RoundStart) else msg.stage
    fields: dict[str, object] = {
        "round": msg.round,
        "session_id": msg.session_id,
        "stage": stage,
        "reason": "PolicyViolation: not my policy",
        **kw,
    }
    return Withdrawal(**fields)  # type: ignore[arg-type]


def _drive(coord: Coordinator, conns: dict[str, bytes], sites: dict[str, Site]) -> None:
    """Deliver every message to its site and every reply back until round 1 closes."""
    for _ in range(50):
        if not coord.engine.round_open:
            return
        for n, site in sites.items():
            msg = coord.poll(conns[n])
            if isinstance(msg, RoundStart | StageRequest):
                reply = site.handle(msg)
                if reply is not None:
                    coord.submit(conns[n], reply)
    raise AssertionError("round 1 never closed without the clock moving")


def test_a_withdrawn_site_is_not_waited_for_and_its_reason_is_recorded(
    pki: Path, tmp_path: Path
) -> None:
    coord, conns, sites = _start(pki, tmp_path)
    starts = {n: coord.poll(conns[n]) for n in NAMES}
    a = starts["alpha"]
    assert isinstance(a, RoundStart)
    refusals: list[tuple[Withdrawal, type[ProtocolError]]] = [
        (_notice(a, session_id=bytes(16)), StaleMessage),
        (_notice(a, round=a.round + 1), StaleMessage),
        (_notice(a, stage=Stage.SHARE_KEYS), OutOfOrder),
    ]
    for bad, err in refusals:
        with pytest.raises(err):
            coord.withdraw(conns["alpha"], bad)
    assert coord.engine.expected_reply("alpha") is not None  # nothing changed
    coord.withdraw(conns["alpha"], _notice(a))
    with pytest.raises(StaleMessage):  # a second time
        coord.withdraw(conns["alpha"], _notice(a))
    assert coord.engine.expected_reply("alpha") is None
    b = starts["beta"]
    assert isinstance(b, RoundStart)
    reply = sites["beta"].handle(b)
    assert reply is not None
    coord.submit(conns["beta"], reply)
    with pytest.raises(StaleMessage):  # after its reply
        coord.withdraw(conns["beta"], _notice(b))
    for n in ("gamma", "delta", "epsilon"):
        msg = starts[n]
        assert isinstance(msg, RoundStart)
        r = sites[n].handle(msg)
        assert r is not None
        coord.submit(conns[n], r)
    del sites["alpha"]  # it left: it answers nothing more
    _drive(coord, conns, sites)
    line = coord.history[-1]
    assert line["round"] == 1 and line["status"] == "complete", line
    assert line["contributors"] == 4 and line["dropped"] == 1
    assert line["withdrew"] == {"alpha": "ADVERTISE_KEYS: PolicyViolation: not my policy"}
    # The checkpoint's copy of the line leaves the sites' own text out.
    saved = coord.engine.checkpoint().extra["metrics_line"]
    assert saved["round"] == 1 and "withdrew" not in saved
    coord.close()


def test_a_round_every_site_withdraws_from_ends_at_once(pki: Path, tmp_path: Path) -> None:
    coord, conns, _ = _start(pki, tmp_path)
    for n in NAMES:
        msg = coord.poll(conns[n])
        assert isinstance(msg, RoundStart)
        coord.withdraw(conns[n], _notice(msg, reason=f"PolicyViolation: {n} refuses"))
    assert not coord.engine.round_open
    line = coord.history[-1]
    assert line["round"] == 1 and line["status"] != "complete", line
    assert sorted(line["withdrew"]) == sorted(NAMES)
    coord.close()


def test_a_withdrawal_crosses_the_wire_and_malformed_ones_are_refused() -> None:
    w = Withdrawal(round=3, session_id=b"s" * 16, stage=Stage.UNMASKING, reason="Stale: x")

    def parse(frames: list[pb.Frame]) -> object:
        return site_message_from_proto(
            frames, max_payload=lambda _s: 1 << 20, expected_tensor=lambda _s: None
        )

    assert parse(list(withdrawal_to_proto(w, connection_id=b"c" * 16))) == (b"c" * 16, w)
    h = pb.Header(kind=pb.WITHDRAW, round=3, session_id=b"s" * 16, stage=Stage.UNMASKING.value)
    with pytest.raises(Refused, match="exceeds the limit of 0"):  # a withdrawal has no payload
        parse(list(write_stream(h, b"payload")))
    h.reason = "x" * (MAX_WITHDRAWAL_REASON + 1)
    with pytest.raises(InvalidMessage, match="withdrawal reason"):
        parse(list(write_stream(h, b"")))
    h.reason = "ok"
    h.stage = Stage.DONE.value
    with pytest.raises(InvalidMessage, match="cannot withdraw"):
        parse(list(write_stream(h, b"")))
    h.stage = Stage.UNMASKING.value
    h.session_id = b"short"
    with pytest.raises(InvalidMessage, match="session_id"):
        parse(list(write_stream(h, b"")))
    # A long reason from the site itself is cut, never refused.
    long = Withdrawal(round=1, session_id=b"s" * 16, stage=Stage.SHARE_KEYS, reason="y" * 5000)
    assert len(long.reason) == MAX_WITHDRAWAL_REASON and long.reason.endswith("...")
