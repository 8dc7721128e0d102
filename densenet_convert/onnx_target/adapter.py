"""The `onnx` target's side of a parity case: densenet_spec.driver's adapter protocol, eval only.

    <torch env python> -m densenet_spec.worker densenet_convert.onnx_target <case> <result file>

build() exports densenet_torch's model with the case's weights (torch.onnx, dynamo exporter,
opset onnx_export.OPSET, every stage a graph output), checks the graph against the case's config
(onnx_export.check_graph: a difference is an OnnxGraphError, so the run fails with the reason)
and opens an onnxruntime session; stage_outputs runs it. Train mode, gradients and optimizer
steps are not in an exported inference graph: asking for them is an ExportTargetError.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import numpy as np

from densenet_convert import onnx_export
from densenet_convert.errors import ExportTargetError
from densenet_spec.case import Case
from densenet_spec.frameworks import EXPORT_TARGETS

TARGET = EXPORT_TARGETS["onnx"]


def check_case(case: Case, target=TARGET) -> None:
    """ExportTargetError unless the target can run this case (the harness checks it up front)."""
    problems = target.cannot_run(case.quantities, case.dtype, case.device)
    if problems:
        raise ExportTargetError(
            f"{target.name} cannot run " + "; ".join(problems) + f": {target.why}"
        )


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The mean cross-entropy in the logits' dtype (the spec's loss; onnx graphs stop at logits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y].mean(dtype=logits.dtype)


class ExportedModel:
    """What every export target's adapter shares: an onnxruntime session from build(), NumPy
    float32 images and int64 labels in, eval-mode stages out, everything else refused."""

    target = TARGET
    pieces_unavailable = "an exported inference graph computes no gradients"

    def images(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def labels(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.int64)

    def stage_outputs(self, session, x: np.ndarray, training: bool) -> dict:
        if training:
            raise ExportTargetError(f"{self.target.name}: the exported graph is eval mode only")
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {"images": x})))

    def loss(self, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
        return cross_entropy(logits, y)

    def _no(self, *args, **kwargs):
        raise ExportTargetError(f"{self.target.name}: {self.target.why}")

    gradients = make_optimizer = train_step = to_canonical = _no

    def to_numpy(self, t) -> np.ndarray:
        return np.asarray(t)


class Adapter(ExportedModel):
    """densenet_spec.driver's adapter for the exported model; case.options: "threads"
    (onnxruntime intra-op threads, default 1), "onnx_optimize" (torch.onnx's own graph optimizer,
    off by default: it folds conv -> BatchNorm pairs, and check_graph then fails the run)."""

    def __init__(self, case: Case):
        import onnx
        import onnxruntime
        import torch

        check_case(case)
        self.case = case
        self.threads = int(case.options.get("threads", 1))
        self.optimize = bool(case.options.get("onnx_optimize", False))
        self._session = None
        self._tmp = tempfile.TemporaryDirectory(prefix="densenet-onnx-")
        self.info = {
            "device": case.device,
            "device_name": platform.processor() or platform.machine(),
            "dtype": case.dtype,
            "target": TARGET.title,
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "opset": onnx_export.OPSET,
            },
            "precision": {
                "provider": "CPUExecutionProvider",
                "exporter": "torch.onnx dynamo",
                "exporter_optimize": self.optimize,
            },
            "num_threads": self.threads,
            # checkpointing (--memory-efficient) changes no eval number: never exported
            "memory_efficient": False,
            "opset": onnx_export.OPSET,
            "float64": "float32 only: onnxruntime's CPU provider has no float64 kernel for "
            + " or ".join(onnx_export.FLOAT64_MISSING),
        }

    def build(self):
        """The export and its session, made once (eval mode has no state to leak)."""
        if self._session is None:
            import torch

            from densenet_torch import weights
            from densenet_torch.variants import make_model

            case = self.case
            torch.set_num_threads(self.threads)
            model = make_model(case.config, case.variant, dtype=torch.float32)
            weights.from_canonical(model, case.params)
            path = Path(self._tmp.name) / "densenet.onnx"
            onnx_export.export_onnx(
                model,
                case.config,
                path,
                image_size=case.x.shape[2],
                batch=case.x.shape[0],
                optimize=self.optimize,
                stages=True,
            )
            self.info["graph"] = onnx_export.check_graph(path, case.config)
            self.info["graph_bytes"] = path.stat().st_size
            self._session = onnx_export.session(path, self.threads)
        return self._session
