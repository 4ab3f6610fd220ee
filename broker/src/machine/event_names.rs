//! Names of the QMP events bulkhead adds itself (QMP's downstream-extension
//! prefix `__org.bulkhead_`). QEMU's own events (STOP, RESUME, RESET,
//! SHUTDOWN, POWERDOWN, ...) keep QEMU's names.

/// A worker process exited. Data: `worker` ("vcpu", "block", "net"),
/// `pid`, either `exit-code` or `signal` (e.g. "SIGKILL"), and `action`
/// ("restart", "guest-crashed" or "none").
pub const WORKER_EXITED: &str = "__org.bulkhead_WORKER_EXITED";

/// A worker was restarted and brought back to the desired state. Data:
/// `worker`, `pid`, `restarts` (count so far), `downtime-ms`.
pub const WORKER_RESTARTED: &str = "__org.bulkhead_WORKER_RESTARTED";

/// The guest crashed (KVM internal error, failed VM entry). Data: `detail`.
pub const GUEST_CRASHED: &str = "__org.bulkhead_GUEST_CRASHED";

/// A device's vhost-user backend went away (its worker died or hung up);
/// the guest's requests wait. Data: `id`.
pub const DEVICE_BACKEND_LOST: &str = "__org.bulkhead_DEVICE_BACKEND_LOST";

/// A device is served by a backend again; requests in flight at the loss
/// were resubmitted. Data: `id`, `downtime-ms`.
pub const DEVICE_BACKEND_RESTORED: &str = "__org.bulkhead_DEVICE_BACKEND_RESTORED";
