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
sockets, file metadata (chmod, chown, utime, xattrs) and the kernel keyring.
`forbid_syscalls` closes the sockets (no socket(2) at all) and the keyring
with a seccomp filter that also fails every syscall a scored program never
needs (NEVER_NEEDED); `join_fresh_session_keyring` drops the keys a process
inherited.

Usage (in a process that is about to run untrusted code):
    from common.sandbox import landlock
    abi = landlock.abi_version()   # 0: no Landlock here
    landlock.restrict(abi, writable=[workdir], readable=["/usr", "/etc"], writable_files=["/dev/null"])
    landlock.join_fresh_session_keyring()
    landlock.forbid_syscalls(sockets=True)
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
# AUDIT_ARCH_* and the column of the syscall numbers below, for the architectures forbid_syscalls knows.
_ARCH = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}
# Syscalls a program scored for correctness never needs: (x86_64, aarch64) numbers.
NEVER_NEEDED = {
    "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "syslog": (103, 116),
    "acct": (163, 89), "quotactl": (179, 60), "settimeofday": (164, 170), "clock_settime": (227, 112),
    "adjtimex": (159, 171), "clock_adjtime": (305, 266), "sethostname": (170, 161),
    "setdomainname": (171, 162), "fanotify_init": (300, 262),
}
_SOCKET, _CLONE, _CLONE3 = (41, 198), (56, 220), 435
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_CLONE_NEW_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
_KEYCTL_JOIN_SESSION_KEYRING = 1
_EPERM, _EACCES, _ENOSYS = 1, 13, 38
# BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_JMP|JSET|K, BPF_RET|K
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ERRNO, _SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000

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


def can_filter_syscalls() -> bool:
    """Whether `forbid_syscalls` knows this architecture."""
    return platform.system() == "Linux" and platform.machine() in _ARCH


def _deny(nr: int, errno: int) -> list[tuple[int, int, int, int]]:
    """BPF: when the loaded syscall number is `nr`, fail it with `errno`; else go on."""
    return [(_JEQ, 0, 1, nr), (_RET, 0, 0, _SECCOMP_RET_ERRNO | errno)]


def _filter_program(sockets: bool) -> list[tuple[int, int, int, int]]:
    """The seccomp BPF program `forbid_syscalls` installs (see there)."""
    arch, column = _ARCH[platform.machine()]
    program = [
        (_LD, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, arch),
        (_RET, 0, 0, _SECCOMP_RET_KILL_PROCESS),  # another architecture's numbering
        (_LD, 0, 0, 0),  # seccomp_data.nr
        (_JGE, 0, 1, 0x40000000),
        (_RET, 0, 0, _SECCOMP_RET_KILL_PROCESS),  # x86_64's x32 numbering
    ]
    if sockets:
        program += _deny(_SOCKET[column], _EACCES)
    for numbers in NEVER_NEEDED.values():
        program += _deny(numbers[column], _EPERM)
    # glibc falls back from clone3 (whose flags sit in memory, out of a filter's reach) to clone on ENOSYS.
    program += _deny(_CLONE3, _ENOSYS)
    program += [
        (_JEQ, 0, 3, _CLONE[column]),
        (_LD, 0, 0, 16),  # seccomp_data.args[0], low half: clone's flags
        (_JSET, 0, 1, _CLONE_NEW_NAMESPACES),
        (_RET, 0, 0, _SECCOMP_RET_ERRNO | _EPERM),
        (_RET, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    return program


def forbid_syscalls(sockets: bool) -> bool:
    """Fail, for the calling thread and all it later starts, the syscalls no scored program needs.

    A seccomp filter (it sets no_new_privs, which a filter needs without
    CAP_SYS_ADMIN): every syscall in NEVER_NEEDED fails with EPERM (the
    kernel keyring, bpf, perf, userfaultfd, mounts and namespaces, modules,
    kexec, ptrace and process_vm_*, io_uring, clocks, reboot...), so does
    clone(2) with a CLONE_NEW* flag, and clone3(2) with ENOSYS (glibc then
    uses clone). sockets: socket(2) fails with EACCES too; socketpair(2)
    stays (asyncio's event loop needs it): it makes two connected ends and
    reaches nothing, so no UDP, TCP, netlink or Unix socket to anything
    outside. A syscall of another architecture (or x86_64's x32 numbers)
    kills the process. Returns False, installing nothing, on an architecture
    this module does not know.
    """
    if not can_filter_syscalls():
        return False
    program = _filter_program(sockets)
    filters = (_SockFilter * len(program))(*[_SockFilter(*insn) for insn in program])
    fprog = _SockFprog(len(program), filters)
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")
    return True


def join_fresh_session_keyring() -> bool:
    """Give the calling process a new, empty session keyring; False where the kernel has no keyrings.

    Children inherit their parent's session keyring, and possessing a
    keyring grants its possessor permissions whatever the uid: without this,
    a program could read the caller's keys (call it before forbid_syscalls,
    which then stops keyctl altogether).
    """
    if not can_filter_syscalls():
        return False
    libc = _libc()
    column = _ARCH[platform.machine()][1]
    if libc.syscall(ctypes.c_long(NEVER_NEEDED["keyctl"][column]), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                    None) >= 0:
        return True
    errno = ctypes.get_errno()
    if errno == _ENOSYS:
        return False
    raise OSError(errno, f"keyctl(KEYCTL_JOIN_SESSION_KEYRING): {os.strerror(errno)}")
