import pathlib

import pytest
import yaml

from gpurepro.errors import EXIT_BAD_INPUT, ManifestError, UnknownStepError
from gpurepro.manifest import device_arch_of, load_manifest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def entry(**over):
    base = {"id": "a", "file": "a.cu", "parent": None, "change": "baseline", "targets": ["sm_120a"],
            "compile": {"sm_120a": "ok"}, "expect": {"sm_121": "pass", "sm_90": "skipped"}}
    base.update(over)
    return base


def write(tmp_path, steps, files=("a.cu", "b.cu")):
    for name in files:
        (tmp_path / name).write_text("int main(){}\n")
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "steps": steps}))
    return path


def test_project_manifest_is_valid_and_chained():
    manifest = load_manifest(ROOT / "repros" / "manifest.yaml")
    assert {"step00", "step01", "sm90_control"} <= set(manifest.steps)
    for step in manifest.steps.values():
        assert (manifest.root / step.file).is_file()
        assert step.parent is None or step.parent in manifest.steps
    assert manifest.get("step01").parent == "step00"
    assert manifest.get("step01").expect["sm_121"] == "init_error"
    assert manifest.get("sm90_control").expect["sm_90"] == "pass"


def test_chain(tmp_path):
    manifest = load_manifest(write(tmp_path, [entry(), entry(id="b", file="b.cu", parent="a", change="one thing")]))
    assert [s.id for s in manifest.chain("a", "b")] == ["a", "b"]
    with pytest.raises(ManifestError, match="not an ancestor"):
        manifest.chain("b", "a")


@pytest.mark.parametrize("steps, key, words", [
    ([entry(parent="zzz")], "steps.a.parent", "not a step listed before"),
    ([entry(), entry()], "steps.a.id", "duplicate"),
    ([entry(file="missing.cu")], "steps.a.file", "does not exist"),
    ([entry(expect={"sm_121": "exploded"})], "steps.a.expect.sm_121", "unknown outcome"),
    ([entry(expect={"sm_121a": "pass"})], "steps.a.expect.sm_121a", "device arch"),
    ([entry(compile={"sm_120a": "pass"})], "steps.a.compile.sm_120a", "unknown outcome"),
    ([entry(targets="sm_120a")], "steps.a.targets", "list of archs"),
    ([entry(colour="red")], "steps.a.colour", "unknown key"),
    ([{k: v for k, v in entry().items() if k != "change"}], "steps.a.change", "missing"),
    ([entry(id="Bad Id")], "steps.Bad Id.id", "[a-z0-9_]+"),
])
def test_malformed_entries(tmp_path, steps, key, words):
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, steps))
    assert info.value.key == key and words in info.value.one_line()
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_not_a_manifest(tmp_path):
    path = tmp_path / "manifest.yaml"
    path.write_text("steps: {}\n")
    with pytest.raises(ManifestError, match="version: 1"):
        load_manifest(path)


def test_unknown_step_suggests(tmp_path):
    manifest = load_manifest(write(tmp_path, [entry()]))
    with pytest.raises(UnknownStepError) as info:
        manifest.get("step99")
    assert info.value.exit_code == EXIT_BAD_INPUT and "unknown step 'step99'" in info.value.one_line()


def test_device_arch_of():
    assert device_arch_of("sm_121a") == "sm_121" and device_arch_of("sm_120f") == "sm_120"
    assert device_arch_of("sm_90") == "sm_90"


# --- schema validation, confinement -----------------------------------------------------------------
@pytest.mark.parametrize("patch", ["/etc/hostname", "../../x", "../manifest.yaml", "sub/../../x"])
def test_patches_confined_to_patches_dir(tmp_path, patch):
    (tmp_path / "patches").mkdir()
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, [entry(patches=[patch])]))
    assert info.value.key == "steps.a.patches" and info.value.exit_code == EXIT_BAD_INPUT
    assert "repros/patches/" in info.value.one_line() and "\n" not in info.value.one_line()


def test_patch_link_leading_out_is_refused(tmp_path):
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "evil.patch").symlink_to("/etc/hostname")
    (tmp_path / "patches" / "good.patch").write_text("--- a\n+++ b\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, [entry(patches=["evil.patch"])]))
    assert "outside repros/patches/" in info.value.one_line()
    assert load_manifest(write(tmp_path, [entry(patches=["good.patch"])])).get("a").patches == ("good.patch",)


def test_every_problem_is_reported(tmp_path):
    steps = [entry(expect={"sm_121": "exploded"}, colour="red"),
             entry(id="b", file="missing.cu", parent="zzz", change="x", targets="sm_120a")]
    path = write(tmp_path, steps)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    problems = dict(info.value.problems)
    assert set(problems) == {"steps.a.expect.sm_121", "steps.a.colour", "steps.b.targets", "steps.b.parent",
                             "steps.b.file"}
    assert problems["steps.b.file"] == "missing.cu does not exist"
    lines = info.value.lines()
    assert len(lines) == 5 and all(line.startswith(f"{path}: steps.") for line in lines)


def test_entry_that_is_not_a_mapping_is_named_by_index(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, [entry(), "just text"]))
    assert info.value.key == "steps[1]" and "expected a mapping" in info.value.one_line()


def test_non_utf8_byte(tmp_path):
    path = write(tmp_path, [entry()])
    data = path.read_bytes()
    path.write_bytes(data.replace(b"baseline", b"basel\xe9ne"))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    offset = data.index(b"baseline") + 5
    assert f"byte 0xe9 at offset {offset}" in info.value.one_line() and info.value.exit_code == EXIT_BAD_INPUT


def test_schema_outcomes_match_the_tool():
    import json

    from gpurepro.outcomes import COMPILE_EXPECTATIONS, EXPECTATIONS
    from gpurepro.validate import load_schema

    schema = load_schema("manifest")  # also checked against its metaschema
    step = schema["properties"]["steps"]["items"]["properties"]
    assert list(step["expect"]["patternProperties"].values())[0]["enum"] == list(EXPECTATIONS)
    assert list(step["compile"]["patternProperties"].values())[0]["enum"] == list(COMPILE_EXPECTATIONS)
    published = json.loads((ROOT / "docs" / "schemas" / "manifest.schema.json").read_text())
    import jsonschema
    jsonschema.validate(yaml.safe_load((ROOT / "repros" / "manifest.yaml").read_text()), published)
