"""Test setup: Triton kernels run in the interpreter on the CPU; small thread count; determinism."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any `import triton`
os.environ.setdefault("DVCLIVE_OPEN", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
