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
