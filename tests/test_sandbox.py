"""The sandbox: isolation from network and file system, limits on time, memory and output.

What is kernel-enforced depends on the host (see rlpost/sandbox.py). Tests of a kernel layer
skip, saying why, where the host lacks it; the always-on guarantees are tested unconditionally.
"""
import os
import socket
import time

import pytest

from rlpost.sandbox import run_python, sandbox_capabilities

CAPS = sandbox_capabilities()
FS_ISOLATED = CAPS["landlock"] > 0 or CAPS["drop_uid"]
NET_KERNEL = CAPS["netns"] or CAPS["landlock"] >= 4


def test_runs_in_fresh_temp_dir_that_is_removed():
    res = run_python("import os, sys\nprint(os.getcwd()); print(os.environ['HOME']); print(os.environ['TMPDIR'])\n"
                     "open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
    assert res.ok, res.stderr
    cwd, home, tmp, content = res.stdout.split()
    assert cwd == home == tmp and os.path.basename(cwd).startswith("rlpost-sbx-") and content == "ok"
    assert cwd != os.getcwd() and not os.path.exists(cwd)   # deleted afterwards


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    res = run_python("import os; print(sorted(os.environ))")
    assert "HF_TOKEN" not in res.stdout and "PROXY" not in res.stdout.upper() and "hf_secret" not in res.stdout


def test_exceptions_and_exit_codes():
    res = run_python("raise ValueError('boom')")
    assert res.returncode == 1 and "ValueError: boom" in res.stderr and 'File "main.py"' in res.stderr
    assert run_python("import sys; sys.exit(3)").returncode == 3


def test_network_refused_loopback_and_dns():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    code = f"""
import socket
for target in [("127.0.0.1", {port}), ("example.com", 80)]:
    try:
        socket.create_connection(target, timeout=2)
        print("CONNECTED", target)
    except OSError as err:
        print("refused", type(err).__name__)
try:
    socket.getaddrinfo("example.com", 80)
    print("RESOLVED")
except OSError:
    print("no dns")
"""
    res = run_python(code)
    assert res.stdout.split("\n")[:3] == ["refused PermissionError", "refused PermissionError", "no dns"], res
    # raw syscalls through ctypes get past the socket monkeypatch; only a kernel layer stops them
    raw = f"""
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)
addr = struct.pack("=H", 2) + struct.pack("!H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
rc = libc.connect(fd, addr, 16)
print("raw", rc, os.strerror(ctypes.get_errno()))
"""
    res = run_python(raw)
    if NET_KERNEL:
        assert res.stdout.startswith("raw -1"), res
    with pytest.raises(socket.timeout):
        server.accept()   # nothing ever reached the listener
    server.close()
    if not NET_KERNEL:
        pytest.skip("no network namespace or Landlock here: only the socket monkeypatch blocks the network")


def test_file_system_escape_is_blocked(tmp_path):
    if not FS_ISOLATED:
        pytest.skip("non-root without Landlock: the child can write wherever the trainer can; "
                    "only cwd/HOME isolation holds here")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    target = tmp_path / "escape.txt"
    code = f"""
import os
for attempt in ("write", "symlink", "read"):
    try:
        if attempt == "write":
            open({str(target)!r}, "w").write("x")
        elif attempt == "symlink":
            os.symlink({str(target)!r}, "link")
            open("link", "w").write("x")
        else:
            print(open({str(secret)!r}).read())
        print(attempt, "ALLOWED")
    except OSError as err:
        print(attempt, "blocked", type(err).__name__)
"""
    res = run_python(code)
    assert "write blocked" in res.stdout and "symlink blocked" in res.stdout, res
    assert not target.exists()
    if CAPS["landlock"]:
        assert "read blocked" in res.stdout and "s3cret" not in res.stdout
    for outside in ("/tmp", os.path.expanduser("~")):
        probe = os.path.join(outside, f"rlpost-escape-{os.getpid()}")
        res = run_python(f"open({probe!r}, 'w').write('x')")
        if CAPS["landlock"]:   # drop_uid alone cannot stop writes to world-writable /tmp
            assert res.returncode != 0 and not os.path.exists(probe)
        if os.path.exists(probe):
            os.remove(probe)


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_runaway_code_is_killed_within_the_timeout(code):
    start = time.monotonic()
    res = run_python(code, timeout_s=1)
    assert res.timed_out and res.killed_reason == "timeout"
    assert time.monotonic() - start < 3


def test_background_grandchild_is_killed_and_does_not_hold_the_pipes():
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(30)\nelse:\n    print('parent done')"
    start = time.monotonic()
    res = run_python(code, timeout_s=5)
    assert res.stdout.strip() == "parent done" and time.monotonic() - start < 3, res


def test_allocating_2gb_fails():
    res = run_python("x = bytearray(2 * 1024 ** 3)\nprint('ALLOCATED')", memory_mb=256)
    assert res.returncode != 0 and "MemoryError" in res.stderr and "ALLOCATED" not in res.stdout


def test_output_is_truncated():
    res = run_python("print('x' * 100000)\nimport sys; sys.stderr.write('e' * 5000)", max_output_bytes=1000)
    assert len(res.stdout) == 1000 and len(res.stderr) == 1000 and res.truncated and res.returncode == 0


def test_site_packages_are_not_importable():
    res = run_python("import torch")
    assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr


def test_closing_the_pipes_does_not_escape_the_timeout():
    start = time.monotonic()
    res = run_python("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)", timeout_s=1)
    assert res.timed_out and time.monotonic() - start < 3
