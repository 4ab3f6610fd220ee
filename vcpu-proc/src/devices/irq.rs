//! An edge-triggered interrupt line: an eventfd registered with KVM as an
//! irqfd for one GSI.

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// Errors of interrupt lines.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// The eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// KVM refused the irqfd.
    #[error("KVM_IRQFD for GSI {gsi} failed")]
    Register {
        /// The GSI.
        gsi: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Result of interrupt operations.
pub type Result<T> = std::result::Result<T, IrqError>;

/// An interrupt line into the in-kernel irqchip.
#[derive(Debug)]
pub struct IrqLine {
    evt: EventFd,
    gsi: u32,
}

impl IrqLine {
    /// Creates the eventfd and registers it as the irqfd of `gsi`.
    pub fn new(vm: &VmFd, gsi: u32) -> Result<Self> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(IrqError::EventFd)?;
        vm.register_irqfd(&evt, gsi)
            .map_err(|source| IrqError::Register { gsi, source })?;
        Ok(IrqLine { evt, gsi })
    }

    /// The GSI this line raises.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Pulses the line.
    pub fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
