//! Table tests for defaulting: each case is an input object and exactly what upstream
//! stores for it (server-set metadata and `status` aside).

use super::{apply, job_selector};
use serde_json::{Value, json};

fn defaulted(group: &str, version: &str, kind: &str, mut obj: Value) -> Value {
    apply(group, version, kind, &mut obj);
    obj
}

#[test]
fn minimal_deployment_matches_fixture() {
    let input: Value =
        serde_json::from_str(include_str!("testdata/deployment-in.json")).unwrap_or_default();
    let want: Value =
        serde_json::from_str(include_str!("testdata/deployment-out.json")).unwrap_or_default();
    assert!(want.is_object());
    assert_eq!(defaulted("apps", "v1", "Deployment", input), want);
}

#[test]
fn kinds() {
    let cases: Vec<(&str, &str, &str, Value, Value)> = vec![
        (
            "",
            "v1",
            "Pod",
            json!({"spec": {"containers": [{"name": "a", "image": "busybox:1.36", "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}},
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "readinessProbe": {"httpGet": {"port": 80}}}],
                "volumes": [{"name": "v"}, {"name": "c", "configMap": {"name": "cm"}}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}},
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "readinessProbe": {"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
                "volumes": [{"name": "v", "emptyDir": {}}, {"name": "c", "configMap": {"name": "cm", "defaultMode": 420}}],
                "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                "securityContext": {}, "terminationGracePeriodSeconds": 30, "enableServiceLinks": true}}),
        ),
        (
            "",
            "v1",
            "Service",
            json!({"spec": {"selector": {"app": "x"}, "ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}}),
            json!({"spec": {"selector": {"app": "x"}, "ports": [
                    {"port": 80, "protocol": "TCP", "targetPort": 80},
                    {"port": 443, "protocol": "TCP", "targetPort": "https"}],
                "type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]}}),
        ),
        (
            "",
            "v1",
            "Service",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                "sessionAffinity": "None", "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
                "allocateLoadBalancerNodePorts": true, "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]}}),
        ),
        (
            "",
            "v1",
            "Namespace",
            json!({"metadata": {"name": "dev"}}),
            json!({"metadata": {"name": "dev", "labels": {"kubernetes.io/metadata.name": "dev"}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        ),
        (
            "",
            "v1",
            "Secret",
            json!({"stringData": {"k": "v"}, "data": {"a": "Yg=="}}),
            json!({"type": "Opaque", "data": {"a": "Yg==", "k": "dg=="}}),
        ),
        (
            "",
            "v1",
            "ReplicationController",
            json!({"spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}}}),
            json!({"metadata": {"labels": {"app": "x"}}, "spec": {"replicas": 1, "selector": {"app": "x"},
                "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [],
                "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                "securityContext": {}, "terminationGracePeriodSeconds": 30}}}}),
        ),
        (
            "apps",
            "v1",
            "StatefulSet",
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "d"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}]}}),
            json!({"spec": {"podManagementPolicy": "OrderedReady", "replicas": 1, "revisionHistoryLimit": 10,
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
                "volumeClaimTemplates": [{"metadata": {"name": "d"}, "spec": {"resources": {"requests": {"storage": "1Gi"}},
                    "volumeMode": "Filesystem"}, "status": {"phase": "Pending"}}]}}),
        ),
        (
            "apps",
            "v1",
            "DaemonSet",
            json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}),
            json!({"spec": {"updateStrategy": {"type": "OnDelete"}, "revisionHistoryLimit": 10}}),
        ),
        (
            "apps",
            "v1",
            "DaemonSet",
            json!({"spec": {}}),
            json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                "revisionHistoryLimit": 10}}),
        ),
        (
            "batch",
            "v1",
            "Job",
            json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}}),
            json!({"metadata": {"labels": {"a": "b"}}, "spec": {"completions": 1, "parallelism": 1, "backoffLimit": 6,
                "completionMode": "NonIndexed", "suspend": false, "podReplacementPolicy": "TerminatingOrFailed",
                "manualSelector": false, "template": {"metadata": {"labels": {"a": "b"}}}}}),
        ),
        (
            "batch",
            "v1",
            "Job",
            json!({"spec": {"parallelism": 3}}),
            json!({"spec": {"parallelism": 3, "backoffLimit": 6, "completionMode": "NonIndexed", "suspend": false,
                "podReplacementPolicy": "TerminatingOrFailed", "manualSelector": false}}),
        ),
        (
            "batch",
            "v1",
            "CronJob",
            json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}}}),
            json!({"spec": {"schedule": "* * * * *", "concurrencyPolicy": "Allow", "suspend": false,
                "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "dnsPolicy": "ClusterFirst",
                    "schedulerName": "default-scheduler", "securityContext": {}, "terminationGracePeriodSeconds": 30}}}}}}),
        ),
        (
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            json!({"spec": {"maxReplicas": 5, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}}),
            json!({"spec": {"maxReplicas": 5, "minReplicas": 1,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                        {"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]},
                    "scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Max", "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 15}]}}}}),
        ),
        (
            "autoscaling",
            "v1",
            "HorizontalPodAutoscaler",
            json!({"spec": {"maxReplicas": 5}}),
            json!({"spec": {"maxReplicas": 5, "minReplicas": 1}}),
        ),
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            json!({"spec": {"egress": [{"ports": [{"port": 53}]}]}}),
            json!({"spec": {"egress": [{"ports": [{"port": 53, "protocol": "TCP"}]}], "policyTypes": ["Ingress", "Egress"]}}),
        ),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s"}]}),
            json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s"}]}),
        ),
        (
            "",
            "v1",
            "PersistentVolumeClaim",
            json!({"spec": {"resources": {"requests": {"storage": "1.5Gi"}}}}),
            json!({"spec": {"resources": {"requests": {"storage": "1536Mi"}}, "volumeMode": "Filesystem"}, "status": {"phase": "Pending"}}),
        ),
        (
            "example.com",
            "v1",
            "Widget",
            json!({"spec": {"anything": null}}),
            json!({"spec": {"anything": null}}),
        ),
    ];
    for (group, version, kind, input, want) in cases {
        assert_eq!(
            defaulted(group, version, kind, input),
            want,
            "{group}/{version} {kind}"
        );
    }
}

#[test]
fn job_selector_generation() {
    let mut job = json!({"metadata": {"name": "pi"}, "spec": {"manualSelector": false, "template": {"metadata": {"labels": {"job-name": "mine"}}}}});
    job_selector(&mut job, "u1");
    assert_eq!(
        job["spec"]["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}})
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"],
        json!({"batch.kubernetes.io/controller-uid": "u1", "batch.kubernetes.io/job-name": "pi", "controller-uid": "u1", "job-name": "mine"})
    );
    let mut manual = json!({"spec": {"manualSelector": true}});
    job_selector(&mut manual, "u1");
    assert_eq!(manual, json!({"spec": {"manualSelector": true}}));
}
