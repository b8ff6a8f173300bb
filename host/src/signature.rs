//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): the host signs every
//! delivery and receivers verify with [`verify`] (or `wasmhooks verify`, or any Standard
//! Webhooks library).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
//! `v1,` + base64 of its HMAC-SHA256 under the secret's bytes. Secrets are `whsec_` + base64 of
//! 24 to 64 random bytes. While a secret is being rotated both are valid and the
//! `webhook-signature` header carries one signature per secret, separated by spaces.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of symmetric secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a timestamp may be from now before a receiver refuses it (replay protection),
/// in seconds: the spec's recommendation.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// A symmetric signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

/// Why a secret or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The secret is not `whsec_` + base64 of 24 to 64 bytes.
    #[error("must be `whsec_` followed by base64 of 24 to 64 random bytes")]
    BadSecret,
    /// `webhook-timestamp` is not whole seconds.
    #[error("webhook-timestamp `{0}` is not a Unix time in seconds")]
    BadTimestamp(String),
    /// The timestamp is too far from now.
    #[error("webhook-timestamp is {0} s away from now; at most {1} s is accepted")]
    OutsideTolerance(i64, i64),
    /// No `v1` signature in the header matches.
    #[error("no v1 signature in webhook-signature matches the body")]
    NoMatch,
}

impl SigningSecret {
    /// Parses `whsec_…`.
    ///
    /// # Errors
    /// [`SignatureError::BadSecret`].
    pub fn parse(text: &str) -> Result<SigningSecret, SignatureError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SignatureError::BadSecret)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SignatureError::BadSecret)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(SignatureError::BadSecret);
        }
        Ok(SigningSecret(bytes))
    }

    /// A new random 32-byte secret.
    pub fn generate() -> SigningSecret {
        SigningSecret(rand::random::<[u8; 32]>().to_vec())
    }

    /// The `whsec_…` text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("any key length works");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(
    secrets: &[&SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a delivery as a receiver would: the timestamp within `tolerance_secs` of `now_secs`,
/// and one `v1` signature in `signature` made by `secret` over `id.timestamp.body`. Compares
/// in constant time.
///
/// # Errors
/// [`SignatureError`] saying which check failed.
pub fn verify(
    secret: &SigningSecret,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp(timestamp.to_string()))?;
    let distance = (now_secs - ts).abs();
    if distance > tolerance_secs {
        return Err(SignatureError::OutsideTolerance(distance, tolerance_secs));
    }
    for candidate in signature.split(' ') {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(encoded) else {
            continue;
        };
        if secret.mac(id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's known-answer vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specification_vector_signs_and_verifies() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), EXPECTED);
        assert_eq!(
            verify(
                &secret,
                ID,
                "1614265330",
                EXPECTED,
                BODY,
                TIMESTAMP + 10,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn tampering_old_timestamps_and_other_secrets_are_refused() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        let check = |id: &str, ts: &str, sig: &str, body: &[u8], now: i64| {
            verify(&secret, id, ts, sig, body, now, DEFAULT_TOLERANCE_SECS)
        };
        let ts = "1614265330";
        assert_eq!(
            check(ID, ts, EXPECTED, br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check("msg_other", ts, EXPECTED, BODY, TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check(ID, ts, EXPECTED, BODY, TIMESTAMP + 301),
            Err(SignatureError::OutsideTolerance(301, 300))
        );
        assert_eq!(
            check(ID, "soon", EXPECTED, BODY, TIMESTAMP),
            Err(SignatureError::BadTimestamp("soon".into()))
        );
        assert_eq!(
            check(ID, ts, "v2,abc v1,!!!", BODY, TIMESTAMP),
            Err(SignatureError::NoMatch)
        );
        let other = SigningSecret::generate();
        assert_eq!(
            verify(&other, ID, ts, EXPECTED, BODY, TIMESTAMP, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn during_rotation_both_secrets_verify_the_same_header() {
        let old = SigningSecret::parse(SECRET).unwrap();
        let new = SigningSecret::generate();
        let header = signature_header(&[&new, &old], ID, TIMESTAMP, BODY);
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new] {
            assert_eq!(
                verify(secret, ID, "1614265330", &header, BODY, TIMESTAMP, 300),
                Ok(())
            );
        }
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let secret = SigningSecret::generate();
        assert_eq!(SigningSecret::parse(&secret.to_text()).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&secret.to_text()[6..]));
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            assert_eq!(
                SigningSecret::parse(bad),
                Err(SignatureError::BadSecret),
                "{bad}"
            );
        }
    }
}
