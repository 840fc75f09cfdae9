//! The differ against the real nft: a sequence of models applied incrementally must leave the
//! same table as building each one from scratch, for every kind of service port (TCP, UDP,
//! SCTP, affinity, node ports, external IPs, Local policies, no endpoints).

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, ensure};
use proxy::model::{Endpoint, Policy, PortKey, Protocol, ServicePort};
use proxy::rules::{self, Settings};
use serde_json::Value;
use support::run;

/// A scratch namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns> {
        let name = format!("spd{}{tag}", std::process::id());
        run(&["ip", "netns", "add", &name])?;
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "delete", &self.0]);
    }
}

/// The table as comparable data: chains with their rules in order, sets, map elements.
fn table(ns: &str, name: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let out = run(&[
        "ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", name,
    ])?;
    let v: Value = serde_json::from_str(&out).context("nft -j output")?;
    let mut t: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            t.entry(format!("chain {}", c["name"])).or_default();
        } else if let Some(r) = item.get("rule") {
            t.entry(format!("chain {}", r["chain"]))
                .or_default()
                .push(r["expr"].to_string());
        } else if let Some(m) = item.get("map").or_else(|| item.get("set")) {
            let mut elems: Vec<String> = m["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Value::to_string)
                .collect();
            elems.sort();
            let def = format!("{} {} {}", m["type"], m["flags"], m["timeout"]);
            elems.insert(0, def);
            t.insert(format!("set {}", m["name"]), elems);
        }
    }
    Ok(t)
}

fn ep(last: u8, local: bool) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 42, 0, last),
        port: 8080,
        local,
    }
}

fn port(name: &str, protocol: Protocol, ip: u8, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        key: PortKey {
            namespace: "default".into(),
            name: name.into(),
            port: "p".into(),
            protocol,
        },
        cluster_ips: vec![Ipv4Addr::new(10, 43, 0, ip)],
        port: 80,
        node_port: None,
        external_ips: vec![],
        affinity_timeout: None,
        external_policy: Policy::Cluster,
        internal_policy: Policy::Cluster,
        endpoints,
    }
}

fn models() -> Vec<Vec<ServicePort>> {
    let mut lb = port("lb", Protocol::Tcp, 3, vec![ep(1, true), ep(2, false)]);
    lb.node_port = Some(30080);
    lb.external_ips = vec![Ipv4Addr::new(192, 0, 2, 1)];
    let mut sticky = port("sticky", Protocol::Udp, 4, vec![ep(3, true), ep(4, false)]);
    sticky.affinity_timeout = Some(60);
    let sctp = port("sctp", Protocol::Sctp, 5, vec![ep(5, false)]);
    let empty = port("empty", Protocol::Tcp, 6, vec![]);

    let m0 = vec![lb.clone(), sticky.clone(), sctp.clone(), empty.clone()];

    let mut lb1 = lb.clone();
    lb1.external_policy = Policy::Local;
    lb1.endpoints.push(ep(7, true));
    let mut sticky1 = sticky.clone();
    sticky1.affinity_timeout = Some(120);
    sticky1.endpoints.remove(0);
    let mut empty1 = empty.clone();
    empty1.endpoints = vec![ep(8, false)];
    empty1.internal_policy = Policy::Local;
    let m1 = vec![lb1.clone(), sticky1, empty1];

    let mut lb2 = lb1.clone();
    lb2.endpoints = vec![ep(2, false)];
    lb2.node_port = Some(30081);
    let mut sctp2 = sctp.clone();
    sctp2.endpoints = vec![];
    let m2 = vec![lb2, sctp2, port("new", Protocol::Tcp, 9, vec![ep(9, true)])];

    vec![m0, m1, m2, vec![], vec![lb, sticky]]
}

#[test]
fn incremental_changes_match_full_rebuilds() -> Result<()> {
    let root_before = run(&["nft", "list", "ruleset"])?;
    let incremental = Netns::new("i")?;
    let fresh = Netns::new("f")?;
    let settings = Settings {
        table: "skiff-proxy".into(),
        cluster_cidr: Some("10.42.0.0/16".parse()?),
        mark: proxy::DEFAULT_MARK,
    };
    let nft_inc = proxy::Nft::in_netns(&incremental.0);
    let nft_fresh = proxy::Nft::in_netns(&fresh.0);

    let mut programmed = rules::Ruleset::default();
    nft_inc.apply_blocking(&rules::full(&programmed, &settings))?;
    for (i, model) in models().iter().enumerate() {
        let desired = rules::render(model, &settings);
        let script = rules::diff(&programmed, &desired, &settings.table);
        nft_inc
            .apply_blocking(&script)
            .with_context(|| format!("step {i}: incremental script:\n{script}"))?;
        nft_fresh.apply_blocking(&rules::full(&desired, &settings))?;
        let (a, b) = (
            table(&incremental.0, "skiff-proxy")?,
            table(&fresh.0, "skiff-proxy")?,
        );
        ensure!(a == b, "step {i}: incremental {a:#?}\nfresh {b:#?}");
        ensure!(
            a.len() >= desired.chains.len(),
            "step {i}: chains missing from {a:#?}"
        );
        programmed = desired;
    }
    proxy::cleanup_with(&nft_inc, "skiff-proxy")?;
    let left = run(&[
        "ip",
        "netns",
        "exec",
        &incremental.0,
        "nft",
        "list",
        "tables",
    ])?;
    ensure!(left.trim().is_empty(), "left: {left}");
    drop((incremental, fresh));
    ensure!(
        run(&["nft", "list", "ruleset"])? == root_before,
        "root ruleset changed"
    );
    Ok(())
}
