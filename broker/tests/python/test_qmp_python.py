"""bulkhead's QMP as QEMU's own Python client library (qemu.qmp) and
qmp-shell see it.

Run (after building bulkhead and its workers, e.g. `cargo build -p broker
-p vcpu-proc -p block-proc`):

    python3 -m venv .venv && .venv/bin/pip install qemu.qmp pytest
    BULKHEAD_BIN=target/debug/bulkhead .venv/bin/pytest broker/tests/python

BULKHEAD_BIN defaults to target/debug/bulkhead in the repository; the
worker executables must sit beside it. Needs /dev/kvm.
"""

import asyncio
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.protocol import ConnectError

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = pathlib.Path(os.environ.get("BULKHEAD_BIN", REPO / "target" / "debug" / "bulkhead"))


@pytest.fixture
def bulkhead():
    """Starts bulkhead on a private QMP socket; yields the socket path."""
    assert os.path.exists("/dev/kvm"), "these tests need /dev/kvm"
    assert BIN.exists(), f"{BIN} not built (set BULKHEAD_BIN)"
    tmp = tempfile.mkdtemp(prefix="bulkhead-py-")
    sock = os.path.join(tmp, "q.sock")
    proc = subprocess.Popen(
        [str(BIN), "-qmp", f"unix:{sock},server=on,wait=off", "-serial", "null"],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert proc.poll() is None, f"bulkhead exited: {proc.returncode}"
        assert time.monotonic() < deadline, "QMP socket never appeared"
        time.sleep(0.01)
    yield sock
    proc.kill()
    proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def connected(sock):
    # The socket's path exists from bind(2), a moment before listen(2)
    # (Rust's UnixListener::bind does both): a connect in between is
    # refused, so a refusal is retried for a while, as libvirt does.
    deadline = time.monotonic() + 10
    while True:
        client = QMPClient("bulkhead-test")
        try:
            await client.connect(sock)
            return client
        except ConnectError as e:
            if not isinstance(e.exc, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_qmpclient_accepts_greeting_and_negotiates(bulkhead):
    async def go():
        client = await connected(bulkhead)
        greeting = client.greeting
        await client.disconnect()
        return greeting

    greeting = run(go())
    version = greeting.QMP.version
    assert version["qemu"]["major"] == 10
    assert version["package"].startswith("bulkhead ")
    assert list(greeting.QMP.capabilities) == ["oob"]


def test_query_version_status_and_commands_execute(bulkhead):
    async def go():
        client = await connected(bulkhead)
        out = (
            await client.execute("query-version"),
            await client.execute("query-status"),
            await client.execute("query-commands"),
        )
        await client.disconnect()
        return out

    version, status, commands = run(go())
    assert version["qemu"]["major"] == 10
    assert status == {"running": True, "status": "running"}
    names = {c["name"] for c in commands}
    assert {"qmp_capabilities", "query-status", "stop", "cont", "quit"} <= names


def test_errors_surface_as_execute_error_with_qemu_class(bulkhead):
    async def go():
        client = await connected(bulkhead)
        errors = []
        for cmd, args in (("no-such-command", None), ("cpu", {"index": "x"})):
            try:
                await client.execute(cmd, args)
            except ExecuteError as e:
                errors.append((e.error_class, e.error.error.desc))
        await client.disconnect()
        return errors

    assert run(go()) == [
        ("CommandNotFound", "The command no-such-command has not been found"),
        ("GenericError", "Invalid parameter type for 'index', expected: integer"),
    ]


def test_stop_and_cont_events_reach_the_event_listener(bulkhead):
    async def go():
        client = await connected(bulkhead)
        listener = EventListener(("STOP", "RESUME"))
        client.register_listener(listener)
        await client.execute("stop")
        stop = await listener.get()
        paused = await client.execute("query-status")
        await client.execute("cont")
        resume = await listener.get()
        client.remove_listener(listener)
        await client.disconnect()
        return stop, paused, resume

    stop, paused, resume = run(go())
    assert stop["event"] == "STOP"
    assert "seconds" in stop["timestamp"]
    assert paused["status"] == "paused"
    assert resume["event"] == "RESUME"


def test_qmp_shell_runs_commands_from_stdin(bulkhead):
    shell = shutil.which("qmp-shell") or str(pathlib.Path(os.sys.executable).parent / "qmp-shell")
    out = subprocess.run(
        [shell, bulkhead],
        input="query-status\nquery-name\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert '"status": "running"' in out.stdout
    assert '"return": {}' in out.stdout


def test_qmp_shell_hmp_mode_runs_info_status_block_stop_cont(bulkhead):
    """`qmp-shell -H`: HMP commands through human-monitor-command, with
    QEMU's HMP texts."""
    shell = shutil.which("qmp-shell") or str(pathlib.Path(os.sys.executable).parent / "qmp-shell")
    out = subprocess.run(
        [shell, "-H", bulkhead],
        input="info status\ninfo block\nstop\ninfo status\ncont\ninfo status\ninfo frob\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    statuses = [l.split("VM status: ")[1].strip() for l in out.stdout.splitlines() if "VM status: " in l]
    assert statuses == ["running", "paused", "running"], out.stdout
    assert "unknown command: 'info frob'" in out.stdout


def test_hmp_info_block_names_the_disk_as_qemu_prints_it(tmp_path):
    """`info block` on a VM with a disk: QEMU's layout (name: file (format),
    Attached to, Cache mode)."""
    img = tmp_path / "d.raw"
    img.write_bytes(b"\0" * (1 << 20))
    sock = str(tmp_path / "q.sock")
    proc = subprocess.Popen(
        [str(BIN), "-qmp", f"unix:{sock},server=on,wait=off", "-serial", "null",
         "-drive", f"file={img},format=raw,if=none,id=d0",
         "-device", "virtio-blk-device,drive=d0,id=vda"],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert proc.poll() is None, f"bulkhead exited: {proc.returncode}"
            assert time.monotonic() < deadline
            time.sleep(0.01)

        async def go():
            c = await connected(sock)
            text = await c.execute("human-monitor-command", {"command-line": "info block"})
            await c.disconnect()
            return text

        text = run(go())
        # QEMU 10 prints "d0 (#block176): ..." (device, then node name);
        # bulkhead's node of `-drive id=d0` is named d0.
        assert text.startswith(f"d0 (d0): {img} (raw)\r\n"), text
        assert "    Attached to:      vda\r\n" in text
        assert "    Cache mode:       writeback\r\n" in text
    finally:
        proc.kill()
        proc.wait()
