//! What other hosts queue, heard as it is written: each ingest transaction notifies the
//! schema's channel with the earliest due time it queued (`pg_notify`, delivered at commit),
//! and every host listens on a connection of its own, folding what it hears into the hint
//! its scheduler reads ([`crate::storage::Deliveries::take_written_due`]). Notifications are
//! lost while the listener reconnects, so a reconnect sends the scheduler back to the head
//! of the queue once.

use std::sync::Arc;
use std::time::Duration;

use super::WrittenDue;
use crate::model::Millis;

/// The first wait before connecting again; it doubles up to [`RETRY_AT_MOST`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_AT_MOST: Duration = Duration::from_secs(10);

/// The channel a schema's queue writes are announced on.
pub(super) fn channel(schema: &str) -> String {
    format!("{schema}_queued")
}

/// Listens on `channel` for as long as the runtime runs, connecting again after a failure.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    channel: String,
    heard: Arc<WrittenDue>,
) {
    let mut wait = RETRY_FIRST;
    let mut first = true;
    loop {
        match listen_once(&config, &channel, &heard, first).await {
            Ok(()) => wait = RETRY_FIRST,
            Err(e) => {
                tracing::warn!("listening for other hosts' queue writes: {e}; connecting again");
            }
        }
        first = false;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_AT_MOST);
    }
}

/// One connection's life: listens until it breaks.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    heard: &WrittenDue,
    first: bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                    let _ = tx.send(Ok(note.payload().to_string()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    // The channel name is the checked schema name with a suffix: it stands quoted.
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    if !first {
        // What was announced while no one listened is unknown: look from the head once.
        heard.note(Millis::EARLIEST);
    }
    let result = loop {
        match rx.recv().await {
            Some(Ok(payload)) => match payload.parse::<i64>() {
                Ok(due) => heard.note(Millis(due)),
                Err(_) => tracing::warn!(payload, "ignoring a malformed queue notification"),
            },
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    driver.abort();
    drop(client);
    result
}
