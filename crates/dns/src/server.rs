//! The request handler hickory-server calls for every well-formed message: one question
//! answered from the index (CNAMEs followed), forwarded upstream, or refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::BinDecoder;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use rand::seq::SliceRandom as _;

use crate::forward::Forwarder;
use crate::index::{Index, Lookup};

/// The largest UDP answer sent, whatever buffer a client advertises (RFC 6891 lets a server
/// pick a smaller one); bigger answers are truncated and the client retries over TCP.
const MAX_UDP_PAYLOAD: u16 = 4096;
/// CNAME hops followed within one answer.
const MAX_CNAME_HOPS: usize = 8;

pub(crate) struct Handler {
    pub(crate) index: Arc<RwLock<Index>>,
    /// Whether every watch has listed once; until then a missing name is SERVFAIL, not
    /// NXDOMAIN (CoreDNS's rule), so a starting server never denies a name that exists.
    pub(crate) synced: Arc<AtomicBool>,
    pub(crate) forwarder: Option<Forwarder>,
}

/// A response before encoding.
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn error(code: ResponseCode) -> Answer {
        Answer {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

fn read(index: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    index
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Handler {
    /// The answer to one question.
    async fn answer(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        // Zone transfers are not offered, here or upstream.
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::error(ResponseCode::Refused);
        }
        let lookup = if qclass == DNSClass::IN {
            read(&self.index).lookup(name, qtype)
        } else if read(&self.index).zone().zone_of(name) {
            return Answer::error(ResponseCode::Refused);
        } else {
            Lookup::NotOurs
        };
        match lookup {
            Lookup::Records {
                mut answers,
                additionals,
            } => {
                let authorities = if answers.is_empty() {
                    self.negative_soa(name)
                } else {
                    Vec::new()
                };
                // Round robin, like CoreDNS's loadbalance plugin: clients that take the first
                // address spread over a headless Service's endpoints.
                if answers.len() > 1 && matches!(qtype, RecordType::A | RecordType::AAAA) {
                    answers.shuffle(&mut rand::rng());
                }
                Answer {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers,
                    authorities,
                    additionals,
                }
            }
            Lookup::Alias { cname, target } => self.follow(cname, target, qtype, qclass).await,
            Lookup::NxDomain if !self.synced.load(Ordering::Acquire) => {
                Answer::error(ResponseCode::ServFail)
            }
            Lookup::NxDomain => Answer {
                code: ResponseCode::NXDomain,
                authoritative: true,
                answers: Vec::new(),
                authorities: self.negative_soa(name),
                additionals: Vec::new(),
            },
            Lookup::NotOurs => self.forward(name, qtype, qclass).await,
        }
    }

    /// The zone's SOA for a negative answer about a name in the zone (none for reverse
    /// names, which belong to no zone of ours).
    fn negative_soa(&self, name: &Name) -> Vec<Record> {
        let index = read(&self.index);
        if index.zone().zone_of(name) {
            vec![index.soa()]
        } else {
            Vec::new()
        }
    }

    /// An ExternalName's CNAME with the target's records of `qtype`: from the index when the
    /// target is in the cluster, from upstream otherwise (none without upstreams: the client
    /// follows the CNAME itself).
    async fn follow(
        &self,
        cname: Box<Record>,
        mut target: Name,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Answer {
        let mut answer = Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: vec![*cname],
            authorities: Vec::new(),
            additionals: Vec::new(),
        };
        if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
            return answer;
        }
        let mut seen = vec![target.clone()];
        for _ in 0..MAX_CNAME_HOPS {
            let lookup = read(&self.index).lookup(&target, qtype);
            match lookup {
                Lookup::Records { answers, .. } => {
                    answer.answers.extend(answers);
                    return answer;
                }
                Lookup::Alias {
                    cname,
                    target: next,
                } => {
                    answer.answers.push(*cname);
                    if seen.contains(&next) {
                        return answer;
                    }
                    seen.push(next.clone());
                    target = next;
                }
                // RFC 6604: the code speaks of the last name in the chain.
                Lookup::NxDomain => {
                    answer.code = ResponseCode::NXDomain;
                    answer.authorities = self.negative_soa(&target);
                    return answer;
                }
                Lookup::NotOurs => {
                    if self.forwarder.is_some() {
                        let upstream = self.forward(&target, qtype, qclass).await;
                        if matches!(
                            upstream.code,
                            ResponseCode::NoError | ResponseCode::NXDomain
                        ) {
                            answer.code = upstream.code;
                            answer.answers.extend(upstream.answers);
                        }
                    }
                    return answer;
                }
            }
        }
        answer
    }

    /// Another server's name: the upstreams' answer, or REFUSED when there are none (what
    /// CoreDNS answers for a name no server block serves).
    async fn forward(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        let Some(forwarder) = &self.forwarder else {
            return Answer::error(ResponseCode::Refused);
        };
        match forwarder.query(name, qtype, qclass).await {
            Ok(mut reply) => Answer {
                code: reply.metadata.response_code,
                authoritative: false,
                answers: std::mem::take(&mut reply.answers),
                authorities: std::mem::take(&mut reply.authorities),
                additionals: std::mem::take(&mut reply.additionals),
            },
            Err(e) => {
                tracing::debug!("forwarding failed: {e}");
                Answer::error(ResponseCode::ServFail)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = self.forwarder.is_some();
        // Echo EDNS when asked, advertising what this server sends over UDP; that size also
        // bounds the encoded answer, which hickory truncates (TC bit) past it.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns
        });
        let Ok(no_questions) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
            unreachable!("reading zero questions reads nothing")
        };
        let (queries, answer) = if request.metadata.op_code != OpCode::Query {
            (&request.queries, Answer::error(ResponseCode::NotImp))
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 6.1.3: only EDNS version 0 is spoken.
            (&request.queries, Answer::error(ResponseCode::BADVERS))
        } else if request.queries.len() != 1 {
            // Like miekg/dns servers: one question per message, else FORMERR without echoing
            // what may be thousands of questions.
            (&no_questions, Answer::error(ResponseCode::FormErr))
        } else {
            let query = &request.queries.queries()[0];
            let original = query.original();
            let answer = self
                .answer(
                    original.name(),
                    original.query_type(),
                    original.query_class(),
                )
                .await;
            (&request.queries, answer)
        };
        metadata.response_code = answer.code;
        metadata.authoritative = answer.authoritative;
        let response = MessageResponseBuilder::new(queries, edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("sending a DNS response failed: {e}");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                hickory_proto::op::Header {
                    metadata: failed,
                    counts: Default::default(),
                }
                .into()
            }
        }
    }
}
