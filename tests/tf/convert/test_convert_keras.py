"""densenet-convert with keras.applications: the official model and ours give the same logits.

Official models are built with weights=None (nothing downloaded) and randomised, BatchNorm
statistics included; both run in float64 (Keras's dtype policy; BN runs in float64 on the TF
backend), where the logits must agree to 1e-10 in eval and train mode. keras.applications fixes
growth rate 32 and four blocks; the small models use keras.src.applications.densenet.DenseNet
with fewer layers per block (the public DenseNet121 is checked once, for the preset name).
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from densenet_convert import formats, keras_format
from densenet_spec import reference
from densenet_spec.config import get_preset
from densenet_spec.params import init_params
from densenet_tf import weights as tf_weights
from densenet_tf.variants import make_model

FLOAT64_BOUND = 1e-10  # same arithmetic in both models: only summation order may differ
SMALL = get_preset("densenet121").replace(
    block_config=(1, 2, 1, 1), num_classes=5, **keras_format.FACTS.fields()
)


def _randomize(model, seed: int):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, var.shape),
                ]
            )
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    return model


def _ours(tensors, config):
    model = make_model(config, dtype="float64")
    model(np.zeros((1, 32, 32, config.in_channels)))  # build
    tf_weights.from_canonical(model, {k: v.astype(np.float64) for k, v in tensors.items()})
    return model


def _x(config, seed=0):
    return np.random.default_rng(seed).standard_normal((3, 32, 32, config.in_channels))


def _difference(official, ours, config, train: bool) -> float:
    x = _x(config)
    a = np.asarray(official(x, training=train))
    b = np.asarray(ours(x, training=train))
    return float(np.abs(a - b).max())


def _oracle_difference(official, tensors, config, train: bool) -> float:
    x = _x(config, 1)
    a = np.asarray(official(x, training=train))
    params = {k: v.astype(np.float64) for k, v in tensors.items()}
    features, _ = reference.forward_features(params, config, x.transpose(0, 3, 1, 2), train)
    return float(np.abs(a - features["logits"]).max())


@pytest.fixture(scope="module")
def official():
    return _randomize(keras_format.build_official(SMALL, "float64", image_size=32), 0)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".legacy.h5"])
def test_keras_to_canonical_gives_equal_logits(official, tmp_path, suffix):
    path = tmp_path / f"official{suffix}"
    if suffix == ".weights.h5":
        official.save_weights(path)
    elif suffix == ".keras":
        official.save(path)
    else:  # Keras 2's HDF5 layout (root attribute layer_names), as Keras 3 still writes it
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, official)
    tensors, config = formats.read_canonical(path, "keras")
    assert config == SMALL
    for train in (False, True):
        assert _difference(official, _ours(tensors, config), config, train) <= FLOAT64_BOUND
        assert _oracle_difference(official, tensors, config, train) <= FLOAT64_BOUND


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_canonical_to_keras_loads_in_keras_applications(tmp_path, suffix):
    params = init_params(SMALL, seed=3, randomize_bn=True, dtype=np.float64)
    warnings = formats.write_format(tmp_path / f"ours{suffix}", "keras", params, SMALL)
    assert warnings == []  # the config has keras.applications' BatchNorm
    official = keras_format.build_official(SMALL, "float64", image_size=32)
    if suffix == ".keras":
        loaded = keras.saving.load_model(tmp_path / f"ours{suffix}")
        official.set_weights(loaded.get_weights())
    else:
        official.load_weights(tmp_path / f"ours{suffix}")
    for train in (False, True):
        assert _difference(official, _ours(params, SMALL), SMALL, train) <= FLOAT64_BOUND


def test_public_densenet121_is_recognised_as_the_preset(tmp_path):
    official = keras.applications.DenseNet121(weights=None, classifier_activation=None)
    official.save_weights(tmp_path / "densenet121.weights.h5")
    tensors, config = formats.read_canonical(tmp_path / "densenet121.weights.h5", "keras")
    assert config == get_preset("densenet121").replace(**keras_format.FACTS.fields())
    back = keras_format.from_canonical(tensors, config)
    fresh = keras.applications.DenseNet121(weights=None, classifier_activation=None)
    keras_format.set_official_weights(fresh, back)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), official.get_weights()))


def test_torch_batch_norm_weights_warn_when_written_for_keras(tmp_path):
    config = SMALL.replace(bn_eps=1e-5, bn_momentum=0.1, bn_running_var="unbiased")
    params = init_params(config, seed=1)
    warnings = formats.write_format(tmp_path / "w.weights.h5", "keras", params, config)
    assert any("epsilon 1.001e-05" in w for w in warnings)
    assert any("momentum 0.01" in w for w in warnings)
