"""The sandbox server: a trusted loop that runs one untrusted program at a time and reports how it ended.

common.sandbox.execute starts it in its own interpreter (the base interpreter behind
the virtualenv, so the project's packages are not importable), with a scrubbed
environment, in a new session, its source (and common/sandbox/landlock.py's) passed on
the command line so that no path of the checkout has to be visible to it:

    python -s -B -c <this file and landlock.py> <socket fd> <tmp base> <mode> <landlock abi> <uid>

mode is "bwrap" (the server runs inside bubblewrap, as pid 1 of its pid
namespace), "landlock" or "none"; landlock abi is the Landlock ABI to confine
programs with (0: none; bwrap applies it too); uid is the unprivileged uid (and gid)
programs run as, or -1 to keep the caller's. It imports only the standard
library and common/sandbox/landlock.py.

Protocol on its SOCK_SEQPACKET socket, one program at a time: the host sends
"<workdir name> <timeout_s> <memory_bytes> <cpu_s> <file_bytes> <extra_tasks> <guard 0|1>"
with the fds program, stdin, stdout, stderr, report, nonce and, optionally, the
program's private channel (which it gets at fd 5; see host.Server.run); the server answers
"pid <child pid>" once the program's process is forked, then
"done <exit code> <timed out 0|1> <reusable 0|1>" once it is dead and cleaned
up (reusable 0: the server exits). The program's process reads the nonce,
sets limits, confines itself (uid, Landlock), compiles the program, installs
the guard, runs the program as __main__ and reports one line
"<nonce> <outcome>" on the report fd, where outcome is "ok", "exit <code>",
"raise <ExcName>" or "syntax <ExcName>". Anything else, or no line at all,
means the program did not finish. It ends with os._exit so that threads and
atexit hooks the program left behind cannot run after the report.
"""
import _posixsubprocess
import _signal
import ctypes
import fcntl
import os
import posix
import resource
import select
import shutil
import signal
import socket
import sys
import traceback
import types

if __name__ == "__main__":
    # Started by common/sandbox/host.py with `python -c`, which puts common/sandbox/landlock.py in sys.modules as
    # `landlock` and the working directory first on sys.path: take it off, so programs import only the
    # standard library.
    import landlock

    del sys.path[0]
else:
    from common.sandbox import landlock

REPORT_FD, NONCE_FD = 3, 4
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET, CLONE_NEWIPC = 0x40000000, 0x08000000
# What a program may read (and execute) under Landlock, besides its working
# directory and the interpreter's prefix: what the interpreter and the C
# libraries it loads need. Not /home, /root, /tmp, /var, /run, /mnt, /srv, /opt.
READABLE = ["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev"]

DENIED_EVENTS = {
    "os.exec", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.posix_spawn",
    "os.spawn", "os.system", "subprocess.Popen",
    "resource.setrlimit", "resource.prlimit", "socket.bind", "socket.connect",
    "socket.getaddrinfo", "socket.gethostbyaddr", "socket.gethostbyname",
    "socket.sendmsg", "socket.sendto", "sqlite3.enable_load_extension", "sqlite3.load_extension",
}
# event -> how many leading arguments are paths that must stay in the workdir
PATH_EVENTS = {
    "os.chmod": 1, "os.chown": 1, "os.mkdir": 1, "os.remove": 1, "os.rmdir": 1,
    "os.truncate": 1, "os.utime": 1, "shutil.chown": 1, "shutil.rmtree": 1,
    "os.link": 2, "os.rename": 2, "os.symlink": 2, "shutil.move": 2,
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Extension modules a program may not load, under any name (the last part of a dotted name is what
# picks a C extension's init function): native calls, C-API pokes, shared memory outside the workdir.
DENIED_MODULES = {"_ctypes", "_testcapi", "_testinternalcapi", "_testmultiphase", "_posixshmem",
                  "_xxsubinterpreters", "_xxinterpchannels"}
# Modules the guard patches: loaded afresh (after a program took them out of sys.modules) they would
# come back unpatched.
PATCHED_MODULES = {"posix", "_posixsubprocess", "_signal"}


def set_limit(which, soft, hard):
    # A hard limit can only be lowered; keep a lower one the caller already has.
    current = resource.getrlimit(which)[1]
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def set_limits(memory_bytes, cpu_s, file_bytes, extra_tasks, own_uid):
    # RLIMIT_NPROC counts all tasks of the user. A uid of our own starts with
    # none; otherwise allow the system-wide count plus headroom. Root ignores it.
    with open("/proc/loadavg") as f:
        tasks = 0 if own_uid else int(f.read().split()[3].split("/")[1])
    set_limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    set_limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
    set_limit(resource.RLIMIT_FSIZE, file_bytes, file_bytes)
    set_limit(resource.RLIMIT_NPROC, tasks + extra_tasks, tasks + extra_tasks)
    set_limit(resource.RLIMIT_CORE, 0, 0)


def confine(workdir, mode, abi, uid):
    """Apply Landlock, drop to `uid` and filter syscalls, as the mode says; forget ctypes, which the guard refuses.

    In every mode the program gets an empty session keyring of its own and a seccomp filter that fails
    what no scored program needs (landlock.NEVER_NEEDED: the keyring among them); with Landlock it also
    fails socket(2), which closes what Landlock leaves open: UDP, pathname Unix sockets.
    """
    prefix = os.path.realpath(sys.base_prefix)
    if abi:  # landlock, and bwrap where the kernel has it. First: the rules name paths `uid` may not open
        landlock.restrict(abi, writable=[workdir], readable=READABLE + [prefix], writable_files=[os.devnull])
    if uid >= 0:
        # The interpreter may live where the uid cannot look (e.g. /root/.pyenv).
        # A directory fd opened now keeps its prefix reachable through
        # /proc/self/fd, with permissions checked only beneath it.
        reach = f"/proc/self/fd/{os.open(prefix, os.O_PATH | os.O_DIRECTORY)}"

        def reachable(paths):
            return [reach + p[len(prefix):] if p == prefix or p.startswith(prefix + os.sep) else p for p in paths]

        sys.path[:] = reachable(sys.path)
        for module in list(sys.modules.values()):  # packages already imported find their submodules by __path__
            if isinstance(getattr(module, "__path__", None), list):
                module.__path__[:] = reachable(module.__path__)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    landlock.join_fresh_session_keyring()  # the caller's keys are possessed, whatever the uid
    landlock.forbid_syscalls(sockets=bool(abi))
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]  # so that a program's `import ctypes` raises the audit event again


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
        elif event == "sqlite3.connect":
            if not sqlite_inside(args[0]):
                deny(f"opening database {args[0]!r}")  # SQLite opens its files unseen by the open event
        elif event in DENIED_EVENTS or event.startswith("ctypes."):
            deny(event)  # every ctypes call raises one (dlopen, dlsym, call_function...)
            # SQL's ATTACH and VACUUM INTO open files no event shows: a gap of this tripwire, the OS layer's to close.
        elif event == "import" and denied_module(*args[:2]):
            deny(f"importing {args[0]}")
        elif event in PATH_EVENTS and not all(map(inside, args[:PATH_EVENTS[event]])):
            deny(f"{event} outside the working directory")

    def sqlite_inside(database):
        # A URI can name any file, with options: refused rather than parsed.
        return database in (":memory:", "", b":memory:", b"") or not str(database).startswith("file:") and inside(
            database)

    def blocked(*args, **kwargs):
        deny("this call")

    def confined(function):  # a function of a path that raises no audit event
        def call(path, *args, dir_fd=None, **kwargs):
            if dir_fd is not None or not inside(path):
                deny(f"{function.__name__} outside the working directory")
            return function(path, *args, **kwargs)
        return call

    # These raise no audit event: pidfds signal other processes, fork_exec
    # is what subprocess and multiprocessing start processes with, and FIFOs
    # and device nodes are files made without an open.
    for module, name in [(_posixsubprocess, "fork_exec"), (os, "pidfd_open"), (posix, "pidfd_open"),
                         (signal, "pidfd_send_signal"), (_signal, "pidfd_send_signal")]:
        if hasattr(module, name):
            setattr(module, name, blocked)
    for name in ("mkfifo", "mknod"):
        wrapped = confined(getattr(posix, name))
        setattr(posix, name, wrapped)
        setattr(os, name, wrapped)
    sys.addaudithook(hook)


def denied_module(name, filename=None):
    """Whether the guard refuses to load module `name` (from `filename`): see DENIED_MODULES, PATCHED_MODULES."""
    base = str(name).rpartition(".")[2]
    stem = os.path.basename(str(filename or "")).split(".")[0]
    return base in DENIED_MODULES | PATCHED_MODULES or stem in DENIED_MODULES
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


def run_program(path, workdir, limits, guard, confinement):
    """In the forked child, with the job's fds at 0-4 and all others closed: run the program and report."""
    # Keep our own references: the program may replace anything in os and sys.
    write, exit_now, stdout, stderr, getpid = os.write, os._exit, sys.stdout, sys.stderr, os.getpid
    pid = getpid()
    os.chdir(workdir)
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server's is SIG_DFL; programs get Python's
    nonce = os.read(NONCE_FD, 64).decode()
    os.close(NONCE_FD)
    mode, abi, uid = confinement
    set_limits(*limits, own_uid=uid >= 0)
    confine(workdir, mode, abi, uid)  # an error here ends the child unreported: the program never runs unconfined
    outcome = run(path, workdir, guard)
    if getpid() != pid:  # a process the program forked that ran on to the end: only the program reports
        exit_now(1)
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    write(REPORT_FD, f"{nonce} {outcome}\n".encode())
    exit_now(0 if outcome in ("ok", "exit 0") else 1)


def start_child(job_fds, path, workdir, limits, guard, confinement):
    """Fork the program's process: a new session whose fds 0-4 are stdin, stdout, stderr, report and nonce[, 5
    its channel]."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        # Lift the fds above 4 first, so that no dup2 below overwrites one still to be moved.
        lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD, 5) for fd in job_fds]
        for target, fd in enumerate(lifted):
            os.dup2(fd, target, inheritable=target < REPORT_FD)
        os.closerange(len(lifted), os.sysconf("SC_OPEN_MAX"))  # the server's socket among them
        run_program(path, workdir, limits, guard, confinement)
    except BaseException:
        traceback.print_exc()
    os._exit(1)


def children():
    """Pids of this (single-threaded) server's children."""
    try:
        return [int(pid) for pid in open(f"/proc/self/task/{os.getpid()}/children").read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: ask every process for its parent
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                # The parent pid is the 2nd field after the command, which sits in parentheses.
                if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    found.append(int(entry))
            except (OSError, IndexError):
                pass
        return found


def wait_and_kill(pid, timeout_s, isolated):
    """Wait for the program until its time limit, kill all it left running; return (exit code, timed out)."""
    pidfd = os.pidfd_open(pid)
    timed_out = not select.select([pidfd], [], [], timeout_s)[0]
    os.close(pidfd)
    try:
        if isolated:
            os.kill(-1, signal.SIGKILL)  # as pid 1 of bwrap's pid namespace: every process but us, none outside
        else:
            os.kill(pid, signal.SIGKILL)  # in case the time ran out before its setsid
            os.killpg(pid, signal.SIGKILL)  # before reaping: the zombie leader keeps the group id from reuse
    except (ProcessLookupError, PermissionError):
        pass
    returncode = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if not isolated:
        # We are a child subreaper: whatever the program started, even in a
        # session of its own, is reparented to us when its parent dies. Kill
        # our children until none is left (each death hands us its orphans).
        while pids := children():
            for child in pids:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for child in pids:
                os.waitpid(child, 0)
    while isolated:  # orphans are reparented to us; reap them all, and kill again what a racing fork added
        try:
            while True:
                os.waitpid(-1, 0)
        except ChildProcessError:
            pass
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break
    return returncode, timed_out


def _clear_directory(fd):
    """Make the directory open at `fd` ours to change and unlink all in it but subdirectories; their names."""
    os.chmod(fd, 0o700)
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return subdirs


def remove_tree(path):
    """Remove `path` and all beneath it, however deep; True when nothing is left.

    Iterative, with one directory fd open at a time (shutil.rmtree recurses
    and raises RecursionError on a tree some 1000 levels deep, which a
    program can build). It never follows a symbolic link, and makes each
    directory writable first (a program may have taken that right away from
    its own uid). Call it only once nothing can change the tree any more.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return True
    except OSError:  # not a directory (or a link to one)
        try:
            os.unlink(path)
            return True
        except OSError:
            return False
    try:
        stack = [(path, _clear_directory(fd))]  # from the top down to fd's directory: (name, subdirs left)
        while stack:
            name, subdirs = stack[-1]
            if subdirs:
                subdir = subdirs.pop()
                child = os.open(subdir, flags, dir_fd=fd)
                os.close(fd)
                fd = child
                stack.append((subdir, _clear_directory(fd)))
            else:
                stack.pop()
                if stack:
                    parent = os.open("..", flags, dir_fd=fd)
                    os.close(fd)
                    fd = parent
                    os.rmdir(name, dir_fd=fd)
        os.close(fd)
        fd = -1
        os.rmdir(path)
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def clean_up(workdir, isolated):
    """Remove what the program left; False when this server must not run another program."""
    if not isolated:
        return remove_tree(workdir)
    try:  # the sandbox's writable places, all private tmpfs
        if not all(remove_tree(os.path.join(base, name)) for base in ("/tmp", "/run", "/dev/shm")
                   for name in os.listdir(base)):
            return False
        # SysV IPC objects outlive their processes, and only a fresh namespace drops them.
        return all(len(open(f"/proc/sysvipc/{kind}").readlines()) == 1 for kind in ("msg", "sem", "shm"))
    except OSError:
        return False


def prepare_workdir(tmp_base, name, program_fd, uid):
    """Make the program's private working directory holding program.py, owned by `uid` when it is >= 0."""
    workdir = os.path.join(tmp_base, name)
    os.mkdir(workdir, 0o700)
    path = os.path.join(workdir, "program.py")
    with open(program_fd, "rb") as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    if uid >= 0:
        os.chown(workdir, uid, uid)
        os.chown(path, uid, uid)
    return workdir, path


def serve(sock_fd, tmp_base, mode, abi, uid):
    sock = socket.socket(fileno=sock_fd)
    isolated = mode == "bwrap"
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as pid 1 in bwrap, SIG_DFL makes us immune to it
    libc = ctypes.CDLL(None, use_errno=True)
    if not isolated and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    # Root (the only caller with a uid to drop) can give its programs a network
    # namespace of their own, with nothing in it: no TCP, UDP or abstract Unix
    # sockets to the host, which Landlock alone does not cut (UDP). And SysV IPC
    # objects of their own, which die with this server.
    if uid >= 0 and libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET | CLONE_NEWIPC) failed")
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 256, 7)
        if not message:
            return  # the host closed its end
        name, timeout_s, *limits, guard = message.split()
        program_fd, *job_fds = fds
        workdir, path = prepare_workdir(tmp_base, name.decode(), program_fd, uid)
        pid = start_child(job_fds, path, workdir, list(map(int, limits)), guard == b"1", (mode, abi, uid))
        for fd in job_fds:
            os.close(fd)
        sock.send(b"pid %d" % pid)
        returncode, timed_out = wait_and_kill(pid, float(timeout_s), isolated)
        reusable = clean_up(workdir, isolated)
        sock.send(b"done %d %d %d" % (returncode, timed_out, reusable))
        if not reusable:
            return


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
