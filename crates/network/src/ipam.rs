//! IPv4 address management for one node's pod subnet: which addresses are taken and which one
//! to hand out next. Pure bookkeeping; persistence is the sandbox records' job (`store`).
//!
//! The network address, the gateway (the first host address, on the bridge) and the broadcast
//! address are never handed out. Allocation goes round-robin from the last address handed out,
//! like CNI's host-local IPAM, so an address just freed is not reused at once: a client still
//! talking to the old pod reaches nothing rather than the wrong pod.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid IPv4 CIDR {input:?}: {reason}")]
    InvalidCidr { input: String, reason: &'static str },
    #[error("pod subnet {subnet} is unusable: the prefix length must be between /16 and /30")]
    SubnetSize { subnet: Ipv4Cidr },
    #[error("address {ip} is not a pod address of subnet {subnet}")]
    OutOfRange { ip: Ipv4Addr, subnet: Ipv4Cidr },
    #[error("address {ip} is already allocated")]
    Taken { ip: Ipv4Addr },
    #[error("no free pod address in {subnet}: all {count} are allocated")]
    Exhausted { subnet: Ipv4Cidr, count: u32 },
}

/// An IPv4 prefix such as `10.42.0.0/24`, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self> {
        let input = || format!("{network}/{prefix_len}");
        if prefix_len > 32 {
            return Err(Error::InvalidCidr {
                input: input(),
                reason: "prefix length above 32",
            });
        }
        let cidr = Ipv4Cidr {
            network,
            prefix_len,
        };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(Error::InvalidCidr {
                input: input(),
                reason: "host bits are set",
            });
        }
        Ok(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidCidr {
            input: s.to_owned(),
            reason,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| invalid("no /prefix-length"))?;
        let addr = addr.parse().map_err(|_| invalid("not an IPv4 address"))?;
        // `u8::from_str` accepts a leading '+'; a prefix length is digits only.
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the prefix length is not a number from 0 to 32"));
        }
        let len = len
            .parse()
            .map_err(|_| invalid("the prefix length is not a number"))?;
        Ipv4Cidr::new(addr, len)
    }
}

/// The allocation state of one pod subnet.
#[derive(Debug, Clone)]
pub struct Ipam {
    subnet: Ipv4Cidr,
    taken: BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
}

impl Ipam {
    pub fn new(subnet: Ipv4Cidr) -> Result<Self> {
        if !(16..=30).contains(&subnet.prefix_len()) {
            return Err(Error::SubnetSize { subnet });
        }
        Ok(Ipam {
            subnet,
            taken: BTreeSet::new(),
            last: None,
        })
    }

    pub fn subnet(&self) -> Ipv4Cidr {
        self.subnet
    }

    /// The bridge's address: the first host address of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    fn first(&self) -> u32 {
        u32::from(self.subnet.network()) + 2
    }

    fn last_host(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }

    /// How many addresses pods can have in this subnet.
    pub fn capacity(&self) -> u32 {
        self.last_host() - self.first() + 1
    }

    pub fn allocated(&self) -> usize {
        self.taken.len()
    }

    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.taken.contains(&ip)
    }

    fn check_range(&self, ip: Ipv4Addr) -> Result<()> {
        let n = u32::from(ip);
        if !self.subnet.contains(ip) || n < self.first() || n > self.last_host() {
            return Err(Error::OutOfRange {
                ip,
                subnet: self.subnet,
            });
        }
        Ok(())
    }

    /// Marks `ip` as taken (loading existing records).
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.check_range(ip)?;
        if !self.taken.insert(ip) {
            return Err(Error::Taken { ip });
        }
        Ok(())
    }

    /// Hands out the next free address after the last one handed out, wrapping around.
    pub fn allocate(&mut self) -> Result<Ipv4Addr> {
        let (first, last_host) = (self.first(), self.last_host());
        let start = match self.last {
            Some(last) if self.check_range(last).is_ok() && u32::from(last) < last_host => {
                u32::from(last) + 1
            }
            _ => first,
        };
        let candidates = (start..=last_host).chain(first..start).map(Ipv4Addr::from);
        for ip in candidates {
            if self.taken.insert(ip) {
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(Error::Exhausted {
            subnet: self.subnet,
            count: self.capacity(),
        })
    }

    /// Frees `ip`; returns whether it was taken.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        self.taken.remove(&ip)
    }

    /// The last address handed out (the round-robin position).
    pub fn last(&self) -> Option<Ipv4Addr> {
        self.last
    }

    /// Restores the round-robin position after a restart; an address outside the pod range is
    /// ignored (the subnet changed), and allocation starts from the beginning.
    pub fn set_last(&mut self, ip: Ipv4Addr) {
        if self.check_range(ip).is_ok() {
            self.last = Some(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(cidr: &str) -> Ipam {
        Ipam::new(cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn cidr_parsing() {
        let cases: &[(&str, Option<(&str, u8)>)] = &[
            ("10.42.0.0/24", Some(("10.42.0.0", 24))),
            ("0.0.0.0/0", Some(("0.0.0.0", 0))),
            ("10.42.3.4/32", Some(("10.42.3.4", 32))),
            ("10.42.0.1/24", None),
            ("10.42.0.0/33", None),
            ("10.42.0.0/+8", None),
            ("10.42.0.0/", None),
            ("10.42.0.0", None),
            ("10.42.0/24", None),
            ("fd00::/64", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Ipv4Cidr>();
            match want {
                Some((net, len)) => {
                    let cidr = got.unwrap_or_else(|e| panic!("{input}: {e}"));
                    assert_eq!(cidr.network().to_string(), *net, "{input}");
                    assert_eq!(cidr.prefix_len(), *len, "{input}");
                    assert_eq!(cidr.to_string(), *input);
                }
                None => assert!(got.is_err(), "{input} should be refused, got {got:?}"),
            }
        }
    }

    #[test]
    fn cidr_arithmetic() {
        let c: Ipv4Cidr = "10.42.1.0/24".parse().unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 42, 1, 255));
        assert!(c.contains(Ipv4Addr::new(10, 42, 1, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 2, 1)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.broadcast(), Ipv4Addr::BROADCAST);
        assert!(all.contains(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn subnet_sizes_outside_16_to_30_are_refused() {
        for bad in ["10.0.0.0/8", "10.42.0.0/31", "10.42.0.0/32", "10.42.0.0/15"] {
            let err = Ipam::new(bad.parse().unwrap()).unwrap_err();
            assert!(matches!(err, Error::SubnetSize { .. }), "{bad}: {err}");
        }
        assert_eq!(ipam("10.42.0.0/30").capacity(), 1);
        assert_eq!(ipam("10.42.0.0/16").capacity(), 65533);
    }

    #[test]
    fn a_24_hands_out_253_distinct_addresses_then_reports_exhaustion() {
        let mut ipam = ipam("10.42.0.0/24");
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        let mut seen = BTreeSet::new();
        for _ in 0..253 {
            let ip = ipam.allocate().unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            let last = ip.octets()[3];
            assert!(
                (2..=254).contains(&last),
                "{ip} is the network, gateway or broadcast"
            );
        }
        let err = ipam.allocate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free pod address in 10.42.0.0/24: all 253 are allocated"
        );
    }

    #[test]
    fn round_robin_does_not_reuse_a_freed_address_at_once() {
        let mut ipam = ipam("10.42.0.0/29"); // pods: .2 to .6
        let a = ipam.allocate().unwrap();
        let b = ipam.allocate().unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 42, 0, 2), Ipv4Addr::new(10, 42, 0, 3))
        );
        assert!(ipam.release(b));
        assert_eq!(ipam.allocate().unwrap(), Ipv4Addr::new(10, 42, 0, 4));
        assert!(ipam.release(a));
        // .5 and .6 come before wrapping around to the freed .2 and .3.
        let next: Vec<_> = (0..4)
            .map(|_| ipam.allocate().unwrap().octets()[3])
            .collect();
        assert_eq!(next, [5, 6, 2, 3]);
        assert!(ipam.allocate().is_err());
    }

    #[test]
    fn reserve_rejects_duplicates_and_foreign_addresses() {
        let mut ipam = ipam("10.42.0.0/24");
        ipam.reserve(Ipv4Addr::new(10, 42, 0, 9)).unwrap();
        assert!(matches!(
            ipam.reserve(Ipv4Addr::new(10, 42, 0, 9)),
            Err(Error::Taken { .. })
        ));
        for ip in [
            [10, 42, 0, 0],
            [10, 42, 0, 1],
            [10, 42, 0, 255],
            [10, 42, 1, 5],
        ] {
            let err = ipam.reserve(Ipv4Addr::from(ip)).unwrap_err();
            assert!(matches!(err, Error::OutOfRange { .. }), "{ip:?}: {err}");
        }
        // A restored position continues after it, skipping what is reserved.
        ipam.set_last(Ipv4Addr::new(10, 42, 0, 8));
        assert_eq!(ipam.allocate().unwrap(), Ipv4Addr::new(10, 42, 0, 10));
        ipam.set_last(Ipv4Addr::new(10, 99, 0, 8));
        assert_eq!(ipam.last(), Some(Ipv4Addr::new(10, 42, 0, 10)));
    }
}
