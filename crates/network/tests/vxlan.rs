//! The VXLAN backend between two nodes that are not on one L2 segment: each node reaches the
//! other only through a router namespace, so a host-gw route could not work; pods on the two
//! nodes reach each other through `skiff.vx`, and removing the peer removes the way.

mod support;

use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;

use network::netlink::Netlink;
use network::node::{Backend, NodeNetConfig, NodeNetwork, Peer, VXLAN_DEVICE};
use support::{TestNode, exec_in, ping};

/// A veth pair: `a_name` in `a`, `b_name` in `b`.
fn veth(a: &TestNode, a_name: &str, b: &TestNode, b_name: &str) {
    let a_path = a.netns.clone();
    let b_file = std::fs::File::open(&b.netns).expect("opening a namespace");
    let (a_name, b_name) = (a_name.to_owned(), b_name.to_owned());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let nl = Netlink::open(Some(&a_path)).await?;
            nl.add_veth(&a_name, &b_name, 1500, b_file.as_fd()).await
        })
        .expect("creating a veth pair");
}

fn up(n: &TestNode, link: &str, addr: &str) {
    n.ip(&["addr", "add", addr, "dev", link]);
    n.ip(&["link", "set", link, "up"]);
}

/// Node `n` with address `node_addr` on `eth0`, a bridge holding `gw` and one pod at `pod_addr`.
fn node(
    n: &TestNode,
    pod: &TestNode,
    node_addr: &str,
    via: &str,
    other_net: &str,
    gw: &str,
    pod_addr: &str,
) {
    n.ip(&["link", "set", "lo", "up"]);
    up(n, "eth0", node_addr);
    n.ip(&["route", "add", other_net, "via", via]);
    n.ip(&["link", "add", "br-test", "type", "bridge"]);
    up(n, "br-test", &format!("{gw}/24"));
    veth(pod, "eth0", n, "vpod");
    n.ip(&["link", "set", "vpod", "master", "br-test", "up"]);
    pod.ip(&["link", "set", "lo", "up"]);
    up(pod, "eth0", pod_addr);
    pod.ip(&["route", "add", "default", "via", gw]);
}

fn prepare(n: &TestNode, node_ip: Ipv4Addr, pod_cidr: &str, peers: Vec<Peer>) {
    let cfg = NodeNetConfig {
        bridge: "br-test".into(),
        node_ip,
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        cluster_dns: None,
        masquerade_outside: false,
        backend: Backend::Vxlan,
        pod_cidr: pod_cidr.parse().unwrap(),
    };
    network::netns::run_in(&n.netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                // Twice: idempotent.
                NodeNetwork::prepare(cfg.clone()).await?;
                let net = NodeNetwork::prepare(cfg).await?;
                net.sync_peers(&peers).await?;
                net.sync_peers(&peers).await
            })
    })
    .expect("entering the node")
    .expect("preparing the VXLAN backend");
}

#[test]
fn pods_reach_each_other_over_vxlan_through_a_router() {
    let router = TestNode::new("vx-r");
    let (a, b) = (TestNode::new("vx-a"), TestNode::new("vx-b"));
    let (pa, pb) = (TestNode::new("vx-pa"), TestNode::new("vx-pb"));
    // a (172.30.11.2) - router - b (172.30.12.2): two subnets, no shared segment.
    veth(&a, "eth0", &router, "ra");
    veth(&b, "eth0", &router, "rb");
    router.ip(&["link", "set", "lo", "up"]);
    up(&router, "ra", "172.30.11.1/24");
    up(&router, "rb", "172.30.12.1/24");
    exec_in(&router.netns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    node(
        &a,
        &pa,
        "172.30.11.2/24",
        "172.30.11.1",
        "172.30.12.0/24",
        "10.42.1.1",
        "10.42.1.2/24",
    );
    node(
        &b,
        &pb,
        "172.30.12.2/24",
        "172.30.12.1",
        "172.30.11.0/24",
        "10.42.2.1",
        "10.42.2.2/24",
    );
    let (ip_a, ip_b) = (Ipv4Addr::new(172, 30, 11, 2), Ipv4Addr::new(172, 30, 12, 2));

    // host-gw could not work here: the other node is not a neighbour.
    let direct = support::try_exec_in(
        &a.netns,
        "ip",
        &["route", "add", "10.42.2.0/24", "via", "172.30.12.2"],
    );
    assert!(direct.is_err(), "a route via a non-neighbour was accepted");

    let peer = |cidr: &str, node_ip| Peer {
        pod_cidr: cidr.parse().unwrap(),
        node_ip,
    };
    prepare(&a, ip_a, "10.42.1.0/24", vec![peer("10.42.2.0/24", ip_b)]);
    prepare(&b, ip_b, "10.42.2.0/24", vec![peer("10.42.1.0/24", ip_a)]);

    ping(&pa.netns, Ipv4Addr::new(10, 42, 2, 2)).expect("pod a reaches pod b over VXLAN");
    ping(&pb.netns, Ipv4Addr::new(10, 42, 1, 2)).expect("pod b reaches pod a over VXLAN");
    let details = a.ip(&["-d", "link", "show", VXLAN_DEVICE]);
    assert!(
        details.contains("vxlan id 1") && details.contains("dstport 8472"),
        "{details}"
    );
    assert!(
        details.contains("02:53:ac:1e:0b:02"),
        "the MAC follows the node address: {details}"
    );
    assert_eq!(
        a.ip(&["-4", "route", "show", "proto", "83"]).trim(),
        "10.42.2.0/24 via 10.42.2.0 dev skiff.vx onlink"
    );
    let fdb = exec_in(&a.netns, "bridge", &["fdb", "show", "dev", VXLAN_DEVICE]);
    assert!(fdb.contains("02:53:ac:1e:0c:02 dst 172.30.12.2"), "{fdb}");

    // The peer goes away: so do its route, neighbour and forwarding entry.
    prepare(&a, ip_a, "10.42.1.0/24", vec![]);
    assert_eq!(a.ip(&["-4", "route", "show", "proto", "83"]).trim(), "");
    assert_eq!(
        a.ip(&["neigh", "show", "dev", VXLAN_DEVICE, "nud", "permanent"])
            .trim(),
        ""
    );
    let fdb = exec_in(&a.netns, "bridge", &["fdb", "show", "dev", VXLAN_DEVICE]);
    assert!(!fdb.contains(" dst "), "{fdb}");
    assert!(ping(&pa.netns, Ipv4Addr::new(10, 42, 2, 2)).is_err());
}
