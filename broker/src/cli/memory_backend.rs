//! `-object memory-backend-ram|memfd|file,id=ID,size=SIZE[,share=on]
//! [,mem-path=PATH]` (keyval or JSON) with `-machine memory-backend=ID`:
//! what backs guest RAM. bulkhead's guest RAM is always a shared mapping
//! (its workers map it too): `memory-backend-ram` and `-memfd` are a memfd
//! (as without `-object`), `-file` is the file `mem-path` names (or a new
//! unlinked file in that directory); `share=off` is refused for the
//! backends where it would make a difference QEMU users see (`file`,
//! `memfd`), and so is every other property.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{bad, keyval_pairs, parse_on_off, CliError, Result};

/// What backs the memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// `memory-backend-ram`.
    Ram,
    /// `memory-backend-memfd`.
    Memfd,
    /// `memory-backend-file` with its `mem-path`.
    File(PathBuf),
}

/// One `-object memory-backend-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBackend {
    /// `id`.
    pub id: String,
    /// The kind.
    pub kind: BackendKind,
    /// `size` in bytes.
    pub size: u64,
}

impl MemoryBackend {
    /// QEMU's `-mem-path PATH`: the machine's RAM (`microvm.ram`) in a
    /// file backend at `path` (a new unlinked file if it is a directory).
    /// bulkhead maps it shared, as all its guest RAM (its workers map it
    /// too), so the guest's writes reach a named file; QEMU's `-mem-path`
    /// maps it private.
    pub fn mem_path(path: PathBuf, size: u64) -> Self {
        MemoryBackend {
            id: DEFAULT_RAM_ID.into(),
            kind: BackendKind::File(path),
            size,
        }
    }
}

/// QEMU's id of microvm's RAM backend (`-mem-path`, `-m` alone).
pub const DEFAULT_RAM_ID: &str = "microvm.ram";

/// The QOM types `-object` accepts, with the properties each honours.
pub const TYPES: [(&str, &[&str]); 3] = [
    ("memory-backend-ram", &["size", "share"]),
    ("memory-backend-memfd", &["size", "share"]),
    ("memory-backend-file", &["size", "share", "mem-path"]),
];

/// An `-object`'s properties, from keyval (`TYPE,id=...`) or JSON.
pub fn object_pairs(s: &str) -> Result<Vec<(String, String)>> {
    object_pairs_as("-object", s, "qom-type")
}

/// An option's properties from keyval (its first element under
/// `implied`) or JSON (libvirt writes both).
pub fn object_pairs_as(option: &str, s: &str, implied: &str) -> Result<Vec<(String, String)>> {
    if s.trim_start().starts_with('{') {
        Ok(serde_json::from_str::<Map<String, Value>>(s)
            .map_err(|e| bad(option, format!("JSON parse error, {e}")))?
            .into_iter()
            .map(|(k, v)| (k, as_text(&v)))
            .collect())
    } else {
        keyval_pairs(option, s, Some(implied))
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses `-object`.
pub fn parse_object(s: &str) -> Result<MemoryBackend> {
    let o = "-object";
    let pairs = object_pairs(s)?;
    let (mut ty, mut id, mut size, mut share, mut path) = (None, None, None, None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "qom-type" => ty = Some(v),
            "id" => id = Some(v),
            "size" => {
                size = Some(super::keyval::parse_size(&v).ok_or_else(|| {
                    bad(
                        o,
                        "Parameter 'size' expects a non-negative number below 2^64",
                    )
                })?)
            }
            "share" => share = Some(parse_on_off(o, &v)?),
            "mem-path" => path = Some(PathBuf::from(v)),
            _ => {
                return Err(CliError::Plain(format!(
                    "Property '{}.{k}' is not supported by bulkhead",
                    ty.as_deref().unwrap_or("object")
                )))
            }
        }
    }
    let ty = ty.ok_or_else(|| bad(o, "Parameter 'qom-type' is missing"))?;
    let id = id.ok_or_else(|| bad(o, "Parameter 'id' is missing"))?;
    let size = size.ok_or_else(|| CliError::Plain("property 'size' is required".into()))?;
    let kind = match ty.as_str() {
        "memory-backend-ram" => BackendKind::Ram,
        "memory-backend-memfd" => BackendKind::Memfd,
        "memory-backend-file" => BackendKind::File(
            path.take()
                .ok_or_else(|| CliError::Plain("mem-path property not set".into()))?,
        ),
        _ => return Err(CliError::Plain(format!("invalid object type: {ty}"))),
    };
    if path.is_some() {
        return Err(CliError::Plain(format!(
            "Property '{ty}.mem-path' not found"
        )));
    }
    let share_default = !matches!(kind, BackendKind::File(_));
    if matches!(kind, BackendKind::File(_) | BackendKind::Memfd) && !share.unwrap_or(share_default)
    {
        return Err(bad(
            o,
            format!("{ty}: share=off is not supported: bulkhead's guest memory is a shared mapping (give share=on)"),
        ));
    }
    Ok(MemoryBackend { id, kind, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_backends_parse_in_keyval_and_json() {
        let b =
            parse_object("memory-backend-file,id=m,size=64M,mem-path=/dev/shm,share=on").unwrap();
        assert_eq!(b.kind, BackendKind::File("/dev/shm".into()));
        assert_eq!(b.size, 64 << 20);
        let b =
            parse_object(r#"{"qom-type":"memory-backend-ram","id":"microvm.ram","size":67108864}"#)
                .unwrap();
        assert_eq!(
            (b.id.as_str(), b.kind, b.size),
            ("microvm.ram", BackendKind::Ram, 64 << 20)
        );
        assert!(parse_object("memory-backend-file,id=m,size=1M,mem-path=/x").is_err());
        assert!(parse_object("memory-backend-ram,id=m,size=1M,prealloc=on").is_err());
        assert!(parse_object("memory-backend-epc,id=m,size=1M").is_err());
    }
}
