//! Whether a kinit loads MIT's SPAKE pre-authentication module (`kerberos.spake`).
//!
//! MIT kinit loads `spake.so`, and OpenSSL's libcrypto with it, before its first request,
//! whether or not the KDC offers SPAKE: 1.3–2.5 ms of a 4.5–7 ms kinit on our machines. Few KDCs
//! offer it (Active Directory never; MIT only with `spake_preauth_groups` set on the KDC), and a
//! KDC that does not offer it never uses it.
//!
//! With `spake = "auto"` the executor learns, per principal, what the KDC offers, from the
//! principal's own kinits, which run traced (`KRB5_TRACE`): the KDC's pre-authentication
//! request lists `PA-SPAKE (151)` when it offers SPAKE. Once a kinit succeeded without the KDC
//! offering it, the principal's later kinits run with the module disabled (a
//! `[plugins] clpreauth` line in the profile kinit already gets in front of krb5.conf). Those
//! kinits are traced too, so a KDC that starts offering SPAKE is seen at once: the record goes,
//! the next kinit loads the module again, and a kinit that failed without it (a krb5.conf with
//! `disable_encrypted_timestamp`, MIT's advice where the KDCs offer SPAKE) is retried with it
//! straight away.
//!
//! The records are root-only files in a root-only directory under the state root
//! (`<state_root>/kinit/no-spake/`, one per principal and realm configuration, named by a
//! hash); a job cannot reach them, and nothing a job controls goes into them. Pure parts: [`spake_offered`] (the trace), [`PROFILE`] (the
//! profile lines); [`Memory`] is the I/O.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::tool::trace_message;

/// The pre-authentication type number of SPAKE (RFC draft `draft-ietf-kitten-krb-spake-preauth`).
const PA_SPAKE: &str = "(151)";

/// Profile lines that leave the SPAKE client module out of a kinit. `disable` is a
/// multi-valued relation: MIT adds it to whatever the krb5.conf behind it disables.
pub(super) const PROFILE: &str = "[plugins]\n clpreauth = {\n  disable = spake\n }\n";

/// Did the KDC offer SPAKE, by a traced kinit's stderr? None when no pre-authentication list
/// was processed (no KDC answered), so there is nothing to learn.
pub(super) fn spake_offered(stderr: &str) -> Option<bool> {
    let mut seen = None;
    for message in stderr.lines().filter_map(trace_message) {
        if let Some(types) = message.strip_prefix("Processing preauth types: ") {
            let offered = types.split(", ").any(|t| t.ends_with(PA_SPAKE));
            seen = Some(seen.unwrap_or(false) || offered);
        }
    }
    seen
}

/// The records of one principal (and realm configuration) in the executor's memory of what
/// KDCs offer.
pub(super) struct Memory {
    /// `<kinit_dir>/no-spake/<hash>`: present when the KDC was last seen not offering SPAKE.
    no_spake: PathBuf,
    principal: String,
}

impl Memory {
    /// The records of `principal` under `kinit_dir`. `realm_conf` names where its KDCs come from
    /// (the account's own realm, or the krb5.conf kinit reads): a principal without a realm
    /// may mean another account under another configuration.
    pub(super) fn new(kinit_dir: &Path, principal: &str, realm_conf: &str) -> Memory {
        let key = hex::encode(Sha256::digest(format!("{principal}\n{realm_conf}")));
        Memory {
            no_spake: kinit_dir.join("no-spake").join(&key[..32]),
            principal: principal.to_string(),
        }
    }

    /// Was the KDC last seen answering this principal without offering SPAKE?
    pub(super) fn spake_unoffered(&self) -> bool {
        self.no_spake.exists()
    }

    /// When the KDC was first seen not offering SPAKE, if that is what is remembered.
    pub(super) fn learned_at(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.no_spake).ok()?.modified().ok()
    }

    /// Remember what the KDC offered (the caller calls it when that differs from what is
    /// remembered). A failure to remember costs only speed (the module stays loaded, or the
    /// next kinit learns again), so it is logged, not returned.
    pub(super) fn learn(&self, offered: bool) {
        let result = if offered {
            tracing::info!(principal = %self.principal, "the KDC offers SPAKE: kinits load its module again");
            std::fs::remove_file(&self.no_spake).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        } else {
            self.remember_unoffered()
        };
        if let Err(e) = result {
            tracing::warn!("cannot update {}: {e}", self.no_spake.display());
        }
    }

    fn remember_unoffered(&self) -> std::io::Result<()> {
        let dir = self.no_spake.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let text = format!(
            "{}: the KDC did not offer SPAKE on {}\n",
            self.principal,
            chrono::Utc::now().to_rfc3339()
        );
        crate::atomic_file::write(
            &self.no_spake,
            text.as_bytes(),
            crate::atomic_file::Options::PRIVATE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(lines: &[&str]) -> String {
        lines
            .iter()
            .map(|l| format!("[14616] 1796593188.672907: {l}\n"))
            .collect()
    }

    #[test]
    fn the_trace_says_whether_the_kdc_offered_spake() {
        let table: [(&[&str], Option<bool>); 5] = [
            // MIT KDC without SPAKE, principal requiring pre-authentication.
            (
                &[
                    "Processing preauth types: PA-FX-FAST (136), PA-ETYPE-INFO2 (19), PA-ENC-TIMESTAMP (2), PA-FX-COOKIE (133)",
                    "Processing preauth types: PA-ETYPE-INFO2 (19)",
                ],
                Some(false),
            ),
            // The same KDC with spake_preauth_groups set.
            (
                &[
                    "Processing preauth types: PA-FX-FAST (136), PA-ETYPE-INFO2 (19), PA-SPAKE (151), PA-ENC-TIMESTAMP (2), PA-FX-COOKIE (133)",
                    "Processing preauth types: PA-ETYPE-INFO2 (19)",
                ],
                Some(true),
            ),
            // No pre-authentication required: only the reply's etype info.
            (
                &["Processing preauth types: PA-ETYPE-INFO2 (19)"],
                Some(false),
            ),
            // No KDC answered.
            (&["Initiating TCP connection to stream 127.0.0.1:2"], None),
            // A type number that merely contains 151 is not SPAKE.
            (&["Processing preauth types: PA-X (1510)"], Some(false)),
        ];
        for (lines, want) in table {
            assert_eq!(spake_offered(&trace(lines)), want, "{lines:?}");
        }
        // kinit's own words are not trace lines.
        assert_eq!(
            spake_offered("Processing preauth types: PA-SPAKE (151)\n"),
            None
        );
    }

    #[test]
    fn memory_is_per_principal_and_realm_configuration_and_follows_the_kdc() {
        let dir = tempfile::tempdir().unwrap();
        let kinit_dir = dir.path().join("kinit");
        let records = kinit_dir.join("no-spake");
        let a = Memory::new(&kinit_dir, "svc@A.TEST", "/etc/krb5.conf");
        let b = Memory::new(&kinit_dir, "svc@A.TEST", "B.TEST");
        assert!(!a.spake_unoffered());
        a.learn(false);
        assert!(a.spake_unoffered() && !b.spake_unoffered());
        let mode = std::fs::metadata(&records).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        // Learning it again (a racing kinit) changes nothing; nor does forgetting twice.
        a.learn(false);
        assert!(a.spake_unoffered());
        a.learn(true);
        a.learn(true);
        assert!(!a.spake_unoffered());
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    }
}
