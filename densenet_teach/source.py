"""Find a building block in a source file by parsing it: which lines to show, never a copy.

A block is a top-level definition (`batch_norm`, `DenseBlock`), a whole module (`weights.py`), or
the statements of a class that build and run one of its parts (the stem inside `DenseNet`: every
statement that names `stem`). The private helpers such a block calls, in its own module or
imported from its own package, come along as helper segments.
"""

from __future__ import annotations

import ast
import hashlib
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


class BlockNotFound(LookupError):
    """The source file or the definition a block names is not there (any more)."""


@dataclass(frozen=True)
class Segment:
    """Lines start..end (1-based, inclusive) of one file, shown as one piece of code."""

    path: str  # relative to the source root, with forward slashes
    start: int
    end: int
    label: str  # what the lines are: "DenseNet.__init__", "batch_norm", "weights.py"
    helper: bool = False  # a private helper the block calls, shown folded

    def lines(self, root: Path) -> list[str]:
        return read_lines(root / self.path)[self.start - 1 : self.end]

    def text(self, root: Path) -> str:
        """The lines as shown: the block's common indentation removed, nothing else changed."""
        return shown_text(self.lines(root))


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def shown_text(lines: list[str]) -> str:
    return textwrap.dedent("\n".join(lines))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parse(path: Path) -> ast.Module:
    if not path.exists():
        raise BlockNotFound(f"{path.name} does not exist")
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise BlockNotFound(f"{path.name} does not parse: {e.msg} (line {e.lineno})") from None


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    """Name -> the top-level def, class or assignment that binds it."""
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node
    return out


def _first_line(node: ast.stmt, lines: list[str]) -> int:
    """The node's first line, decorators and the comment lines right above it included."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while start > 1 and lines[start - 2].strip().startswith("#"):
        start -= 1
    return start


def _names_used(nodes: list[ast.AST]) -> list[str]:
    seen: dict[str, None] = {}
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                seen[sub.id] = None
    return list(seen)


def _mentions(node: ast.AST, parts: tuple[str, ...]) -> bool:
    """Whether a statement names one of the parts: `self.stem`, `c.stem`, `stem`, "head.fc"."""

    def hit(word: str) -> bool:
        return any(word == p or word.startswith((p + "_", p + ".")) for p in parts)

    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and hit(sub.attr):
            return True
        if isinstance(sub, ast.Name) and hit(sub.id):
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and hit(sub.value):
            return True
    return False


_BODIES = ("body", "orelse", "finalbody", "handlers")


def _is_compound(node: ast.stmt) -> bool:
    return any(getattr(node, f, None) for f in _BODIES) and not isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    )


def _leaves(node: ast.stmt) -> list[ast.stmt]:
    if not _is_compound(node):
        return [node]
    out = []
    for f in _BODIES:
        for child in getattr(node, f, None) or []:
            out += _leaves(child) if isinstance(child, ast.stmt) else []
            if isinstance(child, ast.ExceptHandler):
                for s in child.body:
                    out += _leaves(s)
    return out


def _select(stmts: list[ast.stmt], parts: tuple[str, ...]) -> list[ast.stmt]:
    """The statements that name a part: a compound statement whole when its test does
    (`if c.stem == "imagenet":`) or each of its simple statements does, else what inside does."""
    chosen = []
    for s in stmts:
        if not _mentions(s, parts):
            continue
        test = getattr(s, "test", None)  # `if c.stem == "imagenet":` is about the stem
        whole = test is not None and _mentions(test, parts)
        if whole or not _is_compound(s) or all(_mentions(leaf, parts) for leaf in _leaves(s)):
            chosen.append(s)
            continue
        for f in _BODIES:
            children = getattr(s, f, None) or []
            if f == "handlers":
                for h in children:
                    chosen += _select(h.body, parts)
            else:
                chosen += _select(children, parts)
    return chosen


@dataclass
class _Module:
    root: Path
    path: str
    lines: list[str]
    tree: ast.Module
    defs: dict[str, ast.stmt]

    @classmethod
    def load(cls, root: Path, path: str) -> _Module:
        full = root / path
        if not full.exists():
            raise BlockNotFound(f"{path} does not exist")
        stat = full.stat()
        return _load(root, path, stat.st_mtime_ns, stat.st_size)

    def segment(self, node: ast.stmt, label: str, helper: bool = False) -> Segment:
        return Segment(self.path, _first_line(node, self.lines), node.end_lineno, label, helper)

    def imported(self) -> dict[str, str]:
        """Names imported from a sibling module of the same package -> that module's path."""
        package = Path(self.path).parent.as_posix()
        out = {}
        for node in self.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mod_package, _, mod = node.module.rpartition(".")
                if mod_package.replace(".", "/") == package:
                    for alias in node.names:
                        out[alias.asname or alias.name] = f"{package}/{mod}.py"
        return out


@lru_cache(maxsize=256)
def _load(root: Path, path: str, mtime_ns: int, size: int) -> _Module:
    """Parsed once per version of a file (the key changes when the file does)."""
    tree = _parse(root / path)
    return _Module(root, path, read_lines(root / path), tree, _top_level(tree))


def _is_helper_name(name: str) -> bool:
    """Module-private names (_helper) and module constants (CHANNEL_AXIS) travel with a block."""
    return name.startswith("_") and not name.startswith("__") or (name.isupper() and len(name) > 1)


def _helpers(
    root: Path, module: _Module, nodes: list[ast.AST], skip: set[tuple[str, str]]
) -> list[Segment]:
    """Segments of the private helpers and constants that `nodes` use, transitively."""
    out: list[Segment] = []
    todo = [(module, name) for name in _names_used(nodes)]
    while todo:
        mod, name = todo.pop(0)
        if not _is_helper_name(name) or (mod.path, name) in skip:
            continue
        skip.add((mod.path, name))
        if name in mod.defs:
            node = mod.defs[name]
            out.append(mod.segment(node, f"{name} ({Path(mod.path).name})", helper=True))
            todo += [(mod, n) for n in _names_used([node])]
            continue
        source = mod.imported().get(name)
        if source and (root / source).exists():
            other = _Module.load(root, source)
            if name in other.defs:
                todo.append((other, name))
    seen, unique = set(), []
    for seg in out:  # one assignment can bind several names
        if (seg.path, seg.start) not in seen:
            seen.add((seg.path, seg.start))
            unique.append(seg)
    return sorted(unique, key=lambda s: (s.path != module.path, s.path, s.start))


def locate(
    root: Path,
    path: str,
    name: str | None = None,
    parts: tuple[str, ...] = (),
    helpers: bool = True,
) -> list[Segment]:
    """The segments that show one block: its own lines first, then its private helpers.

    name None: the whole module. parts: only the statements of `name` (a class or function)
    that name one of `parts`, grouped by method and by runs of adjacent lines.
    """
    root = Path(root)
    module = _Module.load(root, path)
    if name is None:
        end = len(module.lines)
        while end > 1 and not module.lines[end - 1].strip():
            end -= 1
        return [Segment(path, 1, end, Path(path).name)]
    node = module.defs.get(name)
    if node is None:
        raise BlockNotFound(f"no top-level `{name}` in {path}")
    if not parts:
        main = [module.segment(node, name)]
        used: list[ast.AST] = [node]
    else:
        main, used = _part_segments(module, node, name, parts)
        if not main:
            raise BlockNotFound(f"`{name}` in {path} names no {' or '.join(parts)}")
    if not helpers:
        return main
    return main + _helpers(root, module, used, {(path, name)})


def _stored(nodes) -> set[str]:
    return {
        n.id
        for node in nodes
        for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }


def _loads_outside(body: list[ast.stmt], skip: list[ast.stmt]) -> set[str]:
    """Names read anywhere in `body` except inside the statements in `skip`."""
    out: set[str] = set()
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if any(node is s for s in skip):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            out.add(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return out


def _inputs(body: list[ast.stmt], chosen: list[ast.stmt]) -> list[ast.stmt]:
    """The plain assignments before the chosen statements that bind a name only they read
    (`init = c.num_init_features` for the stem): the part reads complete, and nothing else."""
    if not chosen:
        return []
    first = min(s.lineno for s in chosen)
    loaded = {
        n.id
        for s in chosen
        for n in ast.walk(s)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    needed = loaded - _stored(chosen)
    out = []
    for s in body:
        if not isinstance(s, (ast.Assign, ast.AnnAssign)) or s.lineno >= first or s in chosen:
            continue
        bound = _stored([s])
        if bound & needed and not bound & _loads_outside(body, [*chosen, s]):
            out.append(s)
    return out


def _part_segments(module: _Module, node: ast.stmt, name: str, parts: tuple[str, ...]):
    if isinstance(node, ast.ClassDef):
        scopes = [
            (f"{name}.{f.name}", f.body)
            for f in node.body
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
    else:
        scopes = [(name, node.body)]
    segments, used = [], []
    for label, body in scopes:
        chosen = _select(body, parts)
        chosen = _inputs(body, chosen) + chosen
        used += chosen
        ranges: list[list[int]] = []
        for s in chosen:
            start, end = _first_line(s, module.lines), s.end_lineno
            gap = module.lines[ranges[-1][1] : start - 1] if ranges else None
            if ranges and not any(line.strip() for line in gap):
                ranges[-1][1] = max(ranges[-1][1], end)
            else:
                ranges.append([start, end])
        segments += [Segment(module.path, a, b, label) for a, b in ranges]
    return segments, used
