//! The command line, in QEMU's syntax (`-qmp unix:PATH,server=on,wait=off`,
//! `-m 128M`, `-smp 4`, ...). QEMU's single-dash long options and
//! `key=value,key=value` suboptions are not something clap parses, so this
//! small parser is written by hand.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// Errors in the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// An option that bulkhead does not know.
    #[error("{0}: invalid option")]
    UnknownOption(String),
    /// An option given without its value.
    #[error("{0}: requires an argument")]
    MissingValue(String),
    /// QEMU's message, as QEMU prints it (no option prefix).
    #[error("{0}")]
    Plain(String),
    /// QEMU's "OPTION VALUE: message" form.
    #[error("{option} {value}: {reason}")]
    At {
        /// The option.
        option: String,
        /// Its value as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A value that does not parse.
    #[error("{option}: {reason}")]
    BadValue {
        /// The option.
        option: String,
        /// What is wrong with its value.
        reason: String,
    },
}

pub mod cpu;
mod help;
pub mod incoming;
mod keyval;
pub mod memory_backend;
pub mod monitors;
pub mod qemu_opts;
pub mod rocker;
pub mod secret;
mod serial_chardev;
pub mod serial_tcp;
pub mod smp;
pub mod trace_opt;

use keyval::keyval_pairs;
pub use keyval::{parse_blockdev, parse_device, parse_drive};
pub use monitors::{HmpSpec, MonitorSocket, MonitorSpec};
pub use qemu_opts::MachineType;

/// Result of command-line parsing.
pub type Result<T> = std::result::Result<T, CliError>;

/// Where the guest's serial port goes (`-serial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSpec {
    /// `-serial stdio`: the broker's stdin and stdout.
    Stdio,
    /// `-serial file:PATH`: output appended to a file.
    File(PathBuf),
    /// `-serial unix:PATH,server=on,wait=off`: a listening socket.
    Unix(PathBuf),
    /// `-serial null`: discarded.
    Null,
    /// `-serial pty` / `-chardev pty,id=LABEL`: a pseudo-terminal the
    /// broker opens; the label is QEMU's (`serial0`, or the chardev id).
    Pty(String),
    /// `-serial tcp:...` / `-chardev socket,host=,port=`: a TCP socket the
    /// broker connects or listens on.
    Tcp(serial_tcp::TcpSerial),
    /// `-serial mon:stdio`, `-nographic`: stdio shared by the serial port
    /// and a human monitor, switched with Ctrl-a c (QEMU's mux).
    MonStdio,
}

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// QMP monitors (`-qmp`, `-chardev ...,server=on` + `-mon`).
    pub qmp: Vec<MonitorSpec>,
    /// Human monitors (`-monitor`, `-mon mode=readline`) besides the one
    /// `SerialSpec::MonStdio` muxes with the serial port.
    pub hmp: Vec<HmpSpec>,
    /// `-name`.
    pub name: Option<String>,
    /// Guest RAM in bytes (`-m`, default 128 MiB).
    pub mem_size: u64,
    /// vCPUs present at start (`-smp`, default 1).
    pub cpus: u8,
    /// `-smp`'s topology of the possible CPUs (`maxcpus`).
    pub topology: ipc_proto::cpu_topology::CpuTopology,
    /// `-cpu`'s model name (`host`, `max`, `qemu64`): the CPU's QOM type
    /// is `NAME-x86_64-cpu`.
    pub cpu_model_name: String,
    /// `-kernel`; `None` boots the built-in test guest.
    pub kernel: Option<PathBuf>,
    /// `-initrd`.
    pub initrd: Option<PathBuf>,
    /// `-append`.
    pub append: String,
    /// `-serial` (default stdio, as QEMU's `-nographic`).
    pub serial: SerialSpec,
    /// `-S`.
    pub start_paused: bool,
    /// `-incoming URI|defer`: the VM waits in `inmigrate` for its RAM and
    /// state; the URI as given (`defer`: `migrate-incoming` names it).
    pub incoming: Option<String>,
    /// `-no-shutdown`.
    pub no_shutdown: bool,
    /// `-no-reboot`.
    pub no_reboot: bool,
    /// `-sandbox on|off` (default on).
    pub sandbox: bool,
    /// `-add-fd fd=N,set=M[,opaque=S]`: inherited fds put into fd sets.
    pub add_fds: Vec<crate::machine::fdsets::InheritedFd>,
    /// `-run-with user=NAME|UID[:GID]`: the identity sandboxed workers run
    /// as (default: one derived from the broker's pid, unique per VM).
    pub run_with_user: Option<String>,
    /// `-x-bulkhead-image-dir DIR` (repeatable): directory trees backing
    /// files named in image headers may come from, besides the directories
    /// of the images the user named.
    pub image_dirs: Vec<PathBuf>,
    /// Directory holding the worker executables (`-worker-dir`, default:
    /// beside the broker's executable).
    pub worker_dir: Option<PathBuf>,
    /// Block nodes from `-blockdev` and `-drive`, in command-line order.
    pub blockdevs: Vec<BlockdevSpec>,
    /// `-device` options (`device_add` properties), in command-line order.
    pub devices: Vec<Map<String, Value>>,
    /// `-netdev` (properties as `netdev_add` takes them, checked when
    /// applied).
    pub netdevs: Vec<Map<String, Value>>,
    /// `-chardev socket,id=ID,path=PATH` (client sockets for vhost-user).
    pub chardevs: Vec<ChardevSpec>,
    /// `-device rocker` switches (their ports name `-netdev`s).
    pub rocker: rocker::RockerConfig,
    /// `-machine`/`-M`.
    pub machine: MachineType,
    /// `-object memory-backend-*` named by `-machine memory-backend=`.
    pub memory_backend: Option<memory_backend::MemoryBackend>,
    /// `-mem-prealloc`: guest RAM is allocated before the VM starts.
    pub mem_prealloc: bool,
    /// `-cpu`.
    pub cpu: ipc_proto::vcpu::CpuModel,
    /// `-machine dump-guest-core=off`: guest RAM stays out of core dumps.
    pub no_dump_guest_core: bool,
    /// `-object secret`: secrets kept for the VM's life.
    pub secrets: Vec<secret::Secret>,
    /// `-audiodev none,id=`: the ids (bulkhead has no audio device).
    pub audiodevs: Vec<String>,
    /// `-name process=`: the broker's process name.
    pub process_name: Option<String>,
    /// `-name debug-threads=on`.
    pub debug_threads: bool,
    /// `-uuid` (lower case), for `query-uuid`.
    pub uuid: Option<String>,
    /// `-msg timestamp=on`: timestamps on log lines and messages.
    pub msg_timestamp: bool,
    /// `-trace`: trace points enabled at start and the trace file.
    pub trace: trace_opt::TraceOptions,
    /// `-daemonize`.
    pub daemonize: bool,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `-D`: the log file (stderr of every process goes there).
    pub log_file: Option<PathBuf>,
    /// `-help`, `-version`, `-machine help`, ...: print this and exit 0.
    pub print_and_exit: Option<String>,
    /// `-__org.bulkhead-worker-timeout SECONDS`: how long a worker may
    /// take to answer a request or a liveness ping before it is declared
    /// hung (default [`DEFAULT_WORKER_TIMEOUT`]).
    pub worker_timeout: Duration,
}

/// The worker timeout without `-__org.bulkhead-worker-timeout`.
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The option naming the worker timeout (QEMU's downstream-prefix style).
pub const WORKER_TIMEOUT_OPTION: &str = "-__org.bulkhead-worker-timeout";

/// One `-chardev socket,id=ID,path=PATH`: a Unix socket the broker
/// connects to (a vhost-user backend's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevSpec {
    /// `id`.
    pub id: String,
    /// `path`.
    pub path: PathBuf,
}

/// One `-blockdev` or `-drive`: the `blockdev-add` arguments it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockdevSpec {
    /// `-blockdev` or `-drive` (for error messages).
    pub option: String,
    /// The option's value as given (for error messages).
    pub text: String,
    /// The `BlockdevOptions` object.
    pub options: Map<String, Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            qmp: Vec::new(),
            hmp: Vec::new(),
            name: None,
            mem_size: 128 << 20,
            cpus: 1,
            topology: ipc_proto::cpu_topology::CpuTopology::flat(1),
            cpu_model_name: "host".into(),
            kernel: None,
            initrd: None,
            append: String::new(),
            serial: SerialSpec::Stdio,
            start_paused: false,
            incoming: None,
            no_shutdown: false,
            no_reboot: false,
            sandbox: true,
            run_with_user: None,
            add_fds: Vec::new(),
            worker_dir: None,
            image_dirs: Vec::new(),
            blockdevs: Vec::new(),
            devices: Vec::new(),
            netdevs: Vec::new(),
            chardevs: Vec::new(),
            rocker: Default::default(),
            worker_timeout: DEFAULT_WORKER_TIMEOUT,
            machine: MachineType::Microvm,
            memory_backend: None,
            mem_prealloc: false,
            cpu: Default::default(),
            no_dump_guest_core: false,
            secrets: Vec::new(),
            audiodevs: Vec::new(),
            process_name: None,
            debug_threads: false,
            uuid: None,
            msg_timestamp: false,
            trace: Default::default(),
            daemonize: false,
            pidfile: None,
            log_file: None,
            print_and_exit: None,
        }
    }
}

/// The largest `-smp` accepted.
pub const MAX_CPUS: u8 = 64;

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Config> {
    let mut cfg = Config::default();
    let mut rocker_texts: Vec<String> = Vec::new();
    let (mut serial_given, mut nodefaults, mut kvm_accel) = (false, false, None);
    let (mut machine_accel, mut accel_option) = (false, false);
    let (mut servers, mut mons, mut chardev_ids) =
        (Vec::new(), Vec::<(String, bool)>::new(), Vec::new());
    let (mut objects, mut backend_id, mut mem_given) = (Vec::new(), None, false);
    let mut mem_path: Option<PathBuf> = None;
    let (mut serial_chardevs, mut serial_from) = (Vec::<(String, SerialSpec)>::new(), None);
    let (mut nographic, mut monitor_given) = (false, false);
    let mut dump_guest_core = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // QEMU accepts `--opt` as well as `-opt`.
        let opt = arg
            .strip_prefix("--")
            .map(|o| format!("-{o}"))
            .unwrap_or_else(|| arg.clone());
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| CliError::MissingValue(opt.clone()))
        };
        match opt.as_str() {
            "-qmp" => cfg.qmp.push(monitors::parse_qmp(&value()?)?),
            "-mon" => {
                mons.push(monitors::parse_mon(&value()?)?);
                monitor_given = true;
            }
            "-monitor" => {
                cfg.hmp.extend(monitors::parse_monitor(&value()?)?);
                monitor_given = true;
            }
            "-name" => {
                let n = qemu_opts::parse_name(&value()?)?;
                cfg.name = n.guest;
                cfg.process_name = n.process;
                cfg.debug_threads = n.debug_threads;
            }
            "-mem-path" => mem_path = Some(PathBuf::from(value()?)),
            "-mem-prealloc" => cfg.mem_prealloc = true,
            "-m" => {
                cfg.mem_size = parse_mem(&value()?)?;
                mem_given = true;
            }
            "-object" => {
                let v = value()?;
                let pairs = memory_backend::object_pairs(&v)?;
                if pairs.iter().any(|(k, t)| k == "qom-type" && t == "secret") {
                    cfg.secrets.push(secret::parse(&v, &pairs)?);
                } else {
                    objects.push(memory_backend::parse_object(&v)?);
                }
            }
            "-audiodev" => cfg.audiodevs.push(qemu_opts::parse_audiodev(&value()?)?),
            "-smp" => {
                let smp = smp::parse(&value()?)?;
                (cfg.cpus, cfg.topology) = (smp.cpus, smp.topology);
            }
            "-kernel" => cfg.kernel = Some(PathBuf::from(value()?)),
            "-initrd" => cfg.initrd = Some(PathBuf::from(value()?)),
            "-append" => cfg.append = value()?,
            "-serial" => {
                let v = value()?;
                if serial_given {
                    return Err(bad(
                        "-serial",
                        format!("'{v}': bulkhead has one serial port (COM1), already given"),
                    ));
                }
                match v.strip_prefix("chardev:") {
                    Some(id) => serial_from = Some(id.to_owned()),
                    None => cfg.serial = serial_chardev::parse_serial(&v)?,
                }
                serial_given = true;
            }
            "-S" => cfg.start_paused = true,
            "-no-shutdown" => cfg.no_shutdown = true,
            "-no-reboot" => cfg.no_reboot = true,
            "-sandbox" => cfg.sandbox = qemu_opts::parse_sandbox(&value()?)?,
            "-add-fd" => cfg.add_fds.push(parse_add_fd(&value()?)?),
            "-run-with" => cfg.run_with_user = Some(parse_run_with(&value()?)?),
            "-worker-dir" => cfg.worker_dir = Some(PathBuf::from(value()?)),
            WORKER_TIMEOUT_OPTION => cfg.worker_timeout = parse_worker_timeout(&value()?)?,
            "-x-bulkhead-image-dir" => cfg.image_dirs.push(PathBuf::from(value()?)),
            "-blockdev" => {
                let text = value()?;
                let options = parse_blockdev(&text)?;
                cfg.blockdevs.push(BlockdevSpec {
                    option: opt.clone(),
                    text,
                    options,
                });
            }
            "-drive" => {
                let text = value()?;
                let options = parse_drive(&text)?;
                cfg.blockdevs.push(BlockdevSpec {
                    option: opt.clone(),
                    text,
                    options,
                });
            }
            "-netdev" => cfg.netdevs.push(keyval::parse_netdev(&value()?)?),
            "-device" => {
                let text = value()?;
                let d = parse_device(&text)?;
                if d.get("driver").and_then(Value::as_str) == Some("rocker") {
                    cfg.rocker.add_switch(&text, &d)?;
                    rocker_texts.push(text);
                } else if d.get("driver").and_then(Value::as_str) == Some("isa-serial") {
                    if serial_given {
                        return Err(bad(
                            "-device",
                            "isa-serial: bulkhead has one serial port (COM1), already given",
                        ));
                    }
                    serial_from = Some(serial_chardev::parse_isa_serial(&d)?);
                    serial_given = true;
                } else {
                    cfg.devices.push(d);
                }
            }
            "-chardev" => {
                let v = value()?;
                let id = if let Some((id, spec)) = serial_chardev::parse(&v)? {
                    serial_chardevs.push((id.clone(), spec));
                    id
                } else {
                    match monitors::parse_server_chardev(&v)? {
                        Some(server) => {
                            let id = server.id.clone();
                            servers.push(server);
                            id
                        }
                        None => {
                            let c = parse_chardev(&v)?;
                            let id = c.id.clone();
                            cfg.chardevs.push(c);
                            id
                        }
                    }
                };
                if chardev_ids.contains(&id) {
                    return Err(bad("-chardev", format!("duplicate chardev id '{id}'")));
                }
                chardev_ids.push(id);
            }
            "-help" | "-h" => cfg.print_and_exit = Some(help::usage()),
            "-version" => cfg.print_and_exit = Some(help::version()),
            "-machine" | "-M" => {
                let v = value()?;
                if v == "help" || v == "?" {
                    cfg.print_and_exit = Some(help::machines());
                } else {
                    let (m, accel, backend, dump) = qemu_opts::parse_machine(&opt, &v)?;
                    dump_guest_core = dump.or(dump_guest_core);
                    cfg.machine = m;
                    backend_id = backend.or(backend_id);
                    machine_accel |= accel;
                }
            }
            "-accel" => {
                let v = value()?;
                if v == "help" {
                    cfg.print_and_exit = Some(help::accels());
                } else {
                    let kvm = qemu_opts::parse_accel(&v)?;
                    kvm_accel = Some(kvm_accel.unwrap_or(false) || kvm);
                    accel_option = true;
                }
            }
            "-enable-kvm" => kvm_accel = Some(true),
            "-cpu" => {
                let v = value()?;
                if v == "help" || v == "?" {
                    cfg.print_and_exit = Some(help::cpus());
                } else {
                    cfg.cpu = cpu::parse(&v)?;
                    cfg.cpu_model_name = v.split(',').next().unwrap_or("host").to_owned();
                }
            }
            "-display" => qemu_opts::parse_display(&value()?)?,
            // QEMU's -nographic: serial and monitor on stdio (see below).
            "-nographic" => nographic = true,
            "-nodefaults" => nodefaults = true,
            // bulkhead reads no configuration file: nothing to skip.
            "-no-user-config" => {}
            "-daemonize" => cfg.daemonize = true,
            "-pidfile" => cfg.pidfile = Some(PathBuf::from(value()?)),
            "-incoming" => {
                let uri = value()?;
                incoming::check(&uri)?;
                cfg.incoming = Some(uri);
            }
            "-D" => cfg.log_file = Some(PathBuf::from(value()?)),
            "-msg" => cfg.msg_timestamp = qemu_opts::parse_msg(&value()?)?.0,
            "-trace" => cfg.trace.parse(&value()?)?,
            "-uuid" => cfg.uuid = Some(qemu_opts::parse_uuid(&value()?)?),
            "-overcommit" => qemu_opts::parse_overcommit(&value()?)?,
            "-rtc" => qemu_opts::parse_rtc(&value()?)?,
            "-boot" => qemu_opts::parse_boot(&value()?)?,
            _ => return Err(CliError::UnknownOption(arg.clone())),
        }
    }
    name_anonymous_devices(&mut cfg.devices);
    monitor_given |= !cfg.qmp.is_empty();
    let mut control_mons = Vec::new();
    for (id, readline) in mons {
        if serial_chardevs
            .iter()
            .any(|(c, s)| *c == id && matches!(s, SerialSpec::Tcp(_)))
        {
            return Err(serial_chardev::mon_missing(&id, &serial_chardevs));
        }
        if !readline {
            control_mons.push(id);
            continue;
        }
        if let Some(i) = serial_chardevs
            .iter()
            .position(|(c, s)| *c == id && *s == SerialSpec::Stdio)
        {
            serial_chardevs.remove(i);
            if serial_from.as_deref() == Some(id.as_str()) {
                serial_from = None;
                cfg.serial = SerialSpec::MonStdio;
            } else {
                cfg.hmp.push(HmpSpec::Stdio);
            }
        } else if let Some(i) = servers.iter().position(|s| s.id == id) {
            match servers.remove(i).monitor {
                MonitorSpec {
                    socket: MonitorSocket::Path(p),
                    wait: false,
                } => cfg.hmp.push(HmpSpec::Unix(p)),
                _ => {
                    return Err(bad(
                        "-mon",
                        format!("chardev '{id}': {} (and path=)", monitors::NO_WAIT),
                    ))
                }
            }
        } else {
            return Err(serial_chardev::mon_missing(&id, &serial_chardevs));
        }
    }
    if let Some(id) = serial_from {
        if let Some(i) = serial_chardevs.iter().position(|(c, _)| *c == id) {
            cfg.serial = serial_chardevs.remove(i).1;
        } else if let Some(i) = servers.iter().position(|s| s.id == id) {
            cfg.serial = match servers.remove(i).monitor {
                MonitorSpec {
                    socket: MonitorSocket::Path(p),
                    wait: false,
                } => SerialSpec::Unix(p),
                _ => {
                    return Err(bad(
                        "-serial",
                        format!(
                            "chardev '{id}': a serial socket must be path=...,server=on,wait=off"
                        ),
                    ))
                }
            };
        } else {
            return Err(CliError::Plain(format!("chardev '{id}' not found")));
        }
    }
    if let Some((id, _)) = serial_chardevs.first() {
        return Err(bad(
            "-chardev",
            format!("'{id}' is used by nothing (-serial chardev:{id} or -device isa-serial,chardev={id})"),
        ));
    }
    if let Some(path) = mem_path {
        if backend_id.is_some() {
            // QEMU's message, its missing space included.
            return Err(CliError::Plain(
                "'-mem-path' can't be used together with'-machine memory-backend'".into(),
            ));
        }
        cfg.memory_backend = Some(memory_backend::MemoryBackend::mem_path(path, cfg.mem_size));
    }
    if let Some(id) = backend_id {
        let i = objects
            .iter()
            .position(|o: &memory_backend::MemoryBackend| o.id == id)
            .ok_or_else(|| CliError::Plain(format!("Memory backend '{id}' not found")))?;
        let b = objects.remove(i);
        if mem_given && b.size != cfg.mem_size {
            return Err(CliError::Plain(
                "Machine memory size does not match the size of the memory backend".into(),
            ));
        }
        cfg.mem_size = parse_mem(&format!("{}B", b.size))?;
        cfg.memory_backend = Some(b);
    }
    if let Some(o) = objects.first() {
        return Err(bad(
            "-object",
            format!("'{}' is used by nothing: bulkhead uses a memory backend only as -machine memory-backend=", o.id),
        ));
    }
    for id in &control_mons {
        let i = servers
            .iter()
            .position(|s: &monitors::ServerChardev| &s.id == id)
            .ok_or_else(|| serial_chardev::mon_missing(id, &serial_chardevs))?;
        cfg.qmp.push(servers.remove(i).monitor);
    }
    if let Some(s) = servers.first() {
        return Err(bad(
            "-chardev",
            format!("server chardev '{}' is used by no -mon (bulkhead serves only QMP monitors on server sockets)", s.id),
        ));
    }
    // QEMU's default is on; bulkhead's sandboxed workers are never
    // dumpable (their credentials change), so `on` cannot be kept there.
    cfg.no_dump_guest_core = dump_guest_core == Some(false);
    if dump_guest_core == Some(true) && cfg.sandbox {
        return Err(bad(
            "-machine",
            "dump-guest-core=on: bulkhead's sandboxed workers write no core dumps at all \
             (dump-guest-core=off, or -sandbox off)",
        ));
    }
    let mut secret_ids: Vec<&str> = cfg.secrets.iter().map(|s| s.id.as_str()).collect();
    secret_ids.extend(objects.iter().map(|o| o.id.as_str()));
    secret_ids.extend(cfg.memory_backend.iter().map(|o| o.id.as_str()));
    secret_ids.sort_unstable();
    if let Some(w) = secret_ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(CliError::Plain(format!(
            "attempt to add duplicate property '{}' to object (type 'container')",
            w[0]
        )));
    }
    if machine_accel && accel_option {
        return Err(CliError::Plain(
            "The -accel and \"-machine accel=\" options are incompatible".into(),
        ));
    }
    if kvm_accel == Some(false) {
        return Err(bad("-accel", "bulkhead has only the kvm accelerator"));
    }
    let netdev_ids: Vec<&str> = cfg
        .netdevs
        .iter()
        .filter_map(|n| n.get("id").and_then(Value::as_str))
        .collect();
    cfg.rocker.check(&netdev_ids, &rocker_texts)?;
    if !serial_given {
        cfg.serial = serial_chardev::default_serial(nodefaults, nographic, monitor_given, &cfg.hmp);
    }
    let stdio_users = cfg.hmp.iter().filter(|h| **h == HmpSpec::Stdio).count()
        + usize::from(matches!(
            cfg.serial,
            SerialSpec::Stdio | SerialSpec::MonStdio
        ));
    let stdio_msg = "cannot use stdio by multiple character devices";
    if stdio_users > 1 && serial_given {
        return Err(CliError::At {
            option: "-serial".into(),
            value: "stdio".into(),
            reason: stdio_msg.into(),
        });
    } else if stdio_users > 1 {
        return Err(CliError::Plain(stdio_msg.into()));
    }
    if cfg.daemonize {
        // QEMU refuses -nographic with -daemonize only while a default
        // port would land on stdio; -nodefaults (libvirt's probe) has none.
        if nographic && !nodefaults {
            return Err(CliError::Plain(
                "-nographic cannot be used with -daemonize".into(),
            ));
        }
        let stdio = "cannot use stdio with -daemonize";
        if cfg.serial == SerialSpec::MonStdio {
            return Err(bad("-serial mon:stdio", stdio));
        }
        if cfg.hmp.contains(&HmpSpec::Stdio) {
            return Err(bad("-monitor stdio", stdio));
        }
    }
    Ok(cfg)
}

/// QEMU accepts `-device` without `id=` and names the device itself;
/// bulkhead gives such a device the first free `anon-deviceN` id (the
/// id `query-block` and `device_del` then use).
fn name_anonymous_devices(devices: &mut [Map<String, Value>]) {
    let used: Vec<String> = devices
        .iter()
        .filter_map(|d| d.get("id").and_then(Value::as_str).map(String::from))
        .collect();
    let mut n = 0;
    for d in devices.iter_mut().filter(|d| !d.contains_key("id")) {
        let id = loop {
            let id = format!("anon-device{n}");
            n += 1;
            if !used.contains(&id) {
                break id;
            }
        };
        d.insert("id".into(), Value::String(id));
    }
}

pub(super) fn bad(option: &str, reason: impl Into<String>) -> CliError {
    CliError::BadValue {
        option: option.into(),
        reason: reason.into(),
    }
}

/// Splits `a,b=c,d=e` into the first element and key/value pairs.
pub(super) fn suboptions(s: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or("");
    let kv = parts
        .map(|p| p.split_once('=').unwrap_or((p, "on")))
        .collect();
    (first, kv)
}

pub(super) fn parse_on_off(option: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(bad(option, format!("'{v}' is not on or off"))),
    }
}

/// `fd=N,set=M[,opaque=S]`; missing numbers are left to the fd-set
/// checks, which answer with QEMU's messages.
fn parse_add_fd(s: &str) -> Result<crate::machine::fdsets::InheritedFd> {
    let mut out = crate::machine::fdsets::InheritedFd {
        fd: None,
        set: None,
        opaque: None,
    };
    let num = |k: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| bad("-add-fd", format!("'{k}' expects a number, got '{v}'")))
    };
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("fd", v)) => out.fd = Some(num("fd", v)?),
            Some(("set", v)) => out.set = Some(num("set", v)?),
            Some(("opaque", v)) => out.opaque = Some(v.to_owned()),
            _ => return Err(bad("-add-fd", format!("unknown suboption '{part}'"))),
        }
    }
    Ok(out)
}

/// Seconds, with a fraction if wanted (`5`, `0.5`), from 0.1 to 3600.
fn parse_worker_timeout(s: &str) -> Result<Duration> {
    let o = WORKER_TIMEOUT_OPTION;
    let secs: f64 = s
        .parse()
        .map_err(|_| bad(o, format!("'{s}' is not a number of seconds")))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(bad(o, format!("{s} is out of range (0.1 to 3600 seconds)")));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_run_with(s: &str) -> Result<String> {
    let mut user = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("user", v)) if !v.is_empty() => user = Some(v.to_owned()),
            _ => {
                return Err(bad(
                    "-run-with",
                    format!("unsupported suboption '{part}' (use user=NAME)"),
                ))
            }
        }
    }
    user.ok_or_else(|| bad("-run-with", "user=NAME is required"))
}

/// QEMU's `-m` syntax: a number with an optional K/M/G/T suffix, MiB when
/// there is none; also `size=...`.
pub fn parse_mem(s: &str) -> Result<u64> {
    let (first, kv) = suboptions(s);
    let v = kv
        .iter()
        .find(|(k, _)| *k == "size")
        .map(|(_, v)| *v)
        .unwrap_or(first.strip_prefix("size=").unwrap_or(first));
    let (digits, mult) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad("-m", format!("invalid size suffix in '{v}'"))),
            };
            (&v[..i], m)
        }
        _ => (v, 1u64 << 20),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| bad("-m", format!("invalid size '{v}'")))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| bad("-m", format!("size '{v}' too large")))?;
    if bytes < (2 << 20) {
        return Err(bad("-m", "at least 2 MiB of RAM is needed"));
    }
    if bytes % 4096 != 0 {
        return Err(bad("-m", "size must be a multiple of 4 KiB"));
    }
    Ok(bytes)
}

/// `-chardev socket,id=ID,path=PATH`: only client Unix sockets.
pub fn parse_chardev(s: &str) -> Result<ChardevSpec> {
    let o = "-chardev";
    let (mut backend, mut id, mut path) = (None, None, None);
    for (k, v) in keyval_pairs(o, s, Some("backend"))? {
        match k.as_str() {
            "backend" => backend = Some(v),
            "id" => id = Some(v),
            "path" => path = Some(PathBuf::from(v)),
            "server" if !parse_on_off(o, &v)? => {}
            "reconnect" | "reconnect-ms" => {}
            _ => return Err(bad(o, format!("Invalid parameter '{k}'"))),
        }
    }
    if backend.as_deref() != Some("socket") {
        return Err(bad(
            o,
            "only 'socket' chardevs (client, path=) are supported",
        ));
    }
    let id = id.ok_or_else(|| bad(o, "Parameter 'id' is missing"))?;
    let path = path.ok_or_else(|| bad(o, "chardev: socket: no addr provided"))?;
    Ok(ChardevSpec { id, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn full_command_line_parses() {
        let c = parse(&args(
            "-qmp unix:/tmp/a.sock,server=on,wait=off -qmp unix:/tmp/b.sock,server=on,wait=off \
             -name guest=vm1,debug-threads=on -m 256M -smp 4 -S -no-shutdown -serial null",
        ))
        .unwrap();
        let paths: Vec<_> = c.qmp.iter().map(|m| m.socket.clone()).collect();
        assert_eq!(
            paths,
            vec![
                MonitorSocket::Path("/tmp/a.sock".into()),
                MonitorSocket::Path("/tmp/b.sock".into())
            ]
        );
        assert_eq!(c.name.as_deref(), Some("vm1"));
        assert_eq!(c.mem_size, 256 << 20);
        assert_eq!(c.cpus, 4);
        assert!(c.start_paused && c.no_shutdown);
        assert_eq!(c.serial, SerialSpec::Null);
    }

    #[test]
    fn devices_without_id_get_free_generated_ids() {
        let c = parse(&args(
            "-device virtio-blk-device,drive=a -device virtio-blk-device,drive=b,id=anon-device1 \
             -device virtio-blk-device,drive=c",
        ))
        .unwrap();
        let ids: Vec<_> = c
            .devices
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["anon-device0", "anon-device1", "anon-device2"]);
    }

    #[test]
    fn memory_sizes_follow_qemu_syntax() {
        assert_eq!(parse_mem("64").unwrap(), 64 << 20);
        assert_eq!(parse_mem("1G").unwrap(), 1 << 30);
        assert_eq!(parse_mem("size=512M").unwrap(), 512 << 20);
        assert!(parse_mem("12Q").is_err());
        assert!(parse_mem("1").is_err());
        assert!(parse_mem("99999999999999999999T").is_err());
    }

    #[test]
    fn unknown_option_is_rejected() {
        assert_eq!(
            parse(&args("-frobnicate")),
            Err(CliError::UnknownOption("-frobnicate".into()))
        );
    }

    #[test]
    fn missing_value_is_rejected() {
        assert_eq!(parse(&args("-m")), Err(CliError::MissingValue("-m".into())));
    }

    #[test]
    fn qmp_client_mode_is_rejected() {
        assert!(parse(&args("-qmp unix:/x,server=off")).is_err());
        assert!(parse(&args("-qmp tcp:localhost:4444")).is_err());
    }

    #[test]
    fn add_fd_options_are_parsed() {
        let c = parse(&args("-add-fd fd=5,set=2,opaque=img -add-fd set=1")).unwrap();
        assert_eq!(c.add_fds[0].fd, Some(5));
        assert_eq!(c.add_fds[0].set, Some(2));
        assert_eq!(c.add_fds[0].opaque.as_deref(), Some("img"));
        assert_eq!(c.add_fds[1].fd, None);
        assert!(parse(&args("-add-fd fd=x,set=1")).is_err());
    }

    #[test]
    fn worker_timeout_takes_seconds_and_rejects_nonsense() {
        assert_eq!(
            parse(&args("")).unwrap().worker_timeout,
            DEFAULT_WORKER_TIMEOUT
        );
        let c = parse(&args("-__org.bulkhead-worker-timeout 2.5")).unwrap();
        assert_eq!(c.worker_timeout, Duration::from_millis(2500));
        for v in ["0", "-1", "x", "nan", "3601", "inf"] {
            let e = parse(&args(&format!("-__org.bulkhead-worker-timeout {v}")));
            assert!(matches!(e, Err(CliError::BadValue { .. })), "{v}: {e:?}");
        }
    }

    #[test]
    fn image_dirs_are_collected_in_order() {
        let c = parse(&args("-x-bulkhead-image-dir /a -x-bulkhead-image-dir /b")).unwrap();
        assert_eq!(c.image_dirs, [PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn run_with_user_is_parsed() {
        assert_eq!(
            parse(&args("-run-with user=vm1"))
                .unwrap()
                .run_with_user
                .as_deref(),
            Some("vm1")
        );
        assert!(parse(&args("-run-with chroot=/x")).is_err());
    }

    #[test]
    fn blockdev_options_are_collected_in_order() {
        let c = parse(&args("-blockdev driver=file,node-name=f0,filename=/a -drive file=/b,format=raw,if=none,id=d1")).unwrap();
        assert_eq!(c.blockdevs.len(), 2);
        assert_eq!(c.blockdevs[0].option, "-blockdev");
        assert_eq!(c.blockdevs[1].options["node-name"], "d1");
    }

    #[test]
    fn device_and_chardev_options_parse() {
        let c = parse(&args(
            "-chardev socket,id=c0,path=/s.sock -device virtio-blk-device,drive=d0,id=vda \
             -device vhost-user-blk,chardev=c0,id=vdb",
        ))
        .unwrap();
        assert_eq!(
            c.chardevs,
            vec![ChardevSpec {
                id: "c0".into(),
                path: "/s.sock".into()
            }]
        );
        assert_eq!(
            Value::Object(c.devices[0].clone()),
            serde_json::json!({"driver": "virtio-blk-device", "drive": "d0", "id": "vda"})
        );
        assert_eq!(c.devices[1]["chardev"], "c0");
        assert!(parse_chardev("pty,id=x").is_err());
        assert!(parse_chardev("socket,id=x").is_err());
        assert!(parse_chardev("socket,id=x,path=/p,server=on").is_err());
    }
}
