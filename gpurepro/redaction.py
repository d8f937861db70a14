"""Secrets never leave the machine: environment variables are recorded with secret-looking values replaced.

A variable is secret when its *name* looks like a token, key, password or credential (GITHUB_TOKEN,
AWS_SECRET_ACCESS_KEY, DOCKER_PASSWORD, HF_API_KEY, NETRC_CREDENTIALS, ...): the name is kept, so a reader
sees that it was set, and the value becomes REDACTED. Values that embed credentials whatever their name
(https://user:pass@host in a proxy or index URL) lose the password part.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

REDACTED = "<redacted>"

# anywhere in the name: these spell a secret whatever surrounds them (GH_TOKEN, MYTOKEN, DB_PASSWORD1)
_SUBSTRINGS = ("TOKEN", "SECRET", "PASSW", "CREDENTIAL", "APIKEY", "API_KEY", "PRIVATE_KEY", "ACCESS_KEY",
               "COOKIE", "SESSIONID", "CLIENT_KEY")
# as a whole `_`-separated word only: short words that are also parts of harmless names
# (KEY but not KEYBOARD, AUTH but not AUTHOR, PASS but not PASSTHROUGH; PWD is the working directory)
_WORDS = {"KEY", "KEYS", "PASS", "PW", "AUTH", "CREDS", "SIG", "SIGNATURE", "PAT", "DSN", "SALT", "PASSPHRASE",
          "BEARER", "OTP", "JWT"}
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    if any(part in upper for part in _SUBSTRINGS):
        return True
    return any(word in _WORDS for word in re.split(r"[^A-Z0-9]+", upper))


def redact_value(value: str) -> str:
    """The value with any URL password replaced (user kept: it says which account, not how to log in)."""
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A sorted copy of `env` safe to record: secret names keep their name, their value is REDACTED."""
    return {name: (REDACTED if is_secret_name(name) else redact_value(str(value)))
            for name, value in sorted(env.items())}


def captured_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tool's process environment as run.json records it (redacted)."""
    return redact_env(os.environ if env is None else env)


def redact_record(record: dict) -> dict:
    """run.json with its recorded environment variables redacted again (idempotent; for bundles of old runs)."""
    out = dict(record)
    if isinstance(out.get("env_vars"), dict):
        out["env_vars"] = redact_env(out["env_vars"])
    if isinstance(out.get("command"), list):
        out["command"] = [redact_value(str(arg)) for arg in out["command"]]
    return out
