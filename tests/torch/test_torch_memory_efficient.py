"""Checkpointed dense layers update BatchNorm running statistics once per step, not twice.

torch.utils.checkpoint re-runs a layer's forward in backward; a train-mode BatchNorm in it would
update its running statistics again (pytorch issue 96136). These tests show the hazard is real
for a plain checkpoint, that densenet_torch avoids it, and that the comparison would catch it.
"""

import contextlib
import copy

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

import densenet_torch.memory_efficient as memory_efficient_module  # noqa: E402
from densenet_spec.case import SGDConfig, make_case  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_torch import DenseNet, make_model  # noqa: E402
from densenet_torch.memory_efficient import MemoryEfficientDenseBlock  # noqa: E402
from densenet_torch.train import make_optimizer, train_step  # noqa: E402
from densenet_torch.weights import from_canonical, to_canonical  # noqa: E402

CONFIGS = {
    "tiny": get_preset("tiny"),  # bottleneck layers
    "tiny_conv_block_biased": get_preset("tiny").replace(bn_size=None, bn_running_var="biased"),
}


def _one_step(config, memory_efficient):
    """Running statistics (canonical name -> array) after one float64 train step."""
    case = make_case(config, batch=2, image_size=16, steps=1)
    model = make_model(config, memory_efficient=memory_efficient, dtype=torch.float64)
    from_canonical(model, case.params)
    optimizer = make_optimizer(model, SGDConfig())
    train_step(model, optimizer, torch.from_numpy(case.x), torch.from_numpy(case.y))
    stats = {k: v for k, v in to_canonical(model).items() if "running_" in k}
    counts = {k: int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    return stats, counts


def _max_diff(a, b):
    return max(float(abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_running_stats_updated_once_with_memory_efficient(name):
    plain, plain_counts = _one_step(CONFIGS[name], memory_efficient=False)
    efficient, efficient_counts = _one_step(CONFIGS[name], memory_efficient=True)
    assert _max_diff(efficient, plain) <= 1e-12
    assert set(efficient_counts.values()) == {1} and efficient_counts == plain_counts


class _CountConvolutions(TorchDispatchMode):
    """Counts the convolutions that run (a checkpoint serving a kept output runs none)."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.runs += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_memory_efficient_reruns_the_batchnorms_but_no_convolution(name):
    """The checkpointed path is taken: backward reruns every BN of a dense layer (the one on the
    concatenation, and a bottleneck's second), while the convolutions' outputs are kept, so a
    train step runs exactly as many convolutions as without checkpointing."""
    convolutions = {}
    for memory_efficient in (False, True):
        model = make_model(CONFIGS[name], memory_efficient=memory_efficient)
        layer = model.blocks[0].layers[1]
        norms = [m for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        calls = []
        for norm in norms:
            norm.register_forward_hook(lambda module, args, out, calls=calls: calls.append(module))
        model.train()
        with _CountConvolutions() as count:
            model(torch.randn(2, 3, 16, 16)).sum().backward()
        assert len(calls) == len(norms) * (2 if memory_efficient else 1)
        convolutions[memory_efficient] = count.runs
    assert convolutions[True] == convolutions[False] > 0


def test_naive_checkpoint_updates_running_stats_twice():
    """The hazard itself: a plain checkpoint around a train-mode BatchNorm updates it twice."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    plain = torch.nn.BatchNorm2d(3).to(torch.float64)
    naive = copy.deepcopy(plain)

    plain(x).sum().backward()
    checkpoint(naive, x, use_reentrant=False).sum().backward()

    assert int(plain.num_batches_tracked) == 1
    assert int(naive.num_batches_tracked) == 2
    m = plain.momentum
    mean = x.detach().mean(dim=(0, 2, 3))
    once = m * mean  # running mean starts at 0
    twice = (1 - m) * once + m * mean
    torch.testing.assert_close(plain.running_mean, once, rtol=0, atol=1e-15)
    torch.testing.assert_close(naive.running_mean, twice, rtol=0, atol=1e-15)
    assert float((naive.running_mean - plain.running_mean).abs().max()) > 1e-3


def test_without_scratch_stats_the_comparison_fails(monkeypatch):
    """Swap the fix out (recompute with the real buffers): the once-per-step test would fail."""
    monkeypatch.setattr(
        memory_efficient_module, "scratch_running_stats", lambda module: contextlib.nullcontext()
    )
    plain, _ = _one_step(CONFIGS["tiny"], memory_efficient=False)
    naive, naive_counts = _one_step(CONFIGS["tiny"], memory_efficient=True)
    assert _max_diff(naive, plain) > 1e-3
    assert 2 in naive_counts.values()


def test_memory_efficient_block_is_injected_with_the_same_state_dict():
    """make_model(memory_efficient=True) is DenseNet(config, dense_block=MemoryEfficientDenseBlock):
    same parameter and buffer names, so canonical weights load into either."""
    config = CONFIGS["tiny"]
    plain = DenseNet(config)
    efficient = make_model(config, memory_efficient=True)
    assert all(type(b) is MemoryEfficientDenseBlock for b in efficient.blocks)
    assert list(efficient.state_dict()) == list(plain.state_dict())
