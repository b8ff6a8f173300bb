//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): the host signs every
//! delivery and receivers verify with [`verify`] (or `wasmhooks verify`, or any Standard
//! Webhooks library).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
//! `v1,` + base64 of its HMAC-SHA256 under the secret's bytes. Secrets are `whsec_` + base64 of
//! 24 to 64 random bytes. While a secret is being rotated both are valid and the
//! `webhook-signature` header carries one signature per secret, separated by spaces.
//!
//! The asymmetric scheme signs the same content with Ed25519: `v1a,` + base64 of the 64-byte
//! signature. The host keeps the private key (`whsk_` + base64 of the 32-byte seed; 64 bytes,
//! seed then public key, are accepted too) and receivers get only the public key (`whpk_` +
//! base64 of its 32 bytes), which cannot forge a delivery.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of symmetric secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// The prefix of Ed25519 private keys.
pub const KEY_PAIR_PREFIX: &str = "whsk_";
/// The prefix of Ed25519 public keys.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

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
    /// No signature of the key's scheme in the header matches.
    #[error("no {0} signature in webhook-signature matches the body")]
    NoMatch(&'static str),
    /// A private key that is not `whsk_` + base64 of a 32-byte seed (or 64 bytes).
    #[error(
        "must be `whsk_` followed by base64 of a 32-byte Ed25519 private key \
         (or 64 bytes: private then public)"
    )]
    BadKeyPair,
    /// A public key that is not `whpk_` + base64 of 32 bytes.
    #[error("must be `whpk_` followed by base64 of a 32-byte Ed25519 public key")]
    BadPublicKey,
    /// A key that is none of the three kinds.
    #[error(
        "must be a `whsec_` secret, a `whpk_` public key (or a `whsk_` private key) \
         per Standard Webhooks"
    )]
    UnknownKind,
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
pub fn signature_header(secrets: &[&Signer], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a `webhook-signature` header against a symmetric secret: the timestamp must be
/// within `tolerance_secs` of `now_secs`, and one `v1` signature must match.
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
    verify_message(
        |candidate, ts| {
            let encoded = candidate.strip_prefix("v1,")?;
            let tag = STANDARD.decode(encoded).ok()?;
            Some(secret.mac(id, ts, body).verify_slice(&tag).is_ok())
        },
        "v1",
        timestamp,
        signature,
        now_secs,
        tolerance_secs,
    )
}

/// Checks a `webhook-signature` header with a [`Verifier`]: a secret checks `v1`
/// signatures, a public key `v1a` ones.
///
/// # Errors
/// [`SignatureError`] saying which check failed.
pub fn verify_with(
    verifier: &Verifier,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    match verifier {
        Verifier::Secret(secret) => verify(
            secret,
            id,
            timestamp,
            signature,
            body,
            now_secs,
            tolerance_secs,
        ),
        Verifier::Public(public) => verify_message(
            |candidate, ts| {
                let encoded = candidate.strip_prefix("v1a,")?;
                let signature = STANDARD.decode(encoded).ok()?;
                let message = signed_content(id, &ts.to_string(), body);
                let key =
                    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public.0);
                Some(key.verify(&message, &signature).is_ok())
            },
            "v1a",
            timestamp,
            signature,
            now_secs,
            tolerance_secs,
        ),
    }
}

/// The timestamp check, then `matches` on each space-separated signature.
fn verify_message(
    matches: impl Fn(&str, i64) -> Option<bool>,
    scheme: &'static str,
    timestamp: &str,
    signature: &str,
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp(timestamp.to_string()))?;
    // Any i64 may arrive: the distance saturates rather than overflow.
    let distance = i64::try_from(now_secs.abs_diff(ts)).unwrap_or(i64::MAX);
    if distance > tolerance_secs {
        return Err(SignatureError::OutsideTolerance(distance, tolerance_secs));
    }
    if signature.split(' ').any(|c| matches(c, ts) == Some(true)) {
        return Ok(());
    }
    Err(SignatureError::NoMatch(scheme))
}

/// `{id}.{timestamp}.{body}`: what both schemes sign.
fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(id.len() + timestamp.len() + 2 + body.len());
    message.extend_from_slice(id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    message
}

/// An Ed25519 private key that signs `v1a`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyPair {
    seed: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeyPair(***)")
    }
}

impl SigningKeyPair {
    /// Parses `whsk_…`: base64 of the 32-byte seed, or 64 bytes (seed, then the public key,
    /// which must match).
    ///
    /// # Errors
    /// [`SignatureError::BadKeyPair`].
    pub fn parse(text: &str) -> Result<SigningKeyPair, SignatureError> {
        let bytes = text
            .strip_prefix(KEY_PAIR_PREFIX)
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .ok_or(SignatureError::BadKeyPair)?;
        let seed: [u8; 32] = bytes
            .get(..32)
            .and_then(|s| s.try_into().ok())
            .filter(|_| bytes.len() == 32 || bytes.len() == 64)
            .ok_or(SignatureError::BadKeyPair)?;
        let pair = Self::from_seed(seed)?;
        if bytes.len() == 64 && bytes[32..] != pair.public {
            return Err(SignatureError::BadKeyPair);
        }
        Ok(pair)
    }

    fn from_seed(seed: [u8; 32]) -> Result<SigningKeyPair, SignatureError> {
        use ring::signature::KeyPair as _;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| SignatureError::BadKeyPair)?;
        let public = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| SignatureError::BadKeyPair)?;
        Ok(SigningKeyPair { seed, public })
    }

    /// A new random key pair.
    pub fn generate() -> SigningKeyPair {
        Self::from_seed(rand::random()).expect("any 32-byte seed is a key")
    }

    /// The `whsk_…` text.
    pub fn to_text(&self) -> String {
        format!("{KEY_PAIR_PREFIX}{}", STANDARD.encode(self.seed))
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.public)
    }

    /// The `v1a,<base64>` signature of a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.seed)
            .expect("checked when parsed");
        let message = signed_content(id, &timestamp.to_string(), body);
        format!("v1a,{}", STANDARD.encode(pair.sign(&message)))
    }
}

/// An Ed25519 public key that verifies `v1a`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses `whpk_…`.
    ///
    /// # Errors
    /// [`SignatureError::BadPublicKey`].
    pub fn parse(text: &str) -> Result<PublicKey, SignatureError> {
        text.strip_prefix(PUBLIC_KEY_PREFIX)
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .map(PublicKey)
            .ok_or(SignatureError::BadPublicKey)
    }

    /// The `whpk_…` text.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(self.0))
    }
}

/// What signs deliveries: a symmetric secret (`v1`) or an Ed25519 key pair (`v1a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signer {
    /// `whsec_…`.
    Secret(SigningSecret),
    /// `whsk_…`.
    KeyPair(SigningKeyPair),
}

impl Signer {
    /// Parses `whsec_…` or `whsk_…`.
    ///
    /// # Errors
    /// The parse error of the kind the prefix names.
    pub fn parse(text: &str) -> Result<Signer, SignatureError> {
        if text.starts_with(KEY_PAIR_PREFIX) {
            SigningKeyPair::parse(text).map(Signer::KeyPair)
        } else {
            SigningSecret::parse(text).map(Signer::Secret)
        }
    }

    /// A new signer of `scheme` (`v1` or `v1a`).
    pub fn generate(asymmetric: bool) -> Signer {
        if asymmetric {
            Signer::KeyPair(SigningKeyPair::generate())
        } else {
            Signer::Secret(SigningSecret::generate())
        }
    }

    /// The `whsec_…` / `whsk_…` text.
    pub fn to_text(&self) -> String {
        match self {
            Signer::Secret(s) => s.to_text(),
            Signer::KeyPair(k) => k.to_text(),
        }
    }

    /// The public key receivers verify with, for a key pair.
    pub fn public_key(&self) -> Option<PublicKey> {
        match self {
            Signer::Secret(_) => None,
            Signer::KeyPair(k) => Some(k.public_key()),
        }
    }

    /// One signature (`v1,…` or `v1a,…`).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            Signer::Secret(s) => s.sign(id, timestamp, body),
            Signer::KeyPair(k) => k.sign(id, timestamp, body),
        }
    }
}

/// What a receiver verifies with: the shared secret, or the public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verifier {
    /// `whsec_…`: checks `v1`.
    Secret(SigningSecret),
    /// `whpk_…`: checks `v1a`.
    Public(PublicKey),
}

impl Verifier {
    /// Parses `whsec_…`, `whpk_…`, or `whsk_…` (its public key).
    ///
    /// # Errors
    /// The parse error of the kind the prefix names, or [`SignatureError::UnknownKind`].
    pub fn parse(text: &str) -> Result<Verifier, SignatureError> {
        if text.starts_with(SECRET_PREFIX) {
            SigningSecret::parse(text).map(Verifier::Secret)
        } else if text.starts_with(PUBLIC_KEY_PREFIX) {
            PublicKey::parse(text).map(Verifier::Public)
        } else if text.starts_with(KEY_PAIR_PREFIX) {
            SigningKeyPair::parse(text).map(|k| Verifier::Public(k.public_key()))
        } else {
            Err(SignatureError::UnknownKind)
        }
    }
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
            Err(SignatureError::NoMatch("v1"))
        );
        assert_eq!(
            check("msg_other", ts, EXPECTED, BODY, TIMESTAMP),
            Err(SignatureError::NoMatch("v1"))
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
            Err(SignatureError::NoMatch("v1"))
        );
        let other = SigningSecret::generate();
        assert_eq!(
            verify(&other, ID, ts, EXPECTED, BODY, TIMESTAMP, 300),
            Err(SignatureError::NoMatch("v1"))
        );
    }

    #[test]
    fn during_rotation_both_secrets_verify_the_same_header() {
        let old = SigningSecret::parse(SECRET).unwrap();
        let new = SigningSecret::generate();
        let signers = [Signer::Secret(new.clone()), Signer::Secret(old.clone())];
        let header = signature_header(&[&signers[0], &signers[1]], ID, TIMESTAMP, BODY);
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

    #[test]
    fn ed25519_keys_follow_rfc_8032_and_v1a_verifies_only_with_the_public_key() {
        // RFC 8032, test 1: this seed has this public key.
        let seed = hex_bytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex_bytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let text = format!("whsk_{}", STANDARD.encode(&seed));
        let pair = SigningKeyPair::parse(&text).unwrap();
        assert_eq!(
            pair.public_key().to_text(),
            format!("whpk_{}", STANDARD.encode(&public))
        );
        assert_eq!(pair.to_text(), text);
        // The 64-byte form (seed, then public) is the same key; a wrong public half is not.
        let long = [seed.clone(), public.clone()].concat();
        assert_eq!(
            SigningKeyPair::parse(&format!("whsk_{}", STANDARD.encode(&long))),
            Ok(pair.clone())
        );
        let mut wrong = long.clone();
        wrong[40] ^= 1;
        assert_eq!(
            SigningKeyPair::parse(&format!("whsk_{}", STANDARD.encode(&wrong))),
            Err(SignatureError::BadKeyPair)
        );

        let signature = pair.sign(ID, TIMESTAMP, BODY);
        assert!(signature.starts_with("v1a,"));
        let public = Verifier::parse(&pair.public_key().to_text()).unwrap();
        let check = |verifier: &Verifier, sig: &str, body: &[u8]| {
            verify_with(verifier, ID, "1614265330", sig, body, TIMESTAMP, 300)
        };
        assert_eq!(check(&public, &signature, BODY), Ok(()));
        assert_eq!(
            check(&public, &signature, b"other"),
            Err(SignatureError::NoMatch("v1a"))
        );
        // The private key verifies as its public key; a symmetric secret ignores v1a.
        assert_eq!(
            check(&Verifier::parse(&text).unwrap(), &signature, BODY),
            Ok(())
        );
        let secret = Verifier::parse(SECRET).unwrap();
        assert_eq!(
            check(&secret, &signature, BODY),
            Err(SignatureError::NoMatch("v1"))
        );
        // One header carrying both schemes satisfies each verifier.
        let both = [Signer::parse(SECRET).unwrap(), Signer::KeyPair(pair)];
        let header = signature_header(&[&both[0], &both[1]], ID, TIMESTAMP, BODY);
        assert_eq!(check(&public, &header, BODY), Ok(()));
        assert_eq!(check(&secret, &header, BODY), Ok(()));
        assert!(header.starts_with(EXPECTED), "{header}");

        assert_eq!(
            Verifier::parse("whpk_c2hvcnQ="),
            Err(SignatureError::BadPublicKey)
        );
        assert_eq!(Verifier::parse("pk_abc"), Err(SignatureError::UnknownKind));
    }

    #[test]
    fn extreme_timestamps_are_refused_without_overflow() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        for ts in [i64::MIN.to_string(), i64::MAX.to_string()] {
            assert!(matches!(
                verify(&secret, ID, &ts, EXPECTED, BODY, TIMESTAMP, 300),
                Err(SignatureError::OutsideTolerance(..))
            ));
        }
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}
