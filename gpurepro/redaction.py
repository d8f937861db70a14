"""Secrets never leave the machine: what a run records about its environment is allowlisted and scanned.

Environment variables: only an allowlist of names that shape a GPU build or run (CUDA_*, NVIDIA_*,
GPUREPRO_*, TORCH_*, PATH, LD_LIBRARY_PATH, CC, CXX, proxies, ...) is recorded with its value; every other
variable is recorded by name only (NOT_RECORDED), so a reader sees it was set. A name that looks like a
token, key, password or credential is REDACTED whatever its prefix.

Values that are recorded, and any other recorded text (the command line, reasons), are scanned for
credential-shaped substrings: detect-secrets' detectors (GitHub/GitLab/Slack/AWS/npm/PyPI/OpenAI/... tokens,
JWTs, private keys, basic-auth URLs, high-entropy strings), plus URL user-info, `Bearer`/`Basic`/`token`
authorization values. Each finding is replaced by REDACTED in place.
"""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping

REDACTED = "<redacted>"
NOT_RECORDED = "<not recorded>"  # a variable outside the allowlist: its name is kept, its value never read

# anywhere in the name: these spell a secret whatever surrounds them (GH_TOKEN, MYTOKEN, DB_PASSWORD1)
_SUBSTRINGS = ("TOKEN", "SECRET", "PASSW", "CREDENTIAL", "APIKEY", "API_KEY", "PRIVATE_KEY", "ACCESS_KEY",
               "COOKIE", "SESSIONID", "CLIENT_KEY")
# as a whole `_`-separated word only: short words that are also parts of harmless names
# (KEY but not KEYBOARD, AUTH but not AUTHOR, PASS but not PASSTHROUGH; PWD is the working directory)
_WORDS = {"KEY", "KEYS", "PASS", "PW", "AUTH", "CREDS", "SIG", "SIGNATURE", "PAT", "DSN", "SALT", "PASSPHRASE",
          "BEARER", "OTP", "JWT"}

# What decides how a kernel compiles and runs, and where: recorded with values (scanned all the same).
# HOME is kept: the CUDA JIT cache (~/.nv) and the pip/torch caches live under it, and the user's name is
# already in run.json's host facts.
ALLOWED_PREFIXES = ("CUDA_", "CUDNN_", "CUBLAS_", "CUBLASLT_", "CUFFT_", "NCCL_", "NVIDIA_", "NV_", "NVCC_",
                    "GPUREPRO_", "TORCH_", "PYTORCH_", "CUTE_", "CUTLASS_", "CCCL_", "FLASHINFER_", "TRITON_",
                    "VLLM_", "DOCKER_", "OMP_", "MKL_")
ALLOWED_NAMES = frozenset({
    "PATH", "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "PYTHONPATH",
    "CC", "CXX", "CUDAHOSTCXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "MAX_JOBS",
    "HOME", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PYTHONHASHSEED",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "CI", "GITHUB_ACTIONS", "GITLAB_CI",
})

# user-info in a URL: `scheme://user:password@` keeps the user (which account) and loses the password;
# `https://<token>@host` (how git and pip are given tokens) loses the whole user-info. ssh's `git@` stays.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
_URL_TOKEN = re.compile(r"(?P<scheme>https?://)(?P<token>[^:/@\s]+)@", re.IGNORECASE)
# `Bearer <anything>`, `Basic <base64 of user:password>`, `token=<value>` / `token: <value>`
_AUTH_VALUE = re.compile(r"(?i)\b(?:(?P<bearer>bearer\s+)[A-Za-z0-9._~+/=-]{8,}|(?P<basic>basic\s+)(?P<b64>[A-Za-z0-9+/]{8,}={0,2})"
                         r"|(?P<token>token\s*[:=]\s*)[A-Za-z0-9._~+/=-]{8,})")
# detect-secrets' Base64HighEntropyString charset and default limit; found in unquoted text as well.
# Hex is left to the specific detectors: commits and image digests are what a run record is made of.
_ENTROPY_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{20,}")
_ENTROPY_LIMIT = 4.5
# detectors for things that are not credentials (public IPs) or that need source-code context (keywords)
_SKIPPED_DETECTORS = {"IPPublicDetector", "KeywordDetector", "Base64HighEntropyString", "HexHighEntropyString"}

_detectors_lock = threading.Lock()
_detectors: tuple | None = None


def _load_detectors() -> tuple:
    """detect-secrets' detectors, instantiated once (its global settings are never touched: thread-safe)."""
    global _detectors
    with _detectors_lock:
        if _detectors is None:
            from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
            from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString

            found = [cls() for cls in get_mapping_from_secret_type_to_class().values()
                     if cls.__name__ not in _SKIPPED_DETECTORS]
            _detectors = (tuple(found), Base64HighEntropyString(limit=_ENTROPY_LIMIT))
        return _detectors


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    if any(part in upper for part in _SUBSTRINGS):
        return True
    return any(word in _WORDS for word in re.split(r"[^A-Z0-9]+", upper))


def is_allowed_name(name: str) -> bool:
    """Recorded with its value (unless is_secret_name): the variables that shape a build or a run."""
    upper = name.upper()
    return upper in ALLOWED_NAMES or upper.startswith(ALLOWED_PREFIXES)


def redact_text(text: str) -> str:
    """`text` with every credential-shaped substring replaced by REDACTED (idempotent)."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _URL_TOKEN.sub(lambda m: m[0] if m["token"] == REDACTED else f"{m['scheme']}{REDACTED}@", text)
    text = _AUTH_VALUE.sub(_auth_value, text)
    detectors, entropy = _load_detectors()
    found: set[str] = set()
    for detector in detectors:
        try:
            if detector.__class__.__name__ == "PrivateKeyDetector" and any(True for _ in detector.analyze_string(text)):
                return REDACTED  # only the key's header line is recognisable: drop the whole value
            found.update(m for m in detector.analyze_string(text) if m and m != REDACTED)
        except Exception:  # noqa: BLE001 - a detector's bug must not stop a run; the others still apply
            continue
    for token in _ENTROPY_TOKEN.findall(text):
        if entropy.calculate_shannon_entropy(token) > _ENTROPY_LIMIT:
            found.add(token)
    for secret in sorted(found, key=len, reverse=True):  # longest first: a token inside a URL goes whole
        text = text.replace(secret, REDACTED)
    return text


def _auth_value(match: re.Match) -> str:
    if match["basic"] and not _is_basic_credentials(match["b64"]):
        return match[0]  # "basic" in prose, not an Authorization value
    return f"{match['bearer'] or match['basic'] or match['token']}{REDACTED}"


def _is_basic_credentials(value: str) -> bool:
    import base64
    import binascii

    try:
        return b":" in base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False


# the old name: a value with its credentials replaced
redact_value = redact_text


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A sorted copy of `env` safe to record: secret names REDACTED, names off the allowlist NOT_RECORDED,
    allowlisted values scanned. Idempotent, so a record can be passed through it again."""
    out = {}
    for name, value in sorted(env.items()):
        name = str(name)
        if is_secret_name(name):
            out[name] = REDACTED
        elif value in (REDACTED, NOT_RECORDED):
            out[name] = value
        elif not is_allowed_name(name):
            out[name] = NOT_RECORDED
        else:
            out[name] = redact_text(str(value))
    return out


def captured_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tool's process environment as run.json records it: {name: value, REDACTED or NOT_RECORDED}."""
    return redact_env(os.environ if env is None else env)


def redact_record(record: dict) -> dict:
    """run.json with its environment and command redacted again (idempotent; for bundles of old runs)."""
    out = dict(record)
    if isinstance(out.get("env_vars"), dict):
        out["env_vars"] = redact_env(out["env_vars"])
    if isinstance(out.get("command"), list):
        out["command"] = [redact_text(str(arg)) for arg in out["command"]]
    return out


__all__ = ["NOT_RECORDED", "REDACTED", "captured_environment", "is_allowed_name", "is_secret_name", "redact_env",
           "redact_record", "redact_text", "redact_value"]
