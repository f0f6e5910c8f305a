"""The host's end of a sandbox server (common/sandbox/server.py): start it, send it programs, collect results.

common.sandbox.execute decides the mode and classifies results; this file only speaks
the server's protocol (see common/sandbox/server.py): per program it sends the
program and the fds for stdin, stdout, stderr, a report pipe and a nonce pipe,
reads the pipes until the server says the program is done, and kills and
replaces a server that dies or hangs. One Server per thread.
"""
import contextlib
import math
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from common.sandbox.server import remove_tree

PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
_HERE = os.path.dirname(os.path.abspath(__file__))


def _bootstrap() -> str:
    """`python -c` source that runs common/sandbox/server.py with common/sandbox/landlock.py as its `landlock`.

    The sources travel in the command line, not as paths: bubblewrap hides /tmp (and a checkout or venv
    under it) behind a private tmpfs, and a server under its own uid may not read the checkout at all.
    """
    with open(os.path.join(_HERE, "landlock.py")) as f:
        landlock_source = f.read()
    with open(os.path.join(_HERE, "server.py")) as f:
        server_source = f.read()
    return ("import sys, types\n"
            "landlock = types.ModuleType('landlock')\n"
            f"exec(compile({landlock_source!r}, 'common/sandbox/landlock.py', 'exec'), landlock.__dict__)\n"
            "sys.modules['landlock'] = landlock\n"
            f"exec(compile({server_source!r}, 'common/sandbox/server.py', 'exec'))\n")


SERVER_BOOTSTRAP = _bootstrap()
OUTPUT_CAP = 64 * 1024  # bytes kept per stream; the rest is read and dropped
CHANNEL_CAP = 4 * 1024 * 1024  # bytes kept (the first) of what a program writes on its private channel
CHANNEL_FD = 5  # the program's end of its private channel (see Server.run), when it has one
FILE_SIZE_LIMIT = 16 * 1024 * 1024  # RLIMIT_FSIZE: largest file a program may write
EXTRA_TASKS = 64  # RLIMIT_NPROC headroom: processes and threads a program may add
KILL_GRACE_S = 1.0  # after the program ended, how long to keep draining pipes
SERVER_GRACE_S = 5.0  # beyond the time limit, how long a server may take to answer before it is killed
# Outside bubblewrap, root runs each server's programs as a uid of its own, drawn
# from a range no account uses, so RLIMIT_NPROC counts only that server's programs.
UID_BASE, UID_SPAN = 2**30, 2**28


@dataclass
class Run:
    outcome: str | None  # the program's report with the nonce removed; None if it never reported
    returncode: int  # negative signal number when a signal ended the program
    stdout: str
    stderr: str
    timed_out: bool
    server_lost: bool  # the server died or hung during the run: nothing it said counts
    duration_s: float
    channel: str = ""  # what the program wrote on its private channel (the first CHANNEL_CAP bytes)


def _environment(tmp_base: str) -> dict[str, str]:
    # The server sets HOME and TMPDIR to each program's workdir: the guard refuses writes anywhere else.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": tmp_base,
        "TMPDIR": tmp_base,
    }


class Server:
    """The host's end of one sandbox server (common/sandbox/server.py), which runs programs one at a time.

    Started on first use; restarted after a run in which it died, hung or
    declared itself unfit to go on. Not thread-safe: one per thread.
    """

    def __init__(self, mode: str, prefix: list[str], abi: int, own_uid: bool):
        """mode: "bwrap", "landlock" or "none"; prefix: the bwrap command the server runs under (bwrap
        mode); abi: the Landlock ABI to apply (landlock mode); own_uid: run programs as a uid of their own."""
        self.mode, self.prefix, self.abi, self.own_uid = mode, prefix, abi, own_uid
        self.tmp_base = "/tmp" if mode == "bwrap" else os.path.realpath(tempfile.gettempdir())
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(
        self, program: str, stdin: str | None, timeout_s: float, memory_mb: int, guard: bool, cap: int = OUTPUT_CAP,
        tail: bool = False, channel: str | None = None,
    ) -> Run:
        """Run `program` once; stdin=None means /dev/null; tail: keep the end of stdout, not its start.

        channel: give the program a private channel, a stream socket at fd CHANNEL_FD on which it can
        read `channel` and a newline, then EOF, and write what Run.channel returns. A harness that
        reads it before any untrusted code runs holds a secret that is in no file, argument,
        environment variable or stream the program can reach.
        """
        nonce = secrets.token_hex(16)
        workdir = "sandbox-" + secrets.token_hex(8)  # chosen here, so that the host can remove what a lost server left
        limits = [memory_mb * 1024 * 1024, math.ceil(timeout_s) + 1, FILE_SIZE_LIMIT, EXTRA_TASKS]
        message = " ".join(map(str, [workdir, repr(float(timeout_s)), *limits, int(guard)])).encode()
        sent: list[int] = []  # program, stdin, stdout, stderr, report, nonce[, channel]: the server's order
        readers: list[int] = []  # stdout, stderr, report[, channel]
        try:
            sent.append(_memfd(program.encode()))
            sent.append(os.open(os.devnull, os.O_RDONLY) if stdin is None else _memfd(stdin.encode()))
            for _ in range(3):
                reader, writer = os.pipe()
                readers.append(reader)
                sent.append(writer)
            nonce_r, nonce_w = os.pipe()
            sent.append(nonce_r)
            os.write(nonce_w, nonce.encode())  # fits in the pipe buffer; the program's process reads it first thing
            os.close(nonce_w)
            if channel is not None:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                with ours, theirs:
                    ours.sendall(channel.encode() + b"\n")  # fits in the socket buffer
                    ours.shutdown(socket.SHUT_WR)
                    readers.append(ours.detach())
                    sent.append(theirs.detach())
            self._send(message, sent)
            while sent:  # the server and the program hold them now: EOF must come from their side
                os.close(sent.pop())
            return self._collect(readers, nonce, workdir, timeout_s, cap, tail)
        finally:
            for fd in sent + readers:
                os.close(fd)

    def close(self) -> None:
        self._stop()

    def _collect(self, readers: list[int], nonce: str, workdir: str, timeout_s: float, cap: int, tail: bool) -> Run:
        """Read stdout, stderr, the report and the channel until the server says the program is done and all drain.

        Keeps the first `cap` bytes of stdout (the last with `tail`), the last `cap` of stderr and the report, the
        first CHANNEL_CAP of the channel; the rest is read and dropped, so gigabytes of output neither block nor
        fill memory. A server that dies, or is silent past the time limit plus SERVER_GRACE_S, is killed and
        nothing it said counts. One select loop, so that the deadline and drain rules live in one place.
        """
        kept = {fd: bytearray() for fd in readers}
        # the streams whose start is kept, with how much of it
        first = ({} if tail else {readers[0]: cap}) | {fd: CHANNEL_CAP for fd in readers[3:]}
        sock = self.sock.fileno()
        start = time.monotonic()
        deadline = start + timeout_s + SERVER_GRACE_S
        program_pid = None
        returncode, timed_out, lost, ended = -signal.SIGKILL, False, False, None
        with selectors.DefaultSelector() as selector:
            for fd in readers + [sock]:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if ended is not None:
                        break  # something out of the server's reach still holds a pipe open
                    selector.unregister(sock)
                    self._stop(program_pid, workdir)
                    timed_out = lost = True
                    ended = time.monotonic()
                    deadline = ended + KILL_GRACE_S
                    continue
                for key, _ in selector.select(remaining):
                    if key.fd == sock:
                        try:
                            message = self.sock.recv(256)
                        except OSError:
                            message = b""
                        if message.startswith(b"pid "):
                            program_pid = int(message.split()[1])
                            start = time.monotonic()
                            deadline = start + timeout_s + SERVER_GRACE_S
                            continue
                        selector.unregister(sock)
                        ended = time.monotonic()
                        deadline = min(deadline, ended + KILL_GRACE_S)
                        fields = message.split()
                        if len(fields) == 4 and fields[0] == b"done":
                            returncode, timed_out, reusable = int(fields[1]), fields[2] == b"1", fields[3] == b"1"
                            if not reusable:  # it could not clean up: try here too
                                self._stop(None, workdir)
                        else:  # it died (or was made to say something else)
                            self._stop(program_pid, workdir)
                            lost = True
                        continue
                    if not _keep_chunk(kept, key.fd, first.get(key.fd), cap):
                        selector.unregister(key.fd)
        stdout, stderr, report, *channel = (bytes(kept[fd]).decode(errors="replace") for fd in readers)
        prefix = nonce + " "
        outcome = next((line[len(prefix):] for line in reversed(report.splitlines()) if line.startswith(prefix)), None)
        return Run(outcome, returncode, stdout, stderr, timed_out, lost, (ended or time.monotonic()) - start,
                   "".join(channel))

    def _start(self) -> None:
        host_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with server_end:
            # python -I would also ignore PYTHONHASHSEED; the environment is
            # scrubbed anyway, so -s (no user site) and -B (no .pyc) suffice.
            uid = UID_BASE + secrets.randbelow(UID_SPAN) if self.own_uid else -1
            command = [*self.prefix, PYTHON, "-s", "-B", "-c", SERVER_BOOTSTRAP, str(server_end.fileno()),
                       self.tmp_base, self.mode, str(self.abi), str(uid)]
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(server_end.fileno(),),
                cwd=self.tmp_base,
                env=_environment(self.tmp_base),
                start_new_session=True,
            )
        self.sock = host_end

    def _send(self, message: bytes, fds: list[int]) -> None:
        if self.proc is None:
            self._start()
        try:
            socket.send_fds(self.sock, [message], fds)
        except OSError:  # it died between programs: nothing was running, start afresh
            self._stop()
            self._start()
            socket.send_fds(self.sock, [message], fds)

    def _stop(self, program_pid: int | None = None, workdir: str | None = None) -> None:
        """Kill the server; in bwrap the namespace and its tmpfs go with it, otherwise clean up after it.

        program_pid and workdir: the program the server was running, if any.
        """
        if self.proc is None:
            return
        if self.mode != "bwrap" and program_pid is not None:
            # Before the server: it has not reaped the program, so unless it
            # died, the zombie leader keeps the group id from reuse.
            _kill_group(program_pid)
        _kill_group(self.proc.pid)
        self.proc.wait()
        self.sock.close()
        self.proc = self.sock = None
        if self.mode != "bwrap" and workdir is not None:
            remove_tree(os.path.join(self.tmp_base, workdir))


def _keep_chunk(kept: dict[int, bytearray], fd: int, first: int | None, cap: int) -> bool:
    """Read what `fd` has; keep its first `first` bytes, or (first None) its last `cap`. False at EOF."""
    try:
        chunk = os.read(fd, 65536)
    except ConnectionResetError:  # the program's channel closed with the line unread in it
        chunk = b""
    if not chunk:
        return False
    if first is not None:
        kept[fd] += chunk[: max(0, first - len(kept[fd]))]
    else:
        kept[fd] += chunk
        del kept[fd][:-cap]
    return True


def _memfd(data: bytes) -> int:
    """An anonymous file holding `data`, positioned at its start."""
    fd = os.memfd_create("sandbox", os.MFD_CLOEXEC)
    with open(fd, "wb", closefd=False) as f:
        f.write(data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
