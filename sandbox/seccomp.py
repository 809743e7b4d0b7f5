"""A seccomp-bpf filter for the sandbox child: no sockets, no kernel-attack-surface calls.

Installed by the harness (after ``no_new_privs``, before any candidate code) on x86_64 and
aarch64 Linux. It is a second, namespace-independent network barrier: even where network
namespaces are unavailable, ``socket()`` fails with EACCES for every address family (so no
TCP/UDP to the host or elsewhere, and no connecting to Unix-domain sockets of host daemons).
``socketpair()`` stays allowed (it cannot reach anything outside the process tree).
Where the sandbox exposes NVIDIA devices, ``socket(AF_UNIX, ...)`` is allowed too: the CUDA
driver opens one during ``cuInit`` and fails (CUDA_ERROR_OPERATING_SYSTEM, 304) when refused
(measured on an H100 host). What it can reach stays small: the child's network namespace has
its own abstract socket names (and Landlock's abstract-socket scope applies on ABI >= 6), and
/tmp, /run and /var/tmp are private tmpfs, so no host daemon's socket file is in view there.

Also refused: io_uring (it can open sockets and files without passing through the checks
above), ptrace / process_vm_*, bpf, perf_event_open, userfaultfd, the kernel keyring,
creating or joining namespaces (``unshare``, ``setns``, ``clone`` with namespace flags),
mount-related calls, and ``clone3`` (ENOSYS, so libc falls back to the inspectable ``clone``).
Foreign-ABI calls (x32 on x86_64) are refused; another architecture's calling convention kills
the process.
"""

from __future__ import annotations

import ctypes
import errno

from sandbox import syscalls

_AUDIT_ARCH = {"x86_64": 0xC000003E, "amd64": 0xC000003E, "aarch64": 0xC00000B7,
               "arm64": 0xC00000B7}
# name -> (x86_64 number, aarch64 number); None where the call does not exist.
_SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    "socket": (41, 198),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "clone3": (435, 435),
    "clone": (56, 220),
}
_ERRNO = {"socket": errno.EACCES, "io_uring_setup": errno.ENOSYS,
          "io_uring_enter": errno.ENOSYS, "io_uring_register": errno.ENOSYS,
          "clone3": errno.ENOSYS}

AF_UNIX = 1
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_NS_CLONE_FLAGS = (syscalls.CLONE_NEWNS | syscalls.CLONE_NEWCGROUP | syscalls.CLONE_NEWUTS
                   | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWPID
                   | syscalls.CLONE_NEWNET)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def supported() -> bool:
    return syscalls.AVAILABLE and syscalls.MACHINE in _AUDIT_ARCH


def build_filter(machine: str, allow_unix_sockets: bool = False) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k) tuples for ``machine``. ``allow_unix_sockets``
    lets ``socket(AF_UNIX, ...)`` through (every other family still gets EACCES)."""
    arch = _AUDIT_ARCH[machine]
    column = 0 if arch == 0xC000003E else 1
    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if column == 0:  # x32 ABI calls carry bit 30; refuse them wholesale
        prog += [(_JGE_K, 0, 1, 0x40000000), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    for name, numbers in _SYSCALLS.items():
        number = numbers[column]
        if number is None or name == "clone":
            continue
        action = _RET_ERRNO | _ERRNO.get(name, errno.EPERM)
        if name == "socket" and allow_unix_sockets:
            prog += [
                (_JEQ_K, 0, 4, number),
                (_LD_W_ABS, 0, 0, 16),  # low half of args[0]: the address family
                (_JEQ_K, 0, 1, AF_UNIX),
                (_RET_K, 0, 0, _RET_ALLOW),
                (_RET_K, 0, 0, action),
            ]
            continue
        prog += [(_JEQ_K, 0, 1, number), (_RET_K, 0, 0, action)]
    clone = _SYSCALLS["clone"][column]
    assert clone is not None
    prog += [
        (_JEQ_K, 0, 3, clone),
        (_LD_W_ABS, 0, 0, 16),  # low half of args[0] (clone flags), little-endian
        (_JSET_K, 0, 1, _NS_CLONE_FLAGS),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    return prog


def install(allow_unix_sockets: bool = False) -> None:
    """Install the filter on the calling thread (and everything it later creates).

    Requires ``no_new_privs`` (or CAP_SYS_ADMIN); raises OSError when the kernel refuses.
    """
    if not supported():
        raise OSError(errno.ENOSYS, f"seccomp filter not available on {syscalls.MACHINE}")
    prog = build_filter(syscalls.MACHINE, allow_unix_sockets)
    array = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), array)
    syscalls.prctl(syscalls.PR_SET_SECCOMP, syscalls.SECCOMP_MODE_FILTER,
                   ctypes.c_void_p(ctypes.addressof(fprog)))
