//! Data-driven tests for the Table printers: cells per kind from small fixtures, Pod STATUS
//! edge cases, Service PORT(S), `human_duration`, and the Table envelope.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::*;

const CREATED: &str = "2024-01-01T00:00:00Z";

fn now() -> Timestamp {
    "2024-01-01T01:00:00Z".parse().expect("valid timestamp")
}

fn ago(secs: i64) -> String {
    now()
        .checked_sub(SignedDuration::from_secs(secs))
        .expect("in range")
        .to_string()
}

/// Adds name and creation time so fixtures only spell out what they test.
fn with_meta(mut obj: Value, name: &str) -> Value {
    let mut meta = obj["metadata"].as_object().cloned().unwrap_or_default();
    meta.insert("name".into(), json!(name));
    meta.insert("creationTimestamp".into(), json!(CREATED));
    obj["metadata"] = Value::Object(meta);
    obj
}

#[test]
fn human_duration_matches_apimachinery() {
    let cases: &[(i64, &str)] = &[
        (-3_000, "<invalid>"),
        (-2_000, "<invalid>"),
        (-1_500, "0s"),
        (-1_000, "0s"),
        (0, "0s"),
        (5_000, "5s"),
        (119_999, "119s"),
        (120_000, "2m"),
        (182_000, "3m2s"),
        (599_000, "9m59s"),
        (600_000, "10m"),
        (179 * 60_000, "179m"),
        (3 * 3_600_000, "3h"),
        (3 * 3_600_000 + 5 * 60_000, "3h5m"),
        (8 * 3_600_000 + 59 * 60_000, "8h"),
        (47 * 3_600_000, "47h"),
        (48 * 3_600_000, "2d"),
        (51 * 3_600_000, "2d3h"),
        (8 * 86_400_000, "8d"),
        (729 * 86_400_000, "729d"),
        (730 * 86_400_000, "2y"),
        (731 * 86_400_000, "2y1d"),
        (8 * 365 * 86_400_000, "8y"),
        (20 * 365 * 86_400_000 + 86_400_000, "20y"),
    ];
    for (millis, want) in cases {
        assert_eq!(
            human_duration(SignedDuration::from_millis(*millis)),
            *want,
            "{millis}ms"
        );
    }
}

fn running(name: &str) -> Value {
    json!({"name": name, "ready": true, "restartCount": 0, "state": {"running": {"startedAt": CREATED}}})
}

#[test]
fn pod_cells() {
    let cases: Vec<(&str, Value, [&str; 9])> = vec![
        (
            "running",
            json!({
                "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
                "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}], "containerStatuses": [running("a")]}
            }),
            [
                "p", "1/1", "Running", "0", "60m", "10.0.0.1", "n1", "<none>", "<none>",
            ],
        ),
        (
            "pending without statuses",
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Pending"}}),
            [
                "p", "0/2", "Pending", "0", "60m", "<none>", "<none>", "<none>", "<none>",
            ],
        ),
        (
            "container creating",
            json!({
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "containerStatuses": [
                    {"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
                ]}
            }),
            [
                "p",
                "0/1",
                "ContainerCreating",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "crash loop with recent restart",
            json!({
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Running", "containerStatuses": [{
                    "name": "a", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(300)}}
                }]}
            }),
            [
                "p",
                "0/1",
                "CrashLoopBackOff",
                "3 (5m ago)",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "first container's reason wins",
            json!({
                "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": "Running", "containerStatuses": [
                    {"name": "a", "restartCount": 1, "state": {"waiting": {"reason": "ImagePullBackOff"}}},
                    {"name": "b", "restartCount": 2, "state": {"waiting": {"reason": "ErrImagePull"}}}
                ]}
            }),
            [
                "p",
                "0/2",
                "ImagePullBackOff",
                "3",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "init running",
            json!({
                "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending",
                    "initContainerStatuses": [{"name": "i1", "restartCount": 0, "state": {"running": {}}}],
                    "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}]}
            }),
            [
                "p", "0/1", "Init:0/2", "0", "60m", "<none>", "<none>", "<none>", "<none>",
            ],
        ),
        (
            "second init running",
            json!({
                "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [
                    {"name": "i1", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "i2", "state": {"waiting": {"reason": "PodInitializing"}}}
                ]}
            }),
            [
                "p", "0/1", "Init:1/2", "0", "60m", "<none>", "<none>", "<none>", "<none>",
            ],
        ),
        (
            "init crash loop counts init restarts",
            json!({
                "spec": {"initContainers": [{"name": "i1"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [{
                    "name": "i1", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(30)}}
                }]}
            }),
            [
                "p",
                "0/1",
                "Init:CrashLoopBackOff",
                "4 (30s ago)",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "init error",
            json!({
                "spec": {"initContainers": [{"name": "i1"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [
                    {"name": "i1", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
                ]}
            }),
            [
                "p",
                "0/1",
                "Init:Error",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "init exit code",
            json!({
                "spec": {"initContainers": [{"name": "i1"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [
                    {"name": "i1", "state": {"terminated": {"exitCode": 2}}}
                ]}
            }),
            [
                "p",
                "0/1",
                "Init:ExitCode:2",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "init signal",
            json!({
                "spec": {"initContainers": [{"name": "i1"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [
                    {"name": "i1", "state": {"terminated": {"exitCode": 137, "signal": 9}}}
                ]}
            }),
            [
                "p",
                "0/1",
                "Init:Signal:9",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "main container exit code without reason",
            json!({
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Running", "containerStatuses": [
                    {"name": "a", "state": {"terminated": {"exitCode": 137}}}
                ]}
            }),
            [
                "p",
                "0/1",
                "ExitCode:137",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "completed",
            json!({
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Succeeded", "containerStatuses": [
                    {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
                ]}
            }),
            [
                "p",
                "0/1",
                "Completed",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "completed container but another running and pod ready",
            json!({
                "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                        running("b")
                    ]}
            }),
            [
                "p", "1/2", "Running", "0", "60m", "<none>", "<none>", "<none>", "<none>",
            ],
        ),
        (
            "completed container but another running, pod not ready",
            json!({
                "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [
                        {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                        running("b")
                    ]}
            }),
            [
                "p", "1/2", "NotReady", "0", "60m", "<none>", "<none>", "<none>", "<none>",
            ],
        ),
        (
            "terminating",
            json!({
                "metadata": {"deletionTimestamp": ago(10)},
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Running", "containerStatuses": [running("a")]}
            }),
            [
                "p",
                "1/1",
                "Terminating",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "deleted but already succeeded",
            json!({
                "metadata": {"deletionTimestamp": ago(10)},
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Succeeded", "containerStatuses": [
                    {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
                ]}
            }),
            [
                "p",
                "0/1",
                "Completed",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "node lost",
            json!({
                "metadata": {"deletionTimestamp": ago(10)},
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Running", "reason": "NodeLost"}
            }),
            [
                "p", "0/1", "Unknown", "0", "60m", "<none>", "<none>", "<none>", "<none>",
            ],
        ),
        (
            "evicted",
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Failed", "reason": "Evicted"}}),
            [
                "p", "0/1", "Evicted", "0", "60m", "<none>", "<none>", "<none>", "<none>",
            ],
        ),
        (
            "scheduling gated",
            json!({
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
                ]}
            }),
            [
                "p",
                "0/1",
                "SchedulingGated",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "sidecar counted and its restarts kept",
            json!({
                "spec": {"initContainers": [{"name": "s", "restartPolicy": "Always"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Initialized", "status": "True"}],
                    "initContainerStatuses": [{
                        "name": "s", "ready": true, "started": true, "restartCount": 2,
                        "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(120)}}
                    }],
                    "containerStatuses": [running("a")]}
            }),
            [
                "p",
                "2/2",
                "Running",
                "2 (2m ago)",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>",
            ],
        ),
        (
            "nominated node and readiness gates",
            json!({
                "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "x/ok"}, {"conditionType": "x/lb"}]},
                "status": {"phase": "Pending", "nominatedNodeName": "n2",
                    "conditions": [{"type": "x/ok", "status": "True"}, {"type": "x/lb", "status": "False"}]}
            }),
            [
                "p", "0/1", "Pending", "0", "60m", "<none>", "<none>", "n2", "1/2",
            ],
        ),
    ];
    for (what, pod, want) in cases {
        let got = row("", "Pod", &with_meta(pod, "p"), now());
        let want: Vec<Value> = want.iter().map(|s| json!(s)).collect();
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn pod_without_any_fields() {
    let got = row("", "Pod", &json!({}), now());
    let want = [
        "",
        "0/0",
        "",
        "0",
        "<unknown>",
        "<none>",
        "<none>",
        "<none>",
        "<none>",
    ];
    assert_eq!(got, want.map(|s| json!(s)).to_vec());
    assert_eq!(
        row("", "Pod", &Value::Null, now()).len(),
        columns("", "Pod").len()
    );
}

#[test]
fn service_cells() {
    let svc = |spec: Value, status: Value| with_meta(json!({"spec": spec, "status": status}), "s");
    let cases: Vec<(&str, Value, [&str; 7])> = vec![
        (
            "cluster ip",
            svc(
                json!({"type": "ClusterIP", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "selector": {"k8s-app": "kube-dns"}}),
                json!({}),
            ),
            [
                "s",
                "ClusterIP",
                "10.96.0.10",
                "<none>",
                "53/UDP,53/TCP",
                "60m",
                "k8s-app=kube-dns",
            ],
        ),
        (
            "node port",
            svc(
                json!({"type": "NodePort", "clusterIPs": ["10.96.1.1"], "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
                json!({}),
            ),
            [
                "s",
                "NodePort",
                "10.96.1.1",
                "<none>",
                "80:30080/TCP",
                "60m",
                "<none>",
            ],
        ),
        (
            "load balancer pending",
            svc(
                json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.2"], "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}),
                json!({"loadBalancer": {}}),
            ),
            [
                "s",
                "LoadBalancer",
                "10.96.1.2",
                "<pending>",
                "443:31443/TCP",
                "60m",
                "<none>",
            ],
        ),
        (
            "load balancer with ingress and external IPs",
            svc(
                json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.3"], "externalIPs": ["5.6.7.8"], "ports": [{"port": 80, "protocol": "TCP"}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}, {"hostname": "lb.example.com"}, {"ip": "1.2.3.4"}]}}),
            ),
            [
                "s",
                "LoadBalancer",
                "10.96.1.3",
                "1.2.3.4,9.9.9.9,lb.example.com,5.6.7.8",
                "80/TCP",
                "60m",
                "<none>",
            ],
        ),
        (
            "external name without ports",
            svc(
                json!({"type": "ExternalName", "externalName": "db.example.com"}),
                json!({}),
            ),
            [
                "s",
                "ExternalName",
                "<none>",
                "db.example.com",
                "<none>",
                "60m",
                "<none>",
            ],
        ),
        (
            "headless with external IPs, default protocol",
            svc(
                json!({"clusterIPs": ["None"], "externalIPs": ["1.1.1.1", "2.2.2.2"], "ports": [{"port": 8080}]}),
                json!({}),
            ),
            [
                "s",
                "ClusterIP",
                "None",
                "1.1.1.1,2.2.2.2",
                "8080/TCP",
                "60m",
                "<none>",
            ],
        ),
    ];
    for (what, obj, want) in cases {
        let want: Vec<Value> = want.iter().map(|s| json!(s)).collect();
        assert_eq!(row("", "Service", &obj, now()), want, "{what}");
    }
}

/// One fixture per kind; expected cells include the wide ones.
#[test]
fn kind_cells() {
    let template = json!({"spec": {"containers": [{"name": "web", "image": "nginx:1"}, {"name": "log", "image": "busybox"}]}});
    let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]});
    let cases: Vec<(&str, &str, Value, Value)> = vec![
        (
            "apps",
            "Deployment",
            json!({"spec": {"replicas": 3, "selector": sel, "template": template},
                   "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}),
            json!([
                "x",
                "2/3",
                3,
                2,
                "60m",
                "web,log",
                "nginx:1,busybox",
                "app=web,tier in (a,b)"
            ]),
        ),
        (
            "apps",
            "Deployment",
            json!({"spec": {"template": template}}),
            json!(["x", "0/1", 0, 0, "60m", "web,log", "nginx:1,busybox", ""]),
        ),
        (
            "apps",
            "ReplicaSet",
            json!({"spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template},
                   "status": {"replicas": 2, "readyReplicas": 1}}),
            json!(["x", 2, 2, 1, "60m", "web,log", "nginx:1,busybox", "app=web"]),
        ),
        (
            "",
            "ReplicationController",
            json!({"spec": {"replicas": 1, "selector": {"app": "web"}, "template": template}, "status": {"replicas": 1}}),
            json!(["x", 1, 1, 0, "60m", "web,log", "nginx:1,busybox", "app=web"]),
        ),
        (
            "apps",
            "StatefulSet",
            json!({"spec": {"replicas": 3, "template": template}, "status": {"readyReplicas": 3}}),
            json!(["x", "3/3", "60m", "web,log", "nginx:1,busybox"]),
        ),
        (
            "apps",
            "DaemonSet",
            json!({"spec": {"selector": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}, {"key": "arm", "operator": "DoesNotExist"}]},
                            "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "agent", "image": "a:1"}]}}},
                   "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}}),
            json!([
                "x",
                3,
                3,
                2,
                3,
                2,
                "kubernetes.io/os=linux",
                "60m",
                "agent",
                "a:1",
                "!arm,gpu"
            ]),
        ),
        (
            "batch",
            "Job",
            json!({"spec": {"completions": 1, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}}, "template": template},
                   "status": {"succeeded": 1, "startTime": ago(600), "completionTime": ago(590),
                              "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}}),
            json!([
                "x",
                "Complete",
                "1/1",
                "10s",
                "60m",
                "web,log",
                "nginx:1,busybox",
                "batch.kubernetes.io/controller-uid=u"
            ]),
        ),
        (
            "batch",
            "Job",
            json!({"spec": {"parallelism": 3, "template": template}, "status": {"active": 3, "startTime": ago(150)}}),
            json!([
                "x",
                "Running",
                "0/1 of 3",
                "2m30s",
                "60m",
                "web,log",
                "nginx:1,busybox",
                "<none>"
            ]),
        ),
        (
            "batch",
            "Job",
            json!({"spec": {"completions": 2, "suspend": true}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}}),
            json!(["x", "Suspended", "0/2", "", "60m", "", "", "<none>"]),
        ),
        (
            "batch",
            "Job",
            json!({"spec": {"completions": 2}, "status": {"failed": 1, "conditions": [{"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True"}]}}),
            json!(["x", "Failed", "0/2", "", "60m", "", "", "<none>"]),
        ),
        (
            "batch",
            "CronJob",
            json!({"spec": {"schedule": "*/5 * * * *", "suspend": false, "jobTemplate": {"spec": {"template": template}}},
                   "status": {"active": [{"name": "j1"}], "lastScheduleTime": ago(120)}}),
            json!([
                "x",
                "*/5 * * * *",
                "<none>",
                "False",
                1,
                "2m",
                "60m",
                "web,log",
                "nginx:1,busybox",
                "<none>"
            ]),
        ),
        (
            "batch",
            "CronJob",
            json!({"spec": {"schedule": "@daily", "timeZone": "Etc/UTC", "suspend": true}}),
            json!([
                "x", "@daily", "Etc/UTC", "True", 0, "<none>", "60m", "", "", "<none>"
            ]),
        ),
        (
            "",
            "Endpoints",
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}], "ports": [{"port": 80}, {"port": 443}]}]}),
            json!([
                "x",
                "10.0.0.1:80,[fd00::1]:80,10.0.0.1:443 + 1 more...",
                "60m"
            ]),
        ),
        ("", "Endpoints", json!({}), json!(["x", "<none>", "60m"])),
        (
            "discovery.k8s.io",
            "EndpointSlice",
            json!({"addressType": "IPv4", "ports": [{"port": 80}, {"name": "dns"}, {}],
                   "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3", "10.0.0.4"]}]}),
            json!([
                "x",
                "IPv4",
                "80,dns,*",
                "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...",
                "60m"
            ]),
        ),
        (
            "discovery.k8s.io",
            "EndpointSlice",
            json!({"addressType": "IPv6"}),
            json!(["x", "IPv6", "<unset>", "<unset>", "60m"]),
        ),
        (
            "",
            "Node",
            json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": "", "kubernetes.io/role": "edge"}},
                   "spec": {"unschedulable": true},
                   "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                              "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}, {"type": "Hostname", "address": "x"}],
                              "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "containerd://2.0"}}}),
            json!([
                "x",
                "Ready,SchedulingDisabled",
                "control-plane,edge,worker",
                "60m",
                "v1.33.0",
                "192.168.1.2",
                "<none>",
                "Debian",
                "6.1",
                "containerd://2.0"
            ]),
        ),
        (
            "",
            "Node",
            json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            json!([
                "x",
                "NotReady",
                "<none>",
                "60m",
                "",
                "<none>",
                "<none>",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ]),
        ),
        (
            "",
            "Node",
            json!({}),
            json!([
                "x",
                "Unknown",
                "<none>",
                "60m",
                "",
                "<none>",
                "<none>",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ]),
        ),
        (
            "",
            "Namespace",
            json!({"status": {"phase": "Active"}}),
            json!(["x", "Active", "60m"]),
        ),
        (
            "",
            "ConfigMap",
            json!({"data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}}),
            json!(["x", 3, "60m"]),
        ),
        (
            "",
            "Secret",
            json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
            json!(["x", "kubernetes.io/tls", 2, "60m"]),
        ),
        ("", "ServiceAccount", json!({}), json!(["x", 0, "60m"])),
        (
            "",
            "Event",
            json!({"involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{web}"},
                   "reason": "Pulled", "type": "Normal", "message": "  Pulled image \n", "count": 4,
                   "source": {"component": "kubelet", "host": "n1"},
                   "firstTimestamp": ago(3600), "lastTimestamp": ago(65)}),
            json!([
                "65s",
                "Normal",
                "Pulled",
                "pod/web-1",
                "spec.containers{web}",
                "kubelet, n1",
                "Pulled image",
                "60m",
                4,
                "x"
            ]),
        ),
        (
            "",
            "Event",
            json!({"involvedObject": {"kind": "Node"}, "reason": "R", "type": "Warning", "eventTime": "2024-01-01T00:59:00.000000Z",
                   "reportingComponent": "ctrl", "reportingInstance": "ctrl-1"}),
            json!([
                "60s",
                "Warning",
                "R",
                "node",
                "",
                "ctrl, ctrl-1",
                "",
                "60s",
                1,
                "x"
            ]),
        ),
        (
            "events.k8s.io",
            "Event",
            json!({"regarding": {"kind": "Deployment", "name": "web"}, "reason": "ScalingReplicaSet", "type": "Normal",
                   "note": "Scaled up", "eventTime": "2024-01-01T00:30:00.000000Z", "reportingController": "deployment-controller",
                   "series": {"count": 7, "lastObservedTime": "2024-01-01T00:58:00.000000Z"}}),
            json!([
                "2m",
                "Normal",
                "ScalingReplicaSet",
                "deployment/web",
                "",
                "deployment-controller",
                "Scaled up",
                "30m",
                7,
                "x"
            ]),
        ),
        (
            "autoscaling",
            "HorizontalPodAutoscaler",
            json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 10,
                            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]},
                   "status": {"currentReplicas": 2}}),
            json!([
                "x",
                "Deployment/web",
                "cpu: <unknown>/80%",
                "2",
                10,
                2,
                "60m"
            ]),
        ),
        (
            "autoscaling",
            "HorizontalPodAutoscaler",
            json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "metrics": [
                        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                        {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                        {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "1k"}}}]},
                   "status": {"currentReplicas": 3, "currentMetrics": [
                        {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12, "averageValue": "12m"}}},
                        {"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "50Mi"}}}]}}),
            json!([
                "x",
                "Deployment/web",
                "cpu: 12%/50%, memory: 50Mi/100Mi + 1 more...",
                "1",
                5,
                3,
                "60m"
            ]),
        ),
        (
            "autoscaling",
            "HorizontalPodAutoscaler",
            json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 4, "targetCPUUtilizationPercentage": 60},
                   "status": {"currentCPUUtilizationPercentage": 30, "currentReplicas": 1}}),
            json!(["x", "Deployment/web", "cpu: 30%/60%", "1", 4, 1, "60m"]),
        ),
        (
            "",
            "PersistentVolumeClaim",
            json!({"spec": {"volumeName": "pv-1", "storageClassName": "standard", "volumeMode": "Filesystem"},
                   "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteOnce"]}}),
            json!([
                "x",
                "Bound",
                "pv-1",
                "1Gi",
                "RWO,RWOP",
                "standard",
                "<unset>",
                "60m",
                "Filesystem"
            ]),
        ),
        (
            "",
            "PersistentVolumeClaim",
            json!({"metadata": {"annotations": {"volume.beta.kubernetes.io/storage-class": "old"}}, "spec": {"storageClassName": "new"}, "status": {"phase": "Pending"}}),
            json!([
                "x", "Pending", "", "", "", "old", "<unset>", "60m", "<unset>"
            ]),
        ),
        (
            "",
            "PersistentVolume",
            json!({"spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany", "ReadOnlyMany"], "persistentVolumeReclaimPolicy": "Retain",
                            "claimRef": {"namespace": "default", "name": "data"}, "storageClassName": "fast", "volumeMode": "Block"},
                   "status": {"phase": "Bound"}}),
            json!([
                "x",
                "5Gi",
                "ROX,RWX",
                "Retain",
                "Bound",
                "default/data",
                "fast",
                "<unset>",
                "",
                "60m",
                "Block"
            ]),
        ),
        (
            "storage.k8s.io",
            "StorageClass",
            json!({"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
            json!([
                "x (default)",
                "rancher.io/local-path",
                "Delete",
                "WaitForFirstConsumer",
                false,
                "60m"
            ]),
        ),
        (
            "policy",
            "PodDisruptionBudget",
            json!({"spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}}),
            json!(["x", "50%", "N/A", 1, "60m"]),
        ),
        (
            "policy",
            "PodDisruptionBudget",
            json!({"spec": {"maxUnavailable": 1}}),
            json!(["x", "N/A", "1", 0, "60m"]),
        ),
        (
            "rbac.authorization.k8s.io",
            "Role",
            json!({}),
            json!(["x", CREATED]),
        ),
        (
            "rbac.authorization.k8s.io",
            "ClusterRole",
            json!({}),
            json!(["x", CREATED]),
        ),
        (
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            json!({}),
            json!(["x", CREATED]),
        ),
        ("", "LimitRange", json!({}), json!(["x", CREATED])),
        (
            "rbac.authorization.k8s.io",
            "RoleBinding",
            json!({"roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [
                {"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}, {"kind": "Group", "name": "devs"},
                {"kind": "ServiceAccount", "namespace": "ci", "name": "builder"}]}),
            json!([
                "x",
                "ClusterRole/view",
                "60m",
                "alice, bob",
                "devs",
                "ci/builder"
            ]),
        ),
        (
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            json!({"roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"kind": "Group", "name": "system:masters"}]}),
            json!([
                "x",
                "ClusterRole/cluster-admin",
                "60m",
                "",
                "system:masters",
                ""
            ]),
        ),
        (
            "coordination.k8s.io",
            "Lease",
            json!({"spec": {"holderIdentity": "n1"}}),
            json!(["x", "n1", "60m"]),
        ),
        (
            "scheduling.k8s.io",
            "PriorityClass",
            json!({"value": 2000001000, "globalDefault": false, "preemptionPolicy": "Never"}),
            json!(["x", 2000001000, false, "60m", "Never"]),
        ),
        (
            "networking.k8s.io",
            "Ingress",
            json!({"spec": {"ingressClassName": "nginx", "tls": [{}], "rules": [{"host": "a"}, {"host": "b"}, {}, {"host": "c"}, {"host": "d"}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}),
            json!([
                "x",
                "nginx",
                "a,b,c + 2 more...",
                "1.2.3.4",
                "80, 443",
                "60m"
            ]),
        ),
        (
            "networking.k8s.io",
            "Ingress",
            json!({"spec": {"rules": [{}]}}),
            json!(["x", "<none>", "*", "", "80", "60m"]),
        ),
        (
            "networking.k8s.io",
            "IngressClass",
            json!({"spec": {"controller": "k8s.io/ingress-nginx", "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "p"}}}),
            json!([
                "x",
                "k8s.io/ingress-nginx",
                "IngressParameters.k8s.example.com/p",
                "60m"
            ]),
        ),
        (
            "networking.k8s.io",
            "NetworkPolicy",
            json!({"spec": {"podSelector": {}}}),
            json!(["x", "<none>", "60m"]),
        ),
        (
            "networking.k8s.io",
            "NetworkPolicy",
            json!({"spec": {"podSelector": {"matchLabels": {"role": "db"}}}}),
            json!(["x", "role=db", "60m"]),
        ),
        (
            "",
            "ResourceQuota",
            json!({"status": {"hard": {"requests.cpu": "1", "pods": "10", "limits.memory": "2Gi"}, "used": {"pods": "3", "requests.cpu": "500m"}}}),
            json!([
                "x",
                "pods: 3/10, requests.cpu: 500m/1",
                "limits.memory: 0/2Gi",
                "60m"
            ]),
        ),
        (
            "apps",
            "ControllerRevision",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "controller": true}]}, "revision": 2}),
            json!(["x", "daemonset.apps/agent", 2, "60m"]),
        ),
        (
            "apps",
            "ControllerRevision",
            json!({"revision": 1}),
            json!(["x", "<none>", 1, "60m"]),
        ),
        (
            "certificates.k8s.io",
            "CertificateSigningRequest",
            json!({"spec": {"signerName": "kubernetes.io/kube-apiserver-client", "username": "alice", "expirationSeconds": 86400},
                   "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "Y2VydA=="}}),
            json!([
                "x",
                "60m",
                "kubernetes.io/kube-apiserver-client",
                "alice",
                "24h",
                "Approved,Issued"
            ]),
        ),
        (
            "certificates.k8s.io",
            "CertificateSigningRequest",
            json!({}),
            json!(["x", "60m", "<none>", "", "<none>", "Pending"]),
        ),
        (
            "node.k8s.io",
            "RuntimeClass",
            json!({"handler": "runc"}),
            json!(["x", "runc", "60m"]),
        ),
        (
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration",
            json!({"webhooks": [{}, {}]}),
            json!(["x", 2, "60m"]),
        ),
        (
            "",
            "PodTemplate",
            json!({"template": {"metadata": {"labels": {"b": "2", "a": "1"}}, "spec": template["spec"]}}),
            json!(["x", "web,log", "nginx:1,busybox", "a=1,b=2"]),
        ),
    ];
    for (group, kind, obj, want) in cases {
        let got = row(group, kind, &with_meta(obj, "x"), now());
        assert_eq!(Value::Array(got.clone()), want, "{group}/{kind}");
        assert_eq!(
            got.len(),
            columns(group, kind).len(),
            "{group}/{kind} cell count"
        );
    }
}

#[test]
fn column_headers() {
    let names = |g, k| columns(g, k).iter().map(|c| c.name).collect::<Vec<_>>();
    assert_eq!(
        names("", "Pod"),
        [
            "Name",
            "Ready",
            "Status",
            "Restarts",
            "Age",
            "IP",
            "Node",
            "Nominated Node",
            "Readiness Gates"
        ]
    );
    assert_eq!(names("example.com", "Widget"), ["Name", "Created At"]);
    assert_eq!(columns("example.com", "Widget")[1].ty, "date");
    assert_eq!(names("", "Service")[4], "Port(s)");
    for (g, k) in [
        ("", "Pod"),
        ("apps", "Deployment"),
        ("", "Node"),
        ("rbac.authorization.k8s.io", "Role"),
    ] {
        let name = columns(g, k)
            .iter()
            .find(|c| c.name == "Name")
            .expect("name column");
        assert_eq!(name.format, "name", "{g}/{k}");
    }
    let wide: Vec<_> = columns("apps", "Deployment")
        .iter()
        .filter(|c| c.priority == 1)
        .map(|c| c.name)
        .collect();
    assert_eq!(wide, ["Containers", "Images", "Selector"]);
    // Events lead with LAST SEEN and keep NAME as a wide column.
    assert_eq!(columns("", "Event")[0].name, "Last Seen");
    assert_eq!(
        columns("events.k8s.io", "Event")
            .last()
            .map(|c| (c.name, c.priority)),
        Some(("Name", 1))
    );
}

fn pod_fixture(name: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "7", "creationTimestamp": CREATED},
        "spec": {"containers": [{"name": "a", "image": "i"}]},
        "status": {"phase": phase}
    })
}

#[test]
fn table_envelope() {
    let pods = [pod_fixture("a", "Running"), pod_fixture("b", "Succeeded")];
    let meta = ListMeta {
        resource_version: "42",
        continue_token: Some("tok"),
        remaining_item_count: Some(5),
    };
    let t = table("", "Pod", &pods, IncludeObject::Metadata, &meta, now());
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(
        t["metadata"],
        json!({"resourceVersion": "42", "continue": "tok", "remainingItemCount": 5})
    );
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    assert_eq!(t["columnDefinitions"][3]["type"], "string");
    assert_eq!(t["rows"][0]["cells"][0], "a");
    assert!(t["rows"][0].get("conditions").is_none());
    assert_eq!(t["rows"][1]["conditions"][0]["reason"], "Succeeded");
    assert_eq!(
        t["rows"][0]["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pods[0]["metadata"]})
    );

    // The streaming writer produces the same document.
    let mut buf = Vec::new();
    write_table(
        &mut buf,
        "",
        "Pod",
        &pods,
        IncludeObject::Metadata,
        &meta,
        now(),
    )
    .expect("serializes");
    assert_eq!(
        serde_json::from_slice::<Value>(&buf).expect("valid json"),
        t
    );

    let none = table(
        "",
        "Pod",
        &pods,
        IncludeObject::None,
        &ListMeta::default(),
        now(),
    );
    assert_eq!(none["metadata"], json!({}));
    assert_eq!(none["rows"][0]["object"], Value::Null);
    let full = table(
        "",
        "Pod",
        &pods,
        IncludeObject::Object,
        &ListMeta::default(),
        now(),
    );
    assert_eq!(full["rows"][1]["object"], pods[1]);
    let empty = table(
        "",
        "Pod",
        &[],
        IncludeObject::Metadata,
        &ListMeta::default(),
        now(),
    );
    assert_eq!(empty["rows"], json!([]));
    let bare = table(
        "",
        "Pod",
        &[json!({})],
        IncludeObject::Metadata,
        &ListMeta::default(),
        now(),
    );
    assert_eq!(bare["rows"][0]["object"]["metadata"], json!({}));
}

#[test]
fn include_object_param() {
    let cases = [
        ("", Some(IncludeObject::Metadata)),
        ("Metadata", Some(IncludeObject::Metadata)),
        ("None", Some(IncludeObject::None)),
        ("Object", Some(IncludeObject::Object)),
        ("object", None),
    ];
    for (param, want) in cases {
        assert_eq!(IncludeObject::parse(param), want, "{param:?}");
    }
}

#[test]
fn crd_table() {
    let cols = crd_columns(Some(&json!([
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1, "description": "d"}
    ])));
    let obj = json!({"metadata": {"name": "w"}, "spec": {"replicas": 2}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let mut buf = Vec::new();
    write_crd_table(
        &mut buf,
        &cols,
        [&obj],
        IncludeObject::None,
        &ListMeta::default(),
        now(),
    )
    .expect("serializes");
    let t: Value = serde_json::from_slice(&buf).expect("valid json");
    let names: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["Name", "Ready", "Replicas"]);
    assert_eq!(t["columnDefinitions"][2]["priority"], 1);
    assert_eq!(t["rows"][0]["cells"], json!(["w", "True", 2]));
}
