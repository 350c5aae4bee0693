//! Appending one record: under an exclusive `flock` on the log, after inspecting its tail
//! (healing a torn append, failing closed on damage), written in one `write` on an `O_APPEND`
//! descriptor and fsynced; then handed to the sinks (syslog).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

use chrono::Utc;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::error::{AuditError, io};
use super::record::{AuditEvent, AuditRecord, Decision, Recovery, record_hash};
use super::tail::{Tail, Torn, inspect_tail};
use super::verify::{Walk, walk};
use crate::config::AuditConfig;

/// Append `record` to the log at `cfg.path`, filling `seq`, `time`, `prev` and `hash`; returns
/// the record as written. Creates the directory (0750) and the log (0640) if missing.
///
/// A torn tail (an earlier append was interrupted: the bytes after the last newline, which
/// follow a good record) is removed first, exactly those bytes, and a `recovered` record with their
/// SHA-256 and length is appended before `record`. Damage that reaches a complete record is
/// never repaired: [`AuditError::Damaged`], naming the line and the fix.
pub fn append(cfg: &AuditConfig, record: AuditRecord) -> Result<AuditRecord, AuditError> {
    let path = &cfg.path;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(io(dir, "create directory"))?;
        }
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(io(path, "open"))?;
    // Held until `locked` drops at the end of this function (after the fsync).
    let locked = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io(path, "lock")(std::io::Error::from(errno)))?;

    // Only the last two lines are read on this path, however long the log is.
    let (last_seq, last_hash) = match inspect_tail(&locked, path)? {
        Tail::Good { seq, hash } => (seq, hash),
        Tail::Torn(torn) => {
            // Rare (once per interrupted append): walk the whole chain to make sure everything
            // before the torn bytes verifies, so nothing but the torn bytes is ever removed.
            let walked = walk(&locked, path)?;
            let v = &walked.verification;
            if walked.break_offset != Some(torn.good_end)
                || v.records != torn.seq
                || v.head != torn.hash
            {
                return Err(damaged(path, &walked, torn.why));
            }
            let recovered = recover(&locked, path, &torn)?;
            (recovered.seq, recovered.hash)
        }
        Tail::Damaged(message) => {
            // The failure path: walk the chain to name the first broken line.
            let walked = walk(&locked, path)?;
            return Err(damaged(path, &walked, message));
        }
    };
    let mut record = record;
    record.host_id = record
        .host_id
        .or_else(|| crate::config::host_id(cfg.stamp.state_root.as_deref()?));
    record.config_sha256 = record
        .config_sha256
        .or_else(|| cfg.stamp.config_sha256.clone());
    let written = write_record(&locked, path, record, last_seq, last_hash)?;
    drop(locked);
    if let Some(syslog) = &cfg.syslog {
        super::syslog::send(syslog, path, &written);
    }
    Ok(written)
}

/// Stamp `record` as the successor of (`last_seq`, `last_hash`), write it as one line on the
/// locked `O_APPEND` descriptor and fsync it.
fn write_record(
    file: &File,
    path: &Path,
    mut record: AuditRecord,
    last_seq: u64,
    last_hash: String,
) -> Result<AuditRecord, AuditError> {
    record.seq = last_seq.checked_add(1).ok_or_else(|| AuditError::Damaged {
        path: path.to_path_buf(),
        message: format!("the last record's seq {last_seq} cannot be followed"),
    })?;
    // Stamped under the lock, so times follow the order of the log.
    record.time = Utc::now();
    record.prev = last_hash;
    record.hash = String::new();
    let value = serde_json::to_value(&record).expect("audit record serialises");
    record.hash = record_hash(&value);
    let mut line = serde_json::to_vec(&record).expect("audit record serialises");
    line.push(b'\n');
    // One write on an O_APPEND descriptor: the whole line lands at the end, in one piece.
    let mut out = file;
    out.write_all(&line).map_err(io(path, "write"))?;
    out.sync_data().map_err(io(path, "fsync"))?;
    Ok(record)
}

/// Remove the torn bytes at the end of the locked log (exactly those), fsync, and append the
/// `recovered` record that says what was removed. Returns that record.
fn recover(file: &File, path: &Path, torn: &Torn) -> Result<AuditRecord, AuditError> {
    let removed_bytes = torn.len - torn.good_end;
    let mut bytes = vec![0u8; removed_bytes as usize];
    file.read_exact_at(&mut bytes, torn.good_end)
        .map_err(io(path, "read the torn tail"))?;
    let removed_sha256 = hex::encode(Sha256::digest(&bytes));
    file.set_len(torn.good_end)
        .map_err(io(path, "truncate the torn tail"))?;
    file.sync_data()
        .map_err(io(path, "fsync after truncating the torn tail"))?;
    let last = if torn.seq == 0 {
        "the log held no complete record".to_string()
    } else {
        format!("the last good record is seq {}", torn.seq)
    };
    let mut rec = AuditRecord::new(
        AuditEvent::Recovered,
        Decision::Succeeded,
        format!(
            "torn tail removed: {removed_bytes} byte(s) at offset {} (sha256 {removed_sha256}): {}; {last}",
            torn.good_end, torn.why
        ),
    );
    rec.recovery = Some(Recovery {
        removed_bytes,
        removed_sha256,
        offset: torn.good_end,
        last_good_seq: torn.seq,
        last_good_hash: torn.hash.clone(),
    });
    let rec = write_record(file, path, rec, torn.seq, torn.hash.clone())?;
    tracing::warn!(
        "audit log {}: removed a torn tail of {removed_bytes} byte(s) ({}) and recorded the removal as seq {}",
        path.display(),
        torn.why,
        rec.seq
    );
    Ok(rec)
}

/// The [`AuditError::Damaged`] for the log at `path`: the first break the full walk found
/// (its line), or what the tail showed when the walk found none.
fn damaged(path: &Path, walked: &Walk, tail: String) -> AuditError {
    let message = match &walked.verification.broken {
        Some(b) => format!(
            "line {}{}: {}",
            b.line,
            b.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
            b.message
        ),
        None => tail,
    };
    AuditError::Damaged {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod torn_tail_tests {
    use std::path::PathBuf;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::audit::GENESIS;
    use crate::audit::tail::MAX_RECORD;
    use crate::audit::verify::verify;
    fn cfg(path: &Path) -> AuditConfig {
        AuditConfig {
            path: path.to_path_buf(),
            ..AuditConfig::default()
        }
    }

    fn rec(i: u64) -> AuditRecord {
        let mut r = AuditRecord::new(AuditEvent::Grant, Decision::Granted, format!("grant {i}"));
        r.job_id = Some(i);
        r
    }

    /// A log of `n` records in a fresh directory; returns the directory, the log and the records.
    fn log_of(n: u64) -> (tempfile::TempDir, PathBuf, Vec<AuditRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let written = (1..=n)
            .map(|i| append(&cfg(&log), rec(i)).unwrap())
            .collect();
        (dir, log, written)
    }

    fn add(log: &Path, bytes: &[u8]) {
        let mut f = fs::OpenOptions::new().append(true).open(log).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn records(log: &Path) -> Vec<AuditRecord> {
        fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Append after `torn` was added to a good log of three records: the torn bytes, and only
    /// they, are replaced by a `recovered` record, then the new record follows; the chain
    /// verifies and lists the recovery.
    fn assert_recovers(torn: &[u8]) {
        let (_dir, log, written) = log_of(3);
        let good = fs::read(&log).unwrap();
        add(&log, torn);
        let before = verify(&log).unwrap();
        let t = before.torn_tail.clone().expect("a torn tail is recognised");
        assert_eq!(
            (t.line, t.offset, t.bytes),
            (4, good.len() as u64, torn.len() as u64)
        );

        let new = append(&cfg(&log), rec(4)).unwrap();
        let after = fs::read(&log).unwrap();
        assert_eq!(
            &after[..good.len()],
            &good[..],
            "nothing complete is removed"
        );
        let all = records(&log);
        assert_eq!(all.len(), 5);
        assert_eq!(&all[..3], &written[..]);
        let r = &all[3];
        assert_eq!(
            (r.event, r.decision, r.seq),
            (AuditEvent::Recovered, Decision::Succeeded, 4)
        );
        assert_eq!(r.prev, written[2].hash);
        assert_eq!(
            r.recovery,
            Some(Recovery {
                removed_bytes: torn.len() as u64,
                removed_sha256: hex::encode(Sha256::digest(torn)),
                offset: good.len() as u64,
                last_good_seq: 3,
                last_good_hash: written[2].hash.clone(),
            })
        );
        assert!(r.reason.contains("torn tail removed"), "{}", r.reason);
        assert_eq!(all[4], new);
        assert_eq!((new.seq, &new.prev), (5, &r.hash));

        let v = verify(&log).unwrap();
        assert_eq!((v.records, v.broken, v.torn_tail), (5, None, None));
        assert_eq!(v.head, new.hash);
        assert_eq!(v.recoveries.len(), 1);
        assert_eq!((v.recoveries[0].line, v.recoveries[0].seq), (4, 4));
        assert_eq!(v.recoveries[0].recovery, r.recovery.clone().unwrap());

        // The repaired log appends as usual, with no second recovery.
        append(&cfg(&log), rec(5)).unwrap();
        assert_eq!(verify(&log).unwrap().recoveries.len(), 1);
    }

    /// What an interrupted append of the next record would leave: the first `n` bytes of it.
    fn prefix_of_a_record(n: usize) -> Vec<u8> {
        let mut r = rec(99);
        r.extra.insert("pad".into(), "x".repeat(n).into());
        r.prev = "ab".repeat(32);
        r.hash = "cd".repeat(32);
        serde_json::to_vec(&r).unwrap()[..n].to_vec()
    }

    #[test]
    fn a_partial_json_line_without_newline_is_removed_and_recorded() {
        assert_recovers(&prefix_of_a_record(57));
    }

    #[test]
    fn a_partial_line_longer_than_a_read_chunk_is_removed_and_recorded() {
        assert_recovers(&prefix_of_a_record(9000));
    }

    #[test]
    fn bytes_without_a_newline_at_the_end_are_removed_and_recorded() {
        // Zeros: what a crash can leave where the file grew but its data never reached disk.
        assert_recovers(&[0u8; 300]);
        assert_recovers(b"{\"seq\":4,");
        assert_recovers(b"\x00\xffnot json at all");
    }

    #[test]
    fn a_complete_last_line_that_is_not_a_record_stays_an_error() {
        // An edited last record, valid JSON on its own line with its newline: tampering, not a
        // torn append, so it is never removed.
        let (_dir, log, _) = log_of(2);
        edit_line(&log, 1, |v| v["reason"] = "edited after hashing".into());
        assert_fails_closed(&log, 2);

        for bad in [
            &b"\x00\xffnot json at all\n"[..],
            b"[1,2,3]\n{\"seq\":4,",
            b"\n",
            b"{\"seq\":4}\n",
        ] {
            let (_dir, log, _) = log_of(3);
            add(&log, bad);
            assert_fails_closed(&log, 4);
        }
    }

    #[test]
    fn a_log_with_no_complete_line_starts_its_chain_with_the_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let torn = prefix_of_a_record(40);
        fs::write(&log, &torn).unwrap();
        append(&cfg(&log), rec(1)).unwrap();
        let all = records(&log);
        assert_eq!(all[0].event, AuditEvent::Recovered);
        assert_eq!((all[0].seq, all[0].prev.as_str()), (1, GENESIS));
        let r = all[0].recovery.clone().unwrap();
        assert_eq!((r.removed_bytes, r.offset, r.last_good_seq), (40, 0, 0));
        let v = verify(&log).unwrap();
        assert_eq!((v.records, v.broken, v.recoveries.len()), (2, None, 1));
    }

    /// Damage that reaches a complete record is never repaired: the append fails with the line
    /// and the fix, and the log is left byte for byte as it was.
    fn assert_fails_closed(log: &Path, line: u64) {
        let before = fs::read(log).unwrap();
        let err = append(&cfg(log), rec(9)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AuditError::Damaged { .. }), "{text}");
        assert!(text.contains(&format!("line {line}")), "{text}");
        for fix in [
            "p3-executor audit verify",
            "move it aside",
            "evidence",
            "mv ",
        ] {
            assert!(text.contains(fix), "the fix names {fix:?}: {text}");
        }
        assert_eq!(fs::read(log).unwrap(), before, "nothing was removed");
        let v = verify(log).unwrap();
        assert_eq!(v.broken.map(|b| b.line), Some(line));
        assert_eq!(v.torn_tail, None, "damage is not a torn tail");
    }

    fn edit_line(log: &Path, index: usize, edit: impl FnOnce(&mut Value)) {
        let text = fs::read_to_string(log).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut v: Value = serde_json::from_str(&lines[index]).unwrap();
        edit(&mut v);
        lines[index] = v.to_string();
        fs::write(log, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn a_damaged_middle_with_a_torn_tail_stays_an_error() {
        let (_dir, log, _) = log_of(4);
        edit_line(&log, 1, |v| v["reason"] = "edited".into());
        add(&log, &prefix_of_a_record(30));
        assert_fails_closed(&log, 2);
    }

    #[test]
    fn a_last_record_that_does_not_continue_its_predecessor_stays_an_error() {
        // Removing the second-to-last record leaves two complete records that do not chain.
        let (_dir, log, _) = log_of(4);
        let text = fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        fs::write(&log, lines.join("\n") + "\n").unwrap();
        assert_fails_closed(&log, 3);

        // An edited and re-hashed last record: complete on its own, so never removed.
        let (_dir, log, _) = log_of(3);
        edit_line(&log, 2, |v| {
            v["prev"] = "ef".repeat(32).into();
            v["hash"] = record_hash(v).into();
        });
        assert_fails_closed(&log, 3);
    }

    #[test]
    fn two_bad_lines_at_the_end_stay_an_error() {
        let (_dir, log, _) = log_of(3);
        edit_line(&log, 2, |v| v["reason"] = "edited".into());
        add(&log, b"garbage\n");
        assert_fails_closed(&log, 3);
    }

    #[test]
    fn no_line_end_in_the_last_mebibyte_stays_an_error() {
        let (_dir, log, _) = log_of(1);
        add(&log, &vec![b'x'; MAX_RECORD as usize + 10]);
        let before = fs::read(&log).unwrap();
        let err = append(&cfg(&log), rec(2)).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(fs::read(&log).unwrap(), before);
    }

    #[test]
    fn an_edited_recovery_record_breaks_the_chain() {
        let (_dir, log, _) = log_of(2);
        add(&log, b"{\"seq\":3");
        append(&cfg(&log), rec(3)).unwrap();
        edit_line(&log, 2, |v| {
            v["recovery"]["last_good_seq"] = 1.into();
            v["hash"] = record_hash(v).into();
        });
        let v = verify(&log).unwrap();
        let b = v.broken.expect("broken");
        assert_eq!(b.line, 3);
        assert!(b.message.contains("recovered record"), "{}", b.message);
    }

    #[test]
    fn recovery_records_keep_the_schema_compatible() {
        // Records without the new field still parse; only recovered records carry it.
        let old: AuditRecord = serde_json::from_str(
            r#"{"seq":1,"time":"2026-11-26T12:00:00Z","host":"h","event":"grant","decision":"granted","reason":"r","prev":"","hash":""}"#,
        )
        .unwrap();
        assert_eq!(old.recovery, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("recovery"));
        let (_dir, log, _) = log_of(1);
        add(&log, b"{");
        append(&cfg(&log), rec(2)).unwrap();
        let text = fs::read_to_string(&log).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.contains(r#""event":"recovered""#), "{line}");
        let back: AuditRecord = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), line, "round trip");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Cut the last record anywhere before its newline: always a torn append, healed.
        #[test]
        fn a_cut_anywhere_in_the_last_record_always_heals(cut in any::<prop::sample::Index>()) {
            let (_dir, log, written) = log_of(3);
            let full = fs::read(&log).unwrap();
            let last_start = full[..full.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
            // Keep 1..=len-1 bytes of the last line (its newline is the last byte).
            let at = last_start + 1 + cut.index(full.len() - 1 - last_start);
            fs::write(&log, &full[..at]).unwrap();
            let new = append(&cfg(&log), rec(9)).unwrap();
            let after = fs::read(&log).unwrap();
            prop_assert_eq!(&after[..last_start], &full[..last_start]);
            let v = verify(&log).unwrap();
            prop_assert_eq!(&v.broken, &None);
            prop_assert_eq!(v.records, 4);
            prop_assert_eq!(v.recoveries.len(), 1);
            prop_assert_eq!(v.recoveries[0].recovery.removed_bytes, (at - last_start) as u64);
            prop_assert_eq!(&v.recoveries[0].recovery.last_good_hash, &written[1].hash);
            prop_assert_eq!(new.seq, 4);
        }

        /// Change any one byte of a complete record (not its newline): never healed. Nothing
        /// is removed and no recovery is recorded; a change in the last record (the tail an
        /// append reads) fails the append closed, leaving the log byte for byte as it was.
        #[test]
        fn a_changed_byte_in_a_complete_record_never_heals(
            pos in any::<prop::sample::Index>(),
            delta in 1u8..=255,
        ) {
            let (_dir, log, _) = log_of(3);
            let mut bytes = fs::read(&log).unwrap();
            let last_start = bytes[..bytes.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
            let content: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != b'\n').collect();
            let i = content[pos.index(content.len())];
            bytes[i] = bytes[i].wrapping_add(delta);
            fs::write(&log, &bytes).unwrap();
            let result = append(&cfg(&log), rec(9));
            let after = fs::read(&log).unwrap();
            prop_assert_eq!(&after[..bytes.len()], &bytes[..], "nothing is removed");
            if i >= last_start {
                prop_assert!(matches!(result, Err(AuditError::Damaged { .. })), "{:?}", result);
                prop_assert_eq!(&after, &bytes);
            }
            let v = verify(&log).unwrap();
            prop_assert!(v.broken.is_some());
            prop_assert_eq!(v.torn_tail, None);
            prop_assert!(v.recoveries.is_empty());
            prop_assert!(v.recoveries.is_empty());
        }

        /// Cut a good log anywhere: at a line end nothing is recovered; anywhere else exactly
        /// the bytes after the last line end are removed, and the result verifies.
        #[test]
        fn a_log_cut_anywhere_heals_without_losing_a_complete_record(cut in any::<prop::sample::Index>()) {
            let (_dir, log, _) = log_of(3);
            let full = fs::read(&log).unwrap();
            let at = cut.index(full.len() + 1);
            fs::write(&log, &full[..at]).unwrap();
            let complete = full[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let lines = full[..complete].iter().filter(|&&b| b == b'\n').count() as u64;
            append(&cfg(&log), rec(9)).unwrap();
            let after = fs::read(&log).unwrap();
            prop_assert_eq!(&after[..complete], &full[..complete]);
            let v = verify(&log).unwrap();
            prop_assert_eq!(&v.broken, &None);
            let torn = (at - complete) as u64;
            prop_assert_eq!(v.recoveries.len(), usize::from(torn > 0));
            prop_assert_eq!(v.records, lines + 1 + u64::from(torn > 0));
            if let Some(r) = v.recoveries.first() {
                prop_assert_eq!(r.recovery.removed_bytes, torn);
                prop_assert_eq!(r.recovery.offset, complete as u64);
            }
        }
    }
}
