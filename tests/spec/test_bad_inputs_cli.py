"""Issue 17: densenet-parity refuses bad arguments up front with a named error and exit 2 (nothing
runs), finds an unwritable --json / --report location before the run, and its HTML report marks
only cells over their own bound."""

import os
import struct

import numpy as np
import pytest

from densenet_spec import cli
from densenet_spec.case import make_case
from densenet_spec.compare import Comparison
from densenet_spec.config import get_preset
from densenet_spec.harness import FrameworkRun, PairReport, ParityReport
from densenet_spec.params import stage_names


@pytest.mark.parametrize(
    "args, words",
    [
        (["--frameworks", ","], "no framework named"),
        (["--quantities", ","], "--quantities names none"),
        (["--quantities", "eval,step", "--steps", "0"], "--steps 0 with the step quantity"),
        (["--image-size", "0"], "--image-size must be >= 1, got 0"),
        (["--image-size", "-5"], "--image-size must be >= 1"),
        (["--batch", "0"], "--batch must be >= 1, got 0"),
        (["--steps", "-1"], "--steps must be >= 0"),
        (["--lr", "nan"], r"--lr must be a finite number in (0, inf), got nan"),
        (["--lr", "-1"], "--lr must be a finite number"),
        (["--lr", "0"], "--lr must be a finite number"),
        (["--momentum", "1"], r"--momentum must be a finite number in [0, 1), got 1.0"),
        (["--momentum", "-0.1"], "--momentum must be"),
        (["--weight-decay=-1e-4"], "--weight-decay must be"),
        (["--weight-decay", "nan"], "--weight-decay must be"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--worker-timeout", "0"], "--worker-timeout must be"),
        (["--worker-timeout", "inf"], "--worker-timeout must be"),
        (["--batch", "100000", "--image-size", "512"], "input values, over the"),
    ],
)
def test_bad_arguments_are_named_errors_before_anything_runs(capsys, args, words):
    assert cli.main([*args, "--no-setup"]) == 2
    out = capsys.readouterr().out
    assert "error:" in out and words in " ".join(out.split()), out
    assert "running" not in out


def test_unwritable_outputs_are_found_before_the_run(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main(["--json", str(blocker / "out.json"), "--no-setup"]) == 2
    assert "--json" in capsys.readouterr().out
    assert cli.main(["--report", str(blocker), "--no-setup"]) == 2
    assert "is not a folder" in capsys.readouterr().out
    assert cli.main(["--json", str(tmp_path), "--no-setup"]) == 2
    assert "is a directory" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_report_folder_is_found_before_the_run(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert cli.main(["--report", str(folder), "--no-setup"]) == 2
        assert "cannot write there" in capsys.readouterr().out
    finally:
        folder.chmod(0o755)


def _report(n_frameworks: int) -> ParityReport:
    """A passing report whose cells have different bounds: every error is under its own bound
    and over the smallest bound of its quantity (what the heatmap compared with before)."""
    case = make_case(get_preset("tiny"), image_size=32, quantities=("eval", "train"))
    names = [f"fw{i}" for i in range(n_frameworks)]
    stages = stage_names(case.config)
    pairs = []
    for a, b in [(a, "oracle") for a in names] + [
        (a, b) for i, a in enumerate(names) for b in names[i + 1 :]
    ]:
        comps = [
            Comparison(f"{mode}/{s}", error=(i + 1) * 1e-6, bound=(i + 1) * 2e-6)
            for mode in ("eval", "train")
            for i, s in enumerate(stages)
        ]
        comps[3] = Comparison(comps[3].key, error=1.0, bound=1e-5)  # one real failure
        pairs.append(PairReport(a, b, comps, stages, []))
    runs = {n: FrameworkRun(n, True) for n in names}
    return ParityReport(case, runs, pairs, 0.0)


def test_heatmap_marks_only_cells_over_their_own_bound():
    from densenet_spec.report_files import stage_matrix

    report = _report(2)
    stages, pairs, errors, over = stage_matrix(report, "eval")
    assert errors.shape == over.shape == (len(stages), len(pairs))
    assert over.sum() == len(pairs) and over[3].all()


def test_heatmap_fits_a_screen_and_the_page_scales_it():
    from densenet_spec.report_files import heatmap_png, html_page

    report = _report(5)  # 15 pairs
    png = heatmap_png(report)
    width, height = struct.unpack(">II", png[16:24])
    assert width <= 1600 and height <= 1400, (width, height)
    assert "max-width:100%" in html_page(report)
    assert np.isfinite(width)
