"""densenet-parity --replicas (issue 20): torch DDP against the oracle's replica semantics."""

import json

import pytest
from densenet_testing import spec_command


def parity(*args, timeout=600):
    return spec_command("densenet_spec.cli", *args, "--no-setup", timeout=timeout)


TINY = ("--preset", "tiny", "--replicas", "2", "--dtype", "float64", "--frameworks", "torch",
        "--steps", "2", "--image-size", "32")  # fmt: skip


@pytest.mark.parametrize("bn_sync", ["synchronised", "per-replica"])
def test_torch_two_replicas_pass_and_the_other_semantics_fails(tmp_path, require_envs, bn_sync):
    require_envs("torch")
    out = tmp_path / "ok.json"
    proc = parity(*TINY, "--bn-sync", bn_sync, "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    (pair,) = report["pairs"]
    keys = [c["key"] for c in pair["comparisons"]]
    assert any(k.startswith("step/replica1/") for k in keys) and "loss/train" in keys
    assert all(c["error"] <= c["bound"] <= 1e-9 for c in pair["comparisons"])
    mutated = parity(*TINY, "--bn-sync", bn_sync, "--mutate", "torch:bn_sync")
    assert mutated.returncode == 0, mutated.stdout + mutated.stderr  # the self-check passed
    assert "part at train: stem" in mutated.stdout and "SELF-CHECK OK" in mutated.stdout


def test_replica_usage_errors():
    for args, words in (
        (("--replicas", "3", "--batch", "2"), "equal shards"),
        (("--replicas", "0"), "--replicas must be >= 1"),
        (("--replicas", "2", "--mutate", "torch:bn_eps"), "bn_sync"),
    ):
        proc = parity("--preset", "tiny", "--frameworks", "torch", *args, timeout=120)
        assert proc.returncode == 2 and words in proc.stdout, proc.stdout + proc.stderr


def test_torch_two_replicas_float32_bounds_are_derived_and_catch_the_other_semantics(
    tmp_path, require_envs
):
    """float32: every bound from the oracle's own float32 replica run (replicas.float32_errors),
    recomputed here independently of the harness; the other BN semantics still fails."""
    from densenet_spec import replicas
    from densenet_spec.case import make_case
    from densenet_spec.config import get_preset
    from densenet_spec.tolerances import FLOAT32_FLOOR, FLOAT32_SAFETY, family

    require_envs("torch")
    f32 = [a if a != "float64" else "float32" for a in TINY]
    out = tmp_path / "f32.json"
    proc = parity(*f32, "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (pair,) = json.loads(out.read_text())["pairs"]
    base = make_case(get_preset("tiny"), batch=2, image_size=32, steps=2, dtype="float32")
    case = replicas.replica_case(base, 2, "synchronised")
    errors = replicas.float32_errors(case, replicas.oracle(case))
    for c in pair["comparisons"]:
        if not c["key"].startswith("step/"):  # step keys may add the conv-bias noise rule
            want = max(FLOAT32_FLOOR[family(c["key"])], FLOAT32_SAFETY * errors[c["key"]])
            assert c["bound"] == pytest.approx(want, rel=1e-6), c["key"]
        assert c["error"] <= c["bound"] <= 1e-2, c
    mutated = parity(*f32, "--mutate", "torch:bn_sync")
    assert "part at train: stem" in mutated.stdout and "SELF-CHECK OK" in mutated.stdout


def bench(*args, timeout=600):
    return spec_command("densenet_bench.cli", *args, "--no-setup", timeout=timeout)


def test_bench_replicas_measures_each_count_against_the_same_runs_baseline(tmp_path, require_envs):
    require_envs("torch")
    out = tmp_path / "scaling.jsonl"
    args = ["--frameworks", "torch", "--replicas", "1,2", "--preset", "tiny", "--batch", "8"]
    args += ["--image-size", "16", "--iters", "3", "--warmup", "1", "--json", str(out)]
    proc = bench(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = (json.loads(line) for line in out.read_text().splitlines())
    assert (one["replicas"], two["replicas"]) == (1, 2) and one["speedup"] == 1.0
    assert two["speedup"] == pytest.approx(two["images_per_s"] / one["images_per_s"])
    assert two["engine"].startswith("torch DistributedDataParallel") and two["timed_steps"] == 3
    assert two["info"]["replicas"] == 2 and "replicas" not in one["info"]


@pytest.mark.parametrize(
    "args, words",
    [
        (("--replicas", "1,3", "--batch", "8"), "batch 8 does not split into 3 shards"),
        (("--replicas", "0"), "counts must be >= 1"),
        (("--replicas", "1,2", "--frameworks", "torchvision"), "our frameworks only"),
    ],
)
def test_bench_replicas_refuses_before_running(args, words):
    proc = bench("--frameworks", "torch", "--preset", "tiny", *args, timeout=120)
    assert proc.returncode == 2 and words in " ".join(proc.stdout.split()), proc.stdout


# What each engine's info says when it ran a process per replica (--replica-processes).
ONE_PROCESS_EACH = {
    "torch": ("backend", "gloo"),  # DDP under torchrun: always a process per replica
    "jax": ("processes", 2),  # jax.distributed over loopback
    "mx": ("kvstore", "dist_sync"),  # parameter-server roles on loopback
    "tf": ("workers", 2),  # MultiWorkerMirroredStrategy, a TF_CONFIG each
}


@pytest.mark.parametrize("fw", list(ONE_PROCESS_EACH))
def test_replica_processes_runs_each_engine_multi_process(tmp_path, require_envs, fw):
    """--replica-processes: every engine's multi-process form, over loopback, still the oracle's
    numbers (float64, 1 step, per-replica BatchNorm)."""
    require_envs(fw)
    out = tmp_path / "r.json"
    args = [a if a not in ("torch",) else fw for a in TINY]
    proc = parity(*args, "--bn-sync", "per-replica", "--replica-processes", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 replicas (per-replica BatchNorm, broadcast running statistics, a process each)" in (
        " ".join(proc.stdout.split())
    )
    report = json.loads(out.read_text())
    key, value = ONE_PROCESS_EACH[fw]
    assert report["frameworks"][fw]["info"][key] == value
    assert all(c["error"] <= c["bound"] <= 1e-9 for c in report["pairs"][0]["comparisons"])


@pytest.mark.parametrize("bn_sync", ["synchronised", "per-replica"])
def test_all_four_engines_pass_two_replicas_and_each_other(tmp_path, require_envs, bn_sync):
    """Issue 20's acceptance: tiny, 2 replicas, float64, 2 steps, both BN semantics, every
    framework against the oracle (running statistics of every replica included) and pairwise;
    a gradient-free mutation of one engine fails and names the stage."""
    frameworks = ["torch", "jax", "tf", "mx"]
    require_envs(*frameworks)
    out = tmp_path / "r.json"
    args = [a if a != "torch" else ",".join(frameworks) for a in TINY]
    proc = parity(*args, "--bn-sync", bn_sync, "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert len(report["pairs"]) == 4 + 6
    for pair in report["pairs"]:
        keys = {c["key"] for c in pair["comparisons"]}
        assert "step/replica1/stem.norm.running_var" in keys
        assert all(c["error"] <= c["bound"] <= 1e-9 for c in pair["comparisons"])
    jax_only = [a if a != "torch" else "jax" for a in TINY]
    mutated = parity(*jax_only, "--bn-sync", bn_sync, "--mutate", "jax:bn_sync")
    assert "part at train: stem" in mutated.stdout and "SELF-CHECK OK" in mutated.stdout
