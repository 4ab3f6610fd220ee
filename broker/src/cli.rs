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
    /// A value that does not parse.
    #[error("{option}: {reason}")]
    BadValue {
        /// The option.
        option: String,
        /// What is wrong with its value.
        reason: String,
    },
}

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
}

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Unix socket paths to serve QMP on (`-qmp`).
    pub qmp: Vec<PathBuf>,
    /// `-name`.
    pub name: Option<String>,
    /// Guest RAM in bytes (`-m`, default 128 MiB).
    pub mem_size: u64,
    /// vCPUs (`-smp`, default 1).
    pub cpus: u8,
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
    /// `-chardev socket,id=ID,path=PATH` (client sockets for vhost-user).
    pub chardevs: Vec<ChardevSpec>,
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
            name: None,
            mem_size: 128 << 20,
            cpus: 1,
            kernel: None,
            initrd: None,
            append: String::new(),
            serial: SerialSpec::Stdio,
            start_paused: false,
            no_shutdown: false,
            no_reboot: false,
            sandbox: true,
            run_with_user: None,
            add_fds: Vec::new(),
            worker_dir: None,
            image_dirs: Vec::new(),
            blockdevs: Vec::new(),
            devices: Vec::new(),
            chardevs: Vec::new(),
            worker_timeout: DEFAULT_WORKER_TIMEOUT,
        }
    }
}

/// The largest `-smp` accepted.
pub const MAX_CPUS: u8 = 64;

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Config> {
    let mut cfg = Config::default();
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
            "-qmp" => cfg.qmp.push(parse_qmp(&value()?)?),
            "-name" => cfg.name = Some(parse_name(&value()?)),
            "-m" => cfg.mem_size = parse_mem(&value()?)?,
            "-smp" => cfg.cpus = parse_smp(&value()?)?,
            "-kernel" => cfg.kernel = Some(PathBuf::from(value()?)),
            "-initrd" => cfg.initrd = Some(PathBuf::from(value()?)),
            "-append" => cfg.append = value()?,
            "-serial" => cfg.serial = parse_serial(&value()?)?,
            "-S" => cfg.start_paused = true,
            "-no-shutdown" => cfg.no_shutdown = true,
            "-no-reboot" => cfg.no_reboot = true,
            "-sandbox" => cfg.sandbox = parse_on_off("-sandbox", &value()?)?,
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
            "-device" => cfg.devices.push(parse_device(&value()?)?),
            "-chardev" => {
                let c = parse_chardev(&value()?)?;
                if cfg.chardevs.iter().any(|x| x.id == c.id) {
                    return Err(bad("-chardev", format!("duplicate chardev id '{}'", c.id)));
                }
                cfg.chardevs.push(c);
            }
            // Implied by what bulkhead is: KVM always, never a display.
            "-enable-kvm" | "-nographic" | "-nodefaults" => {}
            _ => return Err(CliError::UnknownOption(arg.clone())),
        }
    }
    Ok(cfg)
}

fn bad(option: &str, reason: impl Into<String>) -> CliError {
    CliError::BadValue {
        option: option.into(),
        reason: reason.into(),
    }
}

/// Splits `a,b=c,d=e` into the first element and key/value pairs.
fn suboptions(s: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or("");
    let kv = parts
        .map(|p| p.split_once('=').unwrap_or((p, "on")))
        .collect();
    (first, kv)
}

fn parse_on_off(option: &str, v: &str) -> Result<bool> {
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

fn parse_qmp(s: &str) -> Result<PathBuf> {
    let (first, kv) = suboptions(s);
    let path = first.strip_prefix("unix:").ok_or_else(|| {
        bad(
            "-qmp",
            format!("'{first}': only unix:PATH sockets are supported"),
        )
    })?;
    if path.is_empty() {
        return Err(bad("-qmp", "empty socket path"));
    }
    for (k, v) in kv {
        match k {
            "server" if parse_on_off("-qmp", v)? => {}
            "server" => return Err(bad("-qmp", "a client socket (server=off) is not supported")),
            "wait" if !parse_on_off("-qmp", v)? => {}
            "wait" => return Err(bad("-qmp", "wait=on is not supported; use wait=off")),
            _ => return Err(bad("-qmp", format!("unknown suboption '{k}'"))),
        }
    }
    Ok(PathBuf::from(path))
}

fn parse_name(s: &str) -> String {
    let (first, kv) = suboptions(s);
    kv.iter()
        .find(|(k, _)| *k == "guest")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| first.strip_prefix("guest=").unwrap_or(first).to_string())
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

fn parse_smp(s: &str) -> Result<u8> {
    let (first, kv) = suboptions(s);
    let v = kv
        .iter()
        .find(|(k, _)| *k == "cpus")
        .map(|(_, v)| *v)
        .unwrap_or(first.strip_prefix("cpus=").unwrap_or(first));
    match v.parse::<u8>() {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => Ok(n),
        _ => Err(bad(
            "-smp",
            format!("'{v}': CPU count must be 1 to {MAX_CPUS}"),
        )),
    }
}

fn parse_serial(s: &str) -> Result<SerialSpec> {
    let (first, kv) = suboptions(s);
    match first {
        "stdio" => Ok(SerialSpec::Stdio),
        "null" | "none" => Ok(SerialSpec::Null),
        _ => {
            if let Some(p) = first.strip_prefix("file:") {
                Ok(SerialSpec::File(PathBuf::from(p)))
            } else if let Some(p) = first.strip_prefix("unix:") {
                for (k, v) in kv {
                    match k {
                        "server" if parse_on_off("-serial", v)? => {}
                        "wait" if !parse_on_off("-serial", v)? => {}
                        _ => {
                            return Err(bad(
                                "-serial",
                                format!("unsupported suboption '{k}={v}' (use server=on,wait=off)"),
                            ))
                        }
                    }
                }
                Ok(SerialSpec::Unix(PathBuf::from(p)))
            } else {
                Err(bad("-serial", format!("'{s}' is not a supported backend")))
            }
        }
    }
}

/// Splits QEMU's `key=value,...` syntax, where `,,` is a literal comma.
/// A first element without `=` is returned under `implied_key`.
fn keyval_pairs(option: &str, s: &str, implied_key: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut items: Vec<String> = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                if let Some(i) = items.last_mut() {
                    i.push(',');
                }
            }
            ',' => items.push(String::new()),
            c => {
                if let Some(i) = items.last_mut() {
                    i.push(c);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_owned(), v.to_owned())),
            None if i == 0 && implied_key.is_some() && !item.is_empty() => {
                out.push((implied_key.unwrap_or_default().to_owned(), item));
            }
            _ => return Err(bad(option, format!("Invalid parameter '{item}'"))),
        }
    }
    Ok(out)
}

/// `BlockdevOptions` members whose keyval strings are booleans.
const BOOL_KEYS: [&str; 8] = [
    "read-only",
    "auto-read-only",
    "force-share",
    "direct",
    "no-flush",
    "lazy-refcounts",
    "pass-discard-request",
    "read-zeroes",
];

/// `BlockdevOptions` members whose keyval strings are sizes or integers.
const INT_KEYS: [&str; 4] = ["offset", "size", "cache-size", "latency-ns"];

/// QEMU's size syntax: a number with an optional k/M/G/T/P/E suffix.
fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return None,
            };
            (&v[..i], shift)
        }
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Converts one keyval string to the JSON type the member has.
fn keyval_value(option: &str, path: &str, leaf: &str, v: String) -> Result<Value> {
    if BOOL_KEYS.contains(&leaf) {
        return match v.as_str() {
            "on" | "yes" | "true" | "y" => Ok(Value::Bool(true)),
            "off" | "no" | "false" | "n" => Ok(Value::Bool(false)),
            _ => Err(bad(
                option,
                format!("Parameter '{path}' expects 'on' or 'off'"),
            )),
        };
    }
    if INT_KEYS.contains(&leaf) {
        return parse_size(&v).map(Value::from).ok_or_else(|| {
            bad(
                option,
                format!("Parameter '{path}' expects a non-negative number below 2^64"),
            )
        });
    }
    if leaf == "backing" && v.is_empty() {
        return Ok(Value::Null);
    }
    Ok(Value::String(v))
}

/// QEMU's dotted keyval form (`driver=qcow2,file.driver=file,...`) as a
/// JSON object.
fn keyval_object(option: &str, pairs: Vec<(String, String)>) -> Result<Map<String, Value>> {
    let mut root = Map::new();
    for (key, v) in pairs {
        let parts: Vec<&str> = key.split('.').collect();
        let (leaf, parents) = match parts.split_last() {
            Some((l, p)) if !l.is_empty() && p.iter().all(|x| !x.is_empty()) => (*l, p),
            _ => return Err(bad(option, format!("Invalid parameter '{key}'"))),
        };
        let mut cur = &mut root;
        for (i, p) in parents.iter().enumerate() {
            let entry = cur
                .entry((*p).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            cur = match entry {
                Value::Object(m) => m,
                _ => {
                    let path = parents[..=i].join(".");
                    return Err(bad(
                        option,
                        format!("Parameter '{path}' used inconsistently"),
                    ));
                }
            };
        }
        if cur.contains_key(leaf) {
            return Err(bad(
                option,
                format!("Parameter '{key}' used inconsistently"),
            ));
        }
        let value = keyval_value(option, &key, leaf, v)?;
        cur.insert(leaf.to_owned(), value);
    }
    Ok(root)
}

/// `-blockdev`: JSON (`{"driver": ...}`) or dotted keyval
/// (`driver=file,node-name=f0,filename=/x.img`), same result.
pub fn parse_blockdev(s: &str) -> Result<Map<String, Value>> {
    if s.trim_start().starts_with('{') {
        return serde_json::from_str::<Map<String, Value>>(s)
            .map_err(|e| bad("-blockdev", format!("JSON parse error, {e}")));
    }
    keyval_object("-blockdev", keyval_pairs("-blockdev", s, Some("driver"))?)
}

/// `-drive file=PATH,format=raw|qcow2,if=none,id=ID[,readonly=on]
/// [,cache.direct=on][,cache=none|writeback|...][,aio=threads|native|io_uring]`:
/// a `file` node under a format node named `ID`.
pub fn parse_drive(s: &str) -> Result<Map<String, Value>> {
    let o = "-drive";
    let (mut file, mut format, mut id) = (None, None, None);
    let (mut ro, mut direct, mut no_flush) = (false, false, false);
    let mut extra = Map::new();
    let mut aio = None;
    for (k, v) in keyval_pairs(o, s, Some("file"))? {
        match k.as_str() {
            "file" => file = Some(v),
            "format" => format = Some(v),
            "id" => id = Some(v),
            "if" if v == "none" => {}
            "if" => {
                return Err(bad(
                    o,
                    format!("if={v} is not supported; use if=none and -device"),
                ))
            }
            "media" if v == "disk" => {}
            "readonly" | "read-only" => ro = parse_on_off(o, &v)?,
            "cache.direct" => direct = parse_on_off(o, &v)?,
            "cache.no-flush" => no_flush = parse_on_off(o, &v)?,
            "cache" => {
                (direct, no_flush) = match v.as_str() {
                    "none" => (true, false),
                    "writeback" | "writethrough" => (false, false),
                    "directsync" => (true, false),
                    "unsafe" => (false, true),
                    _ => return Err(bad(o, format!("invalid cache option '{v}'"))),
                }
            }
            "discard" | "detect-zeroes" => {
                extra.insert(k, Value::String(v));
            }
            "aio" => match v.as_str() {
                "threads" | "native" | "io_uring" => aio = Some(v),
                _ => return Err(bad(o, "invalid aio option")),
            },
            _ => return Err(bad(o, format!("Invalid parameter '{k}'"))),
        }
    }
    let file = file.ok_or_else(|| bad(o, "file= is required"))?;
    let id = id.ok_or_else(|| bad(o, "id= is required (bulkhead drives are if=none)"))?;
    let format = format.ok_or_else(|| {
        bad(
            o,
            "format= is required (bulkhead does not probe image formats)",
        )
    })?;
    if !matches!(format.as_str(), "raw" | "qcow2") {
        return Err(bad(o, format!("'{format}' invalid format")));
    }
    let cache = serde_json::json!({"direct": direct, "no-flush": no_flush});
    let mut proto = Map::new();
    proto.insert("driver".into(), "file".into());
    proto.insert("filename".into(), file.into());
    proto.insert("cache".into(), cache.clone());
    if let Some(a) = aio {
        proto.insert("aio".into(), a.into());
    }
    let mut top = Map::new();
    top.insert("driver".into(), format.into());
    top.insert("node-name".into(), id.into());
    top.insert("cache".into(), cache);
    if ro {
        top.insert("read-only".into(), Value::Bool(true));
        proto.insert("read-only".into(), Value::Bool(true));
    }
    top.extend(extra);
    top.insert("file".into(), Value::Object(proto));
    Ok(top)
}

/// `-device DRIVER,prop=value,...` or `-device {"driver": ...}`: the
/// properties `device_add` takes (checked when applied).
pub fn parse_device(s: &str) -> Result<Map<String, Value>> {
    if s.trim_start().starts_with('{') {
        return serde_json::from_str::<Map<String, Value>>(s)
            .map_err(|e| bad("-device", format!("JSON parse error, {e}")));
    }
    Ok(keyval_pairs("-device", s, Some("driver"))?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect())
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
        assert_eq!(
            c.qmp,
            vec![PathBuf::from("/tmp/a.sock"), PathBuf::from("/tmp/b.sock")]
        );
        assert_eq!(c.name.as_deref(), Some("vm1"));
        assert_eq!(c.mem_size, 256 << 20);
        assert_eq!(c.cpus, 4);
        assert!(c.start_paused && c.no_shutdown);
        assert_eq!(c.serial, SerialSpec::Null);
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
    fn serial_backends_parse() {
        assert_eq!(
            parse_serial("file:/tmp/s").unwrap(),
            SerialSpec::File("/tmp/s".into())
        );
        assert_eq!(
            parse_serial("unix:/tmp/s,server=on,wait=off").unwrap(),
            SerialSpec::Unix("/tmp/s".into())
        );
        assert!(parse_serial("pty").is_err());
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
    fn smp_bounds_are_checked() {
        assert_eq!(parse_smp("cpus=2").unwrap(), 2);
        assert!(parse_smp("0").is_err());
        assert!(parse_smp("65").is_err());
    }

    #[test]
    fn blockdev_json_and_dotted_forms_give_the_same_options() {
        let json = parse_blockdev(
            r#"{"driver":"qcow2","node-name":"d0","read-only":true,"file":{"driver":"file","filename":"/x,y.img"}}"#,
        )
        .unwrap();
        let dotted = parse_blockdev(
            "driver=qcow2,node-name=d0,read-only=on,file.driver=file,file.filename=/x,,y.img",
        )
        .unwrap();
        assert_eq!(json, dotted);
        let implied = parse_blockdev("null-co,node-name=n0,size=1M").unwrap();
        assert_eq!(
            Value::Object(implied),
            serde_json::json!({"driver": "null-co", "node-name": "n0", "size": 1048576})
        );
    }

    #[test]
    fn blockdev_options_are_collected_in_order() {
        let c = parse(&args("-blockdev driver=file,node-name=f0,filename=/a -drive file=/b,format=raw,if=none,id=d1")).unwrap();
        assert_eq!(c.blockdevs.len(), 2);
        assert_eq!(c.blockdevs[0].option, "-blockdev");
        assert_eq!(c.blockdevs[1].options["node-name"], "d1");
    }

    #[test]
    fn bad_blockdev_values_are_rejected() {
        assert!(parse_blockdev("driver=file,read-only=maybe").is_err());
        assert!(parse_blockdev("driver=file,size=-1").is_err());
        assert!(parse_blockdev("driver=file,file=x,file.driver=y").is_err());
        assert!(parse_blockdev("{not json").is_err());
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

    #[test]
    fn drive_makes_a_format_node_over_a_file_node() {
        let d =
            parse_drive("file=/x.img,format=qcow2,if=none,id=disk0,readonly=on,cache.direct=on")
                .unwrap();
        assert_eq!(
            Value::Object(d),
            serde_json::json!({"driver": "qcow2", "node-name": "disk0", "read-only": true,
                "cache": {"direct": true, "no-flush": false},
                "file": {"driver": "file", "filename": "/x.img", "read-only": true,
                         "cache": {"direct": true, "no-flush": false}}})
        );
        assert!(parse_drive("file=/x.img,format=raw,if=virtio,id=d").is_err());
        assert!(parse_drive("file=/x.img,if=none,id=d").is_err());
        assert!(parse_drive("file=/x.img,format=raw,if=none").is_err());
    }

    #[test]
    fn drive_aio_goes_to_the_file_node_and_bad_values_get_qemus_message() {
        let d = parse_drive("file=/x.img,format=raw,if=none,id=d0,aio=io_uring").unwrap();
        assert_eq!(d["file"]["aio"], "io_uring");
        assert!(d.get("aio").is_none());
        let d = parse_drive("file=/x.img,format=raw,if=none,id=d0").unwrap();
        assert!(d["file"].get("aio").is_none());
        let e = parse_drive("file=/x.img,format=raw,if=none,id=d0,aio=foo").unwrap_err();
        assert!(e.to_string().ends_with("invalid aio option"), "{e}");
    }
}
