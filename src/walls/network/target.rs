//! One entry of a network rule list, as written in the config: a CIDR, an address or a host
//! name, each with an optional port or port range (`10.20.0.0/16`, `169.254.169.254`,
//! `[fd00:ec2::254]:80`, `p3-api.prod.example.com:443`, `10.0.0.0/8:8000-8999`). Pure.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address prefix: `addr/len` with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
}

impl Net {
    /// The whole address `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Net { addr, len }
    }

    /// `addr/len`, or an error when `len` is too long for the family. Host bits are cleared,
    /// so `10.1.2.3/16` means `10.1.0.0/16` (what nft would do too, but said here).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, String> {
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
            _ => return Err(format!("prefix length /{len} is too long for {addr}")),
        };
        Ok(Net { addr, len })
    }

    /// Is this one address (no prefix)?
    pub fn is_host(&self) -> bool {
        self.len == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// Where an entry points: addresses, or a name resolved when a job is prepared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A CIDR or a single address.
    Net(Net),
    /// A DNS name (lower-cased), resolved in prepare and pinned for the job.
    Name(String),
}

/// An inclusive destination port range (`443` is `443-443`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ports {
    /// First port.
    pub first: u16,
    /// Last port (≥ first).
    pub last: u16,
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One config entry: a host and optionally the ports it applies to (TCP and UDP); without
/// ports it applies to every protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The addresses.
    pub host: Host,
    /// The destination ports (None: every port and protocol).
    pub ports: Option<Ports>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            Host::Net(n) if n.addr.is_ipv6() && self.ports.is_some() => format!("[{n}]"),
            Host::Net(n) => n.to_string(),
            Host::Name(name) => name.clone(),
        };
        match self.ports {
            Some(p) => write!(f, "{host}:{p}"),
            None => f.write_str(&host),
        }
    }
}

fn parse_ports(text: &str) -> Result<Ports, String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Ok(n),
        }
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(text)?, port(text)?),
    };
    if last < first {
        return Err(format!("port range {text:?} runs backwards"));
    }
    Ok(Ports { first, last })
}

fn parse_net(text: &str) -> Result<Net, String> {
    match text.split_once('/') {
        Some((addr, len)) => {
            let addr = IpAddr::from_str(addr).map_err(|_| format!("{addr:?} is not an address"))?;
            let len = len
                .parse::<u8>()
                .map_err(|_| format!("{len:?} is not a prefix length"))?;
            Net::new(addr, len)
        }
        None => IpAddr::from_str(text)
            .map(Net::host)
            .map_err(|_| format!("{text:?} is not an address")),
    }
}

/// A DNS name as RFC 1123 allows it (letters, digits, hyphens; dots between labels).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let fail = |why: String| {
            format!(
                "{text:?}: {why} (expected a CIDR, an address or a host name, optionally with :port or :first-last; IPv6 with a port in brackets: [fd00::1]:443)"
            )
        };
        // IPv6 with a port must be bracketed; without one, a bare IPv6 (two or more colons).
        let (host, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| fail("no closing bracket".into()))?;
            let ports = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| fail("expected :port after ]".into()))?,
                ),
            };
            (inside, ports)
        } else if text.matches(':').count() >= 2 {
            (text, None)
        } else {
            match text.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            }
        };
        let ports = ports.map(parse_ports).transpose().map_err(fail)?;
        let looks_numeric = host.contains('/')
            || host.contains(':')
            || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !host.is_empty();
        let host = if looks_numeric {
            Host::Net(parse_net(host).map_err(fail)?)
        } else if valid_name(host) {
            Host::Name(host.trim_end_matches('.').to_ascii_lowercase())
        } else {
            return Err(fail(format!("{host:?} is not a host name")));
        };
        Ok(Target { host, ports })
    }
}

impl Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_net(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, len: u8) -> Host {
        Host::Net(Net::new(s.parse().unwrap(), len).unwrap())
    }

    #[test]
    fn entries_parse_as_the_readme_writes_them() {
        let p = |first, last| Some(Ports { first, last });
        let table: &[(&str, Host, Option<Ports>)] = &[
            ("169.254.169.254", net("169.254.169.254", 32), None),
            ("10.20.0.0/16", net("10.20.0.0", 16), None),
            ("10.20.1.7/16", net("10.20.0.0", 16), None),
            ("10.0.0.0/8:443", net("10.0.0.0", 8), p(443, 443)),
            ("10.0.0.1:8000-8999", net("10.0.0.1", 32), p(8000, 8999)),
            ("fd00:ec2::254", net("fd00:ec2::254", 128), None),
            ("fd00::/8", net("fd00::", 8), None),
            ("[fd00:ec2::254]:80", net("fd00:ec2::254", 128), p(80, 80)),
            ("[fd00::/8]:1-1024", net("fd00::", 8), p(1, 1024)),
            ("0.0.0.0/0", net("0.0.0.0", 0), None),
            (
                "P3-API.prod.example.com:443",
                Host::Name("p3-api.prod.example.com".into()),
                p(443, 443),
            ),
            ("gitlab.", Host::Name("gitlab".into()), None),
        ];
        for (text, host, ports) in table {
            let t: Target = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((&t.host, &t.ports), (host, ports), "{text}");
        }
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let table = [
            ("10.0.0.0/33", "too long"),
            ("10.0.0.1:0", "not a port"),
            ("10.0.0.1:70000", "not a port"),
            ("10.0.0.1:90-80", "backwards"),
            ("[fd00::1", "closing bracket"),
            ("[fd00::1]443", "expected :port"),
            ("bad_name.example.com", "not a host name"),
            ("", "not a host name"),
            ("10.0.0.256", "not an address"),
            ("host:", "not a port"),
            ("-x.example.com", "not a host name"),
        ];
        for (text, want) in table {
            let err = text.parse::<Target>().unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "169.254.169.254",
            "10.0.0.0/8:443",
            "[fd00:ec2::254]:80",
            "fd00::/8",
            "p3-api.example.com:8000-8999",
        ] {
            let t: Target = text.parse().unwrap();
            assert_eq!(t.to_string(), text);
            assert_eq!(t.to_string().parse::<Target>().unwrap(), t);
        }
    }
}
