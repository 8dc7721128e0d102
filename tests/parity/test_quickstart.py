"""Issue 23: the same five-line quick start in all four frameworks gives the same logits.

    from densenet_<fw> import from_preset, from_nchw, load, predict
    model = from_preset("d2l", dtype="float64")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))      # images: NumPy, NCHW

Each framework runs it in its own environment, from a folder outside the checkout and without
PYTHONPATH (the editable install imports the package), on one float64 weight file and one batch;
every framework's logits are the oracle's to the float64 tolerance. Before that, the same lines in
float32 with the notebooks' weight file give each framework's first-call time (from_preset + load +
first predict, what a notebook user waits for), written to reports/quickstart.json and to the
test's properties. A framework whose api.py does not exist yet is skipped (fails under CI=true).
"""

import json
import os
import runpy
import subprocess
import time

import numpy as np
import pytest

import densenet_envs as envs
from densenet_spec import reference, weightfile
from densenet_spec.config import get_preset
from densenet_spec.frameworks import FRAMEWORKS
from densenet_spec.params import init_params
from densenet_spec.tolerances import FLOAT64

ROOT = envs.ROOT
REPORT = ROOT / "reports" / "quickstart.json"

# Runs in the framework's environment: argv = framework, float32 file, float64 file, output.
QUICK_START = """
import sys, time
t0 = time.perf_counter()
import importlib
import numpy as np
fw, file32, file64, out = sys.argv[1:]
api = importlib.import_module(f"densenet_{fw}")
from_preset, load, predict, from_nchw = api.from_preset, api.load, api.predict, api.from_nchw
import_s = time.perf_counter() - t0
images = np.random.default_rng(0).standard_normal((2, 1, 32, 32))

def numpy(x):
    return x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)

t0 = time.perf_counter()
model = from_preset("d2l")
load(model, file32)
logits32 = numpy(predict(model, from_nchw(images.astype(np.float32))))
first_call_s = time.perf_counter() - t0
t0 = time.perf_counter()
numpy(predict(model, from_nchw(images.astype(np.float32))))
second_call_s = time.perf_counter() - t0

model = from_preset("d2l", dtype="float64")
load(model, file64)
logits = numpy(predict(model, from_nchw(images)))
np.savez(out, logits=logits, logits32=logits32, layout=api.LAYOUT, import_s=import_s,
         first_call_s=first_call_s, second_call_s=second_call_s)
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The float64 weight file and its oracle logits; the notebooks' float32 file."""
    folder = tmp_path_factory.mktemp("quickstart")
    config = get_preset("d2l")
    params = init_params(config, 0, np.float64, randomize_bn=True)
    file64 = folder / "d2l-float64.safetensors"
    weightfile.save_weights(file64, params, config)
    images = np.random.default_rng(0).standard_normal((2, 1, 32, 32))
    want = reference.forward_features(params, config, images, False)[0]["logits"]
    file32 = runpy.run_path(str(ROOT / "scripts" / "make_notebook_weights.py"))["make"]()
    return folder, file32, file64, want


@pytest.fixture(scope="module")
def timings():
    """Collected first-call times, written to reports/quickstart.json at the end."""
    found: dict = {}
    yield found
    if found:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(REPORT.read_text()) if REPORT.exists() else {}
        REPORT.write_text(json.dumps(old | found, indent=2) + "\n")


def _absent(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: the quick start runs in every framework)")
    pytest.skip(why)


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
def test_the_quick_start_gives_the_oracles_logits(name, files, timings, record_property):
    folder, file32, file64, want = files
    framework = FRAMEWORKS[name]
    if not (ROOT / framework.package / "api.py").exists():
        _absent(f"{framework.package}/api.py is not written yet")
    if not envs.is_ready(name):
        _absent(f"the {name} environment is not built (python3 dev.py envs {name})")
    out = folder / f"{name}.npz"
    env = {k: v for k, v in envs.worker_env(name).items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    proc = subprocess.run(
        [str(envs.env_python(name)), "-c", QUICK_START, name, str(file32), str(file64), str(out)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall_s = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = np.load(out)
    assert str(result["layout"]) == framework.layout
    assert result["logits"].dtype == np.float64
    error = np.abs(result["logits"] - want).max() / np.abs(want).max()
    assert error <= FLOAT64["eval"], f"{name}: {error:.2e} from the oracle"
    times = {
        "import_s": round(float(result["import_s"]), 2),
        "first_call_s": round(float(result["first_call_s"]), 2),
        "second_call_s": round(float(result["second_call_s"]), 3),
        "process_s": round(wall_s, 1),
        "float64_error": float(error),
        "load_average": round(os.getloadavg()[0], 1),  # 2 shared cores: timings vary with load
    }
    timings[name] = times
    for key, value in times.items():
        record_property(key, value)
    print(f"{name}: {times}")
