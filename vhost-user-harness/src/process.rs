//! Starting the backends the harness drives: block-proc in standalone mode
//! and qemu-storage-daemon, each killed when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// A backend process, killed on drop.
pub struct Backend {
    child: Option<Child>,
    /// Its vhost-user socket.
    pub socket: PathBuf,
}

impl Backend {
    /// Spawn `cmd` and wait until `socket` exists.
    pub fn spawn(mut cmd: Command, socket: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn()?;
        let b = Backend {
            child: Some(child),
            socket: socket.to_path_buf(),
        };
        let start = Instant::now();
        while !socket.exists() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(HarnessError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(b)
    }

    /// block-proc `--standalone` exporting the last of `blockdevs`.
    pub fn block_proc(
        bin: &Path,
        socket: &Path,
        blockdevs: &[String],
        extra: &[&str],
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("--standalone").arg("--socket").arg(socket);
        for b in blockdevs {
            cmd.arg("--blockdev").arg(b);
        }
        cmd.args(extra);
        Self::spawn(cmd, socket)
    }

    /// qemu-storage-daemon exporting node `node` of `blockdevs` (QEMU
    /// `-blockdev` dotted syntax or JSON) as vhost-user-blk.
    pub fn qsd(
        socket: &Path,
        blockdevs: &[String],
        node: &str,
        num_queues: u16,
        writable: bool,
    ) -> Result<Self> {
        Self::qsd_in(socket, blockdevs, node, num_queues, writable, false)
    }

    /// [`Backend::qsd`], with the export in its own IOThread when
    /// `iothread` is set (QEMU's fast configuration: the IOThread polls
    /// its event sources for up to `poll-max-ns`, 32 us by default,
    /// before it sleeps; the main loop never polls).
    pub fn qsd_in(
        socket: &Path,
        blockdevs: &[String],
        node: &str,
        num_queues: u16,
        writable: bool,
        iothread: bool,
    ) -> Result<Self> {
        let mut cmd = Command::new("qemu-storage-daemon");
        for b in blockdevs {
            cmd.arg("--blockdev").arg(b);
        }
        let mut export = format!(
            "type=vhost-user-blk,id=e,node-name={node},addr.type=unix,addr.path={},writable={},num-queues={num_queues}",
            socket.display(),
            if writable { "on" } else { "off" }
        );
        if iothread {
            cmd.arg("--object").arg("iothread,id=bench-io");
            export.push_str(",iothread=bench-io");
        }
        cmd.arg("--export").arg(export);
        Self::spawn(cmd, socket)
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // A backend killed on purpose leaves its socket path to the one
        // restarted on it; only a running backend's socket is cleaned up.
        if self.child.is_some() {
            self.kill();
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}
