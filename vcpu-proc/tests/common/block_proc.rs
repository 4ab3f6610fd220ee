//! A standalone block-proc serving one raw image on a path socket, for
//! the tests that give vcpu-proc a real vhost-user-blk backend, and the
//! image and temporary directory it serves from.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipc_proto::vcpu::{FdSlot, VhostUserDeviceConfig, VhostUserKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::TIMEOUT;

pub use super::block_proc_bin::block_proc_bin;

/// A running standalone block-proc (killed on drop).
pub struct BlockProc(Child);

impl BlockProc {
    /// Serves `image` (raw) as node `disk0` on `sock`.
    pub fn start(image: &Path, sock: &Path) -> Self {
        let _ = std::fs::remove_file(sock);
        let json = format!(
            r#"{{"driver":"raw","node-name":"disk0","file":{{"driver":"file","filename":"{}"}}}}"#,
            image.display()
        );
        let child = Command::new(block_proc_bin())
            .args(["--standalone", "--socket"])
            .arg(sock)
            .arg("--blockdev")
            .arg(json)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        BlockProc(child)
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// Sends `s` (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.0.id() as i32), s).unwrap();
    }
}

impl Drop for BlockProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to `sock`, retrying until block-proc listens.
pub fn connect(sock: &Path) -> UnixStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to {}: {e}",
                    sock.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Disk `disk0` on slot 0, one queue of 128, its socket in fd slot 0.
pub fn disk_config() -> VhostUserDeviceConfig {
    VhostUserDeviceConfig {
        id: "disk0".into(),
        slot: 0,
        kind: VhostUserKind::Block,
        socket: FdSlot(0),
        num_queues: 1,
        queue_size: 128,
        mac: None,
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

/// A fresh temporary directory `bulkhead-NAME-PID`, removed on drop.
pub fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("bulkhead-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Sectors of [`raw_image`].
pub const IMAGE_SECTORS: u64 = 4096;

/// A zeroed raw image `disk.raw` of [`IMAGE_SECTORS`] sectors in `dir`.
pub fn raw_image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(IMAGE_SECTORS * 512)
        .unwrap();
    p
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
