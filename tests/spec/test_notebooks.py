"""Issue 23: the example notebooks, one per framework, and the Jupyter kernels they run in.

Each notebooks/<framework>.ipynb is executed with nbclient in its framework's kernel, registered
by densenet_envs.kernels (what `python3 dev.py kernels` does) into a temporary JUPYTER_DATA_DIR,
never the user's. The kernel gets no PYTHONPATH: the environment's editable install is what
imports densenet_<framework>, as in a teacher's Jupyter. The logits each notebook prints are the
oracle's, so the four notebooks show the same numbers. A notebook not written yet is skipped
with its name, and fails under CI=true."""

import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")

import densenet_envs as envs  # noqa: E402
from densenet_envs.kernels import display_name, kernel_name, register_kernel  # noqa: E402
from densenet_spec import reference, weightfile  # noqa: E402
from densenet_spec.frameworks import FRAMEWORKS  # noqa: E402
from densenet_spec.tolerances import FLOAT32_FLOOR, FLOAT32_SAFETY  # noqa: E402

ROOT = envs.ROOT
NOTEBOOKS = ROOT / "notebooks"
NAMES = sorted(FRAMEWORKS)
CELL_TIMEOUT_S = 600  # one cell: the first d2l forward (JAX/TF compile) on a busy 2-core machine
STARTUP_TIMEOUT_S = 180  # importing TensorFlow in a fresh kernel


def _absent(why: str):
    """Skip locally; under CI every notebook and environment must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: every framework's notebook runs in CI)")
    pytest.skip(why)


def _notebook(name: str):
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.exists():
        _absent(f"{path.relative_to(ROOT)} is not written yet")
    return nbformat.read(path, as_version=4)


def _oracle_logits() -> tuple[np.ndarray, float]:
    """What every notebook's quick start prints (d2l, the shared weight file, the seed-0 batch),
    from the float64 oracle, and the float32 bound of densenet_spec.tolerances for it."""
    make = runpy.run_path(str(ROOT / "scripts" / "make_notebook_weights.py"))["make"]
    tensors, config = weightfile.load_weights(make())
    images = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)

    def logits(dtype):
        params = {k: v.astype(dtype) for k, v in tensors.items()}
        return reference.forward_features(params, config, images.astype(dtype), False)[0]["logits"]

    want = logits(np.float64)
    e32 = np.abs(logits(np.float32) - want).max() / np.abs(want).max()
    return want, max(FLOAT32_FLOOR["eval"], FLOAT32_SAFETY * e32)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_small_clean_and_names_its_kernel(name):
    nb = _notebook(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == kernel_name(name)
    assert nb.metadata.kernelspec.display_name == display_name(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs are stored"
    source = "\n".join(c.source for c in code)
    assert f"from {FRAMEWORKS[name].package} import" in source
    for word in ("d2l-example.safetensors", 'from_preset("d2l")', "from_nchw(", "predict("):
        assert word in source, f"the quick start lacks {word}"
    assert len(source.splitlines()) <= 60, "keep the example notebook short"


def test_the_notebooks_have_the_same_cells():
    """A teacher runs the same cells in the four notebooks: same order of markdown and code."""
    shapes = {
        n: [c.cell_type for c in nbformat.read(NOTEBOOKS / f"{n}.ipynb", as_version=4).cells]
        for n in NAMES
        if (NOTEBOOKS / f"{n}.ipynb").exists()
    }
    assert len({tuple(s) for s in shapes.values()}) <= 1, shapes


@pytest.fixture
def jupyter_dir(tmp_path, monkeypatch):
    """A private JUPYTER_DATA_DIR (kernels, runtime files) for this test and its kernels."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the editable install imports the project
    return tmp_path / "jupyter"


def _ready(name: str):
    if not envs.is_ready(name):
        _absent(f"the {name} environment is not built (python3 dev.py envs {name})")
    return envs.env_python(name)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_in_its_kernel(name, jupyter_dir):
    nb = _notebook(name)
    folder = register_kernel(name, _ready(name), env=dict(os.environ))
    assert folder.parent == jupyter_dir / "kernels"
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,
        kernel_name=kernel_name(name),
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # cwd: notebooks/
    )
    want, bound = _oracle_logits()  # writes the shared weight file first: all four read it
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    quick = next(c for c in nb.cells if c.cell_type == "code" and "predict(" in c.source)
    text = "".join(o.get("text", "") for o in quick.outputs if o.output_type == "stream")
    printed = [float(v) for v in re.findall(r"-?\d+\.\d*(?:e[-+]?\d+)?", text)]
    assert len(printed) == want.size, f"the quick start printed {text!r}"
    got = np.array(printed).reshape(want.shape)
    # numpy prints 8 significant digits: far below float32's bound
    assert np.abs(got - want).max() / np.abs(want).max() <= bound


def test_dev_kernels_registers_one_kernel_per_framework(jupyter_dir):
    """`python3 dev.py kernels` registers densenet-parity-<framework> for every framework, each
    running its environment's Python with the registry's variables; read back with
    jupyter_client's KernelSpecManager (what `jupyter kernelspec list` shows)."""
    for name in NAMES:
        _ready(name)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "kernels"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    specs = kernelspec.KernelSpecManager().get_all_specs()
    for name in NAMES:
        spec = specs[kernel_name(name)]
        assert spec["resource_dir"].startswith(str(jupyter_dir))
        assert spec["spec"]["display_name"] == f"densenet-parity ({name})"
        assert spec["spec"]["argv"][0] == str(envs.env_python(name))
        assert spec["spec"]["env"] == FRAMEWORKS[name].env
        assert spec["spec"]["language"] == "python"
