//! `wasmhooks demo`, the README's first command: it runs to the end and shows deliveries
//! made, one skipped with its reason, and the signed requests the receiver got.

use crate::support::{finish, wasmhooks_command};

#[tokio::test]
async fn the_demo_shows_delivered_skipped_and_signed_requests() {
    let mut command = wasmhooks_command();
    command.arg("demo").env("RUST_LOG", "warn");
    let output = finish(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("→ delivered").count(), 3, "{stdout}");
    assert!(
        stdout.contains("→ skipped (amount 42.5 is below the threshold 100)"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("webhook-signature: v1,").count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("authorization: Bearer demo-token"),
        "{stdout}"
    );
}
