"""The NumPy oracle, checked against things that share none of its code.

Shapes derived by hand from the d2l chapter, central finite differences of the loss, the
running-statistics rule recomputed from a direct convolution, SGD on numbers worked out by
hand. Everything runs on tiny networks and small images, so the file stays quick.
"""

import numpy as np
import pytest

from densenet_spec import reference
from densenet_spec.case import SGDConfig, make_case, read_results, result_keys, write_case
from densenet_spec.compare import rel_errors
from densenet_spec.config import DenseNetConfig, get_preset
from densenet_spec.params import init_params, param_specs, stage_names, trainable_names
from densenet_spec.tolerances import is_exact_zero

TINY = get_preset("tiny")  # imagenet stem, bottleneck layers, conv biases, odd widths
# d2l's architecture (conv_block, no bottleneck, conv bias, 1 input channel), shrunk.
D2L_SMALL = DenseNetConfig(growth_rate=4, block_config=(2, 2), num_init_features=6, num_classes=4)
# The paper's CIFAR stem (a single 3x3 conv, no BN) with bottlenecks and no conv biases.
CIFAR_SMALL = DenseNetConfig(
    growth_rate=3, block_config=(2, 1), num_init_features=5, stem="cifar", bn_size=2,
    conv_bias=False, in_channels=3, num_classes=3,
)  # fmt: skip


def _problem(config, batch, size, seed, dtype=np.float64):
    """Seeded weights (BN randomised, so every BN term matters), input and labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, config.in_channels, size, size)).astype(dtype)
    y = rng.integers(0, config.num_classes, batch)
    return init_params(config, seed, dtype, randomize_bn=True), x, y


def _direct_conv(x, w, b, stride, pad):
    """Convolution as a sum over kernel offsets of strided slices, written out plainly."""
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, o, ho, wo)) + b[None, :, None, None]
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_d2l_stage_shapes_at_96():
    # By hand from d2l 8.7 (1 x 96 x 96 input): b1 = conv 7x7/2 pad 3 (96 -> 48) and max-pool
    # 3x3/2 pad 1 (48 -> 24), 64 channels. Four dense blocks of 4 conv_blocks, k = 32, each
    # layer adds 32 channels (4 * 32 = 128 per block); transitions halve channels and size:
    # 64 -> 192 | 96 -> 224 | 112 -> 240 | 120 -> 248 at 24, 12, 6, 3 pixels.
    n = 2
    expected = [
        ("stem", (n, 64, 24, 24)),
        ("blocks.0.layers.0", (n, 32, 24, 24)),
        ("blocks.0.layers.1", (n, 32, 24, 24)),
        ("blocks.0.layers.2", (n, 32, 24, 24)),
        ("blocks.0.layers.3", (n, 32, 24, 24)),
        ("blocks.0", (n, 192, 24, 24)),
        ("transitions.0", (n, 96, 12, 12)),
        ("blocks.1.layers.0", (n, 32, 12, 12)),
        ("blocks.1.layers.1", (n, 32, 12, 12)),
        ("blocks.1.layers.2", (n, 32, 12, 12)),
        ("blocks.1.layers.3", (n, 32, 12, 12)),
        ("blocks.1", (n, 224, 12, 12)),
        ("transitions.1", (n, 112, 6, 6)),
        ("blocks.2.layers.0", (n, 32, 6, 6)),
        ("blocks.2.layers.1", (n, 32, 6, 6)),
        ("blocks.2.layers.2", (n, 32, 6, 6)),
        ("blocks.2.layers.3", (n, 32, 6, 6)),
        ("blocks.2", (n, 240, 6, 6)),
        ("transitions.2", (n, 120, 3, 3)),
        ("blocks.3.layers.0", (n, 32, 3, 3)),
        ("blocks.3.layers.1", (n, 32, 3, 3)),
        ("blocks.3.layers.2", (n, 32, 3, 3)),
        ("blocks.3.layers.3", (n, 32, 3, 3)),
        ("blocks.3", (n, 248, 3, 3)),
        ("head", (n, 248)),
        ("logits", (n, 10)),
    ]
    config = get_preset("d2l")
    params, x, _ = _problem(config, n, 96, seed=0)
    features, _ = reference.forward_features(params, config, x, training=False)
    assert [(k, v.shape) for k, v in features.items()] == expected
    assert list(features) == stage_names(config)


# Central differences in float64 with step h = 1e-5: truncation error ~h^2 * |f'''| ~ 1e-10
# relative; rounding error ~|error of the loss| / h ~ 1e-16 * 2 / 1e-5 = 2e-11 absolute at worst
# (measured ~1e-11), the same for every entry. So each tensor's error is measured against its
# largest gradient entry, or 1e-3 of the largest gradient of the pass when that is bigger
# (train-mode conv biases are exactly zero; the stem BN's gamma and beta nearly or exactly so when
# the next train-mode BNs cancel their effect): <= 4e-8 relative. Measured: <= 2.4e-8 on NumPy 2.x
# and 1.23. A wrong backward (a missing batch-statistics term, a transposed kernel, a misrouted
# max-pool) is off by O(1) relative, so the bound 1e-6 separates the two. A smaller h lets
# rounding dominate; a larger one crosses more ReLU and max-pool kinks.
FD_STEP = 1e-5
FD_BOUND = 1e-6
FD_SAMPLES = 2  # random entries per tensor; every trainable tensor of the network is sampled


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(
    "config, size", [(TINY, 16), (D2L_SMALL, 16), (CIFAR_SMALL, 6)], ids=["tiny", "d2l", "cifar"]
)
def test_backward_matches_central_differences(config, size, training):
    params, x, y = _problem(config, 2, size, seed=1)
    value, grad_x, grads = reference.gradients(params, config, x, y, training)
    assert list(grads) == trainable_names(config)

    def loss_with(name, tensor):  # the loss with `name` ("input" or a parameter) replaced
        p, xx = (params, tensor) if name == "input" else ({**params, name: tensor}, x)
        features, _ = reference.forward_features(p, config, xx, training)
        return float(reference.loss(features["logits"], y))

    assert float(value) == loss_with("input", x)
    rng = np.random.default_rng(2)
    scale = max(float(np.max(np.abs(g))) for g in [grad_x, *grads.values()])
    errors = {}
    for name in ["input", *grads]:
        tensor, analytic = (x, grad_x) if name == "input" else (params[name], grads[name])
        worst = 0.0
        for flat in rng.choice(tensor.size, size=min(FD_SAMPLES, tensor.size), replace=False):
            index = np.unravel_index(flat, tensor.shape)
            up, down = tensor.copy(), tensor.copy()
            up[index] += FD_STEP
            down[index] -= FD_STEP
            numeric = (loss_with(name, up) - loss_with(name, down)) / (2 * FD_STEP)
            worst = max(worst, abs(numeric - analytic[index]))
        own = float(np.max(np.abs(analytic)))
        errors[name] = worst / max(own, 1e-3 * scale)
        if training and is_exact_zero(f"train_grad/{name}"):
            assert own <= 1e-12 * scale  # BN's batch-mean subtraction cancels a constant shift
    worst_name = max(errors, key=errors.get)
    assert errors[worst_name] <= FD_BOUND, (worst_name, errors[worst_name])


def test_backward_matches_a_directional_derivative_over_every_entry():
    """Every entry at once: d/dt loss(params + t * v) at 0 equals sum(grad * v) for random v."""
    config, training = TINY, True
    params, x, y = _problem(config, 2, 16, seed=5)
    _, grad_x, grads = reference.gradients(params, config, x, y, training)
    rng = np.random.default_rng(6)
    v = {n: rng.standard_normal(params[n].shape) for n in grads}
    vx = rng.standard_normal(x.shape)

    def loss_at(t):
        p = {**params, **{n: params[n] + t * v[n] for n in v}}
        features, _ = reference.forward_features(p, config, x + t * vx, training)
        return float(reference.loss(features["logits"], y))

    numeric = (loss_at(FD_STEP) - loss_at(-FD_STEP)) / (2 * FD_STEP)
    analytic = float(np.sum(grad_x * vx) + sum(np.sum(grads[n] * v[n]) for n in v))
    assert abs(numeric - analytic) <= FD_BOUND * abs(analytic)


def _bn_names(config):
    return {s.name for s in param_specs(config) if s.kind.startswith("bn_running")}


@pytest.mark.parametrize("rule", ["unbiased", "biased"])
def test_running_statistics_follow_the_configured_rule(rule):
    config = TINY.replace(bn_running_var=rule, bn_momentum=0.3)
    params, x, _ = _problem(config, 2, 16, seed=3)
    features, running = reference.forward_features(params, config, x, training=True)
    assert set(running) == _bn_names(config)

    def expected(name, z):  # z: the BN's input
        n = z.shape[0] * z.shape[2] * z.shape[3]
        mean, var = z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3))  # np.var: biased
        var = var * n / (n - 1) if rule == "unbiased" else var
        return (
            0.7 * params[f"{name}.running_mean"] + 0.3 * mean,
            0.7 * params[f"{name}.running_var"] + 0.3 * var,
        )

    # stem.norm sees the stem conv output (computed here directly); head.norm the last block's.
    stem_conv = _direct_conv(x, params["stem.conv.weight"], params["stem.conv.bias"], 2, 3)
    for name, z in [("stem.norm", stem_conv), ("head.norm", features["blocks.1"])]:
        mean, var = expected(name, z)
        np.testing.assert_allclose(running[f"{name}.running_mean"], mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(running[f"{name}.running_var"], var, rtol=1e-12)

    # Eval mode reads the running statistics and leaves them as they were.
    _, unchanged = reference.forward_features(params, config, x, training=False)
    for name in _bn_names(config):
        np.testing.assert_array_equal(unchanged[name], params[name])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_eps_and_padding_mistakes_change_logits_visibly(training):
    """The mistakes tolerances.py must catch move the logits far above the 1e-10 bound."""
    config = D2L_SMALL
    params, x, _ = _problem(config, 2, 32, seed=4)
    logits = reference.forward_features(params, config, x, training)[0]["logits"]

    eps_3 = reference.forward_features(params, config.replace(bn_eps=1e-3), x, training)[0]
    assert _rel(eps_3["logits"], logits) > 1e-6

    # 'same' padding pads (2, 3) for the 7x7/2 stem conv on an even-sized image: the same as
    # our symmetric pad 3 applied to the image moved one pixel up and left (zeros shifted in).
    shifted = np.zeros_like(x)
    shifted[:, :, :-1, :-1] = x[:, :, 1:, 1:]
    same = reference.forward_features(params, config, shifted, training)[0]
    assert _rel(same["logits"], logits) > 1e-6


def test_float32_stays_float32_and_tracks_float64():
    config = TINY
    params64, x64, y = _problem(config, 2, 16, seed=7)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    x32 = x64.astype(np.float32)
    results = {}
    for dtype, params, x in [("float32", params32, x32), ("float64", params64, x64)]:
        out = {}
        for mode, training in [("eval", False), ("train", True)]:
            features, running = reference.forward_features(params, config, x, training)
            value, grad_x, grads = reference.gradients(params, config, x, y, training)
            out.update({f"{mode}/{k}": v for k, v in features.items()})
            out.update({f"step/{mode}.{k}": v for k, v in running.items()})
            out[f"loss/{mode}"] = np.reshape(value, (1,))
            out[f"{mode}_grad/input"] = grad_x
            out.update({f"{mode}_grad/{k}": v for k, v in grads.items()})
        stepped, buffers = reference.sgd_step(params, grads, {}, SGDConfig())
        out.update({f"step/{k}": v for k, v in stepped.items()})
        assert all(b.dtype.name == dtype for b in buffers.values())
        assert {k: v.dtype.name for k, v in out.items()} == {k: dtype for k in out}
        results[dtype] = out
    errors = rel_errors(results["float32"], results["float64"])
    # Measured (NumPy 2.x and 1.23): forward values <= 4e-6, gradients <= 2e-5, except the stem
    # BN's gamma and beta in train mode (<= 4e-4): the next train-mode BNs nearly cancel their
    # effect, so their gradients are small differences of large terms and keep less precision.
    for key, error in errors.items():
        assert error <= (2e-3 if key.startswith("train_grad/stem.norm.") else 1e-4), (key, error)
    assert set(errors) == set(results["float64"])


def test_sgd_step_on_hand_computed_numbers():
    sgd = SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.01)
    params = {"w": np.array([1.0, -2.0]), "norm.running_mean": np.array([0.5])}
    # step 1: d = g + 0.01 * p = [0.51, 0.23] = buf;  p = p - 0.1 * buf = [0.949, -2.023]
    params, buffers = reference.sgd_step(params, {"w": np.array([0.5, 0.25])}, {}, sgd)
    np.testing.assert_allclose(buffers["w"], [0.51, 0.23], rtol=1e-14)
    np.testing.assert_allclose(params["w"], [0.949, -2.023], rtol=1e-14)
    # step 2: d = [-1, 2] + 0.01 * [0.949, -2.023] = [-0.99051, 1.97977]
    #         buf = 0.9 * [0.51, 0.23] + d = [-0.53151, 2.18677]
    #         p = [0.949, -2.023] - 0.1 * buf = [1.002151, -2.241677]
    first = params
    params, buffers = reference.sgd_step(first, {"w": np.array([-1.0, 2.0])}, buffers, sgd)
    np.testing.assert_allclose(buffers["w"], [-0.53151, 2.18677], rtol=1e-14)
    np.testing.assert_allclose(params["w"], [1.002151, -2.241677], rtol=1e-14)
    np.testing.assert_array_equal(params["norm.running_mean"], [0.5])  # no gradient: unchanged
    np.testing.assert_allclose(first["w"], [0.949, -2.023], rtol=1e-14)  # inputs not mutated


def test_max_pool_routes_ties_to_the_first_maximum():
    # An all-zero image: every window ties, padding (-inf) never wins, so each output's
    # gradient goes to the first real pixel of its window in row-major order.
    x = np.zeros((1, 1, 4, 4))
    out, backward = reference._max_pool(x)
    assert out.shape == (1, 1, 2, 2)
    grad = backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = 1.0, 2.0, 3.0, 4.0
    np.testing.assert_array_equal(grad[0, 0], expected)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_run_case_fills_exactly_the_result_keys(dtype):
    case = make_case(TINY, batch=2, image_size=16, dtype=dtype, steps=2)
    results, info = reference.run_case(case)
    assert list(results) == result_keys(case)
    assert info == {"numpy": np.__version__, "device": "cpu", "dtype": dtype}
    assert all(v.dtype.name == dtype for v in results.values())
    shapes = {s.name: s.shape for s in param_specs(TINY)}
    for name in trainable_names(TINY):
        assert results[f"train_grad/{name}"].shape == shapes[name]
    for name, shape in shapes.items():
        assert results[f"step/{name}"].shape == shape
    assert results["loss/eval"].shape == results["loss/train"].shape == (1,)
    assert results["eval_grad/input"].shape == results["train_grad/input"].shape == case.x.shape

    # The K steps, spelled out with the public functions: train-mode forward (running stats
    # updated once), backward, SGD, all from case.params.
    state, buffers = dict(case.params), {}
    for k in range(case.steps):
        _, running = reference.forward_features(state, TINY, case.step_x[k], training=True)
        _, _, grads = reference.gradients(state, TINY, case.step_x[k], case.step_y[k], True)
        state, buffers = reference.sgd_step(state, grads, buffers, case.sgd)
        state.update(running)
    for name in shapes:
        np.testing.assert_allclose(results[f"step/{name}"], state[name], rtol=1e-12, atol=0)


def test_run_case_computes_only_what_is_asked():
    case = make_case(TINY, batch=2, image_size=16, quantities=("eval",))
    results, _ = reference.run_case(case)
    assert list(results) == [f"eval/{s}" for s in stage_names(TINY)] + ["loss/eval"]


def test_the_worker_entry_point_runs_the_oracle(tmp_path):
    from densenet_spec.worker import main

    case = make_case(TINY, batch=2, image_size=16, steps=1)
    write_case(case, tmp_path / "case")
    assert main(["numpy", str(tmp_path / "case"), str(tmp_path / "out.safetensors")]) == 0
    results, info = read_results(tmp_path / "out.safetensors")
    assert set(results) == set(result_keys(case))
    assert info["package"] == "numpy" and info["dtype"] == "float64"


# ---------------------------------------------------------------------------------------------
# Rounding scales (reference.gradient_scales): each gradient's last sum over |terms|.


def test_each_ops_magnitude_backward_sums_absolute_terms_and_passes_the_ordinary_gradient_on():
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3)), np.ones(4)
    _, back = reference._conv2d(x, w, b, 2, 1)
    _, back_abs = reference._conv2d(x, w, b, 2, 1, magnitude=True)
    g = rng.standard_normal((2, 4, 4, 4))
    gx, gw, gb = back(g)
    gx_abs, gw_abs, gb_abs = back_abs(g)
    xp = np.abs(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))))
    direct = np.zeros_like(w)
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i : i + 8 : 2, j : j + 8 : 2]
            direct[:, :, i, j] = np.einsum("nohw,nchw->oc", np.abs(g), patch)
    np.testing.assert_allclose(gw_abs, direct, rtol=1e-13)
    np.testing.assert_allclose(gb_abs, np.abs(g).sum(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_array_equal(gx_abs, gx)  # what flows on is the ordinary gradient
    assert np.all(gw_abs >= np.abs(gw)) and np.any(gw_abs > 1.5 * np.abs(gw))

    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    _, back = reference._batch_norm(x, mean, var, gamma, beta, 1e-5, True)
    _, back_abs = reference._batch_norm(x, mean, var, gamma, beta, 1e-5, True, magnitude=True)
    g = rng.standard_normal(x.shape)
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None]
    (gx, _, _), (gx_abs, ggamma, gbeta) = back(g), back_abs(g)
    np.testing.assert_allclose(ggamma, np.abs(g * xhat).sum(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(gbeta, np.abs(g).sum(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_array_equal(gx_abs, gx)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradient_scales_bound_every_gradient_and_match_the_head_by_hand(training):
    params, x, y = _problem(D2L_SMALL, 3, 16, seed=4)
    _, grad_x, grads = reference.gradients(params, D2L_SMALL, x, y, training)
    scale_x, scales = reference.gradient_scales(params, D2L_SMALL, x, y, training)
    assert list(scales) == list(grads)
    for name, g in [("input", grad_x), *grads.items()]:
        s = scale_x if name == "input" else scales[name]
        assert s.shape == g.shape and np.all(s >= np.abs(g) * (1 - 1e-12)), name
    # the head by hand: d logits = (softmax - onehot) / n, its last sums over the batch
    features, _ = reference.forward_features(params, D2L_SMALL, x, training)
    logits = features["logits"]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dlogits = np.abs(p - np.eye(D2L_SMALL.num_classes)[y]) / len(y)
    np.testing.assert_allclose(scales["head.fc.weight"], dlogits.T @ features["head"], rtol=1e-12)
    np.testing.assert_allclose(scales["head.fc.bias"], dlogits.sum(axis=0), rtol=1e-12)
    if training:  # the stem BN's gamma: every consumer is a train-mode BN, its terms cancel
        ratio = np.max(scales["stem.norm.weight"]) / np.max(np.abs(grads["stem.norm.weight"]))
        assert ratio > 100
