"""The parent's comparisons on hand-made results (no process, no kernel): the equal-outputs rule follows the
reference, storage sharing and changed inputs are named, a skipped optional case says why."""

import torch

from kernelgen.spec import OpSpec
from kernelgen.verify.compare import compare
from kernelgen.verify.plan import Call

SPEC = OpSpec.from_dict({
    "name": "rowsum", "description": "d", "signature": {"function": "rowsum", "outputs": ["y"]},
    "reference": "def reference(x):\n    return x.sum(-1)\n", "inputs": [{"name": "x", "shape": ["M", "N"]}],
    "shapes": {"test": [{"M": 1, "N": 4}]}, "dtypes": ["bfloat16"]})


def _case(outputs: list[torch.Tensor], refs: list[torch.Tensor], inputs_after=None):
    calls, results, ref_map = [], [], {}
    for n, (out, ref) in enumerate(zip(outputs, refs)):
        x = torch.randn(1, 4).to(torch.bfloat16)
        calls.append(Call(id=n, case="test", dtype="bfloat16", dims={"M": 1, "N": 4}, seed=n, args=[x], trial=n))
        after = inputs_after[n] if inputs_after else x.clone()
        results.append({"id": n, "outputs": [out], "error": "", "launches": 1, "violations": [], "inputs": [after],
                        "devices": ["cpu"], "served": 0, "fallbacks": 0})
        ref_map[n] = (ref,)
    groups = [{"label": "test", "dtype": "bfloat16", "dims": {"M": 1, "N": 4}, "ids": [c.id for c in calls]}]
    return compare(SPEC, "cpu", calls, groups, results, ref_map, {"bfloat16": [torch.bfloat16]})


def test_equal_outputs_pass_when_the_reference_rounds_to_the_same_value():
    # Two different inputs whose float64 sums differ slightly but round to one bfloat16 value.
    same = torch.tensor([1.5], dtype=torch.bfloat16)
    outcome = _case([same.clone(), same.clone()], [torch.tensor([1.5001], dtype=torch.float64),
                                                   torch.tensor([1.5002], dtype=torch.float64)])
    assert outcome.passed, outcome.message


def test_equal_outputs_fail_when_the_reference_differs():
    same = torch.tensor([1.5], dtype=torch.bfloat16)
    outcome = _case([same.clone(), same.clone()], [torch.tensor([1.5], dtype=torch.float64),
                                                   torch.tensor([1.5], dtype=torch.float64) + 0.5])
    assert outcome.check == "anticheat" and "where the reference's outputs differ" in outcome.message


def test_a_changed_input_is_named():
    x = torch.zeros(1, 4, dtype=torch.bfloat16)
    outcome = _case([torch.tensor([0.0], dtype=torch.bfloat16)], [torch.tensor([0.0], dtype=torch.float64)],
                    inputs_after=[x + 1])
    assert outcome.check == "inputs" and "'x' changed" in outcome.message


def test_an_output_sharing_an_earlier_outputs_storage_is_named():
    out = torch.tensor([1.0], dtype=torch.bfloat16)
    outcome = _case([out, out], [torch.tensor([1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)])
    assert outcome.check == "outputs" and "an earlier call" in outcome.message


def test_wrong_dtype_is_an_outputs_failure():
    outcome = _case([torch.tensor([1.0])], [torch.tensor([1.0], dtype=torch.float64)])
    assert outcome.check == "outputs" and "dtype float32, expected bfloat16" in outcome.message
