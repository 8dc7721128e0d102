"""Build the static site: one page, every block side by side in four frameworks, numbers below.

Nothing is copied by hand: every code panel is read from the source file when the site is built,
located by parsing (densenet_teach.source), highlighted by pygments. The page embeds a manifest of
the lines it shows and the hash of every file it read, so `densenet-teach --check DIR` (and the
tests) can tell a page that no longer matches the source.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES, Comment

from densenet_spec.frameworks import FRAMEWORKS
from densenet_teach import differences, numbers
from densenet_teach.blocks import BLOCKS, FAMILIES, Block, in_network, source_path
from densenet_teach.source import BlockNotFound, Segment, file_sha256, locate

ROOT = Path(__file__).resolve().parent.parent
ORACLE = "oracle"
PAGE = "index.html"
ASSETS = ("teach.css", "teach.js")
MANIFEST_ID = "teach-manifest"
NOTE_RE = re.compile(r"#\s*parity:\s*(.*)")


@dataclass
class Note:
    number: int
    line: int  # source line number
    text: str
    code: str  # the rest of the commented line
    anchor: differences.Anchor | None = None
    helper: str = ""  # the private helper it sits in (folded on the page), if any


@dataclass
class Panel:
    column: str  # a framework name or ORACLE
    block: Block
    segments: list[Segment] = field(default_factory=list)
    missing: str = ""  # why the block is not shown (file or definition not there)


def _columns(frameworks) -> list[str]:
    return list(frameworks) + [ORACLE]


def collect(root: Path, frameworks) -> dict[str, dict[str, Panel]]:
    """block id -> column -> the panel's segments (or why it is missing)."""
    out: dict[str, dict[str, Panel]] = {}
    for block in BLOCKS:
        out[block.id] = {}
        for column in _columns(frameworks):
            panel = Panel(column, block)
            wheres = block.oracle if column == ORACLE else (block.where,)
            try:
                for w in wheres:
                    path = source_path(column, w)
                    panel.segments += locate(root, path, w.name, w.parts, helpers=column != ORACLE)
            except BlockNotFound as e:
                panel.segments, panel.missing = [], str(e)
            out[block.id][column] = panel
    return out


def manifest(root: Path, panels: dict[str, dict[str, Panel]]) -> dict:
    """What the page shows, line by line, and the hash of every file it was read from."""
    files: dict[str, str] = {}
    blocks = {}
    for block_id, columns in panels.items():
        blocks[block_id] = {}
        for column, panel in columns.items():
            for seg in panel.segments:
                files.setdefault(seg.path, file_sha256(root / seg.path))
            blocks[block_id][column] = {
                "missing": panel.missing,
                "segments": [[s.path, s.start, s.end, s.label, s.helper] for s in panel.segments],
            }
    return {"files": dict(sorted(files.items())), "blocks": blocks}


# ------------------------------------------------------------------------------------------
# Code


def _css_class(ttype) -> str:
    while ttype not in STANDARD_TYPES and ttype.parent is not None:
        ttype = ttype.parent
    return STANDARD_TYPES.get(ttype, "")


def highlight(text: str) -> list[list[tuple[str, str, object]]]:
    """Lines of (css class, text, token type), split on newlines, for `text` as Python."""
    lines: list[list[tuple[str, str, object]]] = [[]]
    for ttype, value in PythonLexer(stripnl=False, ensurenl=False).get_tokens(text):
        parts = value.split("\n")
        for k, part in enumerate(parts):
            if k:
                lines.append([])
            if part:
                lines[-1].append((_css_class(ttype), part, ttype))
    return lines


def _notes(seg_lines, start: int) -> dict[int, Note]:
    """Line index -> the parity note that starts or continues there."""
    notes: dict[int, Note] = {}
    previous: Note | None = None
    for i, tokens in enumerate(seg_lines):
        comments = [v for _, v, t in tokens if t in Comment]
        code = "".join(v for _, v, t in tokens if t not in Comment).strip()
        m = NOTE_RE.match(comments[-1]) if comments else None
        if m:
            previous = notes[i] = Note(0, start + i, m.group(1).strip(), code)
        elif (
            previous is not None and not previous.code and comments and not code and i - 1 in notes
        ):
            previous.text += " " + comments[-1].lstrip("#").strip()
            notes[i] = previous
        else:
            previous = None
    return notes


@dataclass
class _Rendered:
    html: str
    notes: list[Note]


def render_segment(root: Path, seg: Segment, anchors, first_note: int, show_label: bool):
    text = seg.text(root)
    lines = highlight(text)
    notes = _notes(lines, seg.start)
    ordered: list[Note] = []
    for note in notes.values():
        if note not in ordered:
            note.number = first_note + len(ordered)
            note.anchor = differences.best_anchor(note.text, anchors, note.code)
            note.helper = seg.label.split(" (")[0] if seg.helper else ""
            ordered.append(note)
    rows = []
    for i, tokens in enumerate(lines):
        body = "".join(
            f'<span class="{c}">{html.escape(v)}</span>' if c else html.escape(v)
            for c, v, _ in tokens
        )
        body += "\n" if i < len(lines) - 1 else ""  # inside the line: the text is the source's
        note = notes.get(i)
        if note is None:
            rows.append(f'<span class="l" data-n="{seg.start + i}">{body}</span>')
            continue
        cls = "l parity" if i == 0 or notes.get(i - 1) is not note else "l parity cont"
        mark = ""
        if i == 0 or notes.get(i - 1) is not note:
            href = f"{differences.PAGE}#{note.anchor.id}" if note.anchor else differences.PAGE
            mark = (
                f'<a class="mark" data-note="{note.number}" href="{href}" '
                f'title="parity: {html.escape(note.text)}" aria-label="note {note.number}"></a>'
            )
        rows.append(f'<span class="{cls}" data-n="{seg.start + i}">{mark}{body}</span>')
    where = f"{seg.label} \u00b7 lines {seg.start}\u2013{seg.end}"
    label = f'<div class="seg-label">{html.escape(where)}</div>' if show_label else ""
    out = (
        f'<div class="seg" data-path="{seg.path}" data-start="{seg.start}" '
        f'data-end="{seg.end}" data-label="{html.escape(seg.label)}">{label}'
        f'<pre class="code"><code>{"".join(rows)}</code></pre></div>'
    )
    return _Rendered(out, ordered)


def _note_list(notes: list[Note], column: str, block: Block) -> str:
    if not notes:
        return ""
    items = []
    for n in notes:
        if n.anchor:
            target = f"{differences.PAGE}#{n.anchor.id}"
            where = html.escape(
                n.anchor.section + " \u203a " + n.anchor.topic
                if n.anchor.topic != n.anchor.section
                else n.anchor.section
            )
        else:
            target, where = differences.PAGE, "Framework differences"
        items.append(
            f'<li id="{block.id}-{column}-n{n.number}" data-note="{n.number}">'
            + (f'<span class="in-helper">in {html.escape(n.helper)}:</span> ' if n.helper else "")
            + f'<span class="note-text">{html.escape(n.text)}</span> '
            f'<a class="note-link" href="{target}">{where} \u2192</a></li>'
        )
    return f'<ol class="notes" aria-label="parity notes">{"".join(items)}</ol>'


def _numbers_table(runs, column: str, block: Block) -> str:
    families = [f for f in FAMILIES if block.keys.get(f) is not None]
    if not families:
        return ""
    chosen = {d: numbers.pick(runs, d, block) for d in numbers.DTYPES}
    if any(chosen.values()) and all(
        r is None or not in_network(block, r.config) for r in chosen.values()
    ):
        return (
            '<p class="absent-note">No parity run given here builds this layer: the preset sets '
            "<code>bn_size</code> the other way. Add a run of a DenseNet-BC preset "
            "(<code>--preset densenet_bc_100</code>) for its numbers.</p>"
        )
    head = "".join(f"<th>{d}</th>" for d in numbers.DTYPES)
    rows = []
    for fam in families:
        cells = []
        for d in numbers.DTYPES:
            c = numbers.cell(chosen[d], column, block, fam)
            cls = c.status.replace(" ", "-").replace("/", "")
            cells.append(
                f'<td class="{cls}" title="{html.escape(c.title())}" data-key="{c.key}">'
                f"{html.escape(c.text())}</td>"
            )
        rows.append(f'<tr data-family="{fam}"><th>{FAMILIES[fam]}</th>{"".join(cells)}</tr>')
    presets = sorted({r.preset() for r in chosen.values() if r is not None})
    on = f", preset {html.escape(', '.join(presets))}" if presets else ""
    return (
        f'<table class="nums"><caption>max relative error vs the oracle{on}</caption>'
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _short(column: str) -> str:
    return _title(column).split(" (")[0]


def _title(column: str) -> str:
    return "NumPy oracle" if column == ORACLE else FRAMEWORKS[column].title


def render_panel(root: Path, panel: Panel, runs, anchors) -> str:
    column, block = panel.column, panel.block
    layout = "NCHW" if column == ORACLE else FRAMEWORKS[column].layout
    wheres = block.oracle if column == ORACLE else (block.where,)
    path = ", ".join(dict.fromkeys(source_path(column, w) for w in wheres))
    head = (
        f'<header><span class="fw">{html.escape(_title(column))}</span>'
        f'<span class="path">{html.escape(path)}</span>'
        f'<span class="layout" title="image layout inside the model">{layout}</span></header>'
    )
    if panel.missing:
        body = (
            f'<div class="missing" role="note"><strong>not found:</strong> '
            f"{html.escape(panel.missing)}</div>"
        )
        return (
            f'<article class="panel missing-panel" data-fw="{column}" data-block="{block.id}">'
            f"{head}{body}{_numbers_table(runs, column, block) if column != ORACLE else ''}"
            "</article>"
        )
    main = [s for s in panel.segments if not s.helper]
    helpers = [s for s in panel.segments if s.helper]
    notes: list[Note] = []
    parts = []
    show_labels = len(main) > 1 or bool(block.where.parts)
    for seg in main:
        r = render_segment(root, seg, anchors, len(notes) + 1, show_labels)
        parts.append(r.html)
        notes += r.notes
    if helpers:
        inner = []
        for seg in helpers:
            r = render_segment(root, seg, anchors, len(notes) + 1, True)
            inner.append(r.html)
            notes += r.notes
        names = ", ".join(html.escape(s.label.split(" (")[0]) for s in helpers)
        parts.append(
            f'<details class="helpers"><summary>private helpers used here: {names}</summary>'
            f"{''.join(inner)}</details>"
        )
    foot = ""
    if column == ORACLE:
        foot = (
            '<p class="reference">The reference: every number beside the framework columns is '
            "that framework's relative error against what these functions compute by hand "
            "(NumPy forward and backward, no autodiff).</p>"
        )
    else:
        foot = _numbers_table(runs, column, block)
    return (
        f'<article class="panel" data-fw="{column}" data-block="{block.id}">{head}'
        f'<div class="codebox">{"".join(parts)}</div>'
        f"{_note_list(notes, column, block)}{foot}</article>"
    )


# ------------------------------------------------------------------------------------------
# Page


def _run_summary(runs: dict[str, numbers.Run], warnings: list[str], frameworks) -> str:
    if not runs:
        return (
            '<section class="runs empty"><p><strong>No parity run was given</strong>, so every '
            "number reads <em>not run</em>. <code>python3 dev.py teach</code> runs the harness "
            "in float64 and float32 and builds the page with its numbers; by hand: "
            "<code>densenet-parity --json p64.json</code>, <code>densenet-parity --dtype "
            "float32 --json p32.json</code>, <code>densenet-teach --parity p64.json --parity "
            "p32.json</code>.</p></section>"
        )
    rows, verdicts = [], []
    every = [(d, r) for d in numbers.DTYPES for r in runs.get(d, [None])]
    every += [(d, r) for d, rs in runs.items() if d not in numbers.DTYPES for r in rs]
    for dtype, run in every:
        if run is None:
            rows.append(f"<tr><th>{dtype}</th><td colspan=3>not run</td></tr>")
            verdicts.append(f'{dtype} <span class="verdict none">NOT RUN</span>')
            continue
        case = run.case
        size = "\u00d7".join(str(s) for s in case.get("image_size", []))
        verdict = "pass" if run.data.get("ok") else "fail"
        ran = sum(bool(run.framework(fw).get("ok")) for fw in frameworks)
        verdicts.append(
            f"{dtype} {html.escape(run.preset())} "
            f'<span class="verdict {verdict}">{verdict.upper()}</span>'
            f'<span class="ran"> {ran} of {len(frameworks)} ran</span>'
        )
        fws = []
        for fw in frameworks:
            info = run.framework(fw)
            if not info:
                fws.append(f'<li class="not-run"><b>{fw}</b> not in this run</li>')
                continue
            details = info.get("info", {})
            versions = ", ".join(f"{k} {v}" for k, v in details.get("versions", {}).items())
            if info.get("ok"):
                device = html.escape(str(details.get("device", "")))
                fws.append(f"<li><b>{fw}</b> {html.escape(versions)} <span>({device})</span></li>")
            else:
                why = numbers.last_line(info.get("error", ""))
                fws.append(
                    f'<li class="not-run"><b>{fw}</b> did not run: <code>{html.escape(why)}</code>'
                    "</li>"
                )
        rows.append(
            f"<tr><th>{dtype}</th>"
            f'<td><span class="verdict {verdict}">{verdict.upper()}</span></td>'
            f"<td><code>{html.escape(run.data.get('command', ''))}</code><br>"
            f"preset <b>{html.escape(run.preset())}</b>, device {case.get('device')}, batch "
            f"{case.get('batch')}, {size} images, {case.get('steps')} SGD step(s); "
            f"<code>{html.escape(run.path.name)}</code>, written {run.written()}</td>"
            f'<td><ul class="versions">{"".join(fws)}</ul></td></tr>'
        )
    devices = ", ".join(
        dict.fromkeys(str(r.case.get("device")) for rs in runs.values() for r in rs)
    )
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    joined = " \u00b7 ".join(verdicts)
    flag = f' <span class="warn">\u26a0 {len(warnings)} warning(s)</span>' if warnings else ""
    return (
        '<details class="runs" id="runs"><summary><b>Parity numbers</b> from '
        f"<code>densenet-parity</code> on {html.escape(devices)}: "
        f'{joined}{flag} <span class="more">which run, which versions</span>'
        "</summary>"
        "<p>Each number is the largest relative error, max|framework \u2212 oracle| / "
        "max|oracle|, over the tensors that measure the block (the outputs of its stages, the "
        "gradients of its parameters, its tensors after the SGD steps); hover a number for the "
        "tensor and its bound. \u2713 within the bound of <code>densenet_spec/tolerances.py</code>"
        ", \u2717 over it.</p>"
        f'<table class="runtable"><tbody>{"".join(rows)}</tbody></table>'
        f"{f'<ul class=warnings>{warn}</ul>' if warn else ''}</details>"
    )


def _toc(runs, frameworks) -> str:
    items = []
    for b in BLOCKS:
        status = numbers.block_status(runs, frameworks, b)
        items.append(
            f'<li><a href="#{b.id}"><span class="dot {status.replace(" ", "-")}" '
            f'title="{status}"></span>{html.escape(b.title)}</a></li>'
        )
    return f'<nav class="toc" aria-label="blocks"><ol>{"".join(items)}</ol></nav>'


def _block_section(root, block: Block, panels: dict[str, Panel], runs, anchors, frameworks):
    tabs = "".join(
        f'<button type="button" role="tab" data-fw="{fw}">{html.escape(_short(fw))}</button>'
        for fw in frameworks
    )
    cols = "".join(render_panel(root, panels[fw], runs, anchors) for fw in frameworks)
    oracle = render_panel(root, panels[ORACLE], runs, anchors)
    where = block.where
    code_name = f"{where.name or where.module}" + (
        f" ({', '.join(where.parts)})" if where.parts else ""
    )
    oracle_names = ", ".join(f"{w.module}:{w.name}" for w in block.oracle)
    absent = ""
    configs = [r.config for rs in runs.values() for r in rs]
    if configs and not any(in_network(block, c) for c in configs):
        absent = ' <span class="absent">not in the network of the runs given</span>'
    return (
        f'<section class="block" id="{block.id}" data-block="{block.id}">'
        f'<h2><a class="anchor" href="#{block.id}" title="permalink">#</a> '
        f"{html.escape(block.title)} <small><code>{html.escape(code_name)}</code> in "
        f"<code>{where.module}</code></small>{absent}</h2>"
        f'<p class="summary">{html.escape(block.summary)}</p>'
        f'<div class="tabs" role="tablist" aria-label="framework">{tabs}</div>'
        f'<div class="columns" style="--n: {len(frameworks)}">{cols}</div>'
        f'<details class="oracle"><summary>NumPy oracle: <code>{html.escape(oracle_names)}'
        f"</code></summary>{oracle}</details></section>"
    )


def _document(title: str, body: str, manifest_json: str = "") -> str:
    data = (
        f'<script type="application/json" id="{MANIFEST_ID}">{manifest_json}</script>'
        if manifest_json
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="teach.css">
<script>
try {{
  const asked = new URLSearchParams(location.search).get("theme");
  const t = asked || localStorage.getItem("teach-theme");
  if (t) document.documentElement.dataset.theme = t;
  const s = localStorage.getItem("teach-size");
  if (s) document.documentElement.style.setProperty("--code-size", s + "px");
}} catch (e) {{}}
</script>
</head>
<body data-fw="torch" class="wrap">
{body}
{data}
<script src="teach.js"></script>
</body>
</html>
"""


def _controls() -> str:
    return (
        '<div class="controls">'
        '<button type="button" id="theme" title="dark or light theme">\u25d0 theme</button>'
        '<button type="button" id="smaller" title="smaller code">A\u2212</button>'
        '<button type="button" id="larger" title="larger code (projector)">A+</button>'
        '<button type="button" id="wrap" aria-pressed="true" title="wrap long lines">'
        "wrap</button>"
        '<button type="button" id="oracles" aria-pressed="false" '
        'title="open every NumPy oracle panel">oracle</button>'
        "</div>"
    )


@dataclass
class Site:
    out: Path
    page: Path
    manifest: dict
    warnings: list[str]


def build(out, root: Path = ROOT, parity=(), frameworks=None) -> Site:
    """Write the site into `out` (index.html, differences.html, teach.css, teach.js)."""
    root = Path(root).resolve()
    out = Path(out)
    frameworks = list(frameworks or FRAMEWORKS)
    runs, warnings = numbers.runs_by_dtype(parity)
    doc = differences.load(root)
    anchors = doc[1] if doc else []
    if doc is None:
        warnings.append(f"{differences.DOC} not found: parity notes link to nothing")
    panels = collect(root, frameworks)
    for block_id, columns in panels.items():
        for column, panel in columns.items():
            if panel.missing:
                warnings.append(f"{block_id} in {column}: {panel.missing}")
    sections = "".join(
        _block_section(root, b, panels[b.id], runs, anchors, frameworks) for b in BLOCKS
    )
    man = manifest(root, panels)
    newest = max((root / p).stat().st_mtime for p in man["files"]) if man["files"] else 0
    for run in (r for rs in runs.values() for r in rs):
        if run.path.stat().st_mtime < newest:
            warnings.append(
                f"{run.path.name} is older than the newest source file shown: its numbers may be "
                "those of earlier code (run densenet-parity again)"
            )
    man["parity"] = [str(r.path) for rs in runs.values() for r in rs]
    titles = " \u00b7 ".join(_short(f) for f in frameworks)
    body = (
        '<header class="top"><div class="brand"><h1>DenseNet, side by side</h1>'
        f"<p>{html.escape(titles)}, and the NumPy oracle they are all checked against. Every "
        "panel is read from the source files when this page is built "
        "(<code>densenet-teach</code>); the numbers come from the parity harness.</p></div>"
        f"{_controls()}</header>"
        f"{_toc(runs, frameworks)}"
        f"<main>{_run_summary(runs, warnings, frameworks)}{sections}</main>"
        '<footer><p><a href="differences.html">Framework differences</a>: what each '
        "<code># parity:</code> note explains (<code>docs/framework_differences.md</code>). "
        "Source files read: "
        + ", ".join(f"<code>{html.escape(p)}</code>" for p in man["files"])
        + ".</p></footer>"
    )
    out.mkdir(parents=True, exist_ok=True)
    manifest_json = json.dumps(man, sort_keys=True).replace("</", "<\\/")
    page = out / PAGE
    page.write_text(_document("DenseNet, side by side", body, manifest_json), encoding="utf-8")
    doc_body = doc[0] if doc else "<p>docs/framework_differences.md was not found.</p>"
    (out / differences.PAGE).write_text(
        _document(
            "Framework differences",
            '<header class="top"><div class="brand"><h1><a href="index.html">\u2190</a> '
            "Framework differences</h1><p>Rendered from <code>docs/framework_differences.md"
            "</code>, the table every <code># parity:</code> note links to.</p></div>"
            f'{_controls()}</header><main class="doc">{doc_body}</main>',
        ),
        encoding="utf-8",
    )
    for name in ASSETS:
        with resources.as_file(resources.files("densenet_teach") / "static" / name) as src:
            shutil.copyfile(src, out / name)
    return Site(out, page, man, warnings)


def read_manifest(page: Path) -> dict:
    text = Path(page).read_text(encoding="utf-8")
    m = re.search(rf'<script type="application/json" id="{MANIFEST_ID}">(.*?)</script>', text, re.S)
    if not m:
        raise ValueError(f"{page} has no {MANIFEST_ID}: not a densenet-teach page")
    return json.loads(m.group(1).replace("<\\/", "</"))


def stale(page: Path, root: Path = ROOT, frameworks=None) -> list[str]:
    """How the page at `page` differs from what the source now gives; empty when it matches."""
    old = read_manifest(page)
    root = Path(root).resolve()
    new = manifest(root, collect(root, list(frameworks or FRAMEWORKS)))
    problems = []
    for path, digest in old["files"].items():
        if not (root / path).exists():
            problems.append(f"{path}: shown on the page, no longer exists")
        elif file_sha256(root / path) != digest:
            problems.append(f"{path}: changed since the page was built")
    for path in new["files"]:
        if path not in old["files"]:
            problems.append(f"{path}: now shown, not on the page")
    for block_id, columns in new["blocks"].items():
        for column, shown in columns.items():
            if old["blocks"].get(block_id, {}).get(column) != shown:
                problems.append(f"{block_id} in {column}: the page shows other lines")
    return problems
