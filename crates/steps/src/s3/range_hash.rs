//! Hashing a download as its bytes arrive: each range's hash state ([`RangeHash`]) travels
//! with its batches to the thread that writes them, and the ranges' results combine in order
//! ([`Hashed`]); the MD5 of a whole object fetched in several ranges follows the writes in
//! order through the page cache ([`Tracker`], [`follow_md5`]).

use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex};

use super::md5::Md5;

use super::check::Check;

/// A part being hashed: its hash so far, its bytes so far, the part size, the finished ones.
struct PartState<H, O> {
    hash: H,
    done: u64,
    part_size: u64,
    finished: Vec<O>,
}

impl<H, O> PartState<H, O> {
    fn new(hash: H, part_size: u64) -> Self {
        PartState {
            hash,
            done: 0,
            part_size,
            finished: Vec::new(),
        }
    }

    /// Feed `data`, split at part boundaries (ranges start on one); `finish` closes a part.
    fn update(
        &mut self,
        mut data: &[u8],
        update: impl Fn(&mut H, &[u8]),
        finish: impl Fn(&mut H, u64) -> O,
    ) {
        while !data.is_empty() {
            let take = ((self.part_size - self.done) as usize).min(data.len());
            update(&mut self.hash, &data[..take]);
            self.done += take as u64;
            data = &data[take..];
            if self.done == self.part_size {
                self.finished.push(finish(&mut self.hash, self.done));
                self.done = 0;
            }
        }
    }

    /// The finished parts and the short last one, if any.
    fn finish(mut self, finish: impl Fn(&mut H, u64) -> O) -> Vec<O> {
        if self.done > 0 {
            let last = finish(&mut self.hash, self.done);
            self.finished.push(last);
        }
        self.finished
    }
}

/// Hash state of one range, moved to the thread that writes each batch and back.
pub(super) struct RangeHash {
    crc: Option<crc32fast::Hasher>,
    /// A CRC32C or CRC64NVME.
    fast: Option<crc_fast::Digest>,
    /// The whole object's MD5, when one range is the whole object.
    whole: Option<Md5>,
    part_md5s: Option<PartState<Md5, [u8; 16]>>,
    part_crcs: Option<PartState<crc_fast::Digest, (u64, u64)>>,
}

impl RangeHash {
    pub(super) fn new(check: &Check, whole: bool) -> Self {
        RangeHash {
            crc: matches!(check, Check::Crc32(_)).then(crc32fast::Hasher::new),
            fast: match check {
                Check::Crc(kind, _) => Some(crc_fast::Digest::new(kind.algorithm())),
                _ => None,
            },
            whole: (whole && matches!(check, Check::Md5(_))).then(Md5::new),
            part_md5s: match check {
                Check::PartMd5s { part_size, .. } => Some(PartState::new(Md5::new(), *part_size)),
                _ => None,
            },
            part_crcs: match check {
                Check::PartCrcs {
                    composite,
                    part_size,
                } => Some(PartState::new(
                    crc_fast::Digest::new(composite.kind.algorithm()),
                    *part_size,
                )),
                _ => None,
            },
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        if let Some(crc) = &mut self.crc {
            crc.update(data);
        }
        if let Some(crc) = &mut self.fast {
            crc.update(data);
        }
        if let Some(md5) = &mut self.whole {
            md5.update(data);
        }
        if let Some(parts) = &mut self.part_md5s {
            parts.update(data, |h, d| h.update(d), finish_md5);
        }
        if let Some(parts) = &mut self.part_crcs {
            parts.update(data, |h, d| h.update(d), finish_crc);
        }
    }

    /// What this range's bytes hashed to.
    pub(super) fn finish(self) -> Hashed {
        Hashed {
            crc32: self.crc,
            fast: self.fast,
            part_md5s: self
                .part_md5s
                .map_or_else(Vec::new, |p| p.finish(finish_md5)),
            part_crcs: self
                .part_crcs
                .map_or_else(Vec::new, |p| p.finish(finish_crc)),
            whole_md5: self.whole.map(Md5::finalize),
        }
    }
}

fn finish_md5(md5: &mut Md5, _len: u64) -> [u8; 16] {
    std::mem::take(md5).finalize()
}

fn finish_crc(crc: &mut crc_fast::Digest, len: u64) -> (u64, u64) {
    let value = crc.finalize();
    crc.reset();
    (value, len)
}

/// What the bytes of one range, or of several in order, hashed to.
#[derive(Default)]
pub(super) struct Hashed {
    /// CRC32 state.
    pub(super) crc32: Option<crc32fast::Hasher>,
    /// CRC32C or CRC64NVME state.
    pub(super) fast: Option<crc_fast::Digest>,
    /// Part MD5s, in order.
    pub(super) part_md5s: Vec<[u8; 16]>,
    /// Part CRCs with their lengths, in order.
    pub(super) part_crcs: Vec<(u64, u64)>,
    /// The MD5 of the whole object, when hashed in one piece.
    pub(super) whole_md5: Option<[u8; 16]>,
}

impl Hashed {
    /// Append the hashes of the range that follows.
    pub(super) fn append(&mut self, next: Hashed) {
        match (&mut self.crc32, next.crc32) {
            (Some(a), Some(b)) => a.combine(&b),
            (a @ None, b) => *a = b,
            _ => {}
        }
        match (&mut self.fast, next.fast) {
            (Some(a), Some(b)) => a.combine(&b),
            (a @ None, b) => *a = b,
            _ => {}
        }
        self.part_md5s.extend(next.part_md5s);
        self.part_crcs.extend(next.part_crcs);
        self.whole_md5 = self.whole_md5.or(next.whole_md5);
    }
}

/// How far each range has been written contiguously, for the in-order MD5 that follows.
pub(super) struct Tracker {
    starts: Vec<u64>,
    end: u64,
    state: Mutex<(Vec<u64>, bool)>,
    changed: Condvar,
}

impl Tracker {
    pub(super) fn new(ranges: &[(u64, u64)]) -> Self {
        Tracker {
            starts: ranges.iter().map(|r| r.0).collect(),
            end: ranges.last().map_or(0, |r| r.0 + r.1),
            state: Mutex::new((vec![0; ranges.len()], false)),
            changed: Condvar::new(),
        }
    }

    pub(super) fn advance(&self, range: usize, written: u64) {
        self.state.lock().expect("lock").0[range] = written;
        self.changed.notify_all();
    }

    /// No more writes will come (done or failed).
    pub(super) fn stop(&self) {
        self.state.lock().expect("lock").1 = true;
        self.changed.notify_all();
    }

    /// Bytes available from `pos` on within its range, waiting for some; 0 when stopped first.
    fn available(&self, pos: u64) -> u64 {
        let range = self.starts.partition_point(|s| *s <= pos) - 1;
        let offset = pos - self.starts[range];
        let mut state = self.state.lock().expect("lock");
        loop {
            if state.0[range] > offset {
                return state.0[range] - offset;
            }
            if state.1 {
                return 0;
            }
            state = self.changed.wait(state).expect("lock");
        }
    }
}

/// Bytes mapped and hashed at once by [`follow_md5`], at most (mapped pages count in the
/// resident size while mapped).
const FOLLOW_PIECE: u64 = 2 * 1024 * 1024;

/// MD5 of the file in order, each piece hashed once written, straight from the page cache
/// (mapped, not copied: a copy cost ~13% of the CPU of such a download); `None` when the
/// download stopped before the end.
pub(super) fn follow_md5(file: &std::fs::File, tracker: &Tracker) -> Option<[u8; 16]> {
    let mut md5 = Md5::new();
    let mut pos = 0u64;
    let end = tracker.end;
    while pos < end {
        let n = tracker.available(pos).min(FOLLOW_PIECE);
        if n == 0 {
            return None;
        }
        hash_written(file, pos, n, &mut md5).ok()?;
        pos += n;
    }
    Some(md5.finalize())
}

/// Hash `len` bytes of `file` at `pos`, which have been written and will not change.
fn hash_written(file: &std::fs::File, pos: u64, len: u64, md5: &mut Md5) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let start = pos - pos % page;
    let (skip, map_len) = ((pos - start) as usize, (pos + len - start) as usize);
    // SAFETY: a fresh read-only shared mapping of a range of our own temporary file that lies
    // within its written length (no SIGBUS); the bytes in it were written before and no
    // thread writes them again (each range writes its bytes once), so the slice does not
    // change while it is borrowed. It is unmapped before returning.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            start as libc::off_t,
        );
        if map == libc::MAP_FAILED {
            // Where files cannot be mapped: read the piece back instead.
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, pos)?;
            md5.update(&buf);
            return Ok(());
        }
        md5.update(std::slice::from_raw_parts(
            map.cast::<u8>().add(skip),
            len as usize,
        ));
        libc::munmap(map, map_len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::check::{Composite, CrcKind};
    use ::md5::Digest;

    /// The follower hashes ranges written out of order, at offsets that are not page-aligned,
    /// and gives up when the writes stop early.
    #[test]
    fn the_in_order_md5_follows_writes_in_any_order() {
        let data: Vec<u8> = (0..(3 * FOLLOW_PIECE as u32 + 5_000))
            .map(|i| (i ^ (i >> 13)) as u8)
            .collect();
        let third = data.len() as u64 / 3 + 7;
        let ranges = [
            (0, third),
            (third, third),
            (2 * third, data.len() as u64 - 2 * third),
        ];
        let file = tempfile::tempfile().unwrap();
        let tracker = Tracker::new(&ranges);
        std::thread::scope(|scope| {
            let follower = scope.spawn(|| follow_md5(&file, &tracker));
            for index in [2, 0, 1] {
                let (start, len) = ranges[index];
                for piece in (0..len).step_by(1_000_003) {
                    let n = (len - piece).min(1_000_003);
                    let at = (start + piece) as usize;
                    file.write_all_at(&data[at..at + n as usize], start + piece)
                        .unwrap();
                    tracker.advance(index, piece + n);
                }
            }
            let want: [u8; 16] = ::md5::Md5::digest(&data).into();
            assert_eq!(follower.join().unwrap(), Some(want));
        });
        let stopped = Tracker::new(&ranges);
        stopped.advance(0, 10);
        stopped.stop();
        assert_eq!(follow_md5(&file, &stopped), None);
    }

    #[test]
    fn range_hashes_split_at_part_boundaries() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let check = Check::PartMd5s {
            md5: String::new(),
            parts: 4,
            part_size: 300,
        };
        let mut h = RangeHash::new(&check, false);
        // Arbitrary chunk sizes, as the network delivers them.
        for c in data.chunks(77) {
            h.update(c);
        }
        let got = h.finish();
        assert!(got.whole_md5.is_none());
        let want: Vec<[u8; 16]> = data
            .chunks(300)
            .map(|c| ::md5::Md5::digest(c).into())
            .collect();
        assert_eq!(got.part_md5s, want);

        let check = Check::PartCrcs {
            composite: Composite {
                kind: CrcKind::Crc32,
                crc: 0,
                parts: 4,
            },
            part_size: 300,
        };
        let mut h = RangeHash::new(&check, false);
        data.chunks(77).for_each(|c| h.update(c));
        let want: Vec<(u64, u64)> = data
            .chunks(300)
            .map(|c| (u64::from(crc32fast::hash(c)), c.len() as u64))
            .collect();
        assert_eq!(h.finish().part_crcs, want);

        let mut whole = RangeHash::new(&Check::Md5(String::new()), true);
        data.chunks(333).for_each(|c| whole.update(c));
        assert_eq!(
            whole.finish().whole_md5,
            Some(::md5::Md5::digest(&data).into())
        );

        let mut a = RangeHash::new(&Check::Crc32(0), false);
        a.update(&data[..600]);
        let mut b = RangeHash::new(&Check::Crc32(0), false);
        b.update(&data[600..]);
        let mut all = a.finish();
        all.append(b.finish());
        assert_eq!(all.crc32.unwrap().finalize(), crc32fast::hash(&data));

        for kind in [CrcKind::Crc32c, CrcKind::Crc64Nvme] {
            let check = Check::Crc(kind, 0);
            let (mut a, mut b) = (RangeHash::new(&check, false), RangeHash::new(&check, false));
            data[..600].chunks(77).for_each(|c| a.update(c));
            data[600..].chunks(77).for_each(|c| b.update(c));
            let mut all = Hashed::default();
            all.append(a.finish());
            all.append(b.finish());
            assert_eq!(
                all.fast.unwrap().finalize(),
                crc_fast::checksum(kind.algorithm(), &data)
            );
        }
    }
}
