//! `wasmhooks verify`: a receiver's check of a Standard Webhooks signature, from the shell.

use wasmhooks::signature::SigningSecret;

use crate::support::{run_to_end, wasmhooks_command};

fn verify(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, body).unwrap();
    let output = run_to_end(
        wasmhooks_command()
            .args(["verify", "--id", "msg_1", "--timestamp", timestamp])
            .args(["--signature", signature, "--body"])
            .arg(&body_path)
            .env("WASMHOOKS_SIGNING_SECRET", secret),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn verify_accepts_a_fresh_signature_and_names_what_is_wrong_otherwise() {
    let secret = SigningSecret::generate();
    let now = jiff::Timestamp::now().as_second();
    let body = br#"{"order":"A-1"}"#;
    let signature = secret.sign("msg_1", now, body);
    let text_secret = secret.to_text();

    let (ok, text) = verify(&text_secret, &now.to_string(), &signature, body);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "valid");

    let (ok, text) = verify(&text_secret, &now.to_string(), &signature, b"{}");
    assert!(!ok);
    assert!(text.contains("no v1 signature"), "{text}");

    let old = now - 3600;
    let (ok, text) = verify(
        &text_secret,
        &old.to_string(),
        &secret.sign("msg_1", old, body),
        body,
    );
    assert!(!ok);
    // The CLI reads the clock itself a moment later: 3600 s or a little more.
    let away: i64 = text
        .split("webhook-timestamp is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no distance in {text}"));
    assert!((3600..3660).contains(&away), "{text}");

    let (ok, text) = verify("whsec_short", &now.to_string(), &signature, body);
    assert!(!ok);
    assert!(text.contains("--secret"), "{text}");
}

#[test]
fn verify_checks_v1a_with_the_public_key() {
    let pair = wasmhooks::signature::SigningKeyPair::generate();
    let now = jiff::Timestamp::now().as_second();
    let body = br#"{"order":"A-1"}"#;
    let signature = pair.sign("msg_1", now, body);
    let public = pair.public_key().to_text();

    let (ok, text) = verify(&public, &now.to_string(), &signature, body);
    assert!(ok, "{text}");
    let (ok, text) = verify(&public, &now.to_string(), &signature, b"{}");
    assert!(!ok);
    assert!(text.contains("no v1a signature"), "{text}");
    let (ok, text) = verify("whpk_c2hvcnQ=", &now.to_string(), &signature, body);
    assert!(!ok);
    assert!(text.contains("32-byte Ed25519 public key"), "{text}");
}
