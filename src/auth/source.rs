//! A source allow-list: only clients whose address is in one of the
//! `--allow-cidr` ranges may send webhooks.
//!
//! Behind a load balancer every connection comes from the balancer, so the
//! client's address is taken from `X-Forwarded-For`, but only when the
//! connection itself comes from a `--trusted-proxy` range: anyone else can
//! write that header. The list is read right to left, skipping trusted
//! proxies; the first address that is not one is the client. An entry that
//! is not an address refuses the request: guessing would let a forged
//! header choose the answer.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;

/// An address range such as `10.0.0.0/8` or `2001:db8::/32`; a bare
/// address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCidr {
    #[error(
        "{0:?} is not an IP address or a CIDR range (examples: 203.0.113.0/24, 2001:db8::/32, 198.51.100.7)"
    )]
    Syntax(String),
    #[error("{input:?}: the prefix length is more than {max}")]
    PrefixTooLong { input: String, max: u8 },
    #[error("{input:?} has bits set after the prefix; did you mean {suggested}?")]
    HostBits { input: String, suggested: String },
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || InvalidCidr::Syntax(input.to_owned());
        let (address, prefix) = match input.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (input.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| syntax())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        if prefix > max {
            return Err(InvalidCidr::PrefixTooLong {
                input: input.to_owned(),
                max,
            });
        }
        let network = mask(address, prefix);
        if network != address {
            return Err(InvalidCidr::HostBits {
                input: input.to_owned(),
                suggested: format!("{network}/{prefix}"),
            });
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, address: IpAddr) -> bool {
        // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
        let address = address.to_canonical();
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.prefix) == self.network
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((bits & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((bits & mask).to_be_bytes())
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceFilter {
    allow: Vec<Cidr>,
    trusted_proxies: Vec<Cidr>,
}

impl SourceFilter {
    pub fn new(allow: Vec<Cidr>, trusted_proxies: Vec<Cidr>) -> Self {
        Self {
            allow,
            trusted_proxies,
        }
    }

    pub fn allows(&self, peer: IpAddr, headers: &HeaderMap) -> bool {
        self.client(peer, headers)
            .is_some_and(|client| self.allow.iter().any(|range| range.contains(client)))
    }

    /// The client's address, or `None` when a trusted proxy forwarded an
    /// entry that is not an address.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        // Several X-Forwarded-For headers are one list, in order (RFC 9110
        // section 5.3); walk it from the end, the hop nearest to us.
        let values: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let mut client = peer;
        for entry in values
            .iter()
            .rev()
            .flat_map(|value| value.rsplit(|&b| b == b','))
        {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            client = forwarded_address(entry)?;
            if !self.is_trusted(client) {
                return Some(client);
            }
        }
        // Every hop was a trusted proxy: the leftmost is the best we know.
        Some(client)
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|range| range.contains(address))
    }
}

/// One X-Forwarded-For entry: an address, possibly with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:4711`), as some proxies write it.
fn forwarded_address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (address, _port) = rest.split_once(']')?;
        return address.parse::<IpAddr>().ok().map(|a| a.to_canonical());
    }
    let (address, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}
