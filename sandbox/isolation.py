"""OS-level isolation of one sandbox child, applied by the child to itself before any
candidate code exists in the process.

Mechanisms, best first (``SpawnConfig.mode``; "auto" picks the first that works):

``namespaces`` (started as root): new mount, PID, network, IPC, UTS and cgroup namespaces;
  the harness forks so that it runs as PID 1 of the new PID namespace (when it exits, the
  kernel kills every process left in it, including ``setsid`` escapees); the mount tree is
  made private and read-only, with private tmpfs on /tmp (the working directory lives there),
  /var/tmp, /dev/shm and /run, a minimal /dev (null, zero, full, random, urandom) and a fresh
  /proc that shows only the sandbox's processes; the network namespace has only a loopback
  interface, left down. The process then drops to a unique unprivileged uid/gid (no
  supplementary groups), which clears every capability, so it cannot signal or ptrace the
  driver, and it cannot write anything root-owned even through a mount left writable.
``userns`` (not root, unprivileged user namespaces allowed): the same namespaces inside a new
  user namespace that maps only the caller's own uid; capabilities are dropped after setup.
  Processes keep the driver's uid on the host, so protection from signals relies on the PID
  namespace (the driver is invisible) and on Landlock's signal scope.
``none`` (no namespaces): a fresh session and process group (set by the driver), a unique uid
  when root, a host working directory, and the layers below; the network barrier is seccomp
  (plus a refusing ``socket`` module), files are guarded by Landlock and the uid.

Layers on top of every mode: ``no_new_privs``; a seccomp filter (``sandbox.seccomp``);
Landlock rules (``sandbox.landlock``); rlimits on address space, CPU seconds, processes, file
size, open files and core size (``apply_limits``, per request, before the candidate is
imported); a scrubbed environment (``scrubbed_environment``, built by the driver).
"""

from __future__ import annotations

import os
import resource
import signal
import stat
import sys
from collections.abc import Iterable, Mapping

from sandbox import landlock, seccomp, syscalls
from sandbox.protocol import IsolationReport, ResolvedLimits, SpawnConfig

GPU_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
# Environment variables a child may inherit (exact names or prefixes); everything else is
# dropped, and secret-looking names are dropped even if they match.
ENV_ALLOW_EXACT = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONHASHSEED",
                             "SOURCE_DATE_EPOCH",
                             # the GPUs a scheduler (Ray) gave this evaluation and how to
                             # number them: without them every child runs on the first GPU
                             *GPU_ENV,
                             # NVLink multicast kept off where the host turns it off
                             "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                             "NVSHMEM_DISABLE_NVLS"})
ENV_ALLOW_PREFIXES = ("LC_",)
ENV_DENY_SUBSTRINGS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE")
ENV_DENY_SUFFIXES = ("_KEY", "_KEYS", "_PASS", "_PAT", "_AUTH")
ENV_DENY_PREFIXES = ("AWS_", "GOOGLE_", "GCLOUD_", "AZURE_", "DISCO_", "OPENAI_", "ANTHROPIC_")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
MARKER_ENV = "ARCHDISCO_SANDBOX_RUN"
# Unique uids are UID_BASE + the host pid of the child's first process: pids are unique
# among live processes, so concurrent children never share a uid.
UID_BASE = 1_600_000_000
# The only files of /etc a child may read (the dynamic loader, time zone, user names):
# not /etc as a whole, where a uid-0 child without namespaces could read /etc/shadow.
ETC_READABLE = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
                "passwd", "group", "nsswitch.conf", "os-release", "mime.types", "alternatives")
# Outside a PID namespace, /proc is readable only for the child itself and these files.
PROC_READABLE = ("cpuinfo", "meminfo", "stat", "sys/vm", "sys/kernel")
SANDBOX_TMP = "/tmp"
SANDBOX_WORKDIR = "/tmp/work"
_DEVICES = ("null", "zero", "full", "random", "urandom")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return (any(s in upper for s in ENV_DENY_SUBSTRINGS) or upper.endswith(ENV_DENY_SUFFIXES)
            or upper.startswith(ENV_DENY_PREFIXES))


def gpu_assignment(source: Mapping[str, str]) -> tuple[str | None, ...]:
    """The GPU variables of ``source`` (``GPU_ENV``): a warm child spawned under others (Ray
    gives each task its GPUs through them) would run on the wrong device."""
    return tuple(source.get(name) for name in GPU_ENV)


def scrubbed_environment(source: Mapping[str, str], *, pythonpath: Iterable[str],
                         torch_threads: int, marker: str) -> dict[str, str]:
    """The whole environment of a child: allowlisted, secret-free, plus what it needs."""
    env = {k: v for k, v in source.items()
           if (k in ENV_ALLOW_EXACT or k.startswith(ENV_ALLOW_PREFIXES)) and not is_secret_name(k)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
        "PYTHONUNBUFFERED": "1",  # a killed child's last prints still reach the log tail
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "HOME": "/nonexistent",  # the harness points HOME at its working directory
        # the child's uid has no passwd entry: getpass.getuser() (torch.compile's cache
        # directories use it) reads these first instead of failing
        "USER": "archdisco-sandbox",
        "LOGNAME": "archdisco-sandbox",
        MARKER_ENV: marker,
    })
    env.update({name: str(torch_threads) for name in THREAD_ENV})
    return env


# ----------------------------------------------------------------------------- namespaces

def enter_namespaces(config: SpawnConfig, notes: list[str]) -> str:
    """Unshare according to ``config.mode``; returns the mode obtained. Must run while the
    process is single-threaded. The caller must then fork for the PID namespace to apply."""
    if config.simulate_unprivileged and os.geteuid() == 0 and config.uid is not None:
        _simulate_unprivileged_start(config, notes)
    if config.mode == "none" or not syscalls.AVAILABLE:
        if config.mode not in ("none", "auto"):
            raise OSError(f"isolation mode {config.mode!r} needs Linux namespaces")
        return "none"
    flags = (syscalls.CLONE_NEWNS | syscalls.CLONE_NEWPID | syscalls.CLONE_NEWNET
             | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWCGROUP)
    if config.mode in ("auto", "namespaces") and os.geteuid() == 0:
        try:
            syscalls.unshare(flags)
            return "namespaces"
        except OSError as exc:
            if config.mode == "namespaces":
                raise
            notes.append(f"root namespaces unavailable ({exc.strerror}); trying a user namespace")
    if config.mode in ("auto", "userns"):
        uid, gid = os.geteuid(), os.getegid()
        try:
            syscalls.unshare(flags | syscalls.CLONE_NEWUSER)
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
            return "userns"
        except OSError as exc:
            if config.mode == "userns":
                raise
            notes.append(f"user namespaces unavailable ({exc.strerror}); no namespaces")
    return "none"


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def _simulate_unprivileged_start(config: SpawnConfig, notes: list[str]) -> None:
    """Test switch: continue as an ordinary user, as on a machine where the driver is not root.

    If the Python installation is unreadable to other users (e.g. under /root), a real
    unprivileged user would have its own readable one; to stand in for that, a private mount
    namespace first makes the installation reachable (nothing else changes), then the process
    drops to the unique uid and takes the unprivileged code path from the start.
    """
    if any(blocked_ancestor(p) for p in config.read_paths):
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        expose_paths(config.read_paths, notes)
        notes.append("simulation: the Python installation was made reachable for the "
                     "unprivileged uid by a preparatory mount namespace")
    assert config.uid is not None
    if config.workdir:  # the driver made it as root; a real user would own it
        os.chown(config.workdir, config.uid, config.uid)
    _become(config.uid)
    # A credential change makes the process non-dumpable (its /proc files root-owned); a
    # process started by an ordinary user is dumpable, and needs it to write its uid_map.
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 1)
    notes.append("simulated unprivileged start: dropped to the unique uid before setup")


def blocked_ancestor(path: str) -> str | None:
    """The highest directory on the way to ``path`` that other users cannot traverse."""
    current = "/"
    for part in os.path.realpath(path).split("/")[1:]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH:
            return current
    return None


def expose_paths(paths: Iterable[str], notes: list[str]) -> None:
    """Make ``paths`` reachable for an unprivileged uid when an ancestor directory is not
    traversable (e.g. a Python installation under /root, or a checkout under a 0700 temporary
    directory): replace that ancestor, in this mount namespace only, by a tmpfs holding
    read-only bind mounts of just those paths (its other contents stay hidden)."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        top = blocked_ancestor(path)
        if top is not None and os.path.exists(path):
            groups.setdefault(top, []).append(os.path.realpath(path))
    for top, subs in sorted(groups.items()):
        subs = sorted(set(subs))
        keep = [p for p in subs if not any(p != q and p.startswith(q + "/") for q in subs)]
        held = _hold(keep)
        _tmpfs(top, 1 << 20, mode="755")
        for path, fd in held:
            _bind_back(path, fd)
        syscalls.mount(None, top, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY | syscalls.MS_NOSUID
                       | syscalls.MS_NODEV, "size=1048576,mode=755")
        notes.append(f"{top} is not traversable by other users: exposed only {', '.join(keep)}")


def _hold(paths: Iterable[str]) -> list[tuple[str, int]]:
    """O_PATH descriptors of ``paths``: they keep reaching the directories after a mount
    covers them, so ``_bind_back`` can mount them again."""
    return [(path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) for path in paths]


def _bind_back(path: str, fd: int) -> None:
    """Bind the directory held by ``fd`` read-only at ``path`` (creating the mount point)."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    syscalls.mount(f"/proc/self/fd/{fd}", path, None, syscalls.MS_BIND | syscalls.MS_REC)
    syscalls.mount(None, path, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
                   | syscalls.MS_NOSUID | syscalls.MS_NODEV)
    os.close(fd)


def _become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


# ----------------------------------------------------------------------------- file system

def _tmpfs(target: str, size: int, mode: str = "1777") -> None:
    syscalls.mount("tmpfs", target, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV,
                   f"size={max(size, 1 << 20)},mode={mode}")


def _readonly_everything(notes: list[str]) -> None:
    try:
        syscalls.mount_setattr_readonly_recursive("/")
        return
    except OSError as exc:
        notes.append(f"mount_setattr unavailable ({exc.strerror}); remounting mount by mount")
    flag_of = {"nosuid": syscalls.MS_NOSUID, "nodev": syscalls.MS_NODEV,
               "noexec": syscalls.MS_NOEXEC, "noatime": syscalls.MS_NOATIME,
               "nodiratime": syscalls.MS_NODIRATIME, "relatime": syscalls.MS_RELATIME}
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        entries = [line.split() for line in fh]
    for fields in entries:
        target = fields[4].encode().decode("unicode_escape")
        flags = sum(flag_of.get(opt, 0) for opt in fields[5].split(","))
        try:
            syscalls.mount(None, target, None,
                           syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY | flags)
        except OSError as exc:
            notes.append(f"could not make {target} read-only ({exc.strerror})")


def setup_filesystem(config: SpawnConfig, report: dict[str, object], notes: list[str],
                     owner: int) -> str:
    """In a fresh mount namespace: private, read-only host tree, private tmpfs scratch
    space, minimal /dev, fresh /proc. Returns the working directory."""
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    # Read paths inside directories that get a private tmpfs below (a project or virtual
    # environment checked out under /tmp, as CI does) would vanish with it: hold them open
    # now and bind them back afterwards.
    held = _hold(_paths_under(config.read_paths, _MASKED_DIRS))
    _readonly_everything(notes)
    report["readonly_root"] = True
    _tmpfs(SANDBOX_TMP, config.tmpfs_bytes)
    report["private_tmp"] = True
    if owner != os.geteuid():
        expose_paths(config.read_paths, notes)
    staging = os.path.join(SANDBOX_TMP, ".host-dev")
    os.mkdir(staging)
    syscalls.mount("/dev", staging, None, syscalls.MS_BIND | syscalls.MS_REC)
    syscalls.mount("tmpfs", "/dev", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                   "size=1048576,mode=755")
    gpus = sorted(n for n in os.listdir(staging) if n.startswith("nvidia")
                  and stat.S_ISCHR(os.stat(os.path.join(staging, n)).st_mode))
    for name in (*_DEVICES, *gpus):  # GPU nodes only when the host has them
        node = f"/dev/{name}"
        with open(node, "w"):
            pass
        syscalls.mount(f"{staging}/{name}", node, None, syscalls.MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm")
    _tmpfs("/dev/shm", 64 << 20)
    syscalls.umount2(staging, syscalls.MNT_DETACH)
    os.rmdir(staging)
    syscalls.mount(None, "/dev", None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
                   | syscalls.MS_NOSUID | syscalls.MS_NOEXEC)
    try:
        syscalls.mount("proc", "/proc", "proc",
                       syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
        report["fresh_proc"] = True
    except OSError as exc:
        notes.append(f"could not mount a fresh /proc ({exc.strerror}); host /proc stays visible")
    for path, size in (("/var/tmp", 64 << 20), ("/run", 1 << 20)):
        if os.path.isdir(path):
            _tmpfs(path, size, mode="755" if path == "/run" else "1777")
    for path, fd in held:
        _bind_back(path, fd)
        notes.append(f"{path} lies under a private tmpfs: bound back read-only")
    os.mkdir(SANDBOX_WORKDIR, 0o700)
    os.chown(SANDBOX_WORKDIR, owner, owner)
    return SANDBOX_WORKDIR


_MASKED_DIRS = (SANDBOX_TMP, "/var/tmp", "/run", "/dev/shm")


def _paths_under(paths: Iterable[str], tops: Iterable[str]) -> list[str]:
    """Existing directories of ``paths`` inside one of ``tops`` (outermost ones only)."""
    found = sorted({os.path.realpath(p) for p in paths
                    if os.path.isdir(p) and any(os.path.realpath(p).startswith(t + "/") for t in tops)})
    return [p for p in found if not any(p != q and p.startswith(q + "/") for q in found)]


def prepare_host_workdir(path: str, owner: int) -> str:
    """Without a mount namespace: the driver-made directory, owned by the child's uid."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"sandbox working directory {path} is not a directory")
    if os.geteuid() == 0:
        os.chown(path, owner, owner)
    os.chmod(path, 0o700)
    return path


# ----------------------------------------------------------------------------- identity, layers

def drop_identity(mode: str, config: SpawnConfig, report: dict[str, object],
                  notes: list[str]) -> None:
    uid = config.uid
    if mode == "none" and os.geteuid() == 0 and any(blocked_ancestor(p) for p in config.read_paths):
        # Without a mount namespace the unique uid could not even read the interpreter:
        # stay uid 0 but without any capability, and only under Landlock.
        if not (config.landlock and landlock.abi_version()):
            raise OSError("the Python installation is unreadable to other users and neither "
                          "namespaces nor Landlock are available: refusing to run as root")
        syscalls.drop_all_capabilities()
        notes.append("uid 0 kept (the interpreter is unreadable to other uids); all "
                     "capabilities dropped, Landlock and seccomp confine it; RLIMIT_NPROC "
                     "does not apply to uid 0")
    elif mode == "namespaces" or (mode == "none" and os.geteuid() == 0):
        if uid is None:
            raise OSError("started as root but no unique uid was assigned")
        _become(uid)
    elif mode == "userns":
        syscalls.drop_all_capabilities()
    report["uid"] = os.getuid()
    report["capabilities_dropped"] = syscalls.AVAILABLE and syscalls.effective_capabilities() == 0


def harden(config: SpawnConfig, workdir: str, private_tmp: bool, report: dict[str, object],
           notes: list[str]) -> None:
    """no_new_privs, parent-death signal, seccomp, Landlock, the socket refusal layer."""
    if syscalls.AVAILABLE:
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        report["no_new_privs"] = True
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    gpus = gpu_devices()
    if gpus:
        notes.append("NVIDIA devices exposed: AF_UNIX sockets allowed and /proc writable as "
                     "file permissions allow (the CUDA driver needs both)")
    if config.seccomp:
        try:
            seccomp.install(allow_unix_sockets=bool(gpus))
            report["seccomp"] = True
        except OSError as exc:
            notes.append(f"seccomp filter not installed ({exc.strerror or exc})")
    report["landlock_abi"] = landlock.abi_version()
    if config.landlock and report["landlock_abi"]:
        writable = [workdir] + ([SANDBOX_TMP, "/var/tmp", "/dev/shm"] if private_tmp else [])
        if gpus:
            # The CUDA driver names its threads (/proc/self/task/<tid>/comm) and cuInit fails
            # with 304 when it cannot. With a fresh /proc (a PID namespace: only the sandbox's
            # own processes are listed) all of /proc is writable as far as file permissions
            # allow, so processes the harness starts (torch.compile's workers) can use the GPU
            # too; otherwise only this process's own task directory.
            writable.append("/proc" if report.get("fresh_proc") else f"/proc/{os.getpid()}/task")
        devices = [f"/dev/{name}" for name in _DEVICES] + gpus
        if report.get("fresh_proc"):  # a /proc that shows only the sandbox's processes
            proc = ["/proc"]
        else:
            proc = [f"/proc/{os.getpid()}", *(f"/proc/{name}" for name in PROC_READABLE)]
        try:
            # Python's import system lists each sys.path directory (a project root whose
            # packages are readable): allow listing the parents of the readable paths.
            parents = sorted({os.path.dirname(p) for p in config.read_paths} - {"/"})
            landlock.restrict([*config.read_paths, *proc], writable, devices, parents)
            report["landlock"] = True
        except OSError as exc:
            notes.append(f"Landlock not enforced ({exc.strerror or exc})")
    if config.socket_layer and not report.get("net_namespace"):
        install_socket_refusal()
        report["socket_layer"] = True
    if syscalls.AVAILABLE:
        # No core dumps, not even through a core_pattern pipe helper; no same-uid ptrace.
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)


def gpu_devices() -> list[str]:
    try:
        return sorted(f"/dev/{n}" for n in os.listdir("/dev") if n.startswith("nvidia"))
    except OSError:
        return []


def install_socket_refusal() -> None:
    """Python-level refusal of new sockets (for hosts without namespaces or seccomp)."""
    import _socket
    import socket as socket_module

    class _Refused(_socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise PermissionError(13, "network access is disabled in the sandbox")

    _socket.socket = _Refused  # type: ignore[misc]
    socket_module.socket = _Refused  # type: ignore[misc,assignment]

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "network access is disabled in the sandbox")

    for name in ("create_connection", "create_server", "fromfd", "getaddrinfo"):
        setattr(socket_module, name, refuse)


def apply_limits(limits: ResolvedLimits) -> None:
    """rlimits for the candidate; only ever lowered, so they hold for every descendant."""
    def lower(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        new_hard = value if hard == resource.RLIM_INFINITY else min(hard, value)
        resource.setrlimit(which, (min(value, new_hard), new_hard))

    usage = resource.getrusage(resource.RUSAGE_SELF)
    used_cpu = int(usage.ru_utime + usage.ru_stime) + 1
    soft_cpu = used_cpu + limits.cpu_seconds
    # SIGXCPU at the soft limit; SIGKILL two seconds later if the signal is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, soft_cpu + 2))
    # CUDA reserves far more address space than it uses, so GPU targets are limited by
    # RLIMIT_DATA (private writable memory) instead of RLIMIT_AS.
    lower(resource.RLIMIT_AS if limits.address_space else resource.RLIMIT_DATA,
          limits.memory_bytes)
    lower(resource.RLIMIT_FSIZE, limits.max_file_bytes)
    lower(resource.RLIMIT_NOFILE, limits.max_open_files)
    lower(resource.RLIMIT_CORE, 0)
    if os.getuid() != 0:  # RLIMIT_NPROC is not enforced for root anyway
        lower(resource.RLIMIT_NPROC, limits.max_processes)
    # Writing past RLIMIT_FSIZE raises EFBIG instead of killing the harness.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def build_report(mode: str, fields: dict[str, object], notes: list[str]) -> IsolationReport:
    data = {k: v for k, v in fields.items() if k in IsolationReport.model_fields}
    return IsolationReport(mode=mode, notes=notes, **data)  # type: ignore[arg-type]


def default_read_paths(project_roots: Iterable[str]) -> list[str]:
    """Directories a child may read (driver side): the system, the Python installation and
    the package directories of the project, but not the project root itself (where the
    campaign database and local files such as ``.env`` usually live)."""
    paths = ["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/sys",
             *(f"/etc/{name}" for name in ETC_READABLE),
             sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))]
    roots = {os.path.realpath(r) for r in project_roots}
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if not real or not os.path.isdir(real):
            continue
        if real in roots or real == os.path.realpath(os.getcwd()):
            continue
        paths.append(real)
    for root in sorted(roots):
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            full = os.path.join(root, name)
            if name.startswith(".") or not os.path.isdir(full):
                continue
            if os.path.exists(os.path.join(full, "__init__.py")):
                paths.append(full)
    return list(dict.fromkeys(p for p in paths if p))
