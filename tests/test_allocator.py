"""common.env.set_mmap_threshold: freed tensors leave the resident set instead of staying in glibc's heap."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# glibc raises its mmap threshold after a large mmapped block is freed; later 2 MiB tensors then come from the
# heap, and live 100 kB tensors between them (too big for glibc's small-chunk caches, so they come from the top
# of the heap too) keep the freed ones resident. The script prints the MB still resident after the big
# tensors are freed (the 4 MB of live small tensors included).
PROBE = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import torch
from common.env import current_memory_mb, set_mmap_threshold
print(set_mmap_threshold(int(sys.argv[1])), file=sys.stderr)
cpu = torch.device("cpu")
x = torch.ones(16 * 2**20, dtype=torch.uint8)
del x
before = current_memory_mb(cpu)
big, small = [], []
for _ in range(40):
    big.append(torch.ones(2 * 2**20, dtype=torch.uint8))
    small.append(torch.ones(100_000, dtype=torch.uint8))
del big
print(current_memory_mb(cpu) - before)
"""

glibc_only = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")


def retained_mb(threshold_kib: int) -> tuple[float, bool]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(threshold_kib)], capture_output=True, text=True,
                          check=True)
    return float(done.stdout), done.stderr.strip() == "True"


@glibc_only
def test_a_fixed_mmap_threshold_returns_freed_tensors_to_the_os():
    dynamic, applied_dynamic = retained_mb(0)
    fixed, applied_fixed = retained_mb(256)
    assert not applied_dynamic and applied_fixed
    assert dynamic > 60          # 40 x 2 MiB freed but still resident
    assert fixed < 10            # only the small tensors, which are still alive


def test_zero_keeps_glibc_default():
    from common.env import set_mmap_threshold
    assert set_mmap_threshold(0) is False
