//! Test fixture: starts the built vcpu-proc as the broker would (socketpair
//! control channel, handshake, `CreateVm` with the test VM of
//! [`test_vm`]: /dev/kvm, a sealed memfd and a serial pipe) and collects its
//! replies, events and serial output.

#![allow(dead_code)]

pub mod block_proc;
pub mod block_proc_bin;
pub mod serial_log;
pub mod test_vm;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_proto::vcpu::{FdSlot, SerialConfig, VcpuEvent, VcpuReply, VcpuRequest};
use ipc_proto::{BrokerMsg, Channel, FlatError, WorkerKind, WorkerMsg};
// The paths `test_vm` (shared with the library's tests) reaches vcpu-proc by.
use vcpu_proc::{runstate, vm};

use serial_log::SerialLog;
use test_vm::TestVmBuilder;

/// Generous: the nested KVM of the CI machines is slow.
pub const TIMEOUT: Duration = Duration::from_secs(60);

type BrokerChannel = Channel<BrokerMsg<VcpuRequest>, WorkerMsg<VcpuReply, VcpuEvent>>;

/// A memfd holding `bytes` (a kernel image).
pub fn image_memfd(bytes: &[u8]) -> OwnedFd {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(c"kernel", MFdFlags::MFD_CLOEXEC).unwrap();
    let mut f = File::from(fd);
    std::io::Write::write_all(&mut f, bytes).unwrap();
    OwnedFd::from(f)
}

/// The kernel to boot.
pub enum Kernel {
    /// vcpu-proc's built-in guest.
    Builtin,
    /// A file.
    Path(PathBuf),
    /// An in-memory image.
    Bytes(Vec<u8>),
}

/// VM options.
pub struct Opts {
    pub kernel: Kernel,
    pub initrd: Option<PathBuf>,
    pub cpus: u8,
    pub mem_mib: u64,
    pub cmdline: String,
    pub start_paused: bool,
    pub no_shutdown: bool,
    pub no_reboot: bool,
    pub serial_input: bool,
    /// Serve the serial port on this listening socket instead of the pipe.
    pub serial_listener: Option<std::os::unix::net::UnixListener>,
}

impl Opts {
    /// Defaults for test guest `name`.
    pub fn guest(name: &str) -> Self {
        Opts {
            kernel: Kernel::Path(test_vm::guest_path(name)),
            initrd: None,
            cpus: 1,
            mem_mib: 64,
            cmdline: String::new(),
            start_paused: false,
            no_shutdown: false,
            no_reboot: false,
            serial_input: false,
            serial_listener: None,
        }
    }
}

/// A running vcpu-proc.
pub struct Vmm {
    child: Child,
    channel: Arc<BrokerChannel>,
    replies: Receiver<(u64, Result<VcpuReply, FlatError>)>,
    events: Receiver<VcpuEvent>,
    serial: SerialLog,
    serial_in: Option<File>,
    next_id: u64,
    early: std::collections::HashMap<u64, Result<VcpuReply, FlatError>>,
    pub create_result: Result<VcpuReply, FlatError>,
}

impl Vmm {
    /// Starts vcpu-proc and sends `CreateVm`.
    pub fn start(mut opts: Opts) -> Vmm {
        let (broker_end, worker_end) = UnixStream::pair().unwrap();
        let child_fd = worker_end.as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vcpu-proc"));
        cmd.arg("--control-fd").arg(child_fd.to_string());
        // Sandboxed as under the broker (the tests run as root), so the
        // guests also prove vcpu-proc's seccomp allowlist.
        cmd.args(["--sandbox-uid", "61001"]);
        // SAFETY: the closure only calls fcntl, which is async-signal-safe,
        // on an fd number that is open in the parent at fork time.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(child_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn vcpu-proc");
        drop(worker_end);
        let (channel, hello) = ipc_proto::worker::accept::<VcpuRequest, VcpuReply, VcpuEvent>(
            broker_end,
            WorkerKind::Vcpu,
        )
        .expect("handshake");
        assert_eq!(hello.kind, WorkerKind::Vcpu);
        let channel = Arc::new(channel);
        let (rtx, replies) = mpsc::channel();
        let (etx, events) = mpsc::channel();
        let reader = channel.clone();
        std::thread::spawn(move || loop {
            match reader.recv() {
                Ok((WorkerMsg::Reply { id, result }, _)) => {
                    if rtx.send((id, result)).is_err() {
                        return;
                    }
                }
                Ok((WorkerMsg::Event(e), _)) => {
                    if etx.send(e).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        });

        let kernel = match &opts.kernel {
            Kernel::Builtin => None,
            Kernel::Path(p) => Some(OwnedFd::from(
                File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            )),
            Kernel::Bytes(b) => Some(image_memfd(b)),
        };
        let mut t = TestVmBuilder::kernel(kernel)
            .cpus(opts.cpus)
            .mem_size(opts.mem_mib << 20)
            .build();
        t.cfg.initrd = opts
            .initrd
            .as_ref()
            .map(|p| t.push_fd(OwnedFd::from(File::open(p).unwrap())));
        let mut serial_in = None;
        let input = if opts.serial_input {
            let (r, w) = nix::unistd::pipe().unwrap();
            serial_in = Some(File::from(w));
            Some(t.push_fd(r))
        } else {
            None
        };
        t.cfg.serial = match opts.serial_listener.take() {
            Some(l) => SerialConfig::Listener(t.push_fd(OwnedFd::from(l))),
            None => SerialConfig::Stream {
                output: FdSlot(2),
                input,
            },
        };
        t.cfg.cmdline.clone_from(&opts.cmdline);
        t.cfg.start_paused = opts.start_paused;
        t.cfg.no_shutdown = opts.no_shutdown;
        t.cfg.no_reboot = opts.no_reboot;
        let serial = SerialLog::spawn(t.serial);
        let (cfg, fds) = (t.cfg, t.fds);
        let mut vmm = Vmm {
            child,
            channel,
            replies,
            events,
            serial,
            serial_in,
            next_id: 1,
            early: std::collections::HashMap::new(),
            create_result: Ok(VcpuReply::Done),
        };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        vmm.create_result = vmm.request_with_fds(VcpuRequest::CreateVm(cfg), &borrowed);
        drop(borrowed);
        drop(fds);
        vmm
    }

    /// Sends `req` with `fds` and returns its reply.
    pub fn request_with_fds(
        &mut self,
        req: VcpuRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<VcpuReply, FlatError> {
        let id = self.send(req, fds);
        self.reply_to(id, TIMEOUT)
            .unwrap_or_else(|| panic!("no reply; serial:\n{}", self.serial_text()))
    }

    /// Sends `req` with `fds` without waiting; returns its request id.
    pub fn send(&mut self, req: VcpuRequest, fds: &[std::os::fd::BorrowedFd<'_>]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.channel
            .send(&BrokerMsg::Request { id, body: req }, fds)
            .unwrap();
        id
    }

    /// The reply to request `id` if it arrives within `wait` (replies to
    /// other requests that arrive first are kept for their callers).
    pub fn reply_to(&mut self, id: u64, wait: Duration) -> Option<Result<VcpuReply, FlatError>> {
        if let Some(r) = self.early.remove(&id) {
            return Some(r);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (rid, result) = self.replies.recv_timeout(left).ok()?;
            if rid == id {
                return Some(result);
            }
            self.early.insert(rid, result);
        }
    }

    /// Sends `req` and returns the reply.
    pub fn request(&mut self, req: VcpuRequest) -> Result<VcpuReply, FlatError> {
        self.request_with_fds(req, &[])
    }

    /// Everything the guest printed so far.
    pub fn serial_text(&self) -> String {
        self.serial.text()
    }

    /// Waits for the next event.
    pub fn next_event(&self) -> VcpuEvent {
        match self.events.recv_timeout(TIMEOUT) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no event within {TIMEOUT:?}; serial:\n{}",
                    self.serial_text()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("vcpu-proc went away; serial:\n{}", self.serial_text())
            }
        }
    }

    /// Every event received so far, without waiting.
    pub fn drain_events(&self) -> Vec<VcpuEvent> {
        self.events.try_iter().collect()
    }

    /// True if no event arrives within `wait`.
    pub fn no_event_within(&self, wait: Duration) -> Option<VcpuEvent> {
        self.events.recv_timeout(wait).ok()
    }

    /// Waits until the serial output contains `needle`.
    pub fn wait_serial(&self, needle: &str, timeout: Duration) {
        self.serial.wait_for(needle, timeout);
    }

    /// Types `bytes` into the serial input.
    pub fn type_serial(&mut self, bytes: &[u8]) {
        let f = self
            .serial_in
            .as_mut()
            .expect("serial_input was not requested");
        std::io::Write::write_all(f, bytes).unwrap();
    }

    /// Makes the hello guest finish: a bare line first, so that a serial
    /// interrupt is delivered while the guest idles, then `exit`. (hello
    /// fails if it reads "exit" by polling before any serial interrupt was
    /// taken, which can happen when both arrive in one burst.)
    pub fn type_exit(&mut self) {
        self.type_serial(b"\r");
        std::thread::sleep(Duration::from_millis(300));
        self.type_serial(b"exit\r");
    }

    /// The status reply.
    pub fn status(&mut self) -> ipc_proto::vcpu::StatusInfo {
        match self.request(VcpuRequest::QueryStatus) {
            Ok(VcpuReply::Status(s)) => s,
            other => panic!("unexpected status reply {other:?}"),
        }
    }

    /// Closes the control channel as a dying broker would and returns
    /// how vcpu-proc exited.
    pub fn close_and_wait(&mut self) -> std::process::ExitStatus {
        self.channel.shutdown();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "vcpu-proc did not exit on EOF");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.channel.shutdown();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}
