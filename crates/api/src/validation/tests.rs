//! End-to-end tables: objects go through defaulting then validation, as the API server runs
//! them, and must yield exactly upstream's causes.

use super::validate;
use crate::defaults;
use serde_json::{Value, json};

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn causes(
    gvk: (&str, &str, &str),
    namespaced: bool,
    mut obj: Value,
    old: Option<Value>,
) -> Vec<String> {
    let (group, version, kind) = gvk;
    defaults::apply(group, version, kind, &mut obj);
    validate(group, version, kind, namespaced, &obj, old.as_ref())
        .iter()
        .map(|e| e.full_message())
        .collect()
}

fn deployment(name: &str, container: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [container]}}}})
}

fn pod(spec: Value) -> Value {
    json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
}

type Gvk = (&'static str, &'static str, &'static str);

const DEPLOY: (&str, &str, &str) = ("apps", "v1", "Deployment");
const POD: (&str, &str, &str) = ("", "v1", "Pod");

#[test]
fn create() {
    let cases: Vec<(Gvk, bool, Value, Vec<String>)> = vec![
        (DEPLOY, true, deployment("Bad_Name", json!({"name": "c"})), vec![
            format!("metadata.name: Invalid value: \"Bad_Name\": {SUBDOMAIN_MSG}"),
            "spec.template.spec.containers[0].image: Required value".into(),
        ]),
        (DEPLOY, true, deployment("web", json!({"name": "c", "image": "nginx"})), vec![]),
        (DEPLOY, true,
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
                "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            vec![
                "spec.selector: Required value".into(),
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`".into(),
            ]),
        (DEPLOY, true,
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": -1,
                "selector": {"matchLabels": {"app": "y"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}},
                "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
            vec![
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0".into(),
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`".into(),
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"".into(),
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0".into(),
            ]),
        (POD, true, pod(json!({"containers": []})), vec!["spec.containers: Required value".into()]),
        (POD, true,
            pod(json!({"containers": [
                {"name": "a", "image": "i", "ports": [{"containerPort": 70000, "protocol": "HTTP"}]},
                {"name": "a", "image": "i", "volumeMounts": [{"name": "missing", "mountPath": "/m"}],
                 "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]})),
            vec![
                "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".into(),
                "spec.containers[0].ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"".into(),
                "spec.containers[1].volumeMounts[0].name: Not found: \"missing\"".into(),
                "spec.containers[1].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1".into(),
                "spec.containers[1].name: Duplicate value: \"a\"".into(),
            ]),
        (POD, true,
            pod(json!({"restartPolicy": "Sometimes", "volumes": [
                {"name": "Bad", "emptyDir": {}}, {"name": "two", "emptyDir": {}, "hostPath": {"path": "/x"}}],
                "containers": [{"name": "c", "image": "i", "env": [{"name": "A=B"}],
                    "livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}}]})),
            vec![
                "spec.volumes[0].name: Invalid value: \"Bad\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into(),
                "spec.volumes[1].hostPath: Forbidden: may not specify more than 1 volume type".into(),
                "spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='".into(),
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1".into(),
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"".into(),
            ]),
        (("", "v1", "Service"), true,
            json!({"metadata": {"name": "1svc", "namespace": "default"}, "spec": {"type": "Weird", "clusterIP": "abc",
                "ports": [{"port": 80}, {"name": "b", "port": 80, "nodePort": 70000}]}}),
            vec![
                "metadata.name: Invalid value: \"1svc\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into(),
                "spec.ports[0].name: Required value".into(),
                "spec.clusterIPs[0]: Invalid value: \"abc\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
                "spec.type: Unsupported value: \"Weird\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"".into(),
                "spec.ports[1].nodePort: Invalid value: 70000: must be between 1 and 65535, inclusive".into(),
                "spec.ports[1]: Duplicate value: {\"port\":80,\"protocol\":\"TCP\"}".into(),
            ]),
        (("", "v1", "Service"), true,
            json!({"metadata": {"name": "headless", "namespace": "default"}, "spec": {"clusterIP": "None", "selector": {"app": "x"}}}),
            vec![]),
        (("", "v1", "ConfigMap"), true,
            json!({"metadata": {"name": "cm", "namespace": "default"}, "data": {"a/b": "x", "ok": "y"}}),
            vec!["data[a/b]: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into()]),
        (("", "v1", "Secret"), true,
            json!({"metadata": {"name": "s", "namespace": "default"}, "type": "kubernetes.io/tls", "data": {"tls.crt": ""}}),
            vec!["data[tls.key]: Required value".into()]),
        (("", "v1", "Namespace"), false,
            json!({"metadata": {"name": "Dev.Team"}}),
            vec!["metadata.name: Invalid value: \"Dev.Team\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into()]),
        (("batch", "v1", "Job"), true,
            json!({"metadata": {"name": "j", "namespace": "default"}, "spec": {"backoffLimit": -1,
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            vec![
                "spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0".into(),
                "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"".into(),
            ]),
        (("batch", "v1", "CronJob"), true,
            json!({"metadata": {"name": "cj", "namespace": "default"}, "spec": {"schedule": "61 * * * *", "timeZone": "Mars/Olympus",
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}),
            vec![
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61".into(),
                "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus".into(),
            ]),
        (("batch", "v1", "CronJob"), true,
            json!({"metadata": {"name": "cj", "namespace": "default"}, "spec": {"schedule": "@daily", "timeZone": "Europe/Berlin",
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}}}),
            vec![]),
        (("autoscaling", "v2", "HorizontalPodAutoscaler"), true,
            json!({"metadata": {"name": "h", "namespace": "default"}, "spec": {"minReplicas": 5, "maxReplicas": 2,
                "scaleTargetRef": {"kind": "Deployment"}}}),
            vec![
                "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`".into(),
                "spec.scaleTargetRef.name: Required value".into(),
            ]),
        (("rbac.authorization.k8s.io", "v1", "Role"), true,
            json!({"metadata": {"name": "system:reader", "namespace": "default"}, "rules": [{"apiGroups": [""], "resources": ["pods"]}]}),
            vec!["rules[0].verbs: Required value: verbs must contain at least one value".into()]),
        (("", "v1", "PersistentVolumeClaim"), true,
            json!({"metadata": {"name": "c", "namespace": "default"}, "spec": {"resources": {"requests": {"storage": "0"}}}}),
            vec![
                "spec.accessModes: Required value: at least 1 access mode is required".into(),
                "spec.resources[storage]: Invalid value: \"0\": must be greater than zero".into(),
            ]),
        (("scheduling.k8s.io", "v1", "PriorityClass"), false,
            json!({"metadata": {"name": "high"}, "value": 2000000000}),
            vec!["value: Forbidden: maximum allowed value of a user defined priority is 1000000000".into()]),
        (("example.com", "v1", "Widget"), true,
            json!({"metadata": {"name": "w", "namespace": "default"}, "spec": {"anything": 1}}),
            vec![]),
    ];
    for (gvk, namespaced, obj, want) in cases {
        let got = causes(gvk, namespaced, obj.clone(), None);
        assert_eq!(got, want, "{obj}");
    }
}

#[test]
fn update() {
    let meta = json!({"name": "x", "namespace": "default", "resourceVersion": "1", "uid": "u"});
    let with_meta = |mut v: Value| {
        v["metadata"] = meta.clone();
        v
    };
    let deploy = |app: &str, image: &str| {
        with_meta(json!({"spec": {"selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": image}]}}}}))
    };
    let cases: Vec<(Gvk, Value, Value, Vec<&str>)> = vec![
        (DEPLOY, deploy("x", "v2"), deploy("x", "v1"), vec![]),
        (
            DEPLOY,
            deploy("y", "v1"),
            deploy("x", "v1"),
            vec![
                "spec.selector: Invalid value: {\"matchLabels\":{\"app\":\"y\"}}: field is immutable",
            ],
        ),
        (
            ("", "v1", "Service"),
            with_meta(json!({"spec": {"clusterIP": "10.0.0.2", "ports": [{"port": 80}]}})),
            with_meta(json!({"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}})),
            vec![
                "spec.clusterIPs[0]: Invalid value: []string{\"10.0.0.2\"}: may not change once set",
            ],
        ),
        (
            ("", "v1", "ConfigMap"),
            with_meta(json!({"immutable": true, "data": {"a": "2"}})),
            with_meta(json!({"immutable": true, "data": {"a": "1"}})),
            vec!["data: Forbidden: field is immutable when `immutable` is set"],
        ),
        (
            POD,
            with_meta(json!({"spec": {"containers": [{"name": "c", "image": "i2"}]}})),
            with_meta(json!({"spec": {"containers": [{"name": "c", "image": "i1"}]}})),
            vec![],
        ),
        (
            ("batch", "v1", "Job"),
            with_meta(
                json!({"spec": {"completions": 3, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
            ),
            with_meta(
                json!({"spec": {"completions": 2, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
            ),
            vec!["spec.completions: Invalid value: 3: field is immutable"],
        ),
    ];
    for ((group, version, kind), new, old, want) in cases {
        let mut old = old;
        defaults::apply(group, version, kind, &mut old);
        assert_eq!(
            causes((group, version, kind), true, new.clone(), Some(old)),
            want,
            "{new}"
        );
    }

    let mut old_pod = with_meta(json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}));
    defaults::apply("", "v1", "Pod", &mut old_pod);
    let changed = with_meta(
        json!({"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}),
    );
    let got = causes(POD, true, changed, Some(old_pod));
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{got:?}");
}
