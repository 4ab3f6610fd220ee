//! Port-I/O and MMIO buses: devices registered by address range, looked up
//! on every exit. More devices (virtio-mmio transports) can be inserted
//! while the VM runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::devices::GuestAction;

/// A device on a bus. Offsets are relative to the device's base.
pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the register at `offset`; a write may ask for a
    /// machine-level action (reset, shutdown, exit).
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestAction>;
}

/// A shared bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus registration.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty or overlaps a registered device.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Result of bus operations.
pub type Result<T> = std::result::Result<T, BusError>;

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// What an access found.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// No device at this address.
    Unhandled,
    /// A device handled it.
    Handled(Option<GuestAction>),
}

/// A bus: non-overlapping ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        f.debug_list()
            .entries(r.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `dev` at `[base, base + len)`.
    pub fn insert(&self, base: u64, len: u64, dev: SharedDevice) -> Result<()> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        let mut r = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        let prev_overlaps = r
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if prev_overlaps {
            return Err(BusError::Overlap { base, len });
        }
        r.insert(base, Entry { len, dev });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let r = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        let (base, e) = r.range(..=addr).next_back()?;
        (addr - base < e.len).then(|| (addr - base, e.dev.clone()))
    }

    /// Reads from the device at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Access {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(off, data);
                Access::Handled(None)
            }
            None => Access::Unhandled,
        }
    }

    /// Writes to the device at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Access {
        match self.find(addr) {
            Some((off, dev)) => Access::Handled(
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(off, data),
            ),
            None => Access::Unhandled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = self.0 + offset as u8;
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<GuestAction> {
            self.0 = data[0];
            None
        }
    }

    #[test]
    fn access_reaches_the_device_with_its_offset() {
        let bus = Bus::new();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(0x10))))
            .unwrap();
        let mut b = [0u8];
        assert_eq!(bus.read(0x3fa, &mut b), Access::Handled(None));
        assert_eq!(b[0], 0x12);
        assert_eq!(bus.read(0x400, &mut b), Access::Unhandled);
        assert_eq!(bus.read(0x3f7, &mut b), Access::Unhandled);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let bus = Bus::new();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Echo(0))))
            .unwrap();
        assert!(bus.insert(0x10f, 1, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus
            .insert(0xf8, 0x9, Arc::new(Mutex::new(Echo(0))))
            .is_err());
        assert!(bus.insert(0x110, 1, Arc::new(Mutex::new(Echo(0)))).is_ok());
        assert!(bus.insert(0x0, 0, Arc::new(Mutex::new(Echo(0)))).is_err());
    }
}
