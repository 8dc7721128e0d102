"""The framework-neutral training driver, run with the NumPy oracle acting as a framework.

A small 1-channel config at 16 px keeps each step in milliseconds; the d2l preset runs the same
code (benchmarks/ time it).
"""

import json
import shutil

import numpy as np
import pytest

from densenet_spec import data, reference, training
from densenet_spec.config import get_preset
from densenet_spec.errors import CheckpointError, OptimizerStateError, TrainingOptionError
from densenet_spec.params import init_params, trainable_names

pytest.importorskip("sklearn")

CONFIG = get_preset("tiny").replace(in_channels=1, num_classes=10)
SIZE, BATCH = 16, 32


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    raw = data.load_digits()
    pre = data.preprocess_for(raw, SIZE)
    path = tmp_path_factory.mktemp("data") / "data.safetensors"
    data.save_data(path, raw, pre)
    return raw, pre, path, data.steps_per_epoch(len(raw.train_labels), BATCH)


def settings(**kw):
    return training.TrainSettings(
        CONFIG, image_size=SIZE, batch=BATCH, lr=0.05, dtype="float64", seed=7, **kw
    )


def run(folder, digits, s, end, start=None, package="numpy"):
    _, _, path, spe = digits
    weights = None if start else init_params(s.config, s.seed, s.dtype)
    training.write_job(
        folder,
        settings=s,
        data_file=path,
        start=start,
        start_weights=weights,
        end_step=end,
        steps_per_epoch=spe,
        framework=package,
    )
    training.run_job(package, folder)
    return training.read_metrics(folder)


def step_losses(records):
    return np.array([r["loss"] for r in records if r["event"] == "step"])


def test_oracle_as_framework_equals_the_oracle_over_20_steps(tmp_path, digits):
    raw, pre, _, _ = digits
    s = settings()
    records = run(tmp_path / "job", digits, s, end=20)
    order = data.epoch_order(len(raw.train_labels), BATCH, s.seed, 0)[:20]
    xs = [pre(raw.train_images[i]) for i in order]
    ys = [raw.train_labels[i] for i in order]
    state, buffers, losses = reference.sgd_steps(
        init_params(CONFIG, s.seed, "float64"), CONFIG, xs, ys, s.sgd
    )
    np.testing.assert_allclose(step_losses(records), losses, rtol=1e-12, atol=0)
    (epoch,) = [r for r in records if r["event"] == "epoch"]  # stopped mid-epoch: one checkpoint
    ck = training.load_checkpoint(epoch["checkpoint"])
    assert (ck.step, ck.epoch, ck.position) == (20, 0, 20) and ck.settings == s
    for name, value in state.items():
        np.testing.assert_allclose(ck.weights[name], value, rtol=1e-12, atol=1e-15)
    for name in trainable_names(CONFIG):
        np.testing.assert_allclose(ck.buffers[name], buffers[name], rtol=1e-12, atol=1e-15)
    assert 0 <= epoch["test_accuracy"] <= 1 and epoch["test_loss"] > 0


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_one_epoch_equals_two_epochs(tmp_path, digits, schedule):
    spe = digits[3]
    s = settings(schedule=schedule, schedule_steps=2 * spe if schedule != "constant" else 0)
    straight = run(tmp_path / "a", digits, s, end=2 * spe)
    first = run(tmp_path / "b1", digits, s, end=spe)
    ck1 = training.load_checkpoint(tmp_path / "b1" / "checkpoints" / "epoch-001")
    assert (ck1.step, ck1.epoch, ck1.position) == (spe, 1, 0)
    resumed = run(tmp_path / "b2", digits, s, end=2 * spe, start=ck1)
    np.testing.assert_array_equal(
        np.concatenate([step_losses(first), step_losses(resumed)]), step_losses(straight)
    )
    a = training.load_checkpoint(tmp_path / "a" / "checkpoints" / "epoch-002")
    b = training.load_checkpoint(tmp_path / "b2" / "checkpoints" / "epoch-002")
    for ta, tb in ((a.weights, b.weights), (a.buffers, b.buffers)):
        assert ta.keys() == tb.keys()
        for k in ta:
            scale = max(np.abs(ta[k]).max(), 1e-300)
            assert np.abs(ta[k] - tb[k]).max() / scale <= 1e-9, k
    assert [r["event"] for r in resumed][0] == "start"
    assert resumed[0]["start_step"] == spe


def test_schedules():
    s = settings(schedule="cosine", schedule_steps=100)
    assert s.lr_at(0) == 0.05 and abs(s.lr_at(50) - 0.025) < 1e-15 and s.lr_at(100) == 0.0
    st = settings(schedule="step", schedule_steps=100)
    assert [st.lr_at(k) for k in (0, 49)] == [0.05, 0.05]
    assert abs(st.lr_at(50) - 0.005) < 1e-15 and abs(st.lr_at(75) - 0.0005) < 1e-15
    assert settings().lr_at(10**6) == 0.05


@pytest.mark.parametrize(
    "change, flag",
    [
        ({"batch": 1}, "--batch"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"momentum": 1.0}, "--momentum"),
        ({"weight_decay": -1.0}, "--weight-decay"),
        ({"schedule": "linear"}, "--schedule"),
        ({"schedule": "cosine"}, "--schedule"),  # no horizon
        ({"dtype": "float16"}, "--dtype"),
        ({"data": "mnist"}, "--data"),
        ({"image_size": 4}, "--image-size"),
        ({"config": get_preset("tiny")}, "--preset"),  # 3 channels, 5 classes
    ],
)
def test_bad_settings_are_named(change, flag):
    import dataclasses

    with pytest.raises(TrainingOptionError, match=flag):
        training.check_settings(dataclasses.replace(settings(), **change))


def test_checkpoint_round_trip_overwrite_and_errors(tmp_path):
    s = settings()
    w = init_params(CONFIG, 0, "float64")
    bufs = {n: np.full_like(w[n], 0.5) for n in trainable_names(CONFIG)}
    ck = training.Checkpoint(w, bufs, s, step=50, steps_per_epoch=44, framework="numpy")
    folder = training.save_checkpoint(tmp_path / "epoch-001", ck)
    training.save_checkpoint(folder, ck)  # overwriting is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-001"]
    back = training.load_checkpoint(folder)
    assert (back.step, back.epoch, back.position, back.framework) == (50, 1, 6, "numpy")
    np.testing.assert_array_equal(back.buffers["head.fc.weight"], bufs["head.fc.weight"])
    from safetensors import safe_open

    with safe_open(str(folder / "optimizer.safetensors"), framework="np") as f:
        meta = f.metadata()
    assert meta["seed"] == "7" and meta["position"] == "6" and json.loads(meta["config"])
    with pytest.raises(OptimizerStateError, match="missing"):
        training.save_checkpoint(tmp_path / "x", training.Checkpoint(w, {}, s, 1, 44))
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        training.load_checkpoint(tmp_path / "nothing")
    (folder / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        training.load_checkpoint(folder)
    shutil.rmtree(folder)


def test_adapter_without_the_training_extension_is_named(tmp_path, digits, monkeypatch):
    class Partial(training.OracleAdapter):
        optimizer_state = None

    monkeypatch.setattr(training, "make_adapter", lambda package, case: Partial(case))
    with pytest.raises(NotImplementedError, match="optimizer_state"):
        run(tmp_path / "job", digits, settings(), end=1)
