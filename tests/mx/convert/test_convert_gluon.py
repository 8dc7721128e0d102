"""densenet-convert with the Gluon model zoo: the official model and ours give the same logits.

The zoo's DenseNet class (densenet121 etc. are instances of it) is built small, initialised at
random with BatchNorm statistics randomised (no download), cast to float64 and compared with
ours in eval and train mode: logits must agree to 1e-10. Its last layer is a fixed 7x7 average
pool, the spec's global pool only on a 7x7 map: two blocks on 56x56 images end there.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from densenet_convert import formats, gluon_format
from densenet_mx import weights as mx_weights
from densenet_mx.variants import make_model
from densenet_spec import reference
from densenet_spec.config import get_preset
from densenet_spec.params import init_params

FLOAT64_BOUND = 1e-10  # same arithmetic in both models: only summation order may differ
SMALL = get_preset("densenet121").replace(
    growth_rate=8,
    block_config=(2, 2),
    num_init_features=16,
    bn_size=2,
    num_classes=5,
    **gluon_format.FACTS.fields(),
)
SIZE = 56  # stem /4, one transition /2: a 7x7 map before the zoo's 7x7 average pool


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((3, 3, SIZE, SIZE))


def _official(seed=0):
    net = gluon_format.build_official(SMALL, "float64")
    net(mx.nd.array(_x(), dtype="float64"))  # Gluon infers input channels on the first call
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        shape = p.shape
        if name.endswith(("gamma", "running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, shape), dtype="float64"))
        elif name.endswith(("beta", "running_mean", "bias")):
            p.set_data(mx.nd.array(rng.normal(0, 0.1, shape), dtype="float64"))
    return net


def _ours(tensors, config):
    model = make_model(config, dtype="float64")
    mx_weights.from_canonical(model, {k: v.astype(np.float64) for k, v in tensors.items()})
    return model


def _logits(net, x, train: bool) -> np.ndarray:
    x = mx.nd.array(x, dtype="float64")
    if train:
        with autograd.record(train_mode=True):
            return net(x).asnumpy()
    return net(x).asnumpy()


def _difference(official, ours, train: bool) -> float:
    return float(np.abs(_logits(official, _x(), train) - _logits(ours, _x(), train)).max())


def _oracle_difference(official, tensors, config, train: bool) -> float:
    params = {k: v.astype(np.float64) for k, v in tensors.items()}
    features, _ = reference.forward_features(params, config, _x(1), train)
    return float(np.abs(_logits(official, _x(1), train) - features["logits"]).max())


def test_gluon_to_canonical_gives_equal_logits(tmp_path):
    official = _official()
    official.save_parameters(str(tmp_path / "official.params"))
    tensors, config = formats.read_canonical(tmp_path / "official.params", "gluon")
    assert config == SMALL
    for train in (False, True):
        assert _difference(official, _ours(tensors, config), train) <= FLOAT64_BOUND
        assert _oracle_difference(official, tensors, config, train) <= FLOAT64_BOUND


def test_canonical_to_gluon_loads_in_the_zoo_model(tmp_path):
    params = init_params(SMALL, seed=3, randomize_bn=True, dtype=np.float64)
    assert formats.write_format(tmp_path / "ours.params", "gluon", params, SMALL) == []
    official = _official()
    official.load_parameters(str(tmp_path / "ours.params"))
    for train in (False, True):
        assert _difference(official, _ours(params, SMALL), train) <= FLOAT64_BOUND


def test_zoo_densenet121_is_recognised_as_the_preset(tmp_path):
    from mxnet.gluon.model_zoo import vision

    net = vision.densenet121(pretrained=False)
    net.initialize(ctx=mx.cpu())
    net(mx.nd.zeros((1, 3, 224, 224)))
    net.save_parameters(str(tmp_path / "densenet121.params"))
    tensors, config = formats.read_canonical(tmp_path / "densenet121.params", "gluon")
    assert config == get_preset("densenet121").replace(**gluon_format.FACTS.fields())
    formats.write_format(tmp_path / "back.params", "gluon", tensors, config)
    back = mx.nd.load(str(tmp_path / "back.params"))
    for name, p in net._collect_params_with_prefix().items():
        assert np.array_equal(back[name].asnumpy(), p.data().asnumpy())


def test_exported_symbol_params_are_named_as_unknown_layout(tmp_path):
    from densenet_convert.errors import UnknownLayoutError

    mx.nd.save(str(tmp_path / "x-0000.params"), {"arg:densenet0_conv0_weight": mx.nd.zeros(1)})
    with pytest.raises(UnknownLayoutError, match="save_parameters"):
        formats.read_canonical(tmp_path / "x-0000.params", "gluon")
