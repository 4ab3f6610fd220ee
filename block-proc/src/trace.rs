//! block-proc's trace points, declared once (see `ipc_proto::trace`).

ipc_proto::trace_points! {
    process "block-proc";
    /// A request from the broker arrived.
    point block_ipc_request(id, request);
    /// block-proc answered a broker request.
    point block_ipc_reply(id, ok);
    /// A vhost-user message from the frontend (vcpu-proc) was handled.
    point vhost_user_backend_msg(node, request, arg);
    /// A request was taken from a queue's avail ring (virtio-blk, and
    /// virtio-scsi with the export's id as `node`).
    point virtio_blk_request(node, queue, head);
    /// A request completed (its used element is published).
    point virtio_blk_complete(node, queue, head, status, used_len);
    /// A SCSI command ran on a unit: its opcode, the virtio-scsi response
    /// and the SCSI status, and the sense key/ASC/ASCQ of a CHECK
    /// CONDITION.
    point scsi_command(device, opcode, response, status, sense);
}
