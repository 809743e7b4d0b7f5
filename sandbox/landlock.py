"""Landlock (Linux >= 5.13, unprivileged) rules for the sandbox child.

Landlock lets a process restrict itself, irrevocably, whatever its uid. The harness uses it
as a layer that works with or without namespaces:
- file system: read (and execute) only the directories the driver lists (system directories,
  the Python installation, the project's package directories), write only the private working
  directory (and the private ``/tmp`` tmpfs when a mount namespace provides one) and the
  harmless device nodes; everything else, including the campaign database and any other
  file of the user, is neither readable nor writable;
- network (ABI >= 4): no TCP bind or connect at all;
- scopes (ABI >= 6): no signals to processes outside the sandbox, no abstract Unix sockets
  outside it.
What the running kernel supports is reported (``Landlock.abi``); rights the kernel does not
know are simply not restricted (documented in docs/SECURITY.md).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable

from sandbox import syscalls

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | MAKE_FIFO
         | MAKE_SOCK | REFER | TRUNCATE)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The Landlock ABI the kernel offers (0: unavailable)."""
    if not syscalls.AVAILABLE:
        return 0
    try:
        return syscalls.syscall(syscalls.SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                                ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(read_paths: Iterable[str], write_paths: Iterable[str],
             device_paths: Iterable[str], list_paths: Iterable[str] = ()) -> dict[str, object]:
    """Restrict this thread (and its future threads and children) for good.

    ``read_paths`` become readable and executable, ``write_paths`` fully writable,
    ``device_paths`` readable and writable as files, ``list_paths`` listable (names only,
    no file contents). Paths that do not exist are skipped.
    Returns what was enforced; raises OSError if Landlock is unavailable or refuses.
    """
    abi = abi_version()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available on this kernel")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset = syscalls.syscall(syscalls.SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                               ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        rules = [(p, READ) for p in read_paths]
        rules += [(p, READ | WRITE) for p in write_paths]
        rules += [(p, READ_FILE | WRITE_FILE | IOCTL_DEV) for p in device_paths]
        rules += [(p, READ_DIR) for p in list_paths]  # names only: files stay unreadable
        added: list[str] = []
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                is_dir = os.path.isdir(f"/proc/self/fd/{fd}") or os.path.isdir(path)
                allowed = (rights if is_dir else rights & _FILE_RIGHTS) & handled
                rule = _PathBeneathAttr(allowed, fd)
                syscalls.syscall(syscalls.SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                                 ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                 ctypes.c_uint32(0))
                added.append(path)
            finally:
                os.close(fd)
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        syscalls.syscall(syscalls.SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset),
                         ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return {"abi": abi, "fs": True, "tcp": abi >= 4, "signals": abi >= 6, "rules": len(added)}
