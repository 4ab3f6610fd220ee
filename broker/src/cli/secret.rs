//! `-object secret,id=ID,data=TEXT|file=PATH[,format=raw]`: a secret the
//! broker keeps for the VM's life (libvirt passes its master key so), as
//! QEMU's `secret` object: read at start-up, listed under `/objects` in
//! QOM, looked up by id ([`Secret::bytes`]) by whatever needs one.
//! Encrypted secrets (`keyid=`, `iv=`: AES-256-CBC under another secret)
//! and `format=base64` are refused: bulkhead has no AES or base64 code.

use std::path::PathBuf;

use super::{bad, CliError, Result};

/// One secret. Its bytes never appear in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// `id`.
    pub id: String,
    /// `file=`, if the secret came from a file.
    pub file: Option<PathBuf>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("file", &self.file)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

impl Secret {
    /// The secret's value.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Parses a `secret` object's properties (from keyval or JSON), reading
/// `file=` now, as QEMU does when it creates the object.
pub fn parse(text: &str, pairs: &[(String, String)]) -> Result<Secret> {
    let at = |reason: String| CliError::At {
        option: "-object".into(),
        value: text.into(),
        reason,
    };
    let (mut id, mut data, mut file) = (None, None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "qom-type" => {}
            "id" => id = Some(v.clone()),
            "data" => data = Some(v.clone()),
            "file" => file = Some(PathBuf::from(v)),
            "format" if v == "raw" => {}
            "format" if v == "base64" => {
                return Err(bad(
                    "-object",
                    "secret: format=base64 is not supported by bulkhead (give format=raw)",
                ))
            }
            "format" => {
                return Err(at(format!(
                    "Parameter 'format' does not accept value '{v}'"
                )))
            }
            "keyid" | "iv" => {
                return Err(bad(
                    "-object",
                    format!(
                    "secret: {k}= (a secret encrypted with another) is not supported by bulkhead"
                ),
                ))
            }
            _ => return Err(CliError::Plain(format!("Property 'secret.{k}' not found"))),
        }
    }
    let id = id.ok_or_else(|| at("Parameter 'id' is missing".into()))?;
    let bytes = match (data, &file) {
        (Some(d), None) => d.into_bytes(),
        (None, Some(p)) => std::fs::read(p).map_err(|e| {
            // QEMU's words (glib's file error inside).
            CliError::Plain(format!(
                "Unable to read {0}: Failed to open file \u{201c}{0}\u{201d}: {1}",
                p.display(),
                os_text(&e)
            ))
        })?,
        (Some(_), Some(_)) => {
            return Err(CliError::Plain(
                "'file' and 'data' are mutually exclusive".into(),
            ))
        }
        (None, None) => {
            return Err(CliError::Plain(
                "Either 'file' or 'data' must be provided".into(),
            ))
        }
    };
    Ok(Secret { id, file, bytes })
}

fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        super::super::memory_backend::object_pairs(s).unwrap()
    }

    #[test]
    fn secrets_parse_from_data_and_file_with_qemus_errors() {
        let s = parse("", &pairs("secret,id=k,data=hunter2,format=raw")).unwrap();
        assert_eq!((s.id.as_str(), s.bytes()), ("k", &b"hunter2"[..]));
        assert!(!format!("{s:?}").contains("hunter2"));
        let dir = std::env::temp_dir().join(format!("bh-secret-{}", std::process::id()));
        std::fs::write(&dir, b"key").unwrap();
        let json = format!(
            r#"{{"qom-type":"secret","id":"m","format":"raw","file":"{}"}}"#,
            dir.display()
        );
        assert_eq!(parse("", &pairs(&json)).unwrap().bytes(), b"key");
        std::fs::remove_file(&dir).unwrap();
        let err = |s: &str| parse(s, &pairs(s)).unwrap_err().to_string();
        assert_eq!(
            err("secret,id=k"),
            "Either 'file' or 'data' must be provided"
        );
        assert_eq!(
            err("secret,id=s,file=/nonexist"),
            "Unable to read /nonexist: Failed to open file \u{201c}/nonexist\u{201d}: No such file or directory"
        );
        assert_eq!(
            err("secret,data=a"),
            "-object secret,data=a: Parameter 'id' is missing"
        );
        assert!(err("secret,id=s,data=a,keyid=m").contains("not supported"));
        assert!(err("secret,id=s,data=a,format=base64").contains("not supported"));
    }
}
