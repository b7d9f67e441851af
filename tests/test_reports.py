"""Reports render from verdicts: JSON round-trips, the Markdown table is a valid GitHub table, the PNG is
an image. The verdicts here are built by hand: rendering is under test, not measurement."""

import json

import pytest

from kernelgen.verify.report import speedup_png, to_json, to_markdown, write_reports
from kernelgen.verify.verdict import Verdict


def _timed(op, rows):
    perf = [
        {"dtype": "bfloat16", "dims": {"M": m, "N": n}, "kernel_ms": k, "eager_ms": e, "compile_ms": c,
         "speedup_eager": e / k, "speedup_compile": c / k, "kernel_bw_frac": 0.8}
        for m, n, k, e, c in rows
    ]
    return Verdict(op=op, backend="cuda", passed=True, device="NVIDIA H100", performance=perf)


@pytest.fixture
def verdicts():
    return [
        _timed("rms_norm", [(1, 8192, 0.01, 0.02, 0.015), (4096, 4096, 0.1, 0.3, 0.12)]),
        _timed("softmax", [(32, 4096, 0.02, 0.05, 0.01)]),
        Verdict.fail("bad_op", "cuda", "accuracy", "float16 one row: y | differs\nfrom the reference"),
    ]


def test_markdown_has_summary_and_one_row_per_verdict(verdicts):
    md = to_markdown(verdicts)
    lines = md.splitlines()
    assert "2 of 3 passed on cuda (NVIDIA H100); 1 failed" in md
    header = lines.index("| op | backend | result | failing check | message | vs eager | vs compile |")
    rows = lines[header + 2: header + 5]
    assert [r.split("|")[1].strip() for r in rows] == ["rms_norm", "softmax", "bad_op"]
    bad = rows[2]
    assert "**FAIL**" in bad and "| accuracy |" in bad
    assert "y \\| differs from the reference" in bad  # pipes escaped, newlines folded: the row stays a row
    assert all(r.count("|") - r.count("\\|") == 8 for r in rows)
    # the per-shape table: kernel / eager / compile times, both speedups and the roofline fraction
    assert "| rms_norm | bfloat16 | M=4096, N=4096 | 0.1000 | 0.3000 | 0.1200 | 3.00x | 1.20x | 80% |" in md
    assert "| softmax | bfloat16 | M=32, N=4096 | 0.0200 | 0.0500 | 0.0100 | 2.50x | 0.50x | 80% |" in md


def test_markdown_of_accuracy_only_run_says_there_are_no_timings():
    md = to_markdown([Verdict(op="rms_norm", backend="interpreter", passed=True)])
    assert "1 of 1 passed" in md and "accuracy only" in md.lower()
    assert "No op to verify" in to_markdown([])


def test_json_round_trips_verdicts(verdicts):
    doc = json.loads(json.dumps(to_json(verdicts)))
    assert doc["summary"]["passed"] == 2 and doc["summary"]["failed"] == 1
    assert doc["summary"]["failures"] == [{"op": "bad_op", "backend": "cuda", "check": "accuracy"}]
    back = [Verdict.from_dict(d) for d in doc["verdicts"]]
    assert back == verdicts
    assert doc["verdicts"][0]["speedup_vs_eager"] == pytest.approx((2.0 * 3.0) ** 0.5)


@pytest.mark.parametrize("with_timings", [True, False])
def test_speedup_png_is_a_valid_image(verdicts, tmp_path, with_timings):
    import matplotlib.image

    path = speedup_png(verdicts if with_timings else verdicts[2:], tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_write_reports_writes_the_three_files(verdicts, tmp_path):
    paths = write_reports(verdicts, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md", "speedup.png"]
    assert json.loads(paths["json"].read_text())["summary"]["total"] == 3
    assert paths["md"].read_text() == to_markdown(verdicts)
