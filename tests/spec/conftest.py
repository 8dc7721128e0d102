"""Spec-environment tests: the shared pytest helpers (tests/support) on the import path."""

# The shared pytest helpers (tests/support/densenet_testing.py), outside the library. Not tests/
# itself on the path: its folders jax/, torch/, tf/, mx/ would shadow those packages by name.
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "support"))
