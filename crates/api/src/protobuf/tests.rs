//! Round trips: k8s-pb (prost) encodes real Kubernetes messages, `decode` must give their JSON.

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::autoscaling::{v1 as autoscaling_v1, v2 as autoscaling_v2};
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message as _;
use serde_json::{Value, json};

use super::*;

/// The body kubectl sends: magic, then `runtime.Unknown` around the typed message.
fn body(api_version: &str, kind: &str, object: &impl prost::Message) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [MAGIC, &unknown.encode_to_vec()].concat()
}

fn decoded(api_version: &str, kind: &str, object: &impl prost::Message) -> Value {
    match decode(&body(api_version, kind, object)) {
        Ok(d) => {
            assert_eq!(
                (d.api_version.as_str(), d.kind.as_str()),
                (api_version, kind)
            );
            d.object
        }
        Err(e) => panic!("decode {kind}: {e}"),
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn map<V>(entries: &[(&str, V)]) -> BTreeMap<String, V>
where
    V: Clone,
{
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn quantity(v: &str) -> Quantity {
    Quantity { string: s(v) }
}

/// Go's encoder writes every non-pointer field, zero or not; these are a typical few.
fn go_object_meta(name: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(meta::Time::default()),
        ..Default::default()
    }
}

#[test]
fn deployment() {
    let container = core::Container {
        name: s("nginx"),
        image: s("nginx:1.25"),
        image_pull_policy: s(""),
        ports: vec![core::ContainerPort {
            container_port: Some(80),
            protocol: s("TCP"),
            host_port: Some(0),
            ..Default::default()
        }],
        env: vec![
            core::EnvVar {
                name: s("MODE"),
                value: s("prod"),
                ..Default::default()
            },
            core::EnvVar {
                name: s("POD"),
                value: s(""),
                value_from: Some(core::EnvVarSource {
                    field_ref: Some(core::ObjectFieldSelector {
                        field_path: s("metadata.name"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ],
        resources: Some(core::ResourceRequirements {
            limits: map(&[("cpu", quantity("500m")), ("memory", quantity("128Mi"))]),
            requests: map(&[("cpu", quantity("250m"))]),
            ..Default::default()
        }),
        stdin: Some(false),
        ..Default::default()
    };
    let labels = map(&[("app", "web".to_owned())]);
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            labels: labels.clone(),
            annotations: map(&[("note", "a \u{e9} b".to_owned())]),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_704_164_645),
                nanos: Some(0),
            }),
            ..go_object_meta("web")
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels,
                    creation_timestamp: Some(meta::Time::default()),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    restart_policy: s(""),
                    host_network: Some(false),
                    termination_grace_period_seconds: Some(0),
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("25%"),
                    }),
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: s(""),
                    }),
                }),
            }),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus {
            replicas: Some(0),
            observed_generation: Some(0),
            ..Default::default()
        }),
    };
    assert_eq!(
        decoded("apps/v1", "Deployment", &deployment),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "labels": {"app": "web"},
                "annotations": {"note": "a \u{e9} b"},
                "creationTimestamp": "2024-01-02T03:04:05Z",
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx:1.25",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [
                                {"name": "MODE", "value": "prod"},
                                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            ],
                            "resources": {
                                "limits": {"cpu": "500m", "memory": "128Mi"},
                                "requests": {"cpu": "250m"},
                            },
                        }],
                        "terminationGracePeriodSeconds": 0,
                        "automountServiceAccountToken": false,
                    },
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1},
                },
            },
            "status": {},
        })
    );
}

#[test]
fn secret_bytes_become_base64() {
    let secret = core::Secret {
        metadata: Some(go_object_meta("creds")),
        data: map(&[("bin", vec![0u8, 0xff, b'h', b'i']), ("empty", Vec::new())]),
        string_data: map(&[("plain", "text".to_owned())]),
        r#type: s("Opaque"),
        immutable: Some(false),
    };
    assert_eq!(
        decoded("v1", "Secret", &secret),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "creationTimestamp": null},
            "data": {"bin": "AP9oaQ==", "empty": ""},
            "stringData": {"plain": "text"},
            "type": "Opaque",
            "immutable": false,
        })
    );
}

#[test]
fn namespace() {
    let namespace = core::Namespace {
        metadata: Some(go_object_meta("dev")),
        spec: Some(core::NamespaceSpec {
            finalizers: vec!["kubernetes".to_owned()],
        }),
        status: Some(core::NamespaceStatus {
            phase: s(""),
            conditions: Vec::new(),
        }),
    };
    assert_eq!(
        decoded("v1", "Namespace", &namespace),
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "dev", "creationTimestamp": null},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {},
        })
    );
}

#[test]
fn cronjob() {
    let cronjob = batch::CronJob {
        metadata: Some(go_object_meta("tick")),
        spec: Some(batch::CronJobSpec {
            schedule: s("*/5 * * * *"),
            time_zone: s("Etc/UTC"),
            suspend: Some(false),
            concurrency_policy: s(""),
            job_template: Some(batch::JobTemplateSpec {
                metadata: Some(go_object_meta("tick")),
                spec: Some(batch::JobSpec {
                    backoff_limit: Some(0),
                    template: Some(core::PodTemplateSpec {
                        metadata: None,
                        spec: Some(core::PodSpec {
                            containers: vec![core::Container {
                                name: s("tick"),
                                image: s("busybox"),
                                command: vec!["date".to_owned()],
                                ..Default::default()
                            }],
                            restart_policy: s("OnFailure"),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: Some(batch::CronJobStatus {
            last_schedule_time: Some(meta::Time {
                seconds: Some(1_704_164_645),
                nanos: Some(5),
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        decoded("batch/v1", "CronJob", &cronjob),
        json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "tick", "creationTimestamp": null},
            "spec": {
                "schedule": "*/5 * * * *",
                "timeZone": "Etc/UTC",
                "suspend": false,
                "jobTemplate": {
                    "metadata": {"name": "tick", "creationTimestamp": null},
                    "spec": {
                        "backoffLimit": 0,
                        "template": {"spec": {
                            "containers": [{"name": "tick", "image": "busybox", "command": ["date"]}],
                            "restartPolicy": "OnFailure",
                        }},
                    },
                },
            },
            "status": {"lastScheduleTime": "2024-01-02T03:04:05Z"},
        })
    );
}

#[test]
fn horizontal_pod_autoscalers() {
    let target = || autoscaling_v1::CrossVersionObjectReference {
        kind: s("Deployment"),
        name: s("web"),
        api_version: s("apps/v1"),
    };
    let v1 = autoscaling_v1::HorizontalPodAutoscaler {
        metadata: Some(go_object_meta("web")),
        spec: Some(autoscaling_v1::HorizontalPodAutoscalerSpec {
            scale_target_ref: Some(target()),
            min_replicas: Some(1),
            max_replicas: Some(5),
            target_cpu_utilization_percentage: Some(80),
        }),
        status: Some(autoscaling_v1::HorizontalPodAutoscalerStatus {
            current_replicas: Some(0),
            desired_replicas: Some(0),
            ..Default::default()
        }),
    };
    let target_json = json!({"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"});
    assert_eq!(
        decoded("autoscaling/v1", "HorizontalPodAutoscaler", &v1),
        json!({
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "creationTimestamp": null},
            "spec": {
                "scaleTargetRef": target_json,
                "minReplicas": 1,
                "maxReplicas": 5,
                "targetCPUUtilizationPercentage": 80,
            },
            "status": {"currentReplicas": 0, "desiredReplicas": 0},
        })
    );

    let v2 = autoscaling_v2::HorizontalPodAutoscaler {
        metadata: Some(go_object_meta("web")),
        spec: Some(autoscaling_v2::HorizontalPodAutoscalerSpec {
            scale_target_ref: Some(autoscaling_v2::CrossVersionObjectReference {
                kind: s("Deployment"),
                name: s("web"),
                api_version: s("apps/v1"),
            }),
            min_replicas: Some(1),
            max_replicas: Some(10),
            metrics: vec![autoscaling_v2::MetricSpec {
                r#type: s("Resource"),
                resource: Some(autoscaling_v2::ResourceMetricSource {
                    name: s("cpu"),
                    target: Some(autoscaling_v2::MetricTarget {
                        r#type: s("Utilization"),
                        average_utilization: Some(50),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }],
            behavior: Some(autoscaling_v2::HorizontalPodAutoscalerBehavior {
                scale_down: Some(autoscaling_v2::HpaScalingRules {
                    stabilization_window_seconds: Some(0),
                    policies: vec![autoscaling_v2::HpaScalingPolicy {
                        r#type: s("Percent"),
                        value: Some(100),
                        period_seconds: Some(15),
                    }],
                    ..Default::default()
                }),
                scale_up: None,
            }),
        }),
        status: None,
    };
    assert_eq!(
        decoded("autoscaling/v2", "HorizontalPodAutoscaler", &v2),
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "creationTimestamp": null},
            "spec": {
                "scaleTargetRef": target_json,
                "minReplicas": 1,
                "maxReplicas": 10,
                "metrics": [{
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                }],
                "behavior": {"scaleDown": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                }},
            },
        })
    );
}

#[test]
fn inlined_structs_join_their_parent() {
    let pod = core::Pod {
        spec: Some(core::PodSpec {
            volumes: vec![core::Volume {
                name: s("config"),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference {
                            name: s("settings"),
                        }),
                        default_mode: Some(0o644),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }],
            containers: vec![core::Container {
                name: s("app"),
                liveness_probe: Some(core::Probe {
                    handler: Some(core::ProbeHandler {
                        http_get: Some(core::HttpGetAction {
                            path: s("/healthz"),
                            port: Some(IntOrString {
                                r#type: Some(0),
                                int_val: Some(8080),
                                str_val: s(""),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    period_seconds: Some(10),
                    timeout_seconds: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        decoded("v1", "Pod", &pod)["spec"],
        json!({
            "volumes": [{"name": "config", "configMap": {"name": "settings", "defaultMode": 420}}],
            "containers": [{
                "name": "app",
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
            }],
        })
    );
}

#[test]
fn custom_resource_definition_schema() {
    let raw = |text: &str| apiext::Json {
        raw: Some(text.as_bytes().to_vec()),
    };
    let string_prop = apiext::JsonSchemaProps {
        r#type: s("string"),
        ..Default::default()
    };
    let schema = apiext::JsonSchemaProps {
        r#type: s("object"),
        properties: map(&[
            (
                "tags",
                apiext::JsonSchemaProps {
                    r#type: s("array"),
                    items: Some(Box::new(apiext::JsonSchemaPropsOrArray {
                        schema: Some(Box::new(string_prop.clone())),
                        j_son_schemas: Vec::new(),
                    })),
                    max_items: Some(0),
                    ..Default::default()
                },
            ),
            (
                "size",
                apiext::JsonSchemaProps {
                    r#type: s("integer"),
                    default: Some(raw("3")),
                    r#enum: vec![raw("3"), raw("\"x\"")],
                    minimum: Some(0.5),
                    ..Default::default()
                },
            ),
        ]),
        additional_properties: Some(Box::new(apiext::JsonSchemaPropsOrBool {
            allows: Some(false),
            schema: None,
        })),
        x_kubernetes_preserve_unknown_fields: Some(false),
        nullable: Some(false),
        ..Default::default()
    };
    let crd = apiext::CustomResourceDefinition {
        metadata: Some(go_object_meta("widgets.example.com")),
        spec: Some(apiext::CustomResourceDefinitionSpec {
            group: s("example.com"),
            versions: vec![apiext::CustomResourceDefinitionVersion {
                name: s("v1"),
                served: Some(true),
                storage: Some(true),
                schema: Some(apiext::CustomResourceValidation {
                    open_apiv3_schema: Some(schema),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let object = decoded("apiextensions.k8s.io/v1", "CustomResourceDefinition", &crd);
    assert_eq!(
        object["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        json!({
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
                "size": {"type": "integer", "default": 3, "enum": [3, "x"], "minimum": 0.5},
            },
            "additionalProperties": false,
            "x-kubernetes-preserve-unknown-fields": false,
        })
    );
}

#[test]
fn token_request_subresource() {
    let request = k8s_pb::api::authentication::v1::TokenRequest {
        metadata: Some(go_object_meta("default")),
        spec: Some(k8s_pb::api::authentication::v1::TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc".to_owned()],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        status: Some(k8s_pb::api::authentication::v1::TokenRequestStatus {
            token: s(""),
            expiration_timestamp: Some(meta::Time::default()),
        }),
    };
    let object = decoded("authentication.k8s.io/v1", "TokenRequest", &request);
    assert_eq!(
        object["spec"],
        json!({"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600})
    );
    // token has no omitempty in Go, so its empty value stays.
    assert_eq!(
        object["status"],
        json!({"token": "", "expirationTimestamp": null})
    );
}

/// Raw wire bytes for cases prost never writes.
fn field(num: u32, wire_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(u64::from(num << 3 | wire_type), &mut out);
    if wire_type == 2 {
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
    }
    out.extend_from_slice(payload);
    out
}

fn raw_body(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let type_meta = [
        field(1, 2, api_version.as_bytes()),
        field(2, 2, kind.as_bytes()),
    ];
    [
        MAGIC.to_vec(),
        field(1, 2, &type_meta.concat()),
        field(2, 2, &raw),
    ]
    .concat()
}

#[test]
fn packed_and_unpacked_repeated_scalars() -> Result<(), ProtoError> {
    // PodSecurityContext.supplementalGroups is field 4: once unpacked, then packed [2, 300].
    let groups = [field(4, 0, &[1]), field(4, 2, &[2, 0xac, 0x02])].concat();
    let pod_spec = field(14, 2, &groups); // PodSpec.securityContext
    let raw = field(2, 2, &pod_spec); // Pod.spec
    let object = decode(&raw_body("v1", "Pod", raw))?.object;
    assert_eq!(
        object["spec"]["securityContext"]["supplementalGroups"],
        json!([1, 2, 300])
    );
    Ok(())
}

#[test]
fn repeated_message_fields_merge_and_unknown_fields_are_skipped() -> Result<(), ProtoError> {
    let raw = [
        field(1, 2, &field(1, 2, b"first")),
        field(99, 0, &[7]),
        field(100, 2, b"ignored"),
        field(1, 2, &field(2, 2, b"gen-")), // metadata again: merges generateName in
        field(1, 2, &field(1, 2, b"second")), // and a later name wins
    ]
    .concat();
    let object = decode(&raw_body("v1", "Namespace", raw))?.object;
    assert_eq!(
        object["metadata"],
        json!({"name": "second", "generateName": "gen-"})
    );
    Ok(())
}

#[test]
fn rejects_bad_envelopes() {
    let namespace = core::Namespace::default();
    assert_eq!(decode(b"{}"), Err(ProtoError::MissingPrefix));
    assert_eq!(
        decode(&body("v1", "Frobnicator", &namespace)),
        Err(ProtoError::UnknownKind {
            api_version: "v1".to_owned(),
            kind: "Frobnicator".to_owned()
        })
    );
    assert_eq!(
        decode(&body("", "Namespace", &namespace)),
        Err(ProtoError::MissingTypeMeta)
    );
    let mut gzip = body("v1", "Namespace", &namespace);
    gzip.extend(field(3, 2, b"gzip"));
    assert_eq!(
        decode(&gzip),
        Err(ProtoError::ContentEncoding("gzip".to_owned()))
    );
    // A string field sent as a varint.
    let wrong = raw_body("v1", "Namespace", field(1, 2, &field(1, 0, &[1])));
    assert!(matches!(decode(&wrong), Err(ProtoError::Malformed(_))));
}

#[test]
fn deep_nesting_is_an_error() {
    let mut schema = apiext::JsonSchemaProps::default();
    for _ in 0..150 {
        schema = apiext::JsonSchemaProps {
            properties: map(&[("p", schema)]),
            ..Default::default()
        };
    }
    let crd = apiext::CustomResourceDefinition {
        spec: Some(apiext::CustomResourceDefinitionSpec {
            versions: vec![apiext::CustomResourceDefinitionVersion {
                schema: Some(apiext::CustomResourceValidation {
                    open_apiv3_schema: Some(schema),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let result = decode(&body(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        &crd,
    ));
    assert!(matches!(result, Err(ProtoError::Malformed(m)) if m.contains("nesting")));
}

#[test]
fn detects_the_media_type() {
    assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
    assert!(is_protobuf(
        "Application/VND.Kubernetes.Protobuf; charset=utf-8"
    ));
    assert!(!is_protobuf("application/json"));
    assert!(!is_protobuf("application/vnd.kubernetes.protobuf+json"));
}

#[test]
fn garbage_never_panics() {
    let deployment = apps::Deployment {
        metadata: Some(go_object_meta("web")),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(3),
            template: Some(core::PodTemplateSpec {
                metadata: None,
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: s("c"),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let valid = body("apps/v1", "Deployment", &deployment);
    for len in 0..valid.len() {
        let _ = decode(&valid[..len]);
    }
    let mut flipped = valid.clone();
    for i in MAGIC.len()..valid.len() {
        for bit in 0..8 {
            flipped[i] ^= 1 << bit;
            let _ = decode(&flipped);
            flipped[i] ^= 1 << bit;
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let len = (random() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| random() as u8).collect();
        let _ = decode(&bytes);
        // Behind a valid envelope, so the garbage reaches the typed decoder.
        bytes = raw_body("apps/v1", "Deployment", bytes);
        let _ = decode(&bytes);
    }
}
