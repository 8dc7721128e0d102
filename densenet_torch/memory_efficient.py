"""A memory-efficient dense block: same numbers, the concatenations are not kept for backward.

The concatenation a dense layer reads grows with depth, so keeping every one for backward costs
memory quadratic in the block's depth. MemoryEfficientDenseBlock keeps the separate feature maps
and each layer's convolution outputs, and backward reruns the concatenation, BNs and ReLUs
(torch.utils.checkpoint with a selective policy) but no convolution. torchvision's
memory_efficient reruns the concatenation, first BN-ReLU and the 1x1 conv, and keeps the second
BN-ReLU's output. Inject it with DenseNet(config, dense_block=MemoryEfficientDenseBlock), or
variants.make_model(config, memory_efficient=True).

The recomputation updates scratch copies of the running statistics (scratch_running_stats), so
the real ones are updated exactly once per step, as without checkpointing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from densenet_torch.layers import CHANNEL_AXIS, DenseBlock


class MemoryEfficientDenseBlock(DenseBlock):
    """DenseBlock (same layers, same state_dict) whose layers are checkpointed selectively."""

    def forward(self, x: torch.Tensor, features: dict | None = None) -> torch.Tensor:
        inputs = [x]  # the block input, then each layer's output y
        for j, layer in enumerate(self.layers):
            y = run_layer(layer, inputs)
            if features is not None:
                features[f"layers.{j}"] = y
            inputs.append(y)
        return torch.cat(inputs, dim=CHANNEL_AXIS)


def run_layer(layer: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """layer(concatenation of inputs); with autograd on, the concatenation, BNs and ReLUs are
    rerun in backward, the convolutions' outputs are kept (no convolution runs twice)."""
    if not torch.is_grad_enabled():
        return layer(torch.cat(inputs, dim=CHANNEL_AXIS))
    return checkpoint(
        lambda *inputs: layer(torch.cat(inputs, dim=CHANNEL_AXIS)),
        *inputs,
        use_reentrant=False,
        context_fn=lambda: keep_convolutions(layer),
    )


@contextlib.contextmanager
def scratch_running_stats(module: nn.Module) -> Iterator[None]:
    """Let every BatchNorm in `module` update throwaway copies of its running statistics.

    torch.utils.checkpoint re-runs the forward during backward, and a BatchNorm in train mode
    would update its running statistics a second time (pytorch issue 96136; torchvision's
    memory-efficient DenseNet has it). The re-run normalises with the same batch statistics and
    saves the same tensors for backward; only its running-stat update lands in copies.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    real = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in norms]
    for m, stats in zip(norms, real):
        m.running_mean, m.running_var, m.num_batches_tracked = (t.clone() for t in stats)
    try:
        yield
    finally:
        for m, stats in zip(norms, real):
            m.running_mean, m.running_var, m.num_batches_tracked = stats


def keep_convolutions(layer: nn.Module) -> tuple:
    """checkpoint's (forward, recomputation) contexts: keep convolution outputs, recompute the
    rest, and let the recomputation's BatchNorms update scratch running statistics."""
    forward, recompute = create_selective_checkpoint_contexts(_save_convolution_outputs)

    @contextlib.contextmanager
    def recomputation():
        # scratch stats first: inside the selective context their copies would count as ops
        # of the checkpointed region that the forward never ran
        with scratch_running_stats(layer), recompute:
            yield

    return forward, recomputation()


def _save_convolution_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    if op is torch.ops.aten.convolution.default:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE
