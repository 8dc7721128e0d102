"""ONNX export of our PyTorch DenseNet (eval mode), run in onnxruntime, with the graph checked.

An export is where silent differences hide: a converter may write asymmetric 'same' padding
(TF's (2, 3) for the 7x7/2 stem on even sizes, where the spec pads (3, 3)) or fold a BatchNorm
into the convolution before it (the stem's conv -> BN), dropping its epsilon. check_graph reads
the exported graph back and names each such difference; the logits are compared with the oracle
by the caller (tests/torch/convert/test_onnx_export.py; the harness's onnx target).
export_mx_onnx exports our MXNet model with MXNet's own exporter (tests/mx/convert; the harness's
onnx-mx target); the TF and JAX exporters tried, and why they are not here, are in
docs/onnx_export.md.

    path = export_onnx(model, config, "densenet.onnx", image_size=64)
    check_graph("densenet.onnx", config)          # raises OnnxGraphError on a difference
    logits = run_onnxruntime("densenet.onnx", x)  # x: NCHW float32

With stages=True (export_onnx, export_mx_onnx) the graph's outputs are every stage of
densenet_spec.params.stage_names (the harness's onnx and onnx-mx targets compare each with the
oracle), logits last.

ONNX Runtime (1.32, CPUExecutionProvider) has no float64 kernel for Conv or AveragePool
(BatchNormalization, Relu, MaxPool, Concat, ReduceMean and Gemm have one), so an exported
DenseNet runs in float32 only (FLOAT64_MISSING).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from densenet_convert.errors import ConvertError
from densenet_spec.config import DenseNetConfig
from densenet_spec.params import param_specs, stage_names

OPSET = 18  # torch.onnx's dynamo exporter's default; BatchNormalization-15, Conv-11, Pad-18
# Ops of the exported DenseNet without a float64 kernel on onnxruntime's CPU provider (measured:
# a one-node double graph per op type, onnxruntime 1.32: NOT_IMPLEMENTED for these two only).
FLOAT64_MISSING = ("Conv", "AveragePool")


class OnnxGraphError(ConvertError):
    """The exported graph differs from the spec (padding, BatchNorm epsilon or count)."""


def export_onnx(
    model,
    config: DenseNetConfig,
    path,
    *,
    image_size: int,
    batch: int = 1,
    optimize: bool = False,
    stages: bool = False,
) -> Path:
    """torch.onnx.export (dynamo exporter, opset OPSET) of `model` in eval mode, atomically.

    stages: the graph outputs every stage (stage_names(config), logits last), not only logits.

    The shapes are fixed at export (check_input_shape runs once, on the example). optimize=False:
    torch.onnx's graph optimizer (optimize=True, its default) folds every BatchNorm that follows
    a convolution (the stem's, each bottleneck's norm2) into that convolution's weights, so the
    graph no longer shows their epsilon; check_graph then reports them missing."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.zeros(
        batch, config.in_channels, image_size, image_size, dtype=next(model.parameters()).dtype
    )
    names = output_names(config, stages)
    if stages:
        model = _with_stage_outputs(model)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["images"],
            output_names=names,
            external_data=False,
            optimize=optimize,
        )
        program.save(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def output_names(config: DenseNetConfig, stages: bool) -> list[str]:
    """The graph's output names: ["logits"], or every stage name in forward order."""
    return stage_names(config) if stages else ["logits"]


def _with_stage_outputs(model):
    """`model` whose forward returns stage_outputs(x) as a tuple (ONNX outputs are positional)."""
    import torch

    class StageOutputs(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return tuple(self.model.stage_outputs(x).values())

    return StageOutputs(model).eval()


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def check_graph(path, config: DenseNetConfig) -> dict:
    """The exported graph's padding, pooling and BatchNorm against the spec.

    Every Conv and MaxPool must pad symmetrically by (kernel - 1) // 2 (7x7: 3, 3x3: 1, 1x1: 0;
    explicit pads, no auto_pad), AveragePool (transitions) must not pad, and there must be one
    BatchNormalization per BN of the spec, each with the config's epsilon. Returns a summary
    (opset, node counts, epsilons) for the report; raises OnnxGraphError naming each difference.
    """
    import onnx

    graph_model = onnx.load(str(path))
    opset = next(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx"))
    inits = {i.name: i for i in graph_model.graph.initializer}
    problems, counts, epsilons = [], {}, set()
    for node in graph_model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        attrs = _attributes(node)
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            auto = attrs.get("auto_pad", b"NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            if auto != "NOTSET":
                problems.append(f"{node.name}: auto_pad {auto} (padding left to the runtime)")
            kernel = attrs.get("kernel_shape")
            if kernel is None and node.input[1] in inits:  # Conv may infer it from the weight
                kernel = list(inits[node.input[1]].dims[2:])
            pads = list(attrs.get("pads", [0] * 4))
            want = 0 if node.op_type == "AveragePool" else (kernel[0] - 1) // 2
            if pads != [want] * 4:
                problems.append(f"{node.name} ({node.op_type} {kernel}): pads {pads}, spec {want}")
        elif node.op_type == "BatchNormalization":
            eps = attrs.get("epsilon", 1e-5)
            epsilons.add(float(np.float32(eps)))
            if not np.isclose(eps, config.bn_eps, rtol=1e-6, atol=0):
                problems.append(f"{node.name}: BN epsilon {eps:g}, spec {config.bn_eps:g}")
    num_bn = sum(1 for s in param_specs(config) if s.kind == "bn_running_var")
    if counts.get("BatchNormalization", 0) != num_bn:
        problems.append(
            f"{counts.get('BatchNormalization', 0)} BatchNormalization nodes, the spec has "
            f"{num_bn} (a BatchNorm folded into a convolution?)"
        )
    if problems:
        raise OnnxGraphError(f"{path}: " + "; ".join(problems[:10]))
    return {"opset": opset, "nodes": counts, "bn_epsilons": sorted(epsilons)}


def session(path, threads: int = 1):
    """An onnxruntime InferenceSession on the CPU provider (its default graph optimisations,
    as a user runs it), `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(path, x: np.ndarray) -> np.ndarray:
    """Logits of the exported model on `x` (NCHW), on onnxruntime's CPU provider, one thread."""
    (logits,) = session(path).run(["logits"], {"images": np.ascontiguousarray(x)})
    return logits


# MXNet 1.9.1's exporter (mx.onnx.export_model) imports onnx.mapping, removed in onnx 1.19:
# onnx 1.17.0 is the tested version (numpy 1.23, Python 3.11). Its translations are written for
# opsets 12 and 13; the model is stamped with the installed onnx's newest opset (22 for 1.17).
MX_INPUT = "data"  # the input name of a Gluon HybridBlock's exported symbol


def export_mx_onnx(
    model, config: DenseNetConfig, path, *, image_size: int, batch: int = 1, stages: bool = False
) -> Path:
    """mx.onnx.export_model of our MXNet Gluon DenseNet (eval mode, float32), atomically.

    stages: the graph outputs every stage (stage_names(config), logits last), not only logits.

    The NaN-propagating stem max-pool (densenet_mx.max_pool.NaNMaxPool2D) has no ONNX
    translation (MXNet's `_not_equal`), so the export is of a twin DenseNet with Gluon's own
    nn.MaxPool2D and the same weights (finite inputs: the same numbers; onnxruntime's MaxPool
    skips NaN as MXNet's does). The graph's input is renamed "images" and its outputs "logits"
    (run_onnxruntime's names) or the stage names, and the weights are taken out of the graph
    inputs (onnxruntime warns otherwise and cannot fold them as constants). With stages=True the
    exported block is a wrapper whose hybrid_forward returns every stage as a tuple, in
    stage_names order (MXNet exports a tuple as a grouped symbol: ONNX outputs in that order),
    so the outputs are named positionally. Shapes are fixed at export."""
    import tempfile
    import warnings

    import mxnet as mx
    import mxnet.onnx as mx_onnx
    import onnx
    from mxnet.gluon import nn

    from densenet_mx import weights as mx_weights
    from densenet_mx.model import DenseNet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    twin = DenseNet(config, running_stats=None, max_pool_layer=nn.MaxPool2D)
    twin.initialize(ctx=mx.cpu())
    tensors = {k: v.astype(np.float32) for k, v in mx_weights.to_canonical(model).items()}
    mx_weights.from_canonical(twin, tensors)
    block = _mx_stage_outputs(twin) if stages else twin
    block.hybridize()
    shape = (batch, config.in_channels, image_size, image_size)
    block(mx.nd.zeros(shape, dtype="float32"))  # traces the graph that export() writes
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with tempfile.TemporaryDirectory() as work, warnings.catch_warnings():
            # MXNet's translations call onnx.mapping, deprecated since onnx 1.13, per tensor
            warnings.simplefilter("ignore", DeprecationWarning)
            block.export(os.path.join(work, "densenet"), epoch=0)
            mx_onnx.export_model(
                os.path.join(work, "densenet-symbol.json"),
                os.path.join(work, "densenet-0000.params"),
                in_shapes=[shape],
                in_types=[np.float32],
                onnx_file_path=str(tmp),
            )
        graph_model = onnx.load(str(tmp))
        _rename_mx_graph(graph_model.graph, output_names(config, stages))
        onnx.checker.check_model(graph_model)
        onnx.save(graph_model, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _mx_stage_outputs(model):
    """A HybridBlock around our MXNet DenseNet whose hybrid_forward returns every stage, in
    stage_names order, as a tuple: model.stage_outputs's computation, written with F so that it
    traces into one graph (stage_outputs itself runs stage by stage and returns a dict)."""
    from mxnet.gluon import nn

    class StageOutputs(nn.HybridBlock):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def hybrid_forward(self, F, x):
            m = self.model
            x = m.stem(x)
            out = [x]
            for i, block in enumerate(m.blocks):
                features = {}
                # DenseBlock's own layer loop, traced (its forward with a dict runs in nd)
                x = block.hybrid_forward(F, x, features)
                out += [features[f"layers.{j}"] for j in range(len(block.layers))]
                out.append(x)
                if i < len(m.transitions):
                    x = m.transitions[i](x)
                    out.append(x)
            head = m.head
            x = head.flatten(head.pool(head.relu(head.norm(x))))
            return (*out, x, head.fc(x))

    return StageOutputs(model)


def _rename_mx_graph(graph, outputs=("logits",)) -> None:
    """MXNet's names to ours: input "data" -> "images", the outputs -> `outputs` by position;
    the weights (initializers, which MXNet's exporter also lists as inputs) leave the graph
    inputs."""
    mx_outputs = [o.name for o in graph.output]
    if len(mx_outputs) != len(outputs) or len(set(mx_outputs)) != len(mx_outputs):
        raise ConvertError(
            f"MXNet's export has outputs {mx_outputs}; expected {len(outputs)} distinct ones "
            f"({', '.join(outputs)})"
        )
    names = {MX_INPUT: "images", **dict(zip(mx_outputs, outputs))}
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    del graph.input[:]
    graph.input.extend(inputs)
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
