"""No shadowing: a merge never takes a name `kernelgen.ops` already resolves in another library, and
`kernelgen list` says which library each op comes from."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from kernelgen.cli import app
from kernelgen.library import NameTaken, builtin_library, free_name, get_op, shadowed

runner = CliRunner()
RMS = builtin_library() / "ops" / "rms_norm"


def _user_lib(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    (lib / "ops").mkdir(parents=True)
    monkeypatch.setenv("KERNELGEN_LIBRARY", str(lib))
    return lib


def test_a_builtin_name_gets_a_suffix_in_a_user_library(tmp_path, monkeypatch):
    lib = _user_lib(tmp_path, monkeypatch)
    name, why = free_name("rms_norm", lib)
    assert name == "rms_norm_2" and "taken" in why and str(builtin_library().resolve()) in why
    assert free_name("brand_new_op", lib) == ("brand_new_op", "")
    # the suffixed name is taken too: the next one
    shutil.copytree(RMS, lib / "ops" / "rms_norm_2")
    assert free_name("rms_norm", lib)[0] == "rms_norm_3"


def test_a_chosen_name_that_is_taken_is_refused(tmp_path, monkeypatch):
    lib = _user_lib(tmp_path, monkeypatch)
    with pytest.raises(NameTaken, match="choose another --name"):
        free_name("rms_norm", lib, fixed=True)


def test_replace_may_reuse_the_name_of_the_target_librarys_own_op_only(tmp_path, monkeypatch):
    lib = _user_lib(tmp_path, monkeypatch)
    shutil.copytree(RMS, lib / "ops" / "mine", ignore=shutil.ignore_patterns("verified"))
    spec = lib / "ops" / "mine" / "spec.toml"
    spec.write_text(spec.read_text().replace('name = "rms_norm"', 'name = "mine"'))
    assert free_name("mine", lib, replace=True) == ("mine", "")
    assert free_name("mine", lib)[0] == "mine_2"
    assert free_name("rms_norm", lib, replace=True)[0] == "rms_norm_2"  # the built-in one is not ours to replace


def test_new_with_a_name_another_library_resolves_exits_2_before_running(tmp_path, monkeypatch):
    lib = _user_lib(tmp_path, monkeypatch)
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["new", "rms norm", "--name", "rms_norm", "--library", str(lib)])
    assert result.exit_code == 2 and "--name 'rms_norm' is taken" in result.output
    assert not (lib / "ops" / "rms_norm").exists()


def test_list_shows_the_library_of_each_op_and_what_it_hides(tmp_path, monkeypatch):
    lib = _user_lib(tmp_path, monkeypatch)
    shutil.copytree(RMS, lib / "ops" / "rms_norm")  # a hand-made shadow
    assert get_op("rms_norm").path == lib.resolve() / "ops" / "rms_norm"
    assert [p.resolve() for p in shadowed()["rms_norm"]] == [RMS.resolve()]
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["list", "--json"]).stdout)}
    assert rows["rms_norm"]["library"] == str(lib.resolve()) and rows["rms_norm"]["shadows"] == [str(RMS.resolve())]
    assert rows["softmax"]["library"] == "built-in" and rows["softmax"]["shadows"] == []
    table = runner.invoke(app, ["list"]).stdout
    assert "built-in" in table and "hides 1" in table
