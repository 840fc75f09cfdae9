use super::*;

fn ranges(cidr: &str, ports: &str) -> Ranges {
    let service_cidr = parse_service_cidr(cidr).unwrap();
    Ranges {
        service_cidr,
        node_ports: ports.parse().unwrap(),
        cluster_dns: Ipv4Addr::from(u32::from(service_cidr.network()) + 2),
    }
}

fn default_alloc() -> Allocator {
    Allocator::new(Ranges::default()).unwrap()
}

/// A Service as the REST path hands it over: defaulted by the api crate.
fn svc(spec: Value) -> Value {
    let mut obj = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s", "namespace": "default"}, "spec": spec});
    api::defaults::apply("", "v1", "Service", &mut obj);
    obj
}

fn invalid_messages(e: AllocError) -> Vec<String> {
    match e {
        AllocError::Invalid(errs) => errs.iter().map(FieldError::full_message).collect(),
        AllocError::Internal(m) => panic!("expected a field error, got internal: {m}"),
    }
}

#[test]
fn flag_values() {
    assert_eq!(
        parse_service_cidr("10.43.0.0/16").unwrap().to_string(),
        "10.43.0.0/16"
    );
    for (input, want) in [
        (
            "10.43.0.1/16",
            "host bits are set (the prefix is 10.43.0.0/16)",
        ),
        ("10.0.0.0/8", "larger than /12, the most allowed"),
        ("10.43.0.0/31", "smaller than /30"),
        ("fd00::/108", "only IPv4 service CIDRs are supported"),
        ("10.43.0.0", "expected an IPv4 prefix"),
    ] {
        let e = parse_service_cidr(input).unwrap_err().to_string();
        assert!(e.contains(want), "{input}: {e}");
    }
    assert_eq!(
        "30000-32767".parse::<PortRange>().unwrap(),
        PortRange::default()
    );
    assert_eq!(
        "30000+2767".parse::<PortRange>().unwrap(),
        PortRange::default()
    );
    assert_eq!(PortRange::default().to_string(), "30000-32767");
    for bad in [
        "", "30000", "3-2", "0-10", "1-70000", "a-b", "+1-2", "65535+1",
    ] {
        assert!(bad.parse::<PortRange>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn ranges_fit_together() {
    assert!(Ranges::default().check().is_ok());
    assert_eq!(
        Ranges::default().kubernetes_ip(),
        Ipv4Addr::new(10, 43, 0, 1)
    );
    let with_dns = |dns| Ranges {
        cluster_dns: dns,
        ..Default::default()
    };
    let r = with_dns(Ipv4Addr::new(10, 44, 0, 10));
    assert!(matches!(r.check(), Err(Error::DnsOutsideRange { .. })));
    let r = with_dns(Ipv4Addr::new(10, 43, 255, 255));
    assert!(matches!(r.check(), Err(Error::DnsOutsideRange { .. })));
    let r = with_dns(Ipv4Addr::new(10, 43, 0, 1));
    assert!(matches!(r.check(), Err(Error::DnsIsKubernetes { .. })));
}

#[test]
fn bands_follow_upstream() {
    assert_eq!(
        ip_low_band(parse_service_cidr("10.43.0.0/16").unwrap()),
        256
    );
    assert_eq!(ip_low_band(parse_service_cidr("10.43.0.0/24").unwrap()), 16);
    assert_eq!(ip_low_band(parse_service_cidr("10.43.0.0/28").unwrap()), 0);
    assert_eq!(
        ip_low_band(parse_service_cidr("10.96.0.0/12").unwrap()),
        256
    );
    assert_eq!(port_low_band(PortRange::default()), 86);
    assert_eq!(port_low_band(PortRange::new(30000, 30009).unwrap()), 0);
}

#[test]
fn pool_hands_out_each_item_once_upper_band_first() {
    let mut pool = Pool::new(100, 20);
    let mut rng = rand::rng();
    let mut seen = BTreeSet::new();
    for n in 0..100 {
        let i = pool.take_any(&mut rng).unwrap();
        assert!(seen.insert(i), "{i} handed out twice");
        if n < 80 {
            assert!(
                i >= 20,
                "low band item {i} handed out while upper ones were free"
            );
        }
    }
    assert_eq!(pool.take_any(&mut rng), None);
    assert_eq!(pool.taken_count(), 100);
    pool.give_back(42);
    assert_eq!(pool.take_any(&mut rng), Some(42));
    assert!(!pool.take(42));
    assert!(!pool.take(100), "out of range");
}

#[test]
fn pool_keeps_items_several_holders_claim() {
    let mut pool = Pool::new(10, 0);
    assert!(pool.claim(3));
    assert!(!pool.claim(3));
    pool.give_back(3);
    assert!(pool.is_taken(3), "the second holder still has it");
    pool.give_back(3);
    assert!(!pool.is_taken(3));
}

#[test]
fn create_fills_addresses_and_families() {
    let alloc = default_alloc();
    let mut s = svc(json!({"ports": [{"port": 80}]}));
    alloc.allocate_create(&mut s, false).unwrap().commit();
    let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(alloc.ranges.service_cidr.contains(&ip));
    assert!(
        u32::from(ip) - u32::from(Ipv4Addr::new(10, 43, 0, 0)) > 256,
        "{ip} is in the static band"
    );
    assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
    assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
    assert!(alloc.ip_taken(ip));
    assert!(s["spec"]["ports"][0].get("nodePort").is_none());
}

#[test]
fn requested_addresses_are_checked() {
    let alloc = default_alloc();
    let mut a = svc(json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}));
    alloc.allocate_create(&mut a, false).unwrap().commit();
    assert_eq!(a["spec"]["clusterIPs"], json!(["10.43.0.20"]));

    let mut b = svc(json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}));
    let e = alloc.allocate_create(&mut b, false).unwrap_err();
    assert_eq!(
        invalid_messages(e),
        [
            "spec.clusterIPs: Invalid value: []string{\"10.43.0.20\"}: failed to allocate IP 10.43.0.20: provided IP is already allocated"
        ]
    );
    for outside in ["10.44.0.1", "10.43.0.0", "10.43.255.255"] {
        let mut c = svc(json!({"clusterIP": outside, "ports": [{"port": 80}]}));
        let e = alloc.allocate_create(&mut c, false).unwrap_err();
        assert_eq!(
            invalid_messages(e),
            [format!(
                "spec.clusterIPs: Invalid value: []string{{\"{outside}\"}}: failed to allocate IP {outside}: provided IP is not in the valid range. The range of valid IPs is 10.43.0.0/16"
            )]
        );
    }
    let mut v6 = svc(json!({"clusterIP": "fd00::1", "ports": [{"port": 80}]}));
    v6["spec"].as_object_mut().unwrap().remove("ipFamilies");
    let e = alloc.allocate_create(&mut v6, false).unwrap_err();
    assert_eq!(
        invalid_messages(e),
        [
            "spec.clusterIPs[0]: Invalid value: []string{\"fd00::1\"}: IPv6 is not configured on this cluster"
        ]
    );
    let mut dual = svc(json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}));
    let e = alloc.allocate_create(&mut dual, false).unwrap_err();
    assert_eq!(
        invalid_messages(e),
        [
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
        ]
    );
}

#[test]
fn headless_and_external_name_get_no_address() {
    let alloc = default_alloc();
    let mut h = svc(json!({"clusterIP": "None", "selector": {"a": "b"}}));
    alloc.allocate_create(&mut h, false).unwrap().commit();
    assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
    let mut e = svc(json!({"type": "ExternalName", "externalName": "example.com"}));
    alloc.allocate_create(&mut e, false).unwrap().commit();
    assert!(e["spec"].get("clusterIP").is_none());
    assert!(e["spec"].get("ipFamilies").is_none());
    assert_eq!(alloc.usage(), (0, 0));
}

#[test]
fn node_ports_are_allocated_shared_and_checked() {
    let alloc = default_alloc();
    let mut s = svc(json!({"type": "NodePort", "ports": [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "web", "port": 80, "nodePort": 30080}]}));
    alloc.allocate_create(&mut s, false).unwrap().commit();
    let p = &s["spec"]["ports"];
    let dns = p[0]["nodePort"].as_i64().unwrap();
    assert_eq!(
        p[1]["nodePort"].as_i64(),
        Some(dns),
        "same port number, same node port"
    );
    assert!(
        (30086..=32767).contains(&dns),
        "{dns} is in the static band"
    );
    assert_eq!(p[2]["nodePort"], 30080);
    assert!(alloc.port_taken(30080));
    assert_eq!(alloc.usage(), (1, 2));

    let mut clash = svc(
        json!({"type": "NodePort", "ports": [{"port": 81}, {"name": "b", "port": 82, "nodePort": 30080}]}),
    );
    let e = alloc.allocate_create(&mut clash, false).unwrap_err();
    assert_eq!(
        invalid_messages(e),
        ["spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated"]
    );
    assert_eq!(
        alloc.usage(),
        (1, 2),
        "a refused create gives back what it took"
    );

    // A valid port number outside the node port range: the allocator's error, as upstream's.
    let mut outside = svc(json!({"type": "NodePort", "ports": [{"port": 83, "nodePort": 8080}]}));
    let e = alloc.allocate_create(&mut outside, false).unwrap_err();
    assert_eq!(
        invalid_messages(e),
        [
            "spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"
        ]
    );
    assert_eq!(alloc.usage(), (1, 2));

    let mut lb = svc(
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
    );
    alloc.allocate_create(&mut lb, false).unwrap().commit();
    assert!(lb["spec"]["ports"][0].get("nodePort").is_none());
}

#[test]
fn health_check_node_port_for_local_load_balancers() {
    let alloc = default_alloc();
    let mut s = svc(
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    );
    alloc.allocate_create(&mut s, false).unwrap().commit();
    let hc = s["spec"]["healthCheckNodePort"].as_i64().unwrap();
    assert!(alloc.port_taken(hc as u16));
    assert_eq!(alloc.usage().1, 2);

    let mut bad =
        svc(json!({"type": "NodePort", "healthCheckNodePort": 30001, "ports": [{"port": 80}]}));
    let e = alloc.allocate_create(&mut bad, false).unwrap_err();
    assert_eq!(
        invalid_messages(e),
        [
            "spec.healthCheckNodePort: Invalid value: 30001: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
        ]
    );

    // Cluster policy: the health check port goes once the update is durable.
    let mut new = s.clone();
    new["spec"]["externalTrafficPolicy"] = json!("Cluster");
    prepare_update(&s, &mut new);
    assert!(new["spec"].get("healthCheckNodePort").is_none());
    let txn = alloc.allocate_update(&s, &mut new, false).unwrap();
    assert!(alloc.port_taken(hc as u16), "freed only on commit");
    txn.commit();
    assert!(!alloc.port_taken(hc as u16));
}

#[test]
fn dry_runs_and_failed_writes_keep_nothing() {
    let alloc = default_alloc();
    let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let txn = alloc.allocate_create(&mut s, true).unwrap();
    assert!(s["spec"]["clusterIP"].is_string());
    assert!(s["spec"]["ports"][0]["nodePort"].is_i64());
    drop(txn);
    assert_eq!(alloc.usage(), (0, 0));

    let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let txn = alloc.allocate_create(&mut s, false).unwrap();
    assert_eq!(alloc.usage(), (1, 1));
    drop(txn); // the store write failed
    assert_eq!(alloc.usage(), (0, 0));
}

#[test]
fn type_changes_allocate_and_release() {
    let alloc = default_alloc();
    let mut cluster_ip = svc(json!({"ports": [{"port": 80}]}));
    alloc
        .allocate_create(&mut cluster_ip, false)
        .unwrap()
        .commit();
    let ip: Ipv4Addr = cluster_ip["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // ClusterIP → NodePort (a patch that leaves out the cluster IP keeps it).
    let mut node_port = cluster_ip.clone();
    node_port["spec"]["type"] = json!("NodePort");
    node_port["spec"]
        .as_object_mut()
        .unwrap()
        .remove("clusterIP");
    node_port["spec"]
        .as_object_mut()
        .unwrap()
        .remove("clusterIPs");
    prepare_update(&cluster_ip, &mut node_port);
    api::defaults::apply("", "v1", "Service", &mut node_port);
    alloc
        .allocate_update(&cluster_ip, &mut node_port, false)
        .unwrap()
        .commit();
    assert_eq!(node_port["spec"]["clusterIP"], ip.to_string());
    let np = node_port["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!(alloc.port_taken(np as u16));

    // Resubmitting the same spec without the node port keeps it.
    let mut again = node_port.clone();
    again["spec"]["ports"][0]
        .as_object_mut()
        .unwrap()
        .remove("nodePort");
    prepare_update(&node_port, &mut again);
    assert_eq!(again["spec"]["ports"][0]["nodePort"], np);

    // NodePort → ClusterIP: the node port goes, the address stays.
    let mut back = node_port.clone();
    back["spec"]["type"] = json!("ClusterIP");
    prepare_update(&node_port, &mut back);
    assert!(back["spec"]["ports"][0].get("nodePort").is_none());
    assert!(back["spec"].get("externalTrafficPolicy").is_none());
    alloc
        .allocate_update(&node_port, &mut back, false)
        .unwrap()
        .commit();
    assert!(!alloc.port_taken(np as u16));
    assert!(alloc.ip_taken(ip));

    // ClusterIP → ExternalName releases the address.
    let mut external = back.clone();
    external["spec"]["type"] = json!("ExternalName");
    external["spec"]["externalName"] = json!("example.com");
    prepare_update(&back, &mut external);
    assert!(external["spec"].get("clusterIP").is_none());
    assert!(external["spec"].get("ipFamilies").is_none());
    assert!(external["spec"].get("ipFamilyPolicy").is_none());
    alloc
        .allocate_update(&back, &mut external, false)
        .unwrap()
        .commit();
    assert_eq!(alloc.usage(), (0, 0));

    // ExternalName → ClusterIP allocates again.
    let mut internal = external.clone();
    internal["spec"]["type"] = json!("ClusterIP");
    prepare_update(&external, &mut internal);
    api::defaults::apply("", "v1", "Service", &mut internal);
    alloc
        .allocate_update(&external, &mut internal, false)
        .unwrap()
        .commit();
    assert!(internal["spec"]["clusterIP"].is_string());
    assert_eq!(alloc.usage(), (1, 0));
}

#[test]
fn a_conflicting_update_frees_nothing_and_gives_back() {
    let alloc = default_alloc();
    let mut old = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]}));
    alloc.allocate_create(&mut old, false).unwrap().commit();
    let mut new = old.clone();
    new["spec"]["ports"][0]["nodePort"] = json!(30101);
    let txn = alloc.allocate_update(&old, &mut new, false).unwrap();
    assert!(alloc.port_taken(30100) && alloc.port_taken(30101));
    drop(txn);
    assert!(alloc.port_taken(30100));
    assert!(!alloc.port_taken(30101));
}

#[test]
fn restore_and_release_agree() {
    let alloc = default_alloc();
    let mut stored = Vec::new();
    for spec in [
        json!({"type": "NodePort", "ports": [{"port": 53, "protocol": "UDP"}, {"name": "t", "port": 53, "protocol": "TCP"}]}),
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        json!({"clusterIP": "None", "selector": {"a": "b"}}),
    ] {
        let mut s = svc(spec);
        alloc.allocate_create(&mut s, false).unwrap().commit();
        stored.push(s);
    }
    let usage = alloc.usage();
    assert_eq!(usage, (2, 3));

    let restarted = default_alloc();
    assert!(restarted.restore(&stored).is_empty());
    assert_eq!(restarted.usage(), usage);
    for s in &stored {
        restarted.release(s);
    }
    assert_eq!(restarted.usage(), (0, 0));
}

#[test]
fn restore_reports_duplicates_and_strays() {
    let alloc = Allocator::new(ranges("10.43.0.0/24", "30000-30010")).unwrap();
    let a = svc(
        json!({"clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"], "ports": [{"port": 80}]}),
    );
    let b = a.clone();
    let stray = svc(
        json!({"clusterIP": "10.50.0.5", "clusterIPs": ["10.50.0.5"], "type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
    );
    let problems = alloc.restore([&a, &b, &stray]);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("also held by another Service"));
    assert!(problems[1].contains("not within the service CIDR 10.43.0.0/24"));
    assert!(problems[2].contains("not within the node port range 30000-30010"));
    alloc.release(&a);
    assert!(
        alloc.ip_taken(Ipv4Addr::new(10, 43, 0, 5)),
        "b still holds it"
    );
    alloc.release(&b);
    assert!(!alloc.ip_taken(Ipv4Addr::new(10, 43, 0, 5)));
}

#[test]
fn full_ranges_are_internal_errors() {
    let alloc = Allocator::new(ranges("10.43.0.0/30", "30000-30000")).unwrap();
    let mut a = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
    alloc.allocate_create(&mut a, false).unwrap().commit();
    let mut b = svc(json!({"ports": [{"port": 80}]}));
    alloc.allocate_create(&mut b, false).unwrap().commit();
    let mut c = svc(json!({"ports": [{"port": 80}]}));
    match alloc.allocate_create(&mut c, false) {
        Err(AllocError::Internal(m)) => {
            assert_eq!(m, "failed to allocate a serviceIP: range is full")
        }
        other => panic!("{other:?}"),
    }
    // An address is free again, the only node port is not.
    alloc.release(&b);
    let mut d = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
    match alloc.allocate_create(&mut d, false) {
        Err(AllocError::Internal(m)) => {
            assert_eq!(m, "failed to allocate a nodePort: range is full")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(alloc.usage(), (1, 1), "the address d took was given back");
}

#[test]
fn update_keeps_the_address_when_clients_leave_it_out() {
    let old = svc(
        json!({"clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"], "ports": [{"port": 80}]}),
    );
    // An old client: only the singular field, cleared.
    let mut new = old.clone();
    new["spec"].as_object_mut().unwrap().remove("clusterIP");
    new["spec"].as_object_mut().unwrap().remove("clusterIPs");
    prepare_update(&old, &mut new);
    assert_eq!(new["spec"]["clusterIP"], "10.43.0.7");
    assert_eq!(new["spec"]["clusterIPs"], json!(["10.43.0.7"]));
    // A new singular value with the old list: the list follows (validation refuses the change).
    let mut moved = old.clone();
    moved["spec"]["clusterIP"] = json!("10.43.0.8");
    prepare_update(&old, &mut moved);
    assert_eq!(moved["spec"]["clusterIPs"], json!(["10.43.0.8"]));
}

#[test]
fn load_balancer_status_goes_with_the_type() {
    let mut old = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30000}]}));
    old["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    let mut new = old.clone();
    prepare_update(&old, &mut new);
    assert_eq!(new["status"], old["status"]);
    new["spec"]["type"] = json!("ClusterIP");
    prepare_update(&old, &mut new);
    assert_eq!(new["status"], json!({"loadBalancer": {}}));
    assert!(new["spec"].get("allocateLoadBalancerNodePorts").is_none());
}

#[test]
fn legacy_services_get_addresses_on_update() {
    let alloc = default_alloc();
    let old = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let mut new = old.clone();
    alloc
        .allocate_update(&old, &mut new, false)
        .unwrap()
        .commit();
    assert!(new["spec"]["clusterIP"].is_string());
    assert!(new["spec"]["ports"][0]["nodePort"].is_i64());
    assert_eq!(alloc.usage(), (1, 1));
}
