"""Bundles of real run directories: deterministic, complete, verifiable, inspectable in memory, replayable."""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from fake_runs import H100, FakeRunner, make_run, project_config, rewrite_bundle, tar_members
from gpurepro import replay as replaying
from gpurepro import __version__, app, bundle
from gpurepro.errors import BadInputError
from gpurepro.errors import UsageError
from gpurepro.redaction import NOT_RECORDED, REDACTED, is_secret_name, redact_value
from projects import ROOT

SECRETS = {  # planted in the tool's environment; none of these values may reach run.json or a bundle
    "GITHUB_TOKEN": "ghp_plantedtoken0001",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-0002",
    "DOCKER_PASSWORD": "planted-docker-pw-0003",
    "HF_API_KEY": "planted-hf-key-0004",
    "NETRC_CREDENTIALS": "planted-netrc-0005",
    "MYSERVICE_AUTH": "planted-auth-0006",
}
PROXY = ("HTTPS_PROXY", "http://alice:planted-proxy-pw-0007@proxy.example:3128")
HARMLESS = {"CUDA_VISIBLE_DEVICES": "0", "GPUREPRO_PLANTED_FLAG": "on"}  # allowlisted: recorded with values
UNLISTED = {"GIT_AUTHOR_NAME": "Alice-planted-0009", "KEYBOARD_LAYOUT": "us-planted-0010"}           # recorded by name only
# credential-shaped values in ordinary variables (issue 12): never recorded, allowlisted or not
SHAPED = {"GIT_REMOTE": "https://ghp_Pl4ntedT0kenAbCdEfGhIjKlMnOpQrStUvWx12@github.com/org/repo.git",
          "ALERT_HOOK": "https://hooks.slack.com/services/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2",
          "UPSTREAM_HEADER": "Bearer Pl4ntedBearerValue0099",
          "GPUREPRO_MIRROR": "https://ghp_Pl4ntedT0kenAbCdEfGhIjKlMnOpQrStUvWx12@github.com/org/repo.git",
          "CUDA_ALERT_HOOK": "https://hooks.slack.com/services/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2",
          "TORCH_UPSTREAM_HEADER": "Bearer Pl4ntedBearerValue0099"}


@pytest.fixture
def config(tmp_path):
    return project_config(tmp_path)


@pytest.fixture
def run_dir(config, monkeypatch):
    for name, value in {**SECRETS, **HARMLESS, **UNLISTED, **SHAPED, PROXY[0]: PROXY[1]}.items():
        monkeypatch.setenv(name, value)
    return make_run(config).run.path


def error_of(call) -> BadInputError:
    with pytest.raises(BadInputError) as caught:
        call()
    assert caught.value.exit_code == 2 and "\n" not in caught.value.one_line()
    return caught.value


# --- create --------------------------------------------------------------------------------------
def test_same_run_directory_gives_identical_bytes(run_dir, tmp_path):
    first = bundle.create(run_dir, tmp_path / "a.tar.gz")
    for path in run_dir.rglob("*"):  # mtimes and atimes must not leak into the bundle
        os.utime(path, (1_000_000, 1_000_000))
    second = bundle.create(run_dir, tmp_path / "b.tar.gz")
    data = first.path.read_bytes()
    assert data == second.path.read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(first.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "root")}


def test_default_name_is_the_run_id(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = bundle.create(run_dir)
    assert made.path == tmp_path / f"{run_dir.name}.tar.gz"


def test_bundle_files_have_the_usual_mode_and_nothing_else_is_left(run_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        made = bundle.create(run_dir, tmp_path / "out" / "b.tar.gz")  # the folder is made too
    finally:
        os.umask(previous)
    assert oct(made.path.stat().st_mode & 0o777) == "0o644"  # shareable, not 0600 (issue 13)
    assert [p.name for p in made.path.parent.iterdir()] == ["b.tar.gz"]  # no temp file beside it


def test_an_unwritable_output_is_one_line_exit_2(run_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    error = error_of(lambda: bundle.create(run_dir, tmp_path / "file" / "b.tar.gz"))
    assert error.one_line().startswith("cannot write bundle") and "--output" in error.one_line()


def test_manifest_lists_every_file_with_size_and_sha256(run_dir, tmp_path):
    made = bundle.create(run_dir, tmp_path)
    files = tar_members(made.path)
    top = run_dir.name
    manifest = json.loads(files.pop(f"{top}/MANIFEST.json"))
    assert (manifest["format"], manifest["format_version"]) == ("gpurepro-bundle", 1)
    assert manifest["tool"] == {"name": "gpurepro", "version": __version__}
    listed = {e["path"]: (e["size"], e["sha256"]) for e in manifest["files"]}
    assert listed == {name[len(top) + 1:]: (len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()}
    on_disk = {f"run/{p.relative_to(run_dir).as_posix()}" for p in run_dir.rglob("*") if p.is_file()}
    assert on_disk | {"README.md"} == set(listed)  # the whole run directory, the HTML report included
    assert "run/index.html" in listed and "run/steps/hello/result.json" in listed


def test_readme_has_the_commands_to_reproduce(config, tmp_path):
    run = make_run(config, steps=("hello",), compile_only=True).run.path
    record = json.loads((run / "run.json").read_text())
    record["environment"].update(image="gpurepro/toolchain:latest", image_id="sha256:" + "ab" * 32,
                                 image_digest="gpurepro/toolchain@sha256:" + "cd" * 32)
    record["backend"] = "docker"
    record["git"] = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False}
    (run / "run.json").write_text(json.dumps(record))
    readme = tar_members(bundle.create(run, tmp_path).path)[f"{run.name}/README.md"].decode()
    assert "git checkout 0123456789abcdef0123456789abcdef01234567" in readme
    assert f"docker pull gpurepro/toolchain@sha256:{'cd' * 32}" in readme
    assert (f"GPUREPRO_IMAGE=gpurepro/toolchain@sha256:{'cd' * 32} invoke repro hello --arch sm_90a "
            "--backend docker --compile-only") in readme
    assert f"invoke bundle.replay {run.name}.tar.gz" in readme


def test_refuses_a_run_in_progress(run_dir, tmp_path):
    (run_dir / ".gpurepro.lock").write_text(json.dumps({"pid": os.getpid(), "hostname": os.uname().nodename}))
    assert "still in progress" in error_of(lambda: bundle.create(run_dir, tmp_path)).one_line()


def test_resolve_run_defaults_to_latest_and_says_when_missing(run_dir, config, tmp_path):
    assert bundle.resolve_run(config.reports_dir, None) == run_dir
    assert bundle.resolve_run(config.reports_dir, run_dir.name) == run_dir
    assert "no runs under" in error_of(lambda: bundle.resolve_run(tmp_path / "empty", None)).one_line()


# --- secrets ---------------------------------------------------------------------------------------
def test_planted_secrets_are_redacted_in_run_json_and_the_bundle(run_dir, tmp_path):
    record = json.loads((run_dir / "run.json").read_text())
    for name in SECRETS:
        assert record["env_vars"][name] == REDACTED  # name kept, value replaced
    assert record["env_vars"][PROXY[0]] == f"http://alice:{REDACTED}@proxy.example:3128"
    for name, value in HARMLESS.items():
        assert record["env_vars"][name] == value
    for name in UNLISTED:
        assert record["env_vars"][name] == NOT_RECORDED
    assert record["env_vars"]["GPUREPRO_MIRROR"] == f"https://{REDACTED}@github.com/org/repo.git"
    assert record["env_vars"]["TORCH_UPSTREAM_HEADER"] == f"Bearer {REDACTED}"
    made = bundle.create(run_dir, tmp_path)
    unpacked = gzip.decompress(made.path.read_bytes())
    everything = b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file()) + unpacked
    for value in [*SECRETS.values(), *UNLISTED.values(), "planted-proxy-pw-0007", "Pl4nted", "hooks.slack.com"]:
        assert value.encode() not in everything  # run.json, index.html, summary, the bundle
    assert b"GITHUB_TOKEN" in unpacked and b"GIT_REMOTE" in unpacked  # names survive: a reader sees they were set


def test_bundling_an_old_unredacted_run_redacts_it(run_dir, tmp_path):
    record = json.loads((run_dir / "run.json").read_text())
    record["env_vars"]["NPM_TOKEN"] = "planted-old-npm-0008"  # as a run from before redaction would hold
    (run_dir / "run.json").write_text(json.dumps(record))
    made = bundle.create(run_dir, tmp_path)
    assert b"planted-old-npm-0008" not in gzip.decompress(made.path.read_bytes())
    assert bundle.verify(made.path).record.env_vars["NPM_TOKEN"] == REDACTED


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "gh_token", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "PGPASSWORD",
                                  "OPENAI_API_KEY", "APIKEY", "SSH_PRIVATE_KEY", "GOOGLE_APPLICATION_CREDENTIALS",
                                  "REGISTRY_AUTH", "SENTRY_DSN", "ANSIBLE_VAULT_PASS", "CI_JOB_JWT", "SESSION_COOKIE"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "PWD", "OLDPWD", "GIT_AUTHOR_NAME", "KEYBOARD", "CUDA_HOME",
                                  "GPUREPRO_CONFIG", "PASSTHROUGH_MODE", "LANG"])
def test_harmless_names(name):
    assert not is_secret_name(name)


def test_url_passwords_are_redacted_whatever_the_name():
    assert redact_value("https://u:p4ss@pypi.example/simple") == f"https://u:{REDACTED}@pypi.example/simple"
    assert redact_value("/usr/bin:/bin") == "/usr/bin:/bin"


# --- verify --------------------------------------------------------------------------------------
@pytest.fixture
def made(run_dir, tmp_path):
    return bundle.create(run_dir, tmp_path).path


def test_verify_accepts_an_intact_bundle(made, capsys):
    assert app.bundle_verify(str(made)) == 0
    assert capsys.readouterr().out.startswith(f"ok: {made.name}")


def _tampered(made, tmp_path, change):
    return rewrite_bundle(made, tmp_path / "tampered.tar.gz", change)


def test_verify_names_an_altered_file(made, tmp_path, run_dir):
    name = f"{run_dir.name}/run/steps/hello/run.log"
    bad = _tampered(made, tmp_path, lambda f: {**f, name: f[name].replace(b"config", b"CONFIG")})
    assert error_of(lambda: app.bundle_verify(str(bad))).one_line() == (
        "tampered.tar.gz: run/steps/hello/run.log does not match its sha256 in MANIFEST.json (altered)")


def test_verify_names_a_resized_missing_or_added_file(made, tmp_path, run_dir):
    top = run_dir.name
    grown = _tampered(made, tmp_path, lambda f: {**f, f"{top}/run/summary.md": f[f"{top}/run/summary.md"] + b"x"})
    assert "run/summary.md is" in error_of(lambda: bundle.verify(grown)).one_line()
    gone = _tampered(made, tmp_path, lambda f: {k: v for k, v in f.items() if not k.endswith("junit.xml")})
    assert "run/junit.xml is listed in MANIFEST.json but missing" in error_of(lambda: bundle.verify(gone)).one_line()
    added = _tampered(made, tmp_path, lambda f: {**f, f"{top}/run/steps/hello/extra.sh": b"rm -rf ~"})
    assert "run/steps/hello/extra.sh is in the bundle but not in MANIFEST.json" in \
        error_of(lambda: bundle.verify(added)).one_line()


def test_verify_checks_the_format_version(made, tmp_path, run_dir):
    key = f"{run_dir.name}/MANIFEST.json"

    def future(files):
        manifest = json.loads(files[key])
        manifest["format_version"] = 99
        return {**files, key: json.dumps(manifest).encode()}

    assert "unsupported bundle format version 99" in error_of(
        lambda: bundle.verify(_tampered(made, tmp_path, future))).one_line()


def test_verify_refuses_truncated_and_foreign_files(made, tmp_path):
    data = made.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated" in error_of(lambda: bundle.verify(truncated)).one_line()
    foreign = tmp_path / "photo.tar.gz"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    assert "not a readable tar archive" in error_of(lambda: bundle.verify(foreign)).one_line()
    other = tmp_path / "other.tar.gz"
    other.write_bytes(gzip.compress(_plain_tar({"project/setup.py": b"print(1)"})))
    assert "not a gpurepro bundle (no project/MANIFEST.json)" in error_of(lambda: bundle.verify(other)).one_line()
    missing = tmp_path / "nope.tar.gz"
    assert "no such file" in error_of(lambda: bundle.verify(missing)).one_line()


def _plain_tar(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_verify_from_the_command_line_is_one_line_and_exit_2(made, tmp_path, run_dir):
    name = f"{run_dir.name}/run/run.json"
    bad = _tampered(made, tmp_path, lambda f: {**f, name: f[name].replace(b'"complete"', b'"COMPLETE"')})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "invoke", "bundle.verify", str(bad)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpurepro: tampered.tar.gz: run/run.json does not match its sha256 in MANIFEST.json (altered)"]
    good = subprocess.run([sys.executable, "-m", "gpurepro", "bundle", "verify", str(made)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr


# --- inspect -------------------------------------------------------------------------------------
@pytest.fixture
def no_side_effects(monkeypatch):
    """Inspecting must neither extract to disk nor start a process: any attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("inspect tried to extract or execute")

    for target, name in [(tarfile.TarFile, "extract"), (tarfile.TarFile, "extractall"), (subprocess, "Popen"),
                         (os, "system"), (os, "execv"), (os, "execve")]:
        monkeypatch.setattr(target, name, refuse)


def test_inspect_shows_the_run_without_extracting_or_running(made, tmp_path, monkeypatch, capsys, no_side_effects):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert app.bundle_inspect(str(made)) == 0
    out = capsys.readouterr().out
    assert "integrity: ok" in out and f"run {made.name[:-7]}: status complete" in out
    assert "CUTLASS 4.5.0" in out and "device: no GPU" in out
    # secret names, and an allowlisted variable whose whole value is a credential (a Slack webhook URL)
    assert "redacted (AWS_SECRET_ACCESS_KEY, CUDA_ALERT_HOOK, DOCKER_PASSWORD, GITHUB_TOKEN, HF_API_KEY, " \
           "MYSERVICE_AUTH, NETRC_CREDENTIALS)" in out and " by name only" in out
    assert "hello" in out and "broken" in out and "departed" in out and "no GPU" in out
    assert list(work.iterdir()) == []


def test_inspect_of_a_tampered_bundle_shows_it_and_fails(made, tmp_path, run_dir, capsys, no_side_effects):
    name = f"{run_dir.name}/run/summary.md"
    bad = _tampered(made, tmp_path, lambda f: {**f, name: b"all green\n"})
    error = error_of(lambda: app.bundle_inspect(str(bad)))
    assert "run/summary.md" in error.one_line()
    assert "integrity: FAILED" in capsys.readouterr().out


# --- replay --------------------------------------------------------------------------------------
def test_replay_compares_old_and_new_outcomes(config, tmp_path, capsys):
    old = make_run(config, FakeRunner()).run.path  # no GPU: both steps skipped
    made = bundle.create(old, tmp_path).path
    runner = FakeRunner(gpu_smi=H100)  # here an H100 answers: hello runs and passes
    code = app.bundle_replay(str(made), config=str(config.path), runner=runner, argv=["test"])
    out = capsys.readouterr().out
    assert code == 1  # an outcome changed
    assert ["./hello"] in runner.calls
    assert "gpu_name: bundle none, here NVIDIA H100 80GB HBM3" in out
    replayed = sorted(p for p in config.reports_dir.iterdir() if p.name != "latest" and p != old)
    assert len(replayed) == 2  # one `repro` per compile target: sm_90a, sm_120a
    rows = {(r.step, r.old, r.new) for r in replaying.replay(made, config, runner=FakeRunner(gpu_smi=H100)).rows}
    assert rows == {("hello", "skipped", "pass"), ("broken", "skipped", "pass")}  # the fake binary has sm_90a
    assert "CHANGED" in out


def test_replay_of_an_unchanged_setup_matches(config, tmp_path, capsys):
    made = bundle.create(make_run(config, steps=("hello",)).run.path, tmp_path).path
    assert app.bundle_replay(str(made), config=str(config.path), runner=FakeRunner(), argv=["test"]) == 0
    out = capsys.readouterr().out
    assert "same git commit, tool, backend, image and toolchain" in out


def test_replay_keeps_flags_and_reports_changed_sources(config, tmp_path):
    old = make_run(config, steps=("hello",), compile_only=True, arch="sm_90a").run.path
    made = bundle.create(old, tmp_path).path
    (config.repros_dir / "hello.cu").write_text("// changed since the bundle was made\n")
    runner = FakeRunner(gpu_smi=H100)
    done = replaying.replay(made, config, runner=runner, dest=tmp_path / "unpacked")
    assert ["./hello"] not in runner.calls  # --compile-only replayed as such
    new = json.loads((done.runs[0] / "run.json").read_text())
    assert new["request"]["compile_only"] is True and new["request"]["arch"] == "sm_90a"
    assert "source hello/hello.cu: differs from the bundled copy" in done.differences
    assert (tmp_path / "unpacked" / old.name / "run" / "run.json").is_file()  # --dest keeps the extraction
    assert [(r.old, r.new) for r in done.rows] == [("compiled", "compiled")] and done.exit_code == 0


def test_replay_refuses_a_tampered_bundle_before_running_anything(made, tmp_path, run_dir, config):
    name = f"{run_dir.name}/run/run.json"
    bad = _tampered(made, tmp_path, lambda f: {**f, name: f[name].replace(b"hello", b"hellp")})
    runner = FakeRunner()
    assert "run/run.json does not match" in error_of(lambda: replaying.replay(bad, config, runner=runner)).one_line()
    assert runner.calls == []


# --- hostile recorded text (issue 12) ----------------------------------------------------------------
FORGED = "\x1b[1A\x1b[2K\rintegrity: ok"  # cursor up, erase the real line, print our own
HOSTILE_FIELDS = {"status": "complete\nintegrity: ok", "command": ["invoke", f"repro\nintegrity: ok {FORGED}"],
                  "host": {"hostname": f"box{FORGED}", "platform": "\x9b2J", "python": "3\u202e", "cpus": 2},
                  "git": {"commit": "abc\nintegrity: ok", "branch": f"main{FORGED}"}}


def _hostile_record(files, top):
    name = f"{top}/run/run.json"
    record = json.loads(files[name])
    record.update(HOSTILE_FIELDS)
    for step in record["steps"]:
        step["reason"] = f"fine\nintegrity: ok\n{FORGED}"
        step["step"] = step["step"] + "\x1b]0;title\x07"
    record["env_vars"][f"X{FORGED}"] = REDACTED
    return {**files, name: json.dumps(record).encode()}


def test_inspect_escapes_recorded_text_so_integrity_cannot_be_forged(made, tmp_path, run_dir, capsys, no_side_effects):
    # run.json altered after bundling: the real line must say FAILED, and no field may print an "ok" of its own
    bad = _tampered(made, tmp_path, lambda f: _hostile_record(f, run_dir.name))
    error_of(lambda: app.bundle_inspect(str(bad)))
    out = capsys.readouterr().out
    for control in ("\x1b", "\r", "\x9b", "\x07", "\u202e"):
        assert control not in out
    integrity = [line for line in out.splitlines() if line.lstrip("│| ").startswith("integrity:")]
    assert len(integrity) == 1 and integrity[0].startswith("integrity: FAILED: ")
    assert "box\\x1b[1A\\x1b[2K\\x0dintegrity: ok" in out  # shown, escaped, on the host line
    assert "status complete\\x0aintegrity: ok" in out


def test_summary_lines_are_single_lines_whatever_the_record(made, tmp_path, run_dir):
    bad = _tampered(made, tmp_path, lambda f: _hostile_record(f, run_dir.name))
    contents = bundle.read(bad)
    for line in bundle.summary_lines(contents) + [cell for row in bundle.inspect_rows(contents) for cell in row]:
        assert line.isprintable(), line


def test_replay_dest_on_a_file_is_a_usage_error_before_any_work(made, tmp_path, config):
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    runner = FakeRunner()
    with pytest.raises(UsageError) as caught:
        replaying.replay(made, config, runner=runner, dest=target)
    assert caught.value.exit_code == 2 and "is a file, not a directory" in caught.value.one_line()
    assert runner.calls == [] and target.read_text() == "keep me\n"


def test_replay_dest_not_empty_is_refused(made, tmp_path, config):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("x")
    assert "destination is not empty" in error_of(lambda: replaying.replay(made, config, runner=FakeRunner(),
                                                                          dest=dest)).one_line()
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


# --- bounded reading ---------------------------------------------------------------------------------
def test_an_oversized_json_member_is_refused_from_its_header(made, tmp_path, run_dir):
    name = f"{run_dir.name}/run/steps/hello/result.json"
    big = _tampered(made, tmp_path, lambda f: {**f, name: b" " * (bundle.MAX_TEXT_BYTES + 1)})
    line = error_of(lambda: bundle.verify(big)).one_line()
    assert line == (f"tampered.tar.gz: run/steps/hello/result.json is {bundle.MAX_TEXT_BYTES + 1} bytes; gpurepro "
                    f"reads at most {bundle.MAX_TEXT_BYTES} bytes of it (refused before reading)")


def test_json_with_too_many_containers_is_refused_before_parsing():
    with pytest.raises(bundle.BundleError, match="more than 200000 JSON objects"):
        bundle.parse_json(b"[" + b"[]," * 200_001 + b"[]]", "run.json")
    assert bundle.parse_json(b'{"a": [1, 2]}', "run.json") == {"a": [1, 2]}
    with pytest.raises(bundle.BundleError, match="not valid JSON"):
        bundle.parse_json(b"[" * 100_000, "run.json")  # too deep for the parser: one line, not a RecursionError
