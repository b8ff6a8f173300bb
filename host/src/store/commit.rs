//! Group commit: callers that need durability queue a waiter; one background task flushes
//! sled once for everyone waiting, then answers them all. Under load many events share a
//! single fsync; idle, a lone event costs one flush.

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle to the flushing task.
#[derive(Clone)]
pub(super) struct Committer {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Committer {
    /// Starts the flushing thread for `db`. It ends when every handle is dropped.
    pub(super) fn start(db: sled::Db) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        std::thread::Builder::new()
            .name("wasmhooks-commit".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut waiters = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiters.push(more);
                    }
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .expect("spawn commit thread");
        Committer { tx }
    }

    /// Waits until everything written before the call is on disk.
    pub(super) async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let closed = || StoreError::Sled(sled::Error::ReportableBug("commit thread gone".into()));
        self.tx.send(tx).map_err(|_| closed())?;
        rx.await
            .map_err(|_| closed())?
            .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::other(e))))
    }
}
