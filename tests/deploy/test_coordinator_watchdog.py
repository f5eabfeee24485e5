"""The coordinator never waits forever: with fewer usable sites connected than it needs
for ``deploy.quorum_timeout_s``, it stops with NoProgress (a typed, one-line reason);
``secure-fml server`` then exits non-zero after the sites were told training is over."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_fml.deploy import Coordinator, Deadlines
from secure_fml.errors import ConfigError, NoProgress
from secure_fml.simulation import model_spec_for
from tests.deploy import _harness as H


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), H.SITES)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _coordinator(pki: Path, run_dir: Path, clock: _Clock) -> Coordinator:
    cfg = H.small_config(dp=False)
    c = Coordinator(
        cfg,
        sites=H.SITES,
        ca_certificate=H.ca_of(pki),
        model_spec=model_spec_for(cfg, H.dataset()),
        run_dir=run_dir,
        deadlines=Deadlines(quorum_timeout_s=30.0),
        min_sites=3,
        clock=clock,
    )
    c.open()
    return c


@pytest.mark.slow
def test_no_site_left_ends_with_no_progress(pki: Path, tmp_path: Path) -> None:
    clock = _Clock()
    coord = _coordinator(pki, tmp_path, clock)
    conn = coord.join("alpha", H.cert_der(pki, "alpha"))
    for t in (0.0, 10.0, 29.0):
        clock.now = t
        coord.poll(conn)
        assert not coord.finished
    clock.now = 50.0  # alpha's lease (15 s) ran out too: no site at all is left
    coord.tick()
    assert coord.finished and isinstance(coord.engine.stop_error, NoProgress)
    msg = str(coord.engine.stop_error)
    assert "no progress: 0 usable site(s) connected (none), 3 needed" in msg
    assert "quorum_timeout_s = 30" in msg and "\n" not in msg
    assert coord.status()["stopped"] == msg
    coord.close()


def test_quorum_timeout_is_validated() -> None:
    with pytest.raises(ConfigError, match="quorum_timeout_s"):
        Deadlines(quorum_timeout_s=0.0)


@pytest.mark.e2e
def test_the_server_process_exits_with_no_progress_when_no_site_comes(
    pki: Path, tmp_path: Path
) -> None:
    from secure_fml.deploy import CoordinatorSettings
    from secure_fml.deploy._process import run_server

    settings = CoordinatorSettings(
        sites=H.SITES,
        sample_shape=(60,),
        num_classes=10,
        input_kind="tabular",
        address="127.0.0.1:0",
        pki_dir=pki,
        run_dir=tmp_path / "run",
        quorum_timeout_s=1.0,
    )
    with pytest.raises(NoProgress, match="0 usable site"):
        run_server(settings, H.small_config(dp=False), linger_s=0.1)
