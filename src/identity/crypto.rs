//! The cryptography under identity: the ID token's RS256 signature check (a jsonwebtoken
//! `CryptoProvider`) and TLS for the JWKS and GitLab API clients (rustls), both on `ring`.
//!
//! Why not the crates' defaults: both default to aws-lc, whose tables and constructor every
//! start of the runner binary pays for (about 3,000 relocations and 15 page faults per call,
//! README "Performance"), and the runner starts four or more times per job. jsonwebtoken's
//! other provider (RustCrypto) checks an RSA signature in about 7× the instructions. `ring`
//! is what rustls and webpki are built around, constant-time, and checks RS256 as fast as
//! aws-lc. Only RS256 is provided: it is the only algorithm `token.rs` accepts.

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey};

/// Make `ring` the process's provider for jsonwebtoken and rustls. Call it before a token is
/// verified or an HTTPS client is built; later calls do nothing. A provider someone else
/// installed first (only tests do: the testkit signs with aws-lc) is left in place.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// RS256 verification on `ring`; no signing (the runner never signs a JWT).
pub(crate) static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        ed_pub_components_from_private_key: |_: &[u8], _: &EllipticCurve| {
            Err(ErrorKind::InvalidAlgorithm.into())
        },
        compute_digest,
    },
};

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match algorithm {
        Algorithm::RS256 if key.family() == AlgorithmFamily::Rsa => {
            Ok(Box::new(Rs256(key.clone())))
        }
        Algorithm::RS256 => Err(ErrorKind::InvalidKeyFormat.into()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

/// An RSA public key (a JWK's modulus and exponent, or PKCS#1 DER) checking RS256.
struct Rs256(DecodingKey);

impl Verifier<Vec<u8>> for Rs256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let alg = &RSA_PKCS1_2048_8192_SHA256;
        let checked = match self.0.kind() {
            DecodingKeyKind::SecretOrDer(der) => UnparsedPublicKey::new(alg, der).verify(msg, sig),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(alg, msg, sig)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Rs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;
    use p3_testkit::tokens::TokenMinter;

    /// The provider itself, not the process default (a test may have installed aws-lc's).
    fn check(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<bool> {
        let (message, sig) = token.rsplit_once('.').expect("a JWT");
        let sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
            .expect("base64url signature");
        let verifier = (PROVIDER.verifier_factory)(&alg, key)?;
        Ok(verifier.verify(message.as_bytes(), &sig).is_ok())
    }

    fn key_of(minter: &TokenMinter) -> DecodingKey {
        let jwk: Jwk = serde_json::from_value(minter.jwk()).unwrap();
        DecodingKey::from_jwk(&jwk).unwrap()
    }

    #[test]
    fn checks_rs256_signatures_against_a_jwk() {
        let minter = TokenMinter::with_kid("k1");
        let token = minter.mint(serde_json::json!({"sub": "job", "exp": 4_000_000_000u64}));
        let jwk_key = key_of(&minter);
        assert!(check(&token, &jwk_key, Algorithm::RS256).unwrap());

        // One flipped byte of the payload, or of the signature: refused.
        let (head, rest) = token.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let mut forged = payload.to_string().into_bytes();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        let forged = format!("{head}.{}.{sig}", String::from_utf8(forged).unwrap());
        assert!(!check(&forged, &jwk_key, Algorithm::RS256).unwrap());
        let other_key = key_of(&TokenMinter::with_kid("k2"));
        assert!(!check(&token, &other_key, Algorithm::RS256).unwrap());
    }

    #[test]
    fn refuses_every_algorithm_but_rs256_and_never_signs() {
        let key = DecodingKey::from_secret(b"a shared secret");
        for alg in [
            Algorithm::HS256,
            Algorithm::RS384,
            Algorithm::PS256,
            Algorithm::ES256,
        ] {
            assert!((PROVIDER.verifier_factory)(&alg, &key).is_err(), "{alg:?}");
        }
        // An HMAC key offered for RS256 (key confusion) is not a key for it.
        assert!((PROVIDER.verifier_factory)(&Algorithm::RS256, &key).is_err());
        let enc = EncodingKey::from_secret(b"x");
        assert!((PROVIDER.signer_factory)(&Algorithm::RS256, &enc).is_err());
    }

    #[test]
    fn https_clients_have_their_tls_provider() {
        // Built with rustls' provider features of the whole workspace (the steps add aws-lc),
        // rustls cannot pick one itself: without `install` this build fails.
        install();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        reqwest::blocking::Client::builder()
            .build()
            .expect("the JWKS and GitLab API clients can be built");
    }
}
