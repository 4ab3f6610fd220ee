//! net-proc's trace points, declared once (see `ipc_proto::trace`).

ipc_proto::trace_points! {
    process "net-proc";
    /// A request from the broker arrived.
    point net_ipc_request(id, request);
    /// net-proc answered a broker request.
    point net_ipc_reply(id, ok);
    /// A vhost-user message of a NIC's frontend.
    point vhost_user_msg(nic, message, args);
}
