//! Server-side printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): the
//! `meta.k8s.io/v1` Table upstream's printers produce for each kind, so `kubectl get` shows the
//! same columns and cells against skiff as against a real apiserver.
//!
//! Rows are computed with upstream's `Wide: true` (the server always sends the `-o wide`
//! cells; kubectl hides columns with priority > 0). Lists are serialized straight into a
//! byte buffer by [`write_table`] so that large lists never build an intermediate `Value` and
//! `includeObject=Metadata` borrows each object's metadata instead of cloning it; [`table`]
//! builds the same document as a `Value` for small lists and single objects.

mod cluster;
mod columns;
mod crd;
mod duration;
mod format;
#[cfg(test)]
mod tests;
mod workloads;

use std::borrow::Borrow;

use jiff::Timestamp;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use serde_json::Value;

pub use crd::{CrdColumn, crd_columns, crd_row};
pub use duration::human_duration;

/// A `TableColumnDefinition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: &'static str,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// `name` for the column holding the object name, otherwise empty.
    pub format: &'static str,
    pub description: &'static str,
    /// 0 for default output, 1 for columns only shown by `-o wide`.
    pub priority: i32,
}

/// The `includeObject` query parameter: what each row's `object` carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    /// A `PartialObjectMetadata` with the object's metadata (upstream's default).
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    /// Parses the query parameter; `None` for values upstream rejects with 400.
    pub fn parse(param: &str) -> Option<Self> {
        match param {
            "" | "Metadata" => Some(Self::Metadata),
            "None" => Some(Self::None),
            "Object" => Some(Self::Object),
            _ => None,
        }
    }
}

/// The list metadata copied onto the Table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListMeta<'a> {
    pub resource_version: &'a str,
    pub continue_token: Option<&'a str>,
    pub remaining_item_count: Option<u64>,
}

type RowFn = fn(&Value, Timestamp) -> Vec<Value>;

fn printer(group: &str, kind: &str) -> (&'static [Column], RowFn) {
    use cluster as c;
    use columns as col;
    use workloads as w;
    match (group, kind) {
        ("", "Pod") => (col::POD, w::pod),
        ("", "PodTemplate") => (col::POD_TEMPLATE, w::pod_template),
        ("", "ReplicationController") => (col::REPLICA_SET, w::replication_controller),
        ("", "Service") => (col::SERVICE, c::service),
        ("", "Endpoints") => (col::ENDPOINTS, c::endpoints),
        ("", "Node") => (col::NODE, c::node),
        ("", "Event") => (col::EVENT, c::core_event),
        ("events.k8s.io", "Event") => (col::EVENT, c::events_v1_event),
        ("", "Namespace") => (col::NAMESPACE, c::namespace),
        ("", "ConfigMap") => (col::CONFIG_MAP, c::config_map),
        ("", "Secret") => (col::SECRET, c::secret),
        ("", "ServiceAccount") => (col::SERVICE_ACCOUNT, c::service_account),
        ("", "PersistentVolume") => (col::PERSISTENT_VOLUME, c::persistent_volume),
        ("", "PersistentVolumeClaim") => (col::PERSISTENT_VOLUME_CLAIM, c::persistent_volume_claim),
        ("", "ResourceQuota") => (col::RESOURCE_QUOTA, c::resource_quota),
        ("apps", "Deployment") => (col::DEPLOYMENT, w::deployment),
        ("apps", "ReplicaSet") => (col::REPLICA_SET, w::replica_set),
        ("apps", "StatefulSet") => (col::STATEFUL_SET, w::stateful_set),
        ("apps", "DaemonSet") => (col::DAEMON_SET, w::daemon_set),
        ("apps", "ControllerRevision") => (col::CONTROLLER_REVISION, w::controller_revision),
        ("batch", "Job") => (col::JOB, w::job),
        ("batch", "CronJob") => (col::CRON_JOB, w::cron_job),
        ("autoscaling", "HorizontalPodAutoscaler") => (col::HPA, w::hpa),
        ("policy", "PodDisruptionBudget") => (col::PDB, w::pdb),
        ("discovery.k8s.io", "EndpointSlice") => (col::ENDPOINT_SLICE, c::endpoint_slice),
        ("networking.k8s.io", "Ingress") => (col::INGRESS, c::ingress),
        ("networking.k8s.io", "IngressClass") => (col::INGRESS_CLASS, c::ingress_class),
        ("networking.k8s.io", "NetworkPolicy") => (col::NETWORK_POLICY, c::network_policy),
        ("networking.k8s.io", "ServiceCIDR") => (col::SERVICE_CIDR, c::service_cidr),
        ("networking.k8s.io", "IPAddress") => (col::IP_ADDRESS, c::ip_address),
        ("rbac.authorization.k8s.io", "RoleBinding") => (col::ROLE_BINDING, c::role_binding),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            (col::CLUSTER_ROLE_BINDING, c::role_binding)
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => (col::CSR, c::csr),
        ("coordination.k8s.io", "Lease") => (col::LEASE, c::lease),
        ("scheduling.k8s.io", "PriorityClass") => (col::PRIORITY_CLASS, c::priority_class),
        ("node.k8s.io", "RuntimeClass") => (col::RUNTIME_CLASS, c::runtime_class),
        ("storage.k8s.io", "StorageClass") => (col::STORAGE_CLASS, c::storage_class),
        ("storage.k8s.io", "VolumeAttachment") => (col::VOLUME_ATTACHMENT, c::volume_attachment),
        ("storage.k8s.io", "CSINode") => (col::CSI_NODE, c::csi_node),
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => (col::WEBHOOK_CONFIGURATION, c::webhook_configuration),
        ("flowcontrol.apiserver.k8s.io", "FlowSchema") => (col::FLOW_SCHEMA, c::flow_schema),
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => {
            (col::PRIORITY_LEVEL, c::priority_level)
        }
        // Role, ClusterRole, CRDs, LimitRange and anything unknown: upstream's default convertor.
        _ => (col::DEFAULT, c::default_row),
    }
}

/// Column definitions for a built-in kind (`NAME`, `CREATED AT` for kinds without a printer).
pub fn columns(group: &str, kind: &str) -> &'static [Column] {
    printer(group, kind).0
}

/// The cells of one object, in [`columns`] order, including the wide (priority 1) cells.
pub fn row(group: &str, kind: &str, obj: &Value, now: Timestamp) -> Vec<Value> {
    (printer(group, kind).1)(obj, now)
}

/// The row `conditions` upstream attaches (only finished Pods carry any).
pub fn row_conditions(group: &str, kind: &str, obj: &Value) -> Option<Value> {
    match (group, kind) {
        ("", "Pod") => workloads::pod_conditions(obj),
        _ => None,
    }
}

/// Serializes the Table for `objects` of a built-in kind into `out`.
pub fn write_table(
    out: &mut Vec<u8>,
    group: &str,
    kind: &str,
    objects: impl IntoIterator<Item = impl Borrow<Value>>,
    include: IncludeObject,
    meta: &ListMeta<'_>,
    now: Timestamp,
) -> serde_json::Result<()> {
    let (cols, print) = printer(group, kind);
    write_rows(out, meta, cols, objects, include, |obj| {
        (print(obj, now), row_conditions(group, kind, obj))
    })
}

/// Serializes the Table for custom resources whose version has `columns` (see [`crd_columns`]).
pub fn write_crd_table(
    out: &mut Vec<u8>,
    columns: &[CrdColumn],
    objects: impl IntoIterator<Item = impl Borrow<Value>>,
    include: IncludeObject,
    meta: &ListMeta<'_>,
    now: Timestamp,
) -> serde_json::Result<()> {
    let name = Def {
        name: "Name",
        ty: "string",
        format: "name",
        description: columns::NAME_DOC,
        priority: 0,
    };
    let defs: Vec<Def<'_>> = std::iter::once(name)
        .chain(columns.iter().map(|c| Def {
            name: &c.name,
            ty: &c.ty,
            format: &c.format,
            description: &c.description,
            priority: c.priority,
        }))
        .collect();
    write_rows(out, meta, &defs, objects, include, |obj| {
        (crd_row(columns, obj, now), None)
    })
}

/// The whole Table as a `Value`; convenient for small lists and single objects.
pub fn table(
    group: &str,
    kind: &str,
    objects: &[Value],
    include: IncludeObject,
    meta: &ListMeta<'_>,
    now: Timestamp,
) -> Value {
    let (cols, print) = printer(group, kind);
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut r = serde_json::Map::new();
            r.insert("cells".into(), Value::Array(print(obj, now)));
            if let Some(c) = row_conditions(group, kind, obj) {
                r.insert("conditions".into(), c);
            }
            let object = serde_json::to_value(RowObject::new(include, obj)).unwrap_or(Value::Null);
            r.insert("object".into(), object);
            Value::Object(r)
        })
        .collect();
    serde_json::json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": TableMeta(meta),
        "columnDefinitions": cols,
        "rows": rows,
    })
}

#[derive(Serialize)]
struct Def<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    format: &'a str,
    description: &'a str,
    priority: i32,
}

/// `ListMeta` with Go's `omitempty` rules.
struct TableMeta<'a>(&'a ListMeta<'a>);

impl Serialize for TableMeta<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut map = ser.serialize_map(None)?;
        if !m.resource_version.is_empty() {
            map.serialize_entry("resourceVersion", m.resource_version)?;
        }
        if let Some(c) = m.continue_token.filter(|c| !c.is_empty()) {
            map.serialize_entry("continue", c)?;
        }
        if let Some(n) = m.remaining_item_count {
            map.serialize_entry("remainingItemCount", &n)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Row<'a> {
    cells: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conditions: Option<Value>,
    object: RowObject<'a>,
}

/// A row's `object`, borrowing from the listed object.
enum RowObject<'a> {
    None,
    Metadata(Option<&'a Value>),
    Object(&'a Value),
}

impl<'a> RowObject<'a> {
    fn new(include: IncludeObject, obj: &'a Value) -> Self {
        match include {
            IncludeObject::None => Self::None,
            IncludeObject::Metadata => Self::Metadata(obj.get("metadata")),
            IncludeObject::Object => Self::Object(obj),
        }
    }
}

impl Serialize for RowObject<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            // An empty RawExtension marshals as null.
            Self::None => ser.serialize_unit(),
            Self::Object(obj) => obj.serialize(ser),
            Self::Metadata(meta) => {
                let mut map = ser.serialize_map(Some(3))?;
                map.serialize_entry("kind", "PartialObjectMetadata")?;
                map.serialize_entry("apiVersion", "meta.k8s.io/v1")?;
                match meta {
                    Some(m) => map.serialize_entry("metadata", m)?,
                    None => map.serialize_entry("metadata", &serde_json::Map::new())?,
                }
                map.end()
            }
        }
    }
}

fn write_rows<C: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    meta: &ListMeta<'_>,
    columns: &C,
    objects: impl IntoIterator<Item = impl Borrow<Value>>,
    include: IncludeObject,
    mut cells: impl FnMut(&Value) -> (Vec<Value>, Option<Value>),
) -> serde_json::Result<()> {
    out.extend_from_slice(br#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":"#);
    serde_json::to_writer(&mut *out, &TableMeta(meta))?;
    out.extend_from_slice(br#","columnDefinitions":"#);
    serde_json::to_writer(&mut *out, columns)?;
    out.extend_from_slice(br#","rows":["#);
    // Objects may be parsed lazily by the caller: each is dropped once its row is written, so
    // a Table of many objects never holds them all at once.
    for (i, obj) in objects.into_iter().enumerate() {
        let obj = obj.borrow();
        if i > 0 {
            out.push(b',');
        }
        let (cells, conditions) = cells(obj);
        let row = Row {
            cells,
            conditions,
            object: RowObject::new(include, obj),
        };
        serde_json::to_writer(&mut *out, &row)?;
    }
    out.extend_from_slice(b"]}");
    Ok(())
}
