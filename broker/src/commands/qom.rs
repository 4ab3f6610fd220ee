//! QOM introspection as libvirt probes it: `qom-list-types`,
//! `device-list-properties`, `qom-list-properties`, `qom-list`, `qom-get`
//! — over the types bulkhead really has (its machine, CPU models, disk
//! devices, platform devices) and a small object tree (`/machine`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::qmp::error::{QmpError, Result};
use crate::qmp::registry::{Command, Ctx};
use crate::qmp::schema::{member, optional, QapiType, SchemaType};

/// (type, parent, abstract) of every QOM type bulkhead has.
const TYPES: &[(&str, Option<&str>, bool)] = &[
    ("object", None, true),
    ("machine", Some("object"), true),
    ("x86-machine", Some("machine"), true),
    ("microvm-machine", Some("x86-machine"), false),
    ("none-machine", Some("machine"), false),
    ("accel", Some("object"), true),
    ("kvm-accel", Some("accel"), false),
    ("device", Some("object"), true),
    ("cpu", Some("device"), true),
    ("x86_64-cpu", Some("cpu"), true),
    ("host-x86_64-cpu", Some("x86_64-cpu"), false),
    ("max-x86_64-cpu", Some("x86_64-cpu"), false),
    ("qemu64-x86_64-cpu", Some("x86_64-cpu"), false),
    ("virtio-device", Some("device"), true),
    ("virtio-blk-device", Some("virtio-device"), false),
    ("vhost-user-blk", Some("virtio-device"), false),
    ("virtio-scsi-common", Some("virtio-device"), true),
    ("virtio-scsi-device", Some("virtio-scsi-common"), false),
    ("scsi-device", Some("device"), true),
    ("scsi-disk-base", Some("scsi-device"), true),
    ("scsi-cd", Some("scsi-disk-base"), false),
    ("scsi-hd", Some("scsi-disk-base"), false),
    ("sys-bus-device", Some("device"), true),
    ("virtio-mmio", Some("sys-bus-device"), false),
    ("ioapic", Some("sys-bus-device"), false),
    ("isa-device", Some("device"), true),
    ("memory-backend", Some("object"), true),
    ("memory-backend-ram", Some("memory-backend"), false),
    ("memory-backend-memfd", Some("memory-backend"), false),
    ("memory-backend-file", Some("memory-backend"), false),
    ("isa-serial", Some("isa-device"), false),
];

fn find(name: &str) -> Option<&'static (&'static str, Option<&'static str>, bool)> {
    TYPES.iter().find(|(n, ..)| *n == name)
}

fn is_a(name: &str, ancestor: &str) -> bool {
    let mut cur = Some(name);
    while let Some(c) = cur {
        if c == ancestor {
            return true;
        }
        cur = find(c).and_then(|t| t.1);
    }
    false
}

/// Arguments of `qom-list-types`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ListTypesArgs {
    /// Only types that are (or derive from) this one.
    pub implements: Option<String>,
    /// Include abstract types.
    #[serde(rename = "abstract")]
    pub include_abstract: Option<bool>,
}

impl QapiType for ListTypesArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "ListTypesArgs",
            members: vec![
                optional::<String>("implements"),
                optional::<bool>("abstract"),
            ],
        }
    }
}

/// QEMU's ObjectTypeInfo.
#[derive(Debug, Serialize)]
pub struct ObjectTypeInfo {
    /// The type.
    pub name: &'static str,
    /// Abstract (only listed when asked).
    #[serde(rename = "abstract", skip_serializing_if = "std::ops::Not::not")]
    pub is_abstract: bool,
    /// The parent type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<&'static str>,
}

impl QapiType for ObjectTypeInfo {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "ObjectTypeInfo",
            members: vec![
                member::<String>("name"),
                optional::<bool>("abstract"),
                optional::<String>("parent"),
            ],
        }
    }
}

/// `qom-list-types`.
pub struct QomListTypes;

impl Command for QomListTypes {
    const NAME: &'static str = "qom-list-types";
    // Answered from the command line and static tables.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "List the QOM types bulkhead has (machines, CPU models, devices).";
    type Args = ListTypesArgs;
    type Ret = Vec<ObjectTypeInfo>;

    fn run(args: ListTypesArgs, _: &Ctx<'_>) -> Result<Vec<ObjectTypeInfo>> {
        let all = args.include_abstract.unwrap_or(false);
        Ok(TYPES
            .iter()
            .filter(|(n, _, a)| {
                (all || !a) && args.implements.as_deref().is_none_or(|i| is_a(n, i))
            })
            .map(|&(name, parent, a)| ObjectTypeInfo {
                name,
                is_abstract: a,
                parent,
            })
            .collect())
    }
}

/// Arguments naming a type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypenameArgs {
    /// The type.
    pub typename: String,
}

impl QapiType for TypenameArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "TypenameArgs",
            members: vec![member::<String>("typename")],
        }
    }
}

fn prop(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "type": ty, "description": description})
}

/// The properties of `typename` that bulkhead honours.
fn properties(typename: &str) -> Vec<Value> {
    let queue = [
        prop("num-queues", "uint16", "number of request queues"),
        prop("queue-size", "uint16", "size of each queue"),
    ];
    match typename {
        "virtio-blk-device" => {
            let mut v = vec![
                prop(
                    "drive",
                    "str",
                    "Node name or ID of a block device to use as a backend",
                ),
                prop("serial", "str", "the disk's serial number"),
            ];
            v.extend(queue);
            v
        }
        "vhost-user-blk" => {
            let mut v = vec![prop(
                "chardev",
                "str",
                "ID of a chardev to use as a backend",
            )];
            v.extend(queue);
            v
        }
        "virtio-scsi-device" => vec![
            prop("num_queues", "uint32", ""),
            prop("virtqueue_size", "uint32", ""),
        ],
        "scsi-cd" | "scsi-hd" => vec![
            prop(
                "drive",
                "str",
                "Node name or ID of a block device to use as a backend",
            ),
            prop("channel", "uint32", ""),
            prop("scsi-id", "uint32", ""),
            prop("lun", "uint32", ""),
            prop("serial", "str", ""),
        ],
        "isa-serial" => vec![prop("iobase", "uint32", ""), prop("irq", "uint32", "")],
        t if is_a(t, "memory-backend") => crate::cli::memory_backend::TYPES
            .iter()
            .find(|(n, _)| *n == t)
            .map(|(_, props)| {
                props
                    .iter()
                    .map(|p| match *p {
                        "size" => prop(p, "int", "Size of the memory region (ex: 500M)"),
                        "share" => prop(p, "bool", "Mark the memory as private to QEMU or shared"),
                        _ => prop(p, "string", "File to be used for memory-backend-file"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        t if is_a(t, "x86_64-cpu") => crate::cli::cpu::feature_names()
            .map(|f| prop(f, "bool", ""))
            .collect(),
        t if is_a(t, "machine") => vec![prop("type", "string", "the machine type")],
        _ => Vec::new(),
    }
}

/// `device-list-properties`.
pub struct DeviceListProperties;

impl Command for DeviceListProperties {
    const NAME: &'static str = "device-list-properties";
    // Answered from the command line and static tables.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "List the properties a device type has in bulkhead.";
    type Args = TypenameArgs;
    type Ret = Vec<Value>;

    fn run(args: TypenameArgs, _: &Ctx<'_>) -> Result<Vec<Value>> {
        let t = &args.typename;
        match find(t) {
            None => Err(not_found(t)),
            Some((_, _, true)) => Err(QmpError::generic(
                "Parameter 'typename' expects a non-abstract device type",
            )),
            Some(_) if !is_a(t, "device") => Err(QmpError::generic(
                "Parameter 'typename' expects a device type",
            )),
            Some(_) => Ok(properties(t)),
        }
    }
}

/// `qom-list-properties`.
pub struct QomListProperties;

impl Command for QomListProperties {
    const NAME: &'static str = "qom-list-properties";
    // Answered from the command line and static tables.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "List the properties of a QOM type bulkhead has.";
    type Args = TypenameArgs;
    type Ret = Vec<Value>;

    fn run(args: TypenameArgs, _: &Ctx<'_>) -> Result<Vec<Value>> {
        match find(&args.typename) {
            None => Err(QmpError {
                class: ipc_proto::ErrorClass::DeviceNotFound,
                desc: format!("Class '{}' not found", args.typename),
            }),
            Some(_) => Ok(properties(&args.typename)),
        }
    }
}

/// Arguments of `qom-list`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// The object path.
    pub path: String,
}

impl QapiType for PathArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "PathArgs",
            members: vec![member::<String>("path")],
        }
    }
}

fn machine_type(ctx: &Ctx<'_>) -> &'static str {
    match ctx.machine.config().machine {
        crate::cli::MachineType::Microvm => "microvm-machine",
        crate::cli::MachineType::None => "none-machine",
    }
}

/// The object tree: (path, [(property, type)]).
fn object(ctx: &Ctx<'_>, path: &str) -> Option<Vec<(String, String)>> {
    let mut props: Vec<(String, String)> = fixed_object(ctx, path)?
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t))
        .collect();
    // `-object secret`s are children of /objects, as in QEMU.
    if path.trim_end_matches('/') == "/objects" {
        for s in &ctx.machine.config().secrets {
            props.push((s.id.clone(), "child<secret>".into()));
        }
    }
    Some(props)
}

/// The paths every bulkhead VM has, and each secret's.
fn fixed_object(ctx: &Ctx<'_>, path: &str) -> Option<Vec<(&'static str, String)>> {
    match path.trim_end_matches('/') {
        "" => Some(vec![
            ("type", "string".into()),
            ("objects", "child<container>".into()),
            ("machine", format!("child<{}>", machine_type(ctx))),
        ]),
        "/objects" => Some(vec![("type", "string".into())]),
        // QEMU 10's properties of a `secret`, in its order.
        p if secret_at(ctx, p).is_some() => Some(vec![
            ("type", "string".into()),
            ("iv", "string".into()),
            ("keyid", "string".into()),
            ("format", "QCryptoSecretFormat".into()),
            ("file", "string".into()),
            ("data", "string".into()),
        ]),
        "/machine" => Some(vec![
            ("type", "string".into()),
            ("unattached", "child<container>".into()),
            ("peripheral", "child<container>".into()),
            ("peripheral-anon", "child<container>".into()),
        ]),
        "/machine/unattached" | "/machine/peripheral" | "/machine/peripheral-anon" => {
            Some(vec![("type", "string".into())])
        }
        _ => None,
    }
}

/// The `-object secret` at `/objects/ID`.
fn secret_at<'a>(ctx: &'a Ctx<'_>, path: &str) -> Option<&'a crate::cli::secret::Secret> {
    let id = path.strip_prefix("/objects/")?;
    ctx.machine.config().secrets.iter().find(|s| s.id == id)
}

fn not_found(path: &str) -> QmpError {
    QmpError {
        class: ipc_proto::ErrorClass::DeviceNotFound,
        desc: format!("Device '{path}' not found"),
    }
}

/// `qom-list`.
pub struct QomList;

impl Command for QomList {
    const NAME: &'static str = "qom-list";
    // Answered from the command line and static tables.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str = "List the properties of an object (/, /machine and its containers).";
    type Args = PathArgs;
    type Ret = Vec<Value>;

    fn run(args: PathArgs, ctx: &Ctx<'_>) -> Result<Vec<Value>> {
        let props = object(ctx, &args.path).ok_or_else(|| not_found(&args.path))?;
        Ok(props
            .into_iter()
            .map(|(n, t)| json!({"name": n, "type": t}))
            .collect())
    }
}

/// Arguments of `qom-get`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QomGetArgs {
    /// The object path.
    pub path: String,
    /// The property.
    pub property: String,
}

impl QapiType for QomGetArgs {
    fn schema() -> SchemaType {
        SchemaType::Object {
            name: "QomGetArgs",
            members: vec![member::<String>("path"), member::<String>("property")],
        }
    }
}

/// `qom-get`.
pub struct QomGet;

impl Command for QomGet {
    const NAME: &'static str = "qom-get";
    // Answered from the command line and static tables.
    const BROKER_ONLY: bool = true;
    const DOC: &'static str =
        "Read a property of an object (the `type` of /, /machine and its containers).";
    type Args = QomGetArgs;
    type Ret = Value;

    fn run(args: QomGetArgs, ctx: &Ctx<'_>) -> Result<Value> {
        let props = object(ctx, &args.path).ok_or_else(|| not_found(&args.path))?;
        if !props.iter().any(|(n, _)| *n == args.property) {
            return Err(QmpError::generic(format!(
                "Property '{}.{}' not found",
                args.path, args.property
            )));
        }
        if let Some(s) = secret_at(ctx, args.path.trim_end_matches('/')) {
            return Ok(match args.property.as_str() {
                "type" => json!("secret"),
                // bulkhead refuses encrypted secrets: never an iv or key.
                "iv" | "keyid" => json!(""),
                "format" => json!("raw"),
                // As QEMU: the text given as `data=` (empty for `file=`).
                "data" => json!(match &s.file {
                    Some(_) => String::new(),
                    None => String::from_utf8_lossy(s.bytes()).into_owned(),
                }),
                "file" => json!(s
                    .file
                    .as_ref()
                    .map_or(String::new(), |f| f.display().to_string())),
                other => {
                    return Err(QmpError::generic(format!(
                        "Property '{}.{other}' not found",
                        args.path
                    )))
                }
            });
        }
        match (args.path.trim_end_matches('/'), args.property.as_str()) {
            ("/machine", "type") => Ok(json!(machine_type(ctx))),
            ("", "type") => Ok(json!("container")),
            (_, "type") => Ok(json!("container")),
            (p, prop) => Err(QmpError::generic(format!(
                "Property '{p}.{prop}' cannot be read: it is a child object"
            ))),
        }
    }
}
