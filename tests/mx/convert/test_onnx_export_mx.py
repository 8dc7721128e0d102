"""ONNX export of our MXNet DenseNet with MXNet's own exporter (mx.onnx.export_model), run in
onnxruntime in eval mode against the float64 oracle, the graph read back by check_graph.

MXNet 1.9.1's exporter needs onnx < 1.19 (it imports onnx.mapping): requirements/mx.txt pins
onnx 1.17.0 and onnxruntime 1.32.0 beside numpy 1.23.5. Without them the module is skipped.
The bound is derived as in tests/torch/convert/test_onnx_export.py: onnxruntime's CPU
convolutions are float32 only. export_mx_onnx(..., stages=True) (the harness's onnx-mx target)
names every stage as a graph output; each is checked here against MXNet's own stage_outputs and
the oracle, so a wrong positional mapping of MXNet's outputs to stage names fails.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not in this environment (requirements/mx.txt)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not in this environment")
pytest.importorskip("mxnet.onnx", reason="this MXNet has no ONNX exporter")

from densenet_convert import onnx_export  # noqa: E402
from densenet_mx import weights as mx_weights  # noqa: E402
from densenet_mx.variants import make_model  # noqa: E402
from densenet_spec import reference, tolerances  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.params import init_params, stage_names  # noqa: E402

CONFIG = get_preset("tiny")  # ImageNet stem: 7x7/2 conv pad 3, 3x3/2 max-pool pad 1
SIZE, BATCH = 32, 2


def _export(config, path, **kwargs):
    params = init_params(config, seed=0, randomize_bn=True)
    model = make_model(config)
    mx_weights.from_canonical(model, params)
    onnx_export.export_mx_onnx(model, config, path, image_size=SIZE, batch=BATCH, **kwargs)
    return params, model


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_mx") / "tiny.onnx"
    params, model = _export(CONFIG, path)
    return path, params, model


def test_onnxruntime_logits_match_the_oracle_and_mxnet(exported):
    path, params, model = exported
    summary = onnx_export.check_graph(path, CONFIG)  # symmetric pads, 11 BNs with eps 1e-5
    assert summary["opset"] == onnx.defs.onnx_opset_version()  # 22 with onnx 1.17.0
    assert summary["nodes"]["BatchNormalization"] == 11
    x = np.random.default_rng(0).standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
    f64, _ = reference.forward_features(
        {k: v.astype(np.float64) for k, v in params.items()}, CONFIG, x.astype(np.float64), False
    )
    f32, _ = reference.forward_features(params, CONFIG, x, False)
    e32 = float(np.abs(f32["logits"] - f64["logits"]).max())
    bound = max(tolerances.FLOAT32_FLOOR["eval"], tolerances.FLOAT32_SAFETY * e32)
    got = onnx_export.run_onnxruntime(path, x)
    assert float(np.abs(got - f64["logits"]).max()) <= bound  # measured 6.6e-7, bound 1.1e-5
    ours = model(mx.nd.array(x)).asnumpy()
    assert float(np.abs(got - ours).max()) <= bound  # measured 6.0e-7


def test_the_graph_has_no_weight_inputs_and_our_names(exported):
    path, _, _ = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["logits"]


def test_a_config_epsilon_reaches_the_graph(tmp_path):
    """keras.applications' BN epsilon (1.001e-5) is written into every BatchNormalization, and
    check_graph tells it from the spec's default."""
    keras_eps = CONFIG.replace(bn_eps=1.001e-5)
    path = tmp_path / "eps.onnx"
    _export(keras_eps, path)
    assert onnx_export.check_graph(path, keras_eps)["bn_epsilons"] == [float(np.float32(1.001e-5))]
    with pytest.raises(onnx_export.OnnxGraphError, match="BN epsilon 1.001e-05, spec 1e-05"):
        onnx_export.check_graph(path, CONFIG)


STAGE_CONFIGS = {
    "tiny": CONFIG,
    "tiny-cifar-stem": CONFIG.replace(stem="cifar"),  # the stem is one conv, no BN, no pool
    "d2l": get_preset("d2l"),  # conv_block layers (no bottleneck), 1 channel, 4 blocks
}


@pytest.mark.parametrize("name", list(STAGE_CONFIGS))
def test_every_stage_is_a_named_output_that_matches_mxnet_and_the_oracle(tmp_path, name):
    """stages=True: the graph's outputs are stage_names(config) in order (logits last), and each
    holds that stage: the same numbers as MXNet's own stage_outputs and the oracle's stage, within
    the derived float32 bound (a positional mix-up of MXNet's outputs fails by orders of
    magnitude: neighbouring stages differ in shape or values)."""
    config = STAGE_CONFIGS[name]
    path = tmp_path / "stages.onnx"
    params, model = _export(config, path, stages=True)
    graph = onnx.load(str(path)).graph
    names = stage_names(config)
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == names
    onnx_export.check_graph(path, config)  # still every BN, symmetric pads
    x = np.random.default_rng(1).standard_normal((BATCH, config.in_channels, SIZE, SIZE))
    x = x.astype(np.float32)
    session = onnx_export.session(path)
    got = dict(zip(names, session.run(names, {"images": x})))
    ours = {k: v.asnumpy() for k, v in model.stage_outputs(mx.nd.array(x)).items()}
    f64, _ = reference.forward_features(
        {k: v.astype(np.float64) for k, v in params.items()}, config, x.astype(np.float64), False
    )
    f32, _ = reference.forward_features(params, config, x, False)
    assert list(ours) == names
    for name in names:
        bound = max(
            tolerances.FLOAT32_FLOOR["eval"], tolerances.FLOAT32_SAFETY * _rel(f32[name], f64[name])
        )
        assert got[name].shape == ours[name].shape == f64[name].shape, name
        assert _rel(got[name], ours[name]) <= bound, name
        assert _rel(got[name], f64[name]) <= bound, name


def test_the_logits_only_export_is_unchanged_by_the_stages_option(exported, tmp_path):
    """Callers without stages=True get the one-output graph; its logits equal the stages graph's."""
    path, _, _ = exported
    staged = tmp_path / "stages.onnx"
    _export(CONFIG, staged, stages=True)
    x = np.random.default_rng(2).standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
    (logits,) = onnx_export.session(staged).run(["logits"], {"images": x})
    np.testing.assert_allclose(onnx_export.run_onnxruntime(path, x), logits, rtol=0, atol=1e-6)
