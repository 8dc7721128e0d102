"""Bring your own environment, end to end: a second interpreter made here (a venv that sees the
torch environment's packages through a .pth file, so a different interpreter path with torch)
runs the torch worker and gives the same numbers as the project's own environment; bad
interpreters stop the run before anything runs, with the named error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import densenet_envs as envs
from densenet_spec.frameworks import FRAMEWORKS

pytest.importorskip("sklearn")

SMALL = [
    "--preset",
    "tiny",
    "--image-size",
    "16",
    "--batch",
    "128",
    "--dtype",
    "float64",
    "--epochs",
    "1",
    "--steps",
    "3",
    "--reference-steps",
    "0",
    "--no-plot",
    "--no-setup",
]


def make_venv(where: Path, *, with_packages: bool, env: str = "torch") -> Path:
    """A new interpreter path: a venv of environment `env`'s Python, optionally seeing that
    environment's site-packages (a .pth file; nothing is installed or copied)."""
    base = envs.env_python(env)
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    if with_packages:
        paths = subprocess.run(
            [str(base), "-c", "import site; print('\\n'.join(site.getsitepackages()))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(purelib, f"{env}-env.pth").write_text("\n".join(paths) + "\n")
    return python


@pytest.fixture(scope="module")
def second_torch(tmp_path_factory, request):
    if not envs.env_python("torch").exists():  # built, maybe stale: both runs use the same torch
        pytest.skip("environment not built: torch (python3 dev.py envs)")
    return make_venv(tmp_path_factory.mktemp("byo") / "venv", with_packages=True)


def train(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.train_cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**envs.worker_env("spec"), **(env or {})},
    )


def losses(out: Path, name: str) -> list[float]:
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "step"]


def test_parity_worker_in_an_existing_interpreter_matches_the_built_environment(
    second_torch, tmp_path
):
    """What the harness runs (python -m densenet_spec.worker), with python_for's answer."""
    from densenet_spec.case import make_case, read_results, write_case
    from densenet_spec.config import get_preset

    case = make_case(get_preset("tiny"), batch=2, image_size=32, dtype="float64", steps=1)
    case_dir = write_case(case, tmp_path / "case")
    results = {}
    for name, overrides in [("built", None), ("byo", {"torch": str(second_torch)})]:
        python = envs.python_for("torch", overrides, setup=False)
        assert (python == second_torch) == (name == "byo")
        out = tmp_path / f"{name}.safetensors"
        cmd = [str(python), "-m", "densenet_spec.worker", "densenet_torch", str(case_dir), str(out)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=envs.worker_env("torch", parity=True)
        )
        assert proc.returncode == 0, proc.stderr
        results[name] = read_results(out)[0]
    assert sorted(results["byo"]) == sorted(results["built"])
    for key, value in results["built"].items():
        assert (results["byo"][key] == value).all(), key


def has_training_extension(name: str) -> bool:
    text = (envs.ROOT / FRAMEWORKS[name].package / "adapter.py").read_text()
    return all(f"def {m}(" in text for m in ("optimizer_state", "load_optimizer_state", "set_lr"))


@pytest.mark.parametrize("name", ["torch", "mx"])
def test_train_with_an_existing_interpreter_matches_the_built_environment(name, tmp_path):
    """densenet-train --python NAME=<a venv made here>: the same losses as the built environment,
    and summary.json says which interpreter ran (mx: while torch lacks the training extension)."""
    if not envs.env_python(name).exists():
        pytest.skip(f"environment not built: {name} (python3 dev.py envs)")
    if not has_training_extension(name):
        pytest.skip(f"{FRAMEWORKS[name].package}.adapter lacks the training extension")
    second = make_venv(tmp_path / "venv", with_packages=True, env=name)
    assert second != envs.env_python(name)
    built, byo = tmp_path / "built", tmp_path / "byo"
    proc = train("--frameworks", name, *SMALL, "--out", str(built))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = train("--frameworks", name, *SMALL, "--out", str(byo), "--python", f"{name}={second}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(losses(byo, name)) == 3
    assert losses(byo, name) == losses(built, name)  # same packages, same numbers, bit for bit
    summary = json.loads((byo / "summary.json").read_text())
    used = summary["frameworks"][name]["interpreter"]
    assert used["python"] == str(second) and used["source"] == f"--python {name}"
    assert used["versions"]["numpy"] and used["python_version"].startswith("3.")
    built_info = json.loads((built / "summary.json").read_text())["frameworks"][name]
    assert built_info["interpreter"]["source"] == f"built: requirements/{name}.txt"


def test_bad_interpreters_stop_the_run_before_anything_runs(second_torch, tmp_path):
    no_torch = make_venv(tmp_path / "bare", with_packages=False)
    py2 = sorted(Path.home().glob(".pyenv/versions/2.7*/bin/python"))
    cases = [
        (["--python", f"torch={no_torch}"], "MissingPackagesError", "pip install 'torch=="),
        (["--python", f"torch={tmp_path / 'none'}"], "InterpreterNotFoundError", "no such file"),
        (["--python", "pytorch=/x"], "UsageError", "unknown name 'pytorch'"),
        (["--python", f"jax={second_torch}"], "TrainingOptionError", "not in --frameworks"),
    ]
    if py2:
        cases.append((["--python", f"torch={py2[-1]}"], "UnsupportedPythonError", "3.10 to 3.13"))
    for extra, error, words in cases:
        out = tmp_path / f"out-{error}"
        proc = train("--frameworks", "torch", *SMALL, "--out", str(out), *extra)
        text = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode == 2, text
        assert error in text and words in text, text
        assert not out.exists()  # nothing ran, nothing was written
    # the environment variable is checked the same way
    out = tmp_path / "out-env"
    proc = train(
        "--frameworks", "torch", *SMALL, "--out", str(out),
        env={"DENSENET_PYTHON_TORCH": str(no_torch)},
    )  # fmt: skip
    assert proc.returncode == 2 and "DENSENET_PYTHON_TORCH" in proc.stdout + proc.stderr
    assert not out.exists()


def parity_has_python_option() -> bool:
    from densenet_spec import cli

    try:
        cli.parse_args(["--python", "torch=/x"])
    except SystemExit:
        return False
    return True


def test_parity_with_an_existing_interpreter_matches_the_built_environment(second_torch, tmp_path):
    if not parity_has_python_option():
        pytest.skip("densenet-parity has no --python yet (wire-in: notes/issue21.md)")
    args = ["--frameworks", "torch", "--preset", "tiny", "--image-size", "32", "--no-setup"]
    reports = {}
    for name, extra in [("built", []), ("byo", ["--python", f"torch={second_torch}"])]:
        path = tmp_path / f"{name}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "densenet_spec.cli", *args, "--json", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=900,
            env=envs.worker_env("spec"),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        reports[name] = json.loads(path.read_text())
    errors = {
        name: [(c["key"], c["error"]) for p in r["pairs"] for c in p["comparisons"]]
        for name, r in reports.items()
    }
    assert errors["byo"] == errors["built"]
    info = reports["byo"]["frameworks"]["torch"]["info"]
    assert info["interpreter"]["python"] == str(second_torch)
    bad = subprocess.run(
        [sys.executable, "-m", "densenet_spec.cli", *args, "--python", f"torch={tmp_path}/no"],
        capture_output=True,
        text=True,
        timeout=300,
        env=envs.worker_env("spec"),
    )
    assert bad.returncode == 2 and "no such file" in bad.stdout + bad.stderr


def test_bench_with_an_existing_interpreter_names_it_in_every_line(second_torch, tmp_path):
    """densenet-bench --python torch=<a venv made here>: the runner starts with that Python and
    every result line says so (interpreter: path, source, versions)."""
    out = tmp_path / "bench.jsonl"
    argv = ["--frameworks", "torch", "--model", "plain", "--preset", "tiny", "--batch", "2"]
    argv += ["--image-size", "16", "--mode", "infer", "--iters", "1", "--warmup", "0"]
    argv += ["--peak-size", "0", "--no-setup", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "densenet_bench.cli", *argv, "--python", f"torch={second_torch}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=envs.ROOT,
        env=envs.worker_env("spec"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(line["ok"] for line in lines)
    for line in lines:
        assert line["interpreter"]["python"] == str(second_torch)
        assert line["interpreter"]["source"] == "--python torch"
        assert line["interpreter"]["versions"]["torch"] == line["versions"]["torch"]
        assert line["runner_command"].startswith(str(second_torch) + " ")
