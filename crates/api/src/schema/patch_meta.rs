//! The Kubernetes list and patch extensions of built-in types (`x-kubernetes-patch-strategy`,
//! `-patch-merge-key`, `-list-type`, `-list-map-keys`, `-map-type`), which k8s-openapi's
//! schemas lack.
//!
//! The table mirrors the `+patchStrategy`, `+patchMergeKey`, `+listType`, `+listMapKey`,
//! `+mapType` and `+structType` markers of upstream's `types.go`, for every type the served
//! kinds reach.

use serde_json::{Map, Value, json};

/// `(type, field, patch strategy, patch merge key, list type, list map keys, map type)`; an
/// empty field means the type itself, empty strings mean "not set", map keys are
/// comma-separated.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// Rows by the definition-name prefix of their package.
#[rustfmt::skip]
const TABLE: &[(&str, &[Row])] = &[
    ("io.k8s.api.admissionregistration.v1", &[
        ("MatchResources", "", "", "", "", "", "atomic"),
        ("MatchResources", "excludeResourceRules", "", "", "atomic", "", ""),
        ("MatchResources", "resourceRules", "", "", "atomic", "", ""),
        ("MutatingWebhook", "admissionReviewVersions", "", "", "atomic", "", ""),
        ("MutatingWebhook", "matchConditions", "merge", "name", "map", "name", ""),
        ("MutatingWebhook", "rules", "", "", "atomic", "", ""),
        ("MutatingWebhookConfiguration", "webhooks", "merge", "name", "map", "name", ""),
        ("NamedRuleWithOperations", "", "", "", "", "", "atomic"),
        ("NamedRuleWithOperations", "resourceNames", "", "", "atomic", "", ""),
        ("ParamKind", "", "", "", "", "", "atomic"),
        ("ParamRef", "", "", "", "", "", "atomic"),
        ("RuleWithOperations", "operations", "", "", "atomic", "", ""),
        ("TypeChecking", "expressionWarnings", "", "", "atomic", "", ""),
        ("ValidatingAdmissionPolicyBindingSpec", "validationActions", "", "", "set", "", ""),
        ("ValidatingAdmissionPolicySpec", "auditAnnotations", "", "", "atomic", "", ""),
        ("ValidatingAdmissionPolicySpec", "matchConditions", "merge", "name", "map", "name", ""),
        ("ValidatingAdmissionPolicySpec", "validations", "", "", "atomic", "", ""),
        ("ValidatingAdmissionPolicySpec", "variables", "merge", "name", "map", "name", ""),
        ("ValidatingAdmissionPolicyStatus", "conditions", "", "", "map", "type", ""),
        ("ValidatingWebhook", "admissionReviewVersions", "", "", "atomic", "", ""),
        ("ValidatingWebhook", "matchConditions", "merge", "name", "map", "name", ""),
        ("ValidatingWebhook", "rules", "", "", "atomic", "", ""),
        ("ValidatingWebhookConfiguration", "webhooks", "merge", "name", "map", "name", ""),
        ("Variable", "", "", "", "", "", "atomic"),
    ]),
    ("io.k8s.api.apps.v1", &[
        ("DaemonSetStatus", "conditions", "merge", "type", "map", "type", ""),
        ("DeploymentSpec", "strategy", "retainKeys", "", "", "", ""),
        ("DeploymentStatus", "conditions", "merge", "type", "map", "type", ""),
        ("ReplicaSetStatus", "conditions", "merge", "type", "map", "type", ""),
        ("StatefulSetSpec", "volumeClaimTemplates", "", "", "atomic", "", ""),
        ("StatefulSetStatus", "conditions", "merge", "type", "map", "type", ""),
    ]),
    ("io.k8s.api.authentication.v1", &[
        ("TokenRequestSpec", "audiences", "", "", "atomic", "", ""),
        ("TokenReviewSpec", "audiences", "", "", "atomic", "", ""),
        ("TokenReviewStatus", "audiences", "", "", "atomic", "", ""),
        ("UserInfo", "groups", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.api.authorization.v1", &[
        ("FieldSelectorAttributes", "requirements", "", "", "atomic", "", ""),
        ("LabelSelectorAttributes", "requirements", "", "", "atomic", "", ""),
        ("NonResourceRule", "nonResourceURLs", "", "", "atomic", "", ""),
        ("NonResourceRule", "verbs", "", "", "atomic", "", ""),
        ("ResourceRule", "apiGroups", "", "", "atomic", "", ""),
        ("ResourceRule", "resourceNames", "", "", "atomic", "", ""),
        ("ResourceRule", "resources", "", "", "atomic", "", ""),
        ("ResourceRule", "verbs", "", "", "atomic", "", ""),
        ("SubjectAccessReviewSpec", "groups", "", "", "atomic", "", ""),
        ("SubjectRulesReviewStatus", "nonResourceRules", "", "", "atomic", "", ""),
        ("SubjectRulesReviewStatus", "resourceRules", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.api.autoscaling.v1", &[
        ("CrossVersionObjectReference", "", "", "", "", "", "atomic"),
    ]),
    ("io.k8s.api.autoscaling.v2", &[
        ("HPAScalingRules", "policies", "", "", "atomic", "", ""),
        ("HorizontalPodAutoscalerSpec", "metrics", "", "", "atomic", "", ""),
        ("HorizontalPodAutoscalerStatus", "conditions", "merge", "type", "map", "type", ""),
        ("HorizontalPodAutoscalerStatus", "currentMetrics", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.api.batch.v1", &[
        ("CronJobStatus", "active", "", "", "atomic", "", ""),
        ("JobStatus", "conditions", "merge", "type", "atomic", "", ""),
        ("PodFailurePolicy", "rules", "", "", "atomic", "", ""),
        ("PodFailurePolicyOnExitCodesRequirement", "values", "", "", "set", "", ""),
        ("PodFailurePolicyRule", "onPodConditions", "", "", "atomic", "", ""),
        ("SuccessPolicy", "rules", "", "", "atomic", "", ""),
        ("UncountedTerminatedPods", "failed", "", "", "set", "", ""),
        ("UncountedTerminatedPods", "succeeded", "", "", "set", "", ""),
    ]),
    ("io.k8s.api.certificates.v1", &[
        ("CertificateSigningRequestSpec", "groups", "", "", "atomic", "", ""),
        ("CertificateSigningRequestSpec", "usages", "", "", "atomic", "", ""),
        ("CertificateSigningRequestStatus", "conditions", "", "", "map", "type", ""),
    ]),
    ("io.k8s.api.core.v1", &[
        ("Capabilities", "add", "", "", "atomic", "", ""),
        ("Capabilities", "drop", "", "", "atomic", "", ""),
        ("CephFSPersistentVolumeSource", "monitors", "", "", "atomic", "", ""),
        ("CephFSVolumeSource", "monitors", "", "", "atomic", "", ""),
        ("ComponentStatus", "conditions", "merge", "type", "map", "type", ""),
        ("ConfigMapKeySelector", "", "", "", "", "", "atomic"),
        ("ConfigMapProjection", "items", "", "", "atomic", "", ""),
        ("ConfigMapVolumeSource", "items", "", "", "atomic", "", ""),
        ("Container", "args", "", "", "atomic", "", ""),
        ("Container", "command", "", "", "atomic", "", ""),
        ("Container", "env", "merge", "name", "map", "name", ""),
        ("Container", "envFrom", "", "", "atomic", "", ""),
        ("Container", "ports", "merge", "containerPort", "map", "containerPort,protocol", ""),
        ("Container", "resizePolicy", "", "", "atomic", "", ""),
        ("Container", "volumeDevices", "merge", "devicePath", "map", "devicePath", ""),
        ("Container", "volumeMounts", "merge", "mountPath", "map", "mountPath", ""),
        ("ContainerImage", "names", "", "", "atomic", "", ""),
        ("ContainerStatus", "allocatedResourcesStatus", "merge", "name", "map", "name", ""),
        ("ContainerStatus", "volumeMounts", "merge", "mountPath", "map", "mountPath", ""),
        ("DownwardAPIProjection", "items", "", "", "atomic", "", ""),
        ("DownwardAPIVolumeSource", "items", "", "", "atomic", "", ""),
        ("EndpointAddress", "", "", "", "", "", "atomic"),
        ("EndpointPort", "", "", "", "", "", "atomic"),
        ("EndpointSubset", "addresses", "", "", "atomic", "", ""),
        ("EndpointSubset", "notReadyAddresses", "", "", "atomic", "", ""),
        ("EndpointSubset", "ports", "", "", "atomic", "", ""),
        ("Endpoints", "subsets", "", "", "atomic", "", ""),
        ("ExecAction", "command", "", "", "atomic", "", ""),
        ("FCVolumeSource", "targetWWNs", "", "", "atomic", "", ""),
        ("FCVolumeSource", "wwids", "", "", "atomic", "", ""),
        ("HTTPGetAction", "httpHeaders", "", "", "atomic", "", ""),
        ("HostAlias", "hostnames", "", "", "atomic", "", ""),
        ("ISCSIPersistentVolumeSource", "portals", "", "", "atomic", "", ""),
        ("ISCSIVolumeSource", "portals", "", "", "atomic", "", ""),
        ("LimitRangeSpec", "limits", "", "", "atomic", "", ""),
        ("LinuxContainerUser", "supplementalGroups", "", "", "atomic", "", ""),
        ("LoadBalancerIngress", "ports", "", "", "atomic", "", ""),
        ("LoadBalancerStatus", "ingress", "", "", "atomic", "", ""),
        ("LocalObjectReference", "", "", "", "", "", "atomic"),
        ("NamespaceSpec", "finalizers", "", "", "atomic", "", ""),
        ("NamespaceStatus", "conditions", "merge", "type", "map", "type", ""),
        ("NodeAffinity", "preferredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", "", ""),
        ("NodeSelector", "", "", "", "", "", "atomic"),
        ("NodeSelector", "nodeSelectorTerms", "", "", "atomic", "", ""),
        ("NodeSelectorRequirement", "values", "", "", "atomic", "", ""),
        ("NodeSelectorTerm", "", "", "", "", "", "atomic"),
        ("NodeSelectorTerm", "matchExpressions", "", "", "atomic", "", ""),
        ("NodeSelectorTerm", "matchFields", "", "", "atomic", "", ""),
        ("NodeSpec", "podCIDRs", "merge", "", "set", "", ""),
        ("NodeSpec", "taints", "", "", "atomic", "", ""),
        ("NodeStatus", "addresses", "merge", "type", "map", "type", ""),
        ("NodeStatus", "conditions", "merge", "type", "map", "type", ""),
        ("NodeStatus", "images", "", "", "atomic", "", ""),
        ("NodeStatus", "runtimeHandlers", "", "", "atomic", "", ""),
        ("NodeStatus", "volumesAttached", "", "", "atomic", "", ""),
        ("NodeStatus", "volumesInUse", "", "", "atomic", "", ""),
        ("ObjectFieldSelector", "", "", "", "", "", "atomic"),
        ("ObjectReference", "", "", "", "", "", "atomic"),
        ("PersistentVolumeClaimSpec", "accessModes", "", "", "atomic", "", ""),
        ("PersistentVolumeClaimStatus", "accessModes", "", "", "atomic", "", ""),
        ("PersistentVolumeClaimStatus", "allocatedResourceStatuses", "", "", "", "", "granular"),
        ("PersistentVolumeClaimStatus", "conditions", "merge", "type", "map", "type", ""),
        ("PersistentVolumeSpec", "accessModes", "", "", "atomic", "", ""),
        ("PersistentVolumeSpec", "claimRef", "", "", "", "", "granular"),
        ("PersistentVolumeSpec", "mountOptions", "", "", "atomic", "", ""),
        ("PodAffinity", "preferredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", "", ""),
        ("PodAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", "", ""),
        ("PodAffinityTerm", "matchLabelKeys", "", "", "atomic", "", ""),
        ("PodAffinityTerm", "mismatchLabelKeys", "", "", "atomic", "", ""),
        ("PodAffinityTerm", "namespaces", "", "", "atomic", "", ""),
        ("PodAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", "", ""),
        ("PodAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "", "", "atomic", "", ""),
        ("PodDNSConfig", "nameservers", "", "", "atomic", "", ""),
        ("PodDNSConfig", "options", "", "", "atomic", "", ""),
        ("PodDNSConfig", "searches", "", "", "atomic", "", ""),
        ("PodSecurityContext", "supplementalGroups", "", "", "atomic", "", ""),
        ("PodSecurityContext", "sysctls", "", "", "atomic", "", ""),
        ("PodSpec", "containers", "merge", "name", "map", "name", ""),
        ("PodSpec", "ephemeralContainers", "merge", "name", "map", "name", ""),
        ("PodSpec", "hostAliases", "merge", "ip", "map", "ip", ""),
        ("PodSpec", "imagePullSecrets", "merge", "name", "map", "name", ""),
        ("PodSpec", "initContainers", "merge", "name", "map", "name", ""),
        ("PodSpec", "nodeSelector", "", "", "", "", "atomic"),
        ("PodSpec", "readinessGates", "", "", "atomic", "", ""),
        ("PodSpec", "resourceClaims", "merge,retainKeys", "name", "map", "name", ""),
        ("PodSpec", "schedulingGates", "merge", "name", "map", "name", ""),
        ("PodSpec", "tolerations", "", "", "atomic", "", ""),
        ("PodSpec", "topologySpreadConstraints", "merge", "topologyKey", "map", "topologyKey,whenUnsatisfiable", ""),
        ("PodSpec", "volumes", "merge,retainKeys", "name", "map", "name", ""),
        ("PodStatus", "conditions", "merge", "type", "map", "type", ""),
        ("PodStatus", "containerStatuses", "", "", "atomic", "", ""),
        ("PodStatus", "ephemeralContainerStatuses", "", "", "atomic", "", ""),
        ("PodStatus", "hostIPs", "merge", "ip", "atomic", "", ""),
        ("PodStatus", "initContainerStatuses", "", "", "atomic", "", ""),
        ("PodStatus", "podIPs", "merge", "ip", "map", "ip", ""),
        ("PodStatus", "resourceClaimStatuses", "merge,retainKeys", "name", "map", "name", ""),
        ("ProjectedVolumeSource", "sources", "", "", "atomic", "", ""),
        ("RBDPersistentVolumeSource", "monitors", "", "", "atomic", "", ""),
        ("RBDVolumeSource", "monitors", "", "", "atomic", "", ""),
        ("ReplicationControllerSpec", "selector", "", "", "", "", "atomic"),
        ("ReplicationControllerStatus", "conditions", "merge", "type", "map", "type", ""),
        ("ResourceFieldSelector", "", "", "", "", "", "atomic"),
        ("ResourceQuotaSpec", "scopes", "", "", "atomic", "", ""),
        ("ResourceRequirements", "claims", "", "", "map", "name", ""),
        ("ResourceStatus", "resources", "", "", "map", "resourceID", ""),
        ("ScopeSelector", "", "", "", "", "", "atomic"),
        ("ScopeSelector", "matchExpressions", "", "", "atomic", "", ""),
        ("ScopedResourceSelectorRequirement", "values", "", "", "atomic", "", ""),
        ("SecretKeySelector", "", "", "", "", "", "atomic"),
        ("SecretProjection", "items", "", "", "atomic", "", ""),
        ("SecretReference", "", "", "", "", "", "atomic"),
        ("SecretVolumeSource", "items", "", "", "atomic", "", ""),
        ("ServiceAccount", "imagePullSecrets", "", "", "atomic", "", ""),
        ("ServiceAccount", "secrets", "merge", "name", "map", "name", ""),
        ("ServiceSpec", "clusterIPs", "", "", "atomic", "", ""),
        ("ServiceSpec", "externalIPs", "", "", "atomic", "", ""),
        ("ServiceSpec", "ipFamilies", "", "", "atomic", "", ""),
        ("ServiceSpec", "loadBalancerSourceRanges", "", "", "atomic", "", ""),
        ("ServiceSpec", "ports", "merge", "port", "map", "port,protocol", ""),
        ("ServiceSpec", "selector", "", "", "", "", "atomic"),
        ("ServiceStatus", "conditions", "merge", "type", "map", "type", ""),
        ("TopologySelectorLabelRequirement", "values", "", "", "atomic", "", ""),
        ("TopologySelectorTerm", "", "", "", "", "", "atomic"),
        ("TopologySelectorTerm", "matchLabelExpressions", "", "", "atomic", "", ""),
        ("TopologySpreadConstraint", "matchLabelKeys", "", "", "atomic", "", ""),
        ("TypedLocalObjectReference", "", "", "", "", "", "atomic"),
    ]),
    ("io.k8s.api.discovery.v1", &[
        ("Endpoint", "addresses", "", "", "set", "", ""),
        ("EndpointHints", "forNodes", "", "", "atomic", "", ""),
        ("EndpointHints", "forZones", "", "", "atomic", "", ""),
        ("EndpointPort", "", "", "", "", "", "atomic"),
        ("EndpointSlice", "endpoints", "", "", "atomic", "", ""),
        ("EndpointSlice", "ports", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.api.networking.v1", &[
        ("HTTPIngressRuleValue", "paths", "", "", "atomic", "", ""),
        ("IPBlock", "except", "", "", "atomic", "", ""),
        ("IngressLoadBalancerIngress", "ports", "", "", "atomic", "", ""),
        ("IngressLoadBalancerStatus", "ingress", "", "", "atomic", "", ""),
        ("IngressSpec", "rules", "", "", "atomic", "", ""),
        ("IngressSpec", "tls", "", "", "atomic", "", ""),
        ("IngressTLS", "hosts", "", "", "atomic", "", ""),
        ("NetworkPolicyEgressRule", "ports", "", "", "atomic", "", ""),
        ("NetworkPolicyEgressRule", "to", "", "", "atomic", "", ""),
        ("NetworkPolicyIngressRule", "from", "", "", "atomic", "", ""),
        ("NetworkPolicyIngressRule", "ports", "", "", "atomic", "", ""),
        ("NetworkPolicySpec", "egress", "", "", "atomic", "", ""),
        ("NetworkPolicySpec", "ingress", "", "", "atomic", "", ""),
        ("NetworkPolicySpec", "policyTypes", "", "", "atomic", "", ""),
        ("ServiceBackendPort", "", "", "", "", "", "atomic"),
    ]),
    ("io.k8s.api.node.v1", &[
        ("Scheduling", "nodeSelector", "", "", "", "", "atomic"),
        ("Scheduling", "tolerations", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.api.policy.v1", &[
        ("PodDisruptionBudgetSpec", "selector", "replace", "", "", "", ""),
        ("PodDisruptionBudgetStatus", "conditions", "merge", "type", "map", "type", ""),
    ]),
    ("io.k8s.api.rbac.v1", &[
        ("AggregationRule", "clusterRoleSelectors", "", "", "atomic", "", ""),
        ("ClusterRole", "rules", "", "", "atomic", "", ""),
        ("ClusterRoleBinding", "subjects", "", "", "atomic", "", ""),
        ("PolicyRule", "apiGroups", "", "", "atomic", "", ""),
        ("PolicyRule", "nonResourceURLs", "", "", "atomic", "", ""),
        ("PolicyRule", "resourceNames", "", "", "atomic", "", ""),
        ("PolicyRule", "resources", "", "", "atomic", "", ""),
        ("PolicyRule", "verbs", "", "", "atomic", "", ""),
        ("Role", "rules", "", "", "atomic", "", ""),
        ("RoleBinding", "subjects", "", "", "atomic", "", ""),
        ("RoleRef", "", "", "", "", "", "atomic"),
        ("Subject", "", "", "", "", "", "atomic"),
    ]),
    ("io.k8s.api.storage.v1", &[
        ("CSIDriverSpec", "tokenRequests", "", "", "atomic", "", ""),
        ("CSIDriverSpec", "volumeLifecycleModes", "", "", "set", "", ""),
        ("CSINodeDriver", "topologyKeys", "", "", "atomic", "", ""),
        ("CSINodeSpec", "drivers", "merge", "name", "map", "name", ""),
        ("StorageClass", "allowedTopologies", "", "", "atomic", "", ""),
        ("StorageClass", "mountOptions", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1", &[
        ("CustomResourceDefinitionNames", "categories", "", "", "atomic", "", ""),
        ("CustomResourceDefinitionNames", "shortNames", "", "", "atomic", "", ""),
        ("CustomResourceDefinitionSpec", "versions", "", "", "atomic", "", ""),
        ("CustomResourceDefinitionStatus", "conditions", "", "", "map", "type", ""),
        ("CustomResourceDefinitionStatus", "storedVersions", "", "", "atomic", "", ""),
        ("CustomResourceDefinitionVersion", "additionalPrinterColumns", "", "", "atomic", "", ""),
        ("CustomResourceDefinitionVersion", "selectableFields", "", "", "atomic", "", ""),
        ("JSONSchemaProps", "allOf", "", "", "atomic", "", ""),
        ("JSONSchemaProps", "anyOf", "", "", "atomic", "", ""),
        ("JSONSchemaProps", "enum", "", "", "atomic", "", ""),
        ("JSONSchemaProps", "oneOf", "", "", "atomic", "", ""),
        ("JSONSchemaProps", "required", "", "", "atomic", "", ""),
        ("JSONSchemaProps", "x-kubernetes-list-map-keys", "", "", "atomic", "", ""),
        ("JSONSchemaProps", "x-kubernetes-validations", "merge", "rule", "map", "rule", ""),
        ("WebhookConversion", "conversionReviewVersions", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.apimachinery.pkg.apis.meta.v1", &[
        ("DeleteOptions", "dryRun", "", "", "atomic", "", ""),
        ("FieldSelectorRequirement", "values", "", "", "atomic", "", ""),
        ("LabelSelector", "", "", "", "", "", "atomic"),
        ("LabelSelector", "matchExpressions", "", "", "atomic", "", ""),
        ("LabelSelectorRequirement", "values", "", "", "atomic", "", ""),
        ("ObjectMeta", "finalizers", "merge", "", "set", "", ""),
        ("ObjectMeta", "managedFields", "", "", "atomic", "", ""),
        ("ObjectMeta", "ownerReferences", "merge", "uid", "map", "uid", ""),
        ("OwnerReference", "", "", "", "", "", "atomic"),
        ("StatusDetails", "causes", "", "", "atomic", "", ""),
    ]),
    ("io.k8s.kube-aggregator.pkg.apis.apiregistration.v1", &[
        ("APIServiceSpec", "caBundle", "", "", "atomic", "", ""),
        ("APIServiceStatus", "conditions", "merge", "type", "map", "type", ""),
    ]),
];

/// Adds the extensions of `TABLE` to the definitions (by upstream definition name) they
/// describe, the way upstream's OpenAPI carries them: on the property schema, next to the
/// `allOf` that wraps a reference.
pub(crate) fn apply(defs: &mut Map<String, Value>) {
    for (package, rows) in TABLE {
        for &(ty, field, strategy, merge_key, list_type, map_keys, map_type) in *rows {
            let Some(Value::Object(def)) = defs.get_mut(&format!("{package}.{ty}")) else {
                continue;
            };
            let target = if field.is_empty() {
                def
            } else {
                match def.get_mut("properties").and_then(|p| p.get_mut(field)) {
                    Some(Value::Object(prop)) => prop,
                    _ => continue,
                }
            };
            if let Some(reference) = target.remove("$ref") {
                target.insert("allOf".into(), json!([{ "$ref": reference }]));
            }
            let mut set = |key: &str, value: &str| {
                if !value.is_empty() {
                    target.insert(format!("x-kubernetes-{key}"), value.into());
                }
            };
            set("patch-strategy", strategy);
            set("patch-merge-key", merge_key);
            set("list-type", list_type);
            set("map-type", map_type);
            if !map_keys.is_empty() {
                target.insert(
                    "x-kubernetes-list-map-keys".into(),
                    map_keys.split(',').collect::<Vec<_>>().into(),
                );
            }
        }
    }
}
