"""The four framework packages read side by side: same files, same public names, same order.

Parses the source (no framework import), so it runs in the framework-free spec environment.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["densenet_torch", "densenet_jax", "densenet_tf", "densenet_mx"]
CONTRACT = {
    "layers.py": ["batch_norm", "conv_block", "DenseBlock", "transition_block", "bottleneck_block"],
    "model.py": ["DenseNet"],
    "weights.py": ["to_canonical", "from_canonical", "save_weights", "load_weights"],
    "train.py": ["loss_fn", "make_optimizer", "train_step", "eval_step", "gradients"],
    "worker.py": ["environment", "run_case"],
}


def public_defs(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
    ]


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("filename", CONTRACT)
def test_public_names_and_order_follow_the_contract(package, filename):
    path = ROOT / package / filename
    assert path.exists(), f"{package}/{filename} is missing"
    assert public_defs(path) == CONTRACT[filename], f"{package}/{filename} drifted from the contract"


def _signature(path: Path, name: str) -> list[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return [a.arg for a in node.args.args]
        if isinstance(node, ast.ClassDef) and node.name == name:
            init = next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
            )
            return [a.arg for a in init.args.args[1:]] if init else []
    raise AssertionError(f"{name} not found in {path}")


@pytest.mark.parametrize("package", PACKAGES[1:])
@pytest.mark.parametrize(
    "filename, name",
    [
        ("layers.py", "batch_norm"),
        ("layers.py", "conv_block"),
        ("layers.py", "transition_block"),
        ("layers.py", "bottleneck_block"),
        ("layers.py", "DenseBlock"),
        ("model.py", "DenseNet"),
        ("weights.py", "save_weights"),
        ("weights.py", "load_weights"),
    ],
)
def test_layer_arguments_match_torch(package, filename, name):
    """Same argument names as the torch file, so a reader switches frameworks by one import.

    Flax NNX modules also take an `rngs` argument; that is the only allowed addition."""
    ours = [a for a in _signature(ROOT / package / filename, name) if a not in ("rngs", "self")]
    torch = [a for a in _signature(ROOT / "densenet_torch" / filename, name) if a != "self"]
    assert ours[: len(torch)] == torch
