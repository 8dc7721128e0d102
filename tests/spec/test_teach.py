"""The teaching page (densenet-teach) shows the source as it is now, and says when it does not."""

from __future__ import annotations

import ast
import os
import re
import shutil

import pytest
from teach_pages import ROOT, panels, parity_json, source_text

from densenet_spec.frameworks import FRAMEWORKS
from densenet_teach import blocks, cli, differences, numbers
from densenet_teach.page import build, read_manifest, stale


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    runs = out.parent / "runs"
    runs.mkdir(exist_ok=True)
    p64 = parity_json(runs / "p64.json", failed={"mx": "Traceback ...\nImportError: no mxnet"})
    p32 = parity_json(runs / "p32.json", dtype="float32", bad_key="train/stem")
    built = build(out, ROOT, [p64, p32])
    return built, (out / "index.html").read_text(encoding="utf-8")


def test_every_block_has_a_panel_per_framework_and_the_oracle(site):
    _, page = site
    found = {(p["block"], p["column"]): p for p in panels(page)}
    for block in blocks.BLOCKS:
        for column in [*FRAMEWORKS, "oracle"]:
            panel = found.get((block.id, column))
            assert panel is not None, f"{block.id}: no {column} panel"
            assert not panel["missing"], f"{block.id} in {column}: not found in the source"
            assert panel["segments"], f"{block.id} in {column}: no code"


def test_every_code_panel_is_the_source_now(site):
    """The page is the source's: each segment's text is exactly the file's lines now."""
    _, page = site
    checked = 0
    for panel in panels(page):
        for seg in panel["segments"]:
            want = source_text(ROOT, seg["path"], seg["start"], seg["end"])
            assert seg["text"] == want, f"{panel['block']} in {panel['column']}: {seg['path']}"
            checked += 1
    assert checked >= 5 * len(blocks.BLOCKS)


def test_top_level_blocks_span_exactly_their_definition(site):
    """Found by parsing: a def's panel starts at the def (or its decorators / comments above)
    and ends at its last line, checked here with ast independently of the generator."""
    _, page = site
    first = {}
    for panel in panels(page):
        if panel["segments"]:
            first[(panel["block"], panel["column"])] = panel["segments"][0]
    for block in blocks.BLOCKS:
        if block.where.name is None or block.where.parts:
            continue
        for fw in FRAMEWORKS:
            path = blocks.source_path(fw, block.where)
            tree = ast.parse((ROOT / path).read_text())
            node = next(n for n in tree.body if getattr(n, "name", None) == block.where.name)
            seg = first[(block.id, fw)]
            assert seg["path"] == path
            assert seg["start"] <= node.lineno and seg["end"] == node.end_lineno, (block.id, fw)


def test_parts_of_the_model_show_where_the_stem_and_head_are_built_and_run(site):
    _, page = site
    for panel in panels(page):
        if panel["block"] in ("stem", "head") and panel["column"] in FRAMEWORKS:
            main = [s for s in panel["segments"] if s["path"].endswith("model.py")]
            text = "\n".join(s["text"] for s in main)
            assert re.search(rf"self\.{panel['block']}\s*=", text), panel["column"]
            assert re.search(rf"self\.{panel['block']}[\[(.]", text), panel["column"]


def _copy_tree(dst):
    for name in [*(f.package for f in FRAMEWORKS.values()), "densenet_spec"]:
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "docs").mkdir()
    shutil.copy(ROOT / differences.DOC, dst / differences.DOC)


def test_a_changed_source_file_makes_the_page_stale(tmp_path):
    tree, out = tmp_path / "tree", tmp_path / "site"
    _copy_tree(tree)
    build(out, tree)
    assert stale(out / "index.html", tree) == []
    assert cli.main(["--check", "--out", str(out), "--root", str(tree)]) == 0

    layers = tree / "densenet_jax" / "layers.py"
    text = layers.read_text()
    layers.write_text(text.replace("def conv_block(", "# a new comment\ndef conv_block(", 1))
    problems = stale(out / "index.html", tree)
    assert any("densenet_jax/layers.py: changed" in p for p in problems), problems
    assert any(p.startswith("conv_block in jax") for p in problems), problems
    assert cli.main(["--check", "--out", str(out), "--root", str(tree)]) == 1

    build(out, tree)  # regenerating makes it the source's again
    assert stale(out / "index.html", tree) == []
    seg = read_manifest(out / "index.html")["blocks"]["conv_block"]["jax"]["segments"][0]
    assert source_text(tree, seg[0], seg[1], seg[2]).startswith("# a new comment\ndef conv_block(")


def test_a_block_that_disappears_is_shown_missing_not_dropped(tmp_path):
    tree, out = tmp_path / "tree", tmp_path / "site"
    _copy_tree(tree)
    train = tree / "densenet_tf" / "train.py"
    train.write_text(train.read_text().replace("def train_step(", "def renamed_step("))
    site = build(out, tree)
    assert any("train_step in tf" in w for w in site.warnings), site.warnings
    found = {(p["block"], p["column"]): p for p in panels(site.page.read_text())}
    assert found[("train_step", "tf")]["missing"]
    assert found[("train_step", "torch")]["segments"]


def test_numbers_read_not_run_without_a_parity_run(tmp_path):
    page = build(tmp_path, ROOT).page.read_text()
    assert "No parity run was given" in page
    cells = re.findall(r'<td class="([a-z-]+)"', page)
    assert cells and set(cells) <= {"not-run", "na"}


def test_numbers_per_block_framework_and_dtype(site):
    _, page = site
    # mx did not run in float64: its cells say so, with the reason in the tooltip
    mx = re.search(r'data-fw="mx" data-block="DenseBlock">.*?</article>', page, re.S).group(0)
    assert 'class="not-run" title="ImportError: no mxnet"' in mx
    # float32 train/stem is over its bound: the stem's train-forward cell fails, DenseBlock's not
    stem = re.search(r'data-fw="torch" data-block="stem">.*?</article>', page, re.S).group(0)
    row = re.search(r'data-family="train">(.*?)</tr>', stem).group(1)
    assert re.findall(r'<td class="(\w+)"', row) == ["pass", "fail"]
    assert 'data-key="train/stem"' in row
    dense = re.search(r'data-fw="torch" data-block="DenseBlock">.*?</article>', page, re.S)
    assert 'class="fail"' not in dense.group(0)
    assert "4 of 4 ran" in page and "3 of 4 ran" in page


@pytest.mark.parametrize(
    ("key", "measures"),
    [
        ("eval/stem", {"stem", "DenseNet"}),
        ("eval/blocks.1.layers.2", {"conv_block", "bottleneck_block", "DenseNet"}),
        ("train/blocks.1", {"DenseBlock", "DenseNet"}),
        ("eval/transitions.0", {"transition_block", "DenseNet"}),
        ("eval/logits", {"head", "DenseNet"}),
        (
            "train_grad/blocks.0.layers.1.norm.weight",
            {
                "batch_norm",
                "conv_block",
                "bottleneck_block",
                "DenseBlock",
                "DenseNet",
                "train_step",
            },
        ),
        ("train_grad/input", {"DenseNet", "train_step"}),
        ("step/head.fc.bias", {"head", "DenseNet", "weights", "train_step"}),
        ("step/stem.norm.running_var", {"batch_norm", "stem", "DenseNet", "weights", "train_step"}),
        ("loss/eval", {"DenseNet"}),
    ],
)
def test_parity_keys_map_to_the_blocks_they_measure(key, measures):
    assert {b.id for b in blocks.BLOCKS if blocks.measured_by(b, key)} == measures


def test_a_bottleneck_run_measures_bottleneck_block(tmp_path):
    d2l = parity_json(tmp_path / "d2l.json")
    bc = parity_json(tmp_path / "bc.json", preset="densenet_bc_100")
    runs, _ = numbers.runs_by_dtype([d2l, bc])
    by_id = {b.id: b for b in blocks.BLOCKS}
    assert numbers.pick(runs, "float64", by_id["bottleneck_block"]).path == bc
    assert numbers.pick(runs, "float64", by_id["conv_block"]).path == d2l
    cell = numbers.cell(
        numbers.pick(runs, "float64", by_id["bottleneck_block"]),
        "torch",
        by_id["bottleneck_block"],
        "eval",
    )
    assert cell.status == "pass" and cell.key.startswith("eval/blocks.")


def test_every_parity_comment_is_a_note_linked_to_a_row_of_the_differences_page(site):
    built, page = site
    ids = set(re.findall(r'id="([^"]+)"', (built.out / differences.PAGE).read_text()))
    marks = [m for p in panels(page) for m in p["marks"]]
    comments = sum(
        len(re.findall(r"#\s*parity:", seg["text"])) for p in panels(page) for seg in p["segments"]
    )
    assert comments >= 8 and len(marks) == comments
    for href in marks:
        page_name, _, anchor = href.partition("#")
        assert page_name == differences.PAGE
        assert anchor in ids, href


def test_the_page_is_one_static_folder(site):
    built, page = site
    assert sorted(p.name for p in built.out.iterdir()) == sorted(
        ["index.html", differences.PAGE, "teach.css", "teach.js"]
    )
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must work offline"
    for block in blocks.BLOCKS:
        assert f'id="{block.id}"' in page and f'href="#{block.id}"' in page  # permalinks


def test_cli_builds_and_reports(tmp_path, capsys):
    assert cli.main(["--out", str(tmp_path / "s")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["--check", "--out", str(tmp_path / "nothing")]) == 1


def test_a_run_older_than_the_source_is_flagged(tmp_path):
    old = parity_json(tmp_path / "old.json")
    os.utime(old, (0, 0))  # written in 1970, before every source file
    site = build(tmp_path / "site", ROOT, [old])
    assert any("old.json is older than the newest source file" in w for w in site.warnings)
    assert "warning(s)" in site.page.read_text()
