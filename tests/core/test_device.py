"""``run.device`` / ``--device``: where clients train and evaluation runs.

CI has no GPU: the CPU tests check validation, the clear refusal of an absent CUDA
device, and that ``auto`` falls back to the CPU with the same result; the CUDA test runs
only where a CUDA device exists (the prepared GPU script runs it first).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from privacy.errors import ConfigError
from secure_fml.config import config_from_dict, resolve_device
from secure_fml.executors import pool_refuses
from secure_fml.simulation import Simulation

warnings.filterwarnings("ignore", message="INSECURE TEST MODE", category=RuntimeWarning)


def _raw(device: str, algorithm: str = "metasgd") -> dict[str, Any]:
    return {
        "data": {
            "preset": "synthetic",
            "options": {"num_clients": 10, "min_samples": 20, "max_samples": 40, "dim": 6},
        },
        "model": {"kind": "mlp", "hidden": [8]},
        "algorithm": {"name": algorithm},
        "server": {"rounds": 2, "clients_per_round": 3},
        "eval": {"every": 2, "local_only_steps": 0},
        "run": {"insecure_seed": 3, "device": device},
    }


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", "", "cuda:"])
def test_device_names_are_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.device must be cpu, cuda, cuda:N or auto"):
        config_from_dict({"run": {"device": bad}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_an_absent_cuda_device_is_a_clear_error_and_auto_falls_back_to_the_cpu() -> None:
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        Simulation(config_from_dict(_raw("cuda:0")))
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cli_device_flag_without_cuda_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from secure_fml.cli import main

    argv = [
        "simulate",
        "--preset",
        "synthetic",
        "--rounds",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path),
        "--device",
        "cuda",
    ]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "sees no CUDA device" in err[0], (rc, err)


def test_worker_executors_refuse_an_accelerator() -> None:
    why = pool_refuses(config_from_dict(_raw("cuda")))
    assert why is not None and "run.device = cuda" in why
    assert pool_refuses(config_from_dict(_raw("cpu"))) is None


def _run(device: str, algorithm: str) -> tuple[np.ndarray, float]:
    sim = Simulation(config_from_dict(_raw(device, algorithm)))
    res = sim.run(progress=False)
    line = sim.history[-1]
    return res.state.numpy().copy(), float(line["val_personalized_accuracy"])


def test_auto_runs_where_it_resolves_with_the_cpu_result() -> None:
    # On a machine without CUDA, auto is the CPU: bit-identical to an explicit cpu run.
    if torch.cuda.is_available():
        pytest.skip("auto resolves to CUDA here (see the CUDA test)")
    a, acc_a = _run("cpu", "metasgd")
    b, acc_b = _run("auto", "metasgd")
    assert np.array_equal(a, b) and acc_a == acc_b


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "fedavg"])
def test_cuda_training_matches_the_cpu_within_float_rounding(algorithm: str) -> None:
    cpu, _ = _run("cpu", algorithm)
    gpu, _ = _run("cuda", algorithm)
    assert np.allclose(cpu, gpu, rtol=1e-4, atol=1e-5)
