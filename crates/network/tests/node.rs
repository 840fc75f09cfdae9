//! The node's cluster network (`network::node`) in a test namespace: forwarding switched on
//! only where it should be, the guard table, the DNS address and the routes to other nodes'
//! pod CIDRs reconciled exactly.

mod support;

use std::net::Ipv4Addr;

use network::netlink::Route;
use network::node::{NodeNetConfig, NodeNetwork, guard_table, route_to};
use support::TestNode;

/// Runs `f` on a runtime in a thread inside the test node's namespace (NodeNetwork works on
/// the caller's namespace, as the agent runs inside its node's).
fn in_node<T: Send + 'static>(node: &TestNode, f: impl FnOnce() -> T + Send + 'static) -> T {
    network::netns::run_in(&node.netns, f).expect("entering the node namespace")
}

#[test]
fn prepares_forwarding_guard_dns_and_syncs_routes() {
    let node = TestNode::new("nodenet");
    // The node's uplink: a veth whose peer stays in the node namespace too.
    node.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    node.ip(&["addr", "add", "172.30.9.2/24", "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node.ip(&["link", "set", "peer0", "up"]);
    node.ip(&["link", "add", "br-test", "type", "bridge"]);
    node.ip(&["link", "set", "lo", "up"]);

    let result = in_node(&node, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let net = NodeNetwork::prepare(NodeNetConfig {
                bridge: "br-test".into(),
                node_ip: Ipv4Addr::new(172, 30, 9, 2),
                cluster_cidr: "10.42.0.0/16".parse().unwrap(),
                cluster_dns: Some(Ipv4Addr::new(10, 43, 0, 10)),
                masquerade_outside: false,
                backend: Default::default(),
                pod_cidr: "10.42.0.0/24".parse().unwrap(),
            })
            .await?;
            // Twice: idempotent.
            let net2 = NodeNetwork::prepare(net.config().clone()).await?;
            let a = route_to(
                "10.42.1.0/24".parse().unwrap(),
                Ipv4Addr::new(172, 30, 9, 3),
            );
            let b = route_to(
                "10.42.2.0/24".parse().unwrap(),
                Ipv4Addr::new(172, 30, 9, 4),
            );
            net2.sync_routes(&[a, b]).await?;
            net2.sync_routes(&[b]).await?;
            Ok::<_, network::node::Error>((a, b))
        })
    });
    let (_, b) = result.expect("preparing the node network");
    let details = node.ip(&["-d", "link", "show", "br-test"]);
    assert!(details.contains("nf_call_iptables 1"), "{details}");
    let fwd = |link: &str| {
        support::exec_in(
            &node.netns,
            "cat",
            &[&format!("/proc/sys/net/ipv4/conf/{link}/forwarding")],
        )
    };
    assert_eq!(fwd("br-test").trim(), "1");
    assert_eq!(fwd("eth0").trim(), "1");
    assert_eq!(fwd("all").trim(), "0", "the global switch stays off");
    let routes = node.ip(&["-4", "route", "show", "proto", "83"]);
    assert_eq!(
        routes.trim(),
        "10.42.2.0/24 via 172.30.9.4 dev eth0",
        "{routes}"
    );
    let addrs = node.ip(&["-4", "-o", "addr", "show", "dev", "br-test"]);
    assert!(addrs.contains("10.43.0.10/32"), "{addrs}");
    let ruleset = support::exec_in(
        &node.netns,
        "nft",
        &["list", "table", "ip", &guard_table("br-test")],
    );
    assert!(
        ruleset.contains("iifname \"br-test\" ip daddr != 10.42.0.0/16 drop"),
        "{ruleset}"
    );
    assert_eq!(
        b,
        Route {
            destination: Ipv4Addr::new(10, 42, 2, 0),
            prefix_len: 24,
            gateway: Ipv4Addr::new(172, 30, 9, 4),
            onlink_dev: None,
        }
    );
}
