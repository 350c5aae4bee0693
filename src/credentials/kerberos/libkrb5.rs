//! `kinit -kt` without a process: MIT's libkrb5, loaded by `dlopen` the first time prepare
//! needs a ticket, does the same calls kinit makes (krb5 1.20's `kinit.c`: parse the name,
//! resolve the keytab and the cache, the lifetimes, `krb5_get_init_creds_keytab` with the cache
//! as its output).
//!
//! Why: prepare with a grant waited on a kinit process (exec, ten shared libraries, the locale)
//! that took longer than the exchange with the KDC itself; in-process it is about half (README,
//! "Performance"). Loaded at use, never linked: the other runner calls start without it.
//!
//! The library runs on a thread of its own, so the configured timeout still holds: MIT has no
//! request timeout, and a KDC that accepts a connection but never answers would hold the call
//! for about 27 s. A call that times out is abandoned; prepare then fails and its process ends,
//! and with it the thread. Anything it might still write lands in the job's root-only
//! credentials directory, removed at cleanup.

use std::ffi::{CStr, CString, c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// One kinit from a keytab, as the arguments kinit would get.
#[derive(Debug, Clone)]
pub(super) struct Request {
    /// The profile path list (`KRB5_CONFIG` syntax: `a:b`, the first file wins).
    pub profile: std::ffi::OsString,
    /// `-kt`: the account's keytab.
    pub keytab: PathBuf,
    /// The client principal.
    pub principal: String,
    /// `-c FILE:`: the cache to write (a fresh temporary name).
    pub cache: PathBuf,
    /// `-l`, seconds; None: the profile's default.
    pub lifetime: Option<u64>,
    /// `-r`, seconds; None: not asked for.
    pub renewable: Option<u64>,
}

/// How an in-process kinit ended, short of a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// The library (or one of its functions) cannot be loaded: run the kinit program instead.
    Unavailable(String),
    /// What kinit would have printed on stderr for the same failure (its words, its format).
    Kinit(String),
    /// No answer within the timeout.
    Timeout,
}

/// Get a ticket into `req.cache`, or say why not, within `timeout`.
pub(super) fn kinit(req: Request, timeout: Duration) -> Result<(), Failure> {
    let lib = library().map_err(|e| Failure::Unavailable(e.clone()))?;
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("libkrb5".into())
        .spawn(move || {
            let _ = tx.send(lib.kinit(&req));
        })
        .map_err(|e| Failure::Unavailable(format!("cannot start a thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result.map_err(Failure::Kinit),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Failure::Timeout),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Failure::Kinit(
            "kinit: the library call ended without an answer".into(),
        )),
    }
}

/// `krb5_init_context_profile`'s flag: ignore the environment (`KRB5_TRACE`, `KRB5CCNAME`,
/// ...), as kinit's environment is cleaned for the process path.
const KRB5_INIT_CONTEXT_SECURE: i32 = 1;

/// `krb5_creds` is 120 bytes on x86-64 in krb5 1.20; the buffer is larger and aligned, and
/// only the library reads or frees what it holds.
type Creds = [u64; 32];

type Ctx = *mut c_void;
type Code = i32;

/// The functions kinit uses, from a library loaded once and never unloaded (it registers
/// thread keys and plugins that must outlive any call).
struct Krb5 {
    _lib: libloading::Library,
    profile_init_path: unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> Code,
    profile_release: unsafe extern "C" fn(*mut c_void),
    init_context_profile: unsafe extern "C" fn(*mut c_void, i32, *mut Ctx) -> Code,
    free_context: unsafe extern "C" fn(Ctx),
    parse_name: unsafe extern "C" fn(Ctx, *const c_char, *mut *mut c_void) -> Code,
    free_principal: unsafe extern "C" fn(Ctx, *mut c_void),
    kt_resolve: unsafe extern "C" fn(Ctx, *const c_char, *mut *mut c_void) -> Code,
    kt_close: unsafe extern "C" fn(Ctx, *mut c_void) -> Code,
    cc_resolve: unsafe extern "C" fn(Ctx, *const c_char, *mut *mut c_void) -> Code,
    cc_close: unsafe extern "C" fn(Ctx, *mut c_void) -> Code,
    opt_alloc: unsafe extern "C" fn(Ctx, *mut *mut c_void) -> Code,
    opt_free: unsafe extern "C" fn(Ctx, *mut c_void),
    opt_set_tkt_life: unsafe extern "C" fn(*mut c_void, i32),
    opt_set_renew_life: unsafe extern "C" fn(*mut c_void, i32),
    opt_set_out_ccache: unsafe extern "C" fn(Ctx, *mut c_void, *mut c_void) -> Code,
    get_init_creds_keytab: unsafe extern "C" fn(
        Ctx,
        *mut Creds,
        *mut c_void,
        *mut c_void,
        i32,
        *const c_char,
        *mut c_void,
    ) -> Code,
    free_cred_contents: unsafe extern "C" fn(Ctx, *mut Creds),
    get_error_message: unsafe extern "C" fn(Ctx, Code) -> *const c_char,
    free_error_message: unsafe extern "C" fn(Ctx, *const c_char),
}

/// The library, loaded on first use; the error is dlopen's or dlsym's text.
fn library() -> Result<&'static Krb5, &'static String> {
    static LIB: OnceLock<Result<Krb5, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref()
}

fn load() -> Result<Krb5, String> {
    // SAFETY: libkrb5's initialisers only set up its own state (error tables, thread keys).
    let lib = unsafe { libloading::Library::new("libkrb5.so.3") }.map_err(|e| e.to_string())?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: each field's type is the function's prototype in krb5.h / profile.h of
            // MIT krb5 (the ABI of libkrb5.so.3); the pointer is used only while `lib` lives,
            // which is for the rest of the process (the struct is kept in a static).
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("{}: {e}", $name))?
        };
    }
    Ok(Krb5 {
        profile_init_path: sym!("profile_init_path"),
        profile_release: sym!("profile_release"),
        init_context_profile: sym!("krb5_init_context_profile"),
        free_context: sym!("krb5_free_context"),
        parse_name: sym!("krb5_parse_name"),
        free_principal: sym!("krb5_free_principal"),
        kt_resolve: sym!("krb5_kt_resolve"),
        kt_close: sym!("krb5_kt_close"),
        cc_resolve: sym!("krb5_cc_resolve"),
        cc_close: sym!("krb5_cc_close"),
        opt_alloc: sym!("krb5_get_init_creds_opt_alloc"),
        opt_free: sym!("krb5_get_init_creds_opt_free"),
        opt_set_tkt_life: sym!("krb5_get_init_creds_opt_set_tkt_life"),
        opt_set_renew_life: sym!("krb5_get_init_creds_opt_set_renew_life"),
        opt_set_out_ccache: sym!("krb5_get_init_creds_opt_set_out_ccache"),
        get_init_creds_keytab: sym!("krb5_get_init_creds_keytab"),
        free_cred_contents: sym!("krb5_free_cred_contents"),
        get_error_message: sym!("krb5_get_error_message"),
        free_error_message: sym!("krb5_free_error_message"),
        _lib: lib,
    })
}

/// A C string of a path or name (none of ours holds a NUL; one that did is refused).
fn c_string(bytes: &[u8], what: &str) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("kinit: {what} contains a NUL byte"))
}

/// Seconds as a `krb5_deltat` (a 32-bit count), saturated.
fn deltat(secs: u64) -> i32 {
    i32::try_from(secs).unwrap_or(i32::MAX)
}

impl Krb5 {
    /// kinit's message for `code` at `stage`: `kinit: <the library's words> <stage>`.
    fn message(&self, ctx: Ctx, code: Code, stage: &str) -> String {
        // SAFETY: get_error_message accepts a null context (generic text) and returns a
        // NUL-terminated string that we copy and hand back to free_error_message.
        let words = unsafe {
            let msg = (self.get_error_message)(ctx, code);
            let words = if msg.is_null() {
                format!("error {code}")
            } else {
                CStr::from_ptr(msg).to_string_lossy().into_owned()
            };
            (self.free_error_message)(ctx, msg);
            words
        };
        format!("kinit: {words} {stage}")
    }

    /// The calls of `kinit -kt <keytab> [-l] [-r] -c FILE:<cache> <principal>`; on failure,
    /// what kinit would print.
    fn kinit(&self, req: &Request) -> Result<(), String> {
        let profile = c_string(req.profile.as_bytes(), "the profile path")?;
        let principal = c_string(req.principal.as_bytes(), "the principal")?;
        let mut keytab = b"FILE:".to_vec();
        keytab.extend_from_slice(req.keytab.as_os_str().as_bytes());
        let keytab = c_string(&keytab, "the keytab path")?;
        let mut cache = b"FILE:".to_vec();
        cache.extend_from_slice(req.cache.as_os_str().as_bytes());
        let cache = c_string(&cache, "the cache path")?;

        let mut prof: *mut c_void = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path list and an out pointer; released below.
        let code = unsafe { (self.profile_init_path)(profile.as_ptr(), &mut prof) };
        if code != 0 {
            return Err(self.message(
                std::ptr::null_mut(),
                code,
                "while initializing Kerberos 5 library",
            ));
        }
        let mut ctx: Ctx = std::ptr::null_mut();
        // SAFETY: the context copies what it needs of the profile, released right after.
        let code = unsafe {
            let code = (self.init_context_profile)(prof, KRB5_INIT_CONTEXT_SECURE, &mut ctx);
            (self.profile_release)(prof);
            code
        };
        if code != 0 {
            return Err(self.message(
                std::ptr::null_mut(),
                code,
                "while initializing Kerberos 5 library",
            ));
        }
        let result = self.with_context(ctx, &principal, &keytab, &cache, req);
        // SAFETY: created above, every object made with it is freed in `with_context`.
        unsafe { (self.free_context)(ctx) };
        result
    }

    fn with_context(
        &self,
        ctx: Ctx,
        principal: &CStr,
        keytab: &CStr,
        cache: &CStr,
        req: &Request,
    ) -> Result<(), String> {
        let mut princ: *mut c_void = std::ptr::null_mut();
        let mut kt: *mut c_void = std::ptr::null_mut();
        let mut cc: *mut c_void = std::ptr::null_mut();
        let mut opt: *mut c_void = std::ptr::null_mut();
        // SAFETY: every call gets the live context, NUL-terminated strings and out pointers;
        // each object made is freed once below, whatever failed.
        let result = unsafe {
            let step = |code: Code, stage: &str| match code {
                0 => Ok(()),
                code => Err(self.message(ctx, code, stage)),
            };
            step(
                (self.parse_name)(ctx, principal.as_ptr(), &mut princ),
                &format!("when parsing name {}", req.principal),
            )
            .and_then(|()| {
                step(
                    (self.kt_resolve)(ctx, keytab.as_ptr(), &mut kt),
                    "resolving keytab",
                )
            })
            .and_then(|()| {
                step(
                    (self.cc_resolve)(ctx, cache.as_ptr(), &mut cc),
                    "resolving ccache",
                )
            })
            .and_then(|()| {
                step(
                    (self.opt_alloc)(ctx, &mut opt),
                    "while getting initial credentials",
                )
            })
            .and_then(|()| {
                if let Some(secs) = req.lifetime {
                    (self.opt_set_tkt_life)(opt, deltat(secs));
                }
                if let Some(secs) = req.renewable {
                    (self.opt_set_renew_life)(opt, deltat(secs));
                }
                step(
                    (self.opt_set_out_ccache)(ctx, opt, cc),
                    "while getting initial credentials",
                )
            })
            .and_then(|()| {
                let mut creds: Creds = [0; 32];
                let code = (self.get_init_creds_keytab)(
                    ctx,
                    &mut creds,
                    princ,
                    kt,
                    0,
                    std::ptr::null(),
                    opt,
                );
                if code == 0 {
                    (self.free_cred_contents)(ctx, &mut creds);
                }
                step(code, "while getting initial credentials")
            })
        };
        // SAFETY: each pointer is null (never made) or an object of this context, freed once.
        unsafe {
            if !opt.is_null() {
                (self.opt_free)(ctx, opt);
            }
            if !cc.is_null() {
                (self.cc_close)(ctx, cc);
            }
            if !kt.is_null() {
                (self.kt_close)(ctx, kt);
            }
            if !princ.is_null() {
                (self.free_principal)(ctx, princ);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_loads_with_every_function_kinit_uses() {
        // krb5-user (the package's dependency) brings libkrb5.so.3.
        if let Err(e) = library() {
            panic!("libkrb5 does not load: {e}");
        }
    }

    #[test]
    fn a_failure_is_told_in_the_kinit_programs_words() {
        // No KDC for the realm: what kinit itself prints, word for word (the error
        // classification and the docs quote kinit's stderr).
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("krb5.conf");
        std::fs::write(
            &conf,
            "[libdefaults]\n default_realm = NOWHERE.TEST\n dns_lookup_kdc = false\n",
        )
        .unwrap();
        let keytab = dir.path().join("missing.keytab");
        let req = Request {
            profile: conf.clone().into_os_string(),
            keytab: keytab.clone(),
            principal: "svc@NOWHERE.TEST".into(),
            cache: dir.path().join("cc"),
            lifetime: Some(600),
            renewable: None,
        };
        let Err(Failure::Kinit(said)) = kinit(req, Duration::from_secs(10)) else {
            panic!("a realm without a KDC must fail");
        };
        let program = std::process::Command::new("kinit")
            .arg("-kt")
            .arg(&keytab)
            .args(["-l", "600s", "-c"])
            .arg(format!("FILE:{}", dir.path().join("cc2").display()))
            .arg("svc@NOWHERE.TEST")
            .env("KRB5_CONFIG", &conf)
            .env("LC_ALL", "C")
            .output()
            .expect("kinit (krb5-user)");
        assert!(!program.status.success());
        assert_eq!(said, String::from_utf8_lossy(&program.stderr).trim());
        assert!(said.contains("Cannot find KDC"), "{said}");
        assert!(!dir.path().join("cc").exists());
    }

    #[test]
    fn a_ticket_from_a_real_kdc_with_the_lifetime_asked_for() {
        let kdc = p3_testkit::kdc::Kdc::start(&["svc_libkrb5"]);
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cc");
        let req = Request {
            profile: kdc.krb5_conf().into_os_string(),
            keytab: kdc.keytab("svc_libkrb5"),
            principal: kdc.principal("svc_libkrb5"),
            cache: cache.clone(),
            lifetime: Some(600),
            renewable: None,
        };
        let before = chrono::Utc::now();
        kinit(req, Duration::from_secs(10)).expect("a ticket");
        let ticket = super::super::read_ticket(&cache).expect("the cache kinit wrote");
        assert_eq!(ticket.principal, kdc.principal("svc_libkrb5"));
        let life = (ticket.expires - before).num_seconds();
        assert!((590..=601).contains(&life), "{life} s");
        // The cache is the library's own FILE cache, private to root.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}
