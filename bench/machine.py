"""What every bench script shares: the compute dtype it runs in, the machine line it prints, the matmul peak.

    from machine import add_dtype_flag, bench_dtype, machine_record, matmul_gflops   # bench/ is sys.path[0]

`--dtype auto` is what train.py's `--quant 16bit` picks (bf16 on a GPU or a CPU with AVX512-BF16/AMX, fp16 on an
older GPU, fp32 on an AVX2 CPU); `--dtype fp32` forces fp32 everywhere (train.py `--quant 32bit`), so the
AVX2 machines' path can be run and tested on a bf16-capable one. Every script prints `machine_line` and stores
`machine_record` in its JSON, so a table says which CPU kind (from the CPU flags, not a guess) it came from.
"""
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.env import cpu_flags, cpu_kind, device_kind  # noqa: E402
from common.model.load import half_dtype  # noqa: E402

DTYPE_CHOICES = ("auto", "fp32")


def add_dtype_flag(parser) -> None:
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="auto: bf16 where the hardware has it (GPU, AVX512-BF16/AMX CPU), else fp32; "
                             "fp32: force fp32 (the AVX2 path), e.g. to test it on a bf16 machine")


def bench_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The compute dtype of `--dtype choice` on `device`."""
    return torch.float32 if choice == "fp32" else half_dtype(device)


def train_quant_flag(dtype: torch.dtype) -> str:
    """train.py's --quant that computes in `dtype` (16bit picks the same half dtype as `bench_dtype`)."""
    return "32bit" if dtype == torch.float32 else "16bit"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def machine_record(device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Device, CPU kind and the flags that decided it, and the dtype in use; stored in every bench JSON."""
    flags = cpu_flags()
    record = {"device": device_kind(device), "cpu_kind": cpu_kind(flags),
              "cpu_bf16_flags": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx2")),
              "threads": torch.get_num_threads()}
    if dtype is not None:
        record["dtype"] = dtype_name(dtype)
    return record


def machine_line(device: torch.device, dtype: torch.dtype | None = None) -> str:
    record = machine_record(device, dtype)
    flags = ",".join(record["cpu_bf16_flags"]) or "none"
    return f"ran on {record['device']}; CPU flags {flags}" + (f"; dtype {record['dtype']}" if dtype else "")


def run_train_py(args: list[str], db: Path, label: str, env: dict[str, str] | None = None
                 ) -> tuple[dict[str, Any], dict[str, float], Callable[[str], list[float]]]:
    """train.py with `args` in a fresh process (so its peak RSS is its own), recording into `db`; exits with the
    tail of its stderr if it fails. Returns its one run (config included), that run's train scores, and a
    function from a per-step metric's name to its values."""
    from common.tracker import Tracker
    # The benches encode their examples as plain completions and their recorded history was measured so;
    # train.py's own default (--format auto) would train the chat model on chat turns instead.
    fmt = [] if "--format" in args else ["--format", "completion"]
    cmd = [sys.executable, str(ROOT / "train.py"), *args, *fmt, "--db", str(db)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    if done.returncode:
        sys.exit(f"train.py ({label}) failed ({done.returncode}):\n{done.stderr[-3000:]}")
    tracker = Tracker(db)
    (run,) = tracker.runs()
    scores = {s["name"]: s["value"] for s in tracker.scores(run["id"], "train")}
    return run, scores, lambda name: [m["value"] for m in tracker.metrics(run["id"], name)]


def matmul_gflops(dtype: torch.dtype, device: torch.device, budget_s: float, repeats: int = 5,
                  max_n: int | None = None) -> dict[str, float]:
    """Median GFLOP/s of n x n matmuls (2 n^3 FLOPs each), n the largest power of two from 64 up to max_n
    (default 2048 on CPU, 8192 on GPU) whose timing fits the budget."""
    max_n = max_n or (8192 if device.type == "cuda" else 2048)
    n = 64
    while True:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        _time_matmul(a, b)  # the first call at a size pays for allocation and kernel selection
        if n >= max_n or 8 * (repeats + 2) * _time_matmul(a, b) > budget_s:
            break
        n *= 2
    seconds = statistics.median(_time_matmul(a, b) for _ in range(repeats))
    return {"n": n, "gflops": 2 * n ** 3 / seconds / 1e9}


def _time_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    sync(a.device)
    start = time.perf_counter()
    a @ b
    sync(a.device)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
