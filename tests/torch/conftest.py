"""One CPU thread for the torch tests.

These models are small and the test machine's cores are shared with other jobs: torch's OpenMP
pool and numpy's OpenBLAS (which runs the oracle) each start a thread per core and then wait on
each other, measured 5-10x slower than one thread. The environment variables only take effect if
numpy and torch are not imported yet; set them (or OMP_NUM_THREADS=1) for the whole run to be sure.
"""

# The shared pytest helpers (tests/support/densenet_testing.py), outside the library. Not tests/
# itself on the path: its folders jax/, torch/, tf/, mx/ would shadow those packages by name.
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "support"))

import importlib.util
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
