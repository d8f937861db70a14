"""The action cache (gpurepro/cache.py): keys, entries, corruption, concurrency, eviction, peak RSS."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from gpurepro import cache as C
from gpurepro.cache import ActionCache, Entry, compile_key

PATCH = "ab" * 32


def base_inputs(**changes):
    inputs = {
        "toolchain": C.docker_toolchain("sha256:" + "1" * 64),
        "files": {"step01_x.cu": b"int main(){}\n", "common/repro.h": b"#pragma once\n"},
        "patches": [PATCH],
        "argv": ["nvcc", "-arch=sm_120a", "-O3", "-DNDEBUG", "-o", "step01", "step01_x.cu"],
        "env": {"PATH": "/opt/cuda/bin:/usr/bin", "NVCC_APPEND_FLAGS": ""},
    }
    inputs.update(changes)
    return inputs


def entry(binary=b"\x7fELF" + b"x" * 1000, outcome="ok", **kw):
    defaults = dict(compile_log="nvcc ok\n", reason="", events=[{"stage": "compile", "rc": 0}],
                    compile_seconds=61.5, peak_rss_bytes=5_300_000_000)
    defaults.update(kw)
    return Entry(binary=binary, outcome=outcome, **defaults)


# --- keys ------------------------------------------------------------------------------------------
def test_key_is_sha256_and_deterministic():
    key = compile_key(**base_inputs())
    assert len(key) == 64 and int(key, 16) >= 0
    assert compile_key(**base_inputs()) == key


@pytest.mark.parametrize("change", [
    {"toolchain": C.docker_toolchain("sha256:" + "2" * 64)},
    {"toolchain": C.host_toolchain("nvcc 13.0.88", "g++ 12.2", "0" * 64)},
    {"files": {"step01_x.cu": b"int main(){return 1;}\n", "common/repro.h": b"#pragma once\n"}},
    {"files": {"step01_x.cu": b"int main(){}\n", "common/repro.h": b"#pragma once\n", "common/b.h": b""}},
    {"files": {"step01_y.cu": b"int main(){}\n", "common/repro.h": b"#pragma once\n"}},  # renamed file
    {"patches": []},
    {"patches": [PATCH, "cd" * 32]},
    {"argv": ["nvcc", "-arch=sm_121a", "-O3", "-DNDEBUG", "-o", "step01", "step01_x.cu"]},
    {"argv": ["nvcc", "-arch=sm_120a", "-O3", "-o", "step01", "step01_x.cu"]},  # a define dropped
    {"env": {"PATH": "/opt/cuda/bin:/usr/bin", "NVCC_APPEND_FLAGS": "-G"}},
    {"env": {"PATH": "/opt/cuda/bin:/usr/bin"}},
], ids=lambda c: next(iter(c)))
def test_each_key_input_changes_the_key(change):
    assert compile_key(**base_inputs(**change)) != compile_key(**base_inputs())


def test_patch_order_matters():
    a, b = "aa" * 32, "bb" * 32
    assert compile_key(**base_inputs(patches=[a, b])) != compile_key(**base_inputs(patches=[b, a]))


def test_encoding_is_unambiguous():
    # the same characters split differently must not collide
    one = compile_key(**base_inputs(argv=["ab", "c"]))
    two = compile_key(**base_inputs(argv=["a", "bc"]))
    assert one != two
    assert compile_key(**base_inputs(env={"AB": "C"})) != compile_key(**base_inputs(env={"A": "BC"}))
    files_one = {"a": b"bc"}
    files_two = {"ab": b"c"}
    assert compile_key(**base_inputs(files=files_one)) != compile_key(**base_inputs(files=files_two))


def test_mapping_order_is_not_part_of_the_key():
    inputs = base_inputs()
    reordered = base_inputs(files=dict(reversed(list(inputs["files"].items()))),
                            env=dict(reversed(list(inputs["env"].items()))))
    assert compile_key(**reordered) == compile_key(**inputs)


def test_unrelated_file_outside_the_inputs_keeps_the_key(tmp_path):
    repros = tmp_path / "repros"
    (repros / "common").mkdir(parents=True)
    (repros / "step01_x.cu").write_text("int main(){}\n")
    (repros / "step02_y.cu").write_text("int main(){return 2;}\n")
    (repros / "common" / "repro.h").write_text("#pragma once\n")
    (repros / "manifest.yaml").write_text("steps: {}\n")

    def key():
        return compile_key(**base_inputs(files=C.gather_files(repros, ["step01_x.cu", "common"])))

    first = key()
    assert set(C.gather_files(repros, ["step01_x.cu", "common"])) == {"step01_x.cu", "common/repro.h"}
    (repros / "step02_y.cu").write_text("int main(){return 3;}\n")  # another step
    (repros / "manifest.yaml").write_text("steps: {changed: 1}\n")  # expectations, not compiler input
    assert key() == first
    (repros / "common" / "repro.h").write_text("#pragma once\n// edited\n")
    assert key() != first


def test_workdir_placeholder_shares_keys_across_host_work_directories():
    def with_dir(d):
        return compile_key(**base_inputs(argv=["nvcc", "-o", f"{d}/step01", f"{d}/step01_x.cu"],
                                         env={"TMPDIR": f"{d}/tmp"}), workdir=d)

    assert with_dir("/tmp/gpurepro-run-aaaa") == with_dir("/tmp/gpurepro-run-bbbb")
    # without the placeholder the directory is part of the command line, hence of the key
    assert compile_key(**base_inputs(argv=["-o", "/tmp/a/x"])) != compile_key(**base_inputs(argv=["-o", "/tmp/b/x"]))


def test_bad_key_inputs_are_refused():
    with pytest.raises(ValueError):
        compile_key(**base_inputs(files={"/abs/path.cu": b""}))
    with pytest.raises(ValueError):
        compile_key(**base_inputs(patches=["not-a-digest"]))


# --- header tree hash --------------------------------------------------------------------------------
def make_tree(root):
    (root / "include" / "cute").mkdir(parents=True)
    (root / "include" / "cute" / "tensor.hpp").write_text("// tensor\n")
    (root / "include" / "a.h").write_text("#define A 1\n")
    return root


def test_header_tree_hash_follows_contents_and_is_memoised(tmp_path):
    tree = make_tree(tmp_path / "fi")
    memo = tmp_path / "memo"
    first = C.header_tree_hash(tree, memo_dir=memo)
    assert len(list(memo.iterdir())) == 1
    assert C.header_tree_hash(tree, memo_dir=memo) == first
    # same contents elsewhere, no memo: same hash (paths are relative)
    assert C.header_tree_hash(make_tree(tmp_path / "other"), memo_dir=tmp_path / "memo2") == first

    header = tree / "include" / "a.h"
    st = header.stat()
    header.write_text("#define A 2\n")  # same size
    os.utime(header, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime still moves
    changed = C.header_tree_hash(tree, memo_dir=memo)
    assert changed != first
    (tree / "include" / "new.h").write_text("")
    assert C.header_tree_hash(tree, memo_dir=memo) not in (first, changed)


def test_header_tree_hash_ignores_a_lying_memo_only_when_the_tree_changed(tmp_path):
    tree = make_tree(tmp_path / "fi")
    memo = tmp_path / "memo"
    real = C.header_tree_hash(tree, memo_dir=memo)
    (memo_file,) = memo.iterdir()
    data = json.loads(memo_file.read_text())
    data["hash"] = "f" * 64
    memo_file.write_text(json.dumps(data))
    assert C.header_tree_hash(tree, memo_dir=memo) == "f" * 64  # the memo is trusted while the tree is unchanged
    (tree / "include" / "a.h").write_text("#define A 3\n")
    assert C.header_tree_hash(tree, memo_dir=memo) not in ("f" * 64, real)


# --- entries -------------------------------------------------------------------------------------------
@pytest.fixture
def cache(tmp_path):
    return ActionCache(tmp_path / "actions", max_bytes=10 * 1024**2)


def test_miss_then_hit_round_trips_everything(cache):
    key = compile_key(**base_inputs())
    assert cache.get(key) is None
    original = entry(extra={"binary_name": "step01"})
    assert cache.put(key, original) is True
    got = cache.get(key)
    assert got is not None and got.key == key
    for name in ("binary", "compile_log", "outcome", "reason", "events", "compile_seconds",
                 "peak_rss_bytes", "created", "extra"):
        assert getattr(got, name) == getattr(original, name), name
    meta = json.loads((cache.entry_path(key) / "meta.json").read_text())
    assert meta["binary"] == {"sha256": C.sha256_hex(original.binary), "size": len(original.binary)}
    assert os.access(cache.entry_path(key) / "binary", os.X_OK)
    s = cache.stats()
    assert (s.hits, s.misses, s.entries) == (1, 1, 1)


def test_cached_compile_error_round_trips_with_its_evidence(cache):
    key = compile_key(**base_inputs(argv=["nvcc", "-arch=sm_90a"]))
    log = "step09.cu(12): error: static assertion failed with \"SM120 only\"\n"
    failed = entry(binary=None, outcome="compile_error", compile_log=log,
                   reason='static assertion failed with "SM120 only"',
                   events=[{"event": "compile", "exit_code": 2, "first_error": "static assertion failed"}],
                   peak_rss_bytes=None, compile_seconds=4.25)
    cache.put(key, failed)
    got = cache.get(key)
    assert got.binary is None and not (cache.entry_path(key) / "binary").exists()
    assert (got.outcome, got.reason, got.events, got.compile_log, got.compile_seconds, got.peak_rss_bytes) == \
        (failed.outcome, failed.reason, failed.events, log, 4.25, None)


def corrupt_binary(path):
    data = bytearray((path / "binary").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "binary").write_bytes(bytes(data))


def truncate_meta(path):
    text = (path / "meta.json").read_text()
    (path / "meta.json").write_text(text[: len(text) // 2])


def missing_binary(path):
    (path / "binary").unlink()


def missing_meta(path):
    (path / "meta.json").unlink()


def truncated_log(path):
    (path / "compile.log").write_text("nvcc")


def stray_binary_for_compile_error(path):
    meta = json.loads((path / "meta.json").read_text())
    meta["binary"] = None  # claims no binary while one is there: not trusted
    (path / "meta.json").write_text(json.dumps(meta))


def other_key_in_meta(path):
    meta = json.loads((path / "meta.json").read_text())
    meta["key"] = "0" * 64
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [corrupt_binary, truncate_meta, missing_binary, missing_meta,
                                    truncated_log, stray_binary_for_compile_error, other_key_in_meta])
def test_damaged_entry_is_a_miss_removed_and_rewritten(cache, damage):
    key = compile_key(**base_inputs())
    good = entry()
    cache.put(key, good)
    damage(cache.entry_path(key))
    assert cache.get(key) is None
    assert not cache.entry_path(key).exists()
    assert cache.stats().corrupt == 1
    assert cache.put(key, good) is True
    assert cache.get(key).binary == good.binary


def test_put_over_a_damaged_entry_replaces_it(cache):
    key = compile_key(**base_inputs())
    cache.put(key, entry(binary=b"old" * 100))
    corrupt_binary(cache.entry_path(key))
    assert cache.put(key, entry(binary=b"new" * 100)) is True  # not read first: put itself checks
    assert cache.get(key).binary == b"new" * 100


def test_put_keeps_a_valid_existing_entry_unless_replacing(cache):
    key = compile_key(**base_inputs())
    assert cache.put(key, entry(binary=b"first")) is True
    assert cache.put(key, entry(binary=b"second")) is False
    assert cache.get(key).binary == b"first"
    assert cache.put(key, entry(binary=b"third"), replace=True) is True  # --no-cache: the fresh compile wins
    assert cache.get(key).binary == b"third"
    assert list((cache.root / "tmp").iterdir()) == []


def test_unwritable_cache_raises_one_line_infra_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = ActionCache(blocker / "actions")
    key = compile_key(**base_inputs())
    assert bad.get(key) is None  # a read never fails a run
    with pytest.raises(C.CacheError) as info:
        bad.put(key, entry())
    assert info.value.exit_code == 3 and "\n" not in info.value.one_line()


def _concurrent_put(root, key, payload, barrier, rounds):
    cache = ActionCache(root, max_bytes=10 * 1024**2)
    barrier.wait()
    for i in range(rounds):
        cache.put(key, entry(binary=payload * 2000, compile_log=f"writer {payload!r} round {i}\n"))
        got = cache.get(key)
        # whatever a reader sees is one writer's complete entry, never a mix or a partial one
        assert got is None or (len(got.binary) == 2000 and got.binary == got.binary[:1] * 2000)


def test_concurrent_puts_on_one_key_leave_one_valid_entry(tmp_path):
    root = tmp_path / "actions"
    key = compile_key(**base_inputs())
    ctx = multiprocessing.get_context("fork")
    writers = 4
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_concurrent_put, args=(root, key, bytes([65 + i]), barrier, 20))
             for i in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * writers
    cache = ActionCache(root)
    got = cache.get(key)
    assert got is not None and got.binary in {bytes([65 + i]) * 2000 for i in range(writers)}
    assert got.compile_log.startswith(f"writer {got.binary[:1]!r}")
    assert [p.name for p in (root / "entries" / key[:2]).iterdir()] == [key]
    assert list((root / "tmp").iterdir()) == []


# --- eviction, prune, stats ----------------------------------------------------------------------------
def key_n(n):
    return compile_key(**base_inputs(argv=["nvcc", str(n)]))


def test_eviction_keeps_the_most_recently_used(tmp_path):
    size = 100_000
    cache = ActionCache(tmp_path / "actions", max_bytes=int(3.5 * size))
    keys = [key_n(i) for i in range(3)]
    for i, key in enumerate(keys):
        cache.put(key, entry(binary=bytes([i]) * size))
    assert cache.stats().entries == 3
    assert cache.get(keys[0]) is not None  # 0 is now the most recently used, 1 the least
    cache.put(key_n(3), entry(binary=b"\x03" * size))
    assert cache.get(keys[1]) is None
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], key_n(3)))
    s = cache.stats()
    assert s.bytes <= cache.max_bytes and s.evicted == 1


def test_eviction_never_removes_the_entry_just_written(tmp_path):
    cache = ActionCache(tmp_path / "actions", max_bytes=1000)
    cache.put(key_n(0), entry(binary=b"a" * 500))
    cache.put(key_n(1), entry(binary=b"b" * 5000))  # alone over the cap
    assert cache.get(key_n(1)) is not None and cache.get(key_n(0)) is None


def test_prune_variants_and_stats(tmp_path):
    cache = ActionCache(tmp_path / "actions", max_bytes=10**9)
    for i in range(4):
        cache.put(key_n(i), entry(binary=bytes([i]) * 10_000))
    old = time.time_ns() - 10 * 86400 * 10**9
    os.utime(cache.entry_path(key_n(0)), ns=(old, old))  # unused for ten days
    s = cache.stats()
    assert s.entries == 4 and s.oldest == pytest.approx(old / 1e9) and s.newest >= s.oldest
    assert s.max_bytes == 10**9 and s.bytes > 40_000

    result = cache.prune(older_than_days=7)
    assert result["removed"] == 1 and result["entries"] == 3 and result["bytes"] > 10_000
    assert cache.get(key_n(0)) is None and cache.get(key_n(1)) is not None

    one = cache.stats().bytes // 3
    result = cache.prune(max_bytes=one + 100)
    assert result["removed"] == 2 and result["entries"] == 1
    assert cache.get(key_n(1)) is not None  # used last

    stale = cache.root / "tmp" / "dead-writer"
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * C.STALE_TMP_SECONDS,) * 2)
    result = cache.prune(all=True)
    assert result == {"removed": 1, "bytes": result["bytes"], "entries": 0, "bytes_left": 0}
    assert not stale.exists()
    assert cache.stats().entries == 0


def test_cli_rows_and_prune(tmp_path):
    root = tmp_path / "actions"
    cache = ActionCache(root)
    cache.put(key_n(0), entry())
    cache.get(key_n(0))
    cache.get(key_n(1))
    rows = dict(C.cache_stats(root, 2 * 1024**3))
    assert rows["directory"] == str(root) and rows["entries"] == "1"
    assert rows["lookups"] == "1 hits, 1 misses (50% hits)"
    assert "of 2.0 GiB" in rows["size"]
    assert C.cache_prune(root, all=True)["removed"] == 1
    assert dict(C.cache_stats(root))["entries"] == "0"
    # a cache never made reports zeros and creates nothing
    assert dict(C.cache_stats(tmp_path / "never"))["entries"] == "0" and not (tmp_path / "never").exists()


def test_default_dir_follows_env(tmp_path):
    assert C.default_cache_dir({"GPUREPRO_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c"
    assert C.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "gpurepro" / "actions"
    assert C.default_cache_dir({"XDG_CACHE_HOME": "relative"}).parts[-3:] == (".cache", "gpurepro", "actions")


def test_cache_record_vocabulary():
    assert C.cache_record("hit", "a" * 64) == {"status": "hit", "key": "a" * 64}
    assert C.cache_record("off", None)["status"] == "off"
    with pytest.raises(ValueError):
        C.cache_record("stale", None)


# --- peak RSS ----------------------------------------------------------------------------------------
ALLOC_100MB = "b = b'x' * (100 << 20); print('allocated', len(b))"


def test_peak_rss_wrapper_measures_a_real_child_on_the_host():
    argv = C.peak_rss_wrapper([sys.executable, "-c", ALLOC_100MB], python=sys.executable)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"allocated {100 << 20}\n"
    stderr, rss = C.parse_peak_rss(done.stderr)
    assert stderr == "" and rss is not None
    assert 100 << 20 <= rss < 400 << 20


def test_peak_rss_wrapper_keeps_exit_status_signal_and_output():
    out = subprocess.run(C.peak_rss_wrapper(["sh", "-c", "echo oops >&2; exit 3"], python=sys.executable),
                         capture_output=True, text=True, timeout=60)
    text, rss = C.parse_peak_rss(out.stderr)
    assert out.returncode == 3 and text == "oops\n" and rss > 0
    killed = subprocess.run(C.peak_rss_wrapper(["sh", "-c", "kill -9 $$"], python=sys.executable),
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == 128 + 9
    missing = subprocess.run(C.peak_rss_wrapper(["/nonexistent/nvcc"], python=sys.executable),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 127 and "nvcc" in missing.stderr


def test_parse_peak_rss_without_marker_leaves_output_alone():
    assert C.parse_peak_rss("error: x\n") == ("error: x\n", None)
    assert C.parse_peak_rss("a\n\n@@gpurepro-rss 1024\n") == ("a\n", 1024)


@pytest.mark.docker
def test_peak_rss_wrapper_in_the_toolchain_image(docker_client):
    image = "gpurepro/toolchain:latest"
    try:
        docker_client.images.get(image)
    except Exception:  # noqa: BLE001
        pytest.skip(f"image {image} not built (`invoke image.build --target toolchain`)")
    name = f"cachetest-rss-{os.getpid()}"
    container = docker_client.containers.run(image, C.peak_rss_wrapper(["python3", "-c", ALLOC_100MB]),
                                             name=name, detach=True)
    try:
        status = container.wait(timeout=120)
        stderr = container.logs(stdout=False, stderr=True).decode()
        _, rss = C.parse_peak_rss(stderr)
        assert status["StatusCode"] == 0 and rss is not None and 100 << 20 <= rss < 400 << 20
    finally:
        container.remove(force=True)
