//! Kerberos credentials against a real MIT KDC (see `p3_testkit::kdc`).
//!
//! Each test starts its own realm (about 0.1 s) so tests can rotate keys, delete principals or
//! stop the KDC without affecting each other.

use p3_testkit::kdc;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use kdc::Kdc;
use p3_executor::config::{Account, Config, KerberosConfig};
use p3_executor::credentials::kerberos::{self, KerberosError};

/// uid/gid standing in for a job user, and another job's.
const JOB: (u32, u32) = (65534, 65534);
const OTHER_JOB_UID: u32 = 65533;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A config with one account per `(name, lifetime, renewable)`, keytabs from the fixture.
fn config(kdc: &Kdc, accounts: &[(&str, &str, u64, u64)], timeout_secs: u64) -> Config {
    let mut toml = format!(
        "[kerberos]\nkrb5_config = {:?}\ntimeout_secs = {timeout_secs}\n",
        kdc.krb5_conf()
    );
    for (key, name, life, renew) in accounts {
        toml.push_str(&format!(
            "[accounts.{key}]\nprincipal = {:?}\nkeytab = {:?}\nticket_lifetime_secs = {life}\nrenewable_lifetime_secs = {renew}\n",
            kdc.principal(name),
            kdc.keytab(name)
        ));
    }
    Config::parse(&toml).unwrap()
}

fn account<'a>(cfg: &'a Config, key: &str) -> &'a Account {
    &cfg.accounts[key]
}

/// A root-owned 0711 credentials dir like `<state_root>/creds/<job>`: traversable, not
/// writable or listable by jobs.
fn creds_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o711)).unwrap();
    (dir, creds)
}

fn klist(kcfg: &KerberosConfig, ccache: &Path, uid: Option<u32>) -> std::process::Output {
    let mut cmd = Command::new("klist");
    cmd.arg("-c")
        .arg(format!("FILE:{}", ccache.display()))
        .env("LC_ALL", "C")
        .env("KRB5_CONFIG", kcfg.krb5_config.as_ref().unwrap());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn obtain_puts_the_accounts_ticket_in_a_cache_only_the_job_can_read() {
    let kdc = Kdc::start(&["svc_client_dev"]);
    let cfg = config(&kdc, &[("client_dev", "svc_client_dev", 3600, 86400)], 10);
    let (_t, creds) = creds_dir();
    let ccache = creds.join("krb5cc");
    let owner = is_root().then_some(JOB);

    let before = Utc::now();
    let ticket =
        kerberos::obtain(&cfg.kerberos, account(&cfg, "client_dev"), &ccache, owner).unwrap();

    assert_eq!(ticket.principal, "svc_client_dev@P3.TEST");
    let life = (ticket.expires - before).num_seconds();
    assert!((3595..=3605).contains(&life), "lifetime {life} s");
    let renew = (ticket.renew_until.expect("renewable") - before).num_seconds();
    assert!((86395..=86405).contains(&renew), "renewable {renew} s");

    let meta = std::fs::metadata(&ccache).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        files_in(&creds),
        vec!["krb5cc"],
        "no temp cache left behind"
    );

    let out = klist(&cfg.kerberos, &ccache, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Default principal: svc_client_dev@P3.TEST"),
        "{text}"
    );
    assert!(text.contains("krbtgt/P3.TEST@P3.TEST"), "{text}");
    assert!(text.contains("renew until"), "{text}");

    assert!(
        is_root(),
        "these tests run as root in CI: ownership is checked below"
    );
    assert_eq!((meta.uid(), meta.gid()), JOB);
    // As the job: its own cache is readable, the keytab is not.
    let out = klist(&cfg.kerberos, &ccache, Some(JOB.0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("svc_client_dev@P3.TEST"),
        "job cannot read its cache: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cat_keytab = Command::new("cat")
        .arg(kdc.keytab("svc_client_dev"))
        .uid(JOB.0)
        .gid(JOB.1)
        .output()
        .unwrap();
    assert!(
        !cat_keytab.status.success(),
        "the job could read the keytab"
    );
    // Another job's uid cannot read this job's cache, nor list or write the creds dir.
    let out = klist(&cfg.kerberos, &ccache, Some(OTHER_JOB_UID));
    assert!(!out.status.success(), "another job read this job's cache");
    let ls = Command::new("ls")
        .arg(&creds)
        .uid(JOB.0)
        .gid(JOB.1)
        .output()
        .unwrap();
    assert!(!ls.status.success(), "the creds dir is listable by the job");
}

#[test]
fn refresh_obtains_a_later_ticket_only_below_the_threshold() {
    let kdc = Kdc::start(&["svc_client_uat"]);
    let cfg = config(
        &kdc,
        &[
            ("short", "svc_client_uat", 120, 0),
            ("long", "svc_client_uat", 7200, 0),
        ],
        10,
    );
    let (_t, creds) = creds_dir();
    let ccache = creds.join("krb5cc");
    let owner = is_root().then_some(JOB);
    let short = kerberos::obtain(&cfg.kerberos, account(&cfg, "short"), &ccache, owner).unwrap();
    assert_eq!(short.renew_until, None, "renewable_lifetime_secs = 0");
    let long = account(&cfg, "long");

    // 120 s left, threshold 60 s: keep it.
    let kept = kerberos::refresh_if_needed(
        &cfg.kerberos,
        long,
        &ccache,
        owner,
        Duration::from_secs(60),
        Utc::now(),
        None,
    )
    .unwrap();
    assert_eq!(kept, None);
    assert_eq!(kerberos::read_ticket(&ccache).unwrap(), short);

    // 100 s later only ~20 s are left: below the threshold, a fresh ticket replaces it.
    let later = Utc::now() + chrono::Duration::seconds(100);
    let fresh = kerberos::refresh_if_needed(
        &cfg.kerberos,
        long,
        &ccache,
        owner,
        Duration::from_secs(60),
        later,
        None,
    )
    .unwrap()
    .expect("refreshed");
    assert!(
        fresh.expires > short.expires + chrono::Duration::seconds(7000),
        "{fresh:?} vs {short:?}"
    );
    assert_eq!(kerberos::read_ticket(&ccache).unwrap(), fresh);
    if is_root() {
        let meta = std::fs::metadata(&ccache).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            JOB,
            "refresh keeps the job's ownership"
        );
    }
    assert_eq!(files_in(&creds), vec!["krb5cc"]);
}

#[test]
fn refresh_replaces_a_missing_or_foreign_cache() {
    let kdc = Kdc::start(&["svc_a", "svc_b"]);
    let cfg = config(
        &kdc,
        &[("a", "svc_a", 3600, 0), ("b", "svc_b", 3600, 0)],
        10,
    );
    let (_t, creds) = creds_dir();
    let ccache = creds.join("krb5cc");
    let t = kerberos::refresh_if_needed(
        &cfg.kerberos,
        account(&cfg, "a"),
        &ccache,
        None,
        Duration::from_secs(60),
        Utc::now(),
        None,
    )
    .unwrap()
    .expect("missing cache is refreshed");
    assert_eq!(t.principal, "svc_a@P3.TEST");
    // The job replaced its cache with another principal's ticket: not the account's, refresh.
    let t = kerberos::refresh_if_needed(
        &cfg.kerberos,
        account(&cfg, "b"),
        &ccache,
        None,
        Duration::from_secs(60),
        Utc::now(),
        None,
    )
    .unwrap()
    .expect("foreign principal is refreshed");
    assert_eq!(t.principal, "svc_b@P3.TEST");
}

#[test]
fn destroy_removes_the_cache_and_is_idempotent() {
    let kdc = Kdc::start(&["svc_client_dev"]);
    let cfg = config(&kdc, &[("d", "svc_client_dev", 3600, 0)], 10);
    let (_t, creds) = creds_dir();
    let ccache = creds.join("krb5cc");
    kerberos::obtain(
        &cfg.kerberos,
        account(&cfg, "d"),
        &ccache,
        is_root().then_some(JOB),
    )
    .unwrap();
    assert!(ccache.exists());
    kerberos::destroy(&cfg.kerberos, &ccache).unwrap();
    assert!(!ccache.exists());
    assert!(files_in(&creds).is_empty());
    kerberos::destroy(&cfg.kerberos, &ccache).unwrap();
    // Without kdestroy the file is still removed.
    kerberos::obtain(&cfg.kerberos, account(&cfg, "d"), &ccache, None).unwrap();
    let mut no_tool = cfg.kerberos.clone();
    no_tool.kdestroy = "/nonexistent/kdestroy".into();
    kerberos::destroy(&no_tool, &ccache).unwrap();
    assert!(!ccache.exists());
}

#[track_caller]
fn assert_error_text(err: &KerberosError, needle: &str) {
    let text = err.to_string();
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
    assert!(text.contains("fix:"), "no advice in: {text}");
    let p3: p3_executor::error::Error = KerberosError::Cache {
        path: "x".into(),
        message: "y".into(),
    }
    .into();
    assert_eq!(p3.kind(), p3_executor::error::FailureKind::System);
}

#[test]
fn wrong_keytab_passes_on_kinits_text_and_leaves_no_cache() {
    let kdc = Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let mut cfg = config(&kdc, &[("uat", "svc_client_uat", 3600, 0)], 10);
    cfg.accounts.get_mut("uat").unwrap().keytab = kdc.keytab("svc_client_dev");
    let (_t, creds) = creds_dir();
    let ccache = creds.join("krb5cc");
    let err = kerberos::obtain(&cfg.kerberos, account(&cfg, "uat"), &ccache, None).unwrap_err();
    assert!(matches!(err, KerberosError::WrongKeytab { .. }), "{err:?}");
    assert_error_text(
        &err,
        "Keytab contains no suitable keys for svc_client_uat@P3.TEST",
    );
    assert!(files_in(&creds).is_empty(), "{:?}", files_in(&creds));

    // A missing keytab is the same class of problem, with kinit's words; a rotated key is
    // rejected by the KDC, and the message says so.
    cfg.accounts.get_mut("uat").unwrap().keytab = kdc.dir().join("missing.keytab");
    let err = kerberos::obtain(&cfg.kerberos, account(&cfg, "uat"), &ccache, None).unwrap_err();
    assert_error_text(&err, "not found");
    assert!(matches!(err, KerberosError::WrongKeytab { .. }), "{err:?}");
    cfg.accounts.get_mut("uat").unwrap().keytab = kdc.keytab("svc_client_uat");
    kdc.rotate_key("svc_client_uat");
    let err = kerberos::obtain(&cfg.kerberos, account(&cfg, "uat"), &ccache, None).unwrap_err();
    assert!(matches!(err, KerberosError::KeyRejected { .. }), "{err:?}");
    assert_error_text(&err, "Password incorrect");
    assert_error_text(&err, "password has probably been rotated");
}

#[test]
fn deleted_principal_is_reported_as_unknown() {
    let kdc = Kdc::start(&["svc_gone"]);
    let cfg = config(&kdc, &[("gone", "svc_gone", 3600, 0)], 10);
    kdc.delete_principal("svc_gone");
    let (_t, creds) = creds_dir();
    let err =
        kerberos::obtain(&cfg.kerberos, account(&cfg, "gone"), &creds.join("c"), None).unwrap_err();
    assert!(
        matches!(err, KerberosError::PrincipalUnknown { .. }),
        "{err:?}"
    );
    assert_error_text(&err, "not found in Kerberos database");
}

#[test]
fn kdc_down_says_cannot_contact_any_kdc() {
    let mut kdc = Kdc::start(&["svc_client_dev"]);
    let cfg = config(&kdc, &[("d", "svc_client_dev", 3600, 0)], 10);
    kdc.stop();
    let (_t, creds) = creds_dir();
    let err =
        kerberos::obtain(&cfg.kerberos, account(&cfg, "d"), &creds.join("c"), None).unwrap_err();
    assert!(
        matches!(err, KerberosError::KdcUnreachable { .. }),
        "{err:?}"
    );
    assert_error_text(&err, "Cannot contact any KDC for realm 'P3.TEST'");
    assert!(files_in(&creds).is_empty());
}

#[test]
fn a_mute_kdc_is_cut_off_by_our_timeout() {
    // The keytab comes from a real realm; the client config points at a listener that accepts
    // connections and never answers, where MIT kinit alone would wait about 27 s.
    let kdc = Kdc::start(&["svc_client_dev"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn); // keep it open, say nothing
        }
    });
    let mute_conf = kdc.dir().join("mute-krb5.conf");
    kdc::write_krb5_conf(&mute_conf, port);
    let mut cfg = config(&kdc, &[("d", "svc_client_dev", 3600, 0)], 2);
    cfg.kerberos.krb5_config = Some(mute_conf);
    let (_t, creds) = creds_dir();

    let start = Instant::now();
    let err =
        kerberos::obtain(&cfg.kerberos, account(&cfg, "d"), &creds.join("c"), None).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, KerberosError::Timeout { secs: 2, .. }),
        "{err:?}"
    );
    assert_error_text(&err, "did not finish within 2 s");
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "timeout fired late: {elapsed:?}"
    );
    assert!(files_in(&creds).is_empty());
}

#[test]
fn missing_kinit_names_the_package() {
    let kdc = Kdc::start(&[]);
    let mut cfg = config(&kdc, &[], 5);
    cfg.kerberos.kinit = "/nonexistent/kinit".into();
    let acct: Account = toml::from_str("principal = \"x\"\nkeytab = \"/k\"\n").unwrap();
    let err = kerberos::obtain(&cfg.kerberos, &acct, Path::new("/tmp/p3-never"), None).unwrap_err();
    assert!(matches!(err, KerberosError::ToolMissing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("apt-get install krb5-user"),
        "{err}"
    );
}

#[test]
fn keytab_fingerprint_is_the_sha256_of_the_file() {
    let kdc = Kdc::start(&["svc_a", "svc_b"]);
    let fp = kerberos::keytab_fingerprint(&kdc.keytab("svc_a")).unwrap();
    let sha = Command::new("sha256sum")
        .arg(kdc.keytab("svc_a"))
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(fp, expected);
    assert_eq!(fp.len(), 64);
    assert_ne!(
        fp,
        kerberos::keytab_fingerprint(&kdc.keytab("svc_b")).unwrap()
    );
    assert!(kerberos::keytab_fingerprint(&kdc.dir().join("none")).is_err());
}

#[test]
fn keytab_principals_lists_what_the_keytab_holds() {
    let kdc = Kdc::start(&["svc_a"]);
    let cfg = config(&kdc, &[], 5);
    assert_eq!(
        kerberos::keytab_principals(&cfg.kerberos, &kdc.keytab("svc_a")).unwrap(),
        vec!["svc_a@P3.TEST"]
    );
    let err =
        kerberos::keytab_principals(&cfg.kerberos, &kdc.dir().join("none.keytab")).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn check_flags_readable_keytabs_and_principal_mismatch() {
    let kdc = Kdc::start(&["svc_ok", "svc_open", "svc_other"]);
    let mut cfg = config(
        &kdc,
        &[
            ("ok", "svc_ok", 3600, 0),
            ("open", "svc_open", 3600, 0),
            ("mismatch", "svc_ok", 3600, 0),
        ],
        5,
    );
    cfg.accounts.get_mut("mismatch").unwrap().keytab = kdc.keytab("svc_other");
    std::fs::set_permissions(
        kdc.keytab("svc_open"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    cfg.accounts.insert(
        "absent".into(),
        toml::from_str(&format!(
            "principal = \"svc_x@P3.TEST\"\nkeytab = {:?}\n",
            kdc.dir().join("absent.keytab")
        ))
        .unwrap(),
    );

    let findings = p3_executor::check::kerberos::check(&cfg);
    // Each readable keytab also gets an `ok:` line (key versions, age): problems only here.
    let text: Vec<String> = findings
        .iter()
        .filter(|f| !matches!(f.severity, p3_executor::check::finding::Severity::Info))
        .map(|f| f.problem.clone())
        .collect();
    let about = |acct: &str| -> Vec<&String> {
        text.iter()
            .filter(|p| p.starts_with(&format!("accounts.{acct}:")))
            .collect()
    };
    assert!(about("ok").is_empty(), "{text:#?}");
    let open = about("open");
    assert_eq!(open.len(), 1, "{text:#?}");
    assert!(
        open[0].contains("mode 644") && open[0].contains("read it"),
        "{open:?}"
    );
    let mismatch = about("mismatch");
    assert_eq!(mismatch.len(), 1, "{text:#?}");
    assert!(
        mismatch[0].contains("holds no key for svc_ok@P3.TEST")
            && mismatch[0].contains("it holds: svc_other@P3.TEST"),
        "{mismatch:?}"
    );
    assert_eq!(about("absent").len(), 1, "{text:#?}");
    assert!(
        findings
            .iter()
            .filter(|f| !matches!(f.severity, p3_executor::check::finding::Severity::Info))
            .all(|f| !f.fix.is_empty())
    );

    // A keytab owned by the job user is readable by every job.
    if is_root() {
        cfg.job_user = "nobody".into();
        std::os::unix::fs::chown(kdc.keytab("svc_ok"), Some(JOB.0), Some(JOB.1)).unwrap();
        let text: Vec<String> = p3_executor::check::kerberos::check(&cfg)
            .into_iter()
            .map(|f| f.problem)
            .collect();
        assert!(
            text.iter()
                .any(|p| p.starts_with("accounts.ok:") && p.contains("owned by job_user")),
            "{text:#?}"
        );
    }
}

/// A client krb5.conf for the fixture's realm that asks for 7-day renewable tickets by
/// default, globally and for the realm (MIT consults the realm's subsection first), as many
/// sites' krb5.conf files do.
fn renewing_krb5_conf(kdc: &Kdc) -> PathBuf {
    let text = std::fs::read_to_string(kdc.krb5_conf()).unwrap();
    assert!(text.contains("[libdefaults]\n"), "{text}");
    let text = text.replacen(
        "[libdefaults]\n",
        "[libdefaults]\n renew_lifetime = 7d\n P3.TEST = {\n  renew_lifetime = 7d\n }\n",
        1,
    );
    let path = kdc.dir().join("renewing-krb5.conf");
    std::fs::write(&path, text).unwrap();
    path
}

fn kinit_renew(conf: &Path, ccache: &Path) -> std::process::Output {
    Command::new("kinit")
        .arg("-R")
        .arg("-c")
        .arg(format!("FILE:{}", ccache.display()))
        .env("LC_ALL", "C")
        .env("KRB5_CONFIG", conf)
        .env_remove("KRB5CCNAME")
        .output()
        .unwrap()
}

#[test]
fn tickets_are_not_renewable_unless_the_account_opts_in_whatever_krb5_conf_says() {
    let kdc = Kdc::start(&["svc_client_dev", "svc_client_uat"]);
    let mut cfg = config(
        &kdc,
        &[
            ("plain", "svc_client_dev", 3600, 0),
            ("opted_in", "svc_client_uat", 3600, 86400),
        ],
        10,
    );
    let conf = renewing_krb5_conf(&kdc);
    cfg.kerberos.krb5_config = Some(conf.clone());
    // Without the executor's override kinit asks for a renewable ticket: the premise holds.
    let (_t, creds) = creds_dir();
    let plain_kinit = creds.join("plain-kinit");
    let out = Command::new("kinit")
        .args(["-kt"])
        .arg(kdc.keytab("svc_client_dev"))
        .arg("-c")
        .arg(format!("FILE:{}", plain_kinit.display()))
        .arg(kdc.principal("svc_client_dev"))
        .env("KRB5_CONFIG", &conf)
        .env_remove("KRB5CCNAME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        kerberos::read_ticket(&plain_kinit)
            .unwrap()
            .renew_until
            .is_some()
    );
    std::fs::remove_file(&plain_kinit).unwrap();

    let ccache = creds.join("krb5cc");
    let owner = is_root().then_some(JOB);
    let ticket = kerberos::obtain(&cfg.kerberos, account(&cfg, "plain"), &ccache, owner).unwrap();
    assert_eq!(ticket.renew_until, None, "{ticket:?}");
    let out = klist(&cfg.kerberos, &ccache, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("krbtgt/P3.TEST@P3.TEST"), "{text}");
    assert!(!text.contains("renew until"), "{text}");
    let renew = kinit_renew(&conf, &ccache);
    assert!(!renew.status.success(), "kinit -R renewed: {renew:?}");
    // The one-kinit profile is gone with the temporary cache.
    assert_eq!(files_in(&creds), vec!["krb5cc"]);

    // An account that opts in still gets a renewable ticket, for its own renewable lifetime.
    let before = Utc::now();
    let ticket =
        kerberos::obtain(&cfg.kerberos, account(&cfg, "opted_in"), &ccache, owner).unwrap();
    let renew = (ticket.renew_until.expect("renewable") - before).num_seconds();
    assert!((86395..=86405).contains(&renew), "renewable {renew} s");
    let out = klist(&cfg.kerberos, &ccache, None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("renew until"));
    let renew = kinit_renew(&conf, &ccache);
    assert!(renew.status.success(), "{renew:?}");
    assert_eq!(files_in(&creds), vec!["krb5cc"]);
}

#[test]
fn a_renewable_ticket_the_override_cannot_prevent_is_refused() {
    // A principal without its realm: the override cannot name the realm whose subsection
    // asks for renewable tickets, so the read-back check must catch what comes back.
    let kdc = Kdc::start(&["svc_client_dev"]);
    let mut cfg = config(&kdc, &[("d", "svc_client_dev", 3600, 0)], 10);
    cfg.kerberos.krb5_config = Some(renewing_krb5_conf(&kdc));
    cfg.accounts.get_mut("d").unwrap().principal = "svc_client_dev".into();
    let (_t, creds) = creds_dir();
    let err = kerberos::obtain(
        &cfg.kerberos,
        account(&cfg, "d"),
        &creds.join("krb5cc"),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, KerberosError::UnwantedRenewable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("fix:"), "{err}");
    assert!(files_in(&creds).is_empty(), "{:?}", files_in(&creds));
}

#[test]
fn obtain_capped_caps_the_lifetime_at_the_jobs_deadline() {
    let kdc = Kdc::start(&["svc_client_dev"]);
    let cfg = config(
        &kdc,
        &[
            ("long", "svc_client_dev", 36000, 0),
            ("short", "svc_client_dev", 600, 0),
        ],
        10,
    );
    let (_t, creds) = creds_dir();
    let ccache = creds.join("krb5cc");
    for (acct, cap, want) in [("long", 1500, 1500), ("short", 1500, 600)] {
        let before = Utc::now();
        let t = kerberos::obtain_capped(
            &cfg.kerberos,
            account(&cfg, acct),
            &ccache,
            None,
            Some(Duration::from_secs(cap)),
        )
        .unwrap();
        let life = (t.expires - before).num_seconds();
        assert!((want - 5..=want + 1).contains(&life), "{acct}: {life} s");
        assert_eq!(t.renew_until, None);
    }
}

/// A `kinit` that runs the real one and appends what it got to `log`: a `=== kinit` line, the
/// profile put in front of krb5.conf (if any), kinit's stderr (with the trace) and its status.
fn logging_kinit(dir: &Path, log: &Path) -> PathBuf {
    let real = kdc::find_tool("kinit").expect("kinit");
    let script = dir.join("kinit");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nerr=$(mktemp)\n{real:?} \"$@\" 2>\"$err\"; rc=$?\n{{ echo '=== kinit'; first=\"${{KRB5_CONFIG%%:*}}\"; [ \"$first\" != \"$KRB5_CONFIG\" ] && cat \"$first\"; cat \"$err\"; echo \"exit $rc\"; }} >> {log:?}\ncat \"$err\" >&2; rm -f \"$err\"; exit $rc\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The kinits logged since the last call, each as (SPAKE module left out, SPAKE used, success).
fn kinits_since(log: &Path, seen: &mut usize) -> Vec<(bool, bool, bool)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<(bool, bool, bool)> = text
        .split("=== kinit\n")
        .skip(1)
        .map(|k| {
            (
                k.contains("disable = spake"),
                k.contains("Sending SPAKE response"),
                k.contains("exit 0"),
            )
        })
        .collect();
    let new = all[*seen..].to_vec();
    *seen = all.len();
    new
}

#[test]
fn kinit_leaves_the_spake_module_out_while_the_kdc_does_not_offer_it() {
    let mut kdc = Kdc::start(&["svc_client_dev"]);
    // SPAKE is offered only to principals that must pre-authenticate.
    kdc.kadmin(&format!(
        "modprinc +requires_preauth {}",
        kdc.principal("svc_client_dev")
    ));
    let mut cfg = config(&kdc, &[("dev", "svc_client_dev", 3600, 0)], 10);
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("kinits.log");
    cfg.kerberos.kinit = logging_kinit(scratch.path(), &log).display().to_string();
    cfg.state_root = scratch.path().join("state");
    let kinit_dir = p3_executor::credentials::kerberos::kinit_dir(&cfg.state_root);
    let (_t, creds) = creds_dir();
    let ccache = creds.join("krb5cc");
    let opts = kerberos::KinitOptions {
        kinit_dir: Some(&kinit_dir),
        ..Default::default()
    };
    let obtain = |cfg: &Config| {
        kerberos::obtain_with(&cfg.kerberos, account(cfg, "dev"), &ccache, &opts)
            .map(|o| o.ticket.principal)
    };
    let records = || {
        std::fs::read_dir(kinit_dir.join("no-spake"))
            .map(|d| d.count())
            .unwrap_or_default()
    };
    let mut seen = 0;
    let (out, used, ok) = (true, true, true);
    let (loaded, unused, failed) = (false, false, false);

    // A KDC that does not offer SPAKE: the first kinit loads the module and learns, the next
    // leaves it out.
    assert_eq!(obtain(&cfg).unwrap(), kdc.principal("svc_client_dev"));
    assert_eq!(kinits_since(&log, &mut seen), [(loaded, unused, ok)]);
    assert_eq!(records(), 1);
    obtain(&cfg).unwrap();
    assert_eq!(kinits_since(&log, &mut seen), [(out, unused, ok)]);
    // `check` says so.
    let spake_lines = |cfg: &Config| -> Vec<String> {
        p3_executor::check::kerberos::check(cfg)
            .into_iter()
            .map(|f| f.problem)
            .filter(|p| p.contains("SPAKE"))
            .collect()
    };
    let lines = spake_lines(&cfg);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "accounts.dev: kinits for {} leave the SPAKE module out: the KDC did not offer SPAKE on ",
            kdc.principal("svc_client_dev")
        )),
        "{lines:?}"
    );
    // `spake = "always"` loads it whatever was learned, and learns nothing.
    cfg.kerberos.spake = p3_executor::config::Spake::Always;
    obtain(&cfg).unwrap();
    assert_eq!(kinits_since(&log, &mut seen), [(loaded, unused, ok)]);
    assert_eq!(records(), 1);
    cfg.kerberos.spake = p3_executor::config::Spake::Auto;

    // The KDC now offers SPAKE: the kinit without the module still succeeds (encrypted
    // timestamp), sees the offer, and the next one loads the module and uses SPAKE.
    kdc.offer_spake(true).unwrap();
    obtain(&cfg).unwrap();
    assert_eq!(records(), 0);
    assert_eq!(spake_lines(&cfg), Vec::<String>::new());
    obtain(&cfg).unwrap();
    assert_eq!(
        kinits_since(&log, &mut seen),
        [(out, unused, ok), (loaded, used, ok)]
    );

    // Learned again once the KDC stops offering it. Then the operator hardens krb5.conf with
    // `disable_encrypted_timestamp` (MIT's advice where the KDCs offer SPAKE) and the KDC
    // offers SPAKE: the kinit without the module has no mechanism left and fails, and the same
    // obtain runs kinit again with the module, which succeeds.
    let host_conf = scratch.path().join("krb5.conf");
    cfg.kerberos.krb5_config = Some(host_conf.clone());
    kdc.offer_spake(false).unwrap();
    std::fs::copy(kdc.krb5_conf(), &host_conf).unwrap();
    obtain(&cfg).unwrap();
    obtain(&cfg).unwrap();
    assert_eq!(
        kinits_since(&log, &mut seen),
        [(loaded, unused, ok), (out, unused, ok)]
    );
    kdc.offer_spake(true).unwrap();
    let text = std::fs::read_to_string(kdc.krb5_conf()).unwrap();
    let text = text.replacen(
        "  kdc = ",
        "  disable_encrypted_timestamp = true\n  kdc = ",
        1,
    );
    std::fs::write(&host_conf, text).unwrap();
    assert_eq!(obtain(&cfg).unwrap(), kdc.principal("svc_client_dev"));
    assert_eq!(
        kinits_since(&log, &mut seen),
        [(out, unused, failed), (loaded, used, ok)]
    );
    assert_eq!(records(), 0);
    // No profile or temporary cache is left beside the job's cache: the profiles are kept in
    // the kinit dir, one per text (not renewable; and without the module), root-only.
    assert_eq!(files_in(&creds), vec!["krb5cc"]);
    let profiles = kinit_dir.join("profiles");
    assert_eq!(files_in(&profiles).len(), 2, "{:?}", files_in(&profiles));
    for p in files_in(&profiles) {
        let mode = std::fs::metadata(profiles.join(p)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
