"""summary.md: a run in a page of Markdown (usable as a GitHub step summary), for each kind of run."""
from __future__ import annotations

from collections import Counter

from ..outcomes import CASE_ERROR, CASE_FAILED, CASE_PASSED, CASE_SKIPPED, CaseResult, StepResult, Verdict
from ..run.record import RunRecord
from .escape import md_cell


def _git(record: RunRecord) -> str:
    return f"- git: {record.git_commit or 'n/a'}" + (" (dirty)" if record.git_dirty else "")


def counts_line(results: list[StepResult]) -> str:
    """`3 match, 1 departed, ...` over verdicts: the line a run ends with, in the summary and the console."""
    counts = Counter(r.verdict for r in results)
    return ", ".join(f"{counts[v]} {v.value}" for v in Verdict if counts[v]) or "no steps"


def repro_summary(record: RunRecord, results: list[StepResult]) -> str:
    gpu = record.env("gpu_name")
    where = f"{gpu} ({record.env('gpu_arch')})" if gpu else "no GPU"
    image = record.env("image")
    lines = [
        f"# gpurepro run {record.run_id}",
        "",
        f"- status: **{record.status}**, backend: {record.backend}, device: {where}",
        _git(record),
        f"- toolchain: nvcc {record.env('nvcc_version', '?')}, CUTLASS {record.env('cutlass_version', '?')}, "
        f"FlashInfer {record.env('flashinfer_version', '?')}"
        + (f", image {image} ({str(record.env('image_id', ''))[:19]})" if image else ""),
        f"- command: `{md_cell(' '.join(record.command))}`",
        f"- result: {counts_line(results)}",
    ]
    if record.error:
        lines.append(f"- error: {md_cell(record.error)}")
    lines += ["", "| step | arch | expected | observed | verdict | compile | cache | reason |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        compile_s = f"{r.compile_seconds:.1f} s" if r.compile_seconds is not None else ""
        cache = (r.cache or {}).get("status", "")
        lines.append(f"| {md_cell(r.step)} | {md_cell(r.arch + (f' ({r.toolchain})' if r.toolchain else ''))} | "
                     f"{md_cell(r.expected or 'unknown')} | {md_cell(r.outcome.value)} | {md_cell(r.verdict.value)} | "
                     f"{compile_s} | {md_cell(cache)} | {md_cell(r.reason)} |")
    toolchains = list(dict.fromkeys(r.toolchain for r in results if r.toolchain))
    if toolchains:
        lines += ["", "## Steps × toolchains", "", "| step | arch | " + " | ".join(map(md_cell, toolchains)) + " |",
                  "|---|---|" + "---|" * len(toolchains)]
        cells = {(r.step, r.arch, r.toolchain): r for r in results}
        for step, arch in dict.fromkeys((r.step, r.arch) for r in results):
            row = [cells.get((step, arch, t)) for t in toolchains]
            lines.append(f"| {md_cell(step)} | {md_cell(arch)} | "
                         + " | ".join(md_cell(c.outcome.value) if c else "-" for c in row) + " |")
        versions = {t.get("name"): t for t in record.toolchains}
        lines += ["", "| toolchain | nvcc | CUTLASS | FlashInfer |", "|---|---|---|---|"]
        lines += [f"| {md_cell(t)} | {md_cell(versions.get(t, {}).get('nvcc', '?'))} | "
                  f"{md_cell(versions.get(t, {}).get('cutlass', '?'))} | "
                  f"{md_cell(versions.get(t, {}).get('flashinfer', '?'))} |" for t in toolchains]
    departed = [r for r in results if r.verdict in (Verdict.DEPARTED, Verdict.INFRA)]
    if departed:
        lines += ["", "## Reproduce", ""]
        lines += [f"- {md_cell(r.testcase_name)}: `{r.reproduce}`" for r in departed]
    return "\n".join(lines) + "\n"


def kernels_summary(record: RunRecord, cases: list[CaseResult]) -> str:
    info = record.kernels
    probe = (info.probe if info else None) or {}
    counts = Counter(c.outcome for c in cases)
    device = (f"{probe.get('gpu_name')} (cc {probe.get('gpu_compute_capability')})" if probe.get("cuda_available")
              else "no CUDA device (GPU tests skipped)")
    image = record.env("image")
    where = f"image {image} ({str(record.env('image_id', ''))[:19]})" if image else record.backend
    seconds = f" in {info.seconds} s" if info and info.seconds is not None else ""
    lines = [
        f"# gpurepro kernels run {record.run_id}",
        "",
        f"- status: **{record.status}**, exit code {record.exit_code}, backend: {record.backend}, "
        f"where: {where}, device: {device}",
        f"- python {probe.get('python', '?')}, torch {probe.get('torch', '?')}, pytest {probe.get('pytest', '?')}, "
        f"hypothesis {probe.get('hypothesis', '?')}",
        _git(record),
        f"- command: `{md_cell(' '.join(record.command))}`",
        f"- result: {counts[CASE_PASSED]} passed, {counts[CASE_FAILED]} failed, {counts[CASE_ERROR]} errors, "
        f"{counts[CASE_SKIPPED]} skipped{seconds}",
    ]
    if record.error:
        lines.append(f"- error: {md_cell(record.error)}")
    modules: dict[str, Counter] = {}
    for c in cases:
        modules.setdefault(c.classname, Counter())[c.outcome] += 1
    lines += ["", "| module | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
    for module, n in sorted(modules.items()):
        lines.append(f"| {md_cell(module)} | {n[CASE_PASSED]} | {n[CASE_FAILED]} | {n[CASE_ERROR]} | {n[CASE_SKIPPED]} |")
    bad = [c for c in cases if c.outcome in (CASE_FAILED, CASE_ERROR)]
    if bad:
        lines += ["", "## Failures", ""]
        lines += [f"- `{c.id}` ({c.outcome}): {md_cell(' '.join(c.message.split())[:300])}" for c in bad]
        lines += ["", f"Reproduce: `{record.reproduce}`"]
    reasons = Counter(" ".join(c.message.split())[:200] for c in cases if c.outcome == CASE_SKIPPED)
    if reasons:
        lines += ["", "## Skipped", "", "| reason | tests |", "|---|---|"]
        lines += [f"| {md_cell(reason)} | {n} |" for reason, n in reasons.most_common()]
    return "\n".join(lines) + "\n"


def nightly_summary(reports: list, *, title: str) -> str:
    """A nightly's summary.md (and $GITHUB_STEP_SUMMARY): changed first, then flaky, infrastructure, what an
    upgrade would change, kernel tests, counts, the steps x targets matrix."""
    from ..errors import EXIT_DEPARTED, EXIT_OK
    from ..nightly import CHANGED, CLASS_ORDER, FLAKY, INFRA, counts_of
    by_class = {c: [(r, e) for r in reports for e in r.entries if e.classification == c] for c in CLASS_ORDER}
    dead = [r for r in reports if r.error]
    head = (f"**{len(by_class[CHANGED])} changed, {len(by_class[FLAKY])} flaky**, "
            f"{len(dead) + len({r.target.name for r, _ in by_class[INFRA]})} target(s) with infrastructure errors")
    lines = [f"# {title}", "", head, ""]
    if by_class[CHANGED]:
        lines += ["## Changed (departed from the expectation twice)", ""]
        for r, e in by_class[CHANGED]:
            x = e.result
            lines.append(f"- `{x.step}` on **{r.target.name}** ({x.arch}): expected {x.expected}, observed "
                         f"{x.outcome.value} — {md_cell(x.reason)}  \n  reproduce: `{x.reproduce}`")
        lines.append("")
    if by_class[FLAKY]:
        lines += ["## Flaky (departed, then matched on the rerun)", ""]
        for r, e in by_class[FLAKY]:
            first = e.first or e.result
            lines.append(f"- `{e.result.step}` on **{r.target.name}** ({e.result.arch}): first {first.outcome.value} "
                         f"— {md_cell(first.reason)}; rerun {e.result.outcome.value}  \n  reproduce: `{e.result.reproduce}`")
        lines.append("")
    if dead or by_class[INFRA]:
        lines += ["## Infrastructure errors (no verdict on the steps)", ""]
        for r in dead:
            lines.append(f"- **{r.target.name}**: {md_cell(r.error)}")
        for r, e in by_class[INFRA]:
            lines.append(f"- `{e.result.step}` on **{r.target.name}**: {md_cell(e.result.reason)}")
        lines.append("")
    upgrades = [r for r in reports if r.upgrade]
    if upgrades:
        lines += [f"## On upgrade to {md_cell(upgrades[0].upgrade['toolchain'])} (would change; not counted)", ""]
        for r in upgrades:
            changes = r.upgrade["changes"]
            if not changes:
                lines.append(f"- **{r.target.name}**: no step changes ({r.upgrade['steps']} steps)")
            for c in changes:
                lines.append(f"- `{c['step']}` on **{r.target.name}** ({c['arch']}): {c['now']} now, {c['next']} with "
                             f"{md_cell(r.upgrade['toolchain'])} — {md_cell(c['reason'])}")
        lines.append("")
    with_kernels = [r for r in reports if r.kernels]
    if with_kernels:
        lines += ["## Kernel tests (`kernels.test`)", ""]
        for r in with_kernels:
            k = r.kernels
            counts = ", ".join(f"{n} {c}" for c, n in sorted(k["counts"].items())) or "no tests"
            verdict = {EXIT_OK: "ok", EXIT_DEPARTED: "FAILED"}.get(k["exit_code"], "could not run")
            lines.append(f"- **{r.target.name}**: {verdict} ({counts})" + (f" — {md_cell(k['error'])}" if k["error"] else ""))
            lines += [f"  - failed: `{test}`" for test in k["failed"][:20]]
        lines.append("")
    lines += ["## Counts", "", "| target | device | status | " + " | ".join(CLASS_ORDER) + " |",
              "|---|---|---|" + "---|" * len(CLASS_ORDER)]
    for r in reports:
        counts = counts_of(r)
        lines.append(f"| {r.target.name} | {r.device or '-'} | {r.status} | "
                     + " | ".join(str(counts[c]) for c in CLASS_ORDER) + " |")
    steps = list(dict.fromkeys(e.result.step for r in reports for e in r.entries))
    if steps:
        lines += ["", "## Steps × targets", "", "| step | " + " | ".join(r.target.name for r in reports) + " |",
                  "|---|" + "---|" * len(reports)]
        for step in steps:
            cells = []
            for r in reports:
                entry = next((e for e in r.entries if e.result.step == step), None)
                cells.append("-" if entry is None else f"{entry.result.outcome.value} ({entry.classification})")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
