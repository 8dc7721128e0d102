"""MXNet reads its switches from the environment when its first operator runs, so they are set
here, before any test runs one: the same settings densenet_mx.adapter.environment applies.

MXNET_MKLDNN_ENABLED=0: MXNet 1.9.1's oneDNN max-pool backward is wrong after an eval-mode
forward (test_mx_traps.py shows it in a fresh process with oneDNN on).
"""

import os

os.environ["MXNET_MKLDNN_ENABLED"] = "0"
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
