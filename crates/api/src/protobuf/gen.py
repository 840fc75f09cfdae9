#!/usr/bin/env python3
"""Generates table.rs: the protobuf field tables of the Kubernetes kinds skiff decodes.

Field numbers and wire kinds come from the prost sources of the k8s-pb crate; JSON names
and which fields are required come from the serde code of the k8s-openapi crate (prost's
snake_case loses the Go casing: `pod_i_ps` is `podIPs`). Run from anywhere:

    python3 crates/api/src/protobuf/gen.py
"""

import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REGISTRY = os.path.expanduser("~/.cargo/registry/src")
PB_ROOT = glob.glob(os.path.join(REGISTRY, "*", "k8s-pb-0.9.0", "src"))[0]
OPENAPI_ROOT = glob.glob(os.path.join(REGISTRY, "*", "k8s-openapi-0.29.0", "src", "v1_33"))[0]
# Versions after 1.33, to tell k8s-pb's newer fields from unmatched ones.
OPENAPI_LATER = sorted(glob.glob(os.path.join(os.path.dirname(OPENAPI_ROOT), "v1_3[4-9]")))

# The group/versions whose kinds can arrive as protobuf request bodies.
API_VERSIONS = {
    "v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1",
    "rbac.authorization.k8s.io/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1",
    "events.k8s.io/v1", "networking.k8s.io/v1", "storage.k8s.io/v1", "scheduling.k8s.io/v1",
    "node.k8s.io/v1", "certificates.k8s.io/v1", "admissionregistration.k8s.io/v1",
    "authentication.k8s.io/v1", "authorization.k8s.io/v1", "apiextensions.k8s.io/v1",
}

# Subresource bodies: k8s-pb gives them no `Resource` impl.
SUBRESOURCE_KINDS = [
    ("authentication.k8s.io/v1", "TokenRequest", ("api::authentication::v1", "TokenRequest")),
    ("autoscaling/v1", "Scale", ("api::autoscaling::v1", "Scale")),
    ("policy/v1", "Eviction", ("api::policy::v1", "Eviction")),
]

META = "apimachinery::pkg::apis::meta::v1"
APIEXT = "apiextensions_apiserver::pkg::apis::apiextensions::v1"
# Messages whose JSON form is not an object of their fields (custom Go MarshalJSON).
SHAPES = {
    (META, "Time"): "Time",
    (META, "MicroTime"): "MicroTime",
    (META, "FieldsV1"): "RawJson",
    ("apimachinery::pkg::runtime", "RawExtension"): "RawJson",
    ("apimachinery::pkg::api::resource", "Quantity"): "Quantity",
    ("apimachinery::pkg::util::intstr", "IntOrString"): "IntOrString",
    (APIEXT, "Json"): "RawJson",
    (APIEXT, "JsonSchemaPropsOrArray"): "SchemaOrArray",
    (APIEXT, "JsonSchemaPropsOrBool"): "SchemaOrBool",
    (APIEXT, "JsonSchemaPropsOrStringArray"): "SchemaOrStringArray",
}

# Optional scalar fields that are Go pointers (or lack `omitempty`), so an explicit zero
# value is meaningful and must survive: Go's JSON encoder drops zero values only of
# non-pointer `omitempty` fields, and neither crate records which fields are pointers.
# Keyed by Go type name (same-named types of different groups share an entry); written by
# hand from the k8s.io/api v1.33 Go types, so gen.py checks only that each is a real field.
POINTERS = {
    "ObjectMeta": {"deletionGracePeriodSeconds"},
    "OwnerReference": {"controller", "blockOwnerDeletion"},
    "DeploymentSpec": {"replicas", "revisionHistoryLimit", "progressDeadlineSeconds"},
    "DeploymentStatus": {"collisionCount"},
    "StatefulSetSpec": {"replicas", "revisionHistoryLimit"},
    "StatefulSetStatus": {"collisionCount"},
    "RollingUpdateStatefulSetStrategy": {"partition"},
    "DaemonSetSpec": {"revisionHistoryLimit"},
    "DaemonSetStatus": {"collisionCount"},
    "ReplicaSetSpec": {"replicas"},
    "ReplicationControllerSpec": {"replicas"},
    "JobSpec": {
        "parallelism", "completions", "activeDeadlineSeconds", "backoffLimit",
        "backoffLimitPerIndex", "maxFailedIndexes", "manualSelector",
        "ttlSecondsAfterFinished", "completionMode", "suspend", "podReplacementPolicy",
        "managedBy",
    },
    "JobStatus": {"failedIndexes", "terminating", "ready"},
    "SuccessPolicyRule": {"succeededIndexes", "succeededCount"},
    "PodFailurePolicyOnExitCodesRequirement": {"containerName"},
    "CronJobSpec": {
        "timeZone", "startingDeadlineSeconds", "suspend", "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    },
    "PodSpec": {
        "terminationGracePeriodSeconds", "activeDeadlineSeconds", "automountServiceAccountToken",
        "shareProcessNamespace", "priority", "enableServiceLinks", "preemptionPolicy",
        "setHostnameAsFQDN", "hostUsers", "runtimeClassName",
    },
    "PodSecurityContext": {
        "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "fsGroupChangePolicy",
        "supplementalGroupsPolicy", "seLinuxChangePolicy",
    },
    "SecurityContext": {
        "privileged", "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
        "allowPrivilegeEscalation", "procMount",
    },
    "WindowsSecurityContextOptions": {
        "gmsaCredentialSpecName", "gmsaCredentialSpec", "runAsUserName", "hostProcess",
    },
    "SeccompProfile": {"localhostProfile"},
    "AppArmorProfile": {"localhostProfile"},
    "Container": {"restartPolicy"},
    "EphemeralContainer": {"restartPolicy"},
    "ContainerStatus": {"started", "stopSignal"},
    "VolumeMount": {"mountPropagation", "recursiveReadOnly"},
    "VolumeMountStatus": {"recursiveReadOnly"},
    "Toleration": {"tolerationSeconds"},
    "PodDNSConfigOption": {"value"},
    "TopologySpreadConstraint": {"minDomains", "nodeAffinityPolicy", "nodeTaintsPolicy"},
    "ConfigMapKeySelector": {"optional"},
    "SecretKeySelector": {"optional"},
    "ConfigMapEnvSource": {"optional"},
    "SecretEnvSource": {"optional"},
    "ConfigMapVolumeSource": {"defaultMode", "optional"},
    "SecretVolumeSource": {"defaultMode", "optional"},
    "ConfigMapProjection": {"optional"},
    "SecretProjection": {"optional"},
    "KeyToPath": {"mode"},
    "DownwardAPIVolumeFile": {"mode"},
    "DownwardAPIVolumeSource": {"defaultMode"},
    "ProjectedVolumeSource": {"defaultMode"},
    "ServiceAccountTokenProjection": {"expirationSeconds"},
    "ClusterTrustBundleProjection": {"name", "signerName", "optional"},
    "HostPathVolumeSource": {"type"},
    "CSIVolumeSource": {"readOnly", "fsType"},
    "ISCSIVolumeSource": {"initiatorName"},
    "ISCSIPersistentVolumeSource": {"initiatorName"},
    "AzureDiskVolumeSource": {"cachingMode", "fsType", "readOnly", "kind"},
    "AzureFilePersistentVolumeSource": {"secretNamespace"},
    "LocalVolumeSource": {"fsType"},
    "FCVolumeSource": {"lun"},
    "GRPCAction": {"service"},
    "Probe": {"terminationGracePeriodSeconds"},
    "PodResourceClaim": {"resourceClaimName", "resourceClaimTemplateName"},
    "Lifecycle": {"stopSignal"},
    "PersistentVolumeClaimSpec": {"storageClassName", "volumeMode", "volumeAttributesClassName"},
    "PersistentVolumeClaimStatus": {"currentVolumeAttributesClassName"},
    "PersistentVolumeSpec": {"volumeMode", "volumeAttributesClassName"},
    "TypedLocalObjectReference": {"apiGroup"},
    "TypedObjectReference": {"apiGroup", "namespace"},
    "ServiceSpec": {
        "ipFamilyPolicy", "allocateLoadBalancerNodePorts",
        "loadBalancerClass", "internalTrafficPolicy", "trafficDistribution",
    },
    "ServicePort": {"appProtocol"},
    "ClientIPConfig": {"timeoutSeconds"},
    "LoadBalancerIngress": {"ipMode"},
    "PortStatus": {"error"},
    "EndpointPort": {"name", "protocol", "port", "appProtocol"},
    "EndpointAddress": {"nodeName"},
    "ServiceAccount": {"automountServiceAccountToken"},
    "ConfigMap": {"immutable"},
    "Secret": {"immutable"},
    "NodeSwapStatus": {"capacity"},
    "NodeRuntimeHandlerFeatures": {"recursiveReadOnlyMounts", "userNamespaces"},
    "NodeFeatures": {"supplementalGroupsPolicy"},
    "PodDisruptionBudgetSpec": {"unhealthyPodEvictionPolicy"},
    "HorizontalPodAutoscalerSpec": {"minReplicas", "targetCPUUtilizationPercentage"},
    "HorizontalPodAutoscalerStatus": {
        "observedGeneration", "currentCPUUtilizationPercentage",
    },
    "MetricTarget": {"averageUtilization"},
    "MetricValueStatus": {"averageUtilization"},
    "HPAScalingRules": {"stabilizationWindowSeconds", "selectPolicy"},
    "LeaseSpec": {
        "holderIdentity", "leaseDurationSeconds", "leaseTransitions", "strategy",
        "preferredHolder",
    },
    "Endpoint": {"hostname", "nodeName", "zone"},
    "EndpointConditions": {"ready", "serving", "terminating"},
    "NetworkPolicyPort": {"protocol", "endPort"},
    "IngressSpec": {"ingressClassName"},
    "HTTPIngressPath": {"pathType"},
    "IngressClassParametersReference": {"apiGroup", "scope", "namespace"},
    "IngressPortStatus": {"error"},
    "StorageClass": {"reclaimPolicy", "allowVolumeExpansion", "volumeBindingMode"},
    "CSIDriverSpec": {
        "attachRequired", "podInfoOnMount", "storageCapacity", "fsGroupPolicy",
        "requiresRepublish", "seLinuxMount", "nodeAllocatableUpdatePeriodSeconds",
    },
    "VolumeNodeResources": {"count"},
    "VolumeAttachmentSource": {"persistentVolumeName"},
    "VolumeError": {"errorCode"},
    "PriorityClass": {"preemptionPolicy"},
    "CertificateSigningRequestSpec": {"expirationSeconds"},
    "TokenRequestSpec": {"expirationSeconds"},
    "TokenRequest": {"expirationSeconds"},
    "ValidatingWebhook": {
        "failurePolicy", "matchPolicy", "sideEffects", "timeoutSeconds",
    },
    "MutatingWebhook": {
        "failurePolicy", "matchPolicy", "sideEffects", "timeoutSeconds", "reinvocationPolicy",
    },
    "RuleWithOperations": {"scope"},
    "WebhookClientConfig": {"url"},
    "ServiceReference": {"path", "port"},
    "MatchResources": {"matchPolicy"},
    "ValidatingAdmissionPolicySpec": {"failurePolicy"},
    "ParamRef": {"parameterNotFoundAction"},
    "Validation": {"reason"},
    "NamedRuleWithOperations": {"scope"},
    "CustomResourceSubresourceScale": {"labelSelectorPath"},
    "CustomResourceDefinitionVersion": {"deprecationWarning"},
    "JSONSchemaProps": {
        "$ref", "maximum", "minimum", "maxLength", "minLength", "maxItems", "minItems",
        "maxProperties", "minProperties", "multipleOf", "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type", "x-kubernetes-map-type",
    },
    "ValidationRule": {"reason", "optionalOldSelf"},
    "Preconditions": {"uid", "resourceVersion"},
    "DeleteOptions": {"gracePeriodSeconds", "orphanDependents", "propagationPolicy",
                      "ignoreStoreReadErrorWithClusterBreakingPotential"},
}

ATTR = re.compile(r'#\[prost\((.*)\)\]')
STRUCT = re.compile(r'^pub struct (\w+) \{')
FIELD = re.compile(r'^\s*pub (?:r#)?(\w+):\s*(.*)')
TYPE_PATH = re.compile(r'((?:super::)*(?:\w+::)*)([A-Z]\w*)')
WRAPPERS = {"Option", "Vec", "Box", "BTreeMap", "String"}


def squash(name):
    return re.sub(r'[^a-z0-9]', '', name.lower())


def resolve(module, type_text):
    """The (module, name) of the message a prost field type refers to."""
    for prefix, name in TYPE_PATH.findall(type_text):
        if name in WRAPPERS or prefix.startswith(("prost::", "core::", "alloc::")):
            continue
        parts = module.split("::")
        rest = prefix.split("::")[:-1] if prefix else []
        while rest and rest[0] == "super":
            parts.pop()
            rest.pop(0)
        return ("::".join(parts + rest), name)
    sys.exit(f"gen.py: no message type in {type_text!r} of {module}")


def parse_pb():
    """{(module, name): [(tag, pb_name, kind, label, target)]} and the kinds' (apiVersion, kind)."""
    messages, roots = {}, []
    for path in glob.glob(os.path.join(PB_ROOT, "**", "mod.rs"), recursive=True):
        module = os.path.relpath(os.path.dirname(path), PB_ROOT).replace(os.sep, "::")
        lines = open(path).read().split("\n")
        current, attr, i = None, None, 0
        while i < len(lines):
            line = lines[i]
            if m := STRUCT.match(line):
                current = messages.setdefault((module, m.group(1)), [])
            elif line == "}":
                current = None
            elif current is not None and (m := ATTR.search(line)):
                attr = m.group(1)
            elif current is not None and attr and (m := FIELD.match(line)):
                type_text = m.group(2)
                while not type_text.rstrip().endswith(",") or type_text.count("<") > type_text.count(">"):
                    i += 1
                    type_text += lines[i].strip()
                current.append(field_of(module, m.group(1), attr, type_text))
                attr = None
            elif m := re.match(r'impl crate::Resource for (\w+) \{', line):
                api_version = re.search(r'API_VERSION: &\'static str = "([^"]*)"', lines[i + 1])
                kind = re.search(r'KIND: &\'static str = "([^"]*)"', lines[i + 4])
                roots.append((api_version.group(1), kind.group(1), (module, m.group(1))))
            i += 1
    return messages, roots


def field_of(module, name, attr, type_text):
    tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
    kind = attr.split(",")[0].split("=")[0].strip()
    label = "repeated" if "repeated" in attr else "optional"
    target = None
    if kind == "btree_map":
        value = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
        kind, label = "map", value
        if value == "message":
            target = resolve(module, type_text.split(",", 1)[1])
    elif kind == "message":
        target = resolve(module, type_text)
    return (tag, name, kind, label, target)


def parse_openapi(root, module, name):
    """(Go type name, {squashed json name: (json name, required)}) of a k8s-openapi struct."""
    directory = os.path.join(root, *module.split("::"))
    for path in glob.glob(os.path.join(directory, "*.rs")):
        text = open(path).read()
        m = re.search(r'^pub struct (\w+) \{(.*?)^\}', text, re.M | re.S)
        if not m or m.group(1).lower() != name.lower():
            continue
        types = dict(re.findall(r'^    pub (\w+): (.*),$', m.group(2), re.M))
        fields = {}
        for json, rust in re.findall(r'"([^"]+)" => Field::Key_(\w+),', text):
            if rust not in types:
                continue  # apiVersion and kind: TypeMeta, not a protobuf field
            fields[squash(json)] = (json, not types[rust].startswith("Option<"))
        return m.group(1), fields
    return None


def go_name(key):
    found = parse_openapi(OPENAPI_ROOT, *key)
    return found[0] if found else key[1]


class Generator:
    def __init__(self):
        self.pb, roots = parse_pb()
        # Kinds k8s-openapi lacks in v1_33 came after it (storage/v1 VolumeAttributesClass).
        self.roots = sorted(
            (a, k, key) for a, k, key in roots + SUBRESOURCE_KINDS
            if a in API_VERSIONS and parse_openapi(OPENAPI_ROOT, *key)
        )
        self.order, self.index, self.openapi = [], {}, {}

    def visit(self, key, outer=None):
        """Numbers `key` and everything it reaches; `outer` is the struct inlining it."""
        if key in self.index:
            return
        if key not in self.pb:
            sys.exit(f"gen.py: k8s-pb has no message {key}")
        self.index[key] = len(self.order)
        self.order.append(key)
        if key in SHAPES or key[1] == "ExtraValue":
            self.openapi[key] = None
        else:
            found = parse_openapi(OPENAPI_ROOT, *key) or outer
            if found is None and not self.pb[key]:
                found = (key[1], {})  # an empty Go struct: k8s-openapi makes it a newtype
            if found is None:
                sys.exit(f"gen.py: k8s-openapi has no struct for {key}")
            self.openapi[key] = found
        for tag, name, kind, label, target in self.pb[key]:
            role = self.role(key, name, target)
            if target is not None and role != "newer":
                self.visit(target, self.openapi[key] if role == "inline" else None)

    def role(self, key, pb_name, target):
        """How a field maps to JSON: "field", "inline" or "newer" (not in Kubernetes 1.33)."""
        found = self.openapi[key]
        if found is None or squash(pb_name) in found[1]:
            return "field"
        # Go embeds with `json:",inline"` (Volume's VolumeSource): the outer struct has
        # every field of the inner one.
        later = {}
        for root in OPENAPI_LATER:
            later.update((parse_openapi(root, key[0], found[0]) or (None, {}))[1])
        if target is not None and self.fits(target, found[1], later):
            return "inline"
        # k8s-pb 0.9 tracks a newer Kubernetes; a 1.33 server drops such fields as unknown.
        if squash(pb_name) in later:
            return "newer"
        sys.exit(f"gen.py: no JSON name for {key[1]}.{pb_name} in k8s-openapi")

    def fits(self, key, names, later):
        inner = [(n, t) for _, n, _, _, t in self.pb[key] if squash(n) not in later or squash(n) in names]
        return bool(inner) and all(
            squash(n) in names or (t is not None and self.fits(t, names, later))
            for n, t in inner
        )

    def field_row(self, key, tag, pb_name, kind, label, target):
        found = self.openapi[key]
        role = self.role(key, pb_name, target)
        if role == "newer":
            return None
        if role == "inline":
            return f'f({tag}, "", T::Msg({self.index[target]}), C::Inline)'
        json, required = found[1][squash(pb_name)] if found else (pb_name, False)
        ty = {
            "string": "T::Str", "bytes": "T::Bytes", "bool": "T::Bool", "int32": "T::I32",
            "int64": "T::I64", "double": "T::F64",
        }
        if kind == "map":
            value = {"string": "T::Str", "bytes": "T::Bytes"}.get(label)
            value = value or f"T::Msg({self.index[target]})"
            return f'f({tag}, "{json}", {value}, C::Map)'
        t = f"T::Msg({self.index[target]})" if kind == "message" else ty[kind]
        if label == "repeated":
            card = "C::Repeated"
        elif kind != "message" and found is not None and (
            required or json in POINTERS.get(found[0], ())
        ):
            card = "C::Keep"
        else:
            card = "C::Opt"
        return f'f({tag}, "{json}", {t}, {card})'

    def message_name(self, key):
        module = key[0].replace("apiextensions_apiserver", "apiextensions-apiserver")
        return "k8s.io." + module.replace("::", ".") + "." + go_name(key)

    def render(self):
        for _, _, key in self.roots:
            self.visit(key)
        structs = {}  # same-named Go types of different groups share one POINTERS entry
        for found in filter(None, self.openapi.values()):
            structs.setdefault(found[0], {}).update(found[1])
        for go_type, fields in POINTERS.items():
            for json in fields:
                if squash(json) not in structs.get(go_type, {}):
                    sys.exit(f"gen.py: pointer field {go_type}.{json} is not reachable")
        out = [
            "//! Generated by gen.py from the k8s-pb 0.9 and k8s-openapi 0.29 (v1_33) sources:",
            "//! `python3 crates/api/src/protobuf/gen.py`. Do not edit.",
            "",
            "use super::schema::{Card as C, Message, Shape as S, Ty as T, f};",
            "",
            "#[rustfmt::skip]",
            "pub(super) static MESSAGES: &[Message] = &[",
        ]
        for key in self.order:
            shape = SHAPES.get(key) or ("Items" if key[1] == "ExtraValue" else "Object")
            rows = [self.field_row(key, *field) for field in sorted(self.pb[key])]
            rows = [row for row in rows if row]
            out.append(f'    Message {{ name: "{self.message_name(key)}", shape: S::{shape}, '
                       f'fields: &[{", ".join(rows)}] }},')
        out.append("];")
        out.append("")
        out.append("/// `(apiVersion, kind, index into MESSAGES)`, sorted for binary search.")
        out.append("#[rustfmt::skip]")
        out.append("pub(super) static KINDS: &[(&str, &str, u16)] = &[")
        for api_version, kind, key in self.roots:
            out.append(f'    ("{api_version}", "{kind}", {self.index[key]}),')
        out.append("];")
        return "\n".join(out) + "\n"


def main():
    text = Generator().render()
    with open(os.path.join(HERE, "table.rs"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
