//! The storage traits on PostgreSQL, for several hosts on one database.
//!
//! # Why this client
//! `tokio-postgres` (with `deadpool-postgres` for the pool) is the asynchronous client the
//! Rust PostgreSQL crates are built on: it pipelines statements on one connection, prepares
//! each statement once per connection, and needs no database at compile time (unlike `sqlx`'s
//! checked queries, which would need one in CI and in every build).
//!
//! # How the calls run
//! The storage traits block their caller (see [`crate::storage`]). The engine keeps a small
//! runtime of its own ([`Postgres::block`]) where its connections live: a call from one of the
//! host's async threads steps aside with `block_in_place` and waits for its round trips there,
//! so the other async threads go on; a call from a plain thread just waits.
//!
//! # What lives where
//! Everything is in one schema (`postgres.schema`, made at the first start): definitions,
//! events and deliveries, with a delivery's routing in columns of its row (its due time is
//! the queue, its claim a lease in the row, its debounce or batch key, its place in an
//! in-order line). Records are the same JSON the sled store keeps; credentials are sealed the
//! same way, so every host of a database needs the same `secrets.key`.
//!
//! - `schema.rs`: versioned migrations, run at start under an advisory lock.
//! - `definitions.rs`: modules, webhooks, connections, keys, signing secrets, the change feed,
//!   plugin state and the host's own secrets.
//! - `ingest.rs`: events with their deliveries, routed (debounce, batches, in-order lines).
//! - `deliveries.rs`: reading, claiming and writing deliveries.
//! - `outcomes.rs`: plain outcomes finished at once, written in one statement.
//! - `queue.rs`: the due queue, lapsed claims, the hosts sharing the database.
//! - `pruning.rs`: retention.
//! - `throwaway.rs`: a PostgreSQL server of its own, for tests and benchmarks.

mod definitions;
mod deliveries;
mod ingest;
mod listen;
mod outcomes;
mod pruning;
mod queue;
mod schema;
#[cfg(test)]
mod tests;
pub mod throwaway;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::Millis;
use crate::storage::seal::Sealer;
use crate::storage::{BackupReport, Capacity, LowSpace, SpaceStatus, StorageError, StorageFuture};

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A connection URL (`postgres://user:password@host:port/database`) or key-value string.
    pub url: String,
    /// The schema the host's tables live in (made when missing).
    pub schema: String,
    /// Most connections this host opens.
    pub pool_size: usize,
    /// Longest a statement may run before the database cancels it.
    pub statement_timeout: Duration,
    /// Longest a call waits for a free connection, or for a new one to open.
    pub connect_timeout: Duration,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A setting is wrong.
    #[error("postgres.{field}: {message}")]
    Setting {
        /// Which one.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The database could not be reached or prepared.
    #[error("PostgreSQL at {url}: {source}")]
    Database {
        /// Where (without its password).
        url: String,
        /// What failed.
        source: StorageError,
    },
}

/// The PostgreSQL engine: a pool of connections to one schema. Clones share it.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    sealer: Sealer,
    /// Where the connections run (see [`Postgres::block`]); taken when the engine is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// The channels writes are announced on (`listen.rs`), with what they wake: among them
    /// the earliest due time queued since the scheduler last asked, by this handle or by
    /// another host.
    channels: listen::Channels,
    /// Where plain outcomes are written together (`outcomes.rs`).
    outcomes: outcomes::Outcomes,
    /// When lapsed claims were last released (wall clock, ms).
    reaped_at: std::sync::atomic::AtomicI64,
    /// Why the last try to get a connection failed (`None`: it worked).
    unreachable: std::sync::Mutex<Option<String>>,
    /// Where each call's duration is noted, once the host's metrics are made.
    timings: std::sync::OnceLock<crate::metrics::StorageCalls>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async caller may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Postgres {
    /// Connects, makes the schema when missing and brings its tables up to this version
    /// (several hosts starting at once take turns), and checks that the database's sealed
    /// records open with `sealer`'s key.
    ///
    /// # Errors
    /// On a wrong setting, or when the database cannot be reached or prepared.
    pub fn open(settings: &Settings, sealer: Sealer) -> Result<Postgres, OpenError> {
        crate::config::check_schema_name(&settings.schema).map_err(|message| {
            OpenError::Setting {
                field: "schema",
                message: message.0,
            }
        })?;
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| OpenError::Setting {
                field: "url",
                message: format!("not a PostgreSQL connection string: {e}"),
            })?;
        config.options(format!(
            "-c search_path={} -c statement_timeout={}",
            settings.schema,
            settings.statement_timeout.as_millis()
        ));
        config.connect_timeout(settings.connect_timeout);
        config.application_name("wasmhooks");
        let shown = shown_url(&config);
        let listener_config = config.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wasmhooks-pg")
            .enable_all()
            .build()
            .map_err(|e| OpenError::Database {
                url: shown.clone(),
                source: unavailable(e),
            })?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(settings.pool_size.max(1))
                .wait_timeout(Some(settings.connect_timeout))
                .create_timeout(Some(settings.connect_timeout))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| OpenError::Setting {
                    field: "pool_size",
                    message: e.to_string(),
                })?
        };
        // The database ends a statement at its timeout; a connection that stopped answering
        // is given up a little later.
        let write_limit = settings.statement_timeout + settings.connect_timeout;
        let outcomes = outcomes::Outcomes::start(&pool, &runtime, write_limit);
        let engine = Postgres {
            inner: Arc::new(Inner {
                outcomes,
                pool,
                sealer,
                runtime: Some(runtime),
                channels: listen::Channels::of(&settings.schema),
                reaped_at: std::sync::atomic::AtomicI64::new(0),
                unreachable: std::sync::Mutex::new(None),
                timings: std::sync::OnceLock::new(),
            }),
        };
        let database = |source| OpenError::Database {
            url: shown.clone(),
            source,
        };
        engine
            .block(schema::migrate(&engine.inner.pool, &settings.schema))
            .map_err(database)?;
        engine
            .call("open", engine.check_sealer())
            .map_err(database)?;
        let runtime = engine
            .inner
            .runtime
            .as_ref()
            .expect("runtime until dropped");
        runtime.spawn(listen::listen(
            listener_config,
            engine.inner.channels.clone(),
        ));
        Ok(engine)
    }

    /// [`Postgres::block`], noting how long the storage call `name` took.
    fn call<F>(&self, name: &'static str, work: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let started = std::time::Instant::now();
        let done = self.block(work);
        self.timed(name, started);
        done
    }

    /// Notes that the storage call `name` started at `started` has ended.
    fn timed(&self, name: &'static str, started: std::time::Instant) {
        if let Some(timings) = self.inner.timings.get() {
            timings.observe(name, started.elapsed().as_secs_f64());
        }
    }

    /// Runs `work` to its end on the engine's runtime and returns what it gave, blocking the
    /// calling thread (see the module docs).
    fn block<F>(&self, work: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let runtime = self.inner.runtime.as_ref().expect("runtime until dropped");
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| runtime.block_on(work))
            }
            // A single-threaded runtime cannot step aside: the wait moves to a thread of its
            // own (tests and embedders only; the host runs on the multi-threaded one).
            Ok(_) => std::thread::scope(|scope| {
                scope
                    .spawn(|| runtime.block_on(work))
                    .join()
                    .expect("a storage call panicked")
            }),
            Err(_) => runtime.block_on(work),
        }
    }

    /// A connection from the pool (noting whether the database could be reached).
    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        let got = self.inner.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => db_error(e),
            other => unavailable(other),
        });
        let why = got.as_ref().err().map(ToString::to_string);
        *self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = why;
        got
    }

    fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }
}

/// The URL to show in messages: where, never the password.
fn shown_url(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "{}:{}/{}",
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The engine could not reach or use the database.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::Unavailable {
        source: Box::new(e),
        out_of_space: false,
    }
}

/// A client error, shown with what the database said (the client's own text is only "db
/// error").
#[derive(Debug)]
struct PgError(tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "PostgreSQL: {} ({})", db.message(), db.code().code()),
            None => {
                write!(f, "PostgreSQL: {}", self.0)?;
                match std::error::Error::source(&self.0) {
                    Some(cause) => write!(f, ": {cause}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for PgError {}

/// A client error as a storage error: out of space when the database says so.
fn db_error(e: tokio_postgres::Error) -> StorageError {
    use tokio_postgres::error::SqlState;
    let out_of_space = e.code().is_some_and(|code| {
        code == &SqlState::DISK_FULL
            || code == &SqlState::OUT_OF_MEMORY
            || code == &SqlState::INSUFFICIENT_RESOURCES
    });
    StorageError::Unavailable {
        source: Box::new(PgError(e)),
        out_of_space,
    }
}

/// Whether a transaction failed only because another one got there first (it may be run
/// again): a unique key another transaction just took, a serialisation failure, a deadlock.
fn is_contended(e: &StorageError) -> bool {
    use tokio_postgres::error::SqlState;
    let StorageError::Unavailable { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<PgError>()
        .and_then(|e| e.0.code())
        .is_some_and(|code| {
            code == &SqlState::UNIQUE_VIOLATION
                || code == &SqlState::T_R_SERIALIZATION_FAILURE
                || code == &SqlState::T_R_DEADLOCK_DETECTED
        })
}

/// The statement for `sql`, prepared once per connection: one sent as text is prepared on
/// every call, a round trip more.
async fn cached(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
) -> Result<tokio_postgres::Statement, StorageError> {
    client.prepare_cached(sql).await.map_err(db_error)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model types serialise")
}

fn decode<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| record_error(table, key, e))
}

/// One record that cannot be read.
fn record_error(table: &str, key: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Record {
        source: format!("{table} record {key} cannot be read: {e}").into(),
    }
}

/// The associated data a record of `table` under `key` is sealed with.
fn seal_context(table: &str, key: &str) -> Vec<u8> {
    let mut context = Vec::with_capacity(table.len() + 1 + key.len());
    context.extend_from_slice(table.as_bytes());
    context.push(0);
    context.extend_from_slice(key.as_bytes());
    context
}

/// The earliest due time among queue entries this handle wrote since the last take.
struct WrittenDue(std::sync::atomic::AtomicI64);

impl Default for WrittenDue {
    fn default() -> Self {
        WrittenDue(std::sync::atomic::AtomicI64::new(i64::MAX))
    }
}

impl WrittenDue {
    fn note(&self, due: Millis) {
        self.0
            .fetch_min(due.as_i64(), std::sync::atomic::Ordering::AcqRel);
    }

    fn take(&self) -> Option<Millis> {
        let due = self.0.swap(i64::MAX, std::sync::atomic::Ordering::AcqRel);
        (due != i64::MAX).then_some(Millis(due))
    }
}

impl Capacity for Postgres {
    fn host_secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        self.call("host_secret", self.stored_secret(name))
    }

    /// The database keeps its own space; a full disk there fails the write, reported as out
    /// of space.
    fn admit(&self) -> Result<(), LowSpace> {
        Ok(())
    }

    fn space_status(&self) -> SpaceStatus {
        SpaceStatus {
            free: u64::MAX,
            floor: 0,
            accepting: true,
        }
    }

    /// Every write is its own committed transaction: nothing is left to make durable.
    fn commit(&self) -> StorageFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn stored_bytes(&self) -> Option<u64> {
        let measured = self.call("stored_bytes", async {
            let client = self.client().await?;
            client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'S')",
                    &[],
                )
                .await
                .map_err(db_error)
        });
        measured.ok().map(|row| row.get::<_, i64>(0).max(0) as u64)
    }

    fn database_connections(&self) -> Option<crate::metrics::Connections> {
        let status = self.inner.pool.status();
        Some(crate::metrics::Connections {
            max: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
        })
    }

    fn time_calls(&self, calls: crate::metrics::StorageCalls) {
        let _ = self.inner.timings.set(calls);
    }

    fn unreachable(&self) -> Option<String> {
        self.inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn backup(
        &self,
        _dir: &std::path::Path,
        _taken_at: Millis,
    ) -> Result<BackupReport, StorageError> {
        Err(StorageError::Unavailable {
            source: "the host's backup copies a sled store; on PostgreSQL, back up the \
                     database with its own tools (pg_dump, or a base backup with WAL archiving: \
                     docs/operator-guide.md, Several hosts)"
                .into(),
            out_of_space: false,
        })
    }
}
