//! Hosts that ship their audit trail (`[audit.s3]`) to an S3 server, and records to ship: the
//! fleet tests and the shipping benchmark set hosts up the same way.

use p3_executor::audit::{AuditEvent, AuditRecord, Decision, append};
use p3_executor::config::Config;

use crate::driver::Host;
use crate::s3::S3Server;

/// Add `[audit.s3]` shipping to `bucket`/`prefix` on `s3` to the host's config (GOVERNANCE
/// retention of one day, the host-side credentials in a profile of a file of the host's own,
/// plus `extra` settings), and create its state root (where its host id lives).
pub fn ship_to(h: &Host, s3: &S3Server, bucket: &str, prefix: &str, extra: &str) {
    let creds = h.root().join("ship-credentials");
    std::fs::write(
        &creds,
        format!(
            "[shipper]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key(),
            s3.secret_key()
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        format!(
            "{text}\n[audit.s3]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nendpoint_url = \"{}\"\npath_style = true\nprofile = \"shipper\"\nshared_credentials_file = \"{}\"\nobject_lock = {{ mode = \"GOVERNANCE\", retain_days = 1 }}\n{extra}\n",
            s3.endpoint(),
            creds.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(h.root().join("state")).unwrap();
}

/// Append `n` denial records of project `data-ml/fleet` to the host's audit log with the
/// executor's own `append`.
pub fn append_records(h: &Host, n: u64) {
    let cfg = Config::load(&h.config).unwrap();
    for i in 0..n {
        let mut r = AuditRecord::new(AuditEvent::Deny, Decision::Denied, format!("test {i}"));
        r.job_id = Some(9000 + i);
        r.project = Some("data-ml/fleet".into());
        append(&cfg.audit, r).unwrap();
    }
}
