"""The coordinator never waits forever: with fewer usable sites connected than it needs
for ``deploy.quorum_timeout_s``, it stops with NoProgress (a typed, one-line reason);
``secure-fml server`` then exits non-zero after the sites were told training is over."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_fml.deploy import Coordinator, Deadlines
from secure_fml.errors import ConfigError, NoProgress
from secure_fml.messages import Finished
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


def test_the_coordinator_is_released_once_every_connected_site_was_told(
    pki: Path, tmp_path: Path
) -> None:
    """After the last round the process may exit only when no site still needs it: each
    was told training is over and downloaded the checkpoint or had the grace to start;
    a site not seen yet (gamma, delta, epsilon) gets a lease's time to join and be told."""
    clock = _Clock()
    coord = _coordinator(pki, tmp_path, clock)
    a, b = (coord.join(s, H.cert_der(pki, s)) for s in ("alpha", "beta"))
    for t in (0.0, 10.0, 20.0):  # two of the three sites it needs, for 30 s: it gives up
        clock.now = t
        coord.poll(a)
        coord.poll(b)
    assert not coord.sites_released(download_grace_s=2.0)
    clock.now = 31.0
    coord.tick()
    assert coord.finished
    assert not coord.sites_released(download_grace_s=2.0)  # nobody was told yet
    assert isinstance(coord.poll(a), Finished)
    assert not coord.sites_released(download_grace_s=2.0)  # beta was not told
    clock.now = 32.0
    assert isinstance(coord.poll(b), Finished)
    coord.downloaded(a)
    assert not coord.sites_released(download_grace_s=2.0)  # beta may still download
    clock.now = 33.9
    assert not coord.sites_released(download_grace_s=2.0)
    clock.now = 34.1
    assert not coord.sites_released(download_grace_s=2.0)  # the others may join
    clock.now = 45.9
    assert not coord.sites_released(download_grace_s=2.0)
    clock.now = 46.1  # 15 s (the lease) after training ended
    assert coord.sites_released(download_grace_s=2.0)
    coord.close()


def test_a_site_that_stopped_polling_is_not_waited_for(pki: Path, tmp_path: Path) -> None:
    clock = _Clock()
    coord = _coordinator(pki, tmp_path, clock)
    a, b = (coord.join(s, H.cert_der(pki, s)) for s in ("alpha", "beta"))
    for t in (0.0, 10.0, 20.0):
        clock.now = t
        coord.poll(a)
        coord.poll(b)
    clock.now = 31.0
    assert isinstance(coord.poll(a), Finished)
    coord.downloaded(a)
    assert not coord.sites_released(download_grace_s=2.0)  # beta is connected, not told
    clock.now = 36.0  # beta last polled at 20 s: its 15 s lease ran out
    assert not coord.sites_released(download_grace_s=2.0)  # the unseen sites may join
    g = coord.join("gamma", H.cert_der(pki, "gamma"))
    assert isinstance(coord.poll(g), Finished)
    clock.now = 46.1  # delta and epsilon never came; gamma had its grace
    assert coord.sites_released(download_grace_s=2.0)
    coord.close()
