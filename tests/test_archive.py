import io
import tarfile

import pytest

from gpurepro.archive import build_tar, read_tar


def test_round_trip_and_layout():
    files = {"step01.cu": b"int main(){}", "common/repro.h": b"#pragma once\n"}
    data = build_tar(files, executable=frozenset({"step01.cu"}))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"common", "common/repro.h", "step01.cu"}
    assert members["common"].isdir()
    assert members["step01.cu"].mode == 0o755 and members["common/repro.h"].mode == 0o644
    assert all(m.mtime == 0 and m.uid == 0 for m in members.values())
    assert read_tar(data, strip_top=False) == files


def test_deterministic():
    a = build_tar({"b": b"2", "a": b"1"})
    b = build_tar({"a": b"1", "b": b"2"})
    assert a == b


@pytest.mark.parametrize("bad", ["/etc/passwd", "../escape", "a/../../b", ""])
def test_refuses_unsafe_names(bad):
    with pytest.raises(ValueError):
        build_tar({bad: b"x"})


def test_read_tar_strips_get_archive_top_dir_and_skips_links():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in {"step01/run.log": b"ok", "step01/sub/x.bin": b"\x00"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("step01/evil")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tar.addfile(link)
    assert read_tar(buffer.getvalue()) == {"run.log": b"ok", "sub/x.bin": b"\x00"}


def test_a_prefix_gets_no_directory_entries_of_its_own():
    # unpacked at /, entries for `tmp` or `workspace` would reset the modes of directories that exist
    import io
    import tarfile

    from gpurepro.archive import build_tar

    data = build_tar({"a/x.txt": b"x", "y.bin": b"y"}, executable=frozenset({"y.bin"}), prefix="/tmp/run/step")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["tmp/run/step/a", "tmp/run/step/a/x.txt", "tmp/run/step/y.bin"]
    assert members["tmp/run/step/y.bin"].mode == 0o755 and members["tmp/run/step/a"].isdir()


def test_an_unsafe_prefix_is_refused():
    import pytest

    from gpurepro.archive import build_tar

    with pytest.raises(ValueError):
        build_tar({"x": b"x"}, prefix="/workspace/../etc")
