//! What other hosts write, heard as it is written. Every host listens on a connection of its
//! own to two channels of its schema (`pg_notify`, delivered at commit):
//! - `<schema>_queued`: each ingest transaction announces the earliest due time it queued;
//!   what is heard joins the hint the scheduler reads
//!   ([`crate::storage::Deliveries::take_written_due`]).
//! - `<schema>_defined`: each write to the definitions' change feed; the catalog reads the
//!   feed at once ([`crate::storage::Definitions::definition_announcements`]).
//!
//! Notifications are lost while the listener reconnects, so a reconnect sends the scheduler
//! back to the head of the queue, and the catalog to the feed, once.

use std::sync::Arc;
use std::time::Duration;

use super::WrittenDue;
use crate::model::Millis;

/// The first wait before connecting again; it doubles up to [`RETRY_AT_MOST`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_AT_MOST: Duration = Duration::from_secs(10);

/// The channels of one schema, and what hearing on them wakes.
#[derive(Clone)]
pub(super) struct Channels {
    /// Queue writes: the earliest due time of an ingest transaction.
    pub(super) queued: String,
    /// Writes to the definitions' change feed.
    pub(super) defined: String,
    /// Where due times go, heard or written by this handle.
    pub(super) due: Arc<WrittenDue>,
    /// What a definition change wakes.
    pub(super) definitions: Arc<tokio::sync::Notify>,
}

impl Channels {
    pub(super) fn of(schema: &str) -> Channels {
        Channels {
            queued: format!("{schema}_queued"),
            defined: format!("{schema}_defined"),
            due: Arc::default(),
            definitions: Arc::default(),
        }
    }
}

/// Listens for as long as the runtime runs, connecting again after a failure.
pub(super) async fn listen(config: tokio_postgres::Config, channels: Channels) {
    let mut wait = RETRY_FIRST;
    let mut first = true;
    loop {
        match listen_once(&config, &channels, first).await {
            Ok(()) => wait = RETRY_FIRST,
            Err(e) => {
                tracing::warn!("listening for other hosts' writes: {e}; connecting again");
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
    channels: &Channels,
    first: bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                    let heard = (note.channel().to_string(), note.payload().to_string());
                    let _ = tx.send(Ok(heard));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    // The names are the checked schema name with a suffix: they stand quoted.
    client
        .batch_execute(&format!(
            "LISTEN \"{}\"; LISTEN \"{}\";",
            channels.queued, channels.defined
        ))
        .await?;
    if !first {
        // What was announced while no one listened is unknown: look again once.
        channels.due.note(Millis::EARLIEST);
        channels.definitions.notify_one();
    }
    let result = loop {
        match rx.recv().await {
            Some(Ok((channel, _))) if channel == channels.defined => {
                channels.definitions.notify_one();
            }
            Some(Ok((_, payload))) => match payload.parse::<i64>() {
                Ok(due) => channels.due.note(Millis(due)),
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
