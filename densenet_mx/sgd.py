"""parity: MXNet's SGD made the spec's, for float64 weights and for a changing learning rate.

The spec's rule keeps the rate outside the momentum buffer:

    buf = momentum * buf + (g + wd * w);   w -= lr * buf

Gluon's optimizer "sgd" keeps it inside: mom = momentum * mom - lr * (g + wd * w); w += mom.
At a constant rate the two are the same update with mom = -lr * buf. When the rate changes from
lr_old to lr_new, MXNet's next step computes momentum * (-lr_old * buf) - lr_new * d, the spec's
-lr_new * (momentum * buf + d): they differ unless the slot is first scaled by lr_new / lr_old,
and a rate of 0 would lose the buffer altogether. So SpecSGD keeps two forms:

- "fused" (float32 weights at a constant rate): MXNet's own fused, aggregated kernel
  (multi_sgd_mom_update, MXNET_OPTIMIZER_AGGREGATION_SIZE tensors a call); the slot holds
  mom = -lr * buf.
- "spec" (float64 weights always; every weight once the rate has changed, or at momentum 0): the
  spec's arithmetic with NDArray operators, the slot holding buf. The fused kernels take lr,
  momentum and wd as C floats (0.05 becomes 0.050000001: 1e-8 relative per float64 update, which
  the float64 step tolerance sees); NDArray arithmetic with Python scalars is exact in double.

set_learning_rate with a new rate turns fused slots into spec ones once (buf = -mom / lr_old,
one float32 rounding). `buffers()` / `load_buffers()` read and write the spec's buffers in
either form, by the Trainer's parameter index; train.py maps them to canonical names.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import nd

from densenet_mx.canonical import parameters
from densenet_spec.params import check_momentum_buffers, trainable_names


class SpecSGD(mx.optimizer.SGD):
    """mx.optimizer.SGD with the spec's momentum buffer (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spec_form = self.momentum == 0.0  # MXNet's kernel keeps no slot at momentum 0
        self.slots: dict[int, nd.NDArray] = {}  # Trainer index -> the slot the Updater holds

    def create_state(self, index, weight):
        """The slot of one weight: zeros, or what load_buffers put there before the first step."""
        if index not in self.slots:
            self.slots[index] = nd.zeros(weight.shape, weight.context, dtype=weight.dtype)
        return self.slots[index]

    def is_fused(self, slot: nd.NDArray) -> bool:
        """Does this slot hold MXNet's mom = -lr * buf (else the spec's buf)?"""
        return not self.spec_form and slot.dtype != np.float64

    def set_learning_rate(self, lr: float) -> None:
        """The rate of the next step. A new rate moves every slot to the spec's form first."""
        if float(lr) != self.learning_rate and not self.spec_form:
            for slot in self.slots.values():
                if self.is_fused(slot):
                    slot[:] = slot / -self.learning_rate
            self.spec_form = True
        super().set_learning_rate(float(lr))

    def buffers(self, indices) -> dict[int, np.ndarray]:
        """Trainer index -> the spec's buffer (zeros before the first step)."""
        out = {}
        for index in indices:
            param, slot = self.param_dict[index], self.slots.get(index)
            if slot is None:
                out[index] = np.zeros(param.shape, dtype=param.dtype)
            elif self.is_fused(slot):
                out[index] = (slot / -self.learning_rate).asnumpy()
            else:
                out[index] = slot.asnumpy()
        return out

    def load_buffers(self, buffers: dict[int, np.ndarray]) -> None:
        """Continue from the spec's buffers (Trainer index -> array), before or after a step."""
        for index, buf in buffers.items():
            param = self.param_dict[index]
            weight = param.data()
            slot = self.create_state(index, weight)
            value = nd.array(np.asarray(buf, dtype=slot.dtype), weight.context, dtype=slot.dtype)
            slot[:] = value * -self.learning_rate if self.is_fused(slot) else value

    def update_multi_precision(self, index, weight, grad, state):
        if not isinstance(index, (list, tuple)):
            index, weight, grad, state = [index], [weight], [grad], [state]
        if self.is_fused(state[0]):  # the Updater passes one dtype at a time
            return super().update_multi_precision(index, weight, grad, state)
        self._update_count(index)
        lrs, wds = self._get_lrs(index), self._get_wds(index)
        for w, g, buf, lr, wd in zip(weight, grad, state, lrs, wds):
            if self.rescale_grad != 1.0:
                g = self.rescale_grad * g
            buf[:] = self.momentum * buf + (g + wd * w)  # the oracle's order of operations
            w[:] -= lr * buf


def spec_buffers(model: mx.gluon.Block, trainer: mx.gluon.Trainer) -> dict[str, np.ndarray]:
    """Every trainable canonical name -> the spec's momentum buffer (canonical layout)."""
    index = _canonical_index(model, trainer)
    by_index = trainer.optimizer.buffers(index.values())
    return {name: by_index[i] for name, i in index.items()}


def load_spec_buffers(model: mx.gluon.Block, trainer: mx.gluon.Trainer, buffers: dict) -> None:
    """The inverse of spec_buffers: the next trainer.step continues from `buffers`."""
    check_momentum_buffers(buffers, model.config)
    index = _canonical_index(model, trainer)
    trainer.optimizer.load_buffers({index[name]: b for name, b in buffers.items()})


def _canonical_index(model: mx.gluon.Block, trainer: mx.gluon.Trainer) -> dict[str, int]:
    """Trainable canonical name -> the Trainer's index of that Parameter."""
    by_id = {id(param): i for i, param in trainer.optimizer.param_dict.items()}
    params = parameters(model)
    return {name: by_id[id(params[name])] for name in trainable_names(model.config)}
