//! NetworkPolicy enforcement end to end: policies, pods and namespaces in a real API server,
//! the enforcer programming nftables in a real node namespace, and busybox wget between pods
//! on real veths and bridges. Needs root, `nsenter`, `nft`, `ip` and `/bin/busybox`.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use support::{
    Enforcer, Lab, TestPod, connects, fetch, namespace, root_ruleset, wait_isolated, wait_policies,
};
use testkit::TestServer;

const HELLO_SERVER: &str = "hello from server\n";

async fn create_policy(client: &kube::Client, ns: &str, name: &str, spec: Value) -> Result<()> {
    let policy: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &policy)
        .await
        .with_context(|| format!("creating NetworkPolicy {ns}/{name}"))?;
    Ok(())
}

async fn delete_policy(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting NetworkPolicy {ns}/{name}"))?;
    Ok(())
}

async fn reaches(from: &TestPod, to: Ipv4Addr, port: u16) -> bool {
    fetch(&from.netns, to, port).await.is_some()
}

/// Both sides of a check at once: what must get through and what must not (blocked fetches
/// each take the full 2 s, so they run concurrently).
async fn expect(cases: &[(&str, &TestPod, Ipv4Addr, u16, bool)]) -> Result<()> {
    let results = futures::future::join_all(
        cases
            .iter()
            .map(|(_, from, to, port, _)| reaches(from, *to, *port)),
    )
    .await;
    let wrong: Vec<String> = cases
        .iter()
        .zip(results)
        .filter(|((.., want), got)| got != want)
        .map(|((what, _, _, _, want), _)| {
            format!(
                "{what}: expected {}",
                if *want { "to pass" } else { "to be blocked" }
            )
        })
        .collect();
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_labelled_clients_pass_and_removing_the_policy_restores_access() -> Result<()> {
    let root_before = root_ruleset()?;
    let server = TestServer::start().await?;
    let client = server.client.clone();
    let mut lab = Lab::new("sel")?;
    let node = lab.node("node-a", "10.42.0.0/24").await?;
    let web = lab
        .pod(
            &client,
            &node,
            "default",
            "server",
            json!({"app": "server"}),
            json!([]),
        )
        .await?;
    let good = lab
        .pod(
            &client,
            &node,
            "default",
            "client",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    let bad = lab
        .pod(
            &client,
            &node,
            "default",
            "intruder",
            json!({"app": "other"}),
            json!([]),
        )
        .await?;
    lab.serve(&web, 80).await?;
    let enforcer = Enforcer::start(&client, &node).await?;

    // No policy: everyone gets through.
    expect(&[
        ("client before any policy", &good, web.ip, 80, true),
        ("intruder before any policy", &bad, web.ip, 80, true),
    ])
    .await?;

    create_policy(
        &client,
        "default",
        "allow-client",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
    )
    .await?;
    wait_isolated(&node, "ingress", web.ip, true).await?;
    expect(&[
        ("app=client", &good, web.ip, 80, true),
        ("app=other", &bad, web.ip, 80, false),
    ])
    .await?;
    ensure!(fetch(&good.netns, web.ip, 80).await.as_deref() == Some(HELLO_SERVER));

    // The node itself (kubelet probes) always reaches its pods.
    let node_fetch = support::exec_in(
        &node.netns,
        "timeout",
        &[
            "2",
            "/bin/busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{}/", web.ip),
        ],
    );
    ensure!(
        node_fetch.as_deref().ok() == Some(HELLO_SERVER),
        "the node could not reach its isolated pod: {node_fetch:?}"
    );

    // Relabelling the intruder lets it in; relabelling it back shuts it out again.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let relabel = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let patch = json!({"metadata": {"labels": {"app": app}}});
            pods.patch(
                "intruder",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
        }
    };
    relabel("client").await?;
    testkit::wait_for(
        "the relabelled pod to get in",
        Duration::from_secs(2),
        || async { connects(&bad.netns, web.ip, 80).await.then_some(()) },
    )
    .await?;
    relabel("other").await?;
    testkit::wait_for(
        "the relabelled pod to be shut out",
        Duration::from_secs(2),
        || async { (!connects(&bad.netns, web.ip, 80).await).then_some(()) },
    )
    .await?;

    let deleted = Instant::now();
    delete_policy(&client, "default", "allow-client").await?;
    testkit::wait_for(
        "access after deleting the policy",
        Duration::from_secs(2),
        || async { connects(&bad.netns, web.ip, 80).await.then_some(()) },
    )
    .await?;
    let restored = deleted.elapsed();
    expect(&[("app=other after the policy is gone", &bad, web.ip, 80, true)]).await?;
    println!("access restored {restored:?} after the policy's deletion returned");

    let cfg = enforcer.stop().await?;
    // The table outlives the enforcer (a restarting agent keeps enforcing); cleanup removes it.
    ensure!(node.nft(&["list", "tables"])?.contains("inet skiff-netpol"));
    netpol::cleanup(&cfg)?;
    netpol::cleanup(&cfg)?;
    ensure!(!node.nft(&["list", "tables"])?.contains("skiff-netpol"));
    drop(lab);
    ensure!(
        root_ruleset()? == root_before,
        "the root namespace's ruleset changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_selectors_and_ip_blocks() -> Result<()> {
    let root_before = root_ruleset()?;
    let server = TestServer::start().await?;
    let client = server.client.clone();
    namespace(&client, "team-a", json!({"team": "a"})).await?;
    namespace(&client, "team-b", json!({"team": "b"})).await?;
    let mut lab = Lab::new("nsip")?;
    let node = lab.node("node-a", "10.42.0.0/24").await?;
    let web = lab
        .pod(
            &client,
            &node,
            "default",
            "server",
            json!({"app": "server"}),
            json!([]),
        )
        .await?;
    let a = lab
        .pod(
            &client,
            &node,
            "team-a",
            "client",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    let b = lab
        .pod(
            &client,
            &node,
            "team-b",
            "client",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    let local = lab
        .pod(
            &client,
            &node,
            "default",
            "neighbour",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    lab.serve(&web, 80).await?;
    let enforcer = Enforcer::start(&client, &node).await?;

    create_policy(
        &client,
        "default",
        "from-team-a",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}),
    )
    .await?;
    wait_isolated(&node, "ingress", web.ip, true).await?;
    expect(&[
        ("team-a", &a, web.ip, 80, true),
        ("team-b", &b, web.ip, 80, false),
        ("the server's own namespace", &local, web.ip, 80, false),
    ])
    .await?;

    // Selecting the namespace by its automatic name label works the same.
    delete_policy(&client, "default", "from-team-a").await?;
    create_policy(
        &client,
        "default",
        "from-team-b",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {
                   "matchLabels": {"kubernetes.io/metadata.name": "team-b"}},
                   "podSelector": {"matchLabels": {"app": "client"}}}]}]}),
    )
    .await?;
    wait_policies(&node, &["default/from-team-b"], &["default/from-team-a"]).await?;
    expect(&[
        ("team-a", &a, web.ip, 80, false),
        ("team-b", &b, web.ip, 80, true),
    ])
    .await?;

    // ipBlock: the node's pod subnet except team-b's client.
    delete_policy(&client, "default", "from-team-b").await?;
    let except = format!("{}/32", b.ip);
    create_policy(
        &client,
        "default",
        "from-block",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.42.0.0/24", "except": [except]}}]}]}),
    )
    .await?;
    wait_policies(&node, &["default/from-block"], &["default/from-team-b"]).await?;
    expect(&[
        ("inside the block", &a, web.ip, 80, true),
        ("inside the block too", &local, web.ip, 80, true),
        ("excepted", &b, web.ip, 80, false),
    ])
    .await?;

    enforcer.stop().await?;
    drop(lab);
    ensure!(
        root_ruleset()? == root_before,
        "the root namespace's ruleset changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_rules_and_named_ports() -> Result<()> {
    let root_before = root_ruleset()?;
    let server = TestServer::start().await?;
    let client = server.client.clone();
    let mut lab = Lab::new("egr")?;
    let node = lab.node("node-a", "10.42.0.0/24").await?;
    let http =
        json!([{"name": "http", "containerPort": 80}, {"name": "metrics", "containerPort": 9090}]);
    let web = lab
        .pod(
            &client,
            &node,
            "default",
            "server",
            json!({"app": "server"}),
            http,
        )
        .await?;
    let other_http = json!([{"name": "web", "containerPort": 80}]);
    let other = lab
        .pod(
            &client,
            &node,
            "default",
            "other-server",
            json!({"app": "other"}),
            other_http,
        )
        .await?;
    let c = lab
        .pod(
            &client,
            &node,
            "default",
            "client",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    lab.serve(&web, 80).await?;
    lab.serve(&web, 9090).await?;
    lab.serve(&other, 80).await?;
    let enforcer = Enforcer::start(&client, &node).await?;

    // Egress deny-all for the client.
    create_policy(
        &client,
        "default",
        "client-egress",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}),
    )
    .await?;
    wait_isolated(&node, "egress", c.ip, true).await?;
    expect(&[
        ("client to server", &c, web.ip, 80, false),
        ("client to other", &c, other.ip, 80, false),
    ])
    .await?;
    // Traffic to its own node stays allowed (the gateway answers on no port, but must
    // answer: a refused connection, not a dropped one).
    let to_node = network::connect_in(
        &c.netns,
        (node.gateway(), 1).into(),
        Duration::from_millis(500),
    )
    .await;
    ensure!(
        matches!(&to_node, Err(network::netns::Error::Connect { source, .. })
            if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "the client's packets to its node were not answered: {to_node:?}"
    );

    // Egress by named port: "http" resolves on the destination pod, so the server (http =
    // 80) is allowed and the other server (its port 80 is named "web") is not.
    delete_policy(&client, "default", "client-egress").await?;
    create_policy(
        &client,
        "default",
        "client-egress-http",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": "http"}]}]}),
    )
    .await?;
    wait_policies(
        &node,
        &["default/client-egress-http"],
        &["default/client-egress"],
    )
    .await?;
    expect(&[
        ("to the server's http port", &c, web.ip, 80, true),
        ("to the server's metrics port", &c, web.ip, 9090, false),
        ("to the other server's port 80", &c, other.ip, 80, false),
    ])
    .await?;
    delete_policy(&client, "default", "client-egress-http").await?;
    wait_isolated(&node, "egress", c.ip, false).await?;

    // Ingress by named port: the server accepts on "metrics" (9090) only.
    create_policy(
        &client,
        "default",
        "server-metrics",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"ports": [{"port": "metrics"}]}]}),
    )
    .await?;
    wait_isolated(&node, "ingress", web.ip, true).await?;
    expect(&[
        ("to metrics", &c, web.ip, 9090, true),
        ("to http", &c, web.ip, 80, false),
        ("to the unselected other server", &c, other.ip, 80, true),
    ])
    .await?;

    // Numeric ranges with endPort, and UDP rules not opening TCP.
    delete_policy(&client, "default", "server-metrics").await?;
    create_policy(
        &client,
        "default",
        "server-range",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"ports": [{"port": 9000, "endPort": 9100}, {"protocol": "UDP", "port": 80}]}]}),
    )
    .await?;
    wait_policies(
        &node,
        &["default/server-range"],
        &["default/server-metrics"],
    )
    .await?;
    expect(&[
        ("9090 within 9000-9100", &c, web.ip, 9090, true),
        ("TCP 80 with only UDP 80 allowed", &c, web.ip, 80, false),
    ])
    .await?;

    enforcer.stop().await?;
    drop(lab);
    ensure!(
        root_ruleset()? == root_before,
        "the root namespace's ruleset changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_traffic_between_nodes_is_enforced() -> Result<()> {
    let root_before = root_ruleset()?;
    let server = TestServer::start().await?;
    let client = server.client.clone();
    let mut lab = Lab::new("route")?;
    let node_a = lab.node("node-a", "10.42.0.0/24").await?;
    let node_b = lab.node("node-b", "10.42.1.0/24").await?;
    lab.link_nodes(&node_a, "192.168.250.1", &node_b, "192.168.250.2")?;
    let web = lab
        .pod(
            &client,
            &node_a,
            "default",
            "server",
            json!({"app": "server"}),
            json!([]),
        )
        .await?;
    let local = lab
        .pod(
            &client,
            &node_a,
            "default",
            "local-client",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    let remote_good = lab
        .pod(
            &client,
            &node_b,
            "default",
            "remote-client",
            json!({"app": "client"}),
            json!([]),
        )
        .await?;
    let remote_bad = lab
        .pod(
            &client,
            &node_b,
            "default",
            "remote-other",
            json!({"app": "other"}),
            json!([]),
        )
        .await?;
    let remote_web = lab
        .pod(
            &client,
            &node_b,
            "default",
            "remote-server",
            json!({"app": "remote-server"}),
            json!([]),
        )
        .await?;
    lab.serve(&web, 80).await?;
    lab.serve(&remote_web, 80).await?;
    // Only node A is enforced here: what node B's pods see is decided on node A.
    let enforcer = Enforcer::start(&client, &node_a).await?;
    expect(&[
        (
            "remote client before any policy",
            &remote_good,
            web.ip,
            80,
            true,
        ),
        (
            "remote other before any policy",
            &remote_bad,
            web.ip,
            80,
            true,
        ),
        (
            "local client to the remote server",
            &local,
            remote_web.ip,
            80,
            true,
        ),
    ])
    .await?;

    create_policy(
        &client,
        "default",
        "allow-client",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
    )
    .await?;
    create_policy(
        &client,
        "default",
        "local-egress",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}),
    )
    .await?;
    wait_isolated(&node_a, "ingress", web.ip, true).await?;
    wait_isolated(&node_a, "egress", local.ip, true).await?;
    expect(&[
        ("remote app=client, routed", &remote_good, web.ip, 80, true),
        ("remote app=other, routed", &remote_bad, web.ip, 80, false),
        ("local app=client, bridged", &local, web.ip, 80, true),
        (
            "local client's egress to a pod it may not reach",
            &local,
            remote_web.ip,
            80,
            false,
        ),
    ])
    .await?;

    enforcer.stop().await?;
    drop(lab);
    ensure!(
        root_ruleset()? == root_before,
        "the root namespace's ruleset changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_run_when_bridged_traffic_would_bypass_it() -> Result<()> {
    let server = TestServer::start().await?;
    let lab = Lab::new("brnf")?;
    let node = lab.node("node-a", "10.42.0.0/24").await?;
    support::exec_in(
        &node.netns,
        "/bin/busybox",
        &["sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0"],
    )?;
    let cfg = netpol::Config {
        netns: Some(node.netns.clone()),
        ..netpol::Config::new("node-a")
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let err = netpol::run(server.client.clone(), cfg.clone(), stop.clone())
        .await
        .expect_err("must refuse");
    ensure!(
        err.to_string().contains("would bypass NetworkPolicy")
            && err
                .to_string()
                .contains("bridge skiff0 does not set nf_call_iptables"),
        "{err}"
    );
    ensure!(!node.nft(&["list", "tables"])?.contains("skiff-netpol"));

    // The bridge's own option is enough.
    support::exec_in(
        &node.netns,
        "ip",
        &[
            "link",
            "set",
            "dev",
            "skiff0",
            "type",
            "bridge",
            "nf_call_iptables",
            "1",
        ],
    )?;
    let task = tokio::spawn(netpol::run(server.client.clone(), cfg, stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.nft(&["list", "tables"])?.contains("skiff-netpol") {
        ensure!(Instant::now() < deadline, "the enforcer did not start");
        ensure!(!task.is_finished(), "the enforcer ended: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await??;
    Ok(())
}
