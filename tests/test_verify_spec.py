"""A spec cannot lower the bar, ATen adapters are verified through the dispatcher, and references from
outside the shipped library run sandboxed: variants of the library's rms_norm (copied to a temporary
library, so their references are untrusted), each with one problem."""

import shutil
from pathlib import Path

import pytest

from kernelgen.library import get_op, load_op
from kernelgen.verify.references import same_outputs
from kernelgen.verify.sandbox import is_shipped_op, verify_many
from kernelgen.verify.wall import sandbox_problem

RMS = get_op("rms_norm").path
pytestmark = pytest.mark.skipif(bool(sandbox_problem()), reason=sandbox_problem() or "")

ORIGINAL_REFERENCE = "return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)"
# name -> (spec edits, kernel edits, check, words)
VARIANTS = {
    "rms_ok": ([], [], "", ""),
    "rms_wide_tolerance": ([('dtypes = ["float32", "float16", "bfloat16"]',
                             'dtypes = ["float32", "float16", "bfloat16"]\n\n[tolerance.float16]\natol = 0.1\n'
                             'rtol = 0.1\nreason = "needs it"')], [], "spec", "wider than 10x"),
    "rms_bad_row_dim": ([("[shapes]", "[shapes]\nrow_dim = \"rows\"")], [], "spec", "row_dim = 'rows' names no dim"),
    "rms_reference_differs": ([(ORIGINAL_REFERENCE, ORIGINAL_REFERENCE.replace("eps)", "eps) * 1.001"))], [],
                              "spec", "disagrees with aten::rms_norm"),
    "rms_reference_load_time": ([("def reference(", "_x = torch.ones(3).sum()\n\ndef reference(")], [],
                                "static", "module level may not call"),
    "rms_narrow_dtypes": ([('dtypes = ["float32", "float16", "bfloat16"]', 'dtypes = ["float32"]')], [],
                          "spec", "the adapter serves float16"),
    # eps=None is torch.finfo(dtype).eps: the float64 reference would accept float64's eps for every dtype
    "rms_reference_eps_from_dtype": ([(ORIGINAL_REFERENCE, ORIGINAL_REFERENCE.replace(", eps)", ")")),
                                      ('[[aten]]\noverload = "aten::rms_norm"\nadapter = "aten_rms_norm"\n', "")],
                                     [], "spec", "another function in float32 than in float64"),
    "rms_adapter_drops_weight": ([], [("        return rms_norm(input, weight, eps)",
                                       "        return rms_norm(input, None, eps)")], "adapter",
                                 "disagrees with ATen's aten::rms_norm"),
}


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    ops = tmp_path_factory.mktemp("lib") / "ops"
    folders = []
    for name, (spec_edits, kernel_edits, _, _) in VARIANTS.items():
        folder = ops / name
        shutil.copytree(RMS, folder, ignore=shutil.ignore_patterns("verified"))
        for fname, edits in (("spec.toml", spec_edits + [('name = "rms_norm"', f'name = "{name}"')]),
                             ("kernel.py", kernel_edits)):
            text = (folder / fname).read_text()
            for old, new in edits:
                assert old in text, (name, old)
                text = text.replace(old, new)
            (folder / fname).write_text(text)
        folders.append(folder)
    result = verify_many(folders, "interpreter", jobs=2, trials=2, timeout=180, write=False)
    return {v.op: v for v in result}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_spec_and_adapter_problems_are_caught(verdicts, name):
    _, _, check, words = VARIANTS[name]
    v = verdicts[name]
    assert v.check == check, f"{name}: {v.check}: {v.message}"
    assert words in v.message
    assert not v.trusted_reference  # outside the shipped library: the reference ran in its own sandbox


def test_adapter_rows_are_in_the_verdict(verdicts):
    rows = [r for r in verdicts["rms_ok"].accuracy if r["case"].startswith("adapter")]
    assert {r["dtype"] for r in rows} == {"float32", "float16", "bfloat16"} and all(r["served"] for r in rows)


def test_shipped_ops_have_trusted_references(tmp_path):
    assert is_shipped_op(RMS)
    assert not is_shipped_op(tmp_path / "ops" / "rms_norm")


def test_same_outputs_runs_both_references_sandboxed():
    silu, gelu = load_op(get_op("silu_and_mul").path).spec, load_op(get_op("gelu_and_mul").path).spec
    assert same_outputs(silu, silu)
    assert not same_outputs(silu, gelu)
    assert not same_outputs(silu, load_op(RMS).spec)  # different arguments: no process needed


def test_widened_tolerances_within_the_cap_are_shown_in_reports():
    from kernelgen.spec import load_spec
    from kernelgen.verify.report import to_markdown
    from kernelgen.verify.specrules import static_rules, widened
    from kernelgen.verify.verdict import Verdict

    text = (RMS / "spec.toml").read_text().replace(
        'dtypes = ["float32", "float16", "bfloat16"]',
        'dtypes = ["float32", "float16", "bfloat16"]\n\n[tolerance.bfloat16]\natol = 0.05\nrtol = 0.05\n'
        'reason = "two roundings to bfloat16"')
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spec.toml").write_text(text)
        spec = load_spec(Path(tmp) / "spec.toml")
    assert static_rules(spec) is None  # 0.05 is within 10x of bfloat16's 0.016 / 0.01
    v = Verdict(op="rms_norm", backend="interpreter", passed=True, tolerances=widened(spec), sandboxed=True)
    md = to_markdown([v])
    assert "Widened tolerances" in md and "two roundings to bfloat16" in md and "| bfloat16 | 0.05 | 0.05 |" in md


def test_every_dtype_gets_a_small_magnitude_case():
    from kernelgen.backends import get_backend
    from kernelgen.verify import plan

    spec = get_op("rms_norm").spec
    calls, groups = plan.build(spec, get_backend("interpreter"), ["x", "weight", "eps"], ["float32", "bfloat16"], 1, 5)
    small = [g for g in groups if g["label"].startswith("small magnitude")]
    assert [g["dtype"] for g in small] == ["float32", "bfloat16"]
    x = calls[small[1]["ids"][0]].args[0]
    assert 0 < x.abs().max().item() < 0.01  # a mean square near 1e-6: an eps of 1e-6 or 1e-2 shows
