//! vcpu-proc's trace points, declared once (see `ipc_proto::trace`). The
//! `kvm_exit_*` points are per vCPU, one per kind of exit.

ipc_proto::trace_points! {
    process "vcpu-proc";
    /// A request from the broker arrived.
    point vcpu_ipc_request(id, request);
    /// vcpu-proc answered a broker request (reconnections answer later,
    /// from their own thread, untraced here).
    point vcpu_ipc_reply(id, ok);
    /// A port-I/O read exit.
    vcpu kvm_exit_io_in(port, size);
    /// A port-I/O write exit.
    vcpu kvm_exit_io_out(port, data);
    /// An MMIO read exit.
    vcpu kvm_exit_mmio_read(addr, size);
    /// An MMIO write exit.
    vcpu kvm_exit_mmio_write(addr, data);
    /// An exit that only resumes the vCPU (HLT, interrupt window, ...).
    vcpu kvm_exit_other(reason);
    /// A triple fault (KVM_EXIT_SHUTDOWN): the guest resets.
    vcpu kvm_exit_shutdown();
    /// A KVM system event (shutdown, reset, crash).
    vcpu kvm_exit_system_event(kind);
    /// An exit that ends the guest as crashed.
    vcpu kvm_exit_error(reason);
    /// A guest read of a virtio-mmio register or config space.
    point virtio_mmio_read(device_type, offset, value);
    /// A guest write of a virtio-mmio register or config space.
    point virtio_mmio_write(device_type, offset, value);
    /// A virtio device status change the guest asked for.
    point virtio_mmio_status(device_type, old, new);
    /// A vhost-user message to a backend (block-proc) and its outcome.
    point vhost_user_frontend_msg(request, ok);
}
