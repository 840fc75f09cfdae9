//! The policy semantics, case by case, against small clusters written as JSON.

use serde_json::{Value, json};

use super::*;

const NODE: &str = "n1";

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn with_ports(mut pod: Pod, ports: Value) -> Pod {
    pod.spec.as_mut().unwrap().containers[0].ports = Some(serde_json::from_value(ports).unwrap());
    pod
}

fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .unwrap()
}

fn key(ns: &str, name: &str) -> PolicyRef {
    PolicyRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|s| ip(s)).collect()
}

fn range(first: &str, last: &str) -> IpRange {
    IpRange {
        first: ip(first),
        last: ip(last),
    }
}

/// A small cluster: namespaces `default`, `team-a` (team=a) and `team-b` (team=b, no name
/// label, as if created before the label existed); pods on this node and on another.
fn cluster() -> (Vec<Pod>, Vec<Namespace>) {
    let pods = vec![
        pod(
            "default",
            "server",
            NODE,
            "10.42.0.2",
            json!({"app": "server"}),
        ),
        pod(
            "default",
            "client",
            NODE,
            "10.42.0.3",
            json!({"app": "client"}),
        ),
        pod(
            "default",
            "other",
            "n2",
            "10.42.1.2",
            json!({"app": "other"}),
        ),
        pod(
            "default",
            "remote-server",
            "n2",
            "10.42.1.3",
            json!({"app": "server"}),
        ),
        pod(
            "team-a",
            "a-client",
            "n2",
            "10.42.1.4",
            json!({"app": "client"}),
        ),
        pod(
            "team-b",
            "b-client",
            NODE,
            "10.42.0.4",
            json!({"app": "client"}),
        ),
    ];
    let namespaces = vec![
        namespace("default", json!({"kubernetes.io/metadata.name": "default"})),
        namespace(
            "team-a",
            json!({"kubernetes.io/metadata.name": "team-a", "team": "a"}),
        ),
        namespace("team-b", json!({"team": "b"})),
    ];
    (pods, namespaces)
}

fn compute_with(policies: &[NetworkPolicy]) -> Model {
    let (pods, namespaces) = cluster();
    compute(policies, &pods, &namespaces, NODE)
}

/// The single ingress rule of `default/p`.
fn ingress_rule(model: &Model) -> &Rule {
    let rules = model.policies[&key("default", "p")]
        .ingress
        .as_ref()
        .unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    &rules[0]
}

/// The addresses a rule's selector peers pick, together.
fn peer_pods(model: &Model, rule: &Rule) -> BTreeSet<Ipv4Addr> {
    match &rule.peers {
        Peers::Only { selectors, .. } if !selectors.is_empty() => selectors
            .iter()
            .flat_map(|s| model.peer_sets[s].iter().copied())
            .collect(),
        other => panic!("expected selector peers, got {other:?}"),
    }
}

#[test]
fn no_policy_isolates_nothing() {
    assert_eq!(compute_with(&[]), Model::default());
}

#[test]
fn a_policy_isolates_the_local_pods_it_selects_and_no_others() {
    let model = compute_with(&[policy(
        "default",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": []}),
    )]);
    // The remote server is also selected, but its node enforces for it.
    assert_eq!(
        model.ingress.keys().copied().collect::<BTreeSet<_>>(),
        ips(&["10.42.0.2"])
    );
    assert_eq!(
        model.ingress[&ip("10.42.0.2")],
        BTreeSet::from([key("default", "p")])
    );
    assert!(model.egress.is_empty());
    assert_eq!(model.policies[&key("default", "p")].ingress, Some(vec![]));
}

#[test]
fn an_empty_pod_selector_selects_the_whole_namespace_only() {
    let model = compute_with(&[policy("default", "p", json!({"podSelector": {}}))]);
    assert_eq!(
        model.ingress.keys().copied().collect::<BTreeSet<_>>(),
        ips(&["10.42.0.2", "10.42.0.3"])
    );
}

#[test]
fn policy_types_default_like_the_api_server() {
    let cases = [
        (json!({"podSelector": {}}), (true, false)),
        (json!({"podSelector": {}, "egress": []}), (true, false)),
        (json!({"podSelector": {}, "egress": [{}]}), (true, true)),
        (
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            (false, true),
        ),
        (
            json!({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]}),
            (true, false),
        ),
        (
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            (true, true),
        ),
    ];
    for (spec, want) in cases {
        let p = policy("default", "p", spec.clone());
        assert_eq!(policy_types(&p), want, "{spec}");
        let model = compute_with(&[p]);
        let rules = &model.policies[&key("default", "p")];
        assert_eq!(
            (rules.ingress.is_some(), rules.egress.is_some()),
            want,
            "{spec}"
        );
        assert_eq!(model.ingress.is_empty(), !want.0, "{spec}");
        assert_eq!(model.egress.is_empty(), !want.1, "{spec}");
    }
}

#[test]
fn several_policies_on_one_pod_add_up() {
    let model = compute_with(&[
        policy(
            "default",
            "b",
            json!({"podSelector": {"matchLabels": {"app": "server"}}}),
        ),
        policy(
            "default",
            "a",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ),
    ]);
    assert_eq!(
        model.ingress[&ip("10.42.0.2")],
        BTreeSet::from([key("default", "a"), key("default", "b")])
    );
    assert_eq!(
        model.egress[&ip("10.42.0.2")],
        BTreeSet::from([key("default", "a")])
    );
}

#[test]
fn peers_by_pod_and_namespace_selectors() {
    let cases = [
        (
            "podSelector alone: the policy's namespace, on any node",
            json!([{"podSelector": {"matchLabels": {"app": "client"}}}]),
            vec!["10.42.0.3"],
        ),
        (
            "empty podSelector: every pod of the namespace",
            json!([{"podSelector": {}}]),
            vec!["10.42.0.2", "10.42.0.3", "10.42.1.2", "10.42.1.3"],
        ),
        (
            "namespaceSelector alone: every pod of those namespaces",
            json!([{"namespaceSelector": {"matchLabels": {"team": "a"}}}]),
            vec!["10.42.1.4"],
        ),
        (
            "both: the selected pods of the selected namespaces",
            json!([{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
                    "podSelector": {"matchLabels": {"app": "client"}}}]),
            vec!["10.42.0.4", "10.42.1.4"],
        ),
        (
            "the name label is there even when the object lacks it",
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}}}]),
            vec!["10.42.0.4"],
        ),
        (
            "empty namespaceSelector: every namespace",
            json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}]),
            vec!["10.42.0.3", "10.42.0.4", "10.42.1.4"],
        ),
        (
            "two peers: their union",
            json!([{"podSelector": {"matchLabels": {"app": "other"}}},
                   {"namespaceSelector": {"matchLabels": {"team": "b"}}}]),
            vec!["10.42.0.4", "10.42.1.2"],
        ),
        (
            "nothing matches: an empty set, not everyone",
            json!([{"podSelector": {"matchLabels": {"app": "nobody"}}}]),
            vec![],
        ),
    ];
    for (what, from, want) in cases {
        let model = compute_with(&[policy(
            "default",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"from": from}]}),
        )]);
        let rule = ingress_rule(&model);
        assert_eq!(peer_pods(&model, rule), ips(&want), "{what}");
        assert_eq!(rule.ports, Ports::Any, "{what}");
        assert!(
            matches!(&rule.peers, Peers::Only { blocks: None, .. }),
            "{what}"
        );
    }
}

#[test]
fn rules_with_the_same_selector_share_its_set() {
    let from = json!([{"podSelector": {"matchLabels": {"app": "client"}}}]);
    let from_swapped = json!([{"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["client"]}]}}]);
    let model = compute_with(&[
        policy(
            "default",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": from}]}),
        ),
        policy(
            "default",
            "q",
            json!({"podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": from, "ports": [{"port": 80}]}, {"from": from_swapped}]}),
        ),
        // The same pod selector scoped to another namespace is another set.
        policy(
            "team-b",
            "r",
            json!({"podSelector": {}, "ingress": [{"from": from}]}),
        ),
    ]);
    let sel = |ns: &str, pods: &str| PeerSelector {
        scope: Scope::Namespace(ns.into()),
        pods: pods.into(),
    };
    assert_eq!(
        model.peer_sets,
        BTreeMap::from([
            (sel("default", "app in (client)"), ips(&["10.42.0.3"])),
            (sel("default", "app=client"), ips(&["10.42.0.3"])),
            (sel("team-b", "app=client"), ips(&["10.42.0.4"])),
        ])
    );
    assert_eq!(
        sel("default", "app=client").to_string(),
        "pods(app=client) in default"
    );
    let ns_sel = PeerSelector {
        scope: Scope::Namespaces("team=a".into()),
        pods: String::new(),
    };
    assert_eq!(ns_sel.to_string(), "pods() in namespaces(team=a)");
}

#[test]
fn empty_or_missing_from_allows_every_source() {
    for rule in [json!({}), json!({"from": []})] {
        let model = compute_with(&[policy(
            "default",
            "p",
            json!({"podSelector": {}, "ingress": [rule]}),
        )]);
        assert_eq!(
            ingress_rule(&model),
            &Rule {
                peers: Peers::Any,
                ports: Ports::Any
            }
        );
    }
}

#[test]
fn ip_blocks_subtract_their_exceptions_and_merge() {
    let cases = [
        (
            json!([{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.255.255.255/32"]}}]),
            vec![
                range("10.0.0.0", "10.0.255.255"),
                range("10.2.0.0", "10.255.255.254"),
            ],
        ),
        (
            json!([{"ipBlock": {"cidr": "192.168.1.7/24"}}, {"ipBlock": {"cidr": "192.168.0.0/24"}}]),
            vec![range("192.168.0.0", "192.168.1.255")],
        ),
        (
            json!([{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["0.0.0.0/1"]}}]),
            vec![range("128.0.0.0", "255.255.255.255")],
        ),
        (json!([{"ipBlock": {"cidr": "fd00::/8"}}]), vec![]),
        (
            json!([{"ipBlock": {"cidr": "10.0.0.0/30", "except": ["10.0.0.0/30"]}}]),
            vec![],
        ),
    ];
    for (from, want) in cases {
        let model = compute_with(&[policy(
            "default",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": from}]}),
        )]);
        assert_eq!(
            ingress_rule(&model).peers,
            Peers::Only {
                selectors: BTreeSet::new(),
                blocks: Some(want.clone())
            },
            "{from}"
        );
    }
}

#[test]
fn ports_by_number_range_and_protocol() {
    let model = compute_with(&[policy(
        "default",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 80},
            {"protocol": "UDP", "port": 53},
            {"protocol": "TCP", "port": 8000, "endPort": 8080},
            {"protocol": "SCTP"},
            {"port": 0},
            {"port": 90, "endPort": 89},
        ]}]}),
    )]);
    let tcp = |first, last| PortRange {
        protocol: Protocol::Tcp,
        first,
        last,
    };
    assert_eq!(
        ingress_rule(&model).ports,
        Ports::Only {
            ranges: vec![
                tcp(80, 80),
                tcp(8000, 8080),
                PortRange {
                    protocol: Protocol::Udp,
                    first: 53,
                    last: 53
                },
                PortRange {
                    protocol: Protocol::Sctp,
                    first: 0,
                    last: u16::MAX
                },
            ],
            named: None,
        }
    );
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let (mut pods, namespaces) = cluster();
    pods[0] = with_ports(
        pods[0].clone(),
        json!([{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]),
    );
    pods[2] = with_ports(
        pods[2].clone(),
        json!([{"name": "http", "containerPort": 9090}]),
    );
    pods[3] = with_ports(
        pods[3].clone(),
        json!([{"name": "http", "containerPort": 7070}]),
    );
    let spec = json!({
        "podSelector": {"matchLabels": {"app": "server"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "TCP"}]}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "other"}}}],
                    "ports": [{"port": "http"}]}],
    });
    let model = compute(&[policy("default", "p", spec)], &pods, &namespaces, NODE);
    let rules = &model.policies[&key("default", "p")];
    let named = |ip_s: &str, port| NamedPort {
        ip: ip(ip_s),
        protocol: Protocol::Tcp,
        port,
    };
    // Ingress: the local server's own port (dns is UDP there, so TCP "dns" resolves nowhere);
    // the remote server is not a target of this node.
    assert_eq!(
        rules.ingress.as_ref().unwrap()[0].ports,
        Ports::Only {
            ranges: vec![],
            named: Some(BTreeSet::from([named("10.42.0.2", 8080)]))
        }
    );
    // Egress: the peer's port, not the server's.
    assert_eq!(
        rules.egress.as_ref().unwrap()[0].ports,
        Ports::Only {
            ranges: vec![],
            named: Some(BTreeSet::from([named("10.42.1.2", 9090)]))
        }
    );
}

#[test]
fn pods_without_an_address_of_their_own_do_not_count() {
    let (mut pods, namespaces) = cluster();
    let mut host = pod(
        "default",
        "host",
        NODE,
        "192.168.0.10",
        json!({"app": "client"}),
    );
    host.spec.as_mut().unwrap().host_network = Some(true);
    let mut done = pod(
        "default",
        "done",
        NODE,
        "10.42.0.9",
        json!({"app": "client"}),
    );
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let mut pending = pod("default", "pending", NODE, "", json!({"app": "client"}));
    pending.status.as_mut().unwrap().pod_ips = None;
    pods.extend([host, done, pending]);
    let spec = json!({"podSelector": {},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]});
    let model = compute(&[policy("default", "p", spec)], &pods, &namespaces, NODE);
    assert_eq!(
        model.ingress.keys().copied().collect::<BTreeSet<_>>(),
        ips(&["10.42.0.2", "10.42.0.3"])
    );
    assert_eq!(peer_pods(&model, ingress_rule(&model)), ips(&["10.42.0.3"]));
}

#[test]
fn the_model_does_not_depend_on_input_order() {
    let (pods, namespaces) = cluster();
    let policies = vec![
        policy(
            "default",
            "a",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        ),
        policy(
            "default",
            "b",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "egress": [{}]}),
        ),
        policy("team-b", "c", json!({"podSelector": {}})),
    ];
    let forward = compute(&policies, &pods, &namespaces, NODE);
    let mut rp = policies.clone();
    rp.reverse();
    let mut rpods = pods.clone();
    rpods.reverse();
    let mut rns = namespaces.clone();
    rns.reverse();
    assert_eq!(compute(&rp, &rpods, &rns, NODE), forward);
    assert_eq!(forward.policies.len(), 3);
}

#[test]
fn cidrs_parse_with_host_bits_and_bounds() {
    assert_eq!(parse_cidr("10.1.2.3/8"), Some((0x0a00_0000, 0x0aff_ffff)));
    assert_eq!(parse_cidr("1.2.3.4/32"), Some((0x0102_0304, 0x0102_0304)));
    assert_eq!(parse_cidr("0.0.0.0/0"), Some((0, u32::MAX)));
    for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/-1"] {
        assert_eq!(parse_cidr(bad), None, "{bad}");
    }
}
