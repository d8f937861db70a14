import pytest

from gpurepro.archs import parse_compute_capability, parse_cuobjdump

# recorded from the toolchain image's cuobjdump (nvcc 13.0)
SM120A = """ELF file    1: t120.1.sm_120a.cubin
PTX file    1: t120.1.sm_120.ptx
ELF file    2: t120.2.sm_120a.cubin
PTX file    2: t120.2.sm_120a.ptx
"""
GENERIC = """ELF file    1: tm.1.sm_90.cubin
ELF file    2: tm.2.sm_120.cubin
PTX file    1: tm.1.sm_80.ptx
"""
HOST_ONLY = "cuobjdump info    : File '/bin/ls' does not contain device code\n"


def test_sm120a_binary_has_no_image_for_hopper():
    images = parse_cuobjdump(SM120A)
    assert not images.runnable_on(9, 0)
    assert images.runnable_on(12, 0)
    assert not images.runnable_on(12, 1)  # the plain sm_120 PTX nvcc adds does not count
    assert "SASS sm_120a" in images.describe()


def test_plain_ptx_is_forward_compatible_in_generic_builds():
    images = parse_cuobjdump(GENERIC)
    assert images.runnable_on(9, 0)
    assert images.runnable_on(8, 6)    # PTX sm_80 JIT
    assert images.runnable_on(12, 1)   # SASS sm_120 (family) and PTX
    assert not images.runnable_on(7, 5)


@pytest.mark.parametrize("line, cc, ok", [
    ("ELF file 1: a.sm_121a.cubin", (12, 1), True),
    ("ELF file 1: a.sm_121a.cubin", (12, 0), False),
    ("ELF file 1: a.sm_120f.cubin", (12, 1), True),
    ("ELF file 1: a.sm_120.cubin", (12, 1), True),
    ("ELF file 1: a.sm_121.cubin", (12, 0), False),
    ("ELF file 1: a.sm_90a.cubin", (10, 0), False),
    ("PTX file 1: a.sm_90a.ptx", (10, 0), False),
    ("PTX file 1: a.sm_90.ptx", (10, 0), True),
])
def test_rules(line, cc, ok):
    assert parse_cuobjdump(line).runnable_on(*cc) is ok


def test_host_only_binary_runs_anywhere():
    images = parse_cuobjdump(HOST_ONLY)
    assert images.host_only and images.runnable_on(9, 0)


def test_arch_specific_builds_ignore_plain_ptx():
    listing = "ELF file 1: b.1.sm_120a.cubin\nPTX file 1: b.1.sm_80.ptx\n"
    assert not parse_cuobjdump(listing).runnable_on(9, 0)
    assert parse_cuobjdump("PTX file 1: b.1.sm_80.ptx\n").runnable_on(9, 0)
    assert parse_cuobjdump(listing + "ELF file 2: b.2.sm_90a.cubin\n").runnable_on(9, 0)


def test_empty_listing_runs_nowhere():
    assert not parse_cuobjdump("").runnable_on(9, 0)


def test_compute_capability():
    assert parse_compute_capability("12.1") == (12, 1)
    assert parse_compute_capability(" 9.0\n") == (9, 0)
