"""Synchronised BatchNorm for data parallelism (issue 20, densenet_mx.distributed).

MXNet's own mx.gluon.contrib.nn.SyncBatchNorm refuses float64 (its kernel reads float buffers:
"TBlob.get_with_shape: data type do not match specified type. Expected: double v.s. given
float") and keeps the kernel's running-variance rule (biased), so the data-parallel engine uses
this one: batch statistics from per-channel sums over every replica, the spec's running rule.

The sum over replicas is injected. AllSum (one process, R contexts): each replica's forward
runs in its own thread (AllSum.each), every SyncBatchNorm call meets the other replicas' at a
barrier and adds the sums of all contexts through NDArray copies (as_in_context) that autograd
records; one autograd.backward over every replica's loss then carries the backward reductions
(the whole batch's sum(dy) and sum(dy * xhat)) back through the same copies. ProcessAllSum (one
replica per dist_sync worker): an autograd.Function whose forward and backward both sum over
the workers. Eval mode normalises with the running statistics: nn.BatchNorm's own kernel.
"""

from __future__ import annotations

import threading

import mxnet as mx
from mxnet import autograd, nd
from mxnet.gluon import nn

from densenet_spec.config import DenseNetConfig


class AllSum:
    """Sum of one array from each of R threads, each thread's replica on its own context."""

    def __init__(self, contexts: list[mx.Context], timeout: float):
        self.contexts = list(contexts)
        self.replicas = len(self.contexts)
        self._slots: list = [None] * len(self.contexts)
        self._barrier = threading.Barrier(len(self.contexts), timeout=timeout)

    def __call__(self, x: nd.NDArray) -> nd.NDArray:
        """Every replica's `x` summed in replica order, on the caller's context (recorded)."""
        r = self.contexts.index(x.context)
        self._slots[r] = x
        self._barrier.wait()
        total = nd.add_n(*(s.as_in_context(x.context) for s in self._slots))
        self._barrier.wait()  # every replica has read the slots before the next call writes
        return total

    def each(self, fn) -> list:
        """[fn(0), ..., fn(R-1)], each call in its own thread; the first error is raised (the
        barrier is broken so no replica waits for one that failed)."""
        results: list = [None] * len(self.contexts)
        errors: list[BaseException] = []

        def work(r: int) -> None:
            try:
                results[r] = fn(r)
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(e)
                self._barrier.abort()

        threads = [threading.Thread(target=work, args=(r,)) for r in range(len(self.contexts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            broken = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            self._barrier.reset()
            raise (broken or errors)[0]
        return results


class ProcessAllSum:
    """Sum of one array from each of R processes (one replica each): `allgather(arrays)` returns
    every process's arrays ([process][array], exactly); forward and backward both sum, since
    every replica's total depends on every replica's part with derivative 1."""

    def __init__(self, allgather, replicas: int):
        self.allgather = allgather
        self.replicas = replicas

    def __call__(self, x: nd.NDArray) -> nd.NDArray:
        return _Sum(self)(x)

    def reduce(self, x: nd.NDArray) -> nd.NDArray:
        parts = self.allgather([x.asnumpy()])
        total = parts[0][0]
        for part in parts[1:]:
            total = total + part[0]
        return nd.array(total, ctx=x.context, dtype=x.dtype)

    def each(self, fn) -> list:
        return [fn(0)]


class _Sum(autograd.Function):
    """ProcessAllSum's sum as one recorded operation (a Function object is called once)."""

    def __init__(self, owner: ProcessAllSum):
        super().__init__()
        self.owner = owner

    def forward(self, x):
        return self.owner.reduce(x)

    def backward(self, dy):
        return self.owner.reduce(dy)


class SyncBatchNorm(nn.BatchNorm):
    """BatchNorm with the whole batch's statistics in train mode (every replica's shard).

    The running statistics follow the spec: (1 - bn_momentum) * r + bn_momentum * s, s the whole
    batch's mean and variance (unbiased with N*H*W values, or biased: config.bn_running_var);
    every replica's copy gets the same update. Imperative only: the replicas meet in Python, so
    a model holding it is not hybridized.
    """

    def __init__(self, num_features: int, config: DenseNetConfig, allsum: AllSum | ProcessAllSum):
        super().__init__(
            axis=1,
            momentum=1.0 - config.bn_momentum,
            epsilon=config.bn_eps,
            in_channels=num_features,
        )
        self.config = config
        self.allsum = allsum

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        if not autograd.is_training():
            return super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)
        c = self.config
        n = x.shape[0] * x.shape[2] * x.shape[3] * self.allsum.replicas  # equal shards
        mean = self.allsum(x.sum(axis=(0, 2, 3))) / n
        centred = x - mean.reshape((1, -1, 1, 1))
        var = self.allsum((centred * centred).sum(axis=(0, 2, 3))) / n
        with autograd.pause():
            unbiased = var.detach() * (n / (n - 1)) if c.bn_running_var == "unbiased" else var
            m = c.bn_momentum
            running_mean[:] = (1 - m) * running_mean + m * mean.detach()
            running_var[:] = (1 - m) * running_var + m * unbiased.detach()
        scale = gamma / nd.sqrt(var + c.bn_eps)
        return centred * scale.reshape((1, -1, 1, 1)) + beta.reshape((1, -1, 1, 1))


def sync_batch_norm(allsum: AllSum | ProcessAllSum):
    """DenseNet(config, norm_layer=sync_batch_norm(allsum)): every BatchNorm a SyncBatchNorm
    summing over the replicas `allsum` joins."""

    def norm_layer(num_features: int, config: DenseNetConfig) -> SyncBatchNorm:
        return SyncBatchNorm(num_features, config, allsum)

    return norm_layer
