"""Landlock: the kernel's unprivileged file-system, network and signal sandbox, through ctypes.

Landlock (Linux 5.13+) lets any process restrict itself and its future
children, without root, a package or a container. The restriction is a
ruleset: for each kind of access the ruleset "handles", only the paths (and
ports) it names are allowed; it cannot be lifted, and it is inherited across
fork and exec. What a kernel can handle grows with its ABI version:

    ABI 1  (5.13)  file access: read, write, execute, create, remove, list
    ABI 2  (5.19)  REFER: link/rename a file into another directory
    ABI 3  (6.2)   TRUNCATE
    ABI 4  (6.7)   TCP bind and connect
    ABI 5  (6.10)  ioctl on device files
    ABI 6  (6.12)  scopes: no signals and no abstract Unix sockets outside the domain
    ABI 7  (6.15)  audit logging flags (nothing new to restrict)

Not handled by any ABI so far: UDP and other non-TCP sockets, pathname Unix
sockets, and file metadata (chmod, chown, utime, xattrs). `forbid_sockets`
closes the first two with a one-rule seccomp filter: no socket(2) at all.

Usage (in a process that is about to run untrusted code):
    from common.sandbox import landlock
    abi = landlock.abi_version()   # 0: no Landlock here
    landlock.restrict(abi, writable=[workdir], readable=["/usr", "/etc"], writable_files=["/dev/null"])
    landlock.forbid_sockets()      # after restrict, which sets no_new_privs
"""
import ctypes
import functools
import os
import platform

# Syscall numbers shared by every Linux architecture that has Landlock but alpha.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
# (AUDIT_ARCH_*, socket(2)'s number) of the architectures forbid_sockets knows;
# io_uring_setup is 425 on both (io_uring can make sockets without socket(2)).
_SOCKET_SYSCALL = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
_IO_URING_SETUP = 425

# File-system access rights (include/uapi/linux/landlock.h).
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = EXECUTE | READ_FILE | READ_DIR
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a rule on a file may grant


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel header: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"landlock {what}: {os.strerror(errno)}")
    return result


@functools.cache
def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 when it has none (too old, disabled, or not Linux)."""
    if platform.system() != "Linux" or platform.machine() == "alpha":
        return 0
    version = _libc().syscall(ctypes.c_long(_CREATE_RULESET), None, ctypes.c_size_t(0),
                              ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)  # -1 with ENOSYS (no Landlock) or EOPNOTSUPP (disabled at boot)


def handled_fs(abi: int) -> int:
    """Every file-system right the kernel of this ABI can restrict."""
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(abi: int, writable: list[str], readable: list[str], writable_files: list[str]) -> None:
    """Confine the calling thread (and all it later starts) for good; call it single-threaded.

    With abi = abi_version() >= 1: every file-system right of that ABI is
    handled, so only what is granted here is allowed: everything beneath the
    `writable` directories, reading and executing beneath `readable` ones,
    reading and writing the `writable_files` (e.g. /dev/null). ABI 4+: no TCP
    bind or connect at all. ABI 6+: no signals to, and no abstract Unix socket
    connections with, processes outside this domain. Paths that do not exist
    are skipped. Sets no_new_privs first (which Landlock requires of an
    unprivileged caller). Raises OSError when the kernel refuses.
    """
    libc = _libc()
    fs = handled_fs(abi)
    attr = _RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = ctypes.c_size_t(ctypes.sizeof(attr))  # fields this kernel does not know must be 0, and are
    ruleset = _check(libc.syscall(ctypes.c_long(_CREATE_RULESET), ctypes.byref(attr), size, ctypes.c_uint32(0)),
                     "create_ruleset")
    try:
        grants = [(p, fs) for p in writable] + [(p, READ & fs) for p in readable]
        grants += [(p, (READ_FILE | WRITE_FILE | TRUNCATE) & fs & FILE_RIGHTS) for p in writable_files]
        for path, rights in grants:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                rule = _PathBeneathAttr(rights, fd)
                _check(libc.syscall(ctypes.c_long(_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                                    ctypes.byref(rule), ctypes.c_uint32(0)), f"add_rule {path}")
            finally:
                os.close(fd)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(libc.syscall(ctypes.c_long(_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(ruleset)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def can_forbid_sockets() -> bool:
    """Whether `forbid_sockets` knows this architecture."""
    return platform.system() == "Linux" and platform.machine() in _SOCKET_SYSCALL


def forbid_sockets() -> bool:
    """Make socket(2) fail with EACCES for the calling thread and all it later starts; False if the arch is unknown.

    A seccomp filter: a system call of another architecture (or x86_64's x32
    numbers) kills the process; socket(2), and io_uring_setup(2) (io_uring
    makes sockets of its own), fail with EACCES; everything else is allowed.
    socketpair(2) stays (asyncio's event loop needs it): it makes two connected
    ends and reaches nothing. So no UDP, TCP, netlink or Unix socket to
    anything outside. Needs no_new_privs set (`restrict` sets it).
    """
    if not can_forbid_sockets():
        return False
    arch, socket_nr = _SOCKET_SYSCALL[platform.machine()]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    program = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, 6, arch),  # another architecture: to the kill
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, 4, 0, 0x40000000),  # x32: to the kill
        (jeq, 2, 0, socket_nr),  # socket(2): to EACCES
        (jeq, 1, 0, _IO_URING_SETUP),  # io_uring_setup(2): to EACCES
        (ret, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
        (ret, 0, 0, 0x00050000 | 13),  # SECCOMP_RET_ERRNO | EACCES
        (ret, 0, 0, 0x80000000),  # SECCOMP_RET_KILL_PROCESS
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*insn) for insn in program])
    fprog = _SockFprog(len(program), filters)
    _check(_libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")
    return True
