//! [`Host`]: the embeddable whole — open a data dir, run the scheduler, serve the API, shut
//! down cleanly.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::store::Store;

/// A running (or ready to run) wasmhooks host.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let mut host = wasmhooks::Host::open(wasmhooks::config::Config::default())?;
/// host.start();
/// let (info, _) = host.pipeline().upload_module("forward", "1", wasmhooks::examples::FORWARD)?;
/// # let _ = info;
/// host.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Host {
    pipeline: Arc<Pipeline>,
    shutdown: watch::Sender<bool>,
    scheduler: Option<JoinHandle<()>>,
    first_admin_key: Option<String>,
}

impl Host {
    /// Opens the data dir named in `config` with the system clock.
    ///
    /// # Errors
    /// When the store cannot be opened or the sandbox cannot be built.
    pub fn open(config: Config) -> anyhow::Result<Host> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Opens the data dir named in `config` with a given clock (tests control time this way).
    ///
    /// # Errors
    /// When the store cannot be opened or the sandbox cannot be built.
    pub fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Host> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", config.data_dir.display()))?;
        let key_file = config.secrets.key_file(&config.data_dir);
        let configured = config.secrets.key.as_ref().map(|k| k.expose());
        let (key, source) = crate::store::seal::load_key(configured, &key_file)?;
        if let crate::store::seal::KeySource::Generated(path) = &source {
            tracing::info!(
                "generated the secrets key in {}; keep it with the data: stored credentials \
                 cannot be read without it",
                path.display()
            );
        }
        let sealer = crate::store::Sealer::new(key);
        let store = Store::open_with_cache(&config.data_dir, sealer, config.store.cache_bytes)
            .map_err(|e| anyhow::anyhow!("opening data dir {}: {e}", config.data_dir.display()))?;
        let pipeline = Arc::new(Pipeline::new(config, store, clock)?);
        let first_admin_key = pipeline.bootstrap_admin_key()?;
        let (shutdown, _) = watch::channel(false);
        Ok(Host {
            pipeline,
            shutdown,
            scheduler: None,
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

    /// Starts the scheduler (inside a tokio runtime). Calling it twice does nothing.
    pub fn start(&mut self) {
        if self.scheduler.is_none() {
            let receiver = self.shutdown.subscribe();
            self.scheduler = Some(tokio::spawn(self.pipeline.clone().run_scheduler(receiver)));
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
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    }

    /// Stops the scheduler, waits for deliveries in flight, and flushes storage.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(handle) = self.scheduler.take() {
            let _ = handle.await;
        }
        if let Err(e) = self.pipeline.store().flush() {
            tracing::error!("final flush failed: {e}");
        }
    }
}
