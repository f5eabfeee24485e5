"""An insider's unclipped input never reaches theta: the coordinator bounds the norm of
the decoded sum (n clipped inputs plus the noise they carry) before it applies it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secure_fml.config import config_from_dict, config_to_dict
from secure_fml.deploy import Site, SitePolicy
from tests.deploy import _harness as H


class _Unclipped(Site):
    """An insider that skips clipping and sends a huge update (norm 1000 C)."""

    def clip(self, vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
        v = np.asarray(vector, dtype=np.float32)
        return v * np.float32(1000.0 * clip_norm / max(float(np.linalg.norm(v)), 1e-12)), False


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), H.SITES)


@pytest.mark.slow
@pytest.mark.parametrize("insider", [False, True])
def test_unclipped_insider_input_is_not_applied(pki: Path, tmp_path: Path, insider: bool) -> None:
    raw = config_to_dict(H.small_config(dp=True, rounds=1))
    raw["secure_aggregation"]["protocol"] = "none"  # the insider's input arrives as sent
    cfg = config_from_dict(raw)
    coord = H.make_coordinator(cfg, pki, tmp_path)
    theta0 = coord.state.clone()
    trusting = SitePolicy(require_noise=False, protocols=("plain",))
    sites = [
        H.make_site(cfg, pki, n, f"client_0{i}", policy=trusting) for i, n in enumerate(H.SITES)
    ]
    if insider:
        sites[-1].__class__ = _Unclipped
    with H.endpoint("inprocess", coord, pki) as ep:
        H.run_sites(ep, sites, pki, timeout_s=60)
    coord.close()
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    if insider:
        assert line["status"] == "charged-not-applied", line
        assert "decoded sum has norm" in line["reason"]
        assert np.array_equal(coord.state.numpy(), theta0.numpy())
    else:
        assert line["status"] == "complete", line
        assert not np.array_equal(coord.state.numpy(), theta0.numpy())
