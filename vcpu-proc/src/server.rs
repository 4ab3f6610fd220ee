//! The IPC server: serves the broker's [`VcpuRequest`]s on the control
//! channel and forwards vCPU-originated inputs to the controller.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use ipc_proto::envelope::error_chain;
use ipc_proto::vcpu::{VcpuEvent, VcpuReply, VcpuRequest, VhostUserDeviceConfig, VmConfig};
use ipc_proto::worker::WorkerChannel;
use ipc_proto::{trace_point, BrokerMsg, ChannelError, FlatError, WorkerMsg};

use crate::control::{Controller, EventSink};
use crate::runstate::{Input, RunStateMachine};
use crate::trace;
use crate::virtio::VirtioEvent;
use crate::vm::{FdTable, Vm};

/// vcpu-proc's end of the control channel.
pub type VcpuChannel = WorkerChannel<VcpuRequest, VcpuReply, VcpuEvent>;

/// Errors that end the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The channel broke (not a clean close).
    #[error("control channel failed")]
    Channel(#[source] ChannelError),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
}

/// Result of serving.
pub type Result<T> = std::result::Result<T, ServerError>;

struct ChannelSink(Arc<VcpuChannel>);

impl EventSink for ChannelSink {
    fn emit(&self, event: VcpuEvent) {
        if let Err(e) = self.0.send(&WorkerMsg::Event(event), &[]) {
            tracing::warn!("cannot send event: {}", error_chain(&e));
        }
    }
}

type Shared = Arc<Mutex<Controller>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Controller> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_vm() -> FlatError {
    FlatError::generic("the VM has not been created")
}

/// Forwards the virtio devices' connection events to the broker.
fn spawn_virtio_forwarder(channel: Arc<VcpuChannel>) -> std::io::Result<mpsc::Sender<VirtioEvent>> {
    let (tx, rx) = mpsc::channel::<VirtioEvent>();
    let sink = ChannelSink(channel);
    std::thread::Builder::new()
        .name("virtio-events".into())
        .spawn(move || {
            for ev in rx {
                sink.emit(match ev {
                    VirtioEvent::Disconnected { id } => VcpuEvent::VhostUserDisconnected { id },
                    VirtioEvent::Reconnected { id } => VcpuEvent::VhostUserReconnected { id },
                });
            }
        })?;
    Ok(tx)
}

struct Server {
    channel: Arc<VcpuChannel>,
    controller: Option<Shared>,
    virtio_events: mpsc::Sender<VirtioEvent>,
    dumps: crate::dump::Dumps,
    migrations: crate::migration::Migrations,
}

fn one_socket(
    fds: Vec<std::os::fd::OwnedFd>,
    slot: ipc_proto::vcpu::FdSlot,
) -> std::result::Result<std::os::unix::net::UnixStream, FlatError> {
    FdTable::new(fds)
        .take(slot)
        .map(std::os::unix::net::UnixStream::from)
        .map_err(|e| FlatError::generic(error_chain(&e)))
}

impl Server {
    /// Reconnects device `dev` on a thread of its own and answers request
    /// `id` from there: the handshake and the replay wait for the backend
    /// (bounded by the request deadline), and other requests — a
    /// `query-status`, a `stop` — must not wait behind them.
    fn serve_reconnect(
        &self,
        id: u64,
        dev: String,
        socket: ipc_proto::vcpu::FdSlot,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> std::result::Result<(), FlatError> {
        let socket = one_socket(fds, socket)?;
        let c = self.controller.as_ref().ok_or_else(no_vm)?;
        let device = lock(c)
            .vhost_user_device(&dev)
            .map_err(FlatError::generic)?;
        let channel = self.channel.clone();
        std::thread::Builder::new()
            .name("vu-reconnect".into())
            .spawn(move || {
                let result = device
                    .reconnect(socket)
                    .map(|()| VcpuReply::Done)
                    .map_err(|e| FlatError::generic(error_chain(&e)));
                if let Err(e) = channel.send(&WorkerMsg::Reply { id, result }, &[]) {
                    tracing::warn!("cannot send a reply: {}", error_chain(&e));
                }
            })
            .map_err(|e| FlatError::generic(format!("cannot start the reconnection: {e}")))?;
        Ok(())
    }

    /// `SendRarp`: the NIC's backend is asked on its session thread; a
    /// thread of its own waits for the session and answers request `id`.
    fn serve_send_rarp(
        &self,
        id: u64,
        dev: String,
        mac: [u8; 6],
    ) -> std::result::Result<(), FlatError> {
        let c = self.controller.as_ref().ok_or_else(no_vm)?;
        let device = lock(c)
            .vhost_user_device(&dev)
            .map_err(FlatError::generic)?;
        let pending = device
            .with_transport(|t| t.backend().send_rarp(mac))
            .ok_or_else(|| {
                FlatError::generic(format!("device '{dev}' has no connected backend"))
            })?;
        let channel = self.channel.clone();
        std::thread::Builder::new()
            .name("vu-rarp".into())
            .spawn(move || {
                let result = match pending.wait() {
                    Some(Ok(())) => Ok(VcpuReply::Done),
                    Some(Err(e)) => Err(FlatError::generic(format!(
                        "device '{dev}': {}",
                        error_chain(&e)
                    ))),
                    None => Err(FlatError::generic(format!(
                        "device '{dev}': the backend connection ended"
                    ))),
                };
                if let Err(e) = channel.send(&WorkerMsg::Reply { id, result }, &[]) {
                    tracing::warn!("cannot send a reply: {}", error_chain(&e));
                }
            })
            .map_err(|e| FlatError::generic(format!("cannot start the SEND_RARP thread: {e}")))?;
        Ok(())
    }

    fn create_vm(
        &mut self,
        cfg: VmConfig,
        devices: &[VhostUserDeviceConfig],
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> std::result::Result<VcpuReply, FlatError> {
        if self.controller.is_some() {
            return Err(FlatError::generic("the VM already exists"));
        }
        let (tx, rx) = mpsc::channel::<Input>();
        let events = self.virtio_events.clone();
        let vm =
            Vm::create_with_devices(&cfg, devices, FdTable::new(fds), tx, events).map_err(|e| {
                FlatError::generic(format!("cannot create the VM: {}", error_chain(&e)))
            })?;
        let rsm = RunStateMachine::new(cfg.start_paused, cfg.no_shutdown, cfg.no_reboot)
            .with_incoming(cfg.incoming);
        let sink = Box::new(ChannelSink(self.channel.clone()));
        let controller = Arc::new(Mutex::new(Controller::start(vm, rsm, sink)));
        self.start_cpu_ejects(&controller)?;
        let c = controller.clone();
        std::thread::Builder::new()
            .name("vm-control".into())
            .spawn(move || {
                for input in rx {
                    if let Err(e) = lock(&c).handle(input) {
                        tracing::warn!("guest request refused: {e}");
                    }
                }
            })
            .map_err(|e| FlatError::generic(format!("cannot start the controller: {e}")))?;
        self.controller = Some(controller);
        Ok(VcpuReply::Done)
    }

    /// Serves the guest's CPU ejects on their own thread.
    fn start_cpu_ejects(&self, controller: &Shared) -> std::result::Result<(), FlatError> {
        let Some(ejects) = lock(controller).take_cpu_ejects() else {
            return Ok(());
        };
        let c = controller.clone();
        crate::hotplug::spawn_eject_thread(ejects, move |msg| lock(&c).guest_cpu_report(msg))
            .map_err(|e| FlatError::generic(format!("cannot start the CPU eject thread: {e}")))
    }

    fn with_vm(
        &self,
        f: impl FnOnce(&mut Controller) -> std::result::Result<VcpuReply, FlatError>,
    ) -> std::result::Result<VcpuReply, FlatError> {
        let c = self.controller.as_ref().ok_or_else(no_vm)?;
        f(&mut lock(c))
    }

    /// Serves request `id`; `Ok(None)` when its own thread answers later.
    fn handle(
        &mut self,
        id: u64,
        req: VcpuRequest,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> std::result::Result<Option<VcpuReply>, FlatError> {
        let step = |input: Input| {
            move |c: &mut Controller| {
                c.handle(input)
                    .map(|_| VcpuReply::Done)
                    .map_err(|e| FlatError::generic(e.to_string()))
            }
        };
        let reply = match req {
            VcpuRequest::CreateVm(cfg) => self.create_vm(cfg, &[], fds),
            VcpuRequest::CreateVmWithDevices { config, devices } => {
                self.create_vm(config, &devices, fds)
            }
            VcpuRequest::AttachVhostUser(d) => {
                let socket = one_socket(fds, d.socket)?;
                let events = self.virtio_events.clone();
                self.with_vm(|c| {
                    c.attach_vhost_user(&d, socket, events)
                        .map(|()| VcpuReply::Done)
                        .map_err(FlatError::generic)
                })
            }
            VcpuRequest::ReconnectVhostUser { id: dev, socket } => {
                self.serve_reconnect(id, dev, socket, fds)?;
                return Ok(None);
            }
            VcpuRequest::Cont => self.with_vm(step(Input::Cont)),
            VcpuRequest::Stop => self.with_vm(step(Input::Stop)),
            VcpuRequest::SystemReset => self.with_vm(step(Input::SystemReset)),
            VcpuRequest::SystemPowerdown => self.with_vm(step(Input::Powerdown)),
            VcpuRequest::QueryStatus => self.with_vm(|c| Ok(VcpuReply::Status(c.status()))),
            VcpuRequest::QueryCpus => self.with_vm(|c| Ok(VcpuReply::Cpus(c.cpus()))),
            VcpuRequest::Ping => Ok(VcpuReply::Done),
            VcpuRequest::Trace(t) => {
                ipc_proto::trace::serve(crate::trace::POINTS, t, fds).map(VcpuReply::Trace)
            }
            VcpuRequest::DumpGuestMemory(d) => {
                let c = self.controller.as_ref().ok_or_else(no_vm)?;
                let sink = Arc::new(ChannelSink(self.channel.clone()));
                self.dumps.start(c, d, fds, sink)
            }
            VcpuRequest::QueryDump => Ok(self.dumps.progress()),
            VcpuRequest::Migration(m) => {
                let sink = Arc::new(ChannelSink(self.channel.clone()));
                self.migrations
                    .serve(self.controller.as_ref(), m, fds, sink)
            }
            VcpuRequest::SendRarp { id: dev, mac } => {
                self.serve_send_rarp(id, dev, mac)?;
                return Ok(None);
            }
            VcpuRequest::PlugCpu { slot } => self.with_vm(|c| {
                c.plug_cpu(slot)
                    .map(|()| VcpuReply::Done)
                    .map_err(FlatError::generic)
            }),
            VcpuRequest::UnplugCpu { slot } => self.with_vm(|c| {
                c.unplug_cpu(slot)
                    .map(|()| VcpuReply::Done)
                    .map_err(FlatError::generic)
            }),
            #[cfg(feature = "test-hooks")]
            VcpuRequest::TestEscape(e) => sandbox::escape::attempt(e)
                .into_reply()
                .map(|()| VcpuReply::Done),
        };
        reply.map(Some)
    }
}

/// Serves `channel` until the broker closes it.
pub fn serve(channel: VcpuChannel) -> Result<()> {
    let channel = Arc::new(channel);
    let virtio_events = spawn_virtio_forwarder(channel.clone()).map_err(ServerError::Thread)?;
    let mut server = Server {
        channel,
        controller: None,
        virtio_events,
        dumps: Default::default(),
        migrations: Default::default(),
    };
    loop {
        let (msg, fds) = match server.channel.recv() {
            Ok(m) => m,
            Err(e) if e.is_closed() => return Ok(()),
            Err(ChannelError::Codec(e)) => {
                tracing::warn!("ignoring an undecodable request: {e}");
                continue;
            }
            Err(e) => return Err(ServerError::Channel(e)),
        };
        match msg {
            BrokerMsg::Request { id, body } => {
                trace_point!(trace::vcpu_ipc_request(id, body));
                let result = match server.handle(id, body, fds) {
                    Ok(Some(reply)) => Ok(reply),
                    // Answered later, by the request's own thread.
                    Ok(None) => continue,
                    Err(e) => Err(e),
                };
                trace_point!(trace::vcpu_ipc_reply(id, result.is_ok()));
                let reply = WorkerMsg::Reply { id, result };
                if let Err(e) = server.channel.send(&reply, &[]) {
                    if e.is_closed() {
                        return Ok(());
                    }
                    return Err(ServerError::Channel(e));
                }
            }
        }
    }
}
