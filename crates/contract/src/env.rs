//! The environment the executor hands to a job and its built-in steps: written by `prepare`
//! (the grant), read by the steps. One name, one place.

/// Kerberos ticket cache of the job (`FILE:<path>`).
pub const KRB5CCNAME: &str = "KRB5CCNAME";
/// krb5.conf the job's Kerberos clients use, when the executor has one.
pub const KRB5_CONFIG: &str = "KRB5_CONFIG";
/// The devstage the job was granted (`client_dev`, `client_uat`, `client_prod`).
pub const DEVSTAGE: &str = "P3_DEVSTAGE";
/// The deploy stage: the system account whose credentials the job holds.
pub const DEPLOY_STAGE: &str = "P3_DEPLOY_STAGE";
/// The Kerberos principal of that account.
pub const SYSTEM_ACCOUNT: &str = "P3_SYSTEM_ACCOUNT";
/// Job-readable JSON file holding the config's `[steps]` settings.
pub const STEPS_CONFIG: &str = "P3_STEPS_CONFIG";
/// Set (to `true`) when the account's S3 endpoint wants path-style addressing.
pub const S3_PATH_STYLE: &str = "P3_S3_PATH_STYLE";
/// Duration (seconds) a credential process is asked for: the job's own timeout.
pub const CREDENTIAL_DURATION_SECS: &str = "P3_CREDENTIAL_DURATION_SECS";
