"""The framework packages read side by side: same files, same public names, same order, and the
teaching files (layers.py, model.py) hold the model only.

Parses the source (no framework import), so it runs in the framework-free spec environment. The
packages come from the registry, so a new framework is checked the moment it is registered.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from densenet_spec.frameworks import FRAMEWORKS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [f.package for f in FRAMEWORKS.values()]
CONTRACT = {
    "layers.py": ["batch_norm", "conv_block", "DenseBlock", "transition_block", "bottleneck_block"],
    "model.py": ["DenseNet"],
    "weights.py": ["to_canonical", "from_canonical", "save_weights", "load_weights"],
    "train.py": ["loss_fn", "make_optimizer", "train_step", "eval_step", "gradients"],
    "variants.py": ["make_model"],
    "adapter.py": ["environment", "Adapter"],
}
TEACHING_FILES = ("layers.py", "model.py")
# layers.py + model.py together, non-blank lines (docstrings and comments count: a reader reads
# them). The plain model is about 120-170 lines in every framework; 200 leaves room for a
# framework's idiom, not for machinery.
LINE_BUDGET = 200

# What a teaching file must not contain: machinery that belongs in a sibling module (named, so a
# failure says what was found). Matched on code tokens, not on comments or docstrings.
FORBIDDEN = {
    "a hand-written gradient": r"custom_vjp|custom_jvp|custom_gradient|defvjp|autograd\.Function"
    r"|def backward\b|GradientTape|\.vjp\(",
    "an optimization barrier": r"optimization_barrier|stop_gradient",
    "checkpointing": r"\bcheckpoint\b|\bremat\b|\brecompute",
    "a cached op": r"CachedOp",
    "a process-global switch": r"^\s*global\s",
    "a backend-specific branch": r"default_backend\(|platform\.machine|get_device_name",
}


def _code_only(source: str) -> str:
    """The source without comments and docstrings (so prose may name what is elsewhere)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for i in range(body[0].lineno - 1, body[0].end_lineno):
                    lines[i] = ""
    return "\n".join(re.sub(r"#.*$", "", line) for line in lines)


def public_defs(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
    ]


def private_attribute_uses(source: str) -> list[str]:
    """obj._name where obj is not self/cls/super(): another library's private attribute."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Call) and getattr(base.func, "id", "") == "super":
                continue
            found.append(f"line {node.lineno}: .{node.attr}")
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (
                any(p.startswith("_") and not p.endswith("__") for p in node.module.split("."))
                or ".python." in f".{node.module}."
            )
        ):
            found.append(f"line {node.lineno}: from {node.module}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("filename", CONTRACT)
def test_public_names_and_order_follow_the_contract(package, filename):
    path = ROOT / package / filename
    assert path.exists(), f"{package}/{filename} is missing"
    assert public_defs(path) == CONTRACT[filename], (
        f"{package}/{filename} drifted from the contract"
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_teaching_files_fit_the_line_budget(package):
    lines = sum(
        1
        for f in TEACHING_FILES
        for line in (ROOT / package / f).read_text().splitlines()
        if line.strip()
    )
    assert lines <= LINE_BUDGET, f"{package}: layers.py + model.py have {lines} non-blank lines"


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("filename", TEACHING_FILES)
def test_teaching_files_hold_no_machinery(package, filename):
    source = (ROOT / package / filename).read_text()
    code = _code_only(source)
    found = [
        f"{what} ({m.group(0)!r}, line {code[: m.start()].count(chr(10)) + 1})"
        for what, pattern in FORBIDDEN.items()
        for m in [re.search(pattern, code, re.MULTILINE)]
        if m
    ]
    found += [
        f"a private attribute of another library ({u})" for u in private_attribute_uses(source)
    ]
    assert not found, f"{package}/{filename} holds machinery for a sibling module: {found}"


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("filename", TEACHING_FILES)
def test_public_names_come_before_private_helpers(package, filename):
    tree = ast.parse((ROOT / package / filename).read_text())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    first_private = next((i for i, n in enumerate(names) if n.startswith("_")), len(names))
    late = [n for n in names[first_private:] if not n.startswith("_")]
    assert not late, f"{package}/{filename}: public {late} after private {names[first_private]}"


@pytest.mark.parametrize("pattern", sorted(FORBIDDEN.values()))
def test_the_content_rule_catches_machinery(pattern):
    """Negative control: the torch teaching files with each kind of machinery added must fail."""
    samples = {
        "custom_vjp": "f = jax.custom_vjp(g)",
        "optimization_barrier": "y = jax.lax.optimization_barrier(y)",
        "checkpoint": "y = checkpoint(layer, x)",
        "CachedOp": "op = nd.CachedOp(graph)",
        "global": "def f():\n    global FLAG\n",
        "default_backend": "if jax.default_backend() == 'cpu':\n    pass\n",
    }
    sample = next(s for key, s in samples.items() if re.search(pattern, _code_only(s), re.M))
    assert re.search(pattern, _code_only(sample), re.MULTILINE)
    # ... and the same words in a comment or docstring are allowed
    commented = "".join(f"# {line}\n" for line in sample.splitlines())
    assert not re.search(pattern, _code_only(f'"""{sample}"""\n{commented}'), re.MULTILINE)


def test_private_attributes_of_other_libraries_are_found():
    bad = "conv._kwargs['pad'] = 0\nfrom tensorflow.python.framework import config\n"
    assert len(private_attribute_uses(bad)) == 2
    assert private_attribute_uses("self._x = 1\nsuper()._f()\n") == []
    assert private_attribute_uses("from __future__ import annotations\n") == []


def _signature(path: Path, name: str) -> list[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return [a.arg for a in node.args.args]
        if isinstance(node, ast.ClassDef) and node.name == name:
            init = next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                None,
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
        ("variants.py", "make_model"),
    ],
)
def test_layer_arguments_match_torch(package, filename, name):
    """Same positional argument names as the torch file, so a reader switches frameworks by one
    import. Keyword-only arguments (Flax's `rngs`, a dtype) may differ."""
    ours = [a for a in _signature(ROOT / package / filename, name) if a not in ("rngs", "self")]
    torch = [a for a in _signature(ROOT / "densenet_torch" / filename, name) if a != "self"]
    assert ours[: len(torch)] == torch
