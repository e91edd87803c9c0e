"""Run model-generated Python in a fresh, resource-limited subprocess. Never in the trainer process.

    res = run_python("print(2 ** 10)", timeout_s=5, memory_mb=256)
    res.stdout == "1024\\n", res.returncode == 0, res.timed_out is False

Each call starts ``sys.executable -I -S -c BOOTSTRAP`` (isolated mode, no site-packages, so only
the standard library is importable) in a new session, with a fresh temporary directory as cwd,
HOME and TMPDIR, and a scrubbed environment (PATH/LANG only: no proxies, no tokens). Before any
user code runs, the bootstrap, now the only thread in a fresh interpreter, applies these layers:

==========  ==================================================================  ===============
layer       what it does                                                        where
==========  ==================================================================  ===============
rlimits     RLIMIT_AS (memory_mb), RLIMIT_CPU (timeout+2 s), RLIMIT_FSIZE,      always
            RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE=0
netns       ``unshare(CLONE_NEWNET)`` (or NEWUSER|NEWNET when not root): an     kernel allows it
            empty network namespace whose loopback is down. Nothing is
            reachable, not even 127.0.0.1
drop_uid    when the trainer runs as root: switch to uid/gid 65534 (nobody),    euid 0 only
            so root-owned files and 0700 directories are out of reach;
            otherwise (still uid 0) all capabilities are dropped (capset):
            no kill/ptrace/DAC override/mount/net admin
landlock    Landlock LSM: writes only beneath the temp dir, reads only of the   Linux >= 5.13
            interpreter's stdlib, /usr, /lib*, /bin; TCP bind/connect denied    with Landlock
            (ABI >= 4); no signals or abstract unix sockets outside (ABI >= 6)
socket      ``socket.socket``/``create_connection``/``getaddrinfo`` replaced by  always
            functions that raise PermissionError (best effort; ctypes can
            bypass it, the kernel layers above cannot be bypassed)
==========  ==================================================================  ===============

The optional layers are probed once per process (:func:`sandbox_capabilities`): a layer that the
host refuses, or that breaks the interpreter (e.g. ``drop_uid`` when Python lives under a 0700
home directory), is switched off silently and reported in ``SandboxResult.layers``.

Guarantees, honestly stated:

* Always: a separate process; address space, CPU time, file size and open files are capped; wall-clock timeout kills the whole process group (SIGKILL); stdout/stderr are capped at
  ``max_output_bytes`` each; the temp dir is deleted afterwards; the environment carries no secrets.
* Network isolation is kernel-enforced only with ``netns`` or ``landlock`` (ABI >= 4, TCP only);
  otherwise only the monkeypatch stands in the way, and ctypes code can get around it.
* File-system isolation (no writes outside the temp dir, no reads of the trainer's files) is
  kernel-enforced only with ``landlock``. ``drop_uid`` alone still allows writing to
  world-writable places such as /tmp. With neither (non-root on a kernel without Landlock), the
  code runs with the trainer's uid and can read and write whatever the trainer can: use a
  container or nsjail for untrusted code at scale.
* Not contained: a grandchild that calls ``setsid()`` leaves the process group and survives the
  kill. RLIMIT_NPROC limits forks only for a non-root uid (the kernel exempts uid 0 even without
  capabilities), so a root trainer without ``drop_uid`` relies on the timeout and group kill to
  end fork loops. CPU and memory of concurrent sandboxes add up.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

NOBODY = 65534
_EXTRA_OUTPUT_BYTES = 10_000_000  # read and discard this much past the cap, then kill ("output_limit")

# The bootstrap runs inside the child before the user's code. It must only use the stdlib.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
status = {}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long

def _setlimit(res, value):
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    try:
        resource.setrlimit(res, (value, value))
        return True
    except (ValueError, OSError):
        return False

lim = cfg["limits"]
status["rlimits"] = all([
    _setlimit(resource.RLIMIT_AS, lim["memory_bytes"]),
    _setlimit(resource.RLIMIT_CPU, lim["cpu_s"]),
    _setlimit(resource.RLIMIT_FSIZE, lim["file_bytes"]),
    _setlimit(resource.RLIMIT_NOFILE, lim["open_files"]),
    _setlimit(resource.RLIMIT_NPROC, lim["processes"]),
    _setlimit(resource.RLIMIT_CORE, 0),
])
try:
    libc.prctl(L(1), L(9), L(0), L(0), L(0))       # PR_SET_PDEATHSIG = SIGKILL
except Exception:
    pass

status["netns"] = False
if cfg["netns"]:
    uid, gid = os.getuid(), os.getgid()
    flags = 0x40000000 if os.geteuid() == 0 else 0x40000000 | 0x10000000   # NEWNET (| NEWUSER)
    if libc.unshare(L(flags)) == 0:
        status["netns"] = True
        if flags & 0x10000000:   # keep our own uid inside the new user namespace
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                                   ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as fh:
                        fh.write(text)
            except OSError:
                pass

status["drop_uid"] = status["drop_caps"] = False
if cfg["drop_uid"] and os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    status["drop_uid"] = True
elif os.geteuid() == 0:
    # still uid 0: drop every capability, so RLIMIT_NPROC applies and root's privileges
    # (DAC override, kill, ptrace, net admin, mount) are gone
    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    caps = (CapData * 2)()
    status["drop_caps"] = libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), caps) == 0

def _landlock(workdir, read_paths):
    abi = libc.syscall(L(444), None, L(0), L(1))          # landlock_create_ruleset(VERSION)
    if abi < 1:
        return 0
    fs = (1 << 13) - 1                                    # EXECUTE .. MAKE_SYM
    fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    file_rights = 1 | 2 | 4 | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)

    class Attr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = Attr(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)   # net: BIND|CONNECT TCP; scope: unix|signal
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    rs = libc.syscall(L(444), ctypes.byref(attr), L(size), L(0))
    if rs < 0:
        return 0

    def allow(path, rights):
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(path):
                rights &= file_rights
            rule = Beneath(rights & fs, pfd)
            libc.syscall(L(445), L(rs), L(1), ctypes.byref(rule), L(0))   # PATH_BENEATH
        finally:
            os.close(pfd)

    for p in read_paths:
        allow(p, 1 | 4 | 8)                               # EXECUTE | READ_FILE | READ_DIR
    allow("/dev/null", 2 | 4)
    allow(workdir, fs)
    if libc.prctl(L(38), L(1), L(0), L(0), L(0)) != 0:    # PR_SET_NO_NEW_PRIVS
        return 0
    if libc.syscall(L(446), L(rs), L(0)) != 0:            # landlock_restrict_self
        return 0
    return abi

status["landlock"] = 0
if cfg["landlock"]:
    stdlib = os.path.dirname(os.__file__)
    reads = [sys.base_prefix, sys.base_exec_prefix, stdlib, os.path.dirname(os.path.realpath(sys.executable)),
             "/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/localtime"]
    status["landlock"] = _landlock(os.getcwd(), reads)

import socket as _socket_mod
import _socket

def _no_network(*args, **kwargs):
    raise PermissionError(13, "network access is disabled in the sandbox")

class _NoSocket(_socket_mod.socket):
    def __init__(self, *args, **kwargs):
        _no_network()

for _mod in (_socket_mod, _socket):
    _mod.socket = _NoSocket
    _mod.getaddrinfo = _no_network
for _name in ("create_connection", "create_server", "gethostbyname", "gethostbyname_ex", "socketpair", "fromfd"):
    setattr(_socket_mod, _name, _no_network)
status["socket"] = True

os.write(cfg["status_fd"], json.dumps(status).encode())
os.close(cfg["status_fd"])

with open(cfg["main"], encoding="utf-8") as fh:
    _src = fh.read()
_g = {"__name__": "__main__", "__file__": cfg["main"], "__builtins__": __builtins__}
del cfg, status, fh, libc
try:
    exec(compile(_src, "main.py", "exec"), _g)
except SystemExit:
    raise
except BaseException as _e:
    import traceback
    traceback.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    sys.exit(1)
'''


@dataclass
class SandboxResult:
    """What one sandboxed run produced.

    stdout / stderr:  decoded output, each cut to ``max_output_bytes``
    returncode:       the exit status; negative = killed by that signal
    timed_out:        the wall-clock limit was hit and the process group was killed
    killed_reason:    None, "timeout", "output_limit", "cpu_limit" or "signal:<NAME>"
    truncated:        stdout or stderr was cut
    layers:           which isolation layers were in force (see the module docstring)
    """
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    killed_reason: str | None = None
    truncated: bool = False
    duration_s: float = 0.0
    layers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


_CAPS: dict | None = None
_CAPS_LOCK = threading.Lock()
_PROBE_CODE = "import json, math, re, fractions, decimal, statistics, itertools, collections\nprint('ok')\n"


def sandbox_capabilities() -> dict:
    """Which optional layers work here: ``{"netns", "drop_uid", "drop_caps": bool, "landlock": int ABI}``.

    Probed once per process by running a small stdlib-importing program with every layer on,
    then switching off whichever layer broke it (a layer the kernel refuses just reports False).
    """
    global _CAPS
    with _CAPS_LOCK:
        if _CAPS is None:
            want = {"netns": True, "drop_uid": os.geteuid() == 0, "landlock": True}
            for drop in (None, "drop_uid", "landlock", "netns"):
                if drop:
                    want[drop] = False
                res = _run(_PROBE_CODE, 10.0, 256, 10_000, 16, 16, 64, want)
                if res.ok and res.stdout.strip() == "ok":
                    break
            _CAPS = {"netns": bool(res.layers.get("netns")), "drop_uid": bool(res.layers.get("drop_uid")),
                     "drop_caps": bool(res.layers.get("drop_caps")), "landlock": int(res.layers.get("landlock") or 0)}
        return dict(_CAPS)


def run_python(code: str, timeout_s: float = 5, memory_mb: int = 256, max_output_bytes: int = 10000, *,
               max_file_mb: int = 16, max_processes: int = 16, max_open_files: int = 64) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a sandboxed subprocess and return its output.

    Args:
        code: Python source (stdlib only; site-packages are not importable).
        timeout_s: wall-clock limit; the process group is SIGKILLed when it passes. CPU time is
            capped at ``int(timeout_s) + 2`` s as a second line.
        memory_mb: address-space limit (RLIMIT_AS); allocations beyond it raise MemoryError.
        max_output_bytes: stdout and stderr are each cut to this many bytes.
        max_file_mb / max_processes / max_open_files: RLIMIT_FSIZE / RLIMIT_NPROC / RLIMIT_NOFILE.
    """
    caps = sandbox_capabilities()
    want = {"netns": caps["netns"], "drop_uid": caps["drop_uid"], "landlock": caps["landlock"] > 0}
    return _run(code, float(timeout_s), int(memory_mb), int(max_output_bytes), int(max_file_mb),
                int(max_processes), int(max_open_files), want)


def _scrubbed_env(workdir: str) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(code, timeout_s, memory_mb, max_output_bytes, max_file_mb, max_processes, max_open_files, want) -> SandboxResult:
    workdir = tempfile.mkdtemp(prefix="rlpost-sbx-")
    status_r, status_w = os.pipe()
    start = time.monotonic()
    try:
        main = os.path.join(workdir, "main.py")
        with open(main, "w", encoding="utf-8") as fh:
            fh.write(code)
        if want["drop_uid"] and os.geteuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(main, NOBODY, NOBODY)
        cfg = {"limits": {"memory_bytes": memory_mb * 2**20, "cpu_s": int(timeout_s) + 2,
                          "file_bytes": max_file_mb * 2**20, "open_files": max_open_files,
                          "processes": max_processes},
               "netns": want["netns"], "drop_uid": want["drop_uid"], "landlock": want["landlock"],
               "status_fd": status_w, "main": main}
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, env=_scrubbed_env(workdir), start_new_session=True,
                                pass_fds=(status_w,), close_fds=True)
        os.close(status_w)
        status_w = -1
        out, err, killed = _collect(proc, start + timeout_s, max_output_bytes)
        try:  # the child may have closed its pipes and kept running
            returncode = proc.wait(timeout=max(0.0, start + timeout_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = "timeout"
            _kill_group(proc.pid)
            returncode = proc.wait()
        _kill_group(proc.pid)  # descendants still in the group
        layers = _read_status(status_r)
    finally:
        if status_w >= 0:
            os.close(status_w)
        os.close(status_r)
        shutil.rmtree(workdir, onerror=_force_remove)
    if killed is None and returncode < 0:
        sig = -returncode
        killed = "cpu_limit" if sig == signal.SIGXCPU else f"signal:{signal.Signals(sig).name}"
    truncated = len(out) > max_output_bytes or len(err) > max_output_bytes
    return SandboxResult(stdout=out[:max_output_bytes].decode("utf-8", "replace"),
                         stderr=err[:max_output_bytes].decode("utf-8", "replace"),
                         returncode=returncode, timed_out=killed == "timeout", killed_reason=killed,
                         truncated=truncated, duration_s=time.monotonic() - start, layers=layers)


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, str | None]:
    """Read stdout/stderr until EOF or the deadline; keep ``cap + 1`` bytes of each (to detect a cut)."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    seen = {proc.stdout: 0, proc.stderr: 0}
    killed = None
    with selectors.DefaultSelector() as sel:
        for f in bufs:
            sel.register(f, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed = "timeout"
                break
            for key, _ in sel.select(timeout=min(remaining, 0.25)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                seen[key.fileobj] += len(chunk)
                buf = bufs[key.fileobj]
                if len(buf) <= cap:
                    buf += chunk[: cap + 1 - len(buf)]
            if max(seen.values()) > cap + _EXTRA_OUTPUT_BYTES:
                killed = "output_limit"
                break
            if proc.poll() is not None:
                _kill_group(proc.pid)  # a background grandchild must not hold the pipes open
    if killed:
        _kill_group(proc.pid)
    proc.stdout.close()
    proc.stderr.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), killed


def _read_status(fd: int) -> dict:
    try:
        os.set_blocking(fd, False)
        data = os.read(fd, 65536)
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}


def _force_remove(func, path, exc_info):
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass
