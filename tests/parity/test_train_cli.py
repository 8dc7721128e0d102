"""densenet-train end to end: the console command with the oracle as a framework, its files, its
errors, and (where the framework environments are built) cross-framework resume."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from densenet_testing import spec_command

import densenet_envs as envs
from densenet_spec import training
from densenet_spec.frameworks import FRAMEWORKS

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
# 1438 digits / 128 = 11 steps per epoch of a tiny 1-channel net at 16 px: seconds, not minutes.
SMALL = [
    "--preset",
    "tiny",
    "--image-size",
    "16",
    "--batch",
    "128",
    "--lr",
    "0.05",
    "--dtype",
    "float64",
    "--no-setup",
]
SPE = 11


def train(*args, timeout=900):
    return spec_command("densenet_spec.train_cli", *args, timeout=timeout)


def test_oracle_run_writes_metrics_checkpoints_summary_and_plot(tmp_path):
    out = tmp_path / "run"
    proc = train(
        "--frameworks",
        "numpy",
        *SMALL,
        "--epochs",
        "2",
        "--reference-steps",
        "3",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    row = summary["frameworks"]["numpy"]
    assert row["ok"] and row["steps"] == 2 * SPE and 0 <= row["test_accuracy"] <= 1
    assert row["max_loss_diff"] == 0.0  # float64 oracle vs float64 oracle: the same arithmetic
    assert [Path(c).name for c in row["checkpoints"]] == ["epoch-001", "epoch-002"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["framework"] for r in records} == {"numpy", "oracle64"}
    assert sum(r["event"] == "step" and r["framework"] == "numpy" for r in records) == 2 * SPE
    assert (out / "training.png").stat().st_size > 10_000


def test_resume_from_the_cli_equals_the_straight_run(tmp_path):
    common = [
        "--frameworks",
        "numpy",
        *SMALL,
        "--epochs",
        "2",
        "--reference-steps",
        "0",
        "--no-plot",
    ]
    assert train(*common, "--out", str(tmp_path / "a")).returncode == 0
    assert train(*common, "--steps", str(SPE), "--out", str(tmp_path / "b1")).returncode == 0
    ck = tmp_path / "b1" / "numpy" / "checkpoints" / "epoch-001"
    proc = train(*common, "--resume", str(ck), "--out", str(tmp_path / "b2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a = training.load_checkpoint(tmp_path / "a" / "numpy" / "checkpoints" / "epoch-002")
    b = training.load_checkpoint(tmp_path / "b2" / "numpy" / "checkpoints" / "epoch-002")
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    for k in a.buffers:
        np.testing.assert_array_equal(a.buffers[k], b.buffers[k])


@pytest.mark.parametrize(
    "args, error",
    [
        (["--frameworks", "caffe"], "UnknownFrameworkError"),
        (["--frameworks", " , "], "TrainingOptionError: --frameworks"),
        (["--preset", "resnet"], "UnknownPresetError"),
        (["--epochs", "0"], "TrainingOptionError: --epochs"),
        (["--steps", "0"], "TrainingOptionError: --steps"),
        (["--batch", "1"], "TrainingOptionError: --batch"),
        (["--batch", "5000"], "EmptySplitError"),
        (["--lr", "-1"], "TrainingOptionError: --lr"),
        (["--momentum", "1.5"], "TrainingOptionError: --momentum"),
        (["--image-size", "3"], "TrainingOptionError: --image-size"),
        (["--data", "fashion-mnist"], "DataNotFoundError"),
        (["--data-dir", "."], "TrainingOptionError: --data-dir"),
        (["--resume", "/nonexistent"], "CheckpointError"),
        (["--replicas", "0"], "TrainingOptionError: --replicas"),
        (["--replicas", "3"], "TrainingOptionError: --replicas 3: the batch of 64"),
    ],
)
def test_bad_flags_are_named_before_anything_runs(tmp_path, args, error):
    proc = train("--frameworks", "numpy", "--no-setup", *args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert error in " ".join(proc.stdout.split())
    assert not (tmp_path / "o").exists()


def test_resume_with_other_trajectory_flags_is_refused(tmp_path):
    common = [
        "--frameworks",
        "numpy",
        *SMALL,
        "--epochs",
        "1",
        "--reference-steps",
        "0",
        "--no-plot",
    ]
    assert train(*common, "--out", str(tmp_path / "a")).returncode == 0
    ck = str(tmp_path / "a" / "numpy" / "checkpoints" / "epoch-001")
    proc = train(
        "--frameworks",
        "numpy",
        "--resume",
        ck,
        "--batch",
        "64",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "b"),
    )
    assert proc.returncode == 2 and "ResumeMismatchError" in proc.stdout
    proc = train(
        "--frameworks", "numpy", "--resume", ck, "--epochs", "1", "--out", str(tmp_path / "c")
    )
    assert proc.returncode == 2 and "TrainingOptionError" in proc.stdout  # nothing left to do


def has_training_extension(name: str) -> bool:
    adapter = ROOT / FRAMEWORKS[name].package / "adapter.py"
    text = adapter.read_text() if adapter.exists() else ""
    return all(f"def {m}(" in text for m in ("optimizer_state", "load_optimizer_state", "set_lr"))


def trainable(name):
    if not envs.is_ready(name):
        pytest.skip(f"environment not built: {name} (python3 dev.py envs)")
    if not has_training_extension(name):
        pytest.skip(f"{FRAMEWORKS[name].package}.adapter lacks the training extension")


@pytest.mark.parametrize("name", list(FRAMEWORKS))
def test_float64_losses_equal_the_oracle_over_20_steps(tmp_path, name):
    trainable(name)
    proc = train(
        "--frameworks",
        name,
        *SMALL,
        "--steps",
        "20",
        "--reference-steps",
        "20",
        "--no-plot",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = json.loads((tmp_path / "summary.json").read_text())["frameworks"][name]
    assert row["steps"] == 20 and row["max_loss_diff"] <= 1e-9


def losses(out: Path, name: str) -> np.ndarray:
    records = training.read_metrics(out / name)
    return np.array([r["loss"] for r in records if r["event"] == "step"])


@pytest.mark.parametrize("name", list(FRAMEWORKS))
def test_data_parallel_training_follows_the_oracles_replica_run(tmp_path, name):
    """densenet-train --replicas 2 --bn-sync per-replica (the semantics that differs from one
    device): every step's loss equals the oracle's replica run in float64, rank 0 alone wrote the
    checkpoint, and the one-device run's losses differ (the replica path really ran)."""
    trainable(name)
    assert FRAMEWORKS[name].data_parallel  # the registry says it has an engine: it must train
    common = [*SMALL, "--steps", "6", "--reference-steps", "6", "--no-plot"]
    out = tmp_path / "dp"
    proc = train("--frameworks", name, *common, "--replicas", "2", "--bn-sync", "per-replica",
                 "--out", str(out), "--epochs", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == {"replicas": 2, "bn_sync": "per-replica", "buffers": "broadcast"}
    row = summary["frameworks"][name]
    assert row["steps"] == 6 and row["max_loss_diff"] <= 1e-9
    assert [p.name for p in (out / name / "checkpoints").iterdir()] == ["step-000006"]
    one = tmp_path / "one"
    proc = train("--frameworks", "numpy", *common, "--reference-steps", "0", "--out", str(one))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert np.abs(losses(out, name) - losses(one, "numpy")).max() > 1e-6


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """Two epochs per framework, run once: its epoch-001 checkpoint is where the others resume."""
    runs = {}

    def get(name):
        if name not in runs:
            out = tmp_path_factory.mktemp(f"two-epochs-{name}")
            proc = train(
                "--frameworks",
                name,
                *SMALL,
                "--epochs",
                "2",
                "--reference-steps",
                "0",
                "--no-plot",
                "--out",
                str(out),
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            runs[name] = out / name / "checkpoints"
        return runs[name]

    return get


@pytest.mark.parametrize("a, b", list(itertools.permutations(FRAMEWORKS, 2)))
def test_one_epoch_in_a_resumed_in_b_equals_two_epochs_in_a(tmp_path, two_epochs, a, b):
    trainable(a)
    trainable(b)
    ck = two_epochs(a) / "epoch-001"
    proc = train(
        "--frameworks",
        b,
        *SMALL,
        "--epochs",
        "2",
        "--reference-steps",
        "0",
        "--no-plot",
        "--resume",
        str(ck),
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    want = training.load_checkpoint(two_epochs(a) / "epoch-002")
    got = training.load_checkpoint(tmp_path / b / "checkpoints" / "epoch-002")
    for tensors_w, tensors_g in ((want.weights, got.weights), (want.buffers, got.buffers)):
        for k, w in tensors_w.items():
            rel = np.abs(tensors_g[k] - w).max() / max(np.abs(w).max(), 1e-300)
            assert rel <= 1e-9, (k, rel)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_new_run_with_a_schedule_starts(tmp_path, schedule):
    """Regression: the schedule's horizon (epochs x steps per epoch) is set before it is checked."""
    out = tmp_path / "run"
    proc = train(
        "--frameworks",
        "numpy",
        *SMALL,
        "--steps",
        "2",
        "--schedule",
        schedule,
        "--reference-steps",
        "0",
        "--no-plot",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lrs = [json.loads(line).get("lr") for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [lr for lr in lrs if lr is not None]
    assert lrs and lrs[0] == 0.05 and all(lr <= 0.05 for lr in lrs)
