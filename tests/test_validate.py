import pytest

from gpurepro.archs import KNOWN_ARCHS
from gpurepro.errors import EXIT_BAD_INPUT, UsageError
from gpurepro.validate import check_arch, join_key, parse_jobs, schema_problems


@pytest.mark.parametrize("value, jobs", [(None, None), ("", None), ("1", 1), (" 4 ", 4), (2, 2), ("+3", 3)])
def test_parse_jobs_accepts(value, jobs):
    assert parse_jobs(value) == jobs


@pytest.mark.parametrize("value", ["-1", -1, "0", 0, "abc", "1.5", 1.5, True, "2x"])
def test_parse_jobs_refuses(value):
    with pytest.raises(UsageError) as info:
        parse_jobs(value)
    line = info.value.one_line()
    assert info.value.exit_code == EXIT_BAD_INPUT and f"--jobs {value}" in line and ">= 1" in line
    assert "\n" not in line


def test_check_arch():
    assert check_arch("sm_121a", KNOWN_ARCHS) == "sm_121a"
    assert {"sm_80", "sm_90a", "sm_100a", "sm_120a", "sm_121a"} <= set(KNOWN_ARCHS)
    with pytest.raises(UsageError) as info:
        check_arch("sm_999", KNOWN_ARCHS)
    line = info.value.one_line()
    assert line.startswith("unknown arch sm_999; known: sm_75, sm_80,") and "sm_121a" in line
    assert info.value.exit_code == EXIT_BAD_INPUT
    with pytest.raises(UsageError, match=r"hopper \(expected the form sm_120a\)"):
        check_arch("hopper")
    with pytest.raises(UsageError, match="known: sm_90a, sm_120a$"):
        check_arch("sm_121a", ["sm_90a", "sm_120a"])  # a caller's narrower list (a step's targets)


def test_schema_problems_wording():
    schema = {"type": "object", "additionalProperties": False, "required": ["n", "xs"],
              "properties": {"n": {"type": "integer", "minimum": 1, "x-expected": "a positive integer"},
                             "xs": {"type": "array", "items": {"type": "string"}, "x-expected": "a list of strings"},
                             "o": {"enum": ["a"], "x-problem": "bad o {value_repr}"}}}
    problems = schema_problems({"n": 0, "xs": ["a", 3], "o": "b", "zz": 1}, schema)
    assert ("n", "expected a positive integer, got 0") in problems
    assert ("xs", "expected a list of strings, got ['a', 3]") in problems
    assert ("o", "bad o 'b'") in problems
    assert ("zz", "unknown key (allowed: n, o, xs)") in problems
    assert schema_problems({}, schema) == [("n", "missing"), ("xs", "missing")]


def test_join_key():
    assert join_key(["steps", 3, "expect"]) == "steps[3].expect"
    assert join_key(["a", "b"]) == "a.b" and join_key([]) == ""
