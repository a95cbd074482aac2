//! Client tokens: JWT with HS256 only, signed by the app with the secret it shares with the
//! node.
//!
//! Verification is done with `ring::hmac` (already in the tree through rustls) instead of a
//! JWT crate: jsonwebtoken 11 has no ring backend and would pull RSA and elliptic-curve crates
//! this node never uses. The rules are the ones that matter for HS256: the header must say
//! `HS256` (no `none`, no algorithm switching), the signature is checked in constant time
//! before the payload is parsed, `exp` is required and enforced, and `sub` is a valid user id.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

use presence_core::Interner;

/// Claims the node reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The app's user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Device id, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("token algorithm must be HS256")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token claims are invalid: {0}")]
    Claims(String),
    #[error("token expired")]
    Expired,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Signs `claims` with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let sig = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(sig.as_ref()))
}

/// Verifies `token` at `now_s` (seconds since the epoch) and returns its claims.
pub fn verify(secret: &[u8], token: &str, now_s: u64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signing_input = &token[..h.len() + 1 + p.len()];
    hmac::verify(&key, signing_input.as_bytes(), &sig).map_err(|_| TokenError::Signature)?;
    let payload = B64.decode(p).map_err(|_| TokenError::Malformed)?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|e| TokenError::Claims(e.to_string()))?;
    Interner::check(&claims.sub).map_err(|e| TokenError::Claims(format!("sub: {e}")))?;
    if claims.exp <= now_s {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "42".into(),
            exp,
            dev: Some("phone".into()),
        }
    }

    #[test]
    fn round_trips() {
        let t = mint(SECRET, &claims(2_000));
        assert_eq!(verify(SECRET, &t, 1_000), Ok(claims(2_000)));
    }

    #[test]
    fn refuses_expired_wrong_key_tampered_and_none() {
        let t = mint(SECRET, &claims(2_000));
        assert_eq!(verify(SECRET, &t, 2_000), Err(TokenError::Expired));
        assert_eq!(verify(b"other", &t, 1_000), Err(TokenError::Signature));
        let mut parts: Vec<&str> = t.split('.').collect();
        let evil = B64.encode(br#"{"sub":"1","exp":9999999999}"#);
        parts[1] = &evil;
        assert_eq!(
            verify(SECRET, &parts.join("."), 1_000),
            Err(TokenError::Signature)
        );
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(br#"{"sub":"1","exp":9999999999}"#)
        );
        assert_eq!(verify(SECRET, &none, 1_000), Err(TokenError::Algorithm));
        for junk in ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(verify(SECRET, junk, 1_000).is_err(), "{junk}");
        }
    }

    #[test]
    fn refuses_bad_subjects() {
        for sub in [String::new(), "x".repeat(129)] {
            let t = mint(
                SECRET,
                &Claims {
                    sub,
                    exp: 2_000,
                    dev: None,
                },
            );
            assert!(matches!(
                verify(SECRET, &t, 1_000),
                Err(TokenError::Claims(_))
            ));
        }
    }
}
