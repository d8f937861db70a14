"""Hostile archives of each kind: refused with a clear one-line message, nothing written anywhere."""
import gzip
import io
import os
import tarfile

import pytest

from fake_runs import make_run, project_config, raw_tar_gz
from gpurepro import replay as replaying
from gpurepro import app, bundle, safe_tar
from gpurepro.errors import UsageError
from gpurepro.safe_tar import Limits, UnsafeArchiveError, extract

FILE = b"harmless\n"


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def archive(tmp_path, *members, name="hostile.tar.gz"):
    path = tmp_path / name
    path.write_bytes(raw_tar_gz(list(members)))
    return path


HOSTILE = {
    "absolute": ([(member("/tmp/gpurepro-pwned"), FILE)], "absolute path"),
    "dotdot": ([(member("run/../../escaped.txt"), FILE)], "path leaves the destination ('..')"),
    "symlink_absolute": ([(member("run/passwd", tarfile.SYMTYPE, "/etc/passwd"), None)],
                         "symlink to '/etc/passwd' leaves the tree"),
    "symlink_up": ([(member("run/x", tarfile.DIRTYPE), None), (member("run/x/up", tarfile.SYMTYPE, "../../.."), None)],
                   "symlink to '../../..' leaves the tree"),
    "hardlink_outside": ([(member("run/shadow", tarfile.LNKTYPE, "/etc/shadow"), None)],
                         "hard link to '/etc/shadow' leaves the tree"),
    "hardlink_up": ([(member("run/h", tarfile.LNKTYPE, "../outside"), None)], "hard link to '../outside' leaves the tree"),
    "char_device": ([(member("run/null", tarfile.CHRTYPE), None)], "is a character device"),
    "block_device": ([(member("run/sda", tarfile.BLKTYPE), None)], "is a block device"),
    "fifo": ([(member("run/pipe", tarfile.FIFOTYPE), None)], "is a FIFO"),
    "duplicate": ([(member("run/a"), FILE), (member("run/a"), b"second\n")], "appears twice"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_member_is_refused_and_nothing_is_written(tmp_path, kind):
    members, why = HOSTILE[kind]
    path = archive(tmp_path, *members)
    dest = tmp_path / "box" / "dest"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError) as caught:
        extract(path, dest)
    message = caught.value.one_line()
    assert why in message and "hostile.tar.gz: refused member" in message and "\n" not in message
    assert caught.value.exit_code == 2
    assert set(tmp_path.rglob("*")) == before  # not even the destination was created
    assert not os.path.lexists("/tmp/gpurepro-pwned")


def test_the_data_filter_still_guards_if_the_scan_missed_something(tmp_path, monkeypatch):
    # second layer: with our own checks switched off, tarfile's filter="data" must still refuse
    monkeypatch.setattr(safe_tar, "scan", lambda tar, label, limits=None: tar.getmembers())
    path = archive(tmp_path, (member("ok.txt"), FILE), (member("../../escaped.txt"), FILE))
    dest = tmp_path / "a" / "dest"
    with pytest.raises(UnsafeArchiveError) as caught:
        extract(path, dest)
    assert "extraction refused" in caught.value.one_line()
    assert not (tmp_path / "escaped.txt").exists() and not dest.exists()  # what was written is removed


def test_member_count_limit(tmp_path):
    path = archive(tmp_path, *[(member(f"f{i}"), FILE) for i in range(11)])
    with pytest.raises(UnsafeArchiveError, match="more than 10 members"):
        extract(path, tmp_path / "dest", limits=Limits(max_members=10))
    assert not (tmp_path / "dest").exists()


def test_unpacked_size_limit_stops_a_compression_bomb(tmp_path):
    # 4 MiB of zeros compress to a few KiB; the header sizes alone exceed the limit, nothing is inflated to disk
    path = archive(tmp_path, (member("a"), bytes(2 << 20)), (member("b"), bytes(2 << 20)))
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(UnsafeArchiveError, match=r"unpacks to more than 3145728 bytes"):
        extract(path, tmp_path / "dest", limits=Limits(max_bytes=3 << 20))
    assert not (tmp_path / "dest").exists()


def test_truncated_and_garbage_archives(tmp_path):
    good = raw_tar_gz([(member("a"), os.urandom(50_000))])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(UnsafeArchiveError, match="truncated"):
        extract(cut, tmp_path / "dest")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"MZ" + os.urandom(4000))
    with pytest.raises(UnsafeArchiveError, match="not a readable tar archive"):
        extract(junk, tmp_path / "dest2")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "dest2").exists()


def test_a_clean_archive_extracts_with_in_tree_links(tmp_path):
    path = archive(tmp_path, (member("d", tarfile.DIRTYPE), None), (member("d/a"), FILE),
                   (member("d/link", tarfile.SYMTYPE, "a"), None))
    names = extract(path, tmp_path / "dest")
    assert names == ["d", "d/a", "d/link"]
    assert (tmp_path / "dest" / "d" / "link").read_bytes() == FILE


def test_destination_must_be_empty(tmp_path):
    path = archive(tmp_path, (member("a"), FILE))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "mine").write_text("keep")
    with pytest.raises(UnsafeArchiveError, match="destination is not empty"):
        extract(path, tmp_path / "dest")
    assert (tmp_path / "dest" / "mine").read_text() == "keep"


# --- every place a bundle is opened goes through the same checks -------------------------------------
def test_bundle_commands_refuse_hostile_bundles(tmp_path, capsys):
    config = project_config(tmp_path / "project")
    made = bundle.create(make_run(config, steps=("hello",)).run.path, tmp_path).path
    with tarfile.open(made) as tar:  # a real bundle with one symlink planted in it
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]
    top = members[0][0].name.split("/")[0]
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(raw_tar_gz(members + [(member(f"{top}/run/steps/hello/key", tarfile.SYMTYPE,
                                                   "/root/.ssh/id_rsa"), None)]))
    expected = f"evil.tar.gz: refused member '{top}/run/steps/hello/key': symlink to '/root/.ssh/id_rsa' leaves the tree"
    for call in (lambda: app.bundle_verify(str(evil)), lambda: app.bundle_inspect(str(evil)),
                 lambda: replaying.replay(evil, config, dest=tmp_path / "replay")):
        with pytest.raises(UnsafeArchiveError) as caught:
            call()
        assert caught.value.one_line() == expected + "; nothing was extracted"
    assert not (tmp_path / "replay").exists()


def test_an_in_tree_link_not_in_the_manifest_fails_verification(tmp_path):
    config = project_config(tmp_path / "project")
    made = bundle.create(make_run(config, steps=("hello",)).run.path, tmp_path).path
    with tarfile.open(made) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]
    top = members[0][0].name.split("/")[0]
    linked = tmp_path / "linked.tar.gz"
    linked.write_bytes(raw_tar_gz(members + [(member(f"{top}/run/alias", tarfile.SYMTYPE, "run.json"), None)]))
    with pytest.raises(bundle.BundleError, match="run/alias is a link; bundles hold only files listed"):
        bundle.verify(linked)


def test_gzip_of_garbage_inside_is_refused(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(UnsafeArchiveError):
        bundle.verify(path)


# --- reading in one bounded pass -----------------------------------------------------------------------
def test_oversized_tar_metadata_is_refused_before_it_is_inflated(tmp_path):
    # tarfile reads a pax header whole: one larger than tar metadata ever is must not reach memory
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = safe_tar.MAX_READ + 1
    path = tmp_path / "pax.tar.gz"
    path.write_bytes(gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT) + bytes(safe_tar.MAX_READ + 1024)))
    for call in (lambda: extract(path, tmp_path / "dest"), lambda: bundle.verify(path)):
        with pytest.raises(UnsafeArchiveError, match=r"asks to read \d+ bytes at once \(metadata larger than"):
            call()
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_every_tar_compression_opens(tmp_path, compression):
    path = tmp_path / f"a.tar.{compression or 'plain'}"
    with tarfile.open(path, f"w:{compression}") as tar:
        info = member("d/a")
        info.size = len(FILE)
        tar.addfile(info, io.BytesIO(FILE))
    assert extract(path, tmp_path / "dest") == ["d/a"]
    assert (tmp_path / "dest" / "d" / "a").read_bytes() == FILE


def test_open_archive_closes_the_file(tmp_path):
    path = archive(tmp_path, (member("a"), FILE))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with safe_tar.open_archive(path) as tar:
            safe_tar.scan(tar, "a")
    assert len(os.listdir("/proc/self/fd")) == before


def test_destination_that_is_a_file_is_a_usage_error(tmp_path):
    path = archive(tmp_path, (member("a"), FILE))
    (tmp_path / "dest").write_text("keep")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        extract(path, tmp_path / "dest")
    assert (tmp_path / "dest").read_text() == "keep"


def test_a_file_name_with_control_characters_is_shown_escaped(tmp_path):
    path = tmp_path / "evil\x1b[2J\nname.tar.gz"
    path.write_bytes(b"junk")
    with pytest.raises(UnsafeArchiveError) as caught:
        bundle.verify(path)
    assert caught.value.one_line().startswith("evil\\x1b[2J\\x0aname.tar.gz: not a readable tar archive")
