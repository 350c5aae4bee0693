//! Accounts with their own Kerberos realm (`[accounts.<name>.kerberos]`, an AD domain each)
//! against real MIT KDCs: two realms at once, DC failover, the per-job krb5.conf winning over
//! the host file, and `check --probe`.
//!
//! SRV discovery (`dns_lookup_kdc`) is not exercised here: pointing MIT's resolver at a test
//! zone would mean changing the host's resolver. The krb5.conf it produces is table-tested in
//! `credentials::kerberos::realm_conf` instead.

use crate::common::{self as runner, tokens};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p3_executor::config::Config;
use p3_executor::credentials::kerberos::realm_conf;
use p3_testkit::driver::{Host, Job};
use p3_testkit::kdc::{self, Kdc};
use runner::JobResult;
use serde_json::Value;
use tokens::{ISSUER, JwksServer, TokenMinter, gitlab_claims};

const PROJECT: &str = "data-ml/forecast";

/// Two forests on loopback: DEV.TEST (svc_dev) and PROD.TEST (svc_prod), each with its KDC.
struct Forests {
    dev: Kdc,
    prod: Kdc,
    minter: TokenMinter,
    jwks: JwksServer,
    /// Holds the host's krb5.conf, readable by jobs.
    etc: tempfile::TempDir,
}

impl Forests {
    fn start() -> Forests {
        let dev = Kdc::start_named("DEV.TEST", &["svc_dev"]);
        let prod = Kdc::start_named("PROD.TEST", &["svc_prod"]);
        let minter = TokenMinter::new();
        let jwks = JwksServer::start(&minter.jwks_json());
        let etc = tempfile::Builder::new()
            .prefix("p3-etc-")
            .tempdir_in(p3_testkit::driver::scratch_dir())
            .unwrap();
        set_mode(etc.path(), 0o755);
        // A host file that disagrees with every account setting that matters: another default
        // realm, UDP, DNS lookups, and a dead DC for DEV.TEST. The job's own settings must win.
        let host_conf = etc.path().join("krb5.conf");
        std::fs::write(
            &host_conf,
            format!(
                "[libdefaults]\n default_realm = HOST.TEST\n dns_lookup_kdc = true\n rdns = true\n udp_preference_limit = 0\n\n[realms]\n HOST.TEST = {{\n  kdc = 127.0.0.1:{dead}\n }}\n DEV.TEST = {{\n  kdc = 127.0.0.1:{dead}\n }}\n",
                dead = kdc::free_port().unwrap()
            ),
        )
        .unwrap();
        set_mode(&host_conf, 0o644);
        Forests {
            dev,
            prod,
            minter,
            jwks,
            etc,
        }
    }

    fn host_conf(&self) -> PathBuf {
        self.etc.path().join("krb5.conf")
    }

    /// A host config with accounts `dev` and `prod` (DCs as given) and a devstage for each.
    fn config(&self, dev_kdcs: &[String], prod_kdcs: &[String], extra: &str) -> String {
        format!(
            r#"
[identity]
gitlab_url = "{ISSUER}"
audience = "p3-executor"
jwks_url = "{jwks}"

[kerberos]
krb5_config = "{host_conf}"
timeout_secs = 15
{extra}

[accounts.dev]
principal = "{dev}"
keytab = "{dev_kt}"
[accounts.dev.kerberos]
realm = "DEV.TEST"
kdcs = {dev_kdcs:?}

[accounts.prod]
principal = "{prod}"
keytab = "{prod_kt}"
[accounts.prod.kerberos]
realm = "PROD.TEST"
kdcs = {prod_kdcs:?}

[devstages.dev]
deploy_account = "dev"
projects = ["data-ml/*"]

[devstages.prod]
deploy_account = "prod"
projects = ["data-ml/*"]
"#,
            jwks = self.jwks.url,
            host_conf = self.host_conf().display(),
            dev = self.dev.principal("svc_dev"),
            dev_kt = self.dev.keytab("svc_dev").display(),
            prod = self.prod.principal("svc_prod"),
            prod_kt = self.prod.keytab("svc_prod").display(),
        )
    }

    fn job(&self, host: &Host, id: u64, devstage: &str, script: &str) -> Job {
        let claims = gitlab_claims(ISSUER, "p3-executor", id, PROJECT, "main", "branch", true);
        host.job(id, script)
            .var("P3_ID_TOKEN", &self.minter.mint(claims))
            .var("P3_DEVSTAGE", devstage)
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn kdc_addr(kdc: &Kdc) -> String {
    format!("127.0.0.1:{}", kdc.port())
}

fn audit(host: &Host) -> Vec<Value> {
    std::fs::read_to_string(host.root().join("audit/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn grant_record(host: &Host, job: u64) -> Value {
    audit(host)
        .into_iter()
        .find(|r| r["job_id"] == job && r["event"] == "grant")
        .unwrap_or_else(|| panic!("no grant record for job {job}: {:#?}", audit(host)))
}

/// What a job of one realm shows: its principal, its krb5.conf, and what happens when it
/// reaches for the other realm with that config (`other` = a principal there).
fn show_script(other: &str) -> String {
    format!(
        "klist | grep -i 'default principal'\n\
         echo \"conf=$KRB5_CONFIG\"\n\
         echo '--- conf'; cat \"$KRB5_CONFIG\"; echo '--- end'\n\
         if kinit -c MEMORY:other {other} </dev/null; then echo OTHER-REALM-REACHED; fi\n\
         if kvno {other}; then echo OTHER-REALM-TICKET; fi\n\
         klist | grep -i 'default principal'\n"
    )
}

/// The job's krb5.conf as the job printed it.
fn printed_conf(log: &str) -> &str {
    let start = log.find("--- conf\n").expect("conf printed") + "--- conf\n".len();
    let end = log[start..].find("--- end").expect("conf end") + start;
    &log[start..end]
}

#[test]
fn concurrent_jobs_of_two_realms_each_get_their_own_realm_only() {
    let forests = Forests::start();
    let (dev_dc, prod_dc) = (kdc_addr(&forests.dev), kdc_addr(&forests.prod));
    let host = runner::host(&forests.config(
        std::slice::from_ref(&dev_dc),
        std::slice::from_ref(&prod_dc),
        "",
    ));
    let dev_principal = forests.dev.principal("svc_dev");
    let prod_principal = forests.prod.principal("svc_prod");

    // Three jobs of each realm at once.
    let jobs: Vec<(Job, &str)> = (0..6)
        .map(|i| {
            let id = 8100 + i;
            if i % 2 == 0 {
                let script = show_script(&prod_principal);
                (forests.job(&host, id, "dev", &script), "dev")
            } else {
                let script = show_script(&dev_principal);
                (forests.job(&host, id, "prod", &script), "prod")
            }
        })
        .collect();
    let done: Vec<(Job, &str, JobResult)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(mut job, realm)| {
                s.spawn(move || {
                    let result = job.run_all();
                    (job, realm, result)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (job, which, result) in &done {
        assert_eq!(*result, JobResult::Success, "{}", job.log);
        let (own, own_dc, other_dc, other_realm) = match *which {
            "dev" => (&dev_principal, &dev_dc, &prod_dc, "PROD.TEST"),
            _ => (&prod_principal, &prod_dc, &dev_dc, "DEV.TEST"),
        };
        let log = &job.log;
        // The right principal, before and after reaching for the other realm.
        assert_eq!(
            log.matches(&format!("Default principal: {own}")).count(),
            2,
            "{log}"
        );
        // KRB5_CONFIG is the job's own file in its credentials dir...
        let conf_path = host
            .root()
            .join(format!("state/creds/{}/krb5.conf", job.id));
        assert!(
            log.contains(&format!("conf={}", conf_path.display())),
            "{log}"
        );
        // ...naming only its realm's DC, with the host file after it.
        let conf = printed_conf(log);
        let realm = own.split('@').nth(1).unwrap();
        assert!(
            conf.contains(&format!("default_realm = {realm}\n")),
            "{conf}"
        );
        assert!(conf.contains(&format!("kdc = {own_dc}\n")), "{conf}");
        assert!(!conf.contains(other_dc.as_str()), "{conf}");
        assert!(!conf.contains(other_realm), "{conf}");
        assert!(
            conf.ends_with(&format!("include {}\n", forests.host_conf().display())),
            "{conf}"
        );
        // The other realm is out of reach with this config: its DCs are not in it (DNS
        // lookups are off although the host file turns them on; for DEV.TEST the host file's
        // dead DC is all a PROD job finds), and there is no trust between the realms.
        assert!(
            log.contains(&format!(
                "kinit: Cannot find KDC for realm \"{other_realm}\" while getting initial credentials"
            )) || log.contains(&format!(
                "kinit: Cannot contact any KDC for realm '{other_realm}' while getting initial credentials"
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "kvno: Server krbtgt/{other_realm}@{realm} not found"
            )),
            "{log}"
        );
        assert!(!log.contains("OTHER-REALM-REACHED"), "{log}");
        assert!(!log.contains("OTHER-REALM-TICKET"), "{log}");
        // The grant records the DC that answered.
        let rec = grant_record(&host, job.id);
        assert_eq!(rec["principal"], own.as_str(), "{rec}");
        assert_eq!(rec["extra"]["kdc"], own_dc.as_str(), "{rec}");
        assert!(rec["extra"].get("kdc_unanswered").is_none(), "{rec}");
        assert!(
            !host.root().join(format!("state/creds/{}", job.id)).exists(),
            "the creds dir outlived the job"
        );
    }
    let verify = host.exec(&["audit", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

/// Grant `dev` with `first` listed before the realm's real DC; returns how long prepare took
/// and the grant's audit record.
fn grant_after(forests: &Forests, first: &str, id: u64) -> (Duration, Value, Job, Host) {
    let dev_dc = kdc_addr(&forests.dev);
    let host = runner::host(&forests.config(
        &[first.to_string(), dev_dc.clone()],
        &[kdc_addr(&forests.prod)],
        "",
    ));
    let mut job = forests.job(
        &host,
        id,
        "dev",
        "klist | grep -i 'default principal'\ncat \"$KRB5_CONFIG\"",
    );
    assert_eq!(job.config(), 0, "{}", job.log);
    let start = Instant::now();
    let code = job.prepare();
    let took = start.elapsed();
    assert_eq!(code, 0, "{}", job.log);
    let rec = grant_record(&host, id);
    (took, rec, job, host)
}

#[test]
fn failover_skips_a_dc_that_refuses_the_connection() {
    let forests = Forests::start();
    let closed = format!("127.0.0.1:{}", kdc::free_port().unwrap());
    let (took, rec, mut job, _host) = grant_after(&forests, &closed, 8201);
    eprintln!("failover past a refusing DC: prepare took {took:?}");
    assert_eq!(rec["extra"]["kdc"], kdc_addr(&forests.dev), "{rec}");
    assert_eq!(
        rec["extra"]["kdc_unanswered"],
        serde_json::json!([closed]),
        "{rec}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The job's own clients fail over the same way, with the same file.
    assert_eq!(job.run_stage("get_sources"), 0, "{}", job.log);
    assert_eq!(job.run_stage("build_script"), 0, "{}", job.log);
    assert!(
        job.log.contains(&format!(
            "Default principal: {}",
            forests.dev.principal("svc_dev")
        )),
        "{}",
        job.log
    );
    assert!(
        job.log.contains(&format!(
            "  kdc = {closed}\n  kdc = {}\n",
            kdc_addr(&forests.dev)
        )),
        "{}",
        job.log
    );
    assert_eq!(job.cleanup(), 0, "{}", job.log);
}

#[test]
fn failover_skips_a_mute_dc_within_the_timeout() {
    let forests = Forests::start();
    // Accepts connections (the kernel completes them) and never answers.
    let (mute, _) = tokens::silent_listener();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let (took, rec, mut job, _host) = grant_after(&forests, &mute_addr, 8202);
    eprintln!("failover past a mute DC: prepare took {took:?}");
    assert_eq!(rec["extra"]["kdc"], kdc_addr(&forests.dev), "{rec}");
    assert_eq!(
        rec["extra"]["kdc_unanswered"],
        serde_json::json!([mute_addr]),
        "{rec}"
    );
    // MIT kinit gives a DC that accepted the connection 10 s before it asks the next one;
    // kerberos.timeout_secs = 15 leaves room for that.
    assert!(took >= Duration::from_secs(9), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(job.cleanup(), 0, "{}", job.log);
    drop(mute);
}

#[test]
fn refresh_uses_the_jobs_krb5_conf() {
    let forests = Forests::start();
    let dev_dc = kdc_addr(&forests.dev);
    // A 60 s ticket against a 1 h threshold: every stage obtains a fresh one.
    let config = forests
        .config(
            std::slice::from_ref(&dev_dc),
            &[kdc_addr(&forests.prod)],
            "",
        )
        .replace(
            "[accounts.dev.kerberos]",
            "ticket_lifetime_secs = 60\n[accounts.dev.kerberos]",
        );
    let host = runner::host(&config);
    let mut job = forests.job(&host, 8301, "dev", "klist | grep -i 'default principal'");
    assert_eq!(job.run_all(), JobResult::Success, "{}", job.log);
    let renewals: Vec<Value> = audit(&host)
        .into_iter()
        .filter(|r| r["job_id"] == 8301 && r["event"] == "renew")
        .collect();
    assert!(!renewals.is_empty(), "{:#?}", audit(&host));
    for r in &renewals {
        assert_eq!(r["decision"], "succeeded", "{r}");
        // Traced through the job's krb5.conf: the host file's dead DEV.TEST DC is never used.
        assert_eq!(r["extra"]["kdc"], dev_dc.as_str(), "{r}");
    }
}

/// MIT's profile returns the first value it reads, and an include is read where it stands:
/// the account's settings win over the host file only because they come before the include.
#[test]
fn the_accounts_settings_win_over_the_host_file() {
    let forests = Forests::start();
    let dev_dc = kdc_addr(&forests.dev);
    let cfg = Config::parse(&forests.config(
        std::slice::from_ref(&dev_dc),
        &[kdc_addr(&forests.prod)],
        "",
    ))
    .unwrap();
    let settings = cfg.accounts["dev"].kerberos.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = realm_conf::write_job_conf(&cfg.kerberos, &settings, dir.path()).unwrap();
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.ends_with(&format!("include {}\n", forests.host_conf().display())),
        "{text}"
    );

    // A principal without a realm: the default realm decides which one kinit asks for.
    let kinit = |krb5_config: &Path| {
        Command::new("kinit")
            .args(["-k", "-t"])
            .arg(forests.dev.keytab("svc_dev"))
            .args(["-c", "MEMORY:t", "svc_dev"])
            .env("KRB5_CONFIG", krb5_config)
            .env("KRB5_TRACE", "/dev/stderr")
            .env("LC_ALL", "C")
            .env_remove("KRB5CCNAME")
            .output()
            .unwrap()
    };
    let out = kinit(&conf);
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    // default_realm is ours, not HOST.TEST.
    assert!(
        trace.contains("Getting initial credentials for svc_dev@DEV.TEST"),
        "{trace}"
    );
    // udp_preference_limit = 1 is ours (the host file allows UDP): TCP straight away.
    assert!(
        trace.contains(&format!("Sending TCP request to stream {dev_dc}")),
        "{trace}"
    );
    assert!(!trace.contains("UDP"), "{trace}");
    // Our DC is asked first and answers; the host file's DEV.TEST DC is never needed.
    let answered = p3_executor::credentials::kerberos::parse_kdc_trace(&trace);
    assert_eq!(
        answered.answered.as_deref(),
        Some(dev_dc.as_str()),
        "{trace}"
    );
    assert!(answered.unanswered.is_empty(), "{trace}");

    // The same lines with the include first: the host file's values win.
    let swapped = dir.path().join("include-first.conf");
    let body = text.replace(
        &format!("\ninclude {}\n", forests.host_conf().display()),
        "\n",
    );
    std::fs::write(
        &swapped,
        format!("include {}\n{body}", forests.host_conf().display()),
    )
    .unwrap();
    let out = kinit(&swapped);
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{trace}");
    assert!(
        trace.contains("Getting initial credentials for svc_dev@HOST.TEST"),
        "{trace}"
    );
}

#[test]
fn check_validates_realms_and_probe_names_the_dc_that_answered() {
    let forests = Forests::start();
    let closed = format!("127.0.0.1:{}", kdc::free_port().unwrap());
    let dev_dc = kdc_addr(&forests.dev);
    // prod's only DC is down.
    let host = runner::host(&forests.config(
        &[closed.clone(), dev_dc.clone()],
        std::slice::from_ref(&closed),
        "",
    ));
    let out = host.exec(&["check", "--probe"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "ok: accounts.dev.kerberos: jobs get a krb5.conf of their own for realm DEV.TEST: DCs {closed}, {dev_dc} (in this order), then {}",
            forests.host_conf().display()
        )),
        "{text}"
    );
    let probe = text
        .lines()
        .find(|l| l.starts_with("ok: accounts.dev: probe kinit as svc_dev@DEV.TEST answered by"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        probe.contains(&format!("answered by {dev_dc} in ")),
        "{probe}"
    );
    assert!(
        probe.ends_with(&format!(" ms (no answer first from {closed})")),
        "{probe}"
    );
    assert!(
        text.contains("error: accounts.prod: probe kinit failed after")
            && text.contains("Cannot contact any KDC for realm 'PROD.TEST'")
            && text.contains(&format!(
                "no DC of PROD.TEST answered: check that {closed} accept TCP port 88"
            )),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    // Without --probe, nothing asks a KDC.
    let out = host.exec(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("probe"), "{text}");
}

#[test]
fn an_invalid_realm_table_stops_the_config_from_loading() {
    let forests = Forests::start();
    let host = runner::host(&forests.config(
        &["dc1.dev.test:99999".to_string()],
        &[kdc_addr(&forests.prod)],
        "",
    ));
    let out = host.exec(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        // The resolve step names the list element and the line it is on.
        text.contains("config.toml:")
            && text.contains("accounts.dev.kerberos.kdcs.0: \"dc1.dev.test:99999\": port \"99999\" is not a number from 1 to 65535"),
        "{text}"
    );
}

#[test]
fn check_says_when_jobs_could_not_use_their_krb5_conf() {
    let forests = Forests::start();
    let dev_dc = kdc_addr(&forests.dev);
    let problems = |extra: &str, dev_extra: &str| -> Vec<String> {
        let text = forests
            .config(
                &["127.0.0.1:1".to_string(), dev_dc.clone()],
                &[kdc_addr(&forests.prod)],
                extra,
            )
            .replace(
                "realm = \"DEV.TEST\"\n",
                &format!("realm = \"DEV.TEST\"\n{dev_extra}\n"),
            );
        let cfg = Config::parse(&text).unwrap();
        p3_executor::check::kerberos::check(&cfg)
            .into_iter()
            .filter(|f| f.severity != p3_executor::check::Severity::Info)
            .map(|f| format!("{}\n  fix: {}", f.problem, f.fix))
            .filter(|p| p.starts_with("accounts.dev.kerberos"))
            .collect()
    };
    assert_eq!(problems("", ""), Vec::<String>::new());

    // Two DCs but a 10 s bound: a mute first DC would use it all up.
    let short = problems("", "timeout_secs = 10");
    assert_eq!(short.len(), 1, "{short:#?}");
    assert!(
        short[0].contains("2 DCs, but kinit is stopped after 10 s")
            && short[0].contains("set accounts.dev.kerberos.timeout_secs = 15"),
        "{short:#?}"
    );
    // Weak enctypes are allowed but named.
    let weak = problems("", "enctypes = [\"aes256-cts\", \"rc4-hmac\"]");
    assert!(
        weak.len() == 1 && weak[0].contains("weak encryption types: rc4-hmac"),
        "{weak:#?}"
    );
    // The host file the job's krb5.conf includes must be readable inside the sandbox.
    let hidden = problems(
        &format!("[sandbox]\nhide = [\"{}\"]", forests.etc.path().display()),
        "",
    );
    assert!(
        hidden.len() == 1 && hidden[0].contains("which the job sandbox hides"),
        "{hidden:#?}"
    );
    set_mode(&forests.host_conf(), 0o600);
    let unreadable = problems("", "");
    set_mode(&forests.host_conf(), 0o644);
    assert!(
        unreadable.len() == 1 && unreadable[0].contains("which jobs cannot read (mode 600)"),
        "{unreadable:#?}"
    );
}
