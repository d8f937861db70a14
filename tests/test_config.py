import json
import pathlib

import pytest
import yaml

from gpurepro.config import load_config
from gpurepro.errors import EXIT_BAD_INPUT, ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def write(tmp_path, data) -> pathlib.Path:
    path = tmp_path / "gpurepro.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def raw() -> dict:
    return yaml.safe_load((ROOT / "gpurepro.yaml").read_text())


def test_project_config_loads():
    config = load_config(ROOT / "gpurepro.yaml", env={})
    assert config.docker.container == "vllm-dev"
    assert config.docker.flashinfer == "/workspace/flashinfer"
    assert config.compile.default_arch == "sm_120a"
    assert config.manifest == ROOT / "repros" / "manifest.yaml"
    assert config.run.timeout_s > 0


def test_environment_overrides(tmp_path):
    config = load_config(ROOT / "gpurepro.yaml", env={"GPUREPRO_CONTAINER": "mine", "GPUREPRO_FLASHINFER": "/opt/fi"})
    assert config.docker.container == "mine"
    assert config.host.flashinfer == "/opt/fi"


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: d["compile"].update(timeout_s="soon"), "compile.timeout_s", "positive integer"),
    (lambda d: d["compile"].update(timeout_s=True), "compile.timeout_s", "positive integer"),
    (lambda d: d["docker"].update(workdir="relative/path"), "docker.workdir", "absolute path"),
    (lambda d: d["docker"].update(gpus="some"), "docker.gpus", "auto, all, none"),
    (lambda d: d["compile"].update(default_arch="hopper"), "compile.default_arch", "sm_120a"),
    (lambda d: d["compile"].update(flags="-O2"), "compile.flags", "list of strings"),
    (lambda d: d["docker"].update(contaner="typo"), "docker.contaner", "unknown key"),
    (lambda d: d.pop("run"), "run", "missing"),
    (lambda d: d["docker"].pop("image"), "docker.image", "missing"),
    (lambda d: d.update(version=2), "version", "expected 1"),
])
def test_bad_values_name_file_and_key(tmp_path, mutate, key, words):
    data = raw()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    error = info.value
    assert error.exit_code == EXIT_BAD_INPUT
    assert error.key == key
    line = error.one_line()
    assert str(path) in line and key in line and words in line
    assert "\n" not in line


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "version: 1\ndocker: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "line" in (info.value.key or "") and "invalid YAML" in info.value.one_line()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml", env={})


def test_top_level_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"), env={})


# --- schema validation: every problem, one line each ------------------------------------------------
def test_every_problem_is_reported_one_line_each(tmp_path):
    data = raw()
    data["compile"]["timeout_s"] = "soon"
    data["docker"]["gpus"] = "some"
    data["docker"]["contaner"] = "typo"
    data.pop("run")
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    error = info.value
    keys = [key for key, _ in error.problems]
    assert sorted(keys) == ["compile.timeout_s", "docker.contaner", "docker.gpus", "run"]
    lines = error.lines()
    assert len(lines) == 4 and all(line.startswith(f"{path}: ") and "\n" not in line for line in lines)
    assert f"{path}: run: missing" in lines
    assert f"{path}: docker.gpus: expected one of auto, all, none, got 'some'" in lines
    assert error.exit_code == EXIT_BAD_INPUT
    one = error.one_line()  # where one line must do (run.json): every problem, the file once
    assert "\n" not in one and one.count(str(path)) == 1 and "4 problems" in one


def test_non_utf8_byte_names_file_and_offset(tmp_path):
    path = tmp_path / "gpurepro.yaml"
    text = (ROOT / "gpurepro.yaml").read_bytes()
    offset = text.index(b"vllm-dev")
    path.write_bytes(text[:offset] + b"\xff" + text[offset + 1:])
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    line = info.value.one_line()
    assert str(path) in line and f"byte 0xff at offset {offset}" in line and "not UTF-8" in line
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_huge_file_refused_before_parsing(tmp_path):
    path = tmp_path / "gpurepro.yaml"
    with open(path, "wb") as handle:
        handle.write(b"version: 1\n# " + b"x" * (17 * 1024 * 1024) + b"\n")
    with pytest.raises(ConfigError, match="larger than 16 MiB"):
        load_config(path, env={})


def test_log_cap_default_and_setting(tmp_path):
    assert load_config(ROOT / "gpurepro.yaml", env={}).run.log_cap_bytes == 8 * 1024 * 1024
    data = raw()
    data["run"]["log_cap_bytes"] = 65536
    assert load_config(write(tmp_path, data), env={}).run.log_cap_bytes == 65536
    data["run"]["log_cap_bytes"] = 10
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env={})
    assert info.value.key == "run.log_cap_bytes" and ">= 4096" in info.value.one_line()


def test_non_string_keys_are_unknown_keys(tmp_path):
    data = raw()
    data["docker"][90] = "x"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env={})
    assert info.value.key == "docker.90" and "unknown key" in info.value.one_line()


def test_published_schema_is_valid_and_accepts_the_project_config():
    import jsonschema

    schema = json.loads((ROOT / "docs" / "schemas" / "config.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(raw(), schema)


def test_unknown_key_is_reported_before_the_missing_one(tmp_path):
    data = raw()
    data["kernels"] = {"timeot_s": 5}  # a typo: the first line says so, the second that timeout_s is missing
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env={})
    assert info.value.problems[0] == ("kernels.timeot_s", "unknown key (allowed: timeout_s)")
    assert info.value.problems[1] == ("kernels.timeout_s", "missing")
