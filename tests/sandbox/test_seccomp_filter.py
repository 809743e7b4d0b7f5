"""The seccomp filter on its own, in a forked child: sockets refused (EACCES), and with
``allow_unix_sockets`` (hosts with NVIDIA devices) only AF_UNIX let through."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from sandbox import seccomp, syscalls

pytestmark = pytest.mark.skipif(not seccomp.supported(), reason="seccomp filter not supported here")


def _in_child(allow_unix: bool) -> dict[str, int]:
    """errno (0 = created) of socket() per family after installing the filter in a child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        codes = []
        try:
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            seccomp.install(allow_unix_sockets=allow_unix)
            for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
                try:
                    socket.socket(family, socket.SOCK_STREAM).close()
                    codes.append(0)
                except OSError as exc:
                    codes.append(exc.errno or -1)
        finally:
            os.write(write, ",".join(map(str, codes)).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    unix, inet, inet6 = (int(v) for v in text.split(","))
    return {"unix": unix, "inet": inet, "inet6": inet6}


def test_every_socket_family_is_refused_by_default() -> None:
    assert _in_child(False) == {"unix": errno.EACCES, "inet": errno.EACCES, "inet6": errno.EACCES}


def test_gpu_variant_lets_only_unix_sockets_through() -> None:
    assert _in_child(True) == {"unix": 0, "inet": errno.EACCES, "inet6": errno.EACCES}
