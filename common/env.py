"""What a run ran on: device choice, hardware, CPU kind, package versions, git commit, peak memory.

Recorded with every run so a number in a report can be traced to its machine.

CPU kinds (`cpu_kind`), read from the flags in /proc/cpuinfo, because they decide the compute dtype:
    amx          AMX-BF16 tiles (Sapphire Rapids and later): bf16 matmuls far above fp32
    avx512-bf16  AVX512-BF16 (e.g. AMD EPYC Zen 4): native bf16 dot products, bf16 ~2x fp32
    avx2         AVX2 without native bf16: PyTorch's bf16 matmuls run 10-100x slower than fp32, so fp32
    other        none of the above (older x86, ARM, or flags unreadable)
"""
import ctypes
import ctypes.util
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "sacrebleu")


def default_device() -> torch.device:
    """The GPU this process should use (LOCAL_RANK under torchrun/accelerate), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo; empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return frozenset()
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


def cpu_kind(flags: frozenset[str] | None = None) -> str:
    """amx, avx512-bf16, avx2 or other (module docstring), from `flags` or this machine's."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    return "avx2" if "avx2" in flags else "other"


def device_kind(device: torch.device) -> str:
    """One line naming what ran: the GPU, or the CPU kind and model, for every benchmark table and JSON."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu {cpu_kind()} ({_cpu_name()}, {torch.get_num_threads()} threads)"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def hardware_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_kind": cpu_kind(),
                            "cpu_count": os.cpu_count(),
                            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(default_device())
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1))
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # which GPU a sweep worker was pinned to
        info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    return {"versions": package_versions(), "hardware": hardware_info(), "git_commit": git_commit()}


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory in MiB (2**20 bytes; the `_mb` names are historical): CUDA max allocated/reserved on GPU,
    peak resident set size on CPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
    peaks = {"peak_rss_mb": rss}
    if device.type == "cuda":
        peaks["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        peaks["peak_gpu_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return peaks


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# evaluate.py records an eval run's cpu_contention under this benchmark name (a train run: among its train scores)
LOAD_BENCHMARK = "load"


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds at one instant: the whole machine's busy time and this process tree's own."""
    machine_busy: float
    own: float
    wall: float
    loadavg: float


def _machine_busy_seconds() -> float:
    """Busy CPU seconds of all cores since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _tree_seconds(root: int) -> float:
    """CPU seconds of root's live descendants, their reaped children included (/proc/<pid>/stat)."""
    parents, seconds = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parents[int(entry.name)] = int(fields[1])
        seconds[int(entry.name)] = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    total, frontier = 0.0, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        total += sum(seconds[pid] for pid in children)
        frontier = children
    return total


def cpu_snapshot() -> CpuSnapshot | None:
    """Now's CpuSnapshot; None where /proc cannot be read (not Linux)."""
    try:
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        return CpuSnapshot(_machine_busy_seconds(), own + _tree_seconds(os.getpid()), time.monotonic(),
                           os.getloadavg()[0])
    except OSError:
        return None


def cpu_contention(start: CpuSnapshot | None, end: CpuSnapshot | None = None) -> dict[str, float]:
    """How much of the machine a run had to itself between two snapshots, as shares of its CPU capacity
    (wall x cores): cpu_own_share (this process tree: the run, its sandbox and workers) and cpu_foreign_share
    (every other process). Cost figures of a run with a high foreign share were measured under contention
    (the report marks them); empty when a snapshot is missing."""
    end = end or cpu_snapshot()
    if start is None or end is None or end.wall <= start.wall:
        return {}
    capacity = (end.wall - start.wall) * (os.cpu_count() or 1)
    own = max(0.0, end.own - start.own)
    foreign = max(0.0, end.machine_busy - start.machine_busy - own)
    return {"cpu_own_share": own / capacity, "cpu_foreign_share": min(1.0, foreign / capacity),
            "loadavg_start": start.loadavg, "loadavg_end": end.loadavg}


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)


def set_mmap_threshold(kib: int) -> bool:
    """Make glibc serve every allocation of at least `kib` KiB from mmap, so a freed tensor goes back to the OS.

    Why: glibc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is freed, and after
    that a step's activations come from the heap, which keeps freed memory resident. With length-grouped
    batches of changing shapes, RSS then climbs step after step (bench/RESULTS.md section 9: 2.0 -> 5.4 GB
    over a 100-step run).
    Setting the threshold also turns that raising off, and costs throughput (every step faults its activations
    in again: 0.59x at 256 KiB there), so train.py leaves it at 0, glibc's dynamic default. Returns whether a
    threshold was set (False for 0 and off glibc, e.g. macOS or musl).
    """
    if kib <= 0 or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, kib * 1024))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
