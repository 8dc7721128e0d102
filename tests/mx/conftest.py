"""MXNet reads its switches from the environment when its first operator runs, so they are set
here, before any test runs one: the same settings densenet_mx.adapter.environment applies.

MXNET_MKLDNN_ENABLED=0: MXNet 1.9.1's oneDNN max-pool backward is wrong after an eval-mode
forward (test_mx_traps.py shows it in a fresh process with oneDNN on).
"""

# The shared pytest helpers (tests/support/densenet_testing.py), outside the library. Not tests/
# itself on the path: its folders jax/, torch/, tf/, mx/ would shadow those packages by name.
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "support"))

import os

os.environ["MXNET_MKLDNN_ENABLED"] = "0"
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
