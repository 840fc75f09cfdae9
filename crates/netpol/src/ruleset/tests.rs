//! The rendering of models and the scripts between rulesets, checked as text (the integration
//! tests feed the same scripts to the real `nft`).

use crate::model::{PolicyRules, Protocol, Scope};

use super::*;

fn key(name: &str) -> PolicyRef {
    PolicyRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn clients() -> PeerSelector {
    PeerSelector {
        scope: Scope::Namespace("default".into()),
        pods: "app=client".into(),
    }
}

/// The set of the `app=client` peers.
fn clients_set() -> String {
    format!("peers-{}", hash_id("pods(app=client) in default", 0))
}

/// `default/web` isolates 10.42.0.2 for ingress: from the `app=client` pods (`peers`) on TCP
/// 80, and from 192.168.0.0/24 on the named port resolved to 8080.
fn web(peers: &[&str]) -> Model {
    let mut model = Model::default();
    model
        .peer_sets
        .insert(clients(), peers.iter().map(|p| ip(p)).collect());
    model
        .ingress
        .insert(ip("10.42.0.2"), BTreeSet::from([key("web")]));
    let rules = vec![
        Rule {
            peers: Peers::Only {
                selectors: BTreeSet::from([clients()]),
                blocks: None,
            },
            ports: Ports::Only {
                ranges: vec![PortRange {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 80,
                }],
                named: None,
            },
        },
        Rule {
            peers: Peers::Only {
                selectors: BTreeSet::new(),
                blocks: Some(vec![IpRange {
                    first: ip("192.168.0.0"),
                    last: ip("192.168.0.255"),
                }]),
            },
            ports: Ports::Only {
                ranges: vec![],
                named: Some(BTreeSet::from([NamedPort {
                    ip: ip("10.42.0.2"),
                    protocol: Protocol::Tcp,
                    port: 8080,
                }])),
            },
        },
    ];
    model.policies.insert(
        key("web"),
        PolicyRules {
            ingress: Some(rules),
            egress: None,
        },
    );
    model
}

fn id(name: &str) -> String {
    hash_id(&key(name).to_string(), 0)
}

#[test]
fn policy_ids_are_stable_hashes() {
    // FNV-1a 64 of "default/web": must not change between builds, or an upgraded agent would
    // rename every chain.
    assert_eq!(id("web"), "9d2ba50824d634bb");
    assert_ne!(hash_id("default/web", 1), id("web"));
    assert_eq!(id("web").len(), 16);
}

#[test]
fn a_model_renders_to_the_documented_layout() {
    let rs = Ruleset::from_model(&web(&["10.42.0.3"]), "skiff0");
    let pol = format!("pol-{}-in", id("web"));
    assert_eq!(
        rs.chain_names(),
        BTreeSet::from([
            "forward-egress",
            "forward-ingress",
            "pod-10.42.0.2-in",
            pol.as_str()
        ])
    );
    assert_eq!(
        rs.chains["forward-ingress"].rules,
        [
            "ct state established,related accept",
            "oifname \"skiff0\" ip daddr vmap @ingress"
        ]
    );
    assert_eq!(
        rs.chains["forward-egress"].rules[1],
        "iifname \"skiff0\" ip saddr vmap @egress"
    );
    assert_eq!(
        rs.chains["pod-10.42.0.2-in"].rules,
        [
            "ip saddr 10.42.0.2 accept".to_owned(),
            format!("jump {pol}"),
            "drop".to_owned()
        ]
    );
    assert_eq!(
        rs.chains[&pol].rules,
        [
            format!(
                "ip saddr @{} meta l4proto . th dport {{ tcp . 80 }} accept",
                clients_set()
            ),
            format!(
                "ip saddr @{pol}1-blocks ip daddr . meta l4proto . th dport @{pol}1-named accept"
            ),
        ]
    );
    assert_eq!(rs.chains[&pol].spec, "comment \"default/web ingress\";");
    assert_eq!(
        rs.sets["ingress"].elements,
        BTreeMap::from([("10.42.0.2".to_owned(), "goto pod-10.42.0.2-in".to_owned())])
    );
    assert!(rs.sets["egress"].elements.is_empty());
    assert_eq!(
        rs.sets[&format!("{pol}1-blocks")]
            .elements
            .keys()
            .collect::<Vec<_>>(),
        ["192.168.0.0/24"]
    );
    assert_eq!(
        rs.sets[&format!("{pol}1-named")]
            .elements
            .keys()
            .collect::<Vec<_>>(),
        ["10.42.0.2 . tcp . 8080"]
    );
}

#[test]
fn rules_combine_peers_and_ports_per_direction() {
    let named = Some(BTreeSet::from([NamedPort {
        ip: ip("10.42.1.2"),
        protocol: Protocol::Udp,
        port: 53,
    }]));
    let rule = Rule {
        peers: Peers::Only {
            selectors: BTreeSet::from([clients()]),
            blocks: Some(vec![]),
        },
        ports: Ports::Only {
            ranges: vec![PortRange {
                protocol: Protocol::Sctp,
                first: 1000,
                last: 2000,
            }],
            named,
        },
    };
    let mut model = Model::default();
    model
        .peer_sets
        .insert(clients(), BTreeSet::from([ip("10.42.1.2")]));
    model
        .egress
        .insert(ip("10.42.0.2"), BTreeSet::from([key("p")]));
    model.policies.insert(
        key("p"),
        PolicyRules {
            ingress: None,
            egress: Some(vec![
                rule,
                Rule {
                    peers: Peers::Any,
                    ports: Ports::Any,
                },
            ]),
        },
    );
    let rs = Ruleset::from_model(&model, "br");
    let pol = format!("pol-{}-eg", id("p"));
    assert_eq!(
        rs.chains[&pol].rules,
        [
            format!(
                "ip daddr @{} meta l4proto . th dport {{ sctp . 1000-2000 }} accept",
                clients_set()
            ),
            format!(
                "ip daddr @{pol}0-blocks meta l4proto . th dport {{ sctp . 1000-2000 }} accept"
            ),
            // Egress named ports are the peers' own: no separate peer match.
            format!("ip daddr . meta l4proto . th dport @{pol}0-named accept"),
            "accept".to_owned(),
        ]
    );
    assert_eq!(
        rs.chains["pod-10.42.0.2-eg"].rules[0],
        "ip daddr 10.42.0.2 accept"
    );
}

#[test]
fn comments_cannot_break_out_of_their_quotes() {
    assert_eq!(
        comment("pods(x \"Like\" (a)) in ns\\é\n".into()),
        "comment \"pods(x ?Like? (a)) in ns???\";"
    );
    assert_eq!(comment("x".repeat(300)).len(), "comment \"\";".len() + 120);
}

#[test]
fn ranges_render_as_addresses_blocks_or_spans() {
    let r = |a: &str, b: &str| {
        range_element(&IpRange {
            first: ip(a),
            last: ip(b),
        })
    };
    assert_eq!(r("10.0.0.1", "10.0.0.1"), "10.0.0.1");
    assert_eq!(r("10.0.0.0", "10.0.0.255"), "10.0.0.0/24");
    assert_eq!(r("0.0.0.0", "255.255.255.255"), "0.0.0.0/0");
    assert_eq!(r("10.0.0.1", "10.0.0.2"), "10.0.0.1-10.0.0.2");
    assert_eq!(r("10.0.0.128", "10.0.1.127"), "10.0.0.128-10.0.1.127");
}

#[test]
fn the_full_script_replaces_the_table_in_one_transaction() {
    let rs = Ruleset::from_model(&web(&["10.42.0.3"]), "skiff0");
    let script = rs.full_script("t");
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "add table inet t",
            "delete table inet t",
            "add table inet t { comment \"NetworkPolicy enforcement by skiff\"; }"
        ]
    );
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle:?} missing from\n{script}"))
    };
    // Declarations before the elements and rules that use them.
    assert!(at(&format!("add set inet t {}", clients_set())) < at("add rule"));
    assert!(at("add chain inet t pod-10.42.0.2-in") < at("add element inet t ingress"));
    assert!(script.contains(
        "add chain inet t forward-ingress { type filter hook forward priority filter + 1; policy accept; }"
    ));
    assert!(script.contains(&format!(
        "add element inet t {} {{ 10.42.0.3 }}",
        clients_set()
    )));
    assert!(script.contains("add element inet t ingress { 10.42.0.2 : goto pod-10.42.0.2-in }"));
}

#[test]
fn an_unchanged_ruleset_needs_no_transaction() {
    let rs = Ruleset::from_model(&web(&["10.42.0.3"]), "skiff0");
    assert_eq!(rs.diff_script(&rs.clone(), "t").as_deref(), Some(""));
}

#[test]
fn a_new_peer_is_one_element() {
    let old = Ruleset::from_model(&web(&["10.42.0.3"]), "skiff0");
    let new = Ruleset::from_model(&web(&["10.42.0.3", "10.42.1.9"]), "skiff0");
    assert_eq!(
        new.diff_script(&old, "t").unwrap(),
        format!("add element inet t {} {{ 10.42.1.9 }}\n", clients_set())
    );
    assert_eq!(
        old.diff_script(&new, "t").unwrap(),
        format!("delete element inet t {} {{ 10.42.1.9 }}\n", clients_set())
    );
}

#[test]
fn removing_a_policy_unhooks_before_it_deletes() {
    let old = Ruleset::from_model(&web(&["10.42.0.3"]), "skiff0");
    let new = Ruleset::from_model(&Model::default(), "skiff0");
    let script = new.diff_script(&old, "t").unwrap();
    let pol = format!("pol-{}-in", id("web"));
    let want = [
        "delete element inet t ingress { 10.42.0.2 }".to_owned(),
        "flush chain inet t pod-10.42.0.2-in".to_owned(),
        format!("flush chain inet t {pol}"),
        "delete chain inet t pod-10.42.0.2-in".to_owned(),
        format!("delete chain inet t {pol}"),
        format!("delete set inet t {}", clients_set()),
        format!("delete set inet t {pol}1-blocks"),
        format!("delete set inet t {pol}1-named"),
    ];
    assert_eq!(script.lines().collect::<Vec<_>>(), want);
}

#[test]
fn interval_changes_delete_before_they_add() {
    let mut narrow = web(&[]);
    let mut wide = web(&[]);
    let set_blocks = |m: &mut Model, last: &str| {
        let rules = m.policies.get_mut(&key("web")).unwrap();
        rules.ingress.as_mut().unwrap()[1].peers = Peers::Only {
            selectors: BTreeSet::new(),
            blocks: Some(vec![IpRange {
                first: ip("192.168.0.0"),
                last: ip(last),
            }]),
        };
    };
    set_blocks(&mut narrow, "192.168.0.255");
    set_blocks(&mut wide, "192.168.1.255");
    let old = Ruleset::from_model(&narrow, "b");
    let new = Ruleset::from_model(&wide, "b");
    let pol = format!("pol-{}-in", id("web"));
    assert_eq!(
        new.diff_script(&old, "t").unwrap(),
        format!(
            "delete element inet t {pol}1-blocks {{ 192.168.0.0/24 }}\nadd element inet t {pol}1-blocks {{ 192.168.0.0/23 }}\n"
        )
    );
}

#[test]
fn a_changed_declaration_needs_the_full_script() {
    let old = Ruleset::from_model(&web(&[]), "skiff0");
    // Another bridge changes rules only: a difference will do.
    let moved = Ruleset::from_model(&web(&[]), "skiff1");
    assert!(
        moved
            .diff_script(&old, "t")
            .is_some_and(|s| !s.contains("delete"))
    );
    // A set whose type changes cannot be altered in place.
    let mut retyped = old.clone();
    let set = retyped.sets.values_mut().find(|s| !s.map).unwrap();
    set.spec = "type ipv4_addr; flags interval;".into();
    assert_eq!(retyped.diff_script(&old, "t"), None);
}

#[test]
fn large_sets_are_split_into_several_commands() {
    let peers: Vec<String> = (0..600)
        .map(|i| format!("10.43.{}.{}", i / 250, i % 250))
        .collect();
    let refs: Vec<&str> = peers.iter().map(String::as_str).collect();
    let script = Ruleset::from_model(&web(&refs), "skiff0").full_script("t");
    let commands = script
        .lines()
        .filter(|l| l.starts_with(&format!("add element inet t {} ", clients_set())))
        .count();
    assert_eq!(commands, 3);
}
