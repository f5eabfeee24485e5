"""The site loop's re-join schedule: exponential from 0.1 s, capped at ``max_backoff_s``,
giving up once ``reconnect_timeout_s`` passes; bad timing settings are refused."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from privacy.errors import ConfigError, TransportError
from secure_fml.deploy import SiteSettings, run_site
from secure_fml.deploy._transport import Transport
from secure_fml.messages import EngineMessage, StageReply, Withdrawal


class _Down(Transport):
    """A coordinator that is never reachable."""

    def join(self, site: str, certificate: bytes) -> bytes:
        raise TransportError("connection refused")

    def poll(self, conn: bytes, *, wait_s: float) -> EngineMessage:
        raise AssertionError("never joined")

    def submit(self, conn: bytes, reply: StageReply) -> None:
        raise AssertionError("never joined")

    def withdraw(self, conn: bytes, notice: Withdrawal) -> None:
        raise AssertionError("never joined")

    def download_checkpoint(self, conn: bytes) -> bytes:
        raise AssertionError("never joined")


class _RecordingStop(threading.Event):
    """Records every wait of the loop instead of sleeping; sets itself after ``n``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.n = n

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        if len(self.waits) >= self.n:
            self.set()
        return self.is_set()


class _Site:
    def __init__(self) -> None:
        self.name = "alpha"
        self.rounds_done: list[int] = []


@pytest.mark.parametrize("cap", [0.25, 2.0, 7.0])
def test_rejoin_waits_double_up_to_the_cap(cap: float) -> None:
    stop = _RecordingStop(12)
    site: Any = _Site()
    run_site(site, _Down(), certificate=b"", max_backoff_s=cap, stop=stop)
    expected = [min(0.1 * 2**i, cap) for i in range(12)]
    assert stop.waits == pytest.approx(expected)


def test_gives_up_after_the_reconnect_timeout() -> None:
    site: Any = _Site()
    with pytest.raises(TransportError, match=r"unreachable for 0\.3s"):
        run_site(site, _Down(), certificate=b"", reconnect_timeout_s=0.3, max_backoff_s=0.05)


@pytest.mark.parametrize("key", ["poll_wait_s", "reconnect_timeout_s", "max_backoff_s"])
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_run_site_refuses_bad_timing(key: str, bad: float) -> None:
    site: Any = _Site()
    with pytest.raises(ConfigError, match=key):
        run_site(site, _Down(), certificate=b"", **{key: bad})


@pytest.mark.parametrize("key", ["poll_wait_s", "reconnect_timeout_s", "reconnect_backoff_max_s"])
@pytest.mark.parametrize("bad", [0, -2, float("nan"), float("inf"), True, "1"])
def test_site_settings_refuse_bad_timing(key: str, bad: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"site\.{key}"):
        SiteSettings(name="a", client="client_00", pki_dir=tmp_path, **{key: bad})
