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


@pytest.fixture
def one_thread():
    """Tiny models and tensors: one thread is faster than two fighting over a shared 2-core machine.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_vae():
    """A randomly initialised diffusers AutoencoderKL built from a config (no download): RGB (3, H, W)
    <-> 4-channel latents at half the size, SD's scaling factor 0.18215. Seeded, so every test sees the same."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=32).eval()
