//! prepare's fast path: a job's map elements added to a table that already holds its policy's
//! chain, as one nf_tables batch over netlink, without libnftables.
//!
//! Why this one transaction is sent by hand: everything else goes through nftables' own JSON
//! ([`super::nft`]), but a job whose policy chain exists needs only two elements (its uid, and
//! the job uid ranges of its executor), and libnftables spent ~4 ms of every prepare on them:
//! loading the library, its context, a cache of the whole table, the JSON, before the kernel's
//! ~0.1 ms. The messages are the ones `nft` sends for `add element` (captured with strace and
//! checked against a real kernel by `tests/it/network.rs`): interval elements as a start and an
//! end (`last + 1`, flagged `NFT_SET_ELEM_INTERVAL_END`), keys of type `uid` in network byte
//! order (nft stores interval keys big-endian and converts the looked-up uid), the verdict a
//! jump to a named chain.
//!
//! Anything the kernel refuses (no table, no such chain, an element that overlaps one already
//! there) fails the whole batch, nothing changes, and the caller takes the slow path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWSETELEM`.
const MSG_NEWSETELEM: u16 = 12;
/// `NFNL_MSG_BATCH_BEGIN` and `_END` (`NLMSG_MIN_TYPE` and the next).
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
/// `NLMSG_ERROR`: an ack (error 0) or an error.
const NLMSG_ERROR: u16 = 2;
/// `NFPROTO_INET`.
const FAMILY_INET: u8 = 1;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 1 << 15;

// nf_tables attributes.
const SET_ELEM_LIST_TABLE: u16 = 1;
const SET_ELEM_LIST_SET: u16 = 2;
const SET_ELEM_LIST_ELEMENTS: u16 = 3;
const SET_ELEM_KEY: u16 = 1;
const SET_ELEM_DATA: u16 = 2;
const SET_ELEM_FLAGS: u16 = 3;
const SET_ELEM_KEY_END: u16 = 10;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
/// `NFT_JUMP`.
const JUMP: i32 = -3;
/// `NFT_SET_ELEM_INTERVAL_END`.
const INTERVAL_END: u32 = 1;

/// How long to wait for the kernel's answer (it answers within the send; a bound all the same).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Elements to add to one set or map of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Elements<'a> {
    /// The set's or map's name.
    pub set: &'a str,
    /// `[first, last]` uid intervals.
    pub ranges: Vec<[u32; 2]>,
    /// What each interval carries.
    pub data: Data<'a>,
}

/// What an element carries besides its uid interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Data<'a> {
    /// Nothing: a set of uids.
    None,
    /// A verdict map's: jump to this chain.
    Jump(&'a str),
    /// A mark map's: this mark.
    Mark(u32),
    /// A `uid . mark` set's second component (a concatenation: the kernel's pipapo set, whose
    /// element holds its first and last key).
    Pair(u32),
}

/// Add `adds` to the inet table `table` in one batch: all or nothing.
pub(crate) fn add(table: &str, adds: &[Elements<'_>]) -> io::Result<()> {
    let batch = encode(table, adds)?;
    let sock = socket()?;
    send(&sock, &batch)?;
    // Every message but the batch's begin and end asked for an ack: seq 1..=adds.len().
    answers(&sock, adds.len())
}

/// The batch: begin, one NEWSETELEM per set (acked), end. Pure.
pub(crate) fn encode(table: &str, adds: &[Elements<'_>]) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let res_id = SUBSYS_NFTABLES.to_be_bytes();
    message(&mut buf, BATCH_BEGIN, NLM_F_REQUEST, 0, 0, res_id, |_| {
        Ok(())
    })?;
    for (i, add) in adds.iter().enumerate() {
        let seq = u32::try_from(i + 1).map_err(|_| invalid("too many sets"))?;
        let kind = (SUBSYS_NFTABLES << 8) | MSG_NEWSETELEM;
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
        message(&mut buf, kind, flags, seq, FAMILY_INET, [0, 0], |b| {
            attr(b, SET_ELEM_LIST_TABLE, &c_string(table)?);
            attr(b, SET_ELEM_LIST_SET, &c_string(add.set)?);
            nested(b, SET_ELEM_LIST_ELEMENTS, |b| {
                // nft numbers the list's elements (the kernel reads them in order either way).
                let mut index = 0u16;
                let mut next = || {
                    index += 1;
                    index
                };
                for &[first, last] in &add.ranges {
                    if first > last {
                        return Err(invalid("an interval ends before it starts"));
                    }
                    // An end past u32::MAX cannot be written; no job uid is that high.
                    let end = last
                        .checked_add(1)
                        .ok_or_else(|| invalid("uid 4294967295"))?;
                    if let Data::Pair(mark) = add.data {
                        // One element, its last key inclusive.
                        nested(b, next(), |b| {
                            pair(b, SET_ELEM_KEY, first, mark);
                            pair(b, SET_ELEM_KEY_END, last, mark);
                            Ok(())
                        })?;
                        continue;
                    }
                    nested(b, next(), |b| {
                        key(b, first);
                        match add.data {
                            Data::Jump(chain) => nested(b, SET_ELEM_DATA, |b| {
                                nested(b, DATA_VERDICT, |b| {
                                    attr(b, VERDICT_CODE, &JUMP.to_be_bytes());
                                    attr(b, VERDICT_CHAIN, &c_string(chain)?);
                                    Ok(())
                                })
                            })?,
                            // A mark is data, in the host's byte order (keys are big-endian).
                            Data::Mark(mark) => nested(b, SET_ELEM_DATA, |b| {
                                attr(b, DATA_VALUE, &mark.to_ne_bytes());
                                Ok(())
                            })?,
                            Data::None | Data::Pair(_) => {}
                        }
                        Ok(())
                    })?;
                    nested(b, next(), |b| {
                        attr(b, SET_ELEM_FLAGS, &INTERVAL_END.to_be_bytes());
                        key(b, end);
                        Ok(())
                    })?;
                }
                Ok(())
            })
        })?;
    }
    let end_seq = u32::try_from(adds.len() + 1).map_err(|_| invalid("too many sets"))?;
    message(
        &mut buf,
        BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        0,
        res_id,
        |_| Ok(()),
    )?;
    Ok(buf)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn c_string(s: &str) -> io::Result<Vec<u8>> {
    if s.contains('\0') {
        return Err(invalid("a name holds a NUL byte"));
    }
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

/// A `uid . mark` key (each a 4-byte register, big-endian as in an interval set).
fn pair(b: &mut Vec<u8>, kind: u16, uid: u32, mark: u32) {
    // Infallible: the closure never fails.
    let _ = nested(b, kind, |b| {
        let mut value = uid.to_be_bytes().to_vec();
        value.extend_from_slice(&mark.to_be_bytes());
        attr(b, DATA_VALUE, &value);
        Ok(())
    });
}

fn key(b: &mut Vec<u8>, uid: u32) {
    // Infallible: the closure never fails.
    let _ = nested(b, SET_ELEM_KEY, |b| {
        attr(b, DATA_VALUE, &uid.to_be_bytes());
        Ok(())
    });
}

fn pad(b: &mut Vec<u8>) {
    while b.len() % 4 != 0 {
        b.push(0);
    }
}

fn attr(b: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).expect("attributes here are small");
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(payload);
    pad(b);
}

fn nested(
    b: &mut Vec<u8>,
    kind: u16,
    body: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let start = b.len();
    b.extend_from_slice(&[0; 4]);
    body(b)?;
    let len = u16::try_from(b.len() - start).map_err(|_| invalid("too many elements"))?;
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    b[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    Ok(())
}

/// One netlink message with its nfgenmsg header (family, version 0, res_id as given).
fn message(
    b: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: [u8; 2],
    body: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let start = b.len();
    b.extend_from_slice(&[0; 4]); // length, below
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    b.extend_from_slice(&[family, 0, res_id[0], res_id[1]]);
    body(b)?;
    let len = u32::try_from(b.len() - start).map_err(|_| invalid("message too long"))?;
    b[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    Ok(())
}

/// A netfilter netlink socket (also how [`super::libnftables`] learns beforehand whether the
/// library's own would open).
pub(super) fn netfilter_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A netfilter netlink socket whose reads give up after [`ANSWER_TIMEOUT`].
fn socket() -> io::Result<OwnedFd> {
    let sock = netfilter_socket()?;
    let tv = libc::timeval {
        tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn send(sock: &OwnedFd, batch: &[u8]) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_nl is valid; the kernel is port 0.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `batch` and `to` outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            batch.as_ptr().cast(),
            batch.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if usize::try_from(sent).ok() != Some(batch.len()) {
        return Err(io::Error::other("netlink took part of the batch"));
    }
    Ok(())
}

/// Read the kernel's answers until `acks` acks came, or the first error.
fn answers(sock: &OwnedFd, acks: usize) -> io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut acked = 0;
    while acked < acks {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0);
        for answer in parse_answers(&buf[..n])? {
            match answer {
                0 => acked += 1,
                errno => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }
    Ok(())
}

/// The errno of each NLMSG_ERROR in `data` (0: an ack). Pure.
fn parse_answers(mut data: &[u8]) -> io::Result<Vec<i32>> {
    let bad = || io::Error::other("malformed netlink answer");
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
        if len < 16 || len > data.len() {
            return Err(bad());
        }
        if kind == NLMSG_ERROR {
            let code = data.get(16..20).ok_or_else(bad)?;
            out.push(-i32::from_ne_bytes(code.try_into().expect("4 bytes")));
        }
        data = &data[(len + 3) & !3..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nft 1.0.6 sent for `add element inet p3exp job_uids { 200005 : jump uid_200001,
    /// 300000-365535 : jump uid_200001 }` (strace), without the set id nft adds for sets made
    /// in the same batch and with the ack we ask for.
    #[test]
    fn a_map_element_is_encoded_as_nft_sends_it() {
        let batch = encode(
            "p3exp",
            &[Elements {
                set: "job_uids",
                ranges: vec![[200_005, 200_005], [300_000, 365_535]],
                data: Data::Jump("uid_200001"),
            }],
        )
        .unwrap();
        let mut elements: Vec<u8> = Vec::new();
        let jump = b"\x20\x00\x02\x80\x1c\x00\x02\x80\x08\x00\x01\x00\xff\xff\xff\xfd\x0f\x00\x02\x00uid_200001\x00\x00";
        for (n, start, end) in [(1u8, 200_005u32, 200_006u32), (3, 300_000, 365_536)] {
            elements.extend_from_slice(&[0x30, 0, n, 0x80]);
            elements.extend_from_slice(b"\x0c\x00\x01\x80\x08\x00\x01\x00");
            elements.extend_from_slice(&start.to_be_bytes());
            elements.extend_from_slice(jump);
            elements.extend_from_slice(&[0x18, 0, n + 1, 0x80]);
            elements.extend_from_slice(
                b"\x08\x00\x03\x00\x00\x00\x00\x01\x0c\x00\x01\x80\x08\x00\x01\x00",
            );
            elements.extend_from_slice(&end.to_be_bytes());
        }
        // begin (20 bytes), the message's headers and its table and set names, the elements.
        assert_eq!(&batch[..4], &20u32.to_ne_bytes());
        assert_eq!(&batch[4..6], &BATCH_BEGIN.to_ne_bytes());
        assert_eq!(&batch[16..20], &[0, 0, 0, 10]);
        let msg = &batch[20..];
        let len = u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize;
        assert_eq!(&msg[4..6], &0x0a0cu16.to_ne_bytes());
        assert_eq!(&msg[6..8], &(0x1 | 0x4 | 0x400u16).to_ne_bytes());
        assert_eq!(msg[16], FAMILY_INET);
        let mut attrs =
            b"\x0a\x00\x01\x00p3exp\x00\x00\x00\x0d\x00\x02\x00job_uids\x00\x00\x00\x00".to_vec();
        attrs.extend_from_slice(&u16::try_from(4 + elements.len()).unwrap().to_ne_bytes());
        attrs.extend_from_slice(&(3 | NLA_F_NESTED).to_ne_bytes());
        attrs.extend_from_slice(&elements);
        assert_eq!(&msg[20..len], &attrs[..]);
        let end = &msg[len..];
        assert_eq!(end.len(), 20);
        assert_eq!(&end[4..6], &BATCH_END.to_ne_bytes());
        assert_eq!(&end[8..12], &2u32.to_ne_bytes());
    }

    /// What nft 1.0.6 sent (`nft --debug=mnl`) for `add element inet p3probe job_tags { 190 :
    /// 190 }` (a key, big-endian, with its mark as data in the host's order, then the end)
    /// and `add element inet p3probe job_peers { 180 . 180, 5000-5999 . 180 }` (one element
    /// each: the first key, and the last, inclusive, under attribute 10).
    #[test]
    fn tag_and_peer_elements_are_encoded_as_nft_sends_them() {
        let elements_of = |add: Elements<'_>| {
            let batch = encode("t", &[add]).unwrap();
            let msg = &batch[20..];
            let len = u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize;
            // After the headers (20), the table (8) and the set's name (12 for "job_tags" or
            // "job_peers", padded), the list's own header (4).
            msg[20 + 8 + 16 + 4..len].to_vec()
        };
        let tags = elements_of(Elements {
            set: "job_tags",
            ranges: vec![[190, 190]],
            data: Data::Mark(190),
        });
        let mut want = vec![0x1c, 0, 1, 0x80];
        want.extend_from_slice(b"\x0c\x00\x01\x80\x08\x00\x01\x00\x00\x00\x00\xbe");
        want.extend_from_slice(b"\x0c\x00\x02\x80\x08\x00\x01\x00");
        want.extend_from_slice(&190u32.to_ne_bytes());
        want.extend_from_slice(&[0x18, 0, 2, 0x80]);
        want.extend_from_slice(
            b"\x08\x00\x03\x00\x00\x00\x00\x01\x0c\x00\x01\x80\x08\x00\x01\x00\x00\x00\x00\xbf",
        );
        assert_eq!(tags, want);
        let peers = elements_of(Elements {
            set: "job_peers",
            ranges: vec![[180, 180], [5000, 5999]],
            data: Data::Pair(180),
        });
        let mut want = Vec::new();
        for (n, first, last) in [(1u8, 180u32, 180u32), (2, 5000, 5999)] {
            want.extend_from_slice(&[0x24, 0, n, 0x80]);
            for (kind, uid) in [(1u8, first), (10, last)] {
                want.extend_from_slice(&[0x10, 0, kind, 0x80, 0x0c, 0, 1, 0]);
                want.extend_from_slice(&uid.to_be_bytes());
                want.extend_from_slice(&180u32.to_be_bytes());
            }
        }
        assert_eq!(peers, want);
    }

    #[test]
    fn a_set_element_has_no_data_and_bad_intervals_are_refused() {
        let batch = encode(
            "t",
            &[Elements {
                set: "job_ranges",
                ranges: vec![[7, 7]],
                data: Data::None,
            }],
        )
        .unwrap();
        // begin 20 + header 20 + table 8 + set 16 + list 4 + (start 16) + (end 24) + end 20.
        assert_eq!(batch.len(), 20 + 20 + 8 + 16 + 4 + 16 + 24 + 20);
        for ranges in [vec![[5, 4]], vec![[1, u32::MAX]]] {
            let adds = [Elements {
                set: "s",
                ranges,
                data: Data::None,
            }];
            assert!(encode("t", &adds).is_err());
        }
        let named = |set| {
            [Elements {
                set,
                ranges: vec![[1, 1]],
                data: Data::Jump("c\0"),
            }]
        };
        assert!(encode("t\0", &named("s")).is_err());
        assert!(encode("t", &named("s\0")).is_err());
        assert!(
            encode("t", &named("s")).is_err(),
            "a NUL in the chain's name"
        );
    }

    #[test]
    fn answers_are_acks_or_errnos() {
        let mut data = Vec::new();
        for errno in [0i32, -libc::ENOENT] {
            data.extend_from_slice(&36u32.to_ne_bytes());
            data.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            data.extend_from_slice(&[0; 10]);
            data.extend_from_slice(&errno.to_ne_bytes());
            data.extend_from_slice(&[0; 16]);
        }
        assert_eq!(parse_answers(&data).unwrap(), [0, libc::ENOENT]);
        assert!(parse_answers(&[0xff; 16]).is_err());
    }
}
