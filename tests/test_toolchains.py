"""ci/toolchains.yaml: validation (exit 2, one line per problem), selection, equivalence, images, patch applicability."""
from __future__ import annotations

import copy
import importlib.util
import pathlib
import shutil
import subprocess
import zipfile

import pytest
import yaml

from gpurepro import images
from gpurepro.errors import EXIT_BAD_INPUT, BadInputError, InfraError
from gpurepro.toolchains import (ToolchainFileError, compile_fingerprint, equivalence_groups, header_tree_hash,
                                 load_toolchains, parse_toolchains, patch_applies, repository, version_matches)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "ci" / "toolchains.yaml"
POOL = ROOT / "docker" / "wheelhouse" / "pool"
PATCH = "cutlass-sm120-ptr-array-mxf8f6f4-tags.patch"
SHA = "ab" * 32


def shipped_data() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def problems_of(data, tmp_path) -> list[str]:
    path = tmp_path / "toolchains.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ToolchainFileError) as caught:
        load_toolchains(path)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    lines = caught.value.one_line().splitlines()
    assert len(lines) == len(caught.value.problems) and all(line.startswith(str(path)) for line in lines)
    return lines


def layout_module():
    spec = importlib.util.spec_from_file_location("layout_flashinfer_t", ROOT / "docker" / "layout_flashinfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the shipped file ---------------------------------------------------------------------------
def test_shipped_toolchains_load_with_the_issue_s_versions():
    toolchains = load_toolchains(SHIPPED)
    assert toolchains.default.name == "default"
    facts = {t.name: (t.nvcc_version, t.cutlass_version, t.flashinfer_version) for t in toolchains.select("all")}
    assert facts["default"] == ("13.0.88", "4.5.0", "0.7.2")
    assert facts["cutlass-4.2"] == ("13.0.88", "4.2.1", "0.5.3")
    assert facts["nvcc-13.5"] == ("13.5.37", "4.5.0", "0.7.2")
    assert facts["cuda-12.9"] == ("12.9.86", "4.5.0", "0.7.2")
    assert toolchains["cutlass-4.2.0"].cutlass_wheel.name == "nvidia-cutlass"
    assert [t.name for t in toolchains.select("all") if not t.offline] == ["cuda-12.9"]
    assert toolchains["cuda-12.9"].cuda_major == 12 and toolchains["default"].cuda_major == 13


def test_default_toolchain_matches_the_docker_requirements():
    """docker/requirements/{toolchain,flashinfer}.txt (image.wheels, toolchain.headers) pin what the default does."""
    pins = images.pinned_requirements(ROOT / "docker/requirements/toolchain.txt") + \
        images.pinned_requirements(ROOT / "docker/requirements/flashinfer.txt")
    default = load_toolchains(SHIPPED).default
    assert {(p["name"], p["version"], p["sha"]) for p in pins} == {(p.name, p.version, p.sha256) for p in default.wheels}


def test_schema_is_valid_draft_2020_12():
    import json

    import jsonschema

    schema = json.loads((ROOT / "docs/schemas/toolchains.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("/2020-12/schema")


# --- validation ---------------------------------------------------------------------------------
def test_pin_without_hash_bad_hash_and_bad_version_are_each_one_line(tmp_path):
    data = shipped_data()
    wheels = data["toolchains"]["default"]["wheels"]
    del wheels[0]["sha256"]
    wheels[1]["sha256"] = "not-a-hash"
    wheels[2]["version"] = "13.0.88-final"
    lines = problems_of(data, tmp_path)
    assert len(lines) == 3
    assert any("toolchains.default.wheels[0]" in line and "'sha256' is required" in line for line in lines)
    assert any("wheels[1].sha256" in line and "'not-a-hash' is not a valid sha256" in line for line in lines)
    assert any("wheels[2].version" in line and "not a valid version" in line for line in lines)


def test_unknown_wheel_and_key_names(tmp_path):
    data = shipped_data()
    data["toolchains"]["default"]["wheels"].append({"name": "nvidia-cuda-nvcc-typo", "version": "1.0", "sha256": SHA})
    data["toolchains"]["nvcc-13.5"]["cutlas_version"] = "4.5.0"
    lines = problems_of(data, tmp_path)
    assert any("wheels[8].name" in line and "nvidia-cuda-nvcc-typo" in line for line in lines)
    assert any("toolchains.nvcc-13.5" in line and "cutlas_version" in line for line in lines)


def test_two_defaults_and_no_default(tmp_path):
    data = shipped_data()
    data["toolchains"]["nvcc-13.5"]["default"] = True
    (line,) = problems_of(data, tmp_path)
    assert "exactly one toolchain must have default: true, found 2 (default, nvcc-13.5)" in line
    del data["toolchains"]["nvcc-13.5"]["default"], data["toolchains"]["default"]["default"]
    (line,) = problems_of(data, tmp_path)
    assert "found 0" in line


def test_reserved_and_bad_toolchain_names(tmp_path):
    for name in ("latest", "all", "Upper", "has space"):
        data = shipped_data()
        data["toolchains"][name] = copy.deepcopy(data["toolchains"]["nvcc-13.5"])
        lines = problems_of(data, tmp_path)
        assert any(repr(name) in line for line in lines), (name, lines)


def test_incomplete_or_mixed_cuda_sets(tmp_path):
    data = shipped_data()
    wheels = data["toolchains"]["nvcc-13.5"]["wheels"]
    wheels[:] = [w for w in wheels if w["name"] != "nvidia-nvvm"]
    (line,) = problems_of(data, tmp_path)
    assert "toolchains.nvcc-13.5.wheels: nvidia-nvvm is missing" in line
    wheels.append({"name": "nvidia-cuda-runtime-cu12", "version": "12.9.79", "sha256": SHA})
    lines = problems_of(data, tmp_path)
    assert any("CUDA 12 (-cu12) and CUDA 13 wheels mixed" in line for line in lines)
    data = shipped_data()
    del data["toolchains"]["cuda-12.9"]["base_image"]
    (line,) = problems_of(data, tmp_path)
    assert "carry no nvcc driver; set base_image" in line


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(BadInputError, match="cannot read"):
        load_toolchains(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntoolchains: [\n")
    with pytest.raises(ToolchainFileError, match="not valid YAML"):
        load_toolchains(bad)


def test_unquoted_decimal_versions_stay_text(tmp_path):
    text = SHIPPED.read_text().replace("flashinfer-python, version: 0.7.2", "flashinfer-python, version: 0.7", 1)
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert load_toolchains(path).default.flashinfer_version == "0.7"  # not 0.7 the float, nor an error


# --- selection and naming -----------------------------------------------------------------------
def test_select_all_names_latest_and_unknown():
    toolchains = load_toolchains(SHIPPED)
    assert [t.name for t in toolchains.select("all")] == toolchains.names
    assert [t.name for t in toolchains.select(["nvcc-13.5", "default", "nvcc-13.5"])] == ["nvcc-13.5", "default"]
    assert [t.name for t in toolchains.select("cutlass-4.2, latest")] == ["cutlass-4.2", "default"]
    with pytest.raises(BadInputError) as caught:
        toolchains.select(["default", "cuda-13.9", "nope"])
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert "'cuda-13.9', 'nope'" in caught.value.one_line() and "known: default" in caught.value.one_line()
    with pytest.raises(BadInputError):
        toolchains.select("")


def test_image_names():
    toolchains = load_toolchains(SHIPPED)
    assert toolchains.default.image_tags("gpurepro/toolchain:latest") == ["gpurepro/toolchain:default",
                                                                          "gpurepro/toolchain:latest"]
    assert toolchains["nvcc-13.5"].image_tags("gpurepro/vllm-dev:latest") == ["gpurepro/vllm-dev:nvcc-13.5"]
    assert toolchains["cutlass-4.2"].image("localhost:5000/team/vllm-dev") == "localhost:5000/team/vllm-dev:cutlass-4.2"
    assert repository("localhost:5000/gpurepro/toolchain:latest") == "localhost:5000/gpurepro/toolchain"
    record = toolchains["cutlass-4.2.0"].record()
    assert (record["nvcc"], record["cutlass"], record["cutlass_source"]) == ("13.0.88", "4.2.0", "nvidia-cutlass==4.2.0.0")


# --- equivalence --------------------------------------------------------------------------------
def fake_flashinfer(path: pathlib.Path, version: str, cutlass_minor: int, extra: bytes = b"") -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("flashinfer/data/include/flashinfer/a.cuh", "// a\n")
        zf.writestr("flashinfer/data/cutlass/include/cutlass/version.h",
                    f"#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR {cutlass_minor}\n#define CUTLASS_PATCH 0\n")
        zf.writestr("flashinfer/data/cutlass/include/cutlass/gemm.h", "// gemm\n")
        zf.writestr("flashinfer/__init__.py", f"__version__ = '{version}'\n" + extra.decode())
    return path


def fake_file(data: dict, tmp_path, wheels: dict[str, pathlib.Path]):
    """The shipped file with its flashinfer pins pointed at fake wheels."""
    for name, entry in data["toolchains"].items():
        for pin in entry["wheels"]:
            if pin["name"] == "flashinfer-python" and name in wheels:
                pin["sha256"] = images.sha256_file(wheels[name])
    return parse_toolchains(data, tmp_path / "t.yaml")


def test_equivalence_needs_the_same_headers_and_the_same_compiler(tmp_path):
    a = fake_flashinfer(tmp_path / "flashinfer_python-0.7.2-py3-none-any.whl", "0.7.2", 5)
    b = fake_flashinfer(tmp_path / "flashinfer_python-0.7.4-py3-none-any.whl", "0.7.4", 5, extra=b"# other bytes\n")
    c = fake_flashinfer(tmp_path / "flashinfer_python-0.5.3-py3-none-any.whl", "0.5.3", 2)
    data = shipped_data()
    data["toolchains"]["same-headers"] = copy.deepcopy(data["toolchains"]["default"])
    del data["toolchains"]["same-headers"]["default"]
    # a different cuobjdump does not change what a compile sees
    data["toolchains"]["same-headers"]["wheels"][5]["sha256"] = SHA
    toolchains = fake_file(data, tmp_path, {"default": a, "same-headers": b, "cutlass-4.2": c, "nvcc-13.5": a})
    dirs = [tmp_path]
    assert images.sha256_file(a) != images.sha256_file(b)
    assert header_tree_hash(toolchains["default"], dirs) == header_tree_hash(toolchains["same-headers"], dirs)
    assert header_tree_hash(toolchains["default"], dirs) != header_tree_hash(toolchains["cutlass-4.2"], dirs)
    # same headers, another nvcc: not equivalent
    assert header_tree_hash(toolchains["nvcc-13.5"], dirs) == header_tree_hash(toolchains["default"], dirs)
    assert compile_fingerprint(toolchains["nvcc-13.5"], dirs) != compile_fingerprint(toolchains["default"], dirs)
    groups = equivalence_groups(toolchains.select(["default", "cutlass-4.2", "same-headers", "nvcc-13.5"]), dirs)
    assert [[t.name for t in g] for g in groups] == [["default", "same-headers"], ["cutlass-4.2"], ["nvcc-13.5"]]


def test_header_hash_without_the_wheel_or_for_git_sources_is_infra(tmp_path):
    toolchains = load_toolchains(SHIPPED)
    with pytest.raises(InfraError) as caught:
        header_tree_hash(toolchains["default"], [tmp_path])
    assert "no flashinfer-python==0.7.2 wheel" in caught.value.one_line()
    assert "image.wheels --toolchain default" in caught.value.one_line()
    data = shipped_data()
    data["toolchains"]["git"] = copy.deepcopy(data["toolchains"]["nvcc-13.5"])
    data["toolchains"]["git"]["cutlass_source"] = {"git": {"url": "https://github.com/NVIDIA/cutlass.git",
                                                           "tag": "v4.2.1", "commit": "f" * 40}}
    git = parse_toolchains(data, tmp_path / "t.yaml")["git"]
    assert not git.offline
    with pytest.raises(InfraError, match="from git"):
        header_tree_hash(git, [tmp_path])


@pytest.mark.skipif(not POOL.is_dir(), reason="no docker/wheelhouse/pool (run `invoke image.wheels --toolchain all`)")
def test_real_wheels_default_and_nvcc_13_5_share_headers_but_not_the_compiler():
    toolchains = load_toolchains(SHIPPED)
    try:
        groups = equivalence_groups(toolchains.select(["default", "cutlass-4.2", "nvcc-13.5"]), [POOL])
        same = header_tree_hash(toolchains["default"], [POOL]) == header_tree_hash(toolchains["nvcc-13.5"], [POOL])
    except InfraError as exc:
        pytest.skip(f"wheels not downloaded: {exc.one_line()}")
    assert same
    assert len(groups) == 3


# --- headers layout -----------------------------------------------------------------------------
def test_cutlass_overlay_replaces_flashinfer_s_copy_and_checks_the_version(tmp_path):
    module = layout_module()
    wheel = fake_flashinfer(tmp_path / "flashinfer_python-0.7.2-py3-none-any.whl", "0.7.2", 5)
    cutlass = tmp_path / "nvidia_cutlass-4.2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(cutlass, "w") as zf:
        zf.writestr("cutlass_library/source/include/cutlass/version.h",
                    "#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR 2\n#define CUTLASS_PATCH 0\n")
        zf.writestr("cutlass_library/source/tools/util/include/cutlass/util/x.h", "// x\n")
    dest = tmp_path / "out"
    module.layout(wheel, dest, cutlass_wheel=cutlass, expect_cutlass="4.2.0")
    assert module.cutlass_version(dest) == "4.2.0"
    assert not (dest / "3rdparty/cutlass/include/cutlass/gemm.h").exists()  # nothing of 4.5 left behind
    assert (dest / "3rdparty/cutlass/tools/util/include/cutlass/util/x.h").is_file()
    assert (dest / "include/flashinfer/a.cuh").is_file()
    with pytest.raises(SystemExit, match="carry CUTLASS 4.5.0, the toolchain declares 4.2.1"):
        module.layout(wheel, tmp_path / "out2", expect_cutlass="4.2.1")


# --- patches ------------------------------------------------------------------------------------
def test_patch_applies_by_declared_cutlass_versions():
    assert patch_applies(PATCH, "4.5.0") is True
    reason = patch_applies(PATCH, "4.2.1")
    assert reason == f"patch {PATCH} does not apply to CUTLASS 4.2.1 (declared for 4.5.*)"
    assert "declares no CUTLASS versions" in patch_applies("other.patch", "4.5.0")


def test_every_patch_is_declared():
    from gpurepro.toolchains import load_patch_declarations

    declared = load_patch_declarations(ROOT / "repros" / "patches")
    assert {p.name for p in (ROOT / "repros" / "patches").glob("*.patch")} <= set(declared)


def test_version_specs(tmp_path):
    assert version_matches("4.5.0", "4.5.*") and not version_matches("4.50.0", "4.5.*")
    assert version_matches("4.5.1", ">=4.3,<5") and not version_matches("5.0.0", ">=4.3,<5")
    assert version_matches("4.5", "4.5.0") and version_matches("4.2.1", "!=4.2.0")
    with pytest.raises(BadInputError, match="bad CUTLASS version spec"):
        version_matches("4.5.0", "~=4.5")
    (tmp_path / "patches.yaml").write_text("patches:\n  x.patch:\n    cutlass: ['>4.x']\n")
    with pytest.raises(BadInputError):
        patch_applies("x.patch", "4.5.0", tmp_path)


FLASHINFER_053 = "b601293b72f9138bad173edc28df84b9f239a013be974e2e79d4ba98aeb38cf5"


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch(1) not installed")
def test_declarations_match_a_real_dry_run(tmp_path):
    """The declaration says the patch does not apply to 4.2.1: patch(1) agrees on FlashInfer 0.5.3's headers."""
    toolchains = load_toolchains(SHIPPED)
    from gpurepro.toolchains import find_wheel

    found = {n: find_wheel(toolchains[n].pin("flashinfer-python"), [POOL]) for n in ("default", "cutlass-4.2")}
    if not all(found.values()):
        pytest.skip("flashinfer wheels not in docker/wheelhouse/pool (run `invoke image.wheels --toolchain all`)")
    module = layout_module()
    for name, wheel in found.items():
        dest = tmp_path / name
        module.layout(wheel, dest)
        patch = ROOT / "repros" / "patches" / PATCH
        done = subprocess.run(["patch", "-p1", "--dry-run", "--forward", "--batch", "-d", str(dest / "3rdparty/cutlass")],
                              stdin=patch.open("rb"), capture_output=True)
        applies = patch_applies(PATCH, module.cutlass_version(dest)) is True
        assert (done.returncode == 0) == applies, (name, done.stdout.decode()[-300:])
