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
    assert "<model usable='yes' vendor='unknown'>qemu64</model>" in caps
    assert "<value>virtio</value>" in caps  # disk bus
    assert "<value>memfd</value>" in caps
    assert "<iothreads supported='no'/>" in caps
    assert "<tpm supported='no'/>" in caps
