"""Input checks shared by the front ends and the file loaders: flag values, and YAML files against the
published JSON Schemas in docs/schemas/ (validated with the `jsonschema` library, every problem reported).

Schemas carry this tool's wording of a key's requirement as `x-expected` ("a positive integer"), turned
into "expected a positive integer, got 'soon'", or a whole message as `x-problem` (with `{value!r}`).
"""
from __future__ import annotations

import functools
import json
import pathlib
import re
from typing import Any, Callable

from .archs import KNOWN_ARCHS
from .errors import UsageError

SCHEMA_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs" / "schemas"
ARCH_FORM_RE = re.compile(r"^sm_(?P<num>\d{2,3})(?P<suffix>[af]?)$")
VALUE_REPR_LIMIT = 80


# --- flags -----------------------------------------------------------------------------------------
def parse_jobs(value) -> int | None:
    """`--jobs N`: None when not given, else an integer >= 1 (UsageError otherwise, exit 2)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise UsageError(f"--jobs {value}: expected a whole number >= 1", hint="e.g. --jobs 2; leave it out for automatic")
    if isinstance(value, int):
        jobs = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise UsageError(f"--jobs {value}: expected a whole number >= 1",
                             hint="e.g. --jobs 2; leave it out for automatic")
        jobs = int(text)
    if jobs < 1:
        raise UsageError(f"--jobs {value}: expected a whole number >= 1", hint="e.g. --jobs 2; leave it out for automatic")
    return jobs


def check_arch(arch: str, known_archs=KNOWN_ARCHS) -> str:
    """`--arch`: a compile target this tool knows (sm_120a, ...); UsageError naming the known ones otherwise."""
    known = list(known_archs)
    if not isinstance(arch, str) or arch not in known:
        form = "" if isinstance(arch, str) and ARCH_FORM_RE.match(arch) else " (expected the form sm_120a)"
        raise UsageError(f"unknown arch {arch}{form}; known: {', '.join(known)}")
    return arch


# --- YAML files against JSON Schemas ----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """docs/schemas/<name>.schema.json, checked once against its own metaschema."""
    import jsonschema

    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


def string_keys(data: Any) -> Any:
    """YAML allows keys like 90 or true; JSON Schema sees strings only. Turned into their text, the schema
    then reports them as the unknown or malformed keys they are."""
    if isinstance(data, dict):
        return {k if isinstance(k, str) else _key_text(k): string_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [string_keys(v) for v in data]
    return data


def _key_text(key) -> str:
    return "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)


def join_key(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= VALUE_REPR_LIMIT else text[:VALUE_REPR_LIMIT - 3] + "..."


def _annotation(schema: dict, schema_path, instance_path) -> tuple[dict | None, int]:
    """The deepest schema on the error's way that carries x-expected/x-problem, and its instance depth."""
    node, depth, best = schema, 0, (None, 0)
    if isinstance(node, dict) and ("x-expected" in node or "x-problem" in node):
        best = (node, 0)
    trail = list(schema_path)[:-1]  # the last element is the failing keyword itself
    i = 0
    while i < len(trail) and isinstance(node, dict):
        keyword = trail[i]
        if keyword in ("properties", "patternProperties") and i + 1 < len(trail):
            node, i, depth = node[keyword][trail[i + 1]], i + 2, depth + 1
        elif keyword in ("items", "additionalProperties"):
            node, i, depth = node[keyword], i + 1, depth + 1
        elif keyword in ("allOf", "anyOf", "oneOf", "prefixItems") and i + 1 < len(trail):
            node, i = node[keyword][trail[i + 1]], i + 2
            depth += keyword == "prefixItems"
        else:
            node, i = node.get(keyword), i + 1
        if isinstance(node, dict) and ("x-expected" in node or "x-problem" in node):
            best = (node, depth)
    return best[0], min(best[1], len(instance_path))


def schema_problems(data: Any, schema: dict, *, key_of: Callable[[list], str] = join_key) -> list[tuple[str | None, str]]:
    """Every way `data` breaks `schema`, as (key, problem) pairs in document order, one per problem."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    problems: list[tuple[str | None, str]] = []
    for error in validator.iter_errors(data):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            sub = error.schema
            allowed = sorted(sub.get("properties", {}))
            patterns = [re.compile(p) for p in sub.get("patternProperties", {})]
            for extra in error.instance:
                if extra in sub.get("properties", {}) or any(p.search(extra) for p in patterns):
                    continue
                problem = sub.get("x-unknown-key") or f"unknown key (allowed: {', '.join(allowed)})"
                problems.append((key_of(path + [extra]), problem))
            continue
        if error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    problems.append((key_of(path + [name]), "missing"))
            continue
        node, depth = _annotation(schema, error.absolute_schema_path, path)
        value = data
        for part in path[:depth]:
            value = value[part]
        key = key_of(path[:depth]) or None
        if node is None:
            problems.append((key_of(path) or None, error.message))
        elif "x-problem" in node:
            problems.append((key, node["x-problem"].format(value=value, value_repr=_short_repr(value))))
        else:
            problems.append((key, f"expected {node['x-expected']}, got {_short_repr(value)}"))
    return list(dict.fromkeys(problems))
