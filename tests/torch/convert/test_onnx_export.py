"""ONNX export of our torch DenseNet, run in onnxruntime in eval mode, against the float64 oracle.

ONNX Runtime's CPU convolutions are float32 only, so the bound is derived as the harness derives
its float32 bounds (densenet_spec.tolerances): max(floor, safety x the float32 oracle's own error
on this input). The graph is read back: symmetric padding and one BatchNormalization with the
config's epsilon per BN of the spec (torch.onnx's optimizer, when on, folds conv -> BN pairs).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is not in this environment")
pytest.importorskip("onnxruntime", reason="onnxruntime is not in this environment")
pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's dynamo exporter) is missing")

import onnx  # noqa: E402

from densenet_convert import onnx_export  # noqa: E402
from densenet_spec import reference, tolerances  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402
from densenet_torch import weights as torch_weights  # noqa: E402
from densenet_torch.variants import make_model  # noqa: E402

CONFIG = get_preset("tiny")
SIZE, BATCH = 32, 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    params = init_params(CONFIG, seed=0, randomize_bn=True)
    model = make_model(CONFIG)
    torch_weights.from_canonical(model, params)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx_export.export_onnx(model, CONFIG, path, image_size=SIZE, batch=BATCH)
    return path, params, model


def _bound_and_reference(params, x):
    f64, _ = reference.forward_features(
        {k: v.astype(np.float64) for k, v in params.items()}, CONFIG, x.astype(np.float64), False
    )
    f32, _ = reference.forward_features(params, CONFIG, x, False)
    e32 = float(np.abs(f32["logits"] - f64["logits"]).max())
    bound = max(tolerances.FLOAT32_FLOOR["eval"], tolerances.FLOAT32_SAFETY * e32)
    return bound, f64["logits"]


def test_onnxruntime_logits_match_the_oracle_within_the_float32_bound(exported):
    path, params, _ = exported
    summary = onnx_export.check_graph(path, CONFIG)
    assert summary["opset"] == onnx_export.OPSET
    assert summary["nodes"]["BatchNormalization"] == 11
    x = np.random.default_rng(0).standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
    bound, expected = _bound_and_reference(params, x)
    got = onnx_export.run_onnxruntime(path, x)
    assert float(np.abs(got - expected).max()) <= bound  # measured 5.3e-7, bound 1.1e-5


def _mutated(path, tmp_path, edit):
    graph_model = onnx.load(str(path))
    edit(graph_model.graph)
    out = tmp_path / "mutated.onnx"
    onnx.save(graph_model, str(out))
    return out


def test_check_graph_names_asymmetric_padding_and_a_wrong_epsilon(exported, tmp_path):
    path, _, _ = exported

    def same_padding(graph):  # TF's 'same' on the 7x7/2 stem of an even image: (2, 3)
        stem = next(n for n in graph.node if n.op_type == "Conv")
        for a in stem.attribute:
            if a.name == "pads":
                a.ints[:] = [2, 2, 3, 3]

    with pytest.raises(onnx_export.OnnxGraphError, match=r"pads \[2, 2, 3, 3\], spec 3"):
        onnx_export.check_graph(_mutated(path, tmp_path, same_padding), CONFIG)

    def keras_default_epsilon(graph):
        bn = next(n for n in graph.node if n.op_type == "BatchNormalization")
        for a in bn.attribute:
            if a.name == "epsilon":
                a.f = 1e-3

    with pytest.raises(onnx_export.OnnxGraphError, match="BN epsilon 0.001, spec 1e-05"):
        onnx_export.check_graph(_mutated(path, tmp_path, keras_default_epsilon), CONFIG)


def test_the_exporters_optimizer_folds_conv_bn_pairs(exported, tmp_path):
    """torch.onnx's default optimize=True folds the stem's and every norm2 BatchNorm into the
    convolution before it: the logits stay within the bound, the epsilons leave the graph."""
    _, params, model = exported
    path = onnx_export.export_onnx(
        model, CONFIG, tmp_path / "opt.onnx", image_size=SIZE, batch=BATCH, optimize=True
    )
    with pytest.raises(onnx_export.OnnxGraphError, match="6 BatchNormalization nodes"):
        onnx_export.check_graph(path, CONFIG)
    x = np.random.default_rng(1).standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
    bound, expected = _bound_and_reference(params, x)
    assert float(np.abs(onnx_export.run_onnxruntime(path, x) - expected).max()) <= bound
