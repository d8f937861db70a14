"""summary.md: the run in a page of Markdown (usable as a GitHub step summary)."""
from __future__ import annotations

from .outcomes import StepResult, Verdict


def _cell(text) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def render_summary(record: dict, results: list[StepResult]) -> str:
    env = record.get("environment") or {}
    gpu = env.get("gpu_name")
    where = f"{gpu} ({env.get('gpu_arch')})" if gpu else "no GPU"
    lines = [
        f"# gpurepro run {record['run_id']}",
        "",
        f"- status: **{record['status']}**, backend: {record['backend']}, device: {where}",
        f"- git: {(record.get('git') or {}).get('commit') or 'n/a'}"
        + (" (dirty)" if (record.get("git") or {}).get("dirty") else ""),
        f"- toolchain: nvcc {env.get('nvcc_version') or '?'}, CUTLASS {env.get('cutlass_version') or '?'}, "
        f"FlashInfer {env.get('flashinfer_version') or '?'}"
        + (f", image {env.get('image')} ({env.get('image_id', '')[:19]})" if env.get("image") else ""),
        f"- command: `{' '.join(record.get('command') or [])}`",
    ]
    if record.get("error"):
        lines.append(f"- error: {record['error']}")
    lines += ["", "| step | arch | expected | observed | verdict | reason |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {_cell(r.step)} | {_cell(r.arch)} | {_cell(r.expected or 'unknown')} | "
                     f"{_cell(r.outcome.value)} | {_cell(r.verdict.value)} | {_cell(r.reason)} |")
    departed = [r for r in results if r.verdict in (Verdict.DEPARTED, Verdict.INFRA)]
    if departed:
        lines += ["", "## Reproduce", ""]
        lines += [f"- {r.testcase_name}: `{r.reproduce}`" for r in departed]
    return "\n".join(lines) + "\n"
