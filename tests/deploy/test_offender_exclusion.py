"""A proven offender is excluded: an insider (real site code, its fault injected by a
test subclass) forges its unmasking shares or corrupts an encrypted share. Its forgery
never reaches theta (the released sum is bit-identical to the honest-only one), the
aggregation layer's signed evidence is re-checked and the coordinator excludes that
identity from every later round (persisted in its run directory, logged, in the
metrics), and the honest rounds after it complete without it."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregation import Stage
from aggregation import _primitives as P
from secure_fml.config import config_from_dict, config_to_dict
from secure_fml.deploy import Site
from secure_fml.deploy._pki import load_identity_key, site_paths
from secure_fml.engine import EXCLUDED_FILE
from secure_fml.messages import EngineMessage, StageReply, StageRequest
from secure_fml.pipeline import seeded_randomness
from tests.deploy import _harness as H

SEED = 5
CHEAT = "epsilon"


class _Insider(Site):
    """A site with a valid certificate that misbehaves in round 1 (``fault``), re-signing
    what it alters with its own identity key so the forgery passes signature checks."""

    fault: str = ""
    identity: Any = None

    def handle(self, message: EngineMessage) -> StageReply | None:
        session = self._session
        if self.fault == "silent" and isinstance(message, StageRequest) and message.round == 1:
            return None  # the reference run: the insider is a plain dropout instead
        if (
            self.fault == "inconsistent"
            and isinstance(message, StageRequest)
            and message.round == 1
            and message.stage is Stage.SHARE_KEYS
            and session is not None
        ):
            # Deal shares of another self-mask seed than the one it committed to.
            client: Any = session.client
            st = client.state
            xs = [h + 1 for h in st.draws]
            other = P.shamir_split(bytes(16), xs, client.config.t, P.Csprng())
            st.dealt = {h: (y, st.dealt[h][1]) for h, (_, y) in zip(st.draws, other, strict=True)}
        reply = super().handle(message)
        if reply is None or reply.round != 1 or session is None:
            return reply
        msg: Any = reply.message
        if self.fault == "forge" and reply.stage is Stage.UNMASKING:
            keys = tuple(dataclasses.replace(k, key=bytes(len(k.key))) for k in msg.keys)
            msg = dataclasses.replace(msg, keys=keys)
        elif self.fault in ("corrupt", "deny") and reply.stage is Stage.SHARE_KEYS:
            s0 = msg.shares[0]
            bad = dataclasses.replace(s0, self_mask=bytes([s0.self_mask[0] ^ 1]) + s0.self_mask[1:])
            if self.fault == "corrupt":
                session.client.state.sent[s0.recipient] = bad  # it stands by what it sent
            # "deny": it keeps the honest share on record and never opens the pair, so
            # there is an accusation but no proof.
            msg = dataclasses.replace(msg, shares=(bad, *msg.shares[1:]))
        else:
            return reply
        ctx = session.client.ctx  # type: ignore[attr-defined]
        msg = dataclasses.replace(msg, signature=self.identity.sign(msg.payload(ctx)))
        return dataclasses.replace(reply, message=msg)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), H.SITES)


def _config() -> Any:
    raw = config_to_dict(H.small_config(dp=False, rounds=2))
    raw["run"]["insecure_seed"] = SEED  # reproducible, so a run can be compared bit for bit
    return config_from_dict(raw)


def _run(pki: Path, run_dir: Path, fault: str) -> tuple[Any, list[dict[str, Any]], list[Any]]:
    cfg = _config()
    sites: list[Site] = []
    for i, name in enumerate(H.SITES):
        s = H.make_site(
            cfg, pki, name, f"client_0{i}", seed=i, randomness=seeded_randomness(SEED, name)
        )
        if name == CHEAT:
            s.__class__ = _Insider
            s.fault = fault  # type: ignore[attr-defined]
            s.identity = load_identity_key(site_paths(pki, name)[2])  # type: ignore[attr-defined]
        sites.append(s)
    coord = H.make_coordinator(cfg, pki, run_dir, min_sites=3, stage_s=3.0, start_grace_s=1.0)
    aggregates: list[Any] = []
    coord.engine.on_round_end = lambda _line: aggregates.append(coord.last_aggregate)
    with H.endpoint("inprocess", coord, pki) as ep:
        H.run_sites(ep, sites, pki, timeout_s=90)
    coord.close()
    for s in sites:
        s.close()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return coord, lines, aggregates


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "reference", "kind"),
    [("forge", "", "bad_revealed_key"), ("corrupt", "silent", "bad_share")],
)
def test_a_proven_offender_never_reaches_theta_and_is_excluded(
    pki: Path,
    tmp_path: Path,
    fault: str,
    reference: str,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, ref_lines, ref_aggs = _run(pki, tmp_path / "reference", reference)
    assert ref_lines[0]["status"] == "complete", ref_lines[0]
    coord, lines, aggs = _run(pki, tmp_path / "run", fault)
    first, second = lines
    # Round 1: the forgery never reaches theta; the sum is the honest-only one.
    assert first["status"] == "complete", first
    assert np.array_equal(aggs[0], ref_aggs[0])
    assert first["contributors"] == ref_lines[0]["contributors"]
    # ... the offender is excluded, with the offence named in the metrics ...
    assert first["newly_excluded"] == {CHEAT: kind}
    assert coord.engine.excluded[CHEAT]["kind"] == kind
    # ... and round 2 runs (and completes) without it.
    assert second["status"] == "complete", second
    assert second["participants"] == len(H.SITES) - 1 and second["excluded"] == [CHEAT]
    assert second["contributors"] == len(H.SITES) - 1
    # Persisted: a restarted coordinator keeps the offender out.
    saved = json.loads((tmp_path / "run" / EXCLUDED_FILE).read_text())["excluded"]
    assert saved[CHEAT]["round"] == 1 and saved[CHEAT]["evidence"]["parts"]
    from secure_fml.cli import main

    assert main(["status", "--run-dir", str(tmp_path / "run")]) == 0
    assert f"excluded {CHEAT} (proven {kind})" in capsys.readouterr().out
    again = H.make_coordinator(_config(), pki, tmp_path / "run")
    assert list(again.engine.excluded) == [CHEAT]
    assert again.status()["excluded"] == [CHEAT]
    again.close()


@pytest.mark.slow
def test_only_evidence_that_verifies_excludes(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator re-checks every proof against the round's roster and acts on none
    that fails (a server bug or a false accusation never excludes an honest site)."""
    import secure_fml.engine as engine_module
    from privacy.errors import InvalidSignature

    def refuse(*_args: Any) -> None:
        raise InvalidSignature("test: this proof does not verify")

    monkeypatch.setattr(engine_module, "verify_evidence", refuse)
    coord, lines, _ = _run(pki, tmp_path / "run", "forge")
    assert [ln["status"] for ln in lines] == ["complete", "complete"]
    assert "newly_excluded" not in lines[0] and not coord.engine.excluded
    assert lines[1]["participants"] == len(H.SITES)
    assert not (tmp_path / "run" / EXCLUDED_FILE).exists()


@pytest.mark.slow
def test_an_offender_that_aborts_the_round_is_excluded_and_the_retry_runs_without_it(
    pki: Path, tmp_path: Path
) -> None:
    """An inconsistent sharing aborts the round (nothing is applied); the proof excludes
    the dealer, and after the back-off the next round completes without it."""
    coord, lines, aggs = _run(pki, tmp_path / "run", "inconsistent")
    assert coord.engine.aborts_in_a_row == 0  # the complete round reset the watchdog
    first, second = lines
    assert first["status"] == "charged-not-applied" and first["contributors"] == 0, first
    assert "inconsistent sharing" in first["reason"]
    assert first["newly_excluded"] == {CHEAT: "inconsistent_sharing"}
    assert aggs[0] is None  # round 1 never reached theta
    assert second["status"] == "complete" and second["participants"] == len(H.SITES) - 1


@pytest.mark.slow
def test_a_suspicion_without_proof_excludes_nobody_from_later_rounds(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dealer accused of a bad share that does not answer the complaint is left out of
    that round (an unproven suspicion), but only a proof excludes it from later rounds."""
    with caplog.at_level(logging.WARNING, logger="aggregation"):
        coord, lines, _ = _run(pki, tmp_path / "run", "deny")
    assert any("unanswered_complaint" in r.getMessage() for r in caplog.records)
    first, second = lines
    assert first["status"] == "complete" and first["contributors"] == len(H.SITES) - 1, first
    assert "newly_excluded" not in first and not coord.engine.excluded
    assert second["status"] == "complete" and second["participants"] == len(H.SITES)
