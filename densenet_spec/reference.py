"""The NumPy oracle: DenseNet forward, hand-written backward and SGD, in plain NumPy.

Every framework is checked against this file, so it is written to be read, not to be fast:
each op returns its output and a closure that maps the output's gradient to the input's,
and the model is those ops composed in the order of the paper (BN, ReLU, conv).

It computes in the dtype of its input (float64 normally). In float32 every op stays in
float32 (no internal upcast), because the harness derives its float32 bounds from this
file's own float32 rounding error (tolerances.py). Python scalars are used for constants
so that NumPy 2's promotion rules (NEP 50) cannot silently promote to float64 either.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from densenet_spec.config import DenseNetConfig, check_input_shape
from densenet_spec.params import param_specs, trainable_names
from densenet_spec.weightfile import check_tensors

# ----------------------------------------------------------------------------------------
# Ops. Each returns (output, backward); backward(grad_output) returns grad_input (and the
# parameter gradients, for ops that have parameters). Layout is NCHW throughout.


def _windows(xp: np.ndarray, k: int, stride: int) -> np.ndarray:
    """(N, C, Ho, Wo, k, k) view of every k x k window of an already padded input."""
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]


def _pad(x: np.ndarray, pad: int, value: float = 0.0) -> np.ndarray:
    """Symmetric spatial padding, the same on every side (never TF's 'same')."""
    if pad == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)


def _conv2d(x, w, b, stride: int, pad: int, magnitude: bool = False):
    """Cross-correlation with an OIHW kernel, as every framework's conv layer computes it.

    magnitude: the backward's weight and bias gradients sum |terms| (gradient_scales)."""
    k = w.shape[2]
    xp = _pad(x, pad)
    cols = _windows(xp, k, stride)  # (N, C, Ho, Wo, k, k)
    out = np.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    if b is not None:
        out = out + b[None, :, None, None]
    out = np.ascontiguousarray(out)

    def backward(g):
        g_, cols_ = (np.abs(g), _windows(np.abs(xp), k, stride)) if magnitude else (g, cols)
        gw = np.tensordot(g_, cols_, axes=([0, 2, 3], [0, 2, 3]))  # (O, C, k, k)
        gb = None if b is None else g_.sum(axis=(0, 2, 3))
        return _conv_input_grad(g, w, x.shape, stride, pad), gw, gb

    return out, backward


def _conv_input_grad(g, w, x_shape, stride: int, pad: int):
    """d loss / d x of _conv2d: each kernel offset (i, j) sent w[:, :, i, j] @ x over a strided
    grid of the padded input; send the gradient back the same way, one offset at a time."""
    k = w.shape[2]
    gcols = np.tensordot(g, w, axes=([1], [0]))  # (N, Ho, Wo, C, k, k)
    n, c, h, wd = x_shape
    gxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=g.dtype)
    ho, wo = g.shape[2], g.shape[3]
    for i in range(k):
        for j in range(k):
            hs = slice(i, i + stride * (ho - 1) + 1, stride)
            ws = slice(j, j + stride * (wo - 1) + 1, stride)
            gxp[:, :, hs, ws] += gcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(gxp[:, :, pad : pad + h, pad : pad + wd])


def _batch_norm(x, mean, var, gamma, beta, eps: float, batch_stats: bool, magnitude=False):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel.

    With batch_stats, mean and var are this batch's (biased) statistics, so they depend on x
    and the backward pass carries the two extra terms through them. magnitude: the gamma and
    beta gradients sum |terms| (gradient_scales).
    """
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean[None, :, None, None]) * inv_std[None, :, None, None]
    out = xhat * gamma[None, :, None, None] + beta[None, :, None, None]

    def backward(g):
        g_ = np.abs(g) if magnitude else g
        ggamma = (g_ * (np.abs(xhat) if magnitude else xhat)).sum(axis=(0, 2, 3))
        gbeta = g_.sum(axis=(0, 2, 3))
        gxhat = g * gamma[None, :, None, None]
        if batch_stats:
            gxhat = (
                gxhat
                - gxhat.mean(axis=(0, 2, 3), keepdims=True)
                - xhat * (gxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)
            )
        return gxhat * inv_std[None, :, None, None], ggamma, gbeta

    return out, backward


def _relu(x):
    mask = x > 0  # the derivative at exactly 0 is taken as 0, as every framework does
    return np.maximum(x, 0), lambda g: g * mask


def _pool_choice(x) -> np.ndarray:
    """Index 0..8 (row-major) of the first maximum of every 3x3/2 window (pad 1 with -inf)."""
    cols = _windows(_pad(x, 1, -np.inf), 3, 2)
    return cols.reshape(*cols.shape[:4], 9).argmax(axis=-1)


def _max_pool(x, choice: np.ndarray | None = None):
    """3x3 max-pool, stride 2, pad 1 with -inf (padding never wins).

    Backward routes each gradient to its window's maximum; on ties to the first maximum in
    window order (row-major), as argmax picks it. `choice` (same shape as the output, 0..8)
    routes it to those entries instead: another implementation's choice (pieces.py); the
    forward value stays the maximum.
    """
    xp = _pad(x, 1, -np.inf)
    cols = _windows(xp, 3, 2)
    n, c, ho, wo = cols.shape[:4]
    flat = cols.reshape(n, c, ho, wo, 9)
    arg = flat.argmax(axis=-1)
    out = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    if choice is not None:
        choice = np.asarray(choice)
        if choice.shape != arg.shape or choice.min(initial=0) < 0 or choice.max(initial=0) > 8:
            raise ValueError(
                f"max-pool choice must be {arg.shape} indices 0..8, got {choice.shape}"
            )
        arg = choice

    def backward(g):
        gxp = np.zeros(xp.shape, dtype=g.dtype)
        for idx in range(9):
            i, j = divmod(idx, 3)
            gxp[:, :, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2] += g * (arg == idx)
        return np.ascontiguousarray(gxp[:, :, 1 : 1 + x.shape[2], 1 : 1 + x.shape[3]])

    return out, backward


def _avg_pool(x):
    """2x2 average pool, stride 2, no padding; an odd last row or column is dropped (floor)."""
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    out = x[:, :, : 2 * ho, : 2 * wo].reshape(n, c, ho, 2, wo, 2).mean(axis=(3, 5))

    def backward(g):
        gx = np.zeros(x.shape, dtype=g.dtype)
        gx[:, :, : 2 * ho, : 2 * wo] = np.repeat(np.repeat(g, 2, axis=2), 2, axis=3) * 0.25
        return gx

    return out, backward


def _global_avg_pool(x):
    n, c, h, w = x.shape

    def backward(g):
        return np.ascontiguousarray(np.broadcast_to((g / (h * w))[:, :, None, None], x.shape))

    return x.mean(axis=(2, 3)), backward


def _linear(x, w, b, magnitude: bool = False):
    """y = x @ W^T + b with W of shape (out, in); magnitude: see gradient_scales."""

    def backward(g):
        if magnitude:
            return g @ w, np.abs(g).T @ np.abs(x), np.abs(g).sum(axis=0)
        return g @ w, g.T @ x, g.sum(axis=0)

    return x @ w.T + b, backward


def _log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def loss(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over the batch, through a max-shifted (stable) log-softmax."""
    logp = _log_softmax(logits)
    return -logp[np.arange(len(y)), y].mean()


def _loss_and_grad(logits, y):
    logp = _log_softmax(logits)
    n = len(y)
    g = np.exp(logp)
    g[np.arange(n), y] -= 1
    return -logp[np.arange(n), y].mean(), g / n


# ----------------------------------------------------------------------------------------
# Layers. A _Pass carries the weights and the mode through one forward pass and collects
# what it produces besides features: updated BN running statistics and, in backward, the
# parameter gradients under their canonical names.


class _Pass:
    def __init__(
        self,
        params: dict,
        config: DenseNetConfig,
        training: bool,
        kinks=None,
        record=False,
        relu_masks: dict | None = None,
        pool_choice: np.ndarray | None = None,
        magnitude: bool = False,
    ):
        self.params, self.config, self.training = params, config, training
        self.running: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.kinks = kinks  # None, or (thresholds by ReLU name, forced derivative): see gradients()
        self.relu_inputs: dict[str, np.ndarray] | None = {} if record else None
        self.relu_masks = relu_masks  # None, or every ReLU's derivative mask: see gradients()
        self.pool_choice = pool_choice  # None, or the stem max-pool's choice: see gradients()
        self.magnitude = magnitude  # parameter gradients sum |terms|: see gradient_scales()


def _seq(x, *layers):
    """Apply layers in order; the backward applies their backwards in reverse."""
    backs = []
    for layer in layers:
        x, back = layer(x)
        backs.append(back)

    def backward(g):
        for back in reversed(backs):
            g = back(g)
        return g

    return x, backward


def _norm(ps: _Pass, name: str, x):
    """BatchNorm: batch statistics in train mode (and a running-stat update), else running."""
    c = ps.config
    p = ps.params
    mean, var = p[f"{name}.running_mean"], p[f"{name}.running_var"]
    if ps.training:
        batch_mean = x.mean(axis=(0, 2, 3))
        batch_var = ((x - batch_mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        n = x.shape[0] * x.shape[2] * x.shape[3]
        stat_var = batch_var * (n / (n - 1)) if c.bn_running_var == "unbiased" else batch_var
        m = c.bn_momentum
        ps.running[f"{name}.running_mean"] = (1 - m) * mean + m * batch_mean
        ps.running[f"{name}.running_var"] = (1 - m) * var + m * stat_var
        mean, var = batch_mean, batch_var
    else:
        ps.running[f"{name}.running_mean"] = mean.copy()
        ps.running[f"{name}.running_var"] = var.copy()
    out, back = _batch_norm(
        x, mean, var, p[f"{name}.weight"], p[f"{name}.bias"], c.bn_eps, ps.training, ps.magnitude
    )

    def backward(g):
        gx, ps.grads[f"{name}.weight"], ps.grads[f"{name}.bias"] = back(g)
        return gx

    return out, backward


def _act(ps: _Pass, name: str, x):
    """The ReLU after BatchNorm `name` (ReLUs are named by the BatchNorm that feeds them).

    With ps.relu_masks (a linear piece, pieces.py) the backward multiplies by relu_masks[name]
    instead of x > 0. Only for the float32 kink fallback (kinks.float32_kink_allowance): with
    ps.kinks, the entries with |x| < thresholds[name] get derivative `forced` (1 or 0).
    """
    if ps.relu_inputs is not None:
        ps.relu_inputs[name] = x
    out, back = _relu(x)
    if ps.relu_masks is not None:
        mask = ps.relu_masks.get(name)
        if mask is None or np.shape(mask) != x.shape:
            got = "none" if mask is None else np.shape(mask)
            raise ValueError(f"ReLU mask for {name}: need shape {x.shape}, got {got}")
        mask = np.asarray(mask, dtype=bool)
        return out, lambda g: g * mask
    if ps.kinks is None or not ps.kinks[0].get(name, 0.0) > 0:
        return out, back
    thresholds, forced = ps.kinks
    near = np.abs(x) < thresholds[name]
    mask = (x > 0) | near if forced else (x > 0) & ~near
    return out, lambda g: g * mask


def _conv(ps: _Pass, name: str, x, stride: int = 1, pad: int = 0):
    w = ps.params[f"{name}.weight"]
    out, back = _conv2d(x, w, ps.params.get(f"{name}.bias"), stride, pad, ps.magnitude)

    def backward(g):
        gx, gw, gb = back(g)
        ps.grads[f"{name}.weight"] = gw
        if gb is not None:
            ps.grads[f"{name}.bias"] = gb
        if ps.magnitude and name == "stem.conv":  # the input gradient's last sum
            ps.grads["input"] = _conv_input_grad(np.abs(g), np.abs(w), x.shape, stride, pad)
        return gx

    return out, backward


def _fc(ps: _Pass, name: str, x):
    out, back = _linear(x, ps.params[f"{name}.weight"], ps.params[f"{name}.bias"], ps.magnitude)

    def backward(g):
        gx, ps.grads[f"{name}.weight"], ps.grads[f"{name}.bias"] = back(g)
        return gx

    return out, backward


def _stem(ps: _Pass, x):
    if ps.config.stem == "cifar":
        return _conv(ps, "stem.conv", x, stride=1, pad=1)
    return _seq(
        x,
        partial(_conv, ps, "stem.conv", stride=2, pad=3),
        partial(_norm, ps, "stem.norm"),
        partial(_act, ps, "stem.norm"),
        partial(_max_pool, choice=ps.pool_choice),
    )


def _conv_block(ps: _Pass, prefix: str, x):
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1) to growth_rate channels."""
    return _seq(
        x,
        partial(_norm, ps, f"{prefix}.norm"),
        partial(_act, ps, f"{prefix}.norm"),
        partial(_conv, ps, f"{prefix}.conv", stride=1, pad=1),
    )


def _bottleneck_block(ps: _Pass, prefix: str, x):
    """DenseNet-B layer: BN, ReLU, 1x1 conv to bn_size * k, BN, ReLU, 3x3 conv to k."""
    return _seq(
        x,
        partial(_norm, ps, f"{prefix}.norm1"),
        partial(_act, ps, f"{prefix}.norm1"),
        partial(_conv, ps, f"{prefix}.conv1"),
        partial(_norm, ps, f"{prefix}.norm2"),
        partial(_act, ps, f"{prefix}.norm2"),
        partial(_conv, ps, f"{prefix}.conv2", stride=1, pad=1),
    )


def _dense_block(ps: _Pass, i: int, x, features: dict):
    """y = layer(x); x = concat([x, y]): each layer sees every earlier feature map."""
    layer_fn = _conv_block if ps.config.bn_size is None else _bottleneck_block
    backs = []
    for j in range(ps.config.block_config[i]):
        y, back = layer_fn(ps, f"blocks.{i}.layers.{j}", x)
        features[f"blocks.{i}.layers.{j}"] = y
        backs.append((x.shape[1], back))
        x = np.concatenate([x, y], axis=1)

    def backward(g):
        # The concatenation's gradient splits by channel: the first c channels go straight
        # back to x, the last k go through the layer that made them and add to x's.
        for c, back in reversed(backs):
            g = g[:, :c] + back(g[:, c:])
        return g

    return x, backward


def _transition(ps: _Pass, i: int, x):
    """BN, ReLU, 1x1 conv (compression theta), 2x2 average pool: halves H and W."""
    return _seq(
        x,
        partial(_norm, ps, f"transitions.{i}.norm"),
        partial(_act, ps, f"transitions.{i}.norm"),
        partial(_conv, ps, f"transitions.{i}.conv"),
        _avg_pool,
    )


def _network(ps: _Pass, x):
    """Forward through stem, blocks, transitions and head; returns (features, backward)."""
    features: dict[str, np.ndarray] = {}
    x, back = _stem(ps, x)
    features["stem"] = x
    backs = [back]
    num_blocks = len(ps.config.block_config)
    for i in range(num_blocks):
        x, back = _dense_block(ps, i, x, features)
        features[f"blocks.{i}"] = x
        backs.append(back)
        if i < num_blocks - 1:
            x, back = _transition(ps, i, x)
            features[f"transitions.{i}"] = x
            backs.append(back)
    x, back = _seq(
        x, partial(_norm, ps, "head.norm"), partial(_act, ps, "head.norm"), _global_avg_pool
    )
    features["head"] = x
    backs.append(back)
    x, back = _fc(ps, "head.fc", x)
    features["logits"] = x
    backs.append(back)

    def backward(g):
        for back in reversed(backs):
            g = back(g)
        return g

    return features, backward


def _start(
    params: dict,
    config: DenseNetConfig,
    x: np.ndarray,
    training: bool,
    kinks=None,
    record=False,
    relu_masks=None,
    pool_choice=None,
    magnitude=False,
):
    """Validate like every framework's edge does, then run the forward pass."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"the oracle computes in float32 or float64, got input dtype {x.dtype}")
    check_input_shape(config, x.shape, "NCHW", training=training)
    check_tensors(params, config, x.dtype.name)
    if pool_choice is not None and config.stem != "imagenet":
        raise ValueError("a max-pool choice was given, but this config's stem has no max-pool")
    ps = _Pass(params, config, training, kinks, record, relu_masks, pool_choice, magnitude)
    features, backward = _network(ps, x)
    return ps, features, backward


def _forward_backward(params, config, x, y, training, kinks=None, ps_out=None, names=None, **piece):
    """One forward and backward pass; ps_out (a list) receives the _Pass (relu_inputs, ...)."""
    ps, features, backward = _start(params, config, x, training, kinks, ps_out is not None, **piece)
    value, g = _loss_and_grad(features["logits"], np.asarray(y))
    grad_x = backward(g)
    grads = {name: ps.grads[name] for name in names or trainable_names(config)}
    if ps_out is not None:
        ps_out.append(ps)
    return features, ps.running, value, grad_x, grads


# ----------------------------------------------------------------------------------------
# Public API


def forward_features(params: dict, config: DenseNetConfig, x: np.ndarray, training: bool):
    """Per-stage outputs keyed by params.stage_names(config), and the BN running statistics.

    Train mode normalises with batch statistics and returns every running_mean/running_var
    updated once by the config's rule; eval mode uses them and returns them unchanged.
    """
    ps, features, _ = _start(params, config, x, training)
    return features, ps.running


def gradients(
    params: dict,
    config: DenseNetConfig,
    x: np.ndarray,
    y: np.ndarray,
    training: bool,
    *,
    kink_threshold: dict[str, float] | None = None,
    kink_derivative: int = 1,
    relu_masks: dict[str, np.ndarray] | None = None,
    pool_choice: np.ndarray | None = None,
):
    """(loss, d loss / d x, {trainable name: d loss / d param}) by a hand-written backward.

    No autodiff library: the oracle must not share a gradient engine with what it checks.
    relu_masks, pool_choice: the gradient on a given linear piece (pieces.py). relu_masks holds
    every ReLU's derivative (a boolean array shaped like its input, keyed by its BatchNorm as
    relu_inputs gives them); pool_choice the stem max-pool's chosen index per window (0..8,
    row-major, shaped like the pool's output; ImageNet stem only). The forward pass, the loss and
    the running statistics are unchanged; only the backward takes those derivatives.
    kink_threshold (ReLU name -> t, names as relu_inputs gives them): backward takes the ReLU's
    derivative as kink_derivative (1 or 0) wherever its input has |y| < t, as an implementation
    whose rounding puts y on the other side of 0 would (the float32 kink allowance, tolerances.py).
    The forward pass and the loss are unchanged.
    """
    kinks = None if kink_threshold is None else (dict(kink_threshold), bool(kink_derivative))
    _, _, value, grad_x, grads = _forward_backward(
        params, config, x, y, training, kinks, relu_masks=relu_masks, pool_choice=pool_choice
    )
    return value, grad_x, grads


def gradient_scales(
    params: dict,
    config: DenseNetConfig,
    x: np.ndarray,
    y: np.ndarray,
    training: bool,
    *,
    relu_masks: dict[str, np.ndarray] | None = None,
    pool_choice: np.ndarray | None = None,
):
    """(scale of d loss / d x, {trainable name: scale}): the rounding scale of each gradient.

    Every gradient entry ends in one sum over the batch (and positions, or output channels for
    the input): d gamma = sum(dy * xhat), d W = sum(dy * x), ... Here that last sum adds the
    |terms| instead, with the ordinary upstream dy. A floating-point sum errs by up to (number
    of terms) x (unit roundoff) x this however much its terms cancel, so it is the size a
    gradient's rounding error is measured against (tolerances.py): a gradient whose terms cancel
    10^4-fold is 10^4 times smaller than its rounding scale. Arguments as for gradients().
    """
    _, _, _, _, grads = _forward_backward(
        params,
        config,
        x,
        y,
        training,
        relu_masks=relu_masks,
        pool_choice=pool_choice,
        magnitude=True,
        names=["input", *trainable_names(config)],
    )
    return grads.pop("input"), grads


def max_pool_choice(x: np.ndarray) -> np.ndarray:
    """The stem max-pool's choice on input x (NCHW, the ReLU's output): for each 3x3/2 window
    (pad 1, padding never wins) the index 0..8 of its first maximum in row-major order."""
    return _pool_choice(np.asarray(x))


def relu_inputs(params: dict, config: DenseNetConfig, x: np.ndarray, training: bool = True):
    """Every ReLU's input (its BatchNorm's output) in one forward pass, keyed by that BatchNorm."""
    ps, _, _ = _start(params, config, x, training, record=True)
    return ps.relu_inputs


def sgd_step(params: dict, grads: dict, buffers: dict | None, sgd):
    """One step of the spec's SGD (case.SGDConfig): coupled L2 decay, momentum, constant lr.

    buf = momentum * buf + (grad + weight_decay * param); param -= lr * buf. Buffers start at
    zero; tensors without a gradient (BN running statistics) are carried over unchanged.
    """
    buffers = buffers or {}
    new_params, new_buffers = dict(params), {}
    for name, grad in grads.items():
        param = params[name]
        buf = buffers.get(name, np.zeros_like(param))
        buf = sgd.momentum * buf + (grad + sgd.weight_decay * param)
        new_params[name] = param - sgd.lr * buf
        new_buffers[name] = buf
    return new_params, new_buffers


def run_case(case):
    """The oracle as a worker: every key of case.result_keys(case), computed on the CPU.

    Train-mode outputs, gradients and the optimizer steps each start from case.params, so
    the running statistics of one never leak into another.
    """
    from densenet_spec.case import result_keys, wants_step_pieces

    config, dtype, q = case.config, np.dtype(case.dtype), case.quantities
    params = case.params
    x, y = np.asarray(case.x), np.asarray(case.y)
    if x.dtype != dtype:
        raise ValueError(f"case inputs are {x.dtype}, the case asks for {dtype.name}")
    out: dict[str, np.ndarray] = {}

    pieces = bool(case.options.get("pieces")) and "grad" in q
    for mode, training in (("eval", False), ("train", True)):
        if "grad" in q:
            passes: list = []
            features, _, value, grad_x, grads = _forward_backward(
                params, config, x, y, training, ps_out=passes
            )
            out[f"{mode}_grad/input"] = grad_x
            if pieces:  # the linear piece this pass took: every ReLU's input (pieces.py)
                out.update({f"{mode}_piece/{n}": v for n, v in passes[0].relu_inputs.items()})
            if training:
                out.update({f"train_grad/{n}": g for n, g in grads.items()})
        elif mode in q:
            features, _ = forward_features(params, config, x, training)
            value = loss(features["logits"], y)
        else:
            continue
        out.update({f"{mode}/{s}": v for s, v in features.items()})
        out[f"loss/{mode}"] = np.reshape(value, (1,))

    if "step" in q:
        inputs: list | None = [] if wants_step_pieces(case) else None
        state, _, _ = sgd_steps(params, config, case.step_x, case.step_y, case.sgd, relu=inputs)
        out.update({f"step/{s.name}": state[s.name] for s in param_specs(config)})
        for k, pre in enumerate(inputs or []):  # each step's linear piece (pieces.py)
            out.update({f"step_piece/{k}/{n}": v for n, v in pre.items()})

    results = {k: np.ascontiguousarray(out[k], dtype=dtype) for k in result_keys(case)}
    return results, {"numpy": np.__version__, "device": "cpu", "dtype": case.dtype}


def sgd_steps(
    params: dict,
    config: DenseNetConfig,
    step_x,
    step_y,
    sgd,
    *,
    lrs=None,
    buffers: dict | None = None,
    pieces: list | None = None,
    relu: list | None = None,
):
    """K training steps from `params` on batches step_x[k], step_y[k] (train mode each time).

    Returns (state, buffers, losses): every tensor after the steps (running statistics updated
    once per step), the momentum buffers by trainable name, and the K losses (before each
    update). lrs[k] is the learning rate of step k (default: sgd.lr throughout): the update is
    the spec's with the rate outside the buffer, buf = m * buf + (g + wd * p); p -= lr_k * buf.
    buffers continues a run (a checkpoint's momentum buffers); None starts them at zero.
    pieces[k] = (relu_masks, pool_choice): step k's gradient on that linear piece (gradients());
    relu: a list that receives each step's ReLU inputs (relu_inputs(), one dict per step).
    """
    import dataclasses

    state, buffers = dict(params), dict(buffers or {})
    losses = []
    for k in range(len(step_x)):
        masks, pool = pieces[k] if pieces is not None else (None, None)
        passes: list | None = [] if relu is not None else None
        _, running, value, _, grads = _forward_backward(
            state,
            config,
            step_x[k],
            step_y[k],
            True,
            ps_out=passes,
            relu_masks=masks,
            pool_choice=pool,
        )
        if relu is not None:
            relu.append(passes[0].relu_inputs)
        lr = sgd.lr if lrs is None else float(lrs[k])
        state, buffers = sgd_step(state, grads, buffers, dataclasses.replace(sgd, lr=lr))
        state.update(running)
        losses.append(float(value))
    return state, buffers, np.asarray(losses)


# ----------------------------------------------------------------------------------------
# Data parallelism (issue 20; densenet_spec/replicas.py, docs/data_parallel.md). R replicas
# each take one equal, contiguous shard of the batch; each replica's loss is the mean
# cross-entropy over its shard, L_r, and the gradient all-reduce averages the replicas'
# gradients, so every replica steps on the gradient of L_dp = (1/R) sum_r L_r.
#
# With equal shards of n = N / R samples, L_dp = (1/R) sum_r (1/n) sum_{i in r} l_i
# = (1/N) sum_i l_i = L, the one-device mean loss; unequal shards weight sample i by
# 1 / (R n_r) instead of 1 / N, so shards are required equal. What differs is BatchNorm:
# - "synchronised": every BatchNorm normalises with the statistics of the whole batch (an
#   all-reduce of per-channel sums in forward, of sum(dy) and sum(dy * xhat) in backward).
#   The forward is the one-device forward, and each replica's backward is the gradient of
#   sum_r L_r through its own samples, so the averaged gradient is d L / d params exactly:
#   the one-device step on the whole batch. Running statistics: identical on every replica,
#   from the whole batch's statistics (unbiased correction with N*H*W values, not n*H*W).
# - "per-replica": each replica normalises its own shard with its shard's statistics; the
#   gradient is (1/R) sum_r d L_r / d params with L_r computed on shard r alone. Running
#   statistics differ between replicas: replica r's follow its shard's statistics (unbiased
#   correction with n*H*W values). What replica r starts each step from depends on the buffer
#   policy: its own buffers ("local"), or replica 0's, broadcast before every forward (torch
#   DDP's default broadcast_buffers=True: "broadcast").
# Train-mode BatchNorm never reads its running statistics, so the buffer policy changes the
# buffers only, never the parameters.

BN_SYNC = ("synchronised", "per-replica")
BUFFER_POLICIES = ("broadcast", "local")


def shards(x: np.ndarray, replicas: int) -> list[np.ndarray]:
    """The batch split into `replicas` equal contiguous shards, replica r taking the r-th."""
    n = len(x)
    if replicas < 1 or n % replicas:
        raise ValueError(f"a batch of {n} does not split into {replicas} equal shards")
    size = n // replicas
    return [x[r * size : (r + 1) * size] for r in range(replicas)]


def replica_forward_backward(
    params: dict, config: DenseNetConfig, x, y, replicas: int, bn_sync: str, training=True
):
    """One data-parallel forward and backward: (features, runnings, loss, grad_x, grads).

    features: every stage's output, the replicas' shards concatenated in replica order;
    runnings: each replica's running statistics after this pass (a list of R dicts); loss:
    L_dp = mean of the shard losses; grad_x: d L_dp / d x (replica r holds R times its part:
    the input gradient of its own loss, with synchronised BN the sum's); grads: the
    all-reduced (averaged) parameter gradients.
    """
    if bn_sync not in BN_SYNC:
        raise ValueError(f"bn_sync must be one of {', '.join(BN_SYNC)}, got {bn_sync!r}")
    xs, ys = shards(np.asarray(x), replicas), shards(np.asarray(y), replicas)
    if bn_sync == "synchronised" or not training:
        # Eval mode normalises with the running statistics: no batch coupling at all.
        features, running, value, grad_x, grads = _forward_backward(params, config, x, y, training)
        if not training:  # each replica's own eval loss, averaged: the same as L for equal shards
            value = np.mean(
                [loss(f, yr) for f, yr in zip(shards(features["logits"], replicas), ys)]
            )
        return features, [running] * replicas, value, grad_x, grads
    parts = [_forward_backward(params, config, xr, yr, True) for xr, yr in zip(xs, ys)]
    features = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    runnings = [p[1] for p in parts]
    value = np.mean([p[2] for p in parts])
    grad_x = np.concatenate([p[3] for p in parts]) / replicas
    grads = {k: sum(p[4][k] for p in parts) / replicas for k in parts[0][4]}
    return features, runnings, value, grad_x, grads


def replica_sgd_steps(
    params: dict,
    config: DenseNetConfig,
    step_x,
    step_y,
    sgd,
    replicas: int,
    bn_sync: str,
    buffers: str = "broadcast",
) -> list[dict]:
    """Every replica's state (parameters and running statistics) after K data-parallel steps.

    The parameters are the same on every replica (each steps on the averaged gradient); the
    running statistics follow replica_forward_backward, with `buffers` the policy of what
    replica r's BatchNorms start each step from: "broadcast" (replica 0's, torch DDP's
    default) or "local" (its own).
    """
    states = [dict(params) for _ in range(replicas)]
    momentum: dict = {}
    for k in range(len(step_x)):
        states, momentum, _ = replica_sgd_step(
            states, momentum, config, step_x[k], step_y[k], sgd, replicas, bn_sync, buffers
        )
    return states


def replica_sgd_step(states: list, momentum: dict, config, x, y, sgd, replicas, bn_sync, buffers):
    """One data-parallel step (replica_sgd_steps'): every replica's state (the parameters are
    shared), the momentum buffers (shared), and the step's loss, the mean of the replicas'
    shard losses (the whole batch's mean with synchronised BN)."""
    if buffers not in BUFFER_POLICIES:
        raise ValueError(f"buffers must be one of {', '.join(BUFFER_POLICIES)}, got {buffers!r}")
    running_names = [s.name for s in param_specs(config) if s.name.endswith(("_mean", "_var"))]
    shared = {k: v for k, v in states[0].items() if k not in running_names}
    if buffers == "broadcast":
        states = [{**s, **{n: states[0][n] for n in running_names}} for s in states]
    if bn_sync == "synchronised":
        # One whole-batch pass; its running statistics become every replica's.
        _, running, value, _, grads = _forward_backward(
            {**shared, **{n: states[0][n] for n in running_names}}, config, x, y, True
        )
        runnings = [running] * replicas
    else:
        xs, ys = shards(np.asarray(x), replicas), shards(np.asarray(y), replicas)
        parts = [
            _forward_backward({**shared, **{n: s[n] for n in running_names}}, config, xr, yr, True)
            for s, xr, yr in zip(states, xs, ys)
        ]
        runnings = [p[1] for p in parts]
        value = sum(p[2] for p in parts) / replicas
        grads = {n: sum(p[4][n] for p in parts) / replicas for n in parts[0][4]}
    shared, momentum = sgd_step(shared, grads, momentum, sgd)
    return [{**shared, **running} for running in runnings], momentum, float(value)
