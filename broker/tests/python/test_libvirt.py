"""libvirt probing bulkhead as an emulator: libvirtd (Debian's
libvirt-daemon + libvirt-daemon-driver-qemu, installed by scripts/setup)
runs in a private mount namespace over a temporary configuration
(`user = "root"`: bulkhead needs root for its sandbox; `security_driver =
"none"`), and `virsh domcapabilities --emulatorbin bulkhead --virttype kvm`
must succeed and show bulkhead's machine, CPU modes, disk and memory
backing. Needs root and /dev/kvm.
"""

import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = pathlib.Path(os.environ.get("BULKHEAD_BIN", REPO / "target" / "debug" / "bulkhead"))

RUN = """set -e
D=$1
mount --bind "$D/etc" /etc/libvirt
for d in run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt; do
  mkdir -p "${d#*:}"; mount --bind "$D/${d%%:*}" "${d#*:}"
done
exec libvirtd --config /etc/libvirt/libvirtd.conf --pid-file "$D/libvirtd.pid"
"""


@pytest.fixture
def libvirtd():
    assert shutil.which("libvirtd") and shutil.which("virsh"), "run scripts/setup (libvirt)"
    assert os.geteuid() == 0, "libvirtd's system instance needs root"
    d = pathlib.Path(tempfile.mkdtemp(prefix="bulkhead-libvirt-"))
    for sub in ["etc", "run", "lib", "cache", "log"]:
        (d / sub).mkdir()
    (d / "etc" / "qemu.conf").write_text(
        'user = "root"\ngroup = "root"\nsecurity_driver = "none"\ndynamic_ownership = 0\n'
        # No virtlogd here: libvirt writes the emulator's output itself.
        'stdio_handler = "file"\n'
    )
    (d / "etc" / "libvirtd.conf").write_text(
        'unix_sock_dir = "/run/libvirt"\nlog_outputs = "1:file:/var/log/libvirt/libvirtd.log"\n'
        'log_filters = "1:qemu"\n'
    )
    (d / "run.sh").write_text(RUN)
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", str(d / "run.sh"), str(d)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock = d / "run" / "libvirt-sock"
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, "libvirtd exited"
        assert time.monotonic() < deadline, "libvirtd never listened"
        time.sleep(0.05)
    yield f"qemu:///system?socket={sock}", d
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(d, ignore_errors=True)


def test_virsh_domcapabilities_probes_bulkhead(libvirtd):
    uri, d = libvirtd
    out = subprocess.run(
        ["virsh", "-c", uri, "domcapabilities", "--emulatorbin", str(BIN), "--virttype", "kvm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (d / "log" / "libvirtd.log").read_text(errors="replace")[-3000:]
    assert out.returncode == 0, out.stderr + log
    caps = out.stdout
    assert f"<path>{BIN}</path>" in caps
    assert "<machine>microvm</machine>" in caps
    assert "<vcpu max='64'/>" in caps
    assert "<mode name='host-passthrough' supported='yes'>" in caps
    # pni is missing under this KVM: bulkhead and QEMU 10 both list it in
    # query-cpu-definitions' unavailable-features, so libvirt says so.
    assert "<model usable='no' vendor='unknown'>qemu64</model>" in caps
    assert "<value>virtio</value>" in caps  # disk bus
    assert "<value>memfd</value>" in caps
    assert "<iothreads supported='no'/>" in caps
    assert "<tpm supported='no'/>" in caps


GUEST = REPO / "target" / "test-guests" / "x86_64-unknown-linux-gnu" / "release" / "hello"

DOMAIN = """<domain type='kvm'>
  <name>bh-test</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='microvm'>hvm</type><kernel>{kernel}</kernel></os>
  <features><acpi/></features>
  <devices>
    <emulator>{emulator}</emulator>
    <memballoon model='none'/>
    <controller type='usb' model='none'/>
    <console type='pty'><target type='serial'/></console>
  </devices>
</domain>
"""


def virsh(uri, *args):
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120)


def read_until(fd, want, timeout=30):
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        assert time.monotonic() < deadline, f"no {want!r} on the console; got {got!r}"
        try:
            got += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.02)
    return got


def test_virsh_create_boots_a_microvm_domain_under_bulkhead(libvirtd):
    uri, d = libvirtd
    assert GUEST.exists(), "build the test guests (cargo build -p vcpu-proc)"
    xml = d / "domain.xml"
    xml.write_text(DOMAIN.format(kernel=GUEST, emulator=BIN))
    out = virsh(uri, "create", str(xml))
    log = (d / "log" / "qemu" / "bh-test.log")
    assert out.returncode == 0, out.stderr + (log.read_text() if log.exists() else "")
    try:
        # libvirt's own command line ran bulkhead (not QEMU).
        assert str(BIN) in log.read_text()
        assert virsh(uri, "domstate", "bh-test").stdout.strip() == "running"
        # The console: libvirt found the pty through query-chardev.
        pty = virsh(uri, "ttyconsole", "bh-test").stdout.strip()
        assert pty.startswith("/dev/pts/"), pty
        fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            read_until(fd, b"Bulkhead test guest")
            os.write(fd, b"ping\r")
            read_until(fd, b"ping\r\n")
        finally:
            os.close(fd)
        assert virsh(uri, "suspend", "bh-test").returncode == 0
        assert virsh(uri, "domstate", "bh-test").stdout.strip() == "paused"
        assert virsh(uri, "resume", "bh-test").returncode == 0
        hmp = virsh(uri, "qemu-monitor-command", "--hmp", "bh-test", "info status")
        assert "VM status: running" in hmp.stdout, hmp.stdout + hmp.stderr
    finally:
        out = virsh(uri, "destroy", "bh-test")
    assert out.returncode == 0, out.stderr
    assert "bh-test" not in virsh(uri, "list", "--all").stdout
