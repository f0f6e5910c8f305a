"""common/sandbox/landlock.py on its own, each restriction applied in a forked child; parts of the sandbox server alone."""
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.sandbox import landlock

ABI = landlock.abi_version()
needs_landlock = pytest.mark.skipif(not ABI, reason="this kernel has no Landlock")


def _in_child(fn) -> int:
    """Run fn() in a forked child; its exit status: 0 when fn returned, 1 when it raised."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_handled_rights_grow_with_the_abi():
    assert landlock.handled_fs(1) == (1 << 13) - 1
    assert [landlock.handled_fs(abi) & landlock.REFER != 0 for abi in (1, 2)] == [False, True]
    assert [landlock.handled_fs(abi) & landlock.TRUNCATE != 0 for abi in (2, 3)] == [False, True]
    assert [landlock.handled_fs(abi) & landlock.IOCTL_DEV != 0 for abi in (4, 5)] == [False, True]
    assert ABI >= 0


@needs_landlock
def test_restrict_allows_the_workdir_and_refuses_the_rest(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "kept").write_text("kept")

    def confined():
        landlock.restrict(ABI, writable=[str(inside)], readable=["/usr", "/lib", "/lib64", "/etc", "/proc"],
                          writable_files=[os.devnull])
        (inside / "made").write_text("ok")
        open(os.devnull, "w").write("ok")
        for attempt in [lambda: (outside / "kept").write_text("changed"),
                        lambda: (outside / "new").touch(),
                        lambda: (outside / "kept").read_text(),
                        lambda: os.kill(os.getppid(), 0) if ABI >= 6 else _refuse()]:
            try:
                attempt()
            except OSError:
                continue
            raise AssertionError("allowed")

    assert _in_child(confined) == 0
    assert (inside / "made").read_text() == "ok"
    assert (outside / "kept").read_text() == "kept" and sorted(p.name for p in outside.iterdir()) == ["kept"]


def _refuse():
    raise PermissionError("not handled by this ABI")


@needs_landlock
def test_forbid_syscalls_leaves_socketpair_and_refuses_io_uring():
    def confined():
        landlock.restrict(ABI, writable=[], readable=[], writable_files=[])
        assert landlock.forbid_syscalls(sockets=True)
        a, b = socket.socketpair()
        a.sendall(b"x")
        assert b.recv(1) == b"x"
        for family, kind in [(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_STREAM),
                             (socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_NETLINK, socket.SOCK_RAW)]:
            try:
                socket.socket(family, kind)
            except PermissionError:
                continue
            raise AssertionError(f"socket({family}, {kind}) allowed")
        libc = ctypes.CDLL(None, use_errno=True)
        params = ctypes.create_string_buffer(120)  # struct io_uring_params
        assert libc.syscall(425, 8, params) == -1 and ctypes.get_errno() == errno.EPERM

    assert _in_child(confined) == 0


def test_server_imports_only_the_standard_library():
    server = Path(__file__).resolve().parent.parent / "common" / "sandbox" / "server.py"
    probe = ("import runpy, sys\n"
             f"runpy.run_path({str(server)!r}, run_name='probe')\n"
             "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))\n")
    # run_name 'probe' takes the package import path, so the repository root must be importable
    modules = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             cwd=server.parents[2]).stdout.split()
    assert "common" in modules and not {"torch", "numpy", "transformers"} & set(modules)


@pytest.mark.parametrize("children_file", [True, False], ids=["proc-children", "scan-proc"])
def test_server_finds_its_children(children_file, monkeypatch):
    from common.sandbox import server as sandbox_server

    def without_children_file(path, *args, **kwargs):
        if str(path).endswith("/children"):
            raise FileNotFoundError(path)  # a kernel without CONFIG_PROC_CHILDREN
        return open(path, *args, **kwargs)

    if not children_file:
        monkeypatch.setattr(sandbox_server, "open", without_children_file, raising=False)
    pid = os.fork()
    if pid == 0:
        os.read(os.pipe()[0], 1)  # blocks until killed
    try:
        assert pid in sandbox_server.children()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
