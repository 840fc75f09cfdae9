//! The cluster DNS against a real in-process API server: Services and EndpointSlices created
//! through the API are answered over UDP and TCP on loopback, changes show within a second,
//! hostile packets neither crash nor stall the server, and only configured upstreams are asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const DOMAIN: &str = "cluster.local";

static NEXT_ID: AtomicU16 = AtomicU16::new(1);

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Result<Message> {
    let mut m = Message::new(
        NEXT_ID.fetch_add(1, Ordering::Relaxed),
        MessageType::Query,
        OpCode::Query,
    );
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    Ok(m)
}

/// One UDP exchange, resent every 500 ms for up to 3 s like a stub resolver (a datagram may be
/// dropped when the server's socket buffer overflows, as the hostile test makes it do).
async fn exchange_udp(server: SocketAddr, request: &Message) -> Result<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let bytes = request.to_vec()?;
    let mut buf = vec![0u8; 65535];
    for _ in 0..6 {
        socket.send_to(&bytes, server).await?;
        if let Ok(got) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
        {
            let (n, _) = got?;
            let answer = Message::from_vec(&buf[..n])?;
            ensure!(
                answer.metadata.id == request.metadata.id,
                "answer for another query"
            );
            return Ok(answer);
        }
    }
    bail!("no UDP answer within 3s")
}

async fn exchange_tcp(server: SocketAddr, request: &Message) -> Result<Message> {
    let mut stream = TcpStream::connect(server).await?;
    let bytes = request.to_vec()?;
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await?;
    stream.write_all(&bytes).await?;
    let read = async {
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .context("no TCP answer within 3s")??;
    Ok(Message::from_vec(&buf)?)
}

async fn udp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    exchange_udp(server, &query(name, qtype, None)?).await
}

fn render(r: &Record) -> String {
    match &r.data {
        RData::A(a) => format!("A {a}"),
        RData::AAAA(a) => format!("AAAA {a}"),
        RData::CNAME(c) => format!("CNAME {}", c.0),
        RData::PTR(p) => format!("PTR {}", p.0),
        RData::SRV(s) => format!("SRV {} {}", s.port, s.target),
        RData::SOA(s) => format!("SOA {}", s.mname),
        other => format!("{other:?}"),
    }
}

/// The answer section, sorted (A records come shuffled).
fn answers(m: &Message) -> Vec<String> {
    let mut out: Vec<String> = m.answers.iter().map(render).collect();
    out.sort();
    out
}

fn authorities(m: &Message) -> Vec<String> {
    m.authorities.iter().map(render).collect()
}

fn fqdn(name: &str) -> String {
    format!("{name}.{DOMAIN}.")
}

struct Cluster {
    server: testkit::TestServer,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let server = testkit::TestServer::start().await?;
        Ok(Cluster {
            services: Api::namespaced(server.client.clone(), "default"),
            slices: Api::namespaced(server.client.clone(), "default"),
            server,
        })
    }

    async fn service(&self, name: &str, spec: Value) -> Result<()> {
        let svc: Service =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
        self.services
            .create(&PostParams::default(), &svc)
            .await
            .with_context(|| format!("creating service {name}"))?;
        Ok(())
    }

    async fn slice(&self, name: &str, service: &str, ports: Value, endpoints: Value) -> Result<()> {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))?;
        match self.slices.get_opt(name).await? {
            None => {
                self.slices.create(&PostParams::default(), &slice).await?;
            }
            Some(old) => {
                let mut slice = slice;
                slice.metadata.resource_version = old.metadata.resource_version;
                self.slices
                    .replace(name, &PostParams::default(), &slice)
                    .await?;
            }
        }
        Ok(())
    }

    /// A DNS server of this cluster on a free loopback port, synced.
    async fn dns(&self, upstream: Vec<SocketAddr>) -> Result<(dns::Running, SocketAddr)> {
        let cfg = dns::Config {
            listen: vec!["127.0.0.1:0".parse()?],
            domain: DOMAIN.to_string(),
            upstream,
            ttl: 5,
        };
        let running = dns::start(self.server.client.clone(), cfg, CancellationToken::new()).await?;
        tokio::time::timeout(Duration::from_secs(10), running.synced())
            .await
            .context("DNS watches not synced within 10s")?;
        let addr = running.addrs()[0];
        Ok((running, addr))
    }
}

/// Polls `name` `qtype` over UDP every 20 ms until `want` holds; returns how long it took.
async fn within(
    limit: Duration,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    want: impl Fn(&Message) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let m = udp(server, name, qtype).await?;
        if want(&m) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!(
                "{name} {qtype} still {:?} {:?} after {limit:?}",
                m.metadata.response_code,
                answers(&m)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn web_cluster() -> Result<Cluster> {
    let c = Cluster::start().await?;
    c.service("api", json!({
        "clusterIP": "10.43.7.20",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "metrics", "port": 9000}],
    }))
    .await?;
    c.service(
        "web",
        json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
    )
    .await?;
    c.slice(
        "web-1",
        "web",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        json!([
            {"addresses": ["10.42.0.5"], "hostname": "web-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "hostname": "web-1", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.7"], "conditions": {"ready": true}},
            {"addresses": ["10.42.0.8"], "hostname": "web-2", "conditions": {"ready": false}},
        ]),
    )
    .await?;
    c.service(
        "ext",
        json!({"type": "ExternalName", "externalName": "outside.test"}),
    )
    .await?;
    c.service(
        "alias",
        json!({"type": "ExternalName", "externalName": fqdn("api.default.svc")}),
    )
    .await?;
    Ok(c)
}

#[tokio::test]
async fn answers_services_endpoints_and_pods() -> Result<()> {
    let c = web_cluster().await?;
    let (_dns, at) = c.dns(vec![]).await?;

    let m = udp(at, &fqdn("api.default.svc"), RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(answers(&m), ["A 10.43.7.20"]);
    assert_eq!(m.answers[0].ttl, 5);

    // An IPv4-only name has no AAAA: NOERROR, no records, the SOA for negative caching.
    let m = udp(at, &fqdn("api.default.svc"), RecordType::AAAA).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(authorities(&m), [format!("SOA ns.dns.{DOMAIN}.")]);

    let m = udp(at, &fqdn("_http._tcp.api.default.svc"), RecordType::SRV).await?;
    assert_eq!(answers(&m), [format!("SRV 80 {}", fqdn("api.default.svc"))]);
    assert_eq!(
        m.additionals.iter().map(render).collect::<Vec<_>>(),
        ["A 10.43.7.20"]
    );

    let m = udp(at, "20.7.43.10.in-addr.arpa.", RecordType::PTR).await?;
    assert_eq!(answers(&m), [format!("PTR {}", fqdn("api.default.svc"))]);

    // Headless: the ready endpoints, each also by its hostname or dashed address.
    let m = udp(at, &fqdn("web.default.svc"), RecordType::A).await?;
    assert_eq!(answers(&m), ["A 10.42.0.5", "A 10.42.0.6", "A 10.42.0.7"]);
    let m = udp(at, &fqdn("web-0.web.default.svc"), RecordType::A).await?;
    assert_eq!(answers(&m), ["A 10.42.0.5"]);
    let m = udp(at, &fqdn("web-2.web.default.svc"), RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(at, &fqdn("_http._tcp.web.default.svc"), RecordType::SRV).await?;
    assert_eq!(
        answers(&m),
        [
            format!("SRV 8080 {}", fqdn("10-42-0-7.web.default.svc")),
            format!("SRV 8080 {}", fqdn("web-0.web.default.svc")),
            format!("SRV 8080 {}", fqdn("web-1.web.default.svc")),
        ]
    );
    let m = udp(at, "6.0.42.10.in-addr.arpa.", RecordType::PTR).await?;
    assert_eq!(
        answers(&m),
        [format!("PTR {}", fqdn("web-1.web.default.svc"))]
    );

    // ExternalName: a CNAME; an in-cluster target is followed.
    let m = udp(at, &fqdn("ext.default.svc"), RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&m), ["CNAME outside.test."]);
    let m = udp(at, &fqdn("alias.default.svc"), RecordType::A).await?;
    assert_eq!(
        render(&m.answers[0]),
        format!("CNAME {}", fqdn("api.default.svc"))
    );
    assert_eq!(
        answers(&m),
        [
            "A 10.43.7.20".to_string(),
            format!("CNAME {}", fqdn("api.default.svc"))
        ]
    );

    // Names that do not exist: NXDOMAIN with the SOA; an existing namespace is NODATA.
    for missing in ["nope.default.svc", "api.nons.svc", "nons.svc", "nothing"] {
        let m = udp(at, &fqdn(missing), RecordType::A).await?;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{missing}"
        );
        assert_eq!(
            authorities(&m),
            [format!("SOA ns.dns.{DOMAIN}.")],
            "{missing}"
        );
    }
    let m = udp(at, &fqdn("default.svc"), RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());

    let m = udp(at, &fqdn("10-42-3-4.default.pod"), RecordType::A).await?;
    assert_eq!(answers(&m), ["A 10.42.3.4"]);

    // Outside the cluster with no upstream: refused, nothing sent anywhere.
    let m = udp(at, "example.com.", RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);

    // TCP gives the same answers.
    let m = exchange_tcp(at, &query(&fqdn("web.default.svc"), RecordType::A, None)?).await?;
    assert_eq!(answers(&m), ["A 10.42.0.5", "A 10.42.0.6", "A 10.42.0.7"]);
    let m = exchange_tcp(at, &query(&fqdn("nope.default.svc"), RecordType::A, None)?).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    Ok(())
}

#[tokio::test]
async fn changes_show_within_a_second() -> Result<()> {
    let c = web_cluster().await?;
    let (_dns, at) = c.dns(vec![]).await?;
    let second = Duration::from_secs(1);
    let has = |ip: &'static str| move |m: &Message| answers(m).contains(&format!("A {ip}"));

    // An endpoint added.
    c.slice(
        "web-1",
        "web",
        json!([{"name": "http", "port": 8080}]),
        json!([
            {"addresses": ["10.42.0.5"], "hostname": "web-0"},
            {"addresses": ["10.42.0.6"], "hostname": "web-1"},
            {"addresses": ["10.42.0.9"], "hostname": "web-3"},
        ]),
    )
    .await?;
    let added = within(
        second,
        at,
        &fqdn("web-3.web.default.svc"),
        RecordType::A,
        has("10.42.0.9"),
    )
    .await?;
    within(
        second,
        at,
        &fqdn("web.default.svc"),
        RecordType::A,
        has("10.42.0.9"),
    )
    .await?;

    // An endpoint removed.
    c.slice(
        "web-1",
        "web",
        json!([{"name": "http", "port": 8080}]),
        json!([
            {"addresses": ["10.42.0.5"], "hostname": "web-0"},
        ]),
    )
    .await?;
    let removed = within(
        second,
        at,
        &fqdn("web-1.web.default.svc"),
        RecordType::A,
        |m| m.metadata.response_code == ResponseCode::NXDomain,
    )
    .await?;
    within(second, at, &fqdn("web.default.svc"), RecordType::A, |m| {
        answers(m) == ["A 10.42.0.5"]
    })
    .await?;

    // A Service added, then deleted.
    c.service(
        "late",
        json!({"clusterIP": "10.43.7.30", "ports": [{"port": 80}]}),
    )
    .await?;
    let created = within(
        second,
        at,
        &fqdn("late.default.svc"),
        RecordType::A,
        has("10.43.7.30"),
    )
    .await?;
    c.services.delete("late", &DeleteParams::default()).await?;
    let deleted = within(second, at, &fqdn("late.default.svc"), RecordType::A, |m| {
        m.metadata.response_code == ResponseCode::NXDomain
    })
    .await?;
    within(
        second,
        at,
        "30.7.43.10.in-addr.arpa.",
        RecordType::PTR,
        |m| m.metadata.response_code == ResponseCode::Refused,
    )
    .await?;
    eprintln!(
        "visible after: endpoint added {added:?}, removed {removed:?}, service created {created:?}, deleted {deleted:?}"
    );
    Ok(())
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() -> Result<()> {
    let c = Cluster::start().await?;
    c.service("big", json!({"clusterIP": "None"})).await?;
    let endpoints: Vec<Value> = (0..150)
        .map(|i| json!({"addresses": [format!("10.42.{}.{}", i / 250, i % 250 + 1)]}))
        .collect();
    c.slice("big-1", "big", json!([]), Value::Array(endpoints))
        .await?;
    let (_dns, at) = c.dns(vec![]).await?;
    let name = fqdn("big.default.svc");

    // 150 A records take ~3.3 KB (hickory compresses the owner name of the first 120 records
    // only, as Unbound does): more than 512 bytes without EDNS...
    let m = exchange_udp(at, &query(&name, RecordType::A, None)?).await?;
    assert!(
        m.metadata.truncation,
        "no TC bit on a UDP answer of {} records",
        m.answers.len()
    );
    assert!(m.answers.len() < 150);
    // ...and more than a client's 1232-byte EDNS buffer, but not its 4096 one.
    let m = exchange_udp(at, &query(&name, RecordType::A, Some(1232))?).await?;
    assert!(m.metadata.truncation);
    let m = exchange_udp(at, &query(&name, RecordType::A, Some(4096))?).await?;
    assert!(
        !m.metadata.truncation,
        "truncated at 4096: {} records",
        m.answers.len()
    );
    assert_eq!(m.answers.len(), 150);
    // TCP carries it whole.
    let m = exchange_tcp(at, &query(&name, RecordType::A, None)?).await?;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 150);
    Ok(())
}

/// A query still answered promptly over UDP and TCP.
async fn still_serving(at: SocketAddr) -> Result<()> {
    let start = Instant::now();
    let m = udp(at, &fqdn("api.default.svc"), RecordType::A).await?;
    assert_eq!(answers(&m), ["A 10.43.7.20"]);
    let m = exchange_tcp(at, &query(&fqdn("api.default.svc"), RecordType::A, None)?).await?;
    assert_eq!(answers(&m), ["A 10.43.7.20"]);
    ensure!(
        start.elapsed() < Duration::from_secs(1),
        "answers took {:?}",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn hostile_packets_neither_crash_nor_stall() -> Result<()> {
    let c = web_cluster().await?;
    let (_dns, at) = c.dns(vec![]).await?;
    let sender = UdpSocket::bind("127.0.0.1:0").await?;

    // Garbage of every length up to a bit over 512 bytes, from a fixed-seed generator.
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for len in 0..600usize {
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        sender.send_to(&junk, at).await?;
    }
    // A header claiming 65535 questions with none following; a name whose compression pointer
    // points at itself; a label running past the end.
    let mut header = vec![0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
    sender.send_to(&header, at).await?;
    header[4..6].copy_from_slice(&[0, 1]);
    let mut looped = header.clone();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    sender.send_to(&looped, at).await?;
    let mut overrun = header.clone();
    overrun.extend_from_slice(&[63, b'a', b'b']);
    sender.send_to(&overrun, at).await?;

    // Thousands of well-formed questions in one message: FORMERR, with no questions echoed.
    let mut many = query(&fqdn("api.default.svc"), RecordType::A, None)?;
    for i in 0..5000 {
        many.add_query(Query::query(
            Name::from_ascii(format!("q{i}."))?,
            RecordType::A,
        ));
    }
    let m = exchange_udp(at, &many).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.queries.is_empty());
    let m = exchange_tcp(at, &many).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    // A malformed question with a readable header gets FORMERR.
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&looped, at).await?;
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf)).await??;
    let m = Message::from_vec(&buf[..n])?;
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );

    // Only EDNS version 0 and plain queries are served.
    let mut v1 = query(&fqdn("api.default.svc"), RecordType::A, Some(1232))?;
    if let Some(edns) = v1.edns.as_mut() {
        edns.set_version(1);
    }
    let m = exchange_udp(at, &v1).await?;
    // 16 is both BADVERS and BADSIG; hickory decodes it as the latter.
    assert_eq!(
        u16::from(m.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    let mut notify = query(&fqdn("api.default.svc"), RecordType::SOA, None)?;
    notify.metadata.op_code = OpCode::Notify;
    let m = exchange_udp(at, &notify).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

    // A response sent to the server is dropped, not answered (no reflection).
    let mut reflected = query(&fqdn("api.default.svc"), RecordType::A, None)?;
    reflected.metadata.message_type = MessageType::Response;
    socket.send_to(&reflected.to_vec()?, at).await?;
    let silent = tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
    assert!(silent.is_err(), "the server answered a response");

    // TCP: garbage frames, a frame shorter than its length, a connection left idle, one
    // closed mid-frame.
    let mut idle = TcpStream::connect(at).await?;
    idle.write_all(&[0x00]).await?;
    for len in [0usize, 1, 11, 12, 300, 4000] {
        let mut s = TcpStream::connect(at).await?;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        s.write_all(&(len as u16).to_be_bytes()).await?;
        s.write_all(&junk).await?;
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut sink)).await;
    }
    let mut cut = TcpStream::connect(at).await?;
    cut.write_all(&[0xff, 0xff, 1, 2, 3]).await?;
    drop(cut);

    still_serving(at).await?;
    drop(idle);
    Ok(())
}

/// A stand-in upstream on loopback: answers A for any name with 192.0.2.1 (NXDOMAIN for
/// `missing.test.`), counting queries.
async fn fake_upstream() -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut reply = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            reply.metadata.recursion_desired = q.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            reply.add_queries(q.queries.clone());
            if let Some(question) = q.queries.first() {
                if question.name().to_ascii() == "missing.test." {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                } else if question.query_type() == RecordType::A {
                    reply.add_answer(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(A::new(192, 0, 2, 1)),
                    ));
                }
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    Ok((addr, count))
}

#[tokio::test]
async fn forwards_only_to_configured_upstreams() -> Result<()> {
    let c = web_cluster().await?;
    let (upstream, asked) = fake_upstream().await?;
    let (_dns, at) = c.dns(vec![upstream]).await?;

    let m = udp(at, "www.example.test.", RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert_eq!(answers(&m), ["A 192.0.2.1"]);
    let m = udp(at, "missing.test.", RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // An ExternalName outside the cluster is followed through the upstream, as in the spec's
    // example answer.
    let m = udp(at, &fqdn("ext.default.svc"), RecordType::A).await?;
    assert_eq!(answers(&m), ["A 192.0.2.1", "CNAME outside.test."]);

    // Cluster names never go upstream.
    let before = asked.load(Ordering::SeqCst);
    udp(at, &fqdn("api.default.svc"), RecordType::A).await?;
    udp(at, &fqdn("nope.default.svc"), RecordType::A).await?;
    udp(at, "20.7.43.10.in-addr.arpa.", RecordType::PTR).await?;
    assert_eq!(asked.load(Ordering::SeqCst), before);
    // Unknown reverse names do.
    udp(at, "1.2.0.192.in-addr.arpa.", RecordType::PTR).await?;
    assert_eq!(asked.load(Ordering::SeqCst), before + 1);
    Ok(())
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail() -> Result<()> {
    let c = web_cluster().await?;
    // Bound and never read: queries to it go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").await?;
    let (_dns, at) = c.dns(vec![silent.local_addr()?]).await?;
    let start = Instant::now();
    let m = udp(at, "www.example.test.", RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(start.elapsed() < Duration::from_secs(3));
    still_serving(at).await?;
    Ok(())
}

#[tokio::test]
async fn busybox_nslookup_resolves_cluster_names() -> Result<()> {
    let busybox = std::path::Path::new("/bin/busybox");
    ensure!(
        busybox.exists(),
        "/bin/busybox is missing (the brief's machine has busybox-static)"
    );
    let c = web_cluster().await?;
    let (_dns, at) = c.dns(vec![]).await?;
    let out = tokio::process::Command::new(busybox)
        .args(["nslookup", &fqdn("api.default.svc"), &at.to_string()])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nslookup failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Address: 10.43.7.20"), "{stdout}");
    let out = tokio::process::Command::new(busybox)
        .args([
            "nslookup",
            "-type=srv",
            &fqdn("_http._tcp.web.default.svc"),
            &at.to_string(),
        ])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "8080 {}",
            fqdn("web-0.web.default.svc").trim_end_matches('.')
        )),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test]
async fn shared_informers_outlive_a_stopped_server() -> Result<()> {
    let c = web_cluster().await?;
    let informers = control::informer::Informers::default();
    let shutdown = CancellationToken::new();
    let cfg = || dns::Config {
        listen: vec!["127.0.0.1:0".parse().expect("loopback address")],
        domain: DOMAIN.to_string(),
        upstream: Vec::new(),
        ttl: 5,
    };
    let mut first =
        dns::start_with(&informers, c.server.client.clone(), cfg(), shutdown.clone()).await?;
    tokio::time::timeout(Duration::from_secs(10), first.synced()).await?;
    let m = udp(first.addrs()[0], &fqdn("api.default.svc"), RecordType::A).await?;
    assert_eq!(answers(&m), ["A 10.43.7.20"]);
    first.stop().await?;

    // A second server on the same informers starts from their caches.
    let second =
        dns::start_with(&informers, c.server.client.clone(), cfg(), shutdown.clone()).await?;
    tokio::time::timeout(Duration::from_secs(10), second.synced()).await?;
    let m = udp(
        second.addrs()[0],
        &fqdn("web-0.web.default.svc"),
        RecordType::A,
    )
    .await?;
    assert_eq!(answers(&m), ["A 10.42.0.5"]);
    shutdown.cancel();
    second.wait().await?;
    Ok(())
}
