//! What a download is checked against: the object's metadata as HeadObject reports it
//! ([`ObjectInfo`], [`head`]), the cheapest check it allows ([`Check`], narrowed by
//! `--checksum`), and the verdict on the hashes of the bytes received ([`verdict`]).

use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use md5::{Digest, Md5};

use super::ctx::{Ctx, unquote_etag};
use super::error::S3Error;
use super::local::{CRC32_METADATA, parse_crc32_hex};
use super::plan::{parse_etag, part_size_candidates};
use super::range_hash::Hashed;
use super::uri::S3Uri;

/// Which checks a download may use (`--checksum`, alias `--verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Verify {
    /// The cheapest check the object allows: a full-object CRC (the server's or the one our
    /// upload recorded), else a composite CRC of the parts, else the ETag's MD5 (per part or
    /// whole), else the length.
    #[default]
    Auto,
    /// The ETag's MD5 (per part or whole) even when a CRC is known; else the length.
    Md5,
    /// A CRC only (full-object or composite); objects without one by length only (no MD5).
    Crc,
    /// The length only.
    Size,
}

/// What is known about an object before downloading it.
#[derive(Debug, Clone, Default)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// LastModified, seconds since the epoch.
    pub mtime: Option<i64>,
    /// The sub-second part of LastModified (nanoseconds), when the server gives one.
    pub mtime_ns: u32,
    /// Full-object CRC32: `x-amz-checksum-crc32` without a part count, when the server keeps
    /// one (HeadObject with checksum mode), else the one p3-executor's upload recorded in the
    /// object's metadata ([`CRC32_METADATA`]). Listings carry neither.
    pub crc32: Option<u32>,
    /// Another full-object CRC the server keeps (`x-amz-checksum-crc64nvme`, the default of
    /// AWS SDKs and CLI v2 since 2025, or `x-amz-checksum-crc32c`), when there is no CRC32.
    pub other_crc: Option<(CrcKind, u64)>,
    /// A composite CRC of a multipart object: the CRC of its parts' CRCs (what the AWS CLI
    /// and SDKs record for multipart uploads with CRC32 or CRC32C checksums).
    pub composite: Option<Composite>,
}

/// A multipart object's composite checksum (S3's `COMPOSITE` type): the CRC of the
/// concatenated big-endian CRCs of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Composite {
    /// The CRC used, for the parts and over their CRCs.
    pub kind: CrcKind,
    /// The CRC of the part CRCs.
    pub crc: u64,
    /// Number of parts.
    pub parts: u64,
}

/// A CRC S3 keeps for an object, computed with `crc-fast` (SIMD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcKind {
    /// `x-amz-checksum-crc32` (as a composite; a full-object CRC32 is [`Check::Crc32`]).
    Crc32,
    /// `x-amz-checksum-crc32c` (Castagnoli).
    Crc32c,
    /// `x-amz-checksum-crc64nvme`.
    Crc64Nvme,
}

impl CrcKind {
    pub(super) fn algorithm(self) -> crc_fast::CrcAlgorithm {
        match self {
            CrcKind::Crc32 => crc_fast::CrcAlgorithm::Crc32IsoHdlc,
            CrcKind::Crc32c => crc_fast::CrcAlgorithm::Crc32Iscsi,
            CrcKind::Crc64Nvme => crc_fast::CrcAlgorithm::Crc64Nvme,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            CrcKind::Crc32 => "CRC32",
            CrcKind::Crc32c => "CRC32C",
            CrcKind::Crc64Nvme => "CRC64NVME",
        }
    }

    /// Bytes of the CRC (as S3 encodes it, big-endian).
    fn width(self) -> usize {
        match self {
            CrcKind::Crc32 | CrcKind::Crc32c => 4,
            CrcKind::Crc64Nvme => 8,
        }
    }

    /// The composite CRC of part CRCs, as S3 computes it: the CRC of their big-endian bytes.
    pub(super) fn composite_of(self, part_crcs: &[u64]) -> u64 {
        let width = self.width();
        let bytes: Vec<u8> = part_crcs
            .iter()
            .flat_map(|c| c.to_be_bytes()[8 - width..].to_vec())
            .collect();
        crc_fast::checksum(self.algorithm(), &bytes)
    }
}

/// HeadObject (with checksum mode: servers that keep a CRC report it).
pub async fn head(ctx: &Ctx, src: &S3Uri) -> Result<ObjectInfo, S3Error> {
    let out = ctx
        .client
        .head_object()
        .bucket(&src.bucket)
        .key(&src.key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .map_err(ctx.object_error("HeadObject", src));
    let out = match out {
        Ok(out) => out,
        // A HEAD 404 has no body to say whether the key or the bucket is missing: ask.
        Err(S3Error::NoSuchKey { uri }) => {
            return Err(
                match ctx.client.head_bucket().bucket(&src.bucket).send().await {
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                        S3Error::NoSuchBucket {
                            uri,
                            bucket: src.bucket.clone(),
                        }
                    }
                    _ => S3Error::NoSuchKey { uri },
                },
            );
        }
        Err(e) => return Err(e),
    };
    let etag = unquote_etag(out.e_tag());
    let etag_parts = etag
        .as_deref()
        .and_then(parse_etag)
        .and_then(|(_, parts)| parts);
    // A multipart object's checksum is a CRC of its parts' CRCs (S3 marks it COMPOSITE and
    // appends `-<parts>`; moto does neither), unless the type says FULL_OBJECT.
    let whole = match out.checksum_type() {
        Some(ChecksumType::FullObject) => true,
        Some(_) => false,
        None => etag_parts.is_none(),
    };
    let full = |text: Option<&str>, kind: CrcKind| {
        text.filter(|_| whole)
            .and_then(|t| parse_crc_bytes(t, kind.width()))
    };
    let composite = [
        (CrcKind::Crc32, out.checksum_crc32()),
        (CrcKind::Crc32c, out.checksum_crc32_c()),
    ]
    .into_iter()
    .filter(|_| !whole)
    .find_map(|(kind, text)| parse_composite(text?, kind, etag_parts?));
    Ok(ObjectInfo {
        size: out.content_length().unwrap_or(0).max(0) as u64,
        mtime: out.last_modified().map(|t| t.secs()),
        mtime_ns: out.last_modified().map_or(0, |t| t.subsec_nanos()),
        crc32: full(out.checksum_crc32(), CrcKind::Crc32)
            .map(|c| c as u32)
            .or_else(|| {
                out.metadata()
                    .and_then(|m| m.get(CRC32_METADATA))
                    .and_then(|v| parse_crc32_hex(v))
            }),
        other_crc: full(out.checksum_crc64_nvme(), CrcKind::Crc64Nvme)
            .map(|c| (CrcKind::Crc64Nvme, c))
            .or_else(|| {
                full(out.checksum_crc32_c(), CrcKind::Crc32c).map(|c| (CrcKind::Crc32c, c))
            }),
        composite,
        etag,
    })
}

/// A composite checksum header, `<base64>-<parts>` (S3) or `<base64>` (moto), for an object
/// of `etag_parts` parts; `None` when malformed or when its part count disagrees.
pub(super) fn parse_composite(text: &str, kind: CrcKind, etag_parts: u64) -> Option<Composite> {
    let (b64, parts) = match text.split_once('-') {
        Some((b64, n)) => (b64, n.parse().ok()?),
        None => (text, etag_parts),
    };
    (parts == etag_parts && parts > 0).then_some(())?;
    Some(Composite {
        kind,
        crc: parse_crc_bytes(b64, kind.width())?,
        parts,
    })
}

/// A full-object checksum header of `width` bytes (base64, big-endian); `None` for a composite
/// (`...-N`) or anything malformed.
pub(super) fn parse_crc_bytes(text: &str, width: usize) -> Option<u64> {
    let raw = aws_smithy_types::base64::decode(text).ok()?;
    (raw.len() == width).then(|| raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// What a download is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The full-object CRC32: each range CRC'd in parallel, the CRCs combined in order.
    Crc32(u32),
    /// Another full-object CRC the server keeps, computed the same way.
    Crc(CrcKind, u64),
    /// A composite CRC: ranges hold whole parts of `part_size` (inferred as for
    /// [`Check::PartMd5s`]), each part's CRC computed as it arrives, then the CRC of those.
    PartCrcs {
        /// The composite checksum.
        composite: Composite,
        /// Part size the ranges are aligned to.
        part_size: u64,
    },
    /// A multipart ETag `<md5>-<parts>`: ranges hold whole parts of `part_size` (inferred
    /// from the size and the part count), each part's MD5 computed in parallel, then the MD5
    /// of the part MD5s.
    PartMd5s {
        /// The ETag's MD5 (hex).
        md5: String,
        /// Part count.
        parts: u64,
        /// Part size the ranges are aligned to.
        part_size: u64,
    },
    /// A plain ETag, the MD5 of the whole object: hashed in order, behind the download.
    Md5(String),
    /// Nothing to check against (no ETag, or one that is not an MD5): the length only.
    Length,
}

impl Check {
    /// The cheapest check the object's metadata allows.
    pub fn choose(info: &ObjectInfo, our_part_size: u64) -> Check {
        Check::choose_with(info, our_part_size, Verify::Auto)
    }

    /// The cheapest check the object's metadata allows among those `verify` permits.
    pub fn choose_with(info: &ObjectInfo, our_part_size: u64, verify: Verify) -> Check {
        let crc_allowed = matches!(verify, Verify::Auto | Verify::Crc);
        if verify == Verify::Size {
            return Check::Length;
        }
        if let (true, Some(crc)) = (crc_allowed, info.crc32) {
            return Check::Crc32(crc);
        }
        if let (true, Some((kind, crc))) = (crc_allowed, info.other_crc) {
            return Check::Crc(kind, crc);
        }
        if let (true, Some(composite)) = (crc_allowed, info.composite)
            && let Some(&part_size) =
                part_size_candidates(info.size, composite.parts, our_part_size).first()
        {
            return Check::PartCrcs {
                composite,
                part_size,
            };
        }
        if verify == Verify::Crc {
            return Check::Length;
        }
        match info.etag.as_deref().and_then(parse_etag) {
            Some((md5, None)) => Check::Md5(md5),
            Some((md5, Some(parts))) if parts >= 1 => {
                match part_size_candidates(info.size, parts, our_part_size).first() {
                    Some(&part_size) => Check::PartMd5s {
                        md5,
                        parts,
                        part_size,
                    },
                    // No part size gives that many parts: the ETag is not an MD5 of parts.
                    None => Check::Length,
                }
            }
            _ => Check::Length,
        }
    }

    /// The part size ranges must be aligned to, for the checks by part.
    pub fn part_size(&self) -> Option<u64> {
        match self {
            Check::PartCrcs { part_size, .. } | Check::PartMd5s { part_size, .. } => {
                Some(*part_size)
            }
            _ => None,
        }
    }

    /// The same check with the parts taken as `part_size` bytes.
    pub fn with_part_size(&self, part_size: u64) -> Check {
        match self {
            Check::PartCrcs { composite, .. } => Check::PartCrcs {
                composite: *composite,
                part_size,
            },
            Check::PartMd5s { md5, parts, .. } => Check::PartMd5s {
                md5: md5.clone(),
                parts: *parts,
                part_size,
            },
            other => other.clone(),
        }
    }

    /// The part count of the checks by part.
    pub fn parts(&self) -> Option<u64> {
        match self {
            Check::PartCrcs { composite, .. } => Some(composite.parts),
            Check::PartMd5s { parts, .. } => Some(*parts),
            _ => None,
        }
    }
}

/// Whether the bytes hashed into `got` pass `check`: `Err` says what differs. An ETag under
/// SSE-KMS or SSE-C (`etag_not_md5`) is not an MD5 of the content: only the length counts.
pub(super) fn verdict(check: &Check, got: &Hashed, etag_not_md5: bool) -> Result<(), String> {
    let ok = |pass: bool, mismatch: &dyn Fn() -> String| pass.then_some(()).ok_or_else(mismatch);
    match check {
        Check::Length => Ok(()),
        Check::Md5(_) | Check::PartMd5s { .. } if etag_not_md5 => Ok(()),
        Check::Crc32(want) => {
            let crc = got.crc32.clone().map_or(0, crc32fast::Hasher::finalize);
            ok(crc == *want, &|| {
                format!("CRC32 {crc:08x} does not match the object's {want:08x}")
            })
        }
        Check::Crc(kind, want) => {
            let crc = got.fast.as_ref().map_or(0, |c| c.finalize());
            ok(crc == *want, &|| {
                format!(
                    "{} {crc:x} does not match the object's {want:x}",
                    kind.name()
                )
            })
        }
        Check::PartCrcs {
            composite,
            part_size,
        } => {
            let crcs: Vec<u64> = got.part_crcs.iter().map(|(crc, _)| *crc).collect();
            let crc = composite.kind.composite_of(&crcs);
            // A server that gives no checksum type may keep a full-object CRC of a multipart
            // object: the part CRCs combine into that too.
            let whole = got
                .part_crcs
                .iter()
                .fold(None, |acc: Option<u64>, (c, len)| {
                    Some(acc.map_or(*c, |a| {
                        crc_fast::checksum_combine(composite.kind.algorithm(), a, *c, *len)
                    }))
                });
            let parts_match = crcs.len() as u64 == composite.parts && crc == composite.crc;
            ok(parts_match || whole == Some(composite.crc), &|| {
                format!(
                    "{} of {} part {}s ({part_size} bytes each) {crc:x} does not match the object's {:x}-{}",
                    composite.kind.name(),
                    crcs.len(),
                    composite.kind.name(),
                    composite.crc,
                    composite.parts
                )
            })
        }
        Check::Md5(want) => {
            let md5 = got.whole_md5.map(hex::encode).unwrap_or_default();
            ok(md5 == *want, &|| {
                format!("MD5 {md5} does not match ETag {want}")
            })
        }
        Check::PartMd5s {
            md5: want,
            parts,
            part_size,
        } => {
            let mut all = Md5::new();
            got.part_md5s.iter().for_each(|m| all.update(m));
            let md5 = hex::encode(all.finalize());
            ok(
                md5 == *want && got.part_md5s.len() as u64 == *parts,
                &|| {
                    format!(
                        "MD5 of {} part MD5s ({part_size} bytes each) {md5} does not match ETag {want}-{parts}",
                        got.part_md5s.len(),
                    )
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::range_hash::RangeHash;

    const MIB: u64 = 1024 * 1024;

    fn info(size: u64, etag: Option<&str>) -> ObjectInfo {
        ObjectInfo {
            size,
            etag: etag.map(str::to_string),
            ..ObjectInfo::default()
        }
    }

    #[test]
    fn the_cheapest_check_the_metadata_allows() {
        let md5 = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            Check::choose(&info(10, Some(md5)), 16 * MIB),
            Check::Md5(md5.into())
        );
        assert_eq!(
            Check::choose(&info(20 * MIB, Some(&format!("{md5}-3"))), 16 * MIB),
            Check::PartMd5s {
                md5: md5.into(),
                parts: 3,
                part_size: 8 * MIB
            }
        );
        let mut with_crc = info(10, Some(md5));
        with_crc.crc32 = Some(7);
        assert_eq!(Check::choose(&with_crc, 16 * MIB), Check::Crc32(7));
        assert_eq!(Check::choose(&info(10, None), 16 * MIB), Check::Length);
        assert_eq!(
            Check::choose(&info(10, Some("not-an-md5")), 16 * MIB),
            Check::Length
        );
        // Two parts cannot make 10 bytes with any usual part size.
        assert_eq!(
            Check::choose(&info(10, Some(&format!("{md5}-2"))), 16 * MIB),
            Check::Length
        );
        // --checksum narrows the choice.
        let multi = info(20 * MIB, Some(&format!("{md5}-3")));
        assert_eq!(
            Check::choose_with(&with_crc, 16 * MIB, Verify::Md5),
            Check::Md5(md5.into())
        );
        assert_eq!(
            Check::choose_with(&with_crc, 16 * MIB, Verify::Crc),
            Check::Crc32(7)
        );
        assert_eq!(
            Check::choose_with(&with_crc, 16 * MIB, Verify::Size),
            Check::Length
        );
        assert_eq!(
            Check::choose_with(&multi, 16 * MIB, Verify::Crc),
            Check::Length
        );
        assert!(matches!(
            Check::choose_with(&multi, 16 * MIB, Verify::Md5),
            Check::PartMd5s { .. }
        ));
        let mut with_other = info(20 * MIB, Some(&format!("{md5}-3")));
        with_other.other_crc = Some((CrcKind::Crc64Nvme, 9));
        assert_eq!(
            Check::choose(&with_other, 16 * MIB),
            Check::Crc(CrcKind::Crc64Nvme, 9)
        );
        assert_eq!(
            Check::choose_with(&with_other, 16 * MIB, Verify::Crc),
            Check::Crc(CrcKind::Crc64Nvme, 9)
        );
        assert!(matches!(
            Check::choose_with(&with_other, 16 * MIB, Verify::Md5),
            Check::PartMd5s { .. }
        ));
        // A composite CRC comes before the part MD5s, also with --checksum crc.
        let composite = Composite {
            kind: CrcKind::Crc32c,
            crc: 5,
            parts: 3,
        };
        let mut with_composite = multi.clone();
        with_composite.composite = Some(composite);
        for verify in [Verify::Auto, Verify::Crc] {
            assert_eq!(
                Check::choose_with(&with_composite, 16 * MIB, verify),
                Check::PartCrcs {
                    composite,
                    part_size: 8 * MIB
                }
            );
        }
        assert!(matches!(
            Check::choose_with(&with_composite, 16 * MIB, Verify::Md5),
            Check::PartMd5s { .. }
        ));
        assert_eq!(parse_crc_bytes("AAAAAAAAAAk=", 8), Some(9));
        assert_eq!(parse_crc_bytes("y/Q5Jg==", 8), None);
        assert_eq!(parse_crc_bytes("y/Q5Jg==", 4), Some(0xcbf4_3926));
        assert_eq!(parse_crc_bytes("y/Q5Jg==-3", 4), None);
    }

    #[test]
    fn composite_headers_with_and_without_a_part_count() {
        let want = Some(Composite {
            kind: CrcKind::Crc32,
            crc: 0xcbf4_3926,
            parts: 3,
        });
        assert_eq!(parse_composite("y/Q5Jg==-3", CrcKind::Crc32, 3), want);
        assert_eq!(parse_composite("y/Q5Jg==", CrcKind::Crc32, 3), want);
        assert_eq!(parse_composite("y/Q5Jg==-4", CrcKind::Crc32, 3), None);
        assert_eq!(parse_composite("y/Q5Jg==-x", CrcKind::Crc32, 3), None);
        assert_eq!(parse_composite("AAAAAAAAAAk=", CrcKind::Crc32, 3), None);
    }

    /// The composite CRC as S3 and the AWS CLI compute it (values from zlib and `crcmod`
    /// over the parts' big-endian CRCs), and a full-object CRC given without a type.
    #[test]
    fn composite_crcs_of_parts() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for kind in [CrcKind::Crc32, CrcKind::Crc32c] {
            let parts: Vec<u64> = data
                .chunks(300)
                .map(|c| crc_fast::checksum(kind.algorithm(), c))
                .collect();
            let want = kind.composite_of(&parts);
            let check = Check::PartCrcs {
                composite: Composite {
                    kind,
                    crc: want,
                    parts: 4,
                },
                part_size: 300,
            };
            let mut h = RangeHash::new(&check, false);
            data.chunks(77).for_each(|c| h.update(c));
            let got = h.finish();
            assert_eq!(verdict(&check, &got, false), Ok(()));
            let full = Check::PartCrcs {
                composite: Composite {
                    kind,
                    crc: crc_fast::checksum(kind.algorithm(), &data),
                    parts: 4,
                },
                part_size: 300,
            };
            assert_eq!(verdict(&full, &got, false), Ok(()));
            let wrong = check.with_part_size(250);
            let mut h = RangeHash::new(&wrong, false);
            h.update(&data);
            let err = verdict(&wrong, &h.finish(), false).unwrap_err();
            assert!(err.contains("does not match"), "{err}");
        }
        // CRC32 of the four big-endian CRC32s of "a", "b", "c", "d" (Python: zlib.crc32).
        let abcd: Vec<u64> = [b"a", b"b", b"c", b"d"]
            .iter()
            .map(|p| u64::from(crc32fast::hash(*p)))
            .collect();
        let bytes: Vec<u8> = abcd
            .iter()
            .flat_map(|c| (*c as u32).to_be_bytes())
            .collect();
        assert_eq!(
            CrcKind::Crc32.composite_of(&abcd),
            u64::from(crc32fast::hash(&bytes))
        );
    }
}
