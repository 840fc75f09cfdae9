//! The differ against the real `nft`: a sequence of cluster states is applied to one namespace
//! transaction by transaction (differences only) and to another by full rewrites; after every
//! step both kernels must hold the same table. Needs root and `nft`.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol::nft::{Backend as _, Nft};
use netpol::ruleset::Ruleset;
use netpol::sync::{Outcome, Syncer};
use serde_json::{Value, json};
use support::{Lab, exec_in};

const TABLE: &str = "skiff-netpol";

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": ip}
    }))
    .unwrap()
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .unwrap()
}

/// The table as the kernel lists it, with what legitimately differs between two kernels
/// removed: handles, the order of set elements and the order of objects (rules keep their
/// order within a chain).
fn listing(netns: &std::path::Path) -> Result<BTreeMap<String, Value>> {
    let out = exec_in(netns, "nft", &["-j", "list", "table", "inet", TABLE])?;
    let parsed: Value = serde_json::from_str(&out).context("parsing nft -j")?;
    let mut objects = BTreeMap::new();
    let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in parsed["nftables"].as_array().into_iter().flatten() {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        strip(&mut body);
        match kind.as_str() {
            "metainfo" => {}
            "rule" => rules
                .entry(body["chain"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(body),
            _ => {
                let name = body["name"].as_str().unwrap_or_default().to_owned();
                objects.insert(format!("{kind} {name}"), body);
            }
        }
    }
    for (chain, list) in rules {
        objects.insert(format!("rules {chain}"), Value::Array(list));
    }
    Ok(objects)
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("handle");
            if let Some(Value::Array(elems)) = o.get_mut("elem") {
                elems.sort_by_key(|e| e.to_string());
            }
            o.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differences_leave_the_kernel_where_a_full_rewrite_would() -> Result<()> {
    let lab = Lab::new("diff")?;
    let (a, b) = (
        lab.dir.path().join("a.netns"),
        lab.dir.path().join("b.netns"),
    );
    network::netns::create(&a)?;
    network::netns::create(&b)?;
    let incremental = Nft::new(Some(a.clone()));
    let full = Nft::new(Some(b.clone()));
    let mut syncer = Syncer::new(incremental, TABLE);

    let namespaces: Vec<Namespace> = vec![
        serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        serde_json::from_value(json!({"metadata": {"name": "ops", "labels": {"team": "ops"}}}))?,
    ];
    let web = pod("default", "web", "n1", "10.42.0.2", json!({"app": "web"}));
    let db = pod("default", "db", "n1", "10.42.0.3", json!({"app": "db"}));
    let client = |ip: &str, n: usize| {
        pod(
            "default",
            &format!("c{n}"),
            "n2",
            ip,
            json!({"app": "client"}),
        )
    };
    let ops = pod("ops", "tool", "n2", "10.42.1.50", json!({}));
    let web_policy = |ports: Value, except: &str| {
        policy(
            "default",
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}},
                              {"ipBlock": {"cidr": "192.168.0.0/16", "except": [except]}}],
                     "ports": ports},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                            "ports": [{"port": "http"}, {"protocol": "UDP", "port": "dns"}]}]}),
        )
    };
    let deny_all = policy("default", "deny", json!({"podSelector": {}}));

    let steps: Vec<(&str, Vec<NetworkPolicy>, Vec<Pod>)> = vec![
        ("empty", vec![], vec![web.clone(), db.clone()]),
        (
            "a policy with every kind of peer and port",
            vec![web_policy(
                json!([{"port": 80}, {"port": "http"}]),
                "192.168.1.0/24",
            )],
            vec![web.clone(), db.clone(), client("10.42.1.2", 1), ops.clone()],
        ),
        (
            "more peers, a wider except (interval replaced), a port range",
            vec![web_policy(
                json!([{"port": 80, "endPort": 90}, {"port": "http"}]),
                "192.168.0.0/23",
            )],
            vec![
                web.clone(),
                db.clone(),
                client("10.42.1.2", 1),
                client("10.42.1.3", 2),
                ops.clone(),
            ],
        ),
        (
            "a second policy on the same pods",
            vec![
                web_policy(json!([{"port": 80, "endPort": 90}]), "192.168.0.0/23"),
                deny_all.clone(),
            ],
            vec![web.clone(), db.clone(), client("10.42.1.3", 2), ops.clone()],
        ),
        (
            "the first policy goes while its chains are referenced",
            vec![deny_all.clone()],
            vec![web.clone(), db.clone(), client("10.42.1.3", 2)],
        ),
        (
            "an address reused by another pod",
            vec![web_policy(json!([]), "192.168.9.0/24"), deny_all.clone()],
            vec![
                pod(
                    "default",
                    "web2",
                    "n1",
                    "10.42.0.2",
                    json!({"app": "other"}),
                ),
                db.clone(),
            ],
        ),
        ("everything gone", vec![], vec![]),
        (
            "back again",
            vec![web_policy(json!([{"port": "http"}]), "192.168.1.0/24")],
            vec![web.clone(), client("10.42.1.2", 1)],
        ),
    ];

    for (n, (what, policies, pods)) in steps.into_iter().enumerate() {
        let model = netpol::compute(&policies, &pods, &namespaces, "n1");
        let desired = Ruleset::from_model(&model, "skiff0");
        let outcome = syncer
            .apply(desired.clone())
            .await
            .with_context(|| format!("step {n} ({what}), incremental"))?;
        let want_full = n == 0;
        ensure!(
            matches!(outcome, Outcome::Applied { full, .. } if full == want_full)
                || (outcome == Outcome::Unchanged && !want_full),
            "step {n} ({what}): {outcome:?}"
        );
        full.apply(desired.full_script(TABLE))
            .await
            .with_context(|| format!("step {n} ({what}), full"))?;
        let (got, want) = (listing(&a)?, listing(&b)?);
        ensure!(
            got == want,
            "step {n} ({what}): the tables differ\nincremental: {}\nfull: {}",
            serde_json::to_string_pretty(&got)?,
            serde_json::to_string_pretty(&want)?
        );
    }
    Ok(())
}
