"""The framework-neutral parity case and result files that the harness and workers exchange.

A case is a folder: case.json (config, dtype, device, optimizer, what to compute),
weights.safetensors (the canonical weight file) and inputs.safetensors (x, y for the
forward/gradient checks and step_x, step_y for K optimizer steps, all NCHW). A worker answers
with one safetensors file of results keyed as in result_keys() and a JSON `info` in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes

from densenet_spec.config import DenseNetConfig
from densenet_spec.params import param_specs, stage_names, trainable_names
from densenet_spec.weightfile import atomic_write_bytes, load_weights, save_weights

QUANTITIES = ("eval", "train", "grad", "step")
DEVICES = ("cpu", "gpu", "tpu")


@dataclass(frozen=True)
class SGDConfig:
    """The spec's optimizer: SGD with momentum at a constant learning rate, coupled L2 decay.

    buf = momentum * buf + (grad + weight_decay * param);  param -= lr * buf   (buf starts at 0)
    torch.optim.SGD and optax.sgd keep lr outside the buffer; Keras and MXNet keep it inside
    (v = momentum * v - lr * g; param += v). At a constant lr both give identical updates.
    weight_decay applies to every trainable tensor (BN gamma/beta and biases too), as torch does.
    The loss is the mean cross-entropy over the batch; MXNet's Trainer.step(batch_size) divides
    gradients by batch_size, so a mean loss is stepped with step(1).
    """

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4

    def __post_init__(self):
        import math

        from densenet_spec.errors import ConfigError

        for name, ok, interval in (
            ("lr", lambda v: v > 0, "(0, inf)"),
            ("momentum", lambda v: 0 <= v < 1, "[0, 1)"),
            ("weight_decay", lambda v: v >= 0, "[0, inf)"),
        ):
            v = getattr(self, name)
            real = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            if not real or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"SGD {name} must be a finite number in {interval}, got {v!r}")
            object.__setattr__(self, name, float(v))


@dataclass
class Case:
    config: DenseNetConfig
    params: dict  # canonical name -> array (dtype)
    x: np.ndarray  # (N, C, H, W)
    y: np.ndarray  # (N,) int64 labels
    step_x: np.ndarray  # (K, N, C, H, W)
    step_y: np.ndarray  # (K, N)
    dtype: str = "float64"
    device: str = "cpu"
    sgd: SGDConfig = field(default_factory=SGDConfig)
    quantities: tuple = QUANTITIES
    memory_efficient: bool = False
    variant: str = "plain"  # densenet_spec.frameworks.VARIANTS: the teaching model or the fast one
    # Switches, e.g. {"hybridize": true}. Read by the driver, not the adapter: "pieces" (report
    # every ReLU's input with the gradients: pieces.py), "driver_mutate" (the self-check's
    # gradient-only mutation, applied by the driver: driver.DRIVER_MUTATIONS).
    options: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.step_x.shape[0])


def write_case(case: Case, folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "weights.safetensors", case.params, case.config)
    inputs = {
        "x": np.ascontiguousarray(case.x),
        "y": np.ascontiguousarray(case.y, dtype=np.int64),
        "step_x": np.ascontiguousarray(case.step_x),
        "step_y": np.ascontiguousarray(case.step_y, dtype=np.int64),
    }
    atomic_write_bytes(folder / "inputs.safetensors", _safetensors_bytes(inputs))
    meta = {
        "config": case.config.to_dict(),
        "dtype": case.dtype,
        "device": case.device,
        "sgd": vars(case.sgd),
        "quantities": list(case.quantities),
        "memory_efficient": case.memory_efficient,
        "variant": case.variant,
        "options": case.options,
    }
    atomic_write_bytes(folder / "case.json", json.dumps(meta, indent=2).encode())
    return folder


def read_case(folder) -> Case:
    folder = Path(folder)
    meta = json.loads((folder / "case.json").read_text())
    config = DenseNetConfig.from_dict(meta["config"])
    params, _ = load_weights(folder / "weights.safetensors", config, meta["dtype"])
    with safe_open(str(folder / "inputs.safetensors"), framework="np") as f:
        inputs = {k: f.get_tensor(k) for k in f.keys()}
    return Case(
        config=config,
        params=params,
        x=inputs["x"],
        y=inputs["y"],
        step_x=inputs["step_x"],
        step_y=inputs["step_y"],
        dtype=meta["dtype"],
        device=meta["device"],
        sgd=SGDConfig(**meta["sgd"]),
        quantities=tuple(meta["quantities"]),
        memory_efficient=meta["memory_efficient"],
        variant=meta.get("variant", "plain"),
        options=meta.get("options", {}),
    )


def relu_names(config: DenseNetConfig) -> list[str]:
    """Every BatchNorm in forward order; each feeds one ReLU, which is named after it."""
    return [s.name[: -len(".weight")] for s in param_specs(config) if s.kind == "bn_weight"]


def wants_pieces(case: Case) -> bool:
    """Does this case ask the worker for the linear piece of its gradient passes (pieces.py)?"""
    return bool(case.options.get("pieces")) and "grad" in case.quantities


def wants_step_pieces(case: Case) -> bool:
    """...and the piece of every SGD step's forward pass (step_piece/<k>/<bn>, pieces.py)?"""
    return bool(case.options.get("pieces")) and "step" in case.quantities and case.steps > 0


def records_pieces(case: Case) -> bool:
    """Must an adapter's gradients() return preactivations (driver.py): the case asks for the
    pieces of its gradient passes or of its SGD steps."""
    return wants_pieces(case) or wants_step_pieces(case)


def without_pieces(case: Case) -> Case:
    """The same case without the "pieces" option: what a worker that cannot report them runs."""
    import dataclasses

    options = {k: v for k, v in case.options.items() if k != "pieces"}
    return dataclasses.replace(case, options=options)


def result_keys(case: Case) -> list[str]:
    """Every key a worker must return for this case, in forward (then backward) order.

    eval/<stage>, train/<stage>: per-stage outputs (NCHW; head (N, C); logits (N, classes))
    eval_grad/input:             d loss / d x with BatchNorm in eval mode
    train_grad/input, train_grad/<param>: gradients in train mode, canonical layout
    eval_piece/<bn>, train_piece/<bn>: with the "pieces" option, every BatchNorm's output (the
                                 input of the ReLU after it, NCHW) from the forward pass of that
                                 mode's gradients: the linear piece they were taken on (pieces.py)
    step/<name>:                 every parameter and BN running statistic after case.steps
                                 SGD steps on step_x[k], step_y[k] (train mode), from the weights
    step_piece/<k>/<bn>:         with the "pieces" option and steps, every BatchNorm's output
                                 (NCHW) in the forward pass of SGD step k (0-based): its piece
    loss/eval, loss/train:       the mean cross-entropy, shape (1,)
    """
    c = case.config
    keys: list[str] = []
    if "eval" in case.quantities:
        keys += [f"eval/{s}" for s in stage_names(c)] + ["loss/eval"]
    if "train" in case.quantities:
        keys += [f"train/{s}" for s in stage_names(c)] + ["loss/train"]
    if "grad" in case.quantities:
        keys += ["eval_grad/input", "train_grad/input"]
        keys += [f"train_grad/{n}" for n in trainable_names(c)]
    if wants_pieces(case):
        keys += [f"{mode}_piece/{n}" for mode in ("eval", "train") for n in relu_names(c)]
    if "step" in case.quantities:
        keys += [f"step/{s.name}" for s in param_specs(c)]
    if wants_step_pieces(case):
        keys += [f"step_piece/{k}/{n}" for k in range(case.steps) for n in relu_names(c)]
    return keys


def write_results(path, results: dict, info: dict) -> None:
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in results.items()}
    atomic_write_bytes(path, _safetensors_bytes(arrays, metadata={"info": json.dumps(info)}))


def read_results(path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="np") as f:
        info = json.loads((f.metadata() or {}).get("info", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, info


def check_results(case: Case, results: dict) -> None:
    """A worker's results must hold exactly result_keys(case) with the right shapes."""
    want = result_keys(case)
    missing = [k for k in want if k not in results]
    extra = [k for k in results if k not in want]
    if missing or extra:
        raise ValueError(f"worker results: missing {missing[:8]}..., unexpected {extra[:8]}")


def make_case(
    config: DenseNetConfig,
    *,
    batch: int = 2,
    image_size: int = 32,
    dtype: str = "float64",
    device: str = "cpu",
    seed: int = 0,
    steps: int = 1,
    quantities=QUANTITIES,
    sgd: SGDConfig | None = None,
    memory_efficient: bool = False,
    variant: str = "plain",
    options: dict | None = None,
    params: dict | None = None,
    batches: tuple[np.ndarray, np.ndarray] | None = None,
) -> Case:
    """A seeded case: randomised BN (so every BN term matters), normal inputs, uniform labels.

    The first optimizer step uses the same batch as the forward/gradient checks. params: given
    canonical weights (densenet-parity --weights) instead of random ones, checked against the
    config (every name and shape) and cast to dtype; the inputs are the same either way.
    batches: (inputs, labels) of max(steps, 1) real batches (data.training_batches) instead of
    random ones: the first is the forward/gradient batch, the first `steps` the SGD steps'.
    """
    from densenet_spec.config import check_input_shape
    from densenet_spec.params import init_params

    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if device not in DEVICES:
        from densenet_spec.errors import DeviceUnavailableError

        raise DeviceUnavailableError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    from densenet_spec.frameworks import VARIANTS

    if variant not in VARIANTS:
        from densenet_spec.errors import UnknownVariantError

        raise UnknownVariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    shape = (batch, config.in_channels, image_size, image_size)
    check_input_shape(config, shape, training=True)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, config.num_classes, batch).astype(np.int64)
    step_x = rng.standard_normal((steps,) + shape).astype(dtype)
    step_y = rng.integers(0, config.num_classes, (steps, batch)).astype(np.int64)
    if steps:
        step_x[0], step_y[0] = x, y
    if batches is not None:
        bx, by = batches
        if bx.shape[1:] != shape or len(bx) < max(steps, 1) or by.shape != (len(bx), batch):
            raise ValueError(f"batches {bx.shape} / {by.shape} do not fit {steps} x {shape}")
        x, y = np.asarray(bx[0], dtype), np.asarray(by[0], np.int64)
        step_x, step_y = np.asarray(bx[:steps], dtype), np.asarray(by[:steps], np.int64)
    if params is None:
        params = init_params(config, seed, dtype, randomize_bn=True)
    else:
        from densenet_spec.weightfile import check_tensors

        check_tensors(params, config)  # WeightKeysError names what differs
        params = {s.name: np.asarray(params[s.name], dtype=dtype) for s in param_specs(config)}
    return Case(
        config=config,
        params=params,
        x=x,
        y=y,
        step_x=step_x,
        step_y=step_y,
        dtype=dtype,
        device=device,
        sgd=sgd or SGDConfig(),
        quantities=tuple(quantities),
        memory_efficient=memory_efficient,
        variant=variant,
        options=options or {},
    )


def describe_inputs(case: Case) -> str:
    """Where the case's batches come from, and a replica case's data parallelism, for reports."""
    o = case.options
    out = f"{o['data']} training batches" if o.get("data") else "random inputs"
    if int(o.get("replicas", 1)) > 1:
        launch = "a process each" if o.get("processes") else "one process where the engine can"
        out += (
            f", {o['replicas']} replicas ({o.get('bn_sync', 'synchronised')} BatchNorm, "
            f"{o.get('buffers', 'broadcast')} running statistics, {launch})"
        )
    return out


def as_dtype(case: Case, dtype: str) -> Case:
    """The same case in another dtype: float32 -> float64 is exact (a float32 run's reference)."""
    import dataclasses

    if case.dtype == dtype:
        return case
    return dataclasses.replace(
        case,
        params={k: np.asarray(v, dtype=dtype) for k, v in case.params.items()},
        x=np.asarray(case.x, dtype=dtype),
        step_x=np.asarray(case.step_x, dtype=dtype),
        dtype=dtype,
    )


def _parity_cases() -> dict:
    from densenet_spec.config import get_preset

    biased = get_preset("tiny").replace(bn_running_var="biased", bn_momentum=0.3)
    return {
        "tiny": (get_preset("tiny"), 2, 32, 2),
        "tiny_biased_var": (biased, 2, 32, 2),
        "densenet_bc_100": (get_preset("densenet_bc_100"), 2, 8, 2),
        "d2l": (get_preset("d2l"), 2, 64, 2),
        # 64x64 keeps 2x2 pixels in the last block. At 32x32 the last block is 1x1, its train-mode
        # BatchNorms see 2 values per channel and the train quantities become ill-conditioned even
        # in float64 (torch vs torch with channels_last ~1e-8; tolerances.py), so frameworks check
        # only eval quantities there.
        "densenet121": (get_preset("densenet121"), 2, 64, 2),
    }


# The acceptance cases every framework's tests run against the oracle:
# name -> (config, batch, image size, optimizer steps). Two steps exercise the momentum buffer
# and the running statistics carried from one step into the next.
PARITY_CASES = _parity_cases()


def parity_case(name: str, dtype: str = "float64") -> Case:
    config, batch, size, steps = PARITY_CASES[name]
    return make_case(config, batch=batch, image_size=size, steps=steps, dtype=dtype)
