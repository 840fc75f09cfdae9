//! The live table of served resources: the built-ins plus the custom resources of every
//! established CRD, swapped atomically when a CRD changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use api::registry::{self, ResourceInfo, Storage};
use api::schema::{NodeId, Schemas};
use serde_json::Value;

/// A subresource as discovery shows it.
#[derive(Debug, Clone)]
pub struct Sub {
    pub name: String,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub verbs: Vec<String>,
}

/// What a custom resource version brings beyond the registry fields.
#[derive(Debug)]
pub struct CustomInfo {
    pub schemas: Schemas,
    pub root: Option<NodeId>,
    /// `additionalPrinterColumns` of this version.
    pub printer_columns: Vec<Value>,
    /// JSON paths of the scale subresource: (spec replicas, status replicas, label selector).
    pub scale: Option<(String, String, Option<String>)>,
    pub crd_name: String,
    /// The CRD object itself (for its OpenAPI document).
    pub crd: Arc<Value>,
}

/// One served resource of one group-version.
#[derive(Debug)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Vec<Sub>,
    /// The group-version objects are stored as (differs for converted versions like
    /// autoscaling/v1 and events.k8s.io/v1).
    pub storage_group: String,
    pub storage_version: String,
    pub is_virtual: bool,
    pub builtin: Option<&'static ResourceInfo>,
    pub custom: Option<CustomInfo>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    pub fn sub(&self, name: &str) -> Option<&Sub> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn has_status(&self) -> bool {
        self.sub("status").is_some()
    }

    /// Whether `metadata.generation` tracks spec changes.
    pub fn tracks_generation(&self) -> bool {
        match self.builtin {
            Some(b) => b.tracks_generation(),
            None => true,
        }
    }

    /// Whether objects are converted between the served and the stored form.
    pub fn converts(&self) -> bool {
        self.group != self.storage_group || self.version != self.storage_version
    }

    /// The store key prefix of all objects of this resource (every version shares it).
    pub fn prefix(&self) -> String {
        let g = if self.storage_group.is_empty() {
            "core"
        } else {
            &self.storage_group
        };
        format!("/registry/{g}/{}/", self.plural)
    }

    /// The store key prefix for one namespace (or all, for `None`).
    pub fn ns_prefix(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match ns {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    fn from_builtin(r: &'static ResourceInfo) -> Self {
        Resource {
            group: r.group.into(),
            version: r.version.into(),
            kind: r.kind.into(),
            list_kind: format!("{}List", r.kind),
            plural: r.plural.into(),
            singular: r.singular.into(),
            namespaced: r.namespaced,
            verbs: r.verbs.iter().map(|v| v.to_string()).collect(),
            short_names: r.short_names.iter().map(|v| v.to_string()).collect(),
            categories: r.categories.iter().map(|v| v.to_string()).collect(),
            subresources: r
                .subresources
                .iter()
                .map(|s| Sub {
                    name: s.name.into(),
                    group: s.group.into(),
                    version: s.version.into(),
                    kind: s.kind.into(),
                    verbs: s.verbs.iter().map(|v| v.to_string()).collect(),
                })
                .collect(),
            storage_group: r.storage_group().into(),
            storage_version: r.storage_version().into(),
            is_virtual: r.storage == Storage::Virtual,
            builtin: Some(r),
            custom: None,
        }
    }
}

/// Group-versions in discovery order, each with its resources.
#[derive(Debug, Default)]
pub struct Table {
    pub by_path: HashMap<(String, String, String), Arc<Resource>>,
    /// (group, version) in discovery order; a group's preferred version comes first.
    pub group_versions: Vec<(String, String)>,
    pub resources: Vec<Arc<Resource>>,
}

impl Table {
    fn insert(&mut self, r: Resource) {
        let gv = (r.group.clone(), r.version.clone());
        if !self.group_versions.contains(&gv) {
            self.group_versions.push(gv);
        }
        let r = Arc::new(r);
        self.by_path.insert(
            (r.group.clone(), r.version.clone(), r.plural.clone()),
            r.clone(),
        );
        self.resources.push(r);
    }

    pub fn resources_of<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Resource>> + 'a {
        self.resources
            .iter()
            .filter(move |r| r.group == group && r.version == version)
    }

    /// Versions of a group in preference order.
    pub fn versions_of(&self, group: &str) -> Vec<String> {
        self.group_versions
            .iter()
            .filter(|(g, _)| g == group)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Distinct groups in discovery order (the core group "" first).
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (g, _) in &self.group_versions {
            if !out.contains(g) {
                out.push(g.clone());
            }
        }
        out
    }
}

/// The served resources, readable without blocking writers for long.
#[derive(Debug)]
pub struct Resources {
    table: RwLock<Arc<Table>>,
}

impl Default for Resources {
    fn default() -> Self {
        Self::new()
    }
}

impl Resources {
    pub fn new() -> Self {
        Resources {
            table: RwLock::new(Arc::new(Self::build(Vec::new()))),
        }
    }

    fn build(custom: Vec<Resource>) -> Table {
        let mut t = Table::default();
        for r in registry::builtin() {
            t.insert(Resource::from_builtin(r));
        }
        // Served by the API server itself instead of an aggregated metrics-server.
        for r in crate::metrics::resources() {
            t.insert(r);
        }
        for r in custom {
            t.insert(r);
        }
        t
    }

    pub fn snapshot(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.snapshot()
            .by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Replaces the custom resources with `custom` (from the current set of CRDs).
    pub fn set_custom(&self, custom: Vec<Resource>) {
        let t = Arc::new(Self::build(custom));
        match self.table.write() {
            Ok(mut w) => *w = t,
            Err(poisoned) => *poisoned.into_inner() = t,
        }
    }
}

/// Builds the served resources of one CRD object (its served versions).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let Some(group) = spec["group"].as_str() else {
        return Vec::new();
    };
    let names = &spec["names"];
    let (Some(plural), Some(kind)) = (names["plural"].as_str(), names["kind"].as_str()) else {
        return Vec::new();
    };
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let list_kind = names["listKind"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let crd_name = crd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let crd_arc = Arc::new(crd.clone());
    let storage_version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut out = Vec::new();
    for v in versions
        .iter()
        .filter(|v| v["served"].as_bool() == Some(true))
    {
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        let mut schemas = Schemas::default();
        let root = v["schema"]["openAPIV3Schema"].is_object().then(|| {
            api::schema::crd::from_crd_schema(&mut schemas, &v["schema"]["openAPIV3Schema"])
        });
        let mut subresources = Vec::new();
        let subs = &v["subresources"];
        if subs["status"].is_object() {
            subresources.push(Sub {
                name: "status".into(),
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                verbs: vec!["get".into(), "patch".into(), "update".into()],
            });
        }
        let scale = subs["scale"].as_object().map(|s| {
            subresources.push(Sub {
                name: "scale".into(),
                group: "autoscaling".into(),
                version: "v1".into(),
                kind: "Scale".into(),
                verbs: vec!["get".into(), "patch".into(), "update".into()],
            });
            (
                s.get("specReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".spec.replicas")
                    .to_string(),
                s.get("statusReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".status.replicas")
                    .to_string(),
                s.get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        });
        out.push(Resource {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            list_kind: list_kind.clone(),
            plural: plural.into(),
            singular: singular.clone(),
            namespaced,
            verbs: registry::ALL_VERBS.iter().map(|v| v.to_string()).collect(),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            subresources,
            storage_group: group.into(),
            storage_version: storage_version.clone(),
            is_virtual: false,
            builtin: None,
            custom: Some(CustomInfo {
                schemas,
                root,
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                scale,
                crd_name: crd_name.clone(),
                crd: crd_arc.clone(),
            }),
        });
    }
    out
}
