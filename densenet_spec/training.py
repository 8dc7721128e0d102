"""The framework-neutral training driver: epochs of SGD steps over the prepared batches, test
accuracy, JSON-lines metrics and checkpoints that any framework can resume.

A training job is a folder that the spec environment writes (job.json, order.safetensors, the
start weights and, when resuming, the start optimizer state) and one framework's worker runs in
its own environment:

    <env python> -m densenet_spec.training <package> <job folder>

<package> is a framework package (its adapter.Adapter, the same class the parity driver runs) or
`numpy` for the NumPy oracle acting as a framework (OracleAdapter below). Beyond the parity
protocol (densenet_spec.driver) training needs three adapter methods:

    adapter.optimizer_state(model, optimizer) -> {trainable name: momentum buffer}
        canonical names and layout, the spec's buffer (learning rate outside it:
        buf = m * buf + (g + wd * p); p -= lr * buf), zeros before the first step
    adapter.load_optimizer_state(model, optimizer, buffers)
        the inverse: continue from those buffers (a checkpoint from any framework)
    adapter.set_lr(optimizer, lr)
        the rate of the next step (only called when the schedule is not constant)
and, optionally, adapter.predict(model, x) -> native logits in eval mode (else the driver takes
stage_outputs(model, x, training=False)["logits"]).

Data-parallel jobs (densenet-train --replicas R; job.json "replicas": {replicas, bn_sync,
buffers}, the case options of densenet_spec/replicas.py) run the same loop with
<package>.distributed.ReplicaAdapter: the same protocol over whole batches, each train_step one
data-parallel step of R replicas on the framework's own engine (the loss returned: the mean of
the replicas' shard losses), to_canonical and optimizer_state replica 0's. A multi-process engine
also defines <package>.distributed.launch_training(job_dir, *, timeout), which starts its
processes, each running run_job; its adapter's `writes` is False on every process but the first,
which alone writes metrics, checkpoints and the result.

A checkpoint is a folder, written atomically (a temporary folder renamed into place):
    weights.safetensors    the canonical weight file (densenet_spec.weightfile), for any framework
    optimizer.safetensors  the momentum buffers under the trainable tensors' canonical names, with
                           metadata: step count, epoch and position in the data order, seed, and the
                           settings that fix the trajectory (TrainSettings)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes

from densenet_spec import data as datamod
from densenet_spec import reference
from densenet_spec.case import Case, SGDConfig
from densenet_spec.config import DenseNetConfig
from densenet_spec.errors import CheckpointError, TrainingOptionError
from densenet_spec.params import check_momentum_buffers, param_specs, trainable_names
from densenet_spec.weightfile import atomic_write_bytes, load_weights, save_weights

SCHEDULES = ("constant", "cosine", "step")
OPTIMIZER_FORMAT = "densenet-parity-optimizer"
OPTIMIZER_FORMAT_VERSION = "1"
EVAL_BATCH = 128  # eval-mode BatchNorm is per image, so the chunk size changes nothing
LAUNCH_TIMEOUT_S = 24 * 3600.0  # a multi-process training run's bound (its processes are killed)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that fixes a run's trajectory; a resumed run must keep all of it.

    schedule_steps: the horizon of a cosine or step schedule (epochs x steps per epoch when the
    run was planned); lr_at(step) depends on it, so it travels in every checkpoint.
    """

    config: DenseNetConfig
    data: str = "digits"
    image_size: int = 32
    batch: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "constant"
    schedule_steps: int = 0
    dtype: str = "float32"
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        return cls(**{**d, "config": DenseNetConfig.from_dict(d["config"])})

    @property
    def sgd(self) -> SGDConfig:
        return SGDConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based).

        constant: lr. cosine: lr * (1 + cos(pi * step / T)) / 2 over T = schedule_steps.
        step: lr, divided by 10 at 50% and again at 75% of T (the DenseNet paper's CIFAR schedule).
        """
        if self.schedule == "constant":
            return self.lr
        t = min(step, self.schedule_steps) / self.schedule_steps
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.lr * 0.1 ** ((t >= 0.5) + (t >= 0.75))


def check_settings(s: TrainSettings) -> None:
    """Named errors for flags out of range (TrainingOptionError names the flag)."""
    from densenet_spec.config import check_input_shape
    from densenet_spec.errors import InputShapeError

    def bad(flag, why):
        raise TrainingOptionError(f"{flag}: {why}")

    if s.data not in datamod.DATASETS:
        bad("--data", f"unknown data set {s.data!r}; known: {', '.join(datamod.DATASETS)}")
    if s.dtype not in ("float32", "float64"):
        bad("--dtype", f"must be float32 or float64, got {s.dtype!r}")
    if s.schedule not in SCHEDULES:
        bad("--schedule", f"must be one of {', '.join(SCHEDULES)}, got {s.schedule!r}")
    if s.batch < 2:
        bad("--batch", f"must be at least 2 (train-mode BatchNorm), got {s.batch}")
    if not (s.lr > 0 and math.isfinite(s.lr)):
        bad("--lr", f"must be a positive number, got {s.lr}")
    if not 0 <= s.momentum < 1:
        bad("--momentum", f"must be in [0, 1), got {s.momentum}")
    if not (s.weight_decay >= 0 and math.isfinite(s.weight_decay)):
        bad("--weight-decay", f"must be >= 0, got {s.weight_decay}")
    if s.schedule != "constant" and s.schedule_steps < 1:
        bad("--schedule", f"a {s.schedule} schedule needs a horizon of at least one step")
    if s.config.in_channels != 1 or s.config.num_classes != 10:
        bad("--preset", "the training data have 1 channel and 10 classes")
    try:
        check_input_shape(s.config, (s.batch, 1, s.image_size, s.image_size), training=True)
    except InputShapeError as e:
        bad("--image-size", str(e))


# ----------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    settings: TrainSettings
    step: int  # steps taken since the start of the run
    steps_per_epoch: int
    framework: str = ""

    @property
    def epoch(self) -> int:
        """Completed epochs; position is the next batch within the current epoch."""
        return self.step // self.steps_per_epoch

    @property
    def position(self) -> int:
        return self.step % self.steps_per_epoch


def check_buffers(buffers: dict, config: DenseNetConfig, dtype: str) -> None:
    check_momentum_buffers(buffers, config, dtype)


def save_checkpoint(folder, ck: Checkpoint) -> Path:
    """Write weights.safetensors and optimizer.safetensors into `folder` as one atomic rename."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    config = ck.settings.config
    check_buffers(ck.buffers, config, ck.settings.dtype)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        save_weights(tmp / "weights.safetensors", ck.weights, config)
        meta = {
            "format": OPTIMIZER_FORMAT,
            "format_version": OPTIMIZER_FORMAT_VERSION,
            "config": config.to_json(),
            "dtype": ck.settings.dtype,
            "rule": "buf = momentum * buf + (grad + weight_decay * param); param -= lr * buf",
            "step": str(ck.step),
            "epoch": str(ck.epoch),
            "position": str(ck.position),
            "steps_per_epoch": str(ck.steps_per_epoch),
            "seed": str(ck.settings.seed),
            "settings": json.dumps(ck.settings.to_dict(), sort_keys=True),
            "framework": ck.framework,
        }
        arrays = {n: np.ascontiguousarray(ck.buffers[n]) for n in trainable_names(config)}
        atomic_write_bytes(tmp / "optimizer.safetensors", _safetensors_bytes(arrays, metadata=meta))
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(folder) -> Checkpoint:
    folder = Path(folder)
    opt = folder / "optimizer.safetensors"
    if not folder.is_dir() or not opt.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no optimizer.safetensors)")
    try:
        with safe_open(str(opt), framework="np") as f:
            meta = f.metadata() or {}
            buffers = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{opt}: not a readable safetensors file ({e})") from None
    if (
        meta.get("format") != OPTIMIZER_FORMAT
        or meta.get("format_version") != OPTIMIZER_FORMAT_VERSION
    ):
        raise CheckpointError(f"{opt}: not a {OPTIMIZER_FORMAT} v{OPTIMIZER_FORMAT_VERSION} file")
    settings = TrainSettings.from_dict(json.loads(meta["settings"]))
    weights, _ = load_weights(folder / "weights.safetensors", settings.config, settings.dtype)
    check_buffers(buffers, settings.config, settings.dtype)
    return Checkpoint(
        weights,
        buffers,
        settings,
        int(meta["step"]),
        int(meta["steps_per_epoch"]),
        meta.get("framework", ""),
    )


# ----------------------------------------------------------------------------------------
# The NumPy oracle as a framework: NumPy arrays are its native tensors


class _OracleModel:
    def __init__(self, params: dict, config: DenseNetConfig):
        self.params, self.config = dict(params), config


class OracleAdapter:
    """The adapter protocol (densenet_spec.driver) plus the training extension, on reference.py."""

    def __init__(self, case: Case):
        self.case = case
        self.info = {"numpy": np.__version__, "device": "cpu", "dtype": case.dtype}

    def build(self):
        if self.case.device != "cpu":
            from densenet_spec.errors import DeviceUnavailableError

            raise DeviceUnavailableError("the NumPy oracle runs on the CPU only")
        return _OracleModel(self.case.params, self.case.config)

    def images(self, x):
        return np.asarray(x, dtype=self.case.dtype)

    def labels(self, y):
        return np.asarray(y, dtype=np.int64)

    def stage_outputs(self, model, x, training):
        features, running = reference.forward_features(model.params, model.config, x, training)
        if training:
            model.params.update(running)
        return features

    def predict(self, model, x):
        return self.stage_outputs(model, x, False)["logits"]

    def loss(self, logits, y):
        return reference.loss(logits, y)

    def make_optimizer(self, model):
        return {"lr": self.case.sgd.lr, "buffers": {}}

    def train_step(self, model, optimizer, x, y):
        sgd = dataclasses.replace(self.case.sgd, lr=optimizer["lr"])
        replicas = int(self.case.options.get("replicas", 1))
        if replicas > 1:  # reference.replica_sgd_step; model.params is replica 0's state
            states = getattr(model, "replica_states", None) or [model.params] * replicas
            o = self.case.options
            states, optimizer["buffers"], loss = reference.replica_sgd_step(
                states, optimizer["buffers"], model.config, x, y, sgd, replicas,
                o.get("bn_sync", "synchronised"), o.get("buffers", "broadcast"),
            )  # fmt: skip
            model.replica_states, model.params = states, dict(states[0])
            return loss
        model.params, optimizer["buffers"], losses = reference.sgd_steps(
            model.params, model.config, [x], [y], sgd, buffers=optimizer["buffers"]
        )
        return losses[0]

    def to_numpy(self, t):
        return np.asarray(t)

    def to_canonical(self, model):
        return {s.name: model.params[s.name].copy() for s in param_specs(model.config)}

    # The training extension
    def optimizer_state(self, model, optimizer):
        return {
            n: optimizer["buffers"].get(n, np.zeros_like(model.params[n])).copy()
            for n in trainable_names(model.config)
        }

    def load_optimizer_state(self, model, optimizer, buffers):
        optimizer["buffers"] = {n: np.array(b, dtype=self.case.dtype) for n, b in buffers.items()}

    def set_lr(self, optimizer, lr):
        optimizer["lr"] = float(lr)


def make_adapter(package: str, case: Case):
    """`package`'s adapter for the case; a data-parallel case (options "replicas" > 1) gets its
    distributed.ReplicaAdapter (the oracle's: OracleAdapter on reference.replica_sgd_step)."""
    if package == "numpy":
        return OracleAdapter(case)
    if int(case.options.get("replicas", 1)) > 1:
        module = distributed_module(package)
        if not hasattr(module, "ReplicaAdapter"):
            raise TrainingOptionError(f"--replicas: {package} has no data-parallel training yet")
        return module.ReplicaAdapter(case)
    return importlib.import_module(f"{package}.adapter").Adapter(case)


def distributed_module(package: str):
    try:
        return importlib.import_module(f"{package}.distributed")
    except ModuleNotFoundError as e:
        if e.name != f"{package}.distributed":
            raise
        raise TrainingOptionError(f"--replicas: {package} has no data-parallel engine") from None


# ----------------------------------------------------------------------------------------
# Jobs: what the spec environment hands one framework's worker


def write_job(
    folder,
    *,
    settings: TrainSettings,
    data_file,
    start: Checkpoint | None,
    start_weights: dict | None,
    end_step: int,
    steps_per_epoch: int,
    framework: str,
    compute_dtype: str | None = None,
    device: str = "cpu",
    variant: str = "plain",
    eval_every_epoch: bool = True,
    checkpoints: bool = True,
    replicas: dict | None = None,
) -> Path:
    """A job folder for one worker: steps start.step .. end_step - 1 of the run `settings`.

    compute_dtype: the dtype the worker runs in when it differs from settings.dtype (the float64
    oracle reference of a float32 run: same float32 inputs and start weights, computed in float64).
    replicas: {"replicas": R, "bn_sync": ..., "buffers": ...} for a data-parallel job.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = compute_dtype or settings.dtype
    start_step = start.step if start else 0
    if start is not None:
        weights, buffers = start.weights, start.buffers
    else:
        weights, buffers = start_weights, None
    save_weights(
        folder / "start.safetensors",
        {k: np.asarray(v, dtype) for k, v in weights.items()},
        settings.config,
    )
    if buffers is not None:
        cast = {k: np.asarray(v, dtype) for k, v in buffers.items()}
        atomic_write_bytes(folder / "start_optimizer.safetensors", _safetensors_bytes(cast))
    raw_n = int(load_data_count(data_file))
    first, last = start_step // steps_per_epoch, (end_step - 1) // steps_per_epoch
    order = {
        f"epoch.{e}": datamod.epoch_order(raw_n, settings.batch, settings.seed, e)
        for e in range(first, last + 1)
    }
    atomic_write_bytes(folder / "order.safetensors", _safetensors_bytes(order))
    job = {
        "settings": settings.to_dict(),
        "data_file": str(Path(data_file).resolve()),
        "start_step": start_step,
        "end_step": end_step,
        "steps_per_epoch": steps_per_epoch,
        "framework": framework,
        "dtype": dtype,
        "input_dtype": settings.dtype,
        "device": device,
        "variant": variant,
        "eval_every_epoch": eval_every_epoch,
        "checkpoints": checkpoints,
        "replicas": replicas,  # None, or the case options of densenet_spec/replicas.py
    }
    atomic_write_bytes(folder / "job.json", json.dumps(job, indent=2).encode())
    return folder


def load_data_count(data_file) -> int:
    with safe_open(str(data_file), framework="np") as f:
        return int((f.metadata() or {})["train"])


def _evaluate(adapter, model, raw, pre, dtype, input_dtype) -> tuple[float, float]:
    """(mean test loss, test accuracy) in eval mode over the whole test split."""
    total_loss, correct, n = 0.0, 0, len(raw.test_labels)
    predict = getattr(adapter, "predict", None)
    for i in range(0, n, EVAL_BATCH):
        x = pre(raw.test_images[i : i + EVAL_BATCH], input_dtype).astype(dtype)
        y = raw.test_labels[i : i + EVAL_BATCH]
        xn = adapter.images(x)
        logits = (
            predict(model, xn) if predict else adapter.stage_outputs(model, xn, False)["logits"]
        )
        logits = np.asarray(adapter.to_numpy(logits), dtype=np.float64)
        total_loss += float(reference.loss(logits, y)) * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
    return total_loss / n, correct / n


def _require(adapter, *methods):
    missing = [m for m in methods if not callable(getattr(adapter, m, None))]
    if missing:
        raise NotImplementedError(
            f"{type(adapter).__module__}.{type(adapter).__name__} lacks the training extension "
            f"{', '.join(missing)} (see densenet_spec/training.py)"
        )


def run_job(package: str, job_dir) -> dict:
    """Run one job with `package`'s adapter: metrics.jsonl and checkpoints/ in the job folder."""
    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    s = TrainSettings.from_dict(job["settings"])
    dtype, input_dtype = job["dtype"], job["input_dtype"]
    spe, start, end = job["steps_per_epoch"], job["start_step"], job["end_step"]
    raw, pre = datamod.load_data(job["data_file"])
    with safe_open(str(job_dir / "order.safetensors"), framework="np") as f:
        order = {int(k.split(".")[1]): f.get_tensor(k) for k in f.keys()}
    weights, _ = load_weights(job_dir / "start.safetensors", s.config, dtype)

    def batch(step):
        idx = order[step // spe][step % spe]
        return pre(raw.train_images[idx], input_dtype).astype(dtype), raw.train_labels[idx]

    x0, y0 = batch(start)
    case = Case(
        config=s.config,
        params=weights,
        x=x0,
        y=y0,
        step_x=x0[None][:0],
        step_y=y0[None][:0],
        dtype=dtype,
        device=job["device"],
        sgd=s.sgd,
        quantities=("step",),
        variant=job["variant"],
        options=dict(job.get("replicas") or {}),
    )
    adapter = make_adapter(package, case)
    _require(adapter, "optimizer_state", "load_optimizer_state")
    if s.schedule != "constant":
        _require(adapter, "set_lr")
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    opt_file = job_dir / "start_optimizer.safetensors"
    if opt_file.exists():
        with safe_open(str(opt_file), framework="np") as f:
            buffers = {k: f.get_tensor(k) for k in f.keys()}
        check_buffers(buffers, s.config, dtype)
        adapter.load_optimizer_state(model, optimizer, buffers)

    writes = getattr(adapter, "writes", True)  # False: another process of the engine writes
    metrics = open(job_dir / "metrics.jsonl" if writes else os.devnull, "w")
    checkpoints: list[str] = []

    def emit(record):
        metrics.write(json.dumps({"framework": job["framework"], **record}) + "\n")
        metrics.flush()

    def finish_epoch(step, epoch_losses, t_epoch):
        name = f"epoch-{step // spe:03d}" if step % spe == 0 else f"step-{step:06d}"
        record = {
            "event": "epoch",
            "step": step,
            "epoch": step / spe,
            "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
            "seconds": round(time.perf_counter() - t_epoch, 3),
        }
        if job["eval_every_epoch"]:
            record["test_loss"], record["test_accuracy"] = _evaluate(
                adapter, model, raw, pre, dtype, input_dtype
            )
        if not job["checkpoints"] or not writes:
            emit(record)
            return
        ck = Checkpoint(
            {k: np.asarray(v, dtype) for k, v in adapter.to_canonical(model).items()},
            {k: np.asarray(v, dtype) for k, v in adapter.optimizer_state(model, optimizer).items()},
            s,
            step,
            spe,
            job["framework"],
        )
        path = save_checkpoint(job_dir / "checkpoints" / name, ck)
        checkpoints.append(str(path))
        emit({**record, "checkpoint": str(path)})

    t_run = t_epoch = time.perf_counter()
    epoch_losses: list[float] = []
    emit(
        {
            "event": "start",
            "start_step": start,
            "end_step": end,
            "steps_per_epoch": spe,
            "info": dict(adapter.info),
        }
    )
    for step in range(start, end):
        x, y = batch(step)
        lr = s.lr_at(step)
        if s.schedule != "constant":
            adapter.set_lr(optimizer, lr)
        t = time.perf_counter()
        loss = adapter.train_step(model, optimizer, adapter.images(x), adapter.labels(y))
        value = float(np.asarray(adapter.to_numpy(loss)).reshape(()))
        seconds = time.perf_counter() - t
        epoch_losses.append(value)
        emit(
            {
                "event": "step",
                "step": step,
                "epoch": step // spe,
                "loss": value,
                "lr": lr,
                "seconds": round(seconds, 4),
                "images_per_s": round(len(y) / seconds, 2),
            }
        )
        if (step + 1) % spe == 0 or step + 1 == end:
            finish_epoch(step + 1, epoch_losses, t_epoch)
            epoch_losses, t_epoch = [], time.perf_counter()
    result = {
        "framework": job["framework"],
        "package": package,
        "python": platform.python_version(),
        "steps": end - start,
        "seconds": round(time.perf_counter() - t_run, 3),
        "checkpoints": checkpoints,
        "info": dict(adapter.info),
    }
    emit({"event": "end", **result})
    metrics.close()
    if writes:
        atomic_write_bytes(job_dir / "result.json", json.dumps(result, indent=2).encode())
    return result


def read_metrics(job_dir) -> list[dict]:
    path = Path(job_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from densenet_spec.errors import exit_code

    return exit_code(run_worker_job, *argv)


def run_worker_job(package: str, job_dir) -> None:
    """The job in this process (run_job), or through the package's launch_training when a
    data-parallel engine needs processes of its own (they run run_job)."""
    replicas = json.loads((Path(job_dir) / "job.json").read_text()).get("replicas")
    module = distributed_module(package) if replicas and package != "numpy" else None
    if module is not None and hasattr(module, "launch_training"):
        module.launch_training(job_dir, timeout=LAUNCH_TIMEOUT_S)
    else:
        run_job(package, job_dir)


if __name__ == "__main__":
    sys.exit(main())
