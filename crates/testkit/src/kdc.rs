//! A throwaway MIT Kerberos realm for tests and benchmarks: a panicking front for
//! [`crate::realm::Realm`] (the implementation, shared with the demo), so a
//! missing tool or a failed `kadmin.local` fails the test with its message.
//!
//! ```ignore
//! let kdc = kdc::Kdc::start(&["svc_client_dev", "svc_client_uat"]);
//! kdc.krb5_conf();                 // KRB5_CONFIG for clients
//! kdc.keytab("svc_client_dev");    // keytab holding that principal's current key
//! kdc.principal("svc_client_dev"); // "svc_client_dev@P3.TEST"
//! ```

use std::ops::{Deref, DerefMut};
use std::path::Path;

pub use crate::realm::{REALM, Realm, find_tool, free_port};

/// A running throwaway KDC (see [`Realm`]); every fallible call panics with its error.
pub struct Kdc(Realm);

/// Write a client `krb5.conf` for [`REALM`] whose only KDC is `127.0.0.1:<port>` over TCP.
pub fn write_krb5_conf(path: &Path, port: u16) {
    crate::realm::write_krb5_conf(path, port).expect("write krb5.conf");
}

impl Kdc {
    /// [`Realm::start`].
    pub fn start(names: &[&str]) -> Kdc {
        Kdc(Realm::start(names).unwrap_or_else(|e| panic!("test KDC: {e:#}")))
    }

    /// [`Realm::start_named`]: a KDC for the realm `realm` instead of [`REALM`].
    pub fn start_named(realm: &str, names: &[&str]) -> Kdc {
        Kdc(Realm::start_named(realm, names)
            .unwrap_or_else(|e| panic!("test KDC for {realm}: {e:#}")))
    }

    /// [`Realm::kadmin`].
    pub fn kadmin(&self, query: &str) -> String {
        self.0.kadmin(query).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Realm::add_principal`].
    pub fn add_principal(&self, name: &str) {
        self.0
            .add_principal(name)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Realm::rotate_key`].
    pub fn rotate_key(&self, name: &str) {
        self.0.rotate_key(name).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Realm::set_key`].
    pub fn set_key(&self, name: &str, password: &str, kvno: u32) {
        self.0
            .set_key(name, password, kvno)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Realm::export_keytab`].
    pub fn export_keytab(&self, name: &str, path: &Path) {
        self.0
            .export_keytab(name, path)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Realm::delete_principal`].
    pub fn delete_principal(&self, name: &str) {
        self.0
            .delete_principal(name)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Realm::restart`].
    pub fn restart(&mut self) {
        self.0.restart().unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Deref for Kdc {
    type Target = Realm;
    fn deref(&self) -> &Realm {
        &self.0
    }
}

impl DerefMut for Kdc {
    fn deref_mut(&mut self) -> &mut Realm {
        &mut self.0
    }
}
