//! The ticket cache parser: principal and lifetimes of the TGT in an MIT FILE ccache (versions 3
//! and 4, big-endian), read rather than taken from `klist`, whose dates are locale-formatted
//! with two-digit years. A job can write its own cache, so every byte is untrusted: the parser
//! is pure, bounded, and returns an error for anything it does not understand.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::fcntl::OFlag;

use super::error::KerberosError;

/// A ticket-granting ticket as it sits in a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Client principal (`svc_client_uat@EXAMPLE.COM`).
    pub principal: String,
    /// End of the ticket's life.
    pub expires: DateTime<Utc>,
    /// End of its renewable life, when the ticket is renewable.
    pub renew_until: Option<DateTime<Utc>>,
}

impl Ticket {
    /// Life left at `now` (zero when expired).
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        (self.expires - now).to_std().unwrap_or(Duration::ZERO)
    }
}

/// Largest cache we are willing to parse: real ones are a few KiB, and a job can write its own
/// cache, so the executor must not read an arbitrarily large file as root.
const MAX_CCACHE: u64 = 1 << 20;
/// `TKT_FLG_RENEWABLE` in the ccache's ticket_flags.
const TKT_FLG_RENEWABLE: u32 = 0x0080_0000;

/// Read the TGT's principal and lifetimes from a FILE ccache.
pub fn read_ticket(ccache: &Path) -> Result<Ticket, KerberosError> {
    let bad = |message: String| KerberosError::Cache {
        path: ccache.to_path_buf(),
        message,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(ccache)
        .map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_CCACHE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CCACHE {
        return Err(bad("larger than 1 MiB: not a ticket cache".into()));
    }
    parse_ccache(&bytes).map_err(bad)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn data(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn principal(&mut self) -> Result<(String, String), String> {
        let _name_type = self.u32()?;
        let count = self.u32()?;
        if count > 64 {
            return Err(format!("implausible principal with {count} components"));
        }
        let realm = String::from_utf8_lossy(self.data()?).into_owned();
        let mut parts = Vec::new();
        for _ in 0..count {
            parts.push(String::from_utf8_lossy(self.data()?).into_owned());
        }
        Ok((parts.join("/"), realm))
    }
}

fn parse_ccache(bytes: &[u8]) -> Result<Ticket, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.u16()?;
    match version {
        0x0504 => {
            let header_len = r.u16()? as usize;
            r.take(header_len)?;
        }
        0x0503 => {}
        v => return Err(format!("unsupported ccache format 0x{v:04x}")),
    }
    let (name, realm) = r.principal()?;
    let client = format!("{name}@{realm}");
    let tgt = format!("krbtgt/{realm}@{realm}");
    let mut first: Option<Ticket> = None;
    while r.pos < bytes.len() {
        let _client = r.principal()?;
        let (sname, srealm) = r.principal()?;
        let _keytype = r.u16()?;
        if version == 0x0503 {
            let _etype = r.u16()?;
        }
        r.data()?; // session key: skipped, never kept
        let _authtime = r.u32()?;
        let _starttime = r.u32()?;
        let endtime = r.u32()?;
        let renew_till = r.u32()?;
        let _is_skey = r.u8()?;
        let flags = r.u32()?;
        let naddr = r.u32()?;
        for _ in 0..naddr {
            r.u16()?;
            r.data()?;
        }
        let nauth = r.u32()?;
        for _ in 0..nauth {
            r.u16()?;
            r.data()?;
        }
        r.data()?; // ticket
        r.data()?; // second ticket
        // Config entries (realm X-CACHECONF:) carry cache metadata, not tickets.
        if srealm == "X-CACHECONF:" {
            continue;
        }
        let to_time = |t: u32| DateTime::<Utc>::from_timestamp(i64::from(t), 0);
        let ticket = Ticket {
            principal: client.clone(),
            expires: to_time(endtime).ok_or("invalid end time")?,
            renew_until: (flags & TKT_FLG_RENEWABLE != 0 && renew_till != 0)
                .then(|| to_time(renew_till))
                .flatten(),
        };
        if format!("{sname}@{srealm}") == tgt {
            return Ok(ticket);
        }
        first.get_or_insert(ticket);
    }
    first.ok_or_else(|| "holds no ticket".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put_data(out: &mut Vec<u8>, d: &[u8]) {
        out.extend((d.len() as u32).to_be_bytes());
        out.extend(d);
    }

    fn put_principal(out: &mut Vec<u8>, realm: &str, parts: &[&str]) {
        out.extend(1u32.to_be_bytes());
        out.extend((parts.len() as u32).to_be_bytes());
        put_data(out, realm.as_bytes());
        for p in parts {
            put_data(out, p.as_bytes());
        }
    }

    /// A ticket's (end time, renew-till, flags) as a cache stores them.
    type Times = (u32, u32, u32);

    /// One v4 credential of `client` (realm, components) for the service `sparts@srealm`.
    fn put_cred(
        out: &mut Vec<u8>,
        client: (&str, &[&str]),
        srealm: &str,
        sparts: &[&str],
        (end, renew, flags): Times,
    ) {
        put_principal(out, client.0, client.1);
        put_principal(out, srealm, sparts);
        out.extend(18u16.to_be_bytes());
        put_data(out, &[7; 32]);
        for t in [100u32, 100, end, renew] {
            out.extend(t.to_be_bytes());
        }
        out.push(0);
        out.extend(flags.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        put_data(out, b"ticket");
        put_data(out, b"");
    }

    /// A v4 cache for `parts@realm`: `header` as the header's tags, `config` config entries,
    /// service tickets with `services` times, then the TGT with `tgt` times.
    fn cache(
        realm: &str,
        parts: &[&str],
        header: &[u8],
        config: usize,
        services: &[Times],
        tgt: Times,
    ) -> Vec<u8> {
        let mut c = vec![0x05, 0x04];
        c.extend((header.len() as u16).to_be_bytes());
        c.extend(header);
        put_principal(&mut c, realm, parts);
        for _ in 0..config {
            put_cred(
                &mut c,
                (realm, parts),
                "X-CACHECONF:",
                &["krb5_ccache_conf_data", "pa_type"],
                (0, 0, 0),
            );
        }
        for (i, times) in services.iter().enumerate() {
            let name = format!("other{i}");
            put_cred(&mut c, (realm, parts), realm, &["host", &name], *times);
        }
        put_cred(&mut c, (realm, parts), realm, &["krbtgt", realm], tgt);
        c
    }

    fn v4_cache() -> Vec<u8> {
        cache(
            "R.TEST",
            &["svc"],
            &[0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0],
            1,
            &[],
            (2_000_000_000, 2_000_086_400, TKT_FLG_RENEWABLE),
        )
    }

    #[test]
    fn ccache_tgt_is_found_past_config_entries() {
        let t = parse_ccache(&v4_cache()).unwrap();
        assert_eq!(t.principal, "svc@R.TEST");
        assert_eq!(t.expires.timestamp(), 2_000_000_000);
        assert_eq!(t.renew_until.unwrap().timestamp(), 2_000_086_400);
    }

    #[test]
    fn truncated_or_foreign_caches_are_errors_not_panics() {
        let c = v4_cache();
        for cut in [0, 1, 5, 20, c.len() - 1] {
            assert!(parse_ccache(&c[..cut]).is_err(), "cut at {cut}");
        }
        assert!(
            parse_ccache(b"\x05\x01rest")
                .unwrap_err()
                .contains("unsupported")
        );
        // A length field pointing far past the end must not allocate or panic.
        let mut huge = vec![0x05, 0x03];
        huge.extend([0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(parse_ccache(&huge).is_err());
    }

    /// A realm: any printable text but the config entries' pseudo-realm.
    fn realm() -> impl Strategy<Value = String> {
        "\\PC{0,24}".prop_filter("the config pseudo-realm", |r| r != "X-CACHECONF:")
    }

    /// The components of a client principal (`a/b/c`).
    fn components() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("\\PC{0,16}", 0..5)
    }

    /// A ticket's times and flags, with the edge cases (no renew-till, only the renewable
    /// flag, no flags) as likely as any other value.
    fn times() -> impl Strategy<Value = Times> {
        (
            any::<u32>(),
            prop_oneof![Just(0u32), any::<u32>()],
            prop_oneof![Just(0u32), Just(TKT_FLG_RENEWABLE), any::<u32>()],
        )
    }

    /// Bytes that start like a cache (a supported version) half the time.
    fn cache_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        let body = prop::collection::vec(any::<u8>(), 0..512);
        prop_oneof![
            body.clone(),
            (prop_oneof![Just([5u8, 4]), Just([5u8, 3])], body).prop_map(|(v, b)| {
                let mut c = v.to_vec();
                c.extend(b);
                c
            }),
        ]
    }

    proptest! {
        /// The parser reads bytes a job can write: whatever they are, it answers, never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in cache_like_bytes()) {
            let _ = parse_ccache(&bytes);
        }

        /// A valid cache with some bytes overwritten: an answer, never a panic.
        #[test]
        fn corrupted_caches_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut c = v4_cache();
            for (at, byte) in edits {
                let i = at.index(c.len());
                c[i] = byte;
            }
            let _ = parse_ccache(&c);
        }

        /// The TGT's client principal and times come back as written, past the header, config
        /// entries and other services' tickets.
        #[test]
        fn well_formed_v4_cache_round_trips(
            realm in realm(),
            parts in components(),
            header in prop::collection::vec(any::<u8>(), 0..32),
            config in 0usize..3,
            services in prop::collection::vec(times(), 0..3),
            (end, renew, flags) in times(),
        ) {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            let bytes = cache(&realm, &parts, &header, config, &services, (end, renew, flags));
            let at = |t: u32| DateTime::<Utc>::from_timestamp(i64::from(t), 0).unwrap();
            let want = Ticket {
                principal: format!("{}@{realm}", parts.join("/")),
                expires: at(end),
                renew_until: (flags & TKT_FLG_RENEWABLE != 0 && renew != 0).then(|| at(renew)),
            };
            prop_assert_eq!(parse_ccache(&bytes), Ok(want));
        }

        /// A cache cut short anywhere (a kinit interrupted mid-write, a job's partial copy) is
        /// an error, never a panic and never a ticket.
        #[test]
        fn truncated_valid_cache_is_an_error_at_every_length(
            realm in realm(),
            parts in components(),
            header in prop::collection::vec(any::<u8>(), 0..32),
            config in 0usize..3,
            tgt in times(),
        ) {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            let bytes = cache(&realm, &parts, &header, config, &[], tgt);
            prop_assert!(parse_ccache(&bytes).is_ok());
            for cut in 0..bytes.len() {
                prop_assert!(parse_ccache(&bytes[..cut]).is_err(), "cut at {}", cut);
            }
        }
    }
}
