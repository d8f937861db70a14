"""Fixtures for the kernels tests.  The ``device`` fixture runs a test on the CPU and,
marked ``gpu``, on CUDA (skipped with a reason when ``torch.cuda.is_available()`` is false)."""

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped when torch.cuda.is_available() is false)")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


_NO_CUDA = "CUDA not available: torch.cuda.is_available() is False"


@pytest.fixture(
    params=[
        "cpu",
        pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not _cuda_available(), reason=_NO_CUDA)]),
    ]
)
def device(request):
    torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")
    return torch.device(request.param)


@pytest.fixture(autouse=True, scope="module")
def _single_cpu_thread():
    """The tensors here are tiny: one intra-op thread is faster and does not fight a busy machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
