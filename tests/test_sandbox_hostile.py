"""Hostile programs against the OS layer alone: the in-process guard is off (guard=False) in every test here.

Each test runs in every isolation mode this machine supports and skips the
others with the reason: bubblewrap (with Landlock inside where the kernel has
it, as the sandbox does), Landlock (with an unprivileged uid of its
own when the tests run as root, as evaluate.py does), and where it says so
"landlock-alone" (Landlock as the calling root user: no uid drop, no file
permissions in the way, so what holds is Landlock's doing) and "none" (limits
only). Targets live outside /tmp, so that bubblewrap shows them read-only
instead of hiding them.
"""
import ctypes
import os
import platform
import shutil
import signal
import socket
import sqlite3
import stat
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from common.sandbox import landlock

from common.sandbox import execute as sandbox
from common.sandbox.execute import check_many, check_program
from common.tracker import Tracker

BWRAP_USABLE = sandbox._bwrap() is not None
LANDLOCK_ABI = landlock.abi_version()
ROOT = os.geteuid() == 0


def _mode(name: str):
    reason = {
        "bwrap": None if BWRAP_USABLE else "bubblewrap not usable here (apt-get install -y bubblewrap)",
        "landlock": None if LANDLOCK_ABI else "this kernel has no Landlock",
        "landlock-alone": None if LANDLOCK_ABI and ROOT else "needs Landlock and root (to leave the uid as it is)",
        "none": None,
    }[name]
    return pytest.param(name, marks=[pytest.mark.skipif(True, reason=reason)] if reason else [], id=name)


CONFINED = [_mode("bwrap"), _mode("landlock")]


@pytest.fixture
def isolation(request, monkeypatch) -> str:
    """The isolation argument for the mode under test; landlock-alone keeps programs at the caller's uid."""
    if request.param == "landlock-alone":
        monkeypatch.setattr(sandbox, "_own_uid", lambda mode: False)
        return "landlock"
    return request.param


def _run(program: str, isolation: str, timeout_s: float = 10) -> sandbox.ExecResult:
    return check_program(program, timeout_s=timeout_s, isolation=isolation, guard=False)


@pytest.fixture
def outside(tmp_path_factory) -> Path:
    """A directory outside the sandbox holding a text file, a real experiments.db copy and an adapter directory."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-hostile-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None))
    base.chmod(0o755)
    (base / "precious.txt").write_text("precious")
    made = tmp_path_factory.mktemp("db") / "experiments.db"
    tracker = Tracker(made)
    run_id = tracker.start_run("victim", "train", {"rank": 16})
    tracker.log_scores(run_id, "humaneval", {"pass@1": (0.5, 10, 0.2, 0.8)})
    tracker.finish_run(run_id, "completed")
    tracker.close()
    shutil.copy(made, base / "experiments.db")
    adapter = base / "runs" / "demo"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 16, "peft_type": "LORA"}')
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _snapshot(base: Path) -> dict:
    """Every path beneath `base` with its bytes, mode, owner, size and times."""
    found = {}
    for path in [base, *sorted(base.rglob("*"))]:
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        found[str(path)] = (data, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink)
    return found


# Each route a program might take to change a file outside its working
# directory. `T` is the text file, `D` the database, `A` the adapter
# directory, `O` the directory holding them; `libc` is ctypes' libc.
WRITE_ROUTES = {
    "open-w": "open(T, 'w').write('x')",
    "open-a": "open(T, 'a').write('x')",
    "open-r+": "open(T, 'r+').write('x')",
    "os.open-trunc": "os.open(T, os.O_WRONLY | os.O_TRUNC)",
    "os.open-create": "os.open(O + '/new', os.O_CREAT | os.O_WRONLY)",
    "openat": "os.open('precious.txt', os.O_WRONLY, dir_fd=os.open(O, os.O_RDONLY))",
    "proc-fd": "open(f'/proc/self/fd/{os.open(O, os.O_PATH)}/precious.txt', 'w')",
    "proc-root": "open('/proc/self/root' + T, 'w')",
    "pathlib-write": "pathlib.Path(T).write_text('x')",
    "pathlib-touch": "pathlib.Path(O, 'touched').touch()",
    "mkstemp": "tempfile.mkstemp(dir=O)",
    "shutil-copy": "open('mine', 'w').write('x'); shutil.copy('mine', T)",
    "rename-out": "os.rename(T, O + '/moved')",
    "rename-in": "os.rename(T, 'stolen')",
    "replace-over": "open('mine', 'w').write('x'); os.replace('mine', T)",
    "link-in-then-write": "os.link(T, 'hard'); open('hard', 'w').write('x')",
    "link-out": "open('mine', 'w').write('x'); os.link('mine', O + '/planted')",
    "symlink-out": "os.symlink(T, O + '/sym')",
    "symlink-in-then-write": "os.symlink(T, 'soft'); open('soft', 'w').write('x')",
    "mkdir": "os.mkdir(O + '/newdir')",
    "mkfifo": "os.mkfifo(O + '/fifo')",
    "mknod-reg": "os.mknod(O + '/node', 0o600 | stat.S_IFREG)",
    "mknod-chr": "os.mknod(O + '/null', 0o666 | stat.S_IFCHR, os.makedev(1, 3))",
    "unlink": "os.unlink(T)",
    "rmtree": "shutil.rmtree(A)",
    "truncate": "os.truncate(T, 0)",
    "mmap-write": "mmap.mmap(os.open(T, os.O_RDONLY), 0, access=mmap.ACCESS_WRITE)[0:1] = b'X'",
    "libc-fopen": "f = libc.fopen(T.encode(), b'w'); assert f; libc.fputs(b'x', f); libc.fclose(f)",
    "libc-open": "assert libc.open(T.encode(), os.O_WRONLY | os.O_TRUNC) >= 0",
    "libc-creat": "assert libc.creat((O + '/created').encode(), 0o644) >= 0",
    "sqlite-connect": "c = sqlite3.connect(D); c.execute('DELETE FROM runs'); c.commit()",
    "sqlite-drop": "c = sqlite3.connect(D, isolation_level=None); c.execute('DROP TABLE scores')",
    "sqlite-uri-rw": "c = sqlite3.connect(f'file:{D}?mode=rw', uri=True); c.execute('DELETE FROM runs'); c.commit()",
    "sqlite-attach": "c = sqlite3.connect(':memory:'); c.execute('ATTACH ? AS x', (D,)); "
                     "c.execute('DELETE FROM x.runs'); c.commit()",
    "sqlite-vacuum-into": "sqlite3.connect(':memory:').execute('VACUUM INTO ?', (O + '/copy.db',))",
}
METADATA_ROUTES = {  # Landlock does not handle these: file ownership and permissions must
    "chmod": "os.chmod(T, 0o777)",
    "chmod-dir": "os.chmod(O, 0o777)",
    "chown": "os.chown(T, os.getuid(), os.getgid())",
    "utime": "os.utime(T, (0, 0))",
    "setxattr": "os.setxattr(T, 'user.sandbox', b'1')",
}


def _attack_program(routes: dict[str, str], base: Path) -> str:
    """Try each route; print "ESCAPED <name>" for each that raised nothing."""
    lines = [
        "import ctypes, mmap, os, pathlib, shutil, sqlite3, stat, tempfile",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "libc.fopen.restype = ctypes.c_void_p",
        "libc.fputs.argtypes, libc.fclose.argtypes = [ctypes.c_char_p, ctypes.c_void_p], [ctypes.c_void_p]",
        f"O = {str(base)!r}",
        "T, D, A = O + '/precious.txt', O + '/experiments.db', O + '/runs/demo'",
    ]
    for name, attempt in routes.items():
        lines += ["try:", textwrap.indent(attempt, "    "), f"    print('ESCAPED {name}', flush=True)", "except Exception:",
                  "    pass"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("isolation", CONFINED + [_mode("landlock-alone")], indirect=True)
def test_writes_outside_the_workdir_change_nothing(isolation, outside):
    before = _snapshot(outside)
    result = _run(_attack_program(WRITE_ROUTES, outside), isolation, timeout_s=20)
    assert result.passed, result
    assert result.stdout == ""
    assert _snapshot(outside) == before
    assert sqlite3.connect(outside / "experiments.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("isolation", CONFINED + [_mode("none")], indirect=True)
def test_metadata_of_files_outside_is_unchanged(isolation, outside):
    if isolation != "bwrap" and not ROOT:
        pytest.skip("Landlock does not handle metadata: only a uid of its own (as root) keeps the caller's files safe")
    before = _snapshot(outside)
    result = _run(_attack_program(METADATA_ROUTES, outside), isolation)
    assert result.passed, result
    assert result.stdout == ""
    assert _snapshot(outside) == before


@pytest.mark.parametrize("isolation", CONFINED + [_mode("landlock-alone")], indirect=True)
def test_tcp_connect_and_bind_are_refused(isolation):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        program = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'exfiltrated')\n"
            "    print('ESCAPED connect')\n"
            "except OSError:\n"
            "    pass\n"
            "try:\n"
            "    socket.create_server(('127.0.0.1', 0))\n"
            "    print('bound')\n"
            "except OSError:\n"
            "    pass\n"
        )
        result = _run(program, isolation)
        assert result.passed, result
        # Without Landlock, bubblewrap lets a program bind in its own network namespace, which nothing
        # outside can reach; with it, no socket can be made at all.
        assert result.stdout == ("bound\n" if isolation == "bwrap" and not LANDLOCK_ABI else "")
        with pytest.raises(BlockingIOError):
            listener.accept()


@pytest.mark.parametrize("isolation", CONFINED + [_mode("landlock-alone"), _mode("none")], indirect=True)
def test_udp_reaches_nothing(isolation):
    if isolation == "none" and not ROOT:
        pytest.skip("without root, 'none' leaves the network open")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        program = (
            "import socket\n"
            "try:\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.sendto(b'exfiltrated', ('127.0.0.1', {listener.getsockname()[1]}))\n"
            "except OSError:\n"
            "    pass\n"
        )
        assert _run(program, isolation).passed
        with pytest.raises(BlockingIOError):
            listener.recvfrom(64)


@pytest.mark.parametrize("isolation", CONFINED + [_mode("landlock-alone")], indirect=True)
def test_unix_socket_outside_is_unreachable(isolation, outside):
    if isolation == "bwrap" and not LANDLOCK_ABI:
        pytest.skip("bubblewrap alone lets a program connect to a socket on its read-only root (see the WARNING)")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(outside / "daemon.sock"))
        (outside / "daemon.sock").chmod(0o777)
        listener.listen()
        listener.setblocking(False)
        program = (
            "import socket\n"
            "try:\n"
            f"    socket.socket(socket.AF_UNIX).connect({str(outside / 'daemon.sock')!r})\n"
            "    print('ESCAPED unix')\n"
            "except OSError:\n"
            "    pass\n"
        )
        result = _run(program, isolation)
        assert (result.status, result.stdout) == ("passed", ""), result
        with pytest.raises(BlockingIOError):
            listener.accept()


@pytest.mark.parametrize("isolation", CONFINED + [_mode("landlock-alone")], indirect=True)
def test_signals_to_the_harness_have_no_effect(isolation):
    # SIGURG: ignored by default, so that a leak could not harm other processes; ours records it.
    hits = []
    previous = signal.signal(signal.SIGURG, lambda *_: hits.append(1))
    try:
        attacker = (
            "import os, signal\n"
            "attacks = {\n"
            "    'server': lambda: os.kill(os.getppid(), signal.SIGKILL),\n"
            "    'server-stop': lambda: os.kill(os.getppid(), signal.SIGSTOP),\n"
            "    'server-group': lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),\n"
            "    'pidfd': lambda: signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL),\n"
            f"    'test-process': lambda: os.kill({os.getpid()}, signal.SIGURG),\n"
            f"    'test-group': lambda: os.killpg(os.getpgid({os.getpid()}), signal.SIGURG),\n"
            "    'everyone': lambda: os.kill(-1, signal.SIGURG),  # succeeds when it reaches no one it may signal\n"
            "}\n"
            "for name, attack in attacks.items():\n"
            "    try:\n"
            "        attack()\n"
            "        print('SIGNALLED', name, flush=True)\n"
            "    except OSError:\n"
            "        pass\n"
            "assert False\n"
        )
        results = check_many([attacker, "assert True\n"], timeout_s=10, workers=1, isolation=isolation, guard=False)
        time.sleep(0.2)  # a stray signal would have been handled by now
    finally:
        signal.signal(signal.SIGURG, previous)
    assert hits == []
    assert [r.status for r in results] == ["failed", "passed"], results
    if isolation == "landlock":  # refused outright; in bubblewrap pid 1 ignores what it does not handle
        assert results[0].stdout in ("", "SIGNALLED everyone\n"), results[0]


def _processes_named(name: str) -> list[int]:
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


NAME_SELF = "import ctypes\nctypes.CDLL(None).prctl(15, {name!r}.encode(), 0, 0, 0)\n"  # PR_SET_NAME: our comm


@pytest.mark.parametrize("isolation", CONFINED + [_mode("none")], indirect=True)
def test_fork_storm_leaves_nothing_running(isolation):
    name = "fs" + uuid.uuid4().hex[:12]
    program = NAME_SELF.format(name=name) + (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    result = _run(program, isolation, timeout_s=1)
    assert result.status == "timeout"
    assert _processes_named(name) == []


@pytest.mark.parametrize("isolation", CONFINED + [_mode("none")], indirect=True)
def test_thread_storm_is_contained(isolation):
    program = (
        "import threading, time\n"
        "threads = []\n"
        "while True:\n"
        "    t = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
        "    t.start()\n"
        "    threads.append(t)\n"
    )
    result = _run(program, isolation, timeout_s=2)
    assert result.status in ("error", "memory", "timeout"), result
    assert check_program("assert True\n", isolation=isolation).passed


@pytest.mark.parametrize("isolation", CONFINED + [_mode("none")], indirect=True)
def test_session_leader_left_behind_is_killed_before_it_writes(isolation):
    name = "ss" + uuid.uuid4().hex[:12]
    drop = Path(tempfile.mkdtemp(dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None))
    drop.chmod(0o777)  # writable by anyone: only the kill stops the late write
    late = drop / "late"
    try:
        program = NAME_SELF.format(name=name) + (
            "import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(1.0)\n"
            f"        open({str(late)!r}, 'w').write('after the program ended')\n"
            "    os._exit(0)\n"
        )
        assert _run(program, isolation).passed
        time.sleep(1.5)  # past the moment it would have written
        assert _processes_named(name) == []
        assert not late.exists()
    finally:
        shutil.rmtree(drop, ignore_errors=True)


@pytest.mark.parametrize("isolation", CONFINED + [_mode("none")], indirect=True)
def test_infinite_output_and_memory_bombs_are_contained(isolation):
    flood = check_many(["while True:\n    print('x' * 10000)\n"], timeout_s=2, isolation=isolation, guard=False)[0]
    assert flood.status == "timeout"
    assert len(flood.stdout) <= sandbox.STDOUT_KEPT
    bomb = check_program("x = []\nwhile True:\n    x.append(bytearray(2**24))\n", memory_mb=256, isolation=isolation,
                         guard=False)
    assert bomb.status == "memory"


# --- the judge's red-team programs (issue 29): keyring, deep trees, the graded channel, guard bypasses ------------
# Each runs in a check_many batch between an ordinary passing and failing program, which must keep their verdicts.

ALL_MODES = CONFINED + [_mode("none")]
COLUMN = 0 if platform.machine() == "x86_64" else 1
SYSCALL = {name: numbers[COLUMN] for name, numbers in landlock.NEVER_NEEDED.items()}
LIBC = ("import ctypes, errno, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n")


def _in_batch(hostile: str, isolation: str, timeout_s: float = 20, channels: list[str] | None = None,
              ) -> sandbox.ExecResult:
    """Run `hostile` (guard off) between two ordinary programs; its result, after checking theirs."""
    results = check_many(["assert 1 + 1 == 2\n", hostile, "assert 1 + 1 == 3\n"], timeout_s=timeout_s, workers=1,
                         isolation=isolation, guard=False, channels=channels)
    assert [results[0].status, results[2].status] == ["passed", "failed"], results
    return results[1]


@pytest.fixture
def temp_base(monkeypatch) -> Path:
    """A temp dir of the test's own for the sandbox's working directories, to see that nothing stays in it."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-base-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None))
    base.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def session_key():
    """A secret in a fresh session keyring of this process (so no one else's), as the caller's keys would be."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if not landlock.can_filter_syscalls() or libc.syscall(SYSCALL["keyctl"], 1, None) < 0:  # JOIN_SESSION_KEYRING
        pytest.skip("no kernel keyring here")
    secret = "sk-" + uuid.uuid4().hex
    key = libc.syscall(SYSCALL["add_key"], b"user", b"sandbox-probe", secret.encode(), len(secret), ctypes.c_long(-3))
    assert key > 0
    yield key, secret
    libc.syscall(SYSCALL["keyctl"], 21, ctypes.c_long(key))  # KEYCTL_INVALIDATE


@pytest.mark.parametrize("isolation", ALL_MODES, indirect=True)
def test_the_callers_keyring_is_out_of_reach(isolation, session_key):
    key, secret = session_key
    program = LIBC + (
        f"KEYCTL, REQUEST_KEY = {SYSCALL['keyctl']}, {SYSCALL['request_key']}\n"
        "ids = [libc.syscall(KEYCTL, 10, ctypes.c_long(ring), b'user', b'sandbox-probe', 0) for ring in (-1, -2, -3, "
        "-4, -5)]\n"
        "ids.append(libc.syscall(REQUEST_KEY, b'user', b'sandbox-probe', None, 0))\n"
        "ids += [int(line.split()[0], 16) for line in open('/proc/keys')]\n"
        f"for key in ids + [{key}]:\n"
        "    buf = ctypes.create_string_buffer(256)\n"
        "    if libc.syscall(KEYCTL, 11, ctypes.c_long(key), buf, 256) > 0:\n"
        "        print('READ', buf.value)\n"
        "raise AssertionError(open('/proc/keys').read())\n"
    )
    result = _in_batch(program, isolation)
    assert result.status == "failed", result
    assert secret not in result.stdout + result.detail and result.stdout == ""


@pytest.mark.parametrize("isolation", ALL_MODES, indirect=True)
def test_syscalls_no_program_needs_fail_and_threads_and_fork_still_work(isolation):
    program = LIBC + (
        f"for name, nr in {SYSCALL!r}.items():\n"
        "    args = (2, 0) if name == 'ptrace' else ()  # PTRACE_PEEKDATA of no one: harmless if it ran\n"
        "    if libc.syscall(nr, *args, 0, 0, 0, 0, 0) != -1 or ctypes.get_errno() != errno.EPERM:\n"
        "        print('ALLOWED', name, ctypes.get_errno())\n"
        f"if libc.syscall({SYSCALL['unshare']}, 0) != -1:  # unshare(0) succeeds unless filtered\n"
        "    print('ALLOWED unshare(0)')\n"
        f"child = libc.syscall({(56, 220)[COLUMN]}, 0x10000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUSER | SIGCHLD)\n"
        "if child == 0:\n"
        "    os._exit(0)\n"
        "if child != -1 or ctypes.get_errno() != errno.EPERM:\n"
        "    print('ALLOWED clone(CLONE_NEWUSER)')\n"
        "if libc.syscall(435, 0, 0) != -1 or ctypes.get_errno() != errno.ENOSYS:\n"
        "    print('ALLOWED clone3')\n"
        "assert 'Seccomp:\\t2' in open('/proc/self/status').read()\n"
        "import threading\n"
        "ran = []\n"
        "thread = threading.Thread(target=ran.append, args=(1,))\n"
        "thread.start()\n"
        "thread.join()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(7)\n"
        "assert ran == [1] and os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7\n"
    )
    result = _in_batch(program, isolation)
    assert (result.status, result.stdout) == ("passed", ""), result


@pytest.mark.parametrize("isolation", ALL_MODES, indirect=True)
def test_a_deep_directory_tree_is_removed_and_the_evaluation_goes_on(isolation, temp_base):
    program = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\nopen('leaf', 'w').write('x')\n"
    assert _in_batch(program, isolation, timeout_s=60).passed
    assert list(temp_base.iterdir()) == []


def test_remove_tree_keeps_to_the_tree(tmp_path):
    from common.sandbox.server import remove_tree

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "file").write_text("kept")
    tree = tmp_path / "tree"
    here = tree
    for _ in range(1200):  # deeper than shutil.rmtree's recursion goes
        (here / "d").mkdir(parents=True)
        (here / "link").symlink_to(kept)
        here = here / "d"
    (tree / "locked").mkdir()
    (tree / "locked" / "file").write_text("x")
    (tree / "locked").chmod(0o500)
    assert remove_tree(str(tree)) and not tree.exists()
    assert (kept / "file").read_text() == "kept"
    assert remove_tree(str(tree))  # nothing there: nothing to do


ADD_PROMPT = "def double(x):\n"
MANY_ASSERTS = "def check(candidate):\n" + "".join(f"    assert candidate({i}) == {2 * i}\n" for i in range(500))
FORGER = (  # a wrong answer that looks for the marker wherever it could be, and prints pass lines with what it found
    "    return -1\n"
    "import os, re, fcntl\n"
    "seen = ''\n"
    "for path in [__file__, '/proc/self/cmdline', '/proc/self/environ']:\n"
    "    try:\n"
    "        seen += open(path, errors='replace').read()\n"
    "    except OSError:\n"
    "        pass\n"
    "for fd in range(64):\n"
    "    try:\n"
    "        flags = fcntl.fcntl(fd, fcntl.F_GETFL)\n"
    "        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)\n"
    "        seen += os.read(fd, 1 << 16).decode(errors='replace')\n"
    "    except OSError:\n"
    "        pass\n"
    "    try:\n"
    "        fcntl.fcntl(fd, fcntl.F_SETFL, flags)\n"
    "    except (OSError, NameError):\n"
    "        pass\n"
    "found = set(re.findall(r'#graded[-0-9a-f]*', seen)) | {'#graded'}\n"
    "print('FOUND', sorted(found))\n"
    "for marker in found:\n"
    "    for i in range(500):\n"
    "        line = f'\\n{marker} {i} pass\\n'.encode()\n"
    "        for fd in (1, 2, 3, 5):\n"
    "            try:\n"
    "                os.write(fd, line)\n"
    "            except OSError:\n"
    "                pass\n"
)


@pytest.mark.parametrize("isolation", ALL_MODES, indirect=True)
def test_graded_programs_cannot_learn_the_marker_and_any_number_of_asserts_counts(isolation):
    from common.judge.testcases import GradedResult, graded_program, new_marker, parse_graded

    completions = {"forger": FORGER, "correct": "    return 2 * x\n", "half": "    return 2 * x if x % 2 else -1\n"}
    programs, markers = {}, {}
    for name, completion in completions.items():
        programs[name], total = graded_program(ADD_PROMPT, completion, MANY_ASSERTS, "double")
        markers[name] = new_marker()
    assert total == 500
    results = dict(zip(completions, check_many(list(programs.values()), timeout_s=60, workers=1, isolation=isolation,
                                               guard=False, channels=list(markers.values()))))
    scores = {name: parse_graded(results[name].channel, total, markers[name]) for name in completions}
    assert scores == {"forger": GradedResult(0, 500), "correct": GradedResult(500, 500),
                      "half": GradedResult(250, 500)}, results["forger"]
    assert "FOUND ['#graded']" in results["forger"].stdout  # it looked, and found only the harness's prefix
    assert all(marker not in results[name].stdout + results[name].detail for name, marker in markers.items())


GUARD_ROUTES = {  # the red team's routes past the in-process guard, here with the guard off: the OS layer must hold
    "dotted-_ctypes-syscall": "import importlib.util, glob, sys\n"
                              "path = [f for d in sys.path if d for f in glob.glob(d + '/_ctypes*.so')][0]\n"
                              "m = importlib.util.module_from_spec(importlib.util.spec_from_file_location('x._ctypes', "
                              "path))\n"
                              "syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long)("
                              "m.dlsym(m.dlopen(None), 'syscall'))\n"
                              f"assert syscall({SYSCALL['unshare']}, 0x10000000) == 0  # unshare(CLONE_NEWUSER)",
    "sqlite-attach": "sqlite3.connect(':memory:').execute('ATTACH ? AS x', (D,)).execute('DELETE FROM x.runs')",
    "sqlite-vacuum-into": "sqlite3.connect(':memory:').execute('VACUUM INTO ?', (O + '/copy.db',))",
    "mkfifo": "os.mkfifo(O + '/fifo')",
    "mknod": "os.mknod(O + '/node', 0o600 | stat.S_IFREG)",
}


@pytest.mark.parametrize("isolation", ALL_MODES, indirect=True)
def test_routes_past_the_guard_are_contained(isolation, outside):
    if isolation == "none" and not ROOT:
        pytest.skip("without root, 'none' runs programs as the caller: only the guard stands in the way")
    shm = "sandbox-" + uuid.uuid4().hex
    routes = dict(GUARD_ROUTES)
    if isolation != "none":  # 'none' leaves world-writable places writable (see execute.py's WARNING)
        routes["shm_open"] = f"from multiprocessing import shared_memory\nshared_memory.SharedMemory({shm!r}, True, 16)"
    before = _snapshot(outside)
    result = _in_batch(_attack_program(routes, outside), isolation)
    assert (result.status, result.stdout) == ("passed", ""), result
    assert _snapshot(outside) == before
    assert not Path("/dev/shm", shm).exists()
