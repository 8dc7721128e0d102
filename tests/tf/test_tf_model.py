"""The Keras DenseNet's structure and the traps it avoids: parameter counts, 'same' padding,
Keras's BatchNorm defaults, float64 all the way, named errors, weight round trips,
memory-efficient layers (XLA: test_tf_worker.py), Keras's SGD constants."""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from densenet_testing import PUBLISHED_PARAMETER_COUNTS  # noqa: E402

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import SGDConfig, make_case  # noqa: E402
from densenet_spec.compare import rel_errors  # noqa: E402
from densenet_spec.config import PRESETS, DenseNetConfig, get_preset  # noqa: E402
from densenet_spec.errors import (  # noqa: E402
    ConfigMismatchError,
    DeviceUnavailableError,
    InputShapeError,
    WeightDtypeError,
    WeightKeysError,
)
from densenet_spec.params import count_parameters, init_params, stage_names  # noqa: E402
from densenet_spec.tolerances import FLOAT64  # noqa: E402
from densenet_tf.adapter import environment  # noqa: E402
from densenet_tf.train import eval_step, gradients, make_optimizer, train_step  # noqa: E402
from densenet_tf.variants import make_model  # noqa: E402
from densenet_tf.weights import (  # noqa: E402
    from_canonical,
    load_weights,
    save_weights,
    to_canonical,
)

TINY = get_preset("tiny")


def nhwc(a):
    return np.ascontiguousarray(np.moveaxis(a, -3, -1))


def nchw(a):
    return np.ascontiguousarray(np.moveaxis(np.asarray(a), -1, -3))


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def tiny64():
    """A float64 tiny DenseNet with the seeded, BN-randomised canonical weights, and a batch."""
    params = init_params(TINY, seed=0, dtype=np.float64, randomize_bn=True)
    model = make_model(TINY, dtype="float64")
    from_canonical(model, params)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 32, 32))  # NCHW, as the oracle takes it
    y = rng.integers(0, TINY.num_classes, 2)
    return model, params, x, y


# ---------------------------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_matches_spec(name):
    model = make_model(get_preset(name))  # every layer built at construction: weights exist now
    count = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert count == count_parameters(get_preset(name))
    if name in PUBLISHED_PARAMETER_COUNTS:
        assert count == PUBLISHED_PARAMETER_COUNTS[name]
    stats = [v for v in model.non_trainable_variables]
    assert all(v.path.endswith(("moving_mean", "moving_variance")) for v in stats)


def test_stage_outputs_keys_and_shapes(tiny64):
    model, _, x, _ = tiny64
    features = model.stage_outputs(nhwc(x))
    assert list(features) == stage_names(TINY)
    assert tuple(features["stem"].shape) == (2, 8, 8, TINY.num_init_features)  # NHWC
    assert tuple(features["head"].shape) == (2, TINY.num_features)
    np.testing.assert_array_equal(features["logits"], model(nhwc(x)))


# ---------------------------------------------------------------------------------------------
# Padding: explicit symmetric, never 'same'


def test_same_padding_would_change_the_stem(tiny64):
    """'same' pads (2, 3) for the 7x7/2 conv and (0, 1) for the 3x3/2 pool at even sizes."""
    model, params, x, _ = tiny64
    ours = nchw(model.stem(nhwc(x), training=False))
    oracle, _ = reference.forward_features(params, TINY, x, training=False)
    assert rel(ours, oracle["stem"]) <= 1e-12

    stem = model.stem
    same_conv = keras.layers.Conv2D(
        TINY.num_init_features, 7, strides=2, padding="same", dtype="float64"
    )
    same_conv.build((None, None, None, TINY.in_channels))
    same_conv.set_weights(stem.get_layer("conv").get_weights())
    h = stem.get_layer("relu")(stem.get_layer("norm")(same_conv(nhwc(x)), training=False))
    same = nchw(keras.layers.MaxPooling2D(3, strides=2, padding="same", dtype="float64")(h))
    assert same.shape == ours.shape  # same output size, different numbers
    assert rel(same, oracle["stem"]) > 1e-6


# ---------------------------------------------------------------------------------------------
# BatchNorm


def _spec_batch_norm(x, gamma, beta, mean, var, eps=1e-5, momentum=0.1):
    """The spec's train-mode BN in NumPy: output and the updated running statistics."""
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mu, v = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    y = (x - mu) / np.sqrt(v + eps) * gamma + beta
    running_var = (1 - momentum) * var + momentum * v * n / (n - 1)
    return y, (1 - momentum) * mean + momentum * mu, running_var


def test_keras_batch_norm_defaults_would_fail_parity(tiny64):
    """eps 1e-3, momentum 0.99 (old-value weight) and the biased running variance each
    differ from the spec by far more than 1e-6."""
    norm = tiny64[0].stem.get_layer("norm")  # our BN, inside a float64 model
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 5, norm.gamma.shape[0])) * 0.05  # small var: eps matters
    gamma, beta, mean, var = (
        v.numpy() for v in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance)
    )
    y_spec, mean_spec, var_spec = _spec_batch_norm(x, gamma, beta, mean, var)

    def keras_bn(**kwargs):
        bn = keras.layers.BatchNormalization(dtype="float64", **kwargs)
        bn.build(x.shape)
        bn.set_weights([gamma, beta, mean, var])
        return bn

    default = keras_bn()
    assert rel(default(x, training=False), (x - mean) / np.sqrt(var + 1e-5) * gamma + beta) > 1e-6
    y = default(x, training=True)
    assert rel(y, y_spec) > 1e-6  # eps 1e-3
    assert rel(default.moving_mean, mean_spec) > 1e-6  # momentum 0.99 is the old value's weight
    # Even with eps and momentum set to the spec, Keras keeps the biased variance (n = 50 here).
    fixed = keras_bn(epsilon=1e-5, momentum=0.9)
    fixed(x, training=True)
    assert rel(fixed.moving_mean, mean_spec) <= 1e-12
    assert rel(fixed.moving_variance, var_spec) > 1e-6


def test_batch_norm_matches_spec_and_runs_in_float64(tiny64):
    """Agreement far below float32's rounding (~1e-7), and a signal in the 9th digit that
    float32 could not even represent."""
    model = make_model(TINY, dtype="float64")
    from_canonical(model, tiny64[1])
    norm = model.stem.get_layer("norm")
    assert all(v.dtype == "float64" for v in norm.weights)
    gamma, beta, mean, var = (v.numpy() for v in norm.weights)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 4, norm.gamma.shape[0]))
    y = norm(tf.constant(x), training=False)
    assert y.dtype == tf.float64
    assert rel(y, (x - mean) / np.sqrt(var + 1e-5) * gamma + beta) <= 1e-14

    x = 1.0 + 1e-9 * rng.standard_normal((2, 4, 4, norm.gamma.shape[0]))
    assert float(tf.reduce_max(tf.abs(tf.cast(x, tf.float32) - 1.0))) == 0.0  # gone in float32
    y_spec, mean_spec, var_spec = _spec_batch_norm(x, gamma, beta, mean, var)
    y = norm(tf.constant(x), training=True)
    assert rel(y, y_spec) <= 1e-6  # x - mean keeps ~7 digits of the 1e-9 signal in float64
    assert rel(norm.moving_mean, mean_spec) <= 1e-14
    assert rel(norm.moving_variance, var_spec) <= 1e-12


@pytest.mark.parametrize("rule", ["unbiased", "biased"])
def test_running_statistics_follow_the_configured_rule(rule):
    """batchnorm.BatchNormalization: the spec's unbiased running variance by default, Keras's own
    (biased) rule when the config asks for it; the output is the same either way."""
    norm = make_model(TINY.replace(bn_running_var=rule), dtype="float64").stem.get_layer("norm")
    x = np.random.default_rng(5).standard_normal((2, 3, 3, norm.gamma.shape[0]))
    y_spec, mean_spec, var_spec = _spec_batch_norm(x, *(v.numpy() for v in norm.weights))
    if rule == "biased":
        var_spec = 0.9 * 1.0 + 0.1 * x.var(axis=(0, 1, 2))
    y = norm(tf.constant(x), training=True)
    assert rel(y, y_spec) <= 1e-12
    assert rel(norm.moving_mean, mean_spec) <= 1e-14
    assert rel(norm.moving_variance, var_spec) <= 1e-14


def test_whole_model_float64(tiny64):
    model, params, x, y = tiny64
    assert {v.dtype for v in model.weights} == {"float64"}
    loss, grad_x, grads = gradients(model, nhwc(x), y, training=False)
    assert loss.dtype == grad_x.dtype == tf.float64
    assert {g.dtype for g in grads.values()} == {np.dtype("float64")}
    assert eval_step(model, nhwc(x)).dtype == tf.float64


# ---------------------------------------------------------------------------------------------
# Named errors


@pytest.mark.parametrize(
    "shape, match",
    [((2, 32, 32), "rank 4"), ((2, 32, 32, 1), "channels"), ((2, 4, 4, 3), "too small")],
)
def test_bad_input_raises_input_shape_error(tiny64, shape, match):
    model = tiny64[0]
    x = np.zeros(shape)
    with pytest.raises(InputShapeError, match=match):
        model(x)
    with pytest.raises(InputShapeError, match=match):
        model.stage_outputs(x)


def test_train_mode_batch_of_one_pixel_is_rejected(tiny64):
    with pytest.raises(InputShapeError, match="more than one value"):
        tiny64[0](np.zeros((1, 8, 8, 3)), training=True)  # pools to 1x1


def test_weight_errors(tiny64, tmp_path):
    model, params, _, _ = tiny64
    missing = dict(params)
    del missing["head.fc.bias"]
    with pytest.raises(WeightKeysError, match="head.fc.bias"):
        from_canonical(model, missing)
    misshaped = dict(params, **{"stem.conv.weight": np.zeros((7, 3, 3, 3))})
    with pytest.raises(WeightKeysError, match="stem.conv.weight"):
        from_canonical(model, misshaped)
    with pytest.raises(WeightDtypeError):
        from_canonical(model, {k: v.astype(np.float32) for k, v in params.items()})
    other = TINY.replace(num_classes=6)
    path = tmp_path / "other.safetensors"
    save_weights(make_model(other, dtype="float64"), path)
    with pytest.raises(ConfigMismatchError, match="num_classes"):
        load_weights(model, path)
    np.testing.assert_array_equal(to_canonical(model)["head.fc.bias"], params["head.fc.bias"])


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_missing_device_raises(device):
    if device == "gpu" and tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailableError, match=f"tf: no {device} device"):
        environment(device, "float64")


# ---------------------------------------------------------------------------------------------
# Weights, memory-efficient layers, XLA


def test_save_load_round_trip(tiny64, tmp_path):
    model, params, x, _ = tiny64
    path = tmp_path / "tiny.safetensors"
    save_weights(model, path)
    fresh = make_model(TINY, dtype="float64")
    load_weights(fresh, path)
    for name, value in to_canonical(fresh).items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)
    np.testing.assert_array_equal(fresh(nhwc(x)), model(nhwc(x)))


# Besides TINY: bottleneck layers whose 1x1 conv output is kept (input at least twice as wide)
# next to layers that recompute it, and conv_block layers (no bottleneck).
KEEPS_SOME = DenseNetConfig(4, (2, 5), 8, "cifar", 2, 0.5, True, 3, 5)
CONV_BLOCKS = DenseNetConfig(4, (3, 2), 8, "cifar", None, 0.5, True, 3, 5)


def _one_step(config, memory_efficient: bool):
    params = init_params(config, seed=0, dtype=np.float64, randomize_bn=True)
    model = make_model(config, memory_efficient=memory_efficient, dtype="float64")
    from_canonical(model, params)
    rng = np.random.default_rng(4)
    x, y = nhwc(rng.standard_normal((2, 3, 32, 32))), rng.integers(0, config.num_classes, 2)
    _, grad_x, grads = gradients(model, x, y, training=True)  # eager
    from_canonical(model, params)
    optimizer = make_optimizer(model, SGDConfig())
    train_step(model, optimizer, x, y)  # tf.function
    return params, grad_x.numpy(), grads, to_canonical(model)


@pytest.mark.parametrize("config", [TINY, KEEPS_SOME, CONV_BLOCKS], ids=["tiny", "keeps", "conv"])
def test_memory_efficient_equals_plain_and_updates_stats_once(config):
    params, grad_x, grads, after = _one_step(config, memory_efficient=False)
    _, grad_x_me, grads_me, after_me = _one_step(config, memory_efficient=True)
    assert rel(grad_x_me, grad_x) <= 1e-13
    for name in grads:
        np.testing.assert_allclose(grads_me[name], grads[name], rtol=0, atol=1e-13, err_msg=name)
    for name in after:
        np.testing.assert_allclose(after_me[name], after[name], rtol=0, atol=1e-13, err_msg=name)
    # A second update (the recomputation in backward) would move each running mean again by
    # momentum * (batch mean - running mean): the check above is that sensitive.
    last = f"blocks.{len(config.block_config) - 1}.layers.{config.block_config[-1] - 1}"
    for name in after:
        if name.startswith(last) and name.endswith("running_mean"):
            assert np.max(np.abs(after[name] - params[name])) > 1e-3, name


def _peak_bytes(step, *args):
    """Peak TF allocator bytes above those in use before a call, the least of three calls (the
    executor's order, so the peak, can vary from call to call under load)."""
    step(*args)  # trace
    peaks = []
    for _ in range(3):
        try:
            tf.config.experimental.reset_memory_stats("CPU:0")
        except ValueError:
            pytest.fail("no allocator statistics on CPU: conftest sets TF_CPU_ALLOCATOR_USE_BFC")
        start = tf.config.experimental.get_memory_info("CPU:0")["current"]
        tf.nest.map_structure(lambda t: t.numpy(), step(*args))
        peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - start)
    return min(peaks)


def test_memory_efficient_train_step_peak_memory():
    """The memory-efficient train step keeps block outputs, not every layer's concatenation.

    Twelve layers at 48 px, so that activations outweigh a fixed cost both modes share: TF's CPU
    Conv2DBackpropFilter (oneDNN off) takes a ~30 MB patch buffer per call whatever the layer
    size, and with two inter-op threads two of them can be live at once. With six layers that
    was half the memory-efficient peak, and the ratio moved between 0.47 (one inter-op thread)
    and 0.73 (two). Here it is 0.48 with two threads; with tf.recompute_grad around each layer
    (TF held the concatenation gradients' slices until their AddN and ran weight gradients
    last) it was 0.76 at six layers.
    """
    config = DenseNetConfig(16, (12,), 16, "cifar", 4, 0.5, True, 3, 10)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((8, 48, 48, 3)), tf.float32)
    y = tf.constant(rng.integers(0, 10, 8))
    peaks = {}
    for memory_efficient in (False, True):
        model = make_model(config, memory_efficient=memory_efficient)
        optimizer = make_optimizer(model, SGDConfig())
        peaks[memory_efficient] = _peak_bytes(train_step, model, optimizer, x, y)
    assert peaks[True] <= 0.6 * peaks[False], peaks


# ---------------------------------------------------------------------------------------------
# Optimizer


def test_keras_sgd_with_python_floats_would_fail_float64_parity():
    """keras.optimizers.SGD(0.05, momentum=0.9) keeps lr in a float32 variable and casts the
    Python-float momentum through float32; make_optimizer passes NumPy float64 instead."""
    assert float(tf.cast(0.9, tf.float64)) != 0.9  # the cast goes through float32
    case = make_case(TINY, batch=2, image_size=32, steps=3, quantities=("step",))
    oracle, _ = reference.run_case(case)

    def steps(optimizer_for):
        model = make_model(TINY, dtype="float64")
        from_canonical(model, case.params)
        optimizer = optimizer_for(model)
        for k in range(case.steps):
            train_step(model, optimizer, nhwc(case.step_x[k]), case.step_y[k])
        return {f"step/{k}": v for k, v in to_canonical(model).items()}

    def python_floats(model):
        optimizer = keras.optimizers.SGD(learning_rate=case.sgd.lr, momentum=case.sgd.momentum)
        optimizer.build(model.trainable_variables)
        optimizer.coupled_weight_decay = case.sgd.weight_decay
        return optimizer

    ours = steps(lambda model: make_optimizer(model, case.sgd))
    assert max(rel_errors(ours, oracle).values()) <= 1e-13
    assert max(rel_errors(steps(python_floats), oracle).values()) > FLOAT64["step"]
