"""Issue 17: the parity harness keeps every result it has when a worker fails, writes the report
with the failure in it, exits non-zero, and on SIGINT or SIGTERM kills its workers and removes its
temp folder. Workers here are the NumPy oracle (`python -m densenet_spec.worker numpy ...`) and
small fake scripts, so these tests run in the spec environment alone, in seconds."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import densenet_spec.harness as harness
from densenet_spec import cli
from densenet_spec.case import make_case
from densenet_spec.compare import Comparison
from densenet_spec.config import get_preset
from densenet_spec.harness import PairReport

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Fake workers: argv is <case folder> <result file>.
FAKES = {
    "no_file": "pass",
    "garbage": "open(sys.argv[2], 'wb').write(b'\\x07garbage, not safetensors')",
    "incomplete": (
        "import numpy as np\n"
        "from densenet_spec.case import write_results\n"
        "write_results(sys.argv[2], {'eval/stem': np.zeros(3)}, {})"
    ),
    "segfault": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
    # Sleeps with a child of its own; reports both pids and its case folder first.
    "slow": (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '120'])\n"
        "open(os.environ['FAKE_PIDS'], 'w').write(f'{os.getpid()} {child.pid} {sys.argv[1]}')\n"
        "time.sleep(120)"
    ),
}


def fake_command(kinds: dict[str, str], folder: Path):
    """A harness.worker_command replacement: framework -> the oracle ("oracle") or a fake."""

    def command(framework, case_dir, out, setup, log, **_):  # **_: pythons, device
        kind, env = kinds[framework], {**os.environ, "PYTHONPATH": str(ROOT)}
        if kind == "oracle":
            return [
                sys.executable,
                "-m",
                "densenet_spec.worker",
                "numpy",
                str(case_dir),
                str(out),
            ], env
        script = folder / f"fake_{kind}.py"
        script.write_text("import sys\n" + FAKES[kind] + "\n")
        return [sys.executable, str(script), str(case_dir), str(out)], env

    return command


def test_failed_workers_are_reported_and_the_others_kept(tmp_path, monkeypatch):
    kinds = {"torch": "oracle", "jax": "no_file", "tf": "garbage", "mx": "incomplete"}
    monkeypatch.setattr(harness, "worker_command", fake_command(kinds, tmp_path))
    out, folder = tmp_path / "out.json", tmp_path / "report"
    code = cli.main(
        [
            "--preset",
            "tiny",
            "--image-size",
            "32",
            "--quantities",
            "eval",
            "--no-setup",
            "--frameworks",
            "torch,jax,tf,mx",
            "--json",
            str(out),
            "--report",
            str(folder),
        ]
    )
    assert code == 1
    report = json.loads(out.read_text())
    fws = report["frameworks"]
    assert fws["torch"]["ok"] is True
    assert [(p["a"], p["b"], p["ok"]) for p in report["pairs"]] == [("torch", "oracle", True)]
    assert "wrote no result file" in fws["jax"]["error"]
    assert "result file is unreadable" in fws["tf"]["error"]
    assert "results are incomplete" in fws["mx"]["error"]
    page = (folder / "parity.md").read_text()
    assert "### jax did not run" in page and "### mx did not run" in page


def test_a_worker_killed_by_a_signal_is_named_and_a_timeout_kills_its_group(tmp_path, monkeypatch):
    kinds = {"torch": "segfault", "jax": "slow"}
    monkeypatch.setattr(harness, "worker_command", fake_command(kinds, tmp_path))
    monkeypatch.setenv("FAKE_PIDS", str(tmp_path / "pids"))
    case = make_case(get_preset("tiny"), image_size=32, quantities=("eval",))
    start = time.monotonic()
    report = harness.run_parity(
        case, ["torch", "jax"], setup=False, log=lambda m: None, worker_timeout=3
    )
    assert time.monotonic() - start < 60
    assert report.runs["torch"].error.startswith("worker killed by SIGSEGV")
    assert "timed out after 3 s" in report.runs["jax"].error
    worker, child, _ = (tmp_path / "pids").read_text().split()
    assert not alive(int(worker)) and wait_dead(int(child))


def test_worker_timeout_is_validated():
    for bad in ("0", "-1", "nan", "inf"):
        assert cli.main(["--worker-timeout", bad, "--no-setup"]) == 2


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed process that nobody has reaped yet is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_dead(pid: int, seconds: float = 10) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_kill_the_worker_group_and_remove_the_temp_folder(tmp_path, sig, code):
    pids = tmp_path / "pids"
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import signal, sys
            from pathlib import Path
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
            import densenet_spec.harness as harness
            from densenet_spec import cli
            from test_harness_robustness import fake_command
            harness.worker_command = fake_command({{"torch": "slow"}}, Path({str(tmp_path)!r}))
            sys.exit(cli.main(["--preset", "tiny", "--image-size", "32", "--quantities", "eval",
                               "--frameworks", "torch", "--no-setup"]))
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver)],
        env={**ENV, "FAKE_PIDS": str(pids)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        end = time.monotonic() + 60
        while not (pids.exists() and len(pids.read_text().split()) == 3):
            assert proc.poll() is None and time.monotonic() < end, "the fake worker never started"
            time.sleep(0.1)
        worker, child, case_dir = pids.read_text().split()
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, output
    assert "interrupted" in output and "Traceback" not in output
    assert wait_dead(int(worker)) and wait_dead(int(child))
    assert not Path(case_dir).exists() and not Path(case_dir).parent.exists()


def test_a_pair_that_parts_only_after_steps_names_the_tensor():
    ok, bad = Comparison("eval/stem", 0.0, 1.0), Comparison("step/stem.conv.bias", 2.0, 1.0)
    pair = PairReport("torch", "oracle", [ok, bad], ["stem"], ["stem.conv.weight"])
    assert pair.first_divergence() == {"step": "stem.conv.bias"}


@pytest.mark.parametrize(
    "dtype, steps, bound, noted",
    [("float32", 5, 0.2, True), ("float32", 5, 1e-3, False), ("float32", 1, 0.2, False),
     ("float64", 5, 0.2, False)],
)  # fmt: skip
def test_float32_multi_step_runs_say_when_their_step_bounds_check_little(
    dtype, steps, bound, noted
):
    """Issue 18: a float32 run over K steps whose derived step bounds have grown past 1e-2 says
    so in the report and its JSON (and nothing is said when the bounds are tight or K = 1)."""
    case = make_case(get_preset("tiny"), image_size=16, steps=steps, dtype=dtype)
    comps = [Comparison("step/stem.conv.weight", 1e-4, bound), Comparison("eval/stem", 0, 1e-5)]
    report = harness.ParityReport(case, {}, [PairReport("torch", "oracle", comps)], 0.0)
    note = harness.float32_steps_note(report)
    assert bool(note) is noted
    assert report.to_json()["notes"] == ([note] if noted else [])
    if noted:
        assert "1 of 1 step bounds exceed 0.01" in note and "stem.conv.weight" in note


def test_worker_exit_codes_name_refusals_and_keep_tracebacks(capsys):
    """errors.exit_code, every worker process's convention: 0; 2 and the message for a named
    error; 1 and the traceback for anything else."""
    from densenet_spec.errors import UsageError, exit_code

    def refuse():
        raise UsageError("no such thing")

    def crash():
        raise KeyError("bug")

    assert exit_code(lambda: None) == 0
    assert exit_code(refuse) == 2 and "UsageError: no such thing" in capsys.readouterr().err
    assert exit_code(crash) == 1 and "Traceback" in capsys.readouterr().err
