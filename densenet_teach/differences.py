"""docs/framework_differences.md as a page of the site, and `# parity:` comments linked to its rows.

The Markdown is the project's own (headings, pipe tables, lists, paragraphs, `code`, **bold**,
[links](...)), so a small renderer is enough and the site needs nothing but the standard library
and pygments. Every heading and every table row gets an anchor; a `# parity:` comment links to the
row whose topic shares the most words with it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DOC = "docs/framework_differences.md"
PAGE = "differences.html"

_STOP = set(
    "the a an of to in and or is are be by as at on for with its it this that not never from "
    "than then when where what which would can does do one once each every per only own here "
    "spec spec's framework frameworks default defaults".split()
)
# A comment's word -> the word the table uses for the same thing.
_SYNONYMS = {
    "eps": "epsilon",
    "pad": "padding",
    "padded": "padding",
    "pads": "padding",
    "same": "padding",
    "valid": "padding",
    "var": "variance",
    "unbiased": "variance",
    "biased": "variance",
    "decay": "weight",
    "l2": "weight",
    "coupled": "weight",
    "decoupled": "weight",
    "lr": "lr",
    "learning": "lr",
    "tf32": "gpu precision",
    "onednn": "cpu determinism",
    "statistic": "stats",
    "statistics": "stats",
    "running_var": "running variance",
    "bn_eps": "epsilon",
    "bn_momentum": "momentum",
    "nhwc": "layout",
    "nchw": "layout",
    "transpose": "layout",
    "max": "max-pool",
    "maxpool": "max-pool",
    "batch_size": "scaling",
    "step": "scaling",
}


def slug(text: str) -> str:
    text = re.sub(r"<[^>]+>|[`*]", "", text).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "row"


@lru_cache(maxsize=4096)
def words(text: str) -> frozenset[str]:
    out = set()
    for w in re.findall(r"[a-z0-9_.='\-]+", text.lower()):
        w = w.strip("'-")
        if len(w) < 2 or w in _STOP:
            continue
        for part in [w, *(p for p in re.split(r"[-_.=]", w) if len(p) > 2)]:
            out.update(_SYNONYMS.get(part, part).split())
    return frozenset(out)


@dataclass(frozen=True)
class Anchor:
    id: str
    section: str
    topic: str  # the row's first cell (or the section title)
    text: str  # the whole row, for tie-breaks


def _inline(text: str) -> str:
    """`code`, **bold**, [text](url), escaped; code spans first so nothing inside them changes."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
            continue
        p = html.escape(p, quote=False)
        p = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", p)
        p = re.sub(
            r"\[([^\]]+)\]\(([^)\s]+)\)",
            lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>',
            p,
        )
        out.append(p)
    return "".join(out)


def _cells(line: str) -> list[str]:
    """A pipe-table row's cells; a | inside `code` does not split."""
    line = line.strip().removeprefix("|").removesuffix("|")
    cells, cur, in_code = [], "", False
    for ch in line:
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return cells + [cur.strip()]


def render(markdown: str) -> tuple[str, list[Anchor]]:
    """(HTML body, every anchor a note can link to)."""
    lines = markdown.splitlines()
    out: list[str] = []
    anchors: list[Anchor] = []
    section, section_id = "", ""
    used: set[str] = set()

    def unique(base: str) -> str:
        a, n = base, 2
        while a in used:
            a, n = f"{base}-{n}", n + 1
        used.add(a)
        return a

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            level, title = len(m.group(1)), m.group(2).strip()
            hid = unique(slug(title))
            if level == 2:
                section, section_id = title, hid
            anchors.append(Anchor(hid, section, title, title))
            out.append(
                f'<h{level} id="{hid}"><a class="anchor" href="#{hid}">#</a> '
                f"{_inline(title)}</h{level}>"
            )
            i += 1
            continue
        if line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            header, body = (
                rows[0],
                [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)],
            )
            out.append('<div class="table"><table><thead><tr>')
            out += [f"<th>{_inline(c)}</th>" for c in header]
            out.append("</tr></thead><tbody>")
            for r in body:
                if len(r[0]) > 40:  # a column per framework, not a row per topic: no anchor
                    out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
                    continue
                rid = unique(f"{section_id}--{slug(r[0])}" if section_id else slug(r[0]))
                anchors.append(Anchor(rid, section, r[0], " ".join(r)))
                out.append(
                    f'<tr id="{rid}">' + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                )
            out.append("</tbody></table></div>")
            continue
        if re.match(r"\s*[-*]\s+", line):
            out.append("<ul>")
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                item = re.sub(r"^\s*[-*]\s+", "", lines[i])
                i += 1
                while (
                    i < len(lines)
                    and lines[i].strip()
                    and not re.match(r"\s*([-*]\s+|#|\|)", lines[i])
                ):
                    item += " " + lines[i].strip()
                    i += 1
                out.append(f"<li>{_inline(item)}</li>")
            out.append("</ul>")
            continue
        para = []
        while (
            i < len(lines) and lines[i].strip() and not re.match(r"(#|\s*\||\s*[-*]\s)", lines[i])
        ):
            para.append(lines[i].strip())
            i += 1
        out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out), anchors


def best_anchor(comment: str, anchors: list[Anchor], code: str = "") -> Anchor | None:
    """The row (or section) a `# parity:` comment explains: the most words shared with a row's
    topic, then with its section, then with the whole row. `code` is the rest of the commented
    line (`epsilon=config.bn_eps`): its names count as said."""
    said = words(comment) | words(code)
    if not said:
        return None

    def score(a: Anchor) -> tuple:
        return (
            len(said & words(a.topic)),
            len(said & words(a.section)),
            len(said & words(a.text)),
        )

    candidates = [a for a in anchors if a.section]
    best = max(candidates, key=score, default=None)
    if best is None or sum(score(best)) == 0:
        return None
    return best


def load(root: Path) -> tuple[str, list[Anchor]] | None:
    path = Path(root) / DOC
    if not path.exists():
        return None
    return render(path.read_text(encoding="utf-8"))
