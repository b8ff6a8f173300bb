//! [`Host`]: the embeddable whole — open a data dir, run the scheduler, serve the API, shut
//! down cleanly.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Engine};
use crate::pipeline::Pipeline;
use crate::storage::{Storage, StorageError};
use crate::store::Store;

/// Why a host could not open its data directory and start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be made (or made private).
    #[error("{action} data dir {}: {source}", dir.display())]
    DataDir {
        /// What was being done (`creating`, `restricting`).
        action: &'static str,
        /// The directory.
        dir: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The secrets key could not be had.
    #[error(transparent)]
    Key(#[from] crate::storage::seal::KeyError),
    /// The PostgreSQL engine did not open.
    #[error(transparent)]
    Postgres(#[from] crate::postgres::OpenError),
    /// The store did not open.
    #[error("opening data dir {}: {source}", dir.display())]
    Store {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: crate::store::StoreError,
    },
    /// The pipeline could not start.
    #[error(transparent)]
    Start(#[from] crate::pipeline::StartError),
    /// The first admin key could not be stored.
    #[error("creating the first admin key: {0}")]
    AdminKey(#[from] crate::pipeline::Error),
}

/// A running (or ready to run) wasmhooks host.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut host = wasmhooks::Host::open(wasmhooks::config::Config::default())?;
/// host.start();
/// let (info, _) = host.pipeline().catalog().upload_module("forward", "1", wasmhooks::examples::FORWARD)?;
/// # let _ = info;
/// host.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Host {
    pipeline: Arc<Pipeline>,
    /// The storage under the pipeline.
    storage: Arc<dyn Storage>,
    /// The sled store, when that is the engine (its disk upkeep is the host's).
    sled: Option<Store>,
    shutdown: watch::Sender<bool>,
    scheduler: Option<JoinHandle<()>>,
    pruner: Option<JoinHandle<()>>,
    first_admin_key: Option<String>,
}

impl Host {
    /// Opens the data dir named in `config` with the system clock.
    ///
    /// # Errors
    /// When the store cannot be opened or the sandbox cannot be built.
    pub fn open(config: Config) -> Result<Host, OpenError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Opens the data dir named in `config` with a given clock (tests control time this way).
    ///
    /// # Errors
    /// When the store cannot be opened or the sandbox cannot be built.
    pub fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Host, OpenError> {
        let (storage, sled) = match config.storage {
            Engine::Sled => {
                let store = open_sled(&config)?;
                (Arc::new(store.clone()) as Arc<dyn Storage>, Some(store))
            }
            Engine::Postgres => (Arc::new(open_postgres(&config)?) as Arc<dyn Storage>, None),
        };
        let pipeline = Arc::new(Pipeline::new(config, storage.clone(), clock)?);
        let first_admin_key = pipeline.catalog().bootstrap_admin_key()?;
        let (shutdown, _) = watch::channel(false);
        Ok(Host {
            pipeline,
            storage,
            sled,
            shutdown,
            scheduler: None,
            pruner: None,
            first_admin_key,
        })
    }

    /// The admin key created on this first start, if one was (no keys stored and none
    /// configured). Returned once: print it, it is not stored in clear anywhere.
    pub fn take_first_admin_key(&mut self) -> Option<String> {
        self.first_admin_key.take()
    }

    /// The pipeline: register modules and webhooks, emit events, read deliveries.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Starts the scheduler, the pruner and the disk watch (inside a tokio runtime). Calling
    /// it twice does nothing.
    pub fn start(&mut self) {
        if self.scheduler.is_none() {
            let receiver = self.shutdown.subscribe();
            self.scheduler = Some(tokio::spawn(self.pipeline.clone().run_scheduler(receiver)));
            let receiver = self.shutdown.subscribe();
            self.pruner = Some(tokio::spawn(self.pipeline.clone().run_pruner(receiver)));
            if let Some(store) = &self.sled {
                tokio::spawn(watch_disk(store.clone(), self.shutdown.subscribe()));
            }
            let catalog = self.pipeline.catalog().clone();
            let announced = self.storage.definition_announcements();
            tokio::spawn(follow_definitions(
                catalog,
                announced,
                self.shutdown.subscribe(),
            ));
        }
    }

    /// Serves the REST API on `listener` until `stop` completes.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn serve(
        &self,
        listener: TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = crate::api::router(self.pipeline.clone());
        let limits = self.pipeline.config().api.clone();
        crate::api::listener::serve(listener, app, &limits, stop).await
    }

    /// Tells the scheduler to stop starting deliveries: those in flight get
    /// `delivery.shutdown_grace` from now (see [`Host::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Stops the scheduler, waits for deliveries in flight (at most
    /// `delivery.shutdown_grace`, then they are handed back), and flushes storage.
    ///
    /// # Errors
    /// When the scheduler panicked or the final flush failed (what was acknowledged was
    /// flushed before it was).
    pub async fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.begin_shutdown();
        let mut result = Ok(());
        if let Some(handle) = self.scheduler.take() {
            if handle.await.is_err() {
                tracing::error!("the scheduler panicked");
                result = Err(ShutdownError::Scheduler);
            }
        }
        // A pass under way stops at its next step.
        if let Some(handle) = self.pruner.take() {
            if handle.await.is_err() {
                tracing::error!("the pruner panicked");
            }
        }
        if let Err(e) = self.storage.flush() {
            tracing::error!("final flush failed: {e}");
            result = Err(ShutdownError::Flush(e));
        }
        result
    }
}

/// Why a stop was not clean.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// The scheduler panicked.
    #[error("the scheduler panicked")]
    Scheduler,
    /// The final flush failed.
    #[error("the final flush failed: {0}")]
    Flush(StorageError),
}

/// Opens the sled store in `config.data_dir` (made private), with its secrets key.
fn open_sled(config: &Config) -> Result<Store, OpenError> {
    let dir = config.data_dir.clone();
    let sealer = secrets_sealer(config)?;
    let store =
        Store::open_guarded(&dir, sealer, &config.store).map_err(|source| OpenError::Store {
            dir: dir.clone(),
            source,
        })?;
    restrict_files(&dir).map_err(|e| OpenError::DataDir {
        action: "restricting",
        dir: dir.clone(),
        source: e,
    })?;
    Ok(store)
}

/// Opens the PostgreSQL engine of `config.postgres`; this host's own files (its secrets key
/// when generated, compiled plugins) stay in `config.data_dir`.
fn open_postgres(config: &Config) -> Result<crate::postgres::Postgres, OpenError> {
    let sealer = secrets_sealer(config)?;
    let postgres = &config.postgres;
    let settings = crate::postgres::Settings {
        url: postgres
            .url
            .as_ref()
            .map(|url| url.expose().to_string())
            .unwrap_or_default(),
        schema: postgres.schema.clone(),
        pool_size: postgres.pool_size,
        statement_timeout: postgres.statement_timeout,
        connect_timeout: postgres.connect_timeout,
    };
    Ok(crate::postgres::Postgres::open(&settings, sealer)?)
}

/// Makes the data dir (private) and reads, or makes, the key credentials are sealed with.
fn secrets_sealer(config: &Config) -> Result<crate::storage::seal::Sealer, OpenError> {
    let dir = config.data_dir.clone();
    create_private_dir(&dir).map_err(|source| OpenError::DataDir {
        action: "creating",
        dir: dir.clone(),
        source,
    })?;
    let key_file = config.secrets.key_file(&config.data_dir);
    let configured = config.secrets.key.as_ref().map(|k| k.expose());
    let (key, source) = crate::storage::seal::load_key(configured, &key_file)?;
    if let crate::storage::seal::KeySource::Generated(path) = &source {
        tracing::info!(
            "generated the secrets key in {}; keep it with the data: stored credentials \
                 cannot be read without it",
            path.display()
        );
    }
    Ok(crate::storage::seal::Sealer::new(key))
}

/// How often the catalog reads the definitions' change feed when nothing is announced.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the catalog's copies of webhooks and connections following what any writer changes
/// in storage (see [`crate::catalog::Catalog::follow`]): at once when the storage announces
/// a change, and every [`FOLLOW_EVERY`] in any case.
async fn follow_definitions(
    catalog: Arc<crate::catalog::Catalog>,
    announced: Option<Arc<tokio::sync::Notify>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let announced = announced.unwrap_or_default();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = announced.notified() => {}
        }
        let catalog = catalog.clone();
        match tokio::task::spawn_blocking(move || catalog.follow()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("following the definitions' changes: {e}"),
            Err(e) => tracing::error!("following the definitions' changes panicked: {e}"),
        }
    }
}

/// How often the disk watch measures free space (and makes the ballast again when there is
/// room); requests measure on their own in between.
const DISK_WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the free-space guard's view fresh while nothing asks, and the ballast in place.
async fn watch_disk(store: Store, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(DISK_WATCH_EVERY) => {}
        }
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || store.space().maintain()).await;
    }
}

/// Creates the data directory readable by its owner only (0700), and makes an existing one
/// so: it holds events, deliveries and sealed credentials.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Makes every file under `dir` owner-only (files 0600, folders 0700), whatever the umask
/// they were made with.
fn restrict_files(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let mode = if kind.is_dir() {
                restrict_files(&entry.path())?;
                0o700
            } else if kind.is_file() {
                0o600
            } else {
                continue;
            };
            let path = entry.path();
            if std::fs::metadata(&path)?.permissions().mode() & 0o777 != mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
