"""The contention record every run carries (common/env.py cpu_snapshot / cpu_contention): its arithmetic, and that
a run's own children count as its own CPU time, not as another process's."""
import os
import subprocess
import sys
import time

import pytest

from common.env import CpuSnapshot, _tree_seconds, cpu_contention, cpu_snapshot

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_shares_split_machine_time_into_own_and_foreign(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    start = CpuSnapshot(machine_busy=100.0, own=10.0, wall=50.0, loadavg=0.5)
    end = CpuSnapshot(machine_busy=118.0, own=25.0, wall=60.0, loadavg=2.5)
    got = cpu_contention(start, end)
    # 10 s x 2 cores = 20 CPU-seconds of capacity; the run used 15, the machine 18, so others used 3
    assert got == pytest.approx({"cpu_own_share": 0.75, "cpu_foreign_share": 0.15, "loadavg_start": 0.5,
                                 "loadavg_end": 2.5})


def test_missing_or_empty_interval_records_nothing():
    snap = CpuSnapshot(1.0, 1.0, 5.0, 0.0)
    assert cpu_contention(None, snap) == {}
    assert cpu_contention(snap, snap) == {}
    assert set(cpu_contention(cpu_snapshot())) == {"cpu_own_share", "cpu_foreign_share", "loadavg_start",
                                                   "loadavg_end"}   # the end defaults to now


def test_a_live_child_counts_as_the_runs_own_cpu():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.4: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while _tree_seconds(os.getpid()) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _tree_seconds(os.getpid()) >= 0.3   # the spinner's CPU, read while it is alive and not reaped
    finally:
        child.kill()
        child.wait()
