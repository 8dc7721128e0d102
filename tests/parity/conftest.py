"""Cross-framework tests run in the spec environment; each framework's worker runs in its own."""

# The shared pytest helpers (tests/support/densenet_testing.py) on the path, as in tests/spec.
import sys
from pathlib import Path

import pytest

import densenet_envs as envs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))


@pytest.fixture
def require_envs():
    """require_envs("torch", "jax"): skip, naming them, unless those environments are built."""

    def check(*names):
        missing = [n for n in names if not envs.is_ready(n)]
        if missing:
            pytest.skip(f"environments not built: {', '.join(missing)} (python3 dev.py envs)")

    return check
