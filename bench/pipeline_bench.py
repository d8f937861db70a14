"""Benchmark the repro pipeline and its compile action cache on the docker backend (not a test).

    python bench/pipeline_bench.py [--machine cpu-2core] [--jobs 2] [--arch sm_120a] [--hit-step step01]
                                   [--edit-step step01] [--steps all] [--reps 5] [--keep]

Every figure comes from one run of this script, against a throwaway project: a copy of gpurepro.yaml and of
repros/ in a temporary directory, with its own cache dir, reports dir and container name (the image is pinned
by id, so a rebuild of the shared tag mid-run cannot change the keys). In order:

  (b) cold chain   `invoke repro <steps> --arch A --compile-only --jobs J` on an empty cache: wall against
                   sum(compile_seconds) / J; each step's compile seconds and peak RSS; no OOM.
  (c) warm chain   the same command again: every step must be a hit; wall.
  (a) hit loop     `invoke repro <hit-step> --arch A` (a hit; without a GPU it runs the preflight), median of
                   --reps, against the by-hand loop done with the docker SDK in this process (put_archive the
                   step, common/ and the binary built in (b); exec `true` as the compile; exec
                   `./<binary> --preflight-only`; get_archive the directory out), and the same by hand with
                   the docker CLI (`docker cp` / `docker exec`).
  (d) one edit     a printf added to main() of <edit-step> in the copy; the chain again: only that step
                   misses; wall against that step's compile seconds.

Writes pipeline.md and pipeline.json to bench/results/<machine>/.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

import docker
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


class Project:
    def __init__(self, base: pathlib.Path, image_id: str, repros: pathlib.Path):
        raw = yaml.safe_load((ROOT / "gpurepro.yaml").read_text())
        self.base = base
        self.container = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
        self.repros = base / "repros"
        shutil.copytree(repros, self.repros)
        raw["docker"]["container"] = self.container
        raw["docker"]["image"] = image_id
        raw["reports_dir"] = str(base / "reports")
        raw["cache"] = {"dir": str(base / "cache"), "max_gb": 50, "enabled": True}
        raw["manifest"] = str(self.repros / "manifest.yaml")
        self.config = base / "gpurepro.yaml"
        self.config.write_text(yaml.safe_dump(raw, sort_keys=False))

    @classmethod
    def reuse(cls, base: pathlib.Path) -> "Project":
        self = cls.__new__(cls)
        raw = yaml.safe_load((base / "gpurepro.yaml").read_text())
        self.base, self.config, self.repros = base, base / "gpurepro.yaml", base / "repros"
        self.container = raw["docker"]["container"]
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(GPUREPRO_CONFIG=str(self.config), GPUREPRO_CONTAINER=self.container,
                   PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
                   GPUREPRO_WARM="0")  # in-process unless a figure says otherwise (the warm engine: (a))
        for name in ("GPUREPRO_REPORTS", "GPUREPRO_CACHE_DIR", "GPUREPRO_IMAGE"):
            env.pop(name, None)
        return env

    def invoke(self, *args: str, log_to: pathlib.Path | None = None,
               extra_env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env={**self.env(), **(extra_env or {})},
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if log_to is not None:
            log_to.write_text(f"$ invoke {' '.join(args)}\n# exit {done.returncode}, {wall:.2f} s\n"
                              f"{done.stdout}\n--- stderr ---\n{done.stderr}")
        return wall, done

    def latest(self) -> pathlib.Path:
        return (self.base / "reports" / "latest").resolve()


def run_dir_of(stdout: str) -> pathlib.Path | None:
    """The run directory this invocation wrote (its `report: file://.../index.html` line): `latest` may
    already name another run made with the same config."""
    found = re.findall(r"^report: file://(/\S+)/index\.html$", stdout, re.M)
    return pathlib.Path(found[-1]) if found else None


def run_steps(run_dir: pathlib.Path) -> dict[str, dict]:
    """step id -> its result.json."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((run_dir / "steps").glob("*/result.json"))}


def run_seconds(run_dir: pathlib.Path) -> float | None:
    """The run's own duration from run.json (started/finished), when both are there."""
    record = json.loads((run_dir / "run.json").read_text())
    try:
        start = datetime.datetime.fromisoformat(record["started_at"])
        end = datetime.datetime.fromisoformat(record["finished_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def chain(project: Project, label: str, steps: str, arch: str, jobs: int, logs: pathlib.Path) -> dict:
    log(f"{label}: invoke repro {steps} --arch {arch} --compile-only --jobs {jobs}")
    load = os.getloadavg()[0]
    wall, done = project.invoke("repro", steps, "--arch", arch, "--compile-only", "--jobs", str(jobs),
                                log_to=logs / f"{label}.log")
    run_dir = run_dir_of(done.stdout) or project.latest()
    results = run_steps(run_dir)
    per_step = {}
    for step, r in results.items():
        per_step[step] = {"outcome": r.get("outcome"), "reason": r.get("reason"),
                          "cache": (r.get("cache") or {}).get("status"),
                          "compile_seconds": r.get("compile_seconds"),
                          "compile_rss_bytes": r.get("compile_rss_bytes")}
    log(f"{label}: exit {done.returncode}, wall {wall:.1f} s, {len(per_step)} steps, "
        f"{sum(1 for s in per_step.values() if s['cache'] == 'hit')} hits")
    return {"wall_s": round(wall, 3), "run_s": run_seconds(run_dir), "exit_code": done.returncode, "load_1m": load,
            "run_dir": run_dir.name, "steps": per_step}


def oom_signs(result: dict, project: Project, run_dir: str) -> list[str]:
    """Steps whose compile was killed (exit 137 / 'Killed' / out of memory in the log) or ended in infra_error."""
    found = []
    for step, s in result["steps"].items():
        text = ""
        log_path = project.base / "reports" / run_dir / "steps" / step / "compile.log"
        if log_path.is_file():
            text = log_path.read_text(errors="replace")
        if s["outcome"] == "infra_error" or re.search(r"\bKilled\b|out of memory|signal 9|std::bad_alloc", text):
            found.append(step)
    return found


def tar_of(files: dict[str, bytes], executable: frozenset[str] = frozenset()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name in executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def step_inputs(project: Project, step_id: str) -> tuple[dict, dict[str, bytes]]:
    manifest = yaml.safe_load((project.repros / "manifest.yaml").read_text())
    step = next(s for s in manifest["steps"] if s["id"] == step_id)
    files = {step["file"]: (project.repros / step["file"]).read_bytes()}
    for path in sorted((project.repros / "common").rglob("*")):
        if path.is_file():
            files[str(path.relative_to(project.repros))] = path.read_bytes()
    return step, files


def by_hand_sdk(container, workdir: str, files: dict[str, bytes], binary: str) -> float:
    """One by-hand iteration through the docker SDK: copy in, no-op compile, preflight run, copy out."""
    start = time.perf_counter()
    container.exec_run(["mkdir", "-p", workdir])
    container.put_archive(workdir, tar_of(files, frozenset({binary})))
    code, _ = container.exec_run(["true"], workdir=workdir)
    assert code == 0
    code, out = container.exec_run([f"./{binary}", "--preflight-only"], workdir=workdir)
    stream, _ = container.get_archive(workdir)
    for _chunk in stream:
        pass
    wall = time.perf_counter() - start
    container.exec_run(["rm", "-rf", workdir])
    if code != 0:
        raise SystemExit(f"by-hand preflight run failed ({code}): {out.decode(errors='replace')[-400:]}")
    return wall


def by_hand_cli(container_name: str, workdir: str, staging: pathlib.Path, binary: str) -> float:
    """The same iteration with the docker CLI, as a user would type it."""
    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    out_dir = staging.parent / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    sh("docker", "exec", container_name, "mkdir", "-p", workdir)
    sh("docker", "cp", f"{staging}/.", f"{container_name}:{workdir}")
    sh("docker", "exec", "-w", workdir, container_name, "true")
    sh("docker", "exec", "-w", workdir, container_name, f"./{binary}", "--preflight-only")
    sh("docker", "cp", f"{container_name}:{workdir}", str(out_dir))
    wall = time.perf_counter() - start
    sh("docker", "exec", container_name, "rm", "-rf", workdir)
    return wall


def hit_loop(project: Project, client, step_id: str, arch: str, reps: int, logs: pathlib.Path) -> dict:
    step, files = step_inputs(project, step_id)
    binary = step_id  # the manifest's binary is named after the step
    # the binary (b) built: from the cache-hit run's report we would get the same bytes; take the cold run's
    built = next((project.base / "reports").glob(f"*/steps/{step_id}/{binary}"))
    files[binary] = built.read_bytes()
    container = client.containers.get(project.container)
    load = os.getloadavg()[0]

    def timed(label: str, extra_env: dict[str, str]) -> list[float]:
        walls = []
        for i in range(reps):
            wall, done = project.invoke("repro", step_id, "--arch", arch, log_to=logs / f"a-{label}-{i}.log",
                                        extra_env=extra_env)
            r = run_steps(run_dir_of(done.stdout) or project.latest())[step_id]
            if (r.get("cache") or {}).get("status") != "hit" or done.returncode != 0:
                raise SystemExit(f"(a) {step_id} ({label}) was not a good cache hit: {r.get('cache')}, "
                                 f"exit {done.returncode}")
            walls.append(wall)
        return walls

    tool = timed("in-process", {"GPUREPRO_WARM": "0"})
    last = run_steps(project.latest())[step_id]
    # the warm engine, as a terminal gets it: its own runtime directory; the first command (untimed) starts it
    xdg = project.base / "xdg"
    xdg.mkdir(mode=0o700, exist_ok=True)
    warm_env = {"GPUREPRO_WARM": "1", "XDG_RUNTIME_DIR": str(xdg)}
    project.invoke("repro", step_id, "--arch", arch, log_to=logs / "a-warm-start.log", extra_env=warm_env)
    deadline = time.monotonic() + 60
    while not list((xdg / "gpurepro").glob("*.pid")) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        warm = timed("warm", warm_env)
        served = sum(len(p.read_text().splitlines()) for p in (xdg / "gpurepro").glob("*.log"))
    finally:
        subprocess.run([sys.executable, "-m", "gpurepro.warm", "stop"], cwd=ROOT,
                       env={**project.env(), "XDG_RUNTIME_DIR": str(xdg)}, check=False)
    if served < reps:
        raise SystemExit(f"(a) the warm engine served {served} of {reps} commands")
    sdk = [by_hand_sdk(container, f"/tmp/bench-by-hand-{i}", files, binary) for i in range(reps)]
    staging = pathlib.Path(tempfile.mkdtemp(prefix="bench-by-hand-")) / "in"
    for name, data in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if name == binary else 0o644)
    cli = [by_hand_cli(project.container, f"/tmp/bench-by-hand-cli-{i}", staging, binary) for i in range(reps)]
    shutil.rmtree(staging.parent, ignore_errors=True)
    # the floor any Python front end pays before it does anything: interpreter, invoke, the engine's imports
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import invoke, docker, gpurepro.suites.repro, gpurepro.runners"],
                   cwd=ROOT, env=project.env(), check=True)
    imports = time.perf_counter() - start
    tool_med, warm_med, sdk_med, cli_med = (statistics.median(x) for x in (tool, warm, sdk, cli))
    log(f"(a) invoke repro {step_id} on a hit: median {warm_med:.2f} s warm, {tool_med:.2f} s in-process; by hand "
        f"(SDK) {sdk_med:.3f} s, (CLI) {cli_med:.3f} s; ratio {warm_med / sdk_med:.2f}x warm")
    return {"step": step_id, "reps": reps, "tool_s": [round(x, 3) for x in tool], "tool_median_s": round(tool_med, 3),
            "warm_s": [round(x, 3) for x in warm], "warm_median_s": round(warm_med, 3), "warm_served": served,
            "warm_ratio_vs_sdk": round(warm_med / sdk_med, 2), "warm_ratio_vs_cli": round(warm_med / cli_med, 2),
            "outcome": last.get("outcome"), "reason": last.get("reason"),
            "by_hand_sdk_s": [round(x, 3) for x in sdk], "by_hand_sdk_median_s": round(sdk_med, 3),
            "by_hand_cli_s": [round(x, 3) for x in cli], "by_hand_cli_median_s": round(cli_med, 3),
            "python_import_floor_s": round(imports, 3), "load_1m": load,
            "ratio_vs_sdk": round(tool_med / sdk_med, 2), "ratio_vs_cli": round(tool_med / cli_med, 2)}


MAIN_RE = re.compile(r"\bint\s+main\s*\([^)]*\)\s*\{")


def edit_step(project: Project, step_id: str) -> str:
    """Add a host-only printf as the first statement of main(): the device code is unchanged."""
    step, _ = step_inputs(project, step_id)
    path = project.repros / step["file"]
    text = path.read_text()
    found = MAIN_RE.search(text)
    if not found:
        raise SystemExit(f"no main() found in {path}")
    line = '\n  printf("pipeline_bench: edited\\n");'
    path.write_text(text[:found.end()] + line + text[found.end():])
    if "#include <cstdio>" not in text and "#include <stdio.h>" not in text:
        path.write_text("#include <cstdio>\n" + path.read_text())
    return line.strip()


def source_commit() -> str | None:
    """The commit measured: this checkout's HEAD (+dirty), or PIPELINE_BENCH_COMMIT for an exported tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gpurepro", "tasks.py"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("PIPELINE_BENCH_COMMIT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machine", default="cpu-2core")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--arch", default="sm_120a")
    parser.add_argument("--steps", default="all")
    parser.add_argument("--hit-step", default="step01")
    parser.add_argument("--edit-step", default="step01")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--repros", type=pathlib.Path, default=ROOT / "repros", help="a repros dir with manifest.yaml")
    parser.add_argument("--image", default=None, help="image to pin (default: gpurepro.yaml's docker.image)")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary project (logs, reports, cache)")
    parser.add_argument("--resume", type=pathlib.Path, default=None,
                        help="a project kept by --keep: redo only the phases its pipeline.json (in --out) lacks")
    parser.add_argument("--render", type=pathlib.Path, default=None,
                        help="only rewrite pipeline.md from this pipeline.json (no measurement)")
    args = parser.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return 0
    out = args.out or ROOT / "bench" / "results" / args.machine
    out.mkdir(parents=True, exist_ok=True)

    client = docker.from_env()
    image_name = args.image or yaml.safe_load((ROOT / "gpurepro.yaml").read_text())["docker"]["image"]
    image = client.images.get(image_name)
    if args.resume:  # same cache, same repros copy, a fresh container (the old one was removed)
        base = args.resume.resolve()
        logs = base / "logs"
        project = Project.reuse(base)
    else:
        base = pathlib.Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
        logs = base / "logs"
        logs.mkdir()
        project = Project(base, image.id, args.repros.resolve())
    log(f"project {base}, container {project.container}, image {image_name} ({image.id[:19]})")
    record: dict = {"machine": args.machine, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "host": {"cpus": os.cpu_count(), "mem_gib": round(os.sysconf("SC_PAGE_SIZE") *
                                                                     os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                             "python": platform.python_version(), "kernel": platform.release()},
                    "image": {"name": image_name, "id": image.id}, "arch": args.arch, "jobs": args.jobs,
                    "steps": args.steps, "source": source_commit()}
    if args.resume:
        record = json.loads((out / "pipeline.json").read_text())
        record.setdefault("notes", []).append(
            f"Resumed with --resume after a benchmark bug (binary name) stopped the first run after (c): "
            f"(a) and (d) ran at {datetime.datetime.now():%H:%M} on the same cache, repros copy and pinned image, "
            "in a fresh container.")
    try:
        if "cold" in record:
            cold = record["cold"]
        else:
            cold = chain(project, "b-cold", args.steps, args.arch, args.jobs, logs)
        compiled = [s for s in cold["steps"].values() if s["compile_seconds"] and s["cache"] == "miss"]
        total = sum(s["compile_seconds"] for s in compiled)
        cold["sum_compile_s"] = round(total, 1)
        cold["ideal_s"] = round(total / args.jobs, 1)
        cold["ratio"] = round(cold["wall_s"] / (total / args.jobs), 3) if total else None
        cold["peak_rss_max_bytes"] = max((s["compile_rss_bytes"] or 0) for s in cold["steps"].values())
        cold["oom"] = oom_signs(cold, project, cold["run_dir"])
        record["cold"] = cold
        log(f"(b) cold: wall {cold['wall_s']:.1f} s vs sum/jobs {cold['ideal_s']} s: {cold['ratio']}x; "
            f"oom: {cold['oom'] or 'none'}")

        if "warm" not in record:
            warm = chain(project, "c-warm", args.steps, args.arch, args.jobs, logs)
            warm["misses"] = sorted(k for k, s in warm["steps"].items() if s["cache"] != "hit")
            record["warm"] = warm
        if args.resume:  # untimed: the fresh container is created here, not inside (a)'s first repetition
            project.invoke("repro", args.hit_step, "--arch", args.arch, log_to=logs / "resume-warmup.log")

        record["hit"] = hit_loop(project, client, args.hit_step, args.arch, args.reps, logs)

        edit_line = edit_step(project, args.edit_step)
        edited = chain(project, "d-edit", args.steps, args.arch, args.jobs, logs)
        edited["edit"] = {"step": args.edit_step, "added_to_main": edit_line}
        edited["misses"] = sorted(k for k, s in edited["steps"].items() if s["cache"] != "hit")
        edited["edited_compile_s"] = edited["steps"].get(args.edit_step, {}).get("compile_seconds")
        if edited["edited_compile_s"]:
            edited["ratio_vs_step_compile"] = round(edited["wall_s"] / edited["edited_compile_s"], 3)
        record["edit"] = edited
    finally:
        try:
            client.containers.get(project.container).remove(force=True)
        except docker.errors.NotFound:
            pass
        record["project"] = str(base) if args.keep else None
        (out / "pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    (out / "pipeline.md").write_text(render(record))
    log(f"wrote {out / 'pipeline.md'} and {out / 'pipeline.json'}")
    return 0


def _mb(n: int | None) -> str:
    return f"{n / 2**20:,.0f}" if n else "-"


def render(r: dict) -> str:
    cold, warm, hit, edit = r["cold"], r["warm"], r["hit"], r["edit"]
    goal = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines = [
        f"# Pipeline benchmark: {r['machine']}",
        "",
        f"`python bench/pipeline_bench.py --machine {r['machine']}`, {r['date']}; {r['host']['cpus']} CPUs, "
        f"{r['host']['mem_gib']} GiB, docker backend, image `{r['image']['name']}` (`{r['image']['id'][:19]}`), "
        f"`--arch {r['arch']}`, `--jobs {r['jobs']}`, steps `{r['steps']}` ({len(cold['steps'])} programs). "
        "All figures from this one run, in a throwaway project (own cache, reports and container).",
        "",
        "| figure | measured | goal | |",
        "| --- | --- | --- | --- |",
        f"| (a) `invoke repro {hit['step']}` on a hit (warm engine, as in a terminal) / by-hand loop (SDK) | "
        f"{hit['warm_median_s']:.2f} s / {hit['by_hand_sdk_median_s']:.3f} s = **{hit['warm_ratio_vs_sdk']}x** | "
        f"<= 1.5x | {goal(hit['warm_ratio_vs_sdk'] <= 1.5)} |",
        f"| (a') same / by-hand loop (docker CLI) | {hit['warm_median_s']:.2f} s / {hit['by_hand_cli_median_s']:.3f} s"
        f" = {hit['warm_ratio_vs_cli']}x | | |",
        f"| (a'') in-process (`GPUREPRO_WARM=0`: CI, scripts) / by-hand loop (SDK) | {hit['tool_median_s']:.2f} s / "
        f"{hit['by_hand_sdk_median_s']:.3f} s = {hit['ratio_vs_sdk']}x | | |",
        f"| (b) cold chain wall / (sum compile / jobs) | {cold['wall_s']:.1f} s / ({cold['sum_compile_s']} s / "
        f"{r['jobs']}) = **{cold['ratio']}x** | <= 1.15x, no OOM | "
        f"{goal(cold['ratio'] is not None and cold['ratio'] <= 1.15 and not cold['oom'])} |",
        f"| (c) warm chain, all hits | **{warm['wall_s']:.2f} s**, misses: {', '.join(warm['misses']) or 'none'} "
        f"| <= 5 s | {goal(warm['wall_s'] <= 5 and not warm['misses'])} |",
        f"| (d) edit {edit['edit']['step']}, chain again | **{edit['wall_s']:.1f} s**; misses: "
        f"{', '.join(edit['misses']) or 'none'}; that step's compile {edit['edited_compile_s']} s "
        f"({edit.get('ratio_vs_step_compile')}x) | only that step misses | "
        f"{goal(edit['misses'] == [edit['edit']['step']])} |",
        "",
        f"Peak compiler RSS (largest single process) in the cold chain: {_mb(cold['peak_rss_max_bytes'])} MiB; "
        f"OOM-killed compiles: {', '.join(cold['oom']) or 'none'}. The run's own duration (run.json) was "
        f"{cold['run_s']:.1f} s cold, {warm['run_s']:.1f} s warm.",
        "",
        "## How each figure was taken",
        "",
        f"- **(b) cold chain**: `invoke repro {r['steps']} --arch {r['arch']} --compile-only --jobs {r['jobs']}` on an "
        "empty cache, as a "
        "subprocess; wall is the subprocess's wall clock (interpreter start, container creation, environment "
        "probe, every compile, copy-out, report). Sum of compile is the sum of `compile_seconds` in each step's "
        "`result.json` (nvcc under the RSS wrapper, measured by the engine).",
        "- **(c) warm chain**: the same command again right after; each `result.json` must say "
        "`\"cache\": {\"status\": \"hit\"}`.",
        f"- **(a) hit**: `invoke repro {hit['step']} --arch {r['arch']}` (not compile-only), median of "
        f"{hit['reps']}, each a hit; with no GPU here the step ends `{hit['outcome']}: {hit['reason']}` after its "
        "`--preflight-only` run. Warm: `GPUREPRO_WARM=1` (what a terminal gets by default) with the bench's own "
        "runtime directory; one untimed command first starts the engine, then the timed ones go through it "
        f"({hit.get('warm_served')} served, from its log); stopped afterwards. In-process: `GPUREPRO_WARM=0`. "
        "The by-hand loop, median of the same count, runs in the benchmark's own process "
        "with the docker SDK against the same container: `put_archive` of the step, `common/` and the binary the "
        "cold chain built; `exec_run(['true'])` as the no-op compile; `exec_run(['./<binary>', '--preflight-only'])`; "
        "`get_archive` of the directory. (a') is the same loop typed with the docker CLI (`docker cp`, "
        "`docker exec`, `docker cp`), which pays the CLI's start-up per command. For scale: starting the "
        f"interpreter and importing invoke, docker and the engine takes {hit['python_import_floor_s']:.2f} s "
        f"({hit['python_import_floor_s'] / hit['by_hand_sdk_median_s']:.1f}x the SDK loop), before any work.",
        "- **Load**: the 1-minute load average as each phase began (2 cores; other work may share the machine): "
        + ", ".join(f"{name} {phase.get('load_1m', float('nan')):.2f}"
                    for name, phase in (("(b)", cold), ("(c)", warm), ("(a)", hit), ("(d)", edit))) + ".",
        f"- **(d) edit**: `{edit['edit']['added_to_main']}` added as the first statement of `main()` in "
        f"{edit['edit']['step']}'s copy, then the chain command of (b) again.",
        "",
        "## Per step (cold chain)",
        "",
        "| step | outcome | compile s | peak RSS MiB | warm | after edit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for step, s in cold["steps"].items():
        lines.append(f"| {step} | {s['outcome']} | {s['compile_seconds']} | {_mb(s['compile_rss_bytes'])} | "
                     f"{warm['steps'].get(step, {}).get('cache')} | {edit['steps'].get(step, {}).get('cache')} |")
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
