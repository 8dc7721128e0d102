"""The `onnx-mx` target's side of a parity case: densenet_spec.driver's adapter protocol, eval only.

    <mx env python> -m densenet_spec.worker densenet_convert.onnx_mx_target <case> <result file>

build() builds densenet_mx's model with the case's weights and exports it with MXNet's exporter
(onnx_export.export_mx_onnx: a twin with Gluon's plain max-pool, every stage a graph output),
checks the graph against the case's config (onnx_export.check_graph: a difference is an
OnnxGraphError, so the run fails with the reason) and opens an onnxruntime session;
stage_outputs runs it. The graph's opset is the one the exporter stamps (the installed onnx's
newest, 22 for onnx 1.17.0; MXNet's translations are written for opsets 12 and 13), read back
from the graph into info["opset"]. Train mode, gradients and optimizer steps are not in an
exported inference graph: asking for them is an ExportTargetError.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

from densenet_convert import onnx_export
from densenet_convert.onnx_target.adapter import ExportedModel, check_case
from densenet_spec.case import Case
from densenet_spec.frameworks import EXPORT_TARGETS

TARGET = EXPORT_TARGETS["onnx-mx"]


class Adapter(ExportedModel):
    """densenet_spec.driver's adapter for the exported model; case.options: "threads"
    (onnxruntime intra-op threads, default 1)."""

    target = TARGET

    def __init__(self, case: Case):
        import mxnet
        import onnx
        import onnxruntime

        check_case(case, TARGET)
        self.case = case
        self.threads = int(case.options.get("threads", 1))
        self._session = None
        self._tmp = tempfile.TemporaryDirectory(prefix="densenet-onnx-mx-")
        self.info = {
            "device": case.device,
            "device_name": platform.processor() or platform.machine(),
            "dtype": case.dtype,
            "target": TARGET.title,
            "versions": {
                "mxnet": mxnet.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "precision": {
                "provider": "CPUExecutionProvider",
                "exporter": "mx.onnx.export_model",
                "exported_model": "a twin DenseNet with Gluon's nn.MaxPool2D (MXNet's NaN-"
                "propagating max-pool has no ONNX translation), the case's weights",
            },
            "num_threads": self.threads,
            # checkpointing (--memory-efficient) changes no eval number: never exported
            "memory_efficient": False,
            "float64": "float32 only: onnxruntime's CPU provider has no float64 kernel for "
            + " or ".join(onnx_export.FLOAT64_MISSING),
        }

    def build(self):
        """The export and its session, made once (eval mode has no state to leak)."""
        if self._session is None:
            from densenet_mx import weights
            from densenet_mx.variants import make_model

            case = self.case
            model = make_model(case.config, case.variant, dtype="float32")
            weights.from_canonical(model, case.params)
            path = Path(self._tmp.name) / "densenet.onnx"
            onnx_export.export_mx_onnx(
                model,
                case.config,
                path,
                image_size=case.x.shape[2],
                batch=case.x.shape[0],
                stages=True,
            )
            graph = self.info["graph"] = onnx_export.check_graph(path, case.config)
            self.info["opset"] = self.info["versions"]["opset"] = graph["opset"]
            self.info["graph_bytes"] = path.stat().st_size
            self._session = onnx_export.session(path, self.threads)
        return self._session
