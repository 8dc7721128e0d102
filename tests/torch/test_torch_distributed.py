"""torch data-parallel (issue 20): SyncBatchNorm2d on gloo, and DDP under torchrun on loopback."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from densenet_spec import replicas
from densenet_spec.case import make_case, read_results, write_case
from densenet_spec.compare import assert_close
from densenet_spec.config import get_preset
from densenet_spec.distributed import run as run_distributed
from densenet_torch.sync_batchnorm import SyncBatchNorm2d

LAUNCH_TIMEOUT_S = 240  # two processes on a shared 2-core machine: ~20 s measured


@pytest.fixture
def one_process_group():
    """A gloo group of one process on loopback: every all-reduce is the identity."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("running_var", ["unbiased", "biased"])
def test_sync_batchnorm_on_one_process_is_batchnorm(one_process_group, running_var):
    """Forward, backward (input, gamma, beta), running statistics: BatchNorm2d's (float64)."""
    config = get_preset("tiny").replace(bn_running_var=running_var, bn_momentum=0.3)
    torch.manual_seed(0)
    ours = SyncBatchNorm2d(5, config).double()
    ref = nn.BatchNorm2d(5, eps=config.bn_eps, momentum=config.bn_momentum).double()
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, 5, dtype=torch.float64))
            m.bias.copy_(torch.linspace(-1, 1, 5, dtype=torch.float64))
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64) * 2 + 1
    dy = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [m(xi) for m, xi in zip((ours, ref), xs)]
    for y in ys:
        y.backward(dy)
    torch.testing.assert_close(ys[0], ys[1], rtol=0, atol=1e-13)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=1e-14)
    if running_var == "unbiased":  # torch's kernel has no biased rule (batchnorm.py)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=1e-14)
    else:
        var = x.var(dim=(0, 2, 3), correction=0)
        torch.testing.assert_close(ours.running_var, 0.7 + 0.3 * var, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bn_sync", replicas.BN_SYNC)
def test_ddp_two_processes_match_the_oracle(tmp_path, bn_sync):
    """torchrun, 2 processes, gloo on 127.0.0.1: both BN semantics, 2 steps, every replica's
    running statistics, float64 within the harness's bounds; every process ends with the test."""
    base = make_case(get_preset("tiny"), batch=4, image_size=32, steps=2)
    case = replicas.replica_case(base, 2, bn_sync)
    folder = write_case(case, tmp_path / "case")
    out = tmp_path / "result.safetensors"
    run_distributed("densenet_torch", str(folder), str(out), LAUNCH_TIMEOUT_S)
    results, info = read_results(out)
    assert info["backend"] == "gloo" and info["replicas"] == 2 and info["bn_sync"] == bn_sync
    assert info["parameter_spread"] == 0.0  # DDP: identical parameters on every rank
    assert_close(results, replicas.oracle(case), "float64")
    other = replicas.oracle(replicas.mutation_case(case))  # and not the other semantics
    assert np.max(np.abs(results["train/logits"] - other["train/logits"])) > 1e-3
