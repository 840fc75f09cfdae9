//! Unit tests of the index: a table of questions against a small cluster, then updates.

use std::str::FromStr as _;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::{Index, Lookup};

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace fixture")
}

fn service(ns: &str, name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .expect("service fixture")
}

fn slice(
    ns: &str,
    name: &str,
    service: &str,
    family: &str,
    ports: Value,
    eps: Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "namespace": ns, "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "ports": ports,
        "endpoints": eps,
    }))
    .expect("slice fixture")
}

/// A small cluster: a ClusterIP Service with named and unnamed ports, a dual-stack one, a
/// headless StatefulSet-style Service with ready, not-ready and hostname-less endpoints, a
/// headless one publishing not-ready addresses, one with no endpoints, and ExternalNames.
fn cluster() -> Index {
    let mut index = Index::new(
        &Name::from_str("cluster.local").unwrap(),
        5,
        vec!["10.43.0.10".parse().unwrap()],
    );
    for ns in ["default", "kube-system", "empty"] {
        index.apply_namespace(&namespace(ns));
    }
    index.apply_service(&service(
        "default",
        "api",
        json!({
            "clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 9000},
            ],
        }),
    ));
    index.apply_service(&service(
        "default",
        "dual",
        json!({
            "clusterIP": "10.43.0.21", "clusterIPs": ["10.43.0.21", "fd00:43::21"],
            "ports": [{"name": "http", "port": 80}],
        }),
    ));
    index.apply_service(&service(
        "default",
        "web",
        json!({
            "clusterIP": "None", "ports": [{"name": "http", "port": 80}],
        }),
    ));
    index.apply_slice(&slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        json!([
            {"addresses": ["10.42.0.5"], "hostname": "web-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "hostname": "web-1"},
            {"addresses": ["10.42.0.7"], "conditions": {"ready": true}},
            {"addresses": ["10.42.0.8"], "hostname": "web-2", "conditions": {"ready": false}},
        ]),
    ));
    index.apply_service(&service(
        "default",
        "eager",
        json!({
            "clusterIP": "None", "publishNotReadyAddresses": true,
        }),
    ));
    index.apply_slice(&slice(
        "default",
        "eager-1",
        "eager",
        "IPv4",
        json!([]),
        json!([{"addresses": ["10.42.0.9"], "conditions": {"ready": false}}]),
    ));
    index.apply_service(&service("default", "lonely", json!({"clusterIP": "None"})));
    index.apply_service(&service(
        "default",
        "ext",
        json!({
            "type": "ExternalName", "externalName": "db.example.com",
        }),
    ));
    index.apply_service(&service(
        "default",
        "alias",
        json!({
            "type": "ExternalName", "externalName": "api.default.svc.cluster.local.",
        }),
    ));
    index
}

fn render_record(r: &Record) -> String {
    let data = match &r.data {
        RData::A(a) => format!("A {a}"),
        RData::AAAA(a) => format!("AAAA {a}"),
        RData::CNAME(c) => format!("CNAME {}", c.0),
        RData::PTR(p) => format!("PTR {}", p.0),
        RData::NS(n) => format!("NS {}", n.0),
        RData::SRV(s) => format!("SRV {} {} {} {}", s.priority, s.weight, s.port, s.target),
        RData::TXT(t) => format!("TXT {t}"),
        RData::SOA(s) => format!("SOA {} {}", s.mname, s.rname),
        other => format!("{other:?}"),
    };
    format!("{} {} {data}", r.name, r.ttl)
}

fn render(lookup: &Lookup) -> String {
    match lookup {
        Lookup::NxDomain => "NXDOMAIN".to_string(),
        Lookup::NotOurs => "NOT OURS".to_string(),
        Lookup::Alias { cname, target } => format!("{} => {target}", render_record(cname)),
        Lookup::Records { answers, .. } if answers.is_empty() => "NODATA".to_string(),
        Lookup::Records {
            answers,
            additionals,
        } => {
            let mut out: Vec<String> = answers.iter().map(render_record).collect();
            out.extend(
                additionals
                    .iter()
                    .map(|r| format!("+ {}", render_record(r))),
            );
            out.join(" | ")
        }
    }
}

fn ask(index: &Index, name: &str, qtype: RecordType) -> String {
    render(&index.lookup(&Name::from_ascii(name).unwrap(), qtype))
}

#[test]
fn answers_follow_the_dns_spec_and_coredns() {
    use RecordType::*;
    let index = cluster();
    let cases: &[(&str, RecordType, &str)] = &[
        // ClusterIP Services.
        (
            "api.default.svc.cluster.local.",
            A,
            "api.default.svc.cluster.local. 5 A 10.43.0.20",
        ),
        (
            "API.Default.SVC.cluster.LOCAL.",
            A,
            "API.Default.SVC.cluster.LOCAL. 5 A 10.43.0.20",
        ),
        ("api.default.svc.cluster.local.", AAAA, "NODATA"),
        ("api.default.svc.cluster.local.", MX, "NODATA"),
        (
            "dual.default.svc.cluster.local.",
            AAAA,
            "dual.default.svc.cluster.local. 5 AAAA fd00:43::21",
        ),
        (
            "_http._tcp.api.default.svc.cluster.local.",
            SRV,
            "_http._tcp.api.default.svc.cluster.local. 5 SRV 0 100 80 api.default.svc.cluster.local. \
             | + api.default.svc.cluster.local. 5 A 10.43.0.20",
        ),
        (
            "_dns._udp.api.default.svc.cluster.local.",
            SRV,
            "_dns._udp.api.default.svc.cluster.local. 5 SRV 0 100 53 api.default.svc.cluster.local. \
             | + api.default.svc.cluster.local. 5 A 10.43.0.20",
        ),
        ("_dns._tcp.api.default.svc.cluster.local.", SRV, "NXDOMAIN"),
        ("_nope._tcp.api.default.svc.cluster.local.", SRV, "NXDOMAIN"),
        ("_http._tcp.api.default.svc.cluster.local.", A, "NODATA"),
        (
            "api.default.svc.cluster.local.",
            SRV,
            "api.default.svc.cluster.local. 5 SRV 0 33 80 api.default.svc.cluster.local. \
             | api.default.svc.cluster.local. 5 SRV 0 33 53 api.default.svc.cluster.local. \
             | api.default.svc.cluster.local. 5 SRV 0 33 9000 api.default.svc.cluster.local. \
             | + api.default.svc.cluster.local. 5 A 10.43.0.20",
        ),
        ("nope.default.svc.cluster.local.", A, "NXDOMAIN"),
        // Headless: ready endpoints only (ready unset counts as ready).
        (
            "web.default.svc.cluster.local.",
            A,
            "web.default.svc.cluster.local. 5 A 10.42.0.7 | web.default.svc.cluster.local. 5 A 10.42.0.5 \
             | web.default.svc.cluster.local. 5 A 10.42.0.6",
        ),
        ("web.default.svc.cluster.local.", AAAA, "NODATA"),
        (
            "web-0.web.default.svc.cluster.local.",
            A,
            "web-0.web.default.svc.cluster.local. 5 A 10.42.0.5",
        ),
        (
            "web-1.web.default.svc.cluster.local.",
            A,
            "web-1.web.default.svc.cluster.local. 5 A 10.42.0.6",
        ),
        ("web-2.web.default.svc.cluster.local.", A, "NXDOMAIN"),
        (
            "10-42-0-7.web.default.svc.cluster.local.",
            A,
            "10-42-0-7.web.default.svc.cluster.local. 5 A 10.42.0.7",
        ),
        // An endpoint with a hostname is known by it only.
        ("10-42-0-5.web.default.svc.cluster.local.", A, "NXDOMAIN"),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            SRV,
            "_http._tcp.web.default.svc.cluster.local. 5 SRV 0 33 8080 10-42-0-7.web.default.svc.cluster.local. \
             | _http._tcp.web.default.svc.cluster.local. 5 SRV 0 33 8080 web-0.web.default.svc.cluster.local. \
             | _http._tcp.web.default.svc.cluster.local. 5 SRV 0 33 8080 web-1.web.default.svc.cluster.local. \
             | + 10-42-0-7.web.default.svc.cluster.local. 5 A 10.42.0.7 \
             | + web-0.web.default.svc.cluster.local. 5 A 10.42.0.5 \
             | + web-1.web.default.svc.cluster.local. 5 A 10.42.0.6",
        ),
        ("_http._udp.web.default.svc.cluster.local.", SRV, "NXDOMAIN"),
        (
            "eager.default.svc.cluster.local.",
            A,
            "eager.default.svc.cluster.local. 5 A 10.42.0.9",
        ),
        // Spec 2.4.1: a headless Service without ready endpoints is NXDOMAIN.
        ("lonely.default.svc.cluster.local.", A, "NXDOMAIN"),
        // ExternalName.
        (
            "ext.default.svc.cluster.local.",
            A,
            "ext.default.svc.cluster.local. 5 CNAME db.example.com. => db.example.com.",
        ),
        (
            "alias.default.svc.cluster.local.",
            CNAME,
            "alias.default.svc.cluster.local. 5 CNAME api.default.svc.cluster.local. => api.default.svc.cluster.local.",
        ),
        ("x.ext.default.svc.cluster.local.", A, "NXDOMAIN"),
        // Intermediate names and namespaces.
        ("cluster.local.", A, "NODATA"),
        ("svc.cluster.local.", A, "NODATA"),
        ("default.svc.cluster.local.", A, "NODATA"),
        ("empty.svc.cluster.local.", A, "NODATA"),
        ("nons.svc.cluster.local.", A, "NXDOMAIN"),
        ("api.nons.svc.cluster.local.", A, "NXDOMAIN"),
        ("foo.cluster.local.", A, "NXDOMAIN"),
        ("a.b.c.d.e.default.svc.cluster.local.", A, "NXDOMAIN"),
        // Pods (CoreDNS `pods insecure`).
        (
            "10-42-0-99.default.pod.cluster.local.",
            A,
            "10-42-0-99.default.pod.cluster.local. 5 A 10.42.0.99",
        ),
        ("10-42-0-99.default.pod.cluster.local.", AAAA, "NODATA"),
        (
            "fd00--1.default.pod.cluster.local.",
            AAAA,
            "fd00--1.default.pod.cluster.local. 5 AAAA fd00::1",
        ),
        ("10-42-0-999.default.pod.cluster.local.", A, "NXDOMAIN"),
        ("web-0.default.pod.cluster.local.", A, "NXDOMAIN"),
        ("10-42-0-99.nons.pod.cluster.local.", A, "NXDOMAIN"),
        ("default.pod.cluster.local.", A, "NODATA"),
        // Reverse: ClusterIPs, then ready endpoints under their names.
        (
            "20.0.43.10.in-addr.arpa.",
            PTR,
            "20.0.43.10.in-addr.arpa. 5 PTR api.default.svc.cluster.local.",
        ),
        (
            "5.0.42.10.in-addr.arpa.",
            PTR,
            "5.0.42.10.in-addr.arpa. 5 PTR web-0.web.default.svc.cluster.local.",
        ),
        (
            "7.0.42.10.in-addr.arpa.",
            PTR,
            "7.0.42.10.in-addr.arpa. 5 PTR 10-42-0-7.web.default.svc.cluster.local.",
        ),
        (
            "1.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa.",
            PTR,
            "1.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa. 5 PTR dual.default.svc.cluster.local.",
        ),
        ("20.0.43.10.in-addr.arpa.", A, "NODATA"),
        ("8.0.42.10.in-addr.arpa.", PTR, "NOT OURS"),
        ("1.1.168.192.in-addr.arpa.", PTR, "NOT OURS"),
        ("020.0.43.10.in-addr.arpa.", PTR, "NOT OURS"),
        // Outside the zone.
        ("example.com.", A, "NOT OURS"),
        ("cluster.local.example.com.", A, "NOT OURS"),
        // Apex and the schema version.
        (
            "cluster.local.",
            SOA,
            "cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local.",
        ),
        (
            "cluster.local.",
            NS,
            "cluster.local. 5 NS ns.dns.cluster.local. | + ns.dns.cluster.local. 5 A 10.43.0.10",
        ),
        (
            "ns.dns.cluster.local.",
            A,
            "ns.dns.cluster.local. 5 A 10.43.0.10",
        ),
        (
            "dns-version.cluster.local.",
            TXT,
            "dns-version.cluster.local. 28800 TXT 1.1.0",
        ),
        ("dns-version.cluster.local.", A, "NODATA"),
    ];
    let mut failures = Vec::new();
    for (name, qtype, want) in cases {
        let mut got = ask(&index, name, *qtype);
        // A/AAAA order is not part of the answer (the server shuffles them): compare sorted.
        if *qtype == A && got.contains(" | ") && !got.contains("+ ") {
            let mut parts: Vec<&str> = got.split(" | ").collect();
            parts.sort();
            got = parts.join(" | ");
        }
        let mut want = want.split_whitespace().collect::<Vec<_>>().join(" ");
        if *qtype == A && want.contains(" | ") && !want.contains("+ ") {
            let mut parts: Vec<&str> = want.split(" | ").collect();
            parts.sort();
            want = parts.join(" | ");
        }
        if got != want {
            failures.push(format!("{name} {qtype}:\n   got  {got}\n   want {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn updates_apply_one_object_at_a_time() {
    use RecordType::*;
    let mut index = cluster();
    let ptr = "6.0.42.10.in-addr.arpa.";
    assert_eq!(
        ask(&index, ptr, PTR),
        "6.0.42.10.in-addr.arpa. 5 PTR web-1.web.default.svc.cluster.local."
    );

    // web-1 becomes not ready, web-3 joins in a second slice.
    index.apply_slice(&slice(
        "default",
        "web-abc",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        json!([
            {"addresses": ["10.42.0.5"], "hostname": "web-0"},
            {"addresses": ["10.42.0.6"], "hostname": "web-1", "conditions": {"ready": false}},
        ]),
    ));
    index.apply_slice(&slice(
        "default",
        "web-def",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["10.42.1.3"], "hostname": "web-3"}]),
    ));
    assert_eq!(
        ask(&index, "web-1.web.default.svc.cluster.local.", A),
        "NXDOMAIN"
    );
    assert_eq!(ask(&index, ptr, PTR), "NOT OURS");
    assert_eq!(
        ask(&index, "web-3.web.default.svc.cluster.local.", A),
        "web-3.web.default.svc.cluster.local. 5 A 10.42.1.3"
    );
    assert_eq!(
        ask(&index, "10-42-0-7.web.default.svc.cluster.local.", A),
        "NXDOMAIN"
    );

    // The Service publishes not-ready addresses: web-1 is back.
    index.apply_service(&service("default", "web", json!({
        "clusterIP": "None", "publishNotReadyAddresses": true, "ports": [{"name": "http", "port": 80}],
    })));
    assert_eq!(
        ask(&index, ptr, PTR),
        "6.0.42.10.in-addr.arpa. 5 PTR web-1.web.default.svc.cluster.local."
    );

    // Deleting a slice removes its endpoints and their reverse names.
    index.delete_slice(&slice(
        "default",
        "web-def",
        "web",
        "IPv4",
        json!([]),
        json!([]),
    ));
    assert_eq!(
        ask(&index, "web-3.web.default.svc.cluster.local.", A),
        "NXDOMAIN"
    );
    assert_eq!(ask(&index, "3.1.42.10.in-addr.arpa.", PTR), "NOT OURS");

    // A ClusterIP that changes moves its reverse name.
    index.apply_service(&service(
        "default",
        "api",
        json!({"clusterIP": "10.43.0.30"}),
    ));
    assert_eq!(ask(&index, "20.0.43.10.in-addr.arpa.", PTR), "NOT OURS");
    assert_eq!(
        ask(&index, "30.0.43.10.in-addr.arpa.", PTR),
        "30.0.43.10.in-addr.arpa. 5 PTR api.default.svc.cluster.local."
    );

    // Deleting a Service: its names are gone, while its namespace still answers NODATA.
    index.delete_service(&service("default", "api", json!({})));
    assert_eq!(ask(&index, "api.default.svc.cluster.local.", A), "NXDOMAIN");
    assert_eq!(ask(&index, "30.0.43.10.in-addr.arpa.", PTR), "NOT OURS");
    assert_eq!(ask(&index, "default.svc.cluster.local.", A), "NODATA");

    // Endpoints of a deleted Service answer nothing; they return with the Service.
    index.delete_service(&service("default", "web", json!({})));
    assert_eq!(
        ask(&index, "web-0.web.default.svc.cluster.local.", A),
        "NXDOMAIN"
    );
    assert_eq!(ask(&index, "5.0.42.10.in-addr.arpa.", PTR), "NOT OURS");
    index.apply_service(&service("default", "web", json!({"clusterIP": "None"})));
    assert_eq!(
        ask(&index, "web-0.web.default.svc.cluster.local.", A),
        "web-0.web.default.svc.cluster.local. 5 A 10.42.0.5"
    );

    // A headless Service turned ClusterIP: its endpoint names still resolve (as CoreDNS), its
    // own name is the ClusterIP.
    index.apply_service(&service(
        "default",
        "web",
        json!({"clusterIP": "10.43.0.40"}),
    ));
    assert_eq!(
        ask(&index, "web.default.svc.cluster.local.", A),
        "web.default.svc.cluster.local. 5 A 10.43.0.40"
    );
    assert_eq!(
        ask(&index, "web-0.web.default.svc.cluster.local.", A),
        "web-0.web.default.svc.cluster.local. 5 A 10.42.0.5"
    );

    // A slice relabelled to another Service moves with it.
    index.apply_service(&service("default", "other", json!({"clusterIP": "None"})));
    index.apply_slice(&slice(
        "default",
        "web-abc",
        "other",
        "IPv4",
        json!([]),
        json!([{"addresses": ["10.42.0.5"], "hostname": "web-0"}]),
    ));
    assert_eq!(
        ask(&index, "web-0.web.default.svc.cluster.local.", A),
        "NXDOMAIN"
    );
    assert_eq!(
        ask(&index, "web-0.other.default.svc.cluster.local.", A),
        "web-0.other.default.svc.cluster.local. 5 A 10.42.0.5"
    );

    // Deleting a namespace hides everything under it.
    index.delete_namespace(&namespace("default"));
    assert_eq!(ask(&index, "web.default.svc.cluster.local.", A), "NXDOMAIN");
    assert_eq!(ask(&index, "default.svc.cluster.local.", A), "NXDOMAIN");
    assert_eq!(
        ask(&index, "10-42-0-99.default.pod.cluster.local.", A),
        "NXDOMAIN"
    );
}

#[test]
fn every_change_bumps_the_soa_serial() {
    let mut index = cluster();
    let serial = |i: &Index| match &i.soa().data {
        RData::SOA(soa) => soa.serial,
        other => panic!("not an SOA: {other:?}"),
    };
    let before = serial(&index);
    index.apply_namespace(&namespace("new"));
    assert!(serial(&index) > before);
}

#[test]
fn objects_the_dns_cannot_use_are_ignored() {
    let mut index = cluster();
    // No service-name label, FQDN addresses, unparsable addresses, a bad ExternalName.
    let mut unlabelled = slice(
        "default",
        "stray",
        "x",
        "IPv4",
        json!([]),
        json!([{"addresses": ["10.42.9.9"]}]),
    );
    unlabelled.metadata.labels = None;
    index.apply_slice(&unlabelled);
    index.apply_service(&service("default", "fq", json!({"clusterIP": "None"})));
    index.apply_slice(&slice(
        "default",
        "fq-1",
        "fq",
        "FQDN",
        json!([]),
        json!([{"addresses": ["db.example.com"]}]),
    ));
    index.apply_service(&service("default", "garbage", json!({"clusterIP": "None"})));
    index.apply_slice(&slice(
        "default",
        "garbage-1",
        "garbage",
        "IPv4",
        json!([]),
        json!([{"addresses": ["not-an-ip", "10.42.9.10"]}]),
    ));
    index.apply_service(&service(
        "default",
        "badext",
        json!({"type": "ExternalName", "externalName": ""}),
    ));
    assert_eq!(
        ask(&index, "9.9.42.10.in-addr.arpa.", RecordType::PTR),
        "NOT OURS"
    );
    assert_eq!(
        ask(&index, "fq.default.svc.cluster.local.", RecordType::A),
        "NXDOMAIN"
    );
    assert_eq!(
        ask(&index, "garbage.default.svc.cluster.local.", RecordType::A),
        "garbage.default.svc.cluster.local. 5 A 10.42.9.10"
    );
    assert_eq!(
        ask(&index, "badext.default.svc.cluster.local.", RecordType::A),
        "NXDOMAIN"
    );
    index.apply_service(&service(
        "default",
        "ipext",
        json!({"type": "ExternalName", "externalName": "192.0.2.7"}),
    ));
    assert_eq!(
        ask(&index, "ipext.default.svc.cluster.local.", RecordType::A),
        "NXDOMAIN"
    );
}

#[test]
fn labels_that_are_not_text_are_no_names() {
    let index = cluster();
    let name =
        Name::from_labels([&b"\xff\xfe"[..], b"default", b"svc", b"cluster", b"local"]).unwrap();
    assert_eq!(render(&index.lookup(&name, RecordType::A)), "NXDOMAIN");
}
