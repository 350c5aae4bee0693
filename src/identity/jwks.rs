//! GitLab's signing keys (JWKS): from a local file, or fetched over HTTP and cached on disk.
//!
//! Every `prepare` is a separate process, so an in-memory cache would not survive from one job
//! to the next: the fetched set is kept under `<state_root>/jwks/` (directory 0700, file 0600,
//! written to a temp file and renamed so concurrent jobs never read half a file) together with
//! its fetch time, and reused while younger than `jwks_cache_ttl_secs`. A token naming a key id
//! the cached set lacks (GitLab rotated its key) triggers one refetch, but only if the cached
//! copy is older than `jwks_refetch_min_interval_secs`, so tokens with made-up key ids cannot
//! make every job hit GitLab.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::IdentityError;
use crate::config::Config;

/// Largest JWKS response accepted (GitLab's is a few KiB).
const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file, read on every use (nothing to cache).
    File(PathBuf),
    /// An HTTP(S) URL, cached on disk.
    Url(String),
}

/// GitLab's JWKS with its on-disk cache.
#[derive(Debug, Clone)]
pub struct JwksStore {
    source: JwksSource,
    cache_dir: PathBuf,
    ttl_secs: u64,
    refetch_min_interval_secs: u64,
    timeout: Duration,
}

/// What the cache file holds.
#[derive(Serialize, Deserialize)]
struct CachedJwks {
    /// URL the set was fetched from (a different URL never reuses this file).
    url: String,
    /// Unix time of the fetch.
    fetched_at: u64,
    /// The key set.
    jwks: JwkSet,
}

impl JwksStore {
    /// The store the config describes: `identity.jwks_file` if set, else `cfg.jwks_url()`,
    /// cached under `<state_root>/jwks/`.
    pub fn from_config(cfg: &Config) -> Self {
        let ic = &cfg.identity;
        let source = match &ic.jwks_file {
            Some(path) => JwksSource::File(path.clone()),
            None => JwksSource::Url(cfg.jwks_url()),
        };
        Self {
            source,
            cache_dir: cfg.state_root.join("jwks"),
            ttl_secs: ic.jwks_cache_ttl_secs,
            refetch_min_interval_secs: ic.jwks_refetch_min_interval_secs,
            timeout: Duration::from_secs(ic.http_timeout_secs.max(1)),
        }
    }

    /// Where the keys come from.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The cache file for a URL source (None for a file source).
    pub fn cache_file(&self) -> Option<PathBuf> {
        match &self.source {
            JwksSource::File(_) => None,
            JwksSource::Url(url) => {
                let digest = hex::encode(Sha256::digest(url.as_bytes()));
                Some(self.cache_dir.join(format!("{}.json", &digest[..16])))
            }
        }
    }

    fn source_name(&self) -> String {
        match &self.source {
            JwksSource::File(p) => p.display().to_string(),
            JwksSource::Url(u) => u.clone(),
        }
    }

    /// The RS256 verification key with id `kid`, fetching or refetching the JWKS as needed.
    pub fn decoding_key(&self, kid: &str) -> Result<DecodingKey, IdentityError> {
        let set = match &self.source {
            JwksSource::File(path) => read_file(path)?,
            JwksSource::Url(url) => self.set_with_kid(url, kid)?,
        };
        match set.find(kid) {
            Some(jwk) => rs256_key(jwk, kid),
            None => Err(IdentityError::UnknownKey {
                kid: kid.into(),
                jwks: self.source_name(),
            }),
        }
    }

    /// The cached set if fresh, else a fetched one; refetched once if it lacks `kid`.
    fn set_with_kid(&self, url: &str, kid: &str) -> Result<JwkSet, IdentityError> {
        let now = unix_now();
        let (set, fetched_at, just_fetched) = match self.read_cache(url, now) {
            Some(cached) if now - cached.fetched_at < self.ttl_secs => {
                (cached.jwks, cached.fetched_at, false)
            }
            _ => (self.fetch_and_store(url, now)?, now, true),
        };
        if set.find(kid).is_some() {
            return Ok(set);
        }
        // GitLab may have rotated its key since the set was cached. Refetch (once), unless this
        // call just fetched it or the set is so recent that the unknown kid is much more likely
        // garbage than a rotation.
        if !just_fetched && now - fetched_at >= self.refetch_min_interval_secs {
            tracing::info!(kid, "ID token key not in cached JWKS; refetching once");
            return self.fetch_and_store(url, now);
        }
        Ok(set)
    }

    /// The cache entry for `url`, if readable, written by us, and not from the future.
    fn read_cache(&self, url: &str, now: u64) -> Option<CachedJwks> {
        let path = self.cache_file()?;
        let meta = std::fs::symlink_metadata(&path).ok()?;
        // Whoever can write this file decides which keys sign valid tokens: only trust a
        // regular file owned by the executor's user and writable by nobody else.
        if !meta.file_type().is_file()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o022 != 0
        {
            tracing::warn!(path = %path.display(), "ignoring JWKS cache not owned by us or writable by others");
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<CachedJwks>(&bytes) {
            // A fetch time ahead of the clock would keep the entry "fresh" forever.
            Ok(c) if c.url == url && c.fetched_at <= now => Some(c),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable JWKS cache: {e}");
                None
            }
        }
    }

    fn fetch_and_store(&self, url: &str, now: u64) -> Result<JwkSet, IdentityError> {
        let set = fetch(url, self.timeout)?;
        // The cache is an optimisation: failing to write it must not deny the job.
        if let Err(e) = self.write_cache(url, now, &set) {
            tracing::warn!(dir = %self.cache_dir.display(), "cannot cache JWKS: {e}");
        }
        Ok(set)
    }

    fn write_cache(&self, url: &str, now: u64, set: &JwkSet) -> std::io::Result<()> {
        let Some(path) = self.cache_file() else {
            return Ok(());
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.cache_dir)?;
        // `recursive` leaves an existing directory's mode alone: tighten it explicitly.
        std::fs::set_permissions(&self.cache_dir, std::fs::Permissions::from_mode(0o700))?;
        let entry = CachedJwks {
            url: url.into(),
            fetched_at: now,
            jwks: set.clone(),
        };
        let bytes = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        let durable = crate::atomic_file::Options {
            durable: true,
            ..crate::atomic_file::Options::PRIVATE
        };
        crate::atomic_file::write(&path, &bytes, durable)
    }
}

fn unix_now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn read_file(path: &Path) -> Result<JwkSet, IdentityError> {
    let source_name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| IdentityError::JwksUnavailable {
        source_name: source_name.clone(),
        detail: e.to_string(),
    })?;
    parse(&bytes, &source_name)
}

fn parse(bytes: &[u8], source_name: &str) -> Result<JwkSet, IdentityError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| IdentityError::JwksInvalid {
        source_name: source_name.into(),
        detail: format!("not a JWK set: {e}"),
    })?;
    if set.keys.is_empty() {
        return Err(IdentityError::JwksInvalid {
            source_name: source_name.into(),
            detail: "no keys".into(),
        });
    }
    Ok(set)
}

/// Fetch a JWKS over HTTP(S), bounded in time and size.
fn fetch(url: &str, timeout: Duration) -> Result<JwkSet, IdentityError> {
    let unavailable = |detail: String| IdentityError::JwksUnavailable {
        source_name: url.into(),
        detail,
    };
    tracing::debug!(url, "fetching JWKS");
    super::crypto::install();
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| unavailable(format!("HTTP client: {e}")))?;
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .map_err(|e| unavailable(super::gitlab_api::error_chain(&e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        return Err(unavailable(format!("HTTP {status}")));
    }
    let mut body = Vec::new();
    response
        .take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| unavailable(format!("reading the response: {e}")))?;
    if body.len() as u64 > MAX_JWKS_BYTES {
        return Err(IdentityError::JwksInvalid {
            source_name: url.into(),
            detail: format!("larger than {MAX_JWKS_BYTES} bytes"),
        });
    }
    parse(&body, url)
}

/// A key usable for RS256 signature checks, or a denial: the token picked an unsuitable key.
fn rs256_key(jwk: &Jwk, kid: &str) -> Result<DecodingKey, IdentityError> {
    let unusable = || IdentityError::UnusableKey { kid: kid.into() };
    if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
        return Err(unusable());
    }
    if matches!(jwk.common.key_algorithm, Some(alg) if alg != KeyAlgorithm::RS256) {
        return Err(unusable());
    }
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err(unusable());
    }
    DecodingKey::from_jwk(jwk).map_err(|_| unusable())
}
