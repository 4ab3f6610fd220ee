//! The broker's trace points, declared once (see `ipc_proto::trace`).

ipc_proto::trace_points! {
    process "broker";
    /// A QMP command arrived (after parsing, before dispatch).
    point qmp_command_in(command, id);
    /// A QMP command was answered.
    point qmp_command_done(command, ok);
    /// The broker sent a request to a worker.
    point broker_ipc_request(worker, id);
    /// A worker's reply arrived.
    point broker_ipc_reply(worker, id, ok);
    /// A worker exited (killed, crashed or ended).
    point worker_exit(worker, pid, status);
    /// A restarted worker is serving again.
    point worker_restart(worker, pid, restarts);
}
