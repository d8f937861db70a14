"""What a run records about its environment: an allowlist with values, the rest by name, credentials never."""
import pytest

from gpurepro.redaction import (NOT_RECORDED, REDACTED, captured_environment, is_allowed_name, redact_record,
                                redact_text)

# credential-shaped values planted in ordinary (and in allowlisted) variables; none may be recorded
GITHUB_URL = "https://ghp_Pl4ntedT0kenAbCdEfGhIjKlMnOpQrStUvWx12@github.com/org/repo.git"
SLACK = "https://hooks.slack.com/services/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2"
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.cGxhbnRlZA.Pl4ntedSignature0099"
PLANTED = {
    "GIT_REMOTE": GITHUB_URL,                         # ordinary names: recorded by name only
    "ALERTS": SLACK,
    "UPSTREAM_HEADER": BEARER,
    "GPUREPRO_MIRROR": GITHUB_URL,                    # allowlisted names: recorded, scanned
    "CUDA_NOTIFY": SLACK,
    "TORCH_REMOTE_HEADER": BEARER,
    "HTTPS_PROXY": "http://alice:Pl4ntedProxyPw@proxy.example:3128",
    "NVIDIA_LICENSE": "AKIAPL4NTEDEXAMPLE01",         # AWS key id shape
    "CUTE_CACHE": "xoxb-123456789012-1234567890123-Pl4ntedSlackBotTokn",
    "GITHUB_TOKEN": "ghp_Pl4ntedT0kenAbCdEfGhIjKlMnOpQrStUvWx12",  # a secret name, whatever its value
}
KEPT = {
    "PATH": "/usr/local/cuda/bin:/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/detect_secrets:/usr/bin",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64", "CC": "gcc-12", "CXX": "g++-12", "CUDA_VISIBLE_DEVICES": "0,1",
    "NVIDIA_DRIVER_CAPABILITIES": "compute,utility", "GPUREPRO_IMAGE": "gpurepro/vllm-dev@sha256:" + "3f9a" * 16,
    "TORCH_CUDA_ARCH_LIST": "12.0a", "CUTE_DSL_ARCH": "sm_120a", "NVCC_APPEND_FLAGS": "-lineinfo",
    "HOME": "/root", "NO_PROXY": "localhost,127.0.0.1",
}
BY_NAME = {"GIT_AUTHOR_NAME": "Alice", "EDITOR": "vim", "TERM": "xterm-256color", "USER": "alice"}


@pytest.fixture(scope="module")
def captured():
    return captured_environment({**PLANTED, **KEPT, **BY_NAME})


def test_no_planted_credential_reaches_the_record(captured):
    text = repr(captured)
    for fragment in ("Pl4nted", "ghp_", "hooks.slack.com/services", "eyJhbGci", "AKIAPL4NTED", "xoxb-"):
        assert fragment not in text
    assert set(captured) == set(PLANTED) | set(KEPT) | set(BY_NAME)  # every name is kept


def test_allowlisted_values_are_recorded_with_their_credentials_cut_out(captured):
    assert captured["GPUREPRO_MIRROR"] == f"https://{REDACTED}@github.com/org/repo.git"
    assert captured["HTTPS_PROXY"] == f"http://alice:{REDACTED}@proxy.example:3128"
    assert captured["TORCH_REMOTE_HEADER"] == f"Bearer {REDACTED}"
    assert captured["CUDA_NOTIFY"] == REDACTED
    assert captured["GITHUB_TOKEN"] == REDACTED


def test_build_and_run_variables_keep_their_values(captured):
    for name, value in KEPT.items():
        assert captured[name] == value, name  # paths, compilers, digests are not secrets


def test_other_variables_are_recorded_by_name_only(captured):
    for name in BY_NAME:
        assert captured[name] == NOT_RECORDED
    for name in ("GIT_REMOTE", "ALERTS", "UPSTREAM_HEADER"):
        assert captured[name] == NOT_RECORDED


def test_captured_environment_is_idempotent(captured):
    assert captured_environment(captured) == captured


@pytest.mark.parametrize("name", ["PATH", "LD_LIBRARY_PATH", "CC", "CXX", "CUDA_HOME", "NVIDIA_VISIBLE_DEVICES",
                                  "GPUREPRO_CONFIG", "TORCH_CUDA_ARCH_LIST", "CUTE_DSL_LOG_LEVEL", "NVCC_PREPEND_FLAGS",
                                  "HOME", "https_proxy"])
def test_allowlist(name):
    assert is_allowed_name(name)


@pytest.mark.parametrize("name", ["USER", "EDITOR", "GIT_AUTHOR_NAME", "SSH_AUTH_SOCK", "AWS_PROFILE", "SLACK_URL"])
def test_off_the_allowlist(name):
    assert not is_allowed_name(name)


@pytest.mark.parametrize("text, shown", [
    (GITHUB_URL, f"https://{REDACTED}@github.com/org/repo.git"),
    (f"curl -H 'Authorization: {BEARER}' x", f"curl -H 'Authorization: Bearer {REDACTED}' x"),
    ("Basic YWxpY2U6c2VjcmV0", f"Basic {REDACTED}"),                       # base64 of alice:secret
    ("--token=Pl4ntedCliToken", f"--token={REDACTED}"),
    (f"posting to {SLACK} failed", f"posting to {REDACTED} failed"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow", REDACTED),
    # ordinary text of a run stays as it is
    ("expected pass, observed mismatch: 17 of 4096 elements differ (max abs err 3.2e-01)", None),
    ("per token throughput; basic operation", None),
    ("git checkout 0123456789abcdef0123456789abcdef01234567", None),
    ("ssh://git@github.com/org/repo", None),
    ("/usr/local/cuda-13.0/targets/x86_64-linux/include/cuda_runtime_api.h", None),
])
def test_redact_text(text, shown):
    assert redact_text(text) == (text if shown is None else shown)
    assert redact_text(redact_text(text)) == redact_text(text)


def test_a_random_token_is_caught_by_entropy():
    assert redact_text("key qZ8v3kP0xL2mN7tR4wY1bC6dF9gH5jKs end") == f"key {REDACTED} end"


def test_redact_record_cleans_an_old_record():
    old = {"env_vars": {"GIT_REMOTE": GITHUB_URL, "PATH": "/bin", "NPM_TOKEN": "x"},
           "command": ["invoke", "repro", "step01", f"--notify={SLACK}"], "run_id": "r"}
    new = redact_record(old)
    assert new["env_vars"] == {"GIT_REMOTE": NOT_RECORDED, "NPM_TOKEN": REDACTED, "PATH": "/bin"}
    assert new["command"][-1] == f"--notify={REDACTED}" and new["run_id"] == "r"
    assert redact_record(new) == new
