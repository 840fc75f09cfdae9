//! Service cluster IPs and node ports, the system Services, and Node pod CIDRs, against an
//! in-process server through a kube client: allocation on create, the update strategy, release
//! on type changes and deletes, and no address or port handed out twice, also across a restart
//! on the same data directory.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
        .unwrap_or_else(|e| panic!("service {name}: {e}"))
}

/// The message of a refused request, and its HTTP code.
fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default()
}

fn node_ports(svc: &Service) -> Vec<i32> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().filter_map(|p| p.node_port).collect())
        .unwrap_or_default()
}

fn as_json(svc: &Service) -> Value {
    serde_json::to_value(svc).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_addresses_and_ports() -> Result<()> {
    let server = testkit::TestServer::start().await?;
    let api: Api<Service> = Api::namespaced(server.client.clone(), "default");
    let pp = PostParams::default();

    // A plain Service: an address from the upper part of 10.43.0.0/16, upstream's defaults.
    let web = api
        .create(
            &pp,
            &service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
        )
        .await?;
    let ip: Ipv4Addr = cluster_ip(&web).parse()?;
    assert_eq!(ip.octets()[..2], [10, 43]);
    assert!(ip.octets()[2] >= 1, "{ip} is in the static band");
    let spec = as_json(&web)["spec"].clone();
    assert_eq!(spec["clusterIPs"], json!([ip.to_string()]));
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(
        spec["ports"],
        json!([{"port": 80, "protocol": "TCP", "targetPort": 80}])
    );

    // A requested address: taken once, refused the second time and outside the range.
    let fixed = api
        .create(
            &pp,
            &service(
                "fixed",
                json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}),
            ),
        )
        .await?;
    assert_eq!(cluster_ip(&fixed), "10.43.0.20");
    let (code, msg) = refusal(
        api.create(
            &pp,
            &service(
                "again",
                json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}),
            ),
        )
        .await,
    );
    assert_eq!(code, 422);
    assert_eq!(
        msg,
        "Service \"again\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.43.0.20\"}: failed to allocate IP 10.43.0.20: provided IP is already allocated"
    );
    let (code, msg) = refusal(
        api.create(
            &pp,
            &service(
                "outside",
                json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
            ),
        )
        .await,
    );
    assert_eq!(code, 422);
    assert!(
        msg.ends_with("failed to allocate IP 10.96.0.20: provided IP is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
        "{msg}"
    );

    // The address is immutable; a replace that leaves it out keeps it.
    let (code, msg) = refusal(
        api.patch(
            "fixed",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"clusterIP": "10.43.0.21", "clusterIPs": ["10.43.0.21"]}}),
            ),
        )
        .await,
    );
    assert_eq!(code, 422);
    assert!(msg.contains("may not change once set"), "{msg}");
    let mut replaced = service("fixed", json!({"ports": [{"port": 8080}]}));
    replaced.metadata.resource_version = fixed.metadata.resource_version.clone();
    let replaced = api.replace("fixed", &pp, &replaced).await?;
    assert_eq!(cluster_ip(&replaced), "10.43.0.20");

    // Dry runs allocate nothing.
    let dry = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &service(
                "dry",
                json!({"clusterIP": "10.43.0.30", "ports": [{"port": 80}]}),
            ),
        )
        .await?;
    assert_eq!(cluster_ip(&dry), "10.43.0.30");
    api.create(
        &pp,
        &service(
            "wet",
            json!({"clusterIP": "10.43.0.30", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .context("the dry run took the address")?;

    // Node ports: allocated, requested, refused when taken.
    let np = api
        .create(
            &pp,
            &service(
                "np",
                json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30081}]}),
            ),
        )
        .await?;
    let ports = node_ports(&np);
    assert_eq!(ports.len(), 2);
    assert!((30000..=32767).contains(&ports[0]) && ports[0] != 30081);
    assert_eq!(ports[1], 30081);
    assert_eq!(as_json(&np)["spec"]["externalTrafficPolicy"], "Cluster");
    let (code, msg) = refusal(
        api.create(
            &pp,
            &service(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30081}]}),
            ),
        )
        .await,
    );
    assert_eq!(code, 422);
    assert_eq!(
        msg,
        "Service \"np2\" is invalid: spec.ports[0].nodePort: Invalid value: 30081: provided port is already allocated"
    );

    // NodePort → ClusterIP releases the node ports; another Service can take them.
    let back = api
        .patch(
            "np",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await?;
    assert!(node_ports(&back).is_empty());
    assert_eq!(cluster_ip(&back), cluster_ip(&np));
    api.create(
        &pp,
        &service(
            "np2",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30081}]}),
        ),
    )
    .await
    .context("node port 30081 was not released")?;

    // ClusterIP → ExternalName releases the address; → ClusterIP allocates again.
    let external = api
        .patch(
            "fixed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ExternalName", "externalName": "example.com"}})),
        )
        .await?;
    assert_eq!(cluster_ip(&external), "");
    assert!(as_json(&external)["spec"].get("ipFamilies").is_none());
    let took = api
        .create(
            &pp,
            &service(
                "took",
                json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .context("10.43.0.20 was not released")?;
    assert_eq!(cluster_ip(&took), "10.43.0.20");
    let internal = api
        .patch(
            "fixed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "externalName": null}})),
        )
        .await?;
    let again: Ipv4Addr = cluster_ip(&internal).parse()?;
    assert_ne!(again.to_string(), "10.43.0.20");

    // Delete releases.
    api.delete("took", &DeleteParams::default()).await?;
    api.create(
        &pp,
        &service(
            "took2",
            json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .context("a deleted Service kept its address")?;

    // A LoadBalancer with the Local policy gets a health check node port; its status goes
    // when it stops being a LoadBalancer.
    let lb = api
        .create(
            &pp,
            &service(
                "lb",
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
            ),
        )
        .await?;
    let spec = as_json(&lb)["spec"].clone();
    assert!(spec["healthCheckNodePort"].is_i64(), "{spec}");
    assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
    api.patch_status(
        "lb",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}})),
    )
    .await?;
    let cluster = api
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await?;
    let out = as_json(&cluster);
    assert_eq!(out["status"], json!({"loadBalancer": {}}));
    assert!(out["spec"].get("healthCheckNodePort").is_none());
    assert!(out["spec"].get("externalTrafficPolicy").is_none());

    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_get_distinct_addresses() -> Result<()> {
    let server = testkit::TestServer::start().await?;
    let api: Api<Service> = Api::namespaced(server.client.clone(), "default");
    let creates = (0..40).map(|i| {
        let api = api.clone();
        async move {
            api.create(
                &PostParams::default(),
                &service(
                    &format!("s{i}"),
                    json!({"type": "NodePort", "ports": [{"port": 80}]}),
                ),
            )
            .await
        }
    });
    let created = futures::future::try_join_all(creates).await?;
    let ips: BTreeSet<String> = created.iter().map(cluster_ip).collect();
    let ports: BTreeSet<i32> = created.iter().flat_map(node_ports).collect();
    assert_eq!(ips.len(), 40);
    assert_eq!(ports.len(), 40);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_services_point_at_the_server() -> Result<()> {
    let server = testkit::TestServer::start().await?;
    let port = server.running.addr.port();
    let default: Api<Service> = Api::namespaced(server.client.clone(), "default");
    let k8s = as_json(&default.get("kubernetes").await?);
    assert_eq!(k8s["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(
        k8s["spec"]["ports"],
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}])
    );
    assert_eq!(k8s["metadata"]["labels"]["component"], "apiserver");
    assert_eq!(k8s["metadata"]["labels"]["provider"], "kubernetes");

    let eps: Api<Endpoints> = Api::namespaced(server.client.clone(), "default");
    let ep = serde_json::to_value(eps.get("kubernetes").await?)?;
    assert_eq!(
        ep["subsets"],
        json!([{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}])
    );
    assert_eq!(
        ep["metadata"]["labels"],
        json!({"endpointslice.kubernetes.io/skip-mirror": "true"})
    );
    let slices: Api<EndpointSlice> = Api::namespaced(server.client.clone(), "default");
    let slice = serde_json::to_value(slices.get("kubernetes").await?)?;
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"][0]["addresses"], json!(["127.0.0.1"]));
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(slice["ports"][0]["port"], port);
    assert_eq!(
        slice["metadata"]["labels"],
        json!({"kubernetes.io/service-name": "kubernetes"})
    );

    let system: Api<Service> = Api::namespaced(server.client.clone(), "kube-system");
    let dns = as_json(&system.get("kube-dns").await?);
    assert_eq!(dns["spec"]["clusterIP"], "10.43.0.10");
    assert_eq!(
        dns["metadata"]["annotations"]["skiff.dev/node-local-dns"],
        "true"
    );
    assert_eq!(dns["metadata"]["labels"]["k8s-app"], "kube-dns");
    assert!(dns["spec"].get("selector").is_none());
    assert_eq!(
        dns["spec"]["ports"],
        json!([
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ])
    );
    // Nobody else gets the reserved addresses.
    let pp = PostParams::default();
    for ip in ["10.43.0.1", "10.43.0.10"] {
        let (code, msg) = refusal(
            default
                .create(
                    &pp,
                    &service("thief", json!({"clusterIP": ip, "ports": [{"port": 80}]})),
                )
                .await,
        );
        assert_eq!(code, 422, "{msg}");
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertise_address_and_cluster_dns_are_configurable() -> Result<()> {
    let server = testkit::TestServer::start_with(|cfg| {
        cfg.advertise_address = Some("192.0.2.10".parse().unwrap());
        cfg.services.service_cidr = "10.96.0.0/12".parse().unwrap();
        cfg.services.cluster_dns = "10.96.0.10".parse().unwrap();
    })
    .await?;
    let eps: Api<Endpoints> = Api::namespaced(server.client.clone(), "default");
    let ep = serde_json::to_value(eps.get("kubernetes").await?)?;
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "192.0.2.10");
    let default: Api<Service> = Api::namespaced(server.client.clone(), "default");
    assert_eq!(cluster_ip(&default.get("kubernetes").await?), "10.96.0.1");
    let system: Api<Service> = Api::namespaced(server.client.clone(), "kube-system");
    assert_eq!(cluster_ip(&system.get("kube-dns").await?), "10.96.0.10");
    server.shutdown().await
}

/// Starts a server on `dir` with a /28 service CIDR (14 addresses: the `kubernetes` Service,
/// the DNS Service and 12 others) and 12 node ports.
async fn small_server(dir: &std::path::Path) -> Result<(apiserver::Running, kube::Client)> {
    let mut cfg = testkit::config(dir);
    cfg.services.service_cidr = "10.43.0.0/28".parse()?;
    cfg.services.node_ports = "30000-30011".parse()?;
    // Durable writes: this test is about what survives.
    cfg.store.fsync = true;
    let running = apiserver::start(cfg).await?;
    let client = testkit::client(&running.kubeconfig).await?;
    Ok((running, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_hands_out_an_address_twice() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let nodeport = |i: usize| {
        service(
            &format!("s{i}"),
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        )
    };

    let (running, client) = small_server(dir.path()).await?;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..6 {
        let s = api.create(&PostParams::default(), &nodeport(i)).await?;
        assert!(ips.insert(cluster_ip(&s)), "{} twice", cluster_ip(&s));
        assert!(ports.insert(node_ports(&s)[0]));
    }
    running.shutdown().await?;

    // Restarted: the system Services are not duplicated, and the rest of the range is all
    // that is handed out.
    let (running, client) = small_server(dir.path()).await?;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let all: Api<Service> = Api::all(client.clone());
    let names: Vec<String> = all
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "default/kubernetes").count(),
        1
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "kube-system/kube-dns")
            .count(),
        1
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let k8s_slices = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await?;
    assert_eq!(k8s_slices.items.len(), 1);

    for i in 6..12 {
        let s = api.create(&PostParams::default(), &nodeport(i)).await?;
        assert!(
            ips.insert(cluster_ip(&s)),
            "{} handed out twice",
            cluster_ip(&s)
        );
        assert!(
            ports.insert(node_ports(&s)[0]),
            "node port handed out twice"
        );
    }
    assert!(!ips.contains("10.43.0.1") && !ips.contains("10.43.0.10"));
    let (code, msg) = refusal(api.create(&PostParams::default(), &nodeport(12)).await);
    assert_eq!(code, 500);
    assert!(msg.contains("range is full"), "{msg}");

    // Deleting one frees exactly its address.
    let gone = api.get("s3").await?;
    api.delete("s3", &DeleteParams::default()).await?;
    let s = api
        .create(
            &PostParams::default(),
            &service("after", json!({"ports": [{"port": 80}]})),
        )
        .await?;
    assert_eq!(cluster_ip(&s), cluster_ip(&gone));
    running.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pod_cidrs_are_set_once() -> Result<()> {
    let server = testkit::TestServer::start().await?;
    let nodes: Api<Node> = Api::all(server.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}}))?;
    nodes.create(&PostParams::default(), &node).await?;

    let set = nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": "10.42.3.0/24"}})),
        )
        .await?;
    let spec = serde_json::to_value(&set)?["spec"].clone();
    assert_eq!(spec["podCIDRs"], json!(["10.42.3.0/24"]));

    let (code, msg) = refusal(
        nodes
            .patch(
                "n1",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"podCIDR": "10.42.4.0/24", "podCIDRs": ["10.42.4.0/24"]}}),
                ),
            )
            .await,
    );
    assert_eq!(code, 422);
    assert_eq!(
        msg,
        "Node \"n1\" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"
    );
    // Unrelated updates still work.
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await?;

    let bad: Node = serde_json::from_value(
        json!({"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.42.5.0"}}),
    )?;
    let (code, msg) = refusal(nodes.create(&PostParams::default(), &bad).await);
    assert_eq!(code, 422);
    assert!(msg.contains("must be a valid CIDR value"), "{msg}");
    server.shutdown().await
}
