//! The table of built-in resources: group, version, kind, plural, scope, verbs, short names,
//! categories and subresources, as upstream's discovery documents them.

/// Verbs of an ordinary stored resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces cannot be deleted as a collection.
const NS_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const CREATE_ONLY: &[&str] = &["create"];
const READ_ONLY: &[&str] = &["get", "list"];

/// How a resource is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Stored under its own key.
    Stored,
    /// Stored as the same resource of another group-version (converted on the way), like
    /// autoscaling/v1 HPAs (stored as v2) and events.k8s.io Events (stored as core Events).
    Alias {
        group: &'static str,
        version: &'static str,
    },
    /// Never stored: a create computes an answer (reviews, bindings).
    Virtual,
}

/// A subresource and the kind its requests and responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// (group, version, kind) of the body; empty kind means "not an object" (logs, streams).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

const fn sub(
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
) -> Subresource {
    Subresource {
        name,
        group,
        version,
        kind,
        verbs,
    }
}

const STATUS_VERBS: &[&str] = &["get", "patch", "update"];
const GET: &[&str] = &["get"];
const CREATE: &[&str] = &["create"];
const PROXY: &[&str] = &["create", "delete", "get", "patch", "update"];

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    sub("status", group, version, kind, STATUS_VERBS)
}
const SCALE: Subresource = sub("scale", "autoscaling", "v1", "Scale", STATUS_VERBS);

/// One served resource of one group-version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    pub storage: Storage,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s.name == name)
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// The version whose key the objects are stored under.
    pub fn storage_version(&self) -> &'static str {
        match self.storage {
            Storage::Alias { version, .. } => version,
            _ => self.version,
        }
    }

    /// The group whose key the objects are stored under.
    pub fn storage_group(&self) -> &'static str {
        match self.storage {
            Storage::Alias { group, .. } => group,
            _ => self.group,
        }
    }

    /// Whether writes to the main resource keep `status` (it has a status subresource).
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }

    /// Whether `metadata.generation` tracks spec changes (upstream: kinds with spec/status).
    pub fn tracks_generation(&self) -> bool {
        self.has_status() || matches!(self.kind, "PodDisruptionBudget" | "NetworkPolicy")
    }
}

struct R {
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    cats: &'static [&'static str],
    subs: &'static [Subresource],
    verbs: &'static [&'static str],
}

const fn r(kind: &'static str, plural: &'static str, namespaced: bool) -> R {
    R {
        kind,
        plural,
        namespaced,
        short: &[],
        cats: &[],
        subs: &[],
        verbs: ALL_VERBS,
    }
}

impl R {
    const fn short(mut self, s: &'static [&'static str]) -> Self {
        self.short = s;
        self
    }
    const fn all(mut self) -> Self {
        self.cats = &["all"];
        self
    }
    const fn subs(mut self, s: &'static [Subresource]) -> Self {
        self.subs = s;
        self
    }
    const fn verbs(mut self, v: &'static [&'static str]) -> Self {
        self.verbs = v;
        self
    }
}

/// A served group-version and its resources.
struct Gv {
    group: &'static str,
    version: &'static str,
    resources: &'static [R],
    storage: Storage,
}

const CORE: &[R] = &[
    r("Binding", "bindings", true).verbs(CREATE_ONLY),
    r("ComponentStatus", "componentstatuses", false)
        .short(&["cs"])
        .verbs(READ_ONLY),
    r("ConfigMap", "configmaps", true).short(&["cm"]),
    r("Endpoints", "endpoints", true).short(&["ep"]),
    r("Event", "events", true).short(&["ev"]),
    r("LimitRange", "limitranges", true).short(&["limits"]),
    r("Namespace", "namespaces", false)
        .short(&["ns"])
        .verbs(NS_VERBS)
        .subs(&[
            sub("finalize", "", "v1", "Namespace", &["update"]),
            status("", "v1", "Namespace"),
        ]),
    r("Node", "nodes", false).short(&["no"]).subs(&[
        sub("proxy", "", "v1", "NodeProxyOptions", PROXY),
        status("", "v1", "Node"),
    ]),
    r("PersistentVolumeClaim", "persistentvolumeclaims", true)
        .short(&["pvc"])
        .subs(&[status("", "v1", "PersistentVolumeClaim")]),
    r("PersistentVolume", "persistentvolumes", false)
        .short(&["pv"])
        .subs(&[status("", "v1", "PersistentVolume")]),
    r("Pod", "pods", true).short(&["po"]).all().subs(&[
        sub("attach", "", "v1", "PodAttachOptions", &["create", "get"]),
        sub("binding", "", "v1", "Binding", CREATE),
        sub("ephemeralcontainers", "", "v1", "Pod", STATUS_VERBS),
        sub("eviction", "policy", "v1", "Eviction", CREATE),
        sub("exec", "", "v1", "PodExecOptions", &["create", "get"]),
        sub("log", "", "v1", "Pod", GET),
        sub(
            "portforward",
            "",
            "v1",
            "PodPortForwardOptions",
            &["create", "get"],
        ),
        sub("proxy", "", "v1", "PodProxyOptions", PROXY),
        sub("resize", "", "v1", "Pod", STATUS_VERBS),
        status("", "v1", "Pod"),
    ]),
    r("PodTemplate", "podtemplates", true),
    r("ReplicationController", "replicationcontrollers", true)
        .short(&["rc"])
        .all()
        .subs(&[SCALE, status("", "v1", "ReplicationController")]),
    r("ResourceQuota", "resourcequotas", true)
        .short(&["quota"])
        .subs(&[status("", "v1", "ResourceQuota")]),
    r("Secret", "secrets", true),
    r("ServiceAccount", "serviceaccounts", true)
        .short(&["sa"])
        .subs(&[sub(
            "token",
            "authentication.k8s.io",
            "v1",
            "TokenRequest",
            CREATE,
        )]),
    r("Service", "services", true).short(&["svc"]).all().subs(&[
        sub("proxy", "", "v1", "ServiceProxyOptions", PROXY),
        status("", "v1", "Service"),
    ]),
];

const APPS: &[R] = &[
    r("ControllerRevision", "controllerrevisions", true),
    r("DaemonSet", "daemonsets", true)
        .short(&["ds"])
        .all()
        .subs(&[status("apps", "v1", "DaemonSet")]),
    r("Deployment", "deployments", true)
        .short(&["deploy"])
        .all()
        .subs(&[SCALE, status("apps", "v1", "Deployment")]),
    r("ReplicaSet", "replicasets", true)
        .short(&["rs"])
        .all()
        .subs(&[SCALE, status("apps", "v1", "ReplicaSet")]),
    r("StatefulSet", "statefulsets", true)
        .short(&["sts"])
        .all()
        .subs(&[SCALE, status("apps", "v1", "StatefulSet")]),
];

const BATCH: &[R] = &[
    r("CronJob", "cronjobs", true)
        .short(&["cj"])
        .all()
        .subs(&[status("batch", "v1", "CronJob")]),
    r("Job", "jobs", true)
        .all()
        .subs(&[status("batch", "v1", "Job")]),
];

const HPA_V2: &[R] = &[
    r("HorizontalPodAutoscaler", "horizontalpodautoscalers", true)
        .short(&["hpa"])
        .all()
        .subs(&[status("autoscaling", "v2", "HorizontalPodAutoscaler")]),
];
const HPA_V1: &[R] = &[
    r("HorizontalPodAutoscaler", "horizontalpodautoscalers", true)
        .short(&["hpa"])
        .all()
        .subs(&[status("autoscaling", "v1", "HorizontalPodAutoscaler")]),
];

const POLICY: &[R] = &[r("PodDisruptionBudget", "poddisruptionbudgets", true)
    .short(&["pdb"])
    .subs(&[status("policy", "v1", "PodDisruptionBudget")])];

const RBAC: &[R] = &[
    r("ClusterRoleBinding", "clusterrolebindings", false),
    r("ClusterRole", "clusterroles", false),
    r("RoleBinding", "rolebindings", true),
    r("Role", "roles", true),
];

const COORDINATION: &[R] = &[r("Lease", "leases", true)];
const DISCOVERY: &[R] = &[r("EndpointSlice", "endpointslices", true)];
const EVENTS: &[R] = &[r("Event", "events", true).short(&["ev"])];

const NETWORKING: &[R] = &[
    r("IngressClass", "ingressclasses", false),
    r("Ingress", "ingresses", true)
        .short(&["ing"])
        .subs(&[status("networking.k8s.io", "v1", "Ingress")]),
    r("NetworkPolicy", "networkpolicies", true).short(&["netpol"]),
];

const STORAGE: &[R] = &[
    r("CSIDriver", "csidrivers", false),
    r("CSINode", "csinodes", false),
    r("CSIStorageCapacity", "csistoragecapacities", true),
    r("StorageClass", "storageclasses", false).short(&["sc"]),
    r("VolumeAttachment", "volumeattachments", false).subs(&[status(
        "storage.k8s.io",
        "v1",
        "VolumeAttachment",
    )]),
];

const SCHEDULING: &[R] = &[r("PriorityClass", "priorityclasses", false).short(&["pc"])];
const NODE: &[R] = &[r("RuntimeClass", "runtimeclasses", false)];

const CERTIFICATES: &[R] = &[r(
    "CertificateSigningRequest",
    "certificatesigningrequests",
    false,
)
.short(&["csr"])
.subs(&[
    sub(
        "approval",
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        STATUS_VERBS,
    ),
    status("certificates.k8s.io", "v1", "CertificateSigningRequest"),
])];

const ADMISSION: &[R] = &[
    r(
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
    r(
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        false,
    )
    .subs(&[status(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
    )]),
    r(
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        false,
    ),
    r(
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    ),
];

const APIEXTENSIONS: &[R] = &[r(
    "CustomResourceDefinition",
    "customresourcedefinitions",
    false,
)
.short(&["crd", "crds"])
.subs(&[status(
    "apiextensions.k8s.io",
    "v1",
    "CustomResourceDefinition",
)])];

const APIREGISTRATION: &[R] = &[r("APIService", "apiservices", false).subs(&[status(
    "apiregistration.k8s.io",
    "v1",
    "APIService",
)])];

const AUTHENTICATION: &[R] = &[
    r("SelfSubjectReview", "selfsubjectreviews", false).verbs(CREATE_ONLY),
    r("TokenReview", "tokenreviews", false).verbs(CREATE_ONLY),
];

const AUTHORIZATION: &[R] = &[
    r(
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        true,
    )
    .verbs(CREATE_ONLY),
    r("SelfSubjectAccessReview", "selfsubjectaccessreviews", false).verbs(CREATE_ONLY),
    r("SelfSubjectRulesReview", "selfsubjectrulesreviews", false).verbs(CREATE_ONLY),
    r("SubjectAccessReview", "subjectaccessreviews", false).verbs(CREATE_ONLY),
];

const fn gv(group: &'static str, version: &'static str, resources: &'static [R]) -> Gv {
    Gv {
        group,
        version,
        resources,
        storage: Storage::Stored,
    }
}

/// Every served group-version, each group's preferred version first, groups in upstream's
/// discovery order.
const GROUPS: &[Gv] = &[
    gv("", "v1", CORE),
    gv("apiregistration.k8s.io", "v1", APIREGISTRATION),
    gv("apps", "v1", APPS),
    Gv {
        group: "events.k8s.io",
        version: "v1",
        resources: EVENTS,
        storage: Storage::Alias {
            group: "",
            version: "v1",
        },
    },
    Gv {
        group: "authentication.k8s.io",
        version: "v1",
        resources: AUTHENTICATION,
        storage: Storage::Virtual,
    },
    Gv {
        group: "authorization.k8s.io",
        version: "v1",
        resources: AUTHORIZATION,
        storage: Storage::Virtual,
    },
    gv("autoscaling", "v2", HPA_V2),
    Gv {
        group: "autoscaling",
        version: "v1",
        resources: HPA_V1,
        storage: Storage::Alias {
            group: "autoscaling",
            version: "v2",
        },
    },
    gv("batch", "v1", BATCH),
    gv("certificates.k8s.io", "v1", CERTIFICATES),
    gv("networking.k8s.io", "v1", NETWORKING),
    gv("policy", "v1", POLICY),
    gv("rbac.authorization.k8s.io", "v1", RBAC),
    gv("storage.k8s.io", "v1", STORAGE),
    gv("admissionregistration.k8s.io", "v1", ADMISSION),
    gv("apiextensions.k8s.io", "v1", APIEXTENSIONS),
    gv("scheduling.k8s.io", "v1", SCHEDULING),
    gv("coordination.k8s.io", "v1", COORDINATION),
    gv("node.k8s.io", "v1", NODE),
    gv("discovery.k8s.io", "v1", DISCOVERY),
];

fn singular(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// All built-in resources, built once.
pub fn builtin() -> &'static [ResourceInfo] {
    static ALL: std::sync::OnceLock<Vec<ResourceInfo>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = Vec::new();
        for g in GROUPS {
            for res in g.resources {
                out.push(ResourceInfo {
                    group: g.group,
                    version: g.version,
                    kind: res.kind,
                    plural: res.plural,
                    singular: Box::leak(singular(res.kind).into_boxed_str()),
                    namespaced: res.namespaced,
                    verbs: res.verbs,
                    short_names: res.short,
                    categories: res.cats,
                    subresources: res.subs,
                    storage: g.storage,
                });
            }
        }
        out
    })
}

/// The served group-versions in discovery order: (group, version).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    GROUPS.iter().map(|g| (g.group, g.version)).collect()
}

/// Looks up a built-in resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    builtin()
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Looks up a built-in resource by group, version and kind.
pub fn find_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    builtin()
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// Splits an apiVersion into (group, version).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_is_unique_and_scale_is_autoscaling_v1() {
        let all = builtin();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(
                    !(a.group == b.group && a.version == b.version && a.plural == b.plural),
                    "duplicate {}/{}/{}",
                    a.group,
                    a.version,
                    a.plural
                );
            }
            if let Some(s) = a.subresource("scale") {
                assert_eq!((s.group, s.version, s.kind), ("autoscaling", "v1", "Scale"));
            }
        }
        assert_eq!(
            find("apps", "v1", "deployments").map(|r| r.kind),
            Some("Deployment")
        );
        assert!(find("", "v1", "pods").is_some_and(|r| r.categories == ["all"]));
        assert_eq!(
            find("autoscaling", "v1", "horizontalpodautoscalers").map(|r| r.storage_version()),
            Some("v2")
        );
    }
}
