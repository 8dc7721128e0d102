"""The teaching page in a real browser: headless Chromium (Debian's), no other dependency.

The page is built into a temporary folder, opened with --dump-dom (the DOM after the page's
script ran) at a wide and a narrow window, and screenshotted at both widths. Chromium is found on
the system or, as root, installed with apt-get (densenet_envs.browser). Without one the tests
skip and say why; DENSENET_REQUIRE_BROWSER=1 or CI=true (as CI runs) turn that skip into a failure.
DENSENET_TEACH_SHOTS=DIR keeps the screenshots (docs/teaching_page.png is made this way).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from teach_pages import ROOT, panels, parity_json, source_text

from densenet_envs import browser
from densenet_spec.frameworks import FRAMEWORKS
from densenet_teach import blocks
from densenet_teach.page import build

WIDE, NARROW = (1920, 1400), (420, 1400)


@pytest.fixture(scope="module")
def chromium():
    path = browser.ensure_chromium(log=lambda m: print(m, flush=True))
    if path is None:
        message = browser.why_missing()
        if os.environ.get("DENSENET_REQUIRE_BROWSER") == "1" or os.environ.get("CI") == "true":
            pytest.fail(f"DENSENET_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("teach")
    p64 = parity_json(out.parent / "teach-p64.json")
    p32 = parity_json(out.parent / "teach-p32.json", dtype="float32")
    return build(out, ROOT, [p64, p32]).page


def run_chromium(chromium: Path, tmp: Path, size, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{size[0]}-{len(list(tmp.iterdir()))}"
    cmd = [
        str(chromium),
        *browser.HEADLESS_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def dump_dom(chromium, tmp, page: Path, size) -> str:
    return run_chromium(chromium, tmp, size, "--dump-dom", page.as_uri()).stdout


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_every_block_shows_four_columns_of_the_source_now(chromium, page, tmp_path):
    dom = dump_dom(chromium, tmp_path, page, WIDE)
    assert 'data-layout="columns"' in dom, "the wide page does not show the panels side by side"
    found = panels(dom)
    for block in blocks.BLOCKS:
        columns = [p for p in found if p["block"] == block.id and p["column"] != "oracle"]
        assert [p["column"] for p in columns] == list(FRAMEWORKS), block.id
        for p in columns:
            assert p["segments"], f"{block.id} in {p['column']}: no code in the browser"
            for seg in p["segments"]:
                want = source_text(ROOT, seg["path"], seg["start"], seg["end"])
                assert seg["text"] == want, f"{block.id} in {p['column']}: {seg['path']}"


def test_a_narrow_window_shows_one_framework_in_tabs(chromium, page, tmp_path):
    dom = dump_dom(chromium, tmp_path, page, NARROW)
    assert 'data-layout="tabs"' in dom, "the narrow page does not fall back to tabs"
    assert 'role="tab" data-fw="torch" aria-selected="true"' in dom  # the script ran


@pytest.mark.parametrize(("name", "size"), [("wide", WIDE), ("narrow", NARROW)])
def test_screenshot(chromium, page, tmp_path, name, size):
    shot = tmp_path / f"teaching_page_{name}.png"
    run_chromium(chromium, tmp_path, size, f"--screenshot={shot}", page.as_uri())
    assert png_size(shot) == size
    assert shot.stat().st_size > 20_000, "a blank page?"
    keep = os.environ.get("DENSENET_TEACH_SHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
