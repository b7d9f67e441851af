"""spec.toml loading: valid specs round-trip; malformed ones name the file, the field and the expectation."""

import shutil

import pytest

from kernelgen.errors import SpecError
from kernelgen.library import builtin_library
from kernelgen.spec import OpSpec, dump_spec, load_spec

RMS = builtin_library() / "ops" / "rms_norm" / "spec.toml"


def test_library_spec_round_trips_through_toml(tmp_path):
    spec = load_spec(RMS)
    (tmp_path / "spec.toml").write_text(dump_spec(spec))
    again = load_spec(tmp_path / "spec.toml")
    assert again.to_dict() == spec.to_dict()
    assert spec.bytes_moved({"M": 2, "N": 8}, 2) == (2 * 2 * 8 + 8) * 2


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda d: d.pop("name"), "'name'", "missing"),
        (lambda d: d.update(name="Bad-Name"), "'name'", "lower_snake_case"),
        (lambda d: d["signature"].pop("function"), "'signature.function'", "missing"),
        (lambda d: d.update(reference="def reference(:"), "'reference'", "not valid Python"),
        (lambda d: d["inputs"][0].update(fill="zeros"), "'inputs[0].fill'", "must be one of"),
        (lambda d: d["inputs"][2].pop("value"), "'inputs[2].value'", "missing"),
        (lambda d: d.update(dtypes=["float8"]), "'dtypes'", "subset"),
        (lambda d: d["shapes"].update(test=[{"M": 4}]), "'shapes'", "missing ['N']"),
        (lambda d: d["shapes"].update(test=[{"M": -1, "N": 2}]), "'shapes.test[0]'", "non-negative"),
        (lambda d: d.update(tolerance={"bfloat16": {"atol": 1, "rtol": 1, "reason": " "}}), "reason", "why"),
        (lambda d: d["aten"][0].update(overload="rms_norm"), "'aten[0].overload'", "aten::"),
        (lambda d: d["model"].update(bytes="M * Q"), "'model.bytes'", "could not be evaluated"),
    ],
)
def test_malformed_spec_error_names_file_field_and_expectation(tmp_path, edit, field, words):
    doc = load_spec(RMS).to_dict()
    edit(doc)
    import tomli_w

    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert str(path) in msg and field in msg and words in msg


def test_spec_that_is_not_toml_is_reported(tmp_path):
    (tmp_path / "spec.toml").write_text("name = [unclosed")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(tmp_path)


def test_from_dict_builds_the_same_spec():
    spec = load_spec(RMS)
    assert OpSpec.from_dict(spec.to_dict(), "x").to_dict() == spec.to_dict()


def test_copying_a_folder_is_how_an_op_is_added(tmp_path, monkeypatch):
    lib = tmp_path / "lib" / "ops"
    shutil.copytree(RMS.parent, lib / "my_norm", ignore=shutil.ignore_patterns("verified"))
    text = (lib / "my_norm" / "spec.toml").read_text().replace('name = "rms_norm"', 'name = "my_norm"')
    (lib / "my_norm" / "spec.toml").write_text(text)
    monkeypatch.setenv("KERNELGEN_LIBRARY", str(tmp_path / "lib"))
    from kernelgen.library import get_op

    op = get_op("my_norm")
    assert not op.broken and op.path == lib / "my_norm"
