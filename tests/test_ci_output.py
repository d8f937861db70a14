"""gpurepro.ci_output: GitHub step summary and workflow-command annotations."""
from __future__ import annotations

import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpurepro.ci_output import (SUMMARY_LIMIT, annotation, escape_data, escape_property, fit_summary,
                                github_annotations, github_step_summary)
from gpurepro.errors import EXIT_INFRA, InfraError


def decode(value: str, *, prop: bool) -> str:
    """What GitHub's runner makes of an encoded value (its documented percent codes, nothing else)."""
    codes = {"%25": "%", "%0D": "\r", "%0A": "\n"} | ({"%3A": ":", "%2C": ","} if prop else {})
    return re.sub("|".join(map(re.escape, codes)), lambda m: codes[m.group(0)], value)


def parse(line: str) -> tuple[str, dict[str, str], str]:
    """A workflow command line as the runner splits it: `::name k=v,k=v::message`."""
    match = re.fullmatch(r"::(\w+)(?: ([^:]*))?::(.*)", line, re.S)
    assert match, f"not a workflow command: {line!r}"
    props = dict(part.split("=", 1) for part in match.group(2).split(",")) if match.group(2) else {}
    return match.group(1), {k: decode(v, prop=True) for k, v in props.items()}, decode(match.group(3), prop=False)


def test_escapes_follow_githubs_rules():
    assert escape_data("50% done\r\nnext: a,b") == "50%25 done%0D%0Anext: a,b"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


@given(message=st.text(), title=st.text(min_size=1), file=st.text(min_size=1))
def test_any_text_survives_the_round_trip(message, title, file):
    line = annotation("error", message, file=file, title=title)
    assert "\n" not in line and "\r" not in line
    assert parse(line) == ("error", {"file": file, "title": title}, message)


def results():
    return [
        {"step": "step14", "file": "repros/step14_grouped.cu", "verdict": "changed", "target": "sm120",
         "expected": "init_error", "observed": "pass", "reason": "ran: 0 of 4096 differ"},
        {"step": "step03", "file": "repros/step03_x.cu", "verdict": "match", "reason": "ok"},
        {"step": "step07", "file": "repros/step07_y.cu", "verdict": "flaky", "reason": "timeout, then pass"},
        {"step": "step09", "file": "repros/step09_z.cu", "verdict": "departed",
         "reason": "error: static assertion failed, at line 3:\nnext line, 100%"},
        {"step": "step10", "file": "repros/step10.cu", "verdict": "new", "reason": "x"},
        {"step": "step11", "file": "repros/step11.cu", "verdict": "not_run", "reason": "no GPU"},
        {"step": "step12", "file": "repros/step12.cu", "verdict": "infra", "reason": "daemon gone"},
    ]


def test_errors_for_changed_and_departed_warnings_for_flaky_nothing_else():
    lines = [parse(line) for line in github_annotations(results())]
    assert [(level, props["file"]) for level, props, _ in lines] == [
        ("error", "repros/step14_grouped.cu"), ("error", "repros/step09_z.cu"), ("warning", "repros/step07_y.cu")]
    level, props, message = lines[0]
    assert props["title"] == "step14 changed on sm120"
    assert message == "expected init_error, observed pass: ran: 0 of 4096 differ"
    assert lines[1][2] == "error: static assertion failed, at line 3:\nnext line, 100%"


def test_raw_line_for_a_departed_step():
    (line,) = github_annotations([{"step": "step09", "file": "repros/step09_z.cu", "verdict": "departed",
                                   "reason": "100%: a,b"}])
    assert line == "::error file=repros/step09_z.cu,title=step09 departed::100%25: a,b"


def test_absolute_files_are_made_relative_to_the_checkout(tmp_path):
    result = {"step": "s", "file": str(tmp_path / "repros" / "s.cu"), "verdict": "departed", "reason": "r",
              "line": 12}
    (line,) = github_annotations([result], root=tmp_path)
    assert parse(line)[1] == {"file": "repros/s.cu", "line": "12", "title": "s departed"}


def test_duplicates_collapse_and_overflow_is_counted():
    many = [{"step": f"step{i:02d}", "file": f"repros/step{i:02d}.cu", "verdict": "departed", "reason": "r"}
            for i in range(13)]
    lines = github_annotations(many + many[:2], limit=10)
    assert len(lines) == 10 and all(line.startswith("::error ") for line in lines)
    assert parse(lines[-1])[2] == "4 more changed or departed steps: see the step summary"
    assert len(github_annotations(many[:10], limit=10)) == 10  # exactly the limit: no overflow line
    assert "more" not in github_annotations(many[:10], limit=10)[-1]


def test_no_summary_outside_github(tmp_path):
    assert github_step_summary("# run\n", env={}) is False
    assert github_step_summary("# run\n", env={"GITHUB_STEP_SUMMARY": ""}) is False


def test_summary_from_a_path_or_text_is_appended(tmp_path):
    target = tmp_path / "step_summary.md"
    target.write_text("earlier step\n")
    summary = tmp_path / "summary.md"
    summary.write_text("# gpurepro run\n| step | outcome |")  # no final newline
    env = {"GITHUB_STEP_SUMMARY": str(target)}
    assert github_step_summary(summary, env=env) is True
    assert github_step_summary(str(summary), env=env) is True
    assert github_step_summary("**text** itself", env=env) is True
    assert target.read_text() == ("earlier step\n" + "# gpurepro run\n| step | outcome |\n" * 2
                                  + "**text** itself\n")


def test_a_summary_too_large_is_cut_to_githubs_limit(tmp_path):
    target = tmp_path / "step_summary.md"
    target.write_bytes(b"x" * 1000 + b"\n")
    line = "| step | é outcome |\n"
    github_step_summary(line * (SUMMARY_LIMIT // len(line.encode()) + 50), env={"GITHUB_STEP_SUMMARY": str(target)})
    written = target.read_bytes()
    assert len(written) <= SUMMARY_LIMIT
    text = written.decode()  # no character cut in half
    assert "Summary cut" in text.splitlines()[-1]
    assert text.split("\n\n*Summary cut")[0].endswith(line)


def test_fit_summary_keeps_what_fits():
    assert fit_summary("short\n", 100) == "short\n"
    cut = fit_summary("line one\nline two\n" * 100, 300)
    assert len(cut.encode()) <= 300 and cut.startswith("line one\n") and "Summary cut" in cut
    assert fit_summary("x" * 50, 10) == ""  # not even the note fits: nothing rather than a broken file


def test_unwritable_summary_is_one_infra_line(tmp_path):
    with pytest.raises(InfraError) as caught:
        github_step_summary("# run\n", env={"GITHUB_STEP_SUMMARY": str(tmp_path)})  # a directory
    assert caught.value.exit_code == EXIT_INFRA and "\n" not in caught.value.one_line()
    assert str(tmp_path) in caught.value.one_line()


def test_a_missing_summary_file_is_an_error_not_its_name_as_text(tmp_path):
    target = tmp_path / "step_summary.md"
    with pytest.raises(InfraError, match="cannot read the run summary"):
        github_step_summary(str(tmp_path / "reports" / "summary.md"), env={"GITHUB_STEP_SUMMARY": str(target)})
    with pytest.raises(InfraError):
        github_step_summary(pathlib.Path(tmp_path / "nope.txt"), env={"GITHUB_STEP_SUMMARY": str(target)})
    assert not target.exists()
