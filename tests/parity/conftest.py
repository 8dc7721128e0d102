"""Cross-framework tests run in the spec environment; each framework's worker runs in its own."""

import pytest

import densenet_envs as envs


@pytest.fixture
def require_envs():
    """require_envs("torch", "jax"): skip, naming them, unless those environments are built."""

    def check(*names):
        missing = [n for n in names if not envs.is_ready(n)]
        if missing:
            pytest.skip(f"environments not built: {', '.join(missing)} (python3 dev.py envs)")

    return check
