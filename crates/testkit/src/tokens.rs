//! GitLab ID tokens without GitLab, shared by `p3-executor demo` and the tests: an RSA key that
//! signs RS256 tokens as a GitLab instance key does, its JWKS document, and realistic GitLab
//! claim sets.
//!
//! ```ignore
//! let minter = TokenMinter::generate("demo-key-1")?;
//! std::fs::write(&jwks_file, minter.jwks_json())?;   // identity.jwks_file
//! let claims = gitlab_claims(ISSUER, "p3-executor", 42, "client/app", "main", "branch", true);
//! let token = minter.mint(claims);                      // the job's P3_ID_TOKEN
//! ```

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};

use crate::http_stub::{b64url, signing_input};

/// The issuer the demo and the tests use: what `identity.gitlab_url` must be.
pub const ISSUER: &str = "https://gitlab.example.com";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A freshly generated 2048-bit RSA key (PKCS#1 DER: what OpenSSL 3 `genpkey -outform DER`
/// writes for RSA), made with the `openssl` CLI so that no key-generation crate is needed for
/// what only the demo and the tests do.
pub fn generate_rsa_der() -> anyhow::Result<Vec<u8>> {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
        ])
        .output()
        .context("run openssl genpkey (apt-get install -y openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Signs RS256 tokens with its own RSA key, as GitLab's instance key does.
pub struct TokenMinter {
    kid: String,
    key: RsaKeyPair,
    jwk: Value,
}

impl Default for TokenMinter {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenMinter {
    /// A new key with key id `kid`.
    pub fn generate(kid: &str) -> anyhow::Result<Self> {
        let key = RsaKeyPair::from_der(&generate_rsa_der()?)
            .map_err(|e| anyhow::anyhow!("parse the generated RSA key: {e}"))?;
        let public: RsaPublicKeyComponents<Vec<u8>> = key.public().into();
        // As GitLab publishes it: https://gitlab.example.com/oauth/discovery/keys
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": b64url(&public.n),
            "e": b64url(&public.e),
        });
        Ok(Self {
            kid: kid.to_string(),
            key,
            jwk,
        })
    }

    /// A new key with key id `test-key-1`.
    ///
    /// # Panics
    /// When [`TokenMinter::generate`] fails (no `openssl`): a convenience for tests.
    pub fn new() -> Self {
        Self::with_kid("test-key-1")
    }

    /// A new key with the given key id.
    ///
    /// # Panics
    /// When [`TokenMinter::generate`] fails (no `openssl`): a convenience for tests.
    pub fn with_kid(kid: &str) -> Self {
        Self::generate(kid).unwrap_or_else(|e| panic!("token minter: {e:#}"))
    }

    /// This key's id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as one JWK (`kty`, `n`, `e`, `kid`, `use`, `alg`), as GitLab publishes it.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A JWKS document holding only this key (for `identity.jwks_file` or a JWKS endpoint).
    pub fn jwks_json(&self) -> String {
        jwks_json_of(&[self])
    }

    /// Sign `claims` with RS256 and this key's `kid`.
    pub fn mint(&self, claims: Value) -> String {
        self.mint_with_kid(claims, &self.kid)
    }

    /// Sign with this key but announce another `kid` in the header (unknown-key tests).
    pub fn mint_with_kid(&self, claims: Value, kid: &str) -> String {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": kid});
        let message = signing_input(&header, &claims);
        let mut signature = vec![0; self.key.public().modulus_len()];
        // Cannot fail: the key parsed as RSA in `generate` and the buffer is the modulus' size.
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut signature,
            )
            .expect("sign an RS256 token");
        format!("{message}.{}", b64url(&signature))
    }
}

/// A JWKS document holding the public keys of several minters (key rotation).
pub fn jwks_json_of(minters: &[&TokenMinter]) -> String {
    json!({ "keys": minters.iter().map(|m| m.jwk()).collect::<Vec<_>>() }).to_string()
}

static JTI_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A realistic GitLab ID token claim set (GitLab 16/17), valid from now for one hour.
///
/// Like GitLab, ids and booleans are *strings* (`"job_id": "42"`, `"ref_protected": "true"`).
/// `ref_type` is `"branch"` or `"tag"`. `namespace_path` is the project path's parent.
/// Adjust any claim afterwards, e.g. `claims["pipeline_source"] = json!("merge_request_event")`,
/// `claims["exp"] = json!(now() - 60)`.
pub fn gitlab_claims(
    issuer: &str,
    audience: &str,
    job_id: u64,
    project_path: &str,
    ref_name: &str,
    ref_type: &str,
    protected: bool,
) -> Value {
    let now = now();
    let namespace = project_path
        .rsplit_once('/')
        .map(|(ns, _)| ns)
        .unwrap_or(project_path);
    let ref_path = match ref_type {
        "tag" => format!("refs/tags/{ref_name}"),
        _ => format!("refs/heads/{ref_name}"),
    };
    let jti = format!(
        "{:08x}-test-{}-{}",
        now,
        job_id,
        JTI_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    json!({
        "namespace_id": "7",
        "namespace_path": namespace,
        "project_id": "12",
        "project_path": project_path,
        "user_id": "5",
        "user_login": "alice",
        "user_email": "alice@example.com",
        "user_access_level": "developer",
        "user_identities": [],
        "pipeline_id": "900",
        "pipeline_source": "push",
        "job_id": job_id.to_string(),
        "ref": ref_name,
        "ref_type": ref_type,
        "ref_path": ref_path,
        "ref_protected": protected.to_string(),
        "runner_id": 3,
        "runner_environment": "self-hosted",
        "sha": "4f0c3a1e9d2b7c6a5f8e0d1c2b3a49586f7e6d5c",
        "project_visibility": "private",
        "ci_config_ref_uri": format!("gitlab.example.com/{project_path}//.gitlab-ci.yml@{ref_path}"),
        "ci_config_sha": "4f0c3a1e9d2b7c6a5f8e0d1c2b3a49586f7e6d5c",
        "jti": jti,
        "iss": issuer,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "sub": format!("project_path:{project_path}:ref_type:{ref_type}:ref:{ref_name}"),
        "aud": audience,
    })
}
