//! Human monitors (HMP with QEMU's readline): the line editor
//! (`readline.rs`), one session (`console.rs`), and the Unix sockets of
//! `-monitor unix:PATH,server=on,wait=off` / `-mon chardev=ID,
//! mode=readline` (one client at a time, greeted with QEMU's banner and
//! prompt). On stdio the monitor is served by `chardev::mux`.

pub mod console;
pub mod readline;

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cli::HmpSpec;
use crate::machine::Machine;
use console::{banner, Console};

/// Binds every socket human monitor of the configuration and serves it on
/// its own thread; returns the socket paths, to remove at exit.
pub fn serve_sockets(machine: &Arc<Machine>) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for h in &machine.config().hmp {
        let HmpSpec::Unix(path) = h else { continue };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on monitor socket '{}': {e}", path.display()),
            )
        })?;
        paths.push(path.clone());
        let m = machine.clone();
        let p = path.clone();
        std::thread::Builder::new()
            .name("hmp-accept".into())
            .spawn(move || accept_loop(&listener, &m, &p))?;
    }
    Ok(paths)
}

fn accept_loop(listener: &UnixListener, machine: &Arc<Machine>, path: &Path) {
    let mut console = Console::new(machine.clone());
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = session(s, &mut console) {
                    tracing::debug!("monitor client on {} left: {e}", path.display());
                }
            }
            Err(e) => {
                tracing::warn!("monitor socket {}: accept failed: {e}", path.display());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// One client, as QEMU greets a client of a readline socket monitor.
fn session(stream: UnixStream, console: &mut Console) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = stream;
    std::io::Write::write_all(&mut out, banner().as_bytes())?;
    console.show_prompt(&mut out)?;
    let mut buf = [0u8; 256];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => console.input(&buf[..n], &mut out)?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
