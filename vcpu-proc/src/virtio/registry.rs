//! The VM's virtio-mmio devices by id: what vcpu-proc's request handlers
//! need (attach at CreateVm, reconnect by id, reset all on a machine
//! reset, the DSDT list) in one place.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::dirty_log::VhostLog;
use super::{Result, VirtioError, VirtioMmioDevice};
use crate::acpi;

/// The virtio-mmio devices of one VM.
#[derive(Debug, Default)]
pub struct VirtioDevices {
    devices: Vec<Arc<VirtioMmioDevice>>,
    /// The dirty log while logging is on (a device added meanwhile logs
    /// too).
    logging: Mutex<Option<Arc<VhostLog>>>,
}

impl VirtioDevices {
    /// No devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an attached device; its id must be unused (a taken slot is
    /// already refused by the MMIO bus when the device is attached).
    /// While dirty logging is on, the device logs too (its backend must
    /// offer LOG_ALL).
    pub fn add(&mut self, dev: VirtioMmioDevice) -> Result<()> {
        if self.get(dev.id()).is_some() {
            return Err(VirtioError::DuplicateId(dev.id().to_string()));
        }
        if let Some(log) = self.logging_now() {
            let mut t = dev.lock();
            if !t.backend().can_log_dirty_pages() {
                return Err(VirtioError::NoDirtyLog(dev.id().to_string()));
            }
            // Not live yet: nothing is sent; its start carries the log.
            drop(t.backend_mut().start_dirty_log(log));
        }
        self.devices.push(Arc::new(dev));
        Ok(())
    }

    /// The device `id`.
    pub fn get(&self, id: &str) -> Option<&VirtioMmioDevice> {
        self.devices.iter().find(|d| d.id() == id).map(|d| &**d)
    }

    /// The device `id`, as a handle that outlives a borrow of the registry
    /// (a reconnection runs on a thread of its own).
    pub fn shared(&self, id: &str) -> Result<Arc<VirtioMmioDevice>> {
        self.devices
            .iter()
            .find(|d| d.id() == id)
            .cloned()
            .ok_or_else(|| VirtioError::NoDevice(id.to_string()))
    }

    /// Hands device `id` to a new backend connected on `socket`.
    pub fn reconnect(&self, id: &str, socket: UnixStream) -> Result<()> {
        self.shared(id)?.reconnect(socket)
    }

    /// Resets every device (machine reset), all at once: a device whose
    /// backend does not answer costs one request deadline, not one each.
    pub fn reset_all(&self) {
        match self.devices.as_slice() {
            [] => {}
            [one] => one.reset(),
            many => std::thread::scope(|s| {
                for d in many {
                    let spawned = std::thread::Builder::new()
                        .name("vu-reset".into())
                        .spawn_scoped(s, move || d.reset());
                    if spawned.is_err() {
                        d.reset();
                    }
                }
            }),
        }
    }

    /// Makes every device's backend log its writes into guest RAM in
    /// `log` (`VHOST_F_LOG_ALL` + `SET_LOG_BASE`), also after a
    /// reconnection, until [`Self::stop_dirty_log`]. Refused, with nothing
    /// changed, when a device's backend does not offer LOG_ALL. Waits for
    /// the live devices' backends (each request bounded by the session
    /// deadline): Ok only once every one confirmed; a backend refusing,
    /// lost or silent meanwhile turns logging off again on every device
    /// (so its replacement starts without it) and fails the call. Once on,
    /// a backend replacing a lost one logs too (the replay carries the
    /// log).
    pub fn start_dirty_log(&self, log: &Arc<VhostLog>) -> Result<()> {
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| !d.lock().backend().can_log_dirty_pages())
        {
            return Err(VirtioError::NoDirtyLog(d.id().to_string()));
        }
        let changes: Vec<_> = self
            .devices
            .iter()
            .map(|d| {
                let change = d.lock().backend_mut().start_dirty_log(log.clone());
                (d.id().to_string(), change)
            })
            .collect();
        if let Err(e) = wait_all(changes, true) {
            let _ = self.stop_dirty_log();
            return Err(e);
        }
        *self.logging_lock() = Some(log.clone());
        Ok(())
    }

    fn logging_lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<VhostLog>>> {
        self.logging.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn logging_now(&self) -> Option<Arc<VhostLog>> {
        self.logging_lock().clone()
    }

    /// Ends dirty logging on every device (migration ended or cancelled).
    /// Every device stops logging; the first backend refusal is returned.
    pub fn stop_dirty_log(&self) -> Result<()> {
        *self.logging_lock() = None;
        let changes: Vec<_> = self
            .devices
            .iter()
            .map(|d| (d.id().to_string(), d.lock().backend_mut().stop_dirty_log()))
            .collect();
        wait_all(changes, false)
    }

    /// The devices as the DSDT declares them.
    pub fn acpi_devices(&self) -> Vec<acpi::VirtioMmioDevice> {
        self.devices.iter().map(|d| d.acpi_device()).collect()
    }

    /// Every device.
    pub fn iter(&self) -> impl Iterator<Item = &VirtioMmioDevice> {
        self.devices.iter().map(|d| &**d)
    }
}

/// Waits for every change of dirty logging (of the devices `ids`); the
/// first failure. With `confirm` (turning logging on), a backend lost or
/// past its deadline meanwhile is one too: logging is on only once every
/// live backend said so, or died (its replacement gets the log with the
/// reconnect replay) (a backend that never answers SET_LOG_BASE — the
/// `vhost` crate's frontend expects the reply its own backend sends, and
/// some backends answer otherwise — must fail the migration, not stall
/// it). Turning logging off, a lost backend is not: its replacement gets
/// the state the device keeps.
fn wait_all(changes: Vec<(String, Option<super::device::LogChange>)>, confirm: bool) -> Result<()> {
    let mut first = Ok(());
    for (id, change) in changes {
        let Some(change) = change else { continue };
        let failed = match change.wait() {
            Some(Ok(())) => None,
            // A backend that died meanwhile is not a refusal: the device
            // keeps the log and its replacement gets it with the replay
            // before its rings start (one without LOG_ALL is refused).
            Some(Err(super::vhost_user::VhostUserError::BackendGone(_))) => None,
            Some(Err(e)) if confirm || !e.connection_lost() => Some(VirtioError::Frontend(e)),
            Some(Err(_)) => None,
            None if confirm => Some(VirtioError::DirtyLogNotConfirmed(id)),
            None => None,
        };
        if let (Some(e), true) = (failed, first.is_ok()) {
            first = Err(e);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_of_an_unknown_id_is_refused() {
        let r = VirtioDevices::new();
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            r.reconnect("nope", a),
            Err(VirtioError::NoDevice(id)) if id == "nope"
        ));
        assert!(r.acpi_devices().is_empty());
    }
}
