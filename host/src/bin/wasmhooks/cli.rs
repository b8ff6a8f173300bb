//! Command-line interface: `serve` and `demo`; `plugin run`, `plugin new` and `verify` for
//! plugin authors and receivers; and the operator commands (`emit`, `module`, `connection`,
//! `webhook`, `deliveries`, `replay`, `usage`, `backup`, `key`, `event`), which call a running
//! server's API.

mod plugin_run;
mod remote;
mod remote_args;
mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use wasmhooks::config::Config;
use wasmhooks::Host;

/// wasmhooks: webhook delivery with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "wasmhooks", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The server and key for commands that call the API.
    #[command(flatten)]
    pub remote: remote::Remote,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: API, scheduler and sender.
    Serve {
        /// TOML settings file (then WASMHOOKS_* environment variables apply).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides the settings).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:8080 (overrides the settings).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Emit one event to a running server.
    Emit {
        /// Event kind, e.g. order.created.
        #[arg(long)]
        kind: String,
        /// Event id (generated when absent; re-sending an id is a no-op).
        #[arg(long)]
        id: Option<String>,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Routing attribute as key=value (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
        /// Payload JSON text.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// File holding the payload JSON.
        #[arg(long)]
        payload_file: Option<PathBuf>,
    },
    /// Plugin modules: upload, list, get, delete.
    Module {
        /// The module command.
        #[command(subcommand)]
        command: remote::ModuleCommand,
    },
    /// Connections: shared destinations with auth and headers.
    Connection {
        /// The connection command.
        #[command(subcommand)]
        command: remote::ConnectionCommand,
    },
    /// Webhooks: create, list, get, update, delete, enable, disable, test, recover,
    /// rotate-secret.
    Webhook {
        /// The webhook command.
        #[command(subcommand)]
        command: remote::WebhookCommand,
    },
    /// Deliveries: list and inspect.
    Deliveries {
        /// The delivery command.
        #[command(subcommand)]
        command: remote::DeliveryCommand,
    },
    /// Send a finished delivery again (as a new delivery).
    Replay {
        /// Delivery id.
        id: String,
    },
    /// Evaluation time per webhook, most first, and which webhooks are throttled.
    Usage,
    /// Have the server write a backup it can start from, while it runs, into a new or empty
    /// directory on its machine (a relative path is taken from this command's directory).
    Backup {
        /// Where the server writes it.
        dir: PathBuf,
    },
    /// API keys: create, list, get, revoke.
    Key {
        /// The key command.
        #[command(subcommand)]
        command: remote::KeyCommand,
    },
    /// Stored events.
    Event {
        /// The event command.
        #[command(subcommand)]
        command: remote::EventCommand,
    },
    /// Tools for plugin authors.
    Plugin {
        /// The plugin tool.
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Start a server with the example plugins, deliver sample events to a built-in receiver,
    /// and print what was sent.
    Demo {
        /// Keep the server running after the demo (Ctrl-C stops it).
        #[arg(long)]
        keep_running: bool,
    },
    /// Verify a delivery's Standard Webhooks signature, as a receiver would: exit 0 when it
    /// is valid, 1 with the reason when not.
    Verify {
        /// The signing secret (`whsec_…`); or set WASMHOOKS_SIGNING_SECRET.
        #[arg(long, env = "WASMHOOKS_SIGNING_SECRET", hide_env_values = true)]
        secret: String,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header.
        #[arg(long)]
        timestamp: String,
        /// The `webhook-signature` header.
        #[arg(long)]
        signature: String,
        /// File holding the exact body received (`-` for standard input).
        #[arg(long)]
        body: PathBuf,
        /// Accept timestamps this far from now, such as `5m` (the spec's default).
        #[arg(long, default_value = "5m")]
        tolerance: String,
    },
}

/// Plugin author tools.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin on an event locally (no server): prints the decision, the requests, the
    /// logs and what the evaluation cost against its limits.
    Run(PluginRunArgs),
    /// Create a plugin project (Rust, JavaScript or Python) that builds and passes its own
    /// tests as generated.
    New(scaffold::NewArgs),
}

/// Arguments of `wasmhooks plugin run`.
#[derive(clap::Args, Debug)]
pub struct PluginRunArgs {
    /// The component (.wasm).
    pub wasm: PathBuf,
    /// Event JSON file: {"kind": …, "payload": …, optional id, tenant, attributes, occurred_at}.
    #[arg(long)]
    pub event: PathBuf,
    /// Webhook config JSON file (default {}).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// URL the requests would go to (for showing full URLs).
    #[arg(long, default_value = "https://receiver.example/webhook")]
    pub url: String,
    /// Limits to run under, as a webhook's `limits` object, such as
    /// '{"cpu_time": "10ms", "memory_bytes": 4194304}' (default: the host's defaults).
    #[arg(long)]
    pub limits: Option<String>,
    /// Also count fuel (about one unit per wasm instruction); makes the run a little slower.
    #[arg(long)]
    pub fuel: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever the command failed on, with context.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let remote = &cli.remote;
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            listen,
        } => {
            let mut settings = Config::load(config.as_deref(), std::env::vars())?;
            if let Some(dir) = data_dir {
                settings.data_dir = dir;
            }
            if let Some(addr) = listen {
                settings.listen = addr;
            }
            let runtime = runtime()?;
            let served = runtime.block_on(serve(settings));
            // Blocking work still running (a backup's copy, a name lookup that hangs) is not
            // waited for: what was acknowledged is flushed.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit {
            kind,
            id,
            tenant,
            attributes,
            payload,
            payload_file,
        } => {
            let payload = match (payload, payload_file) {
                (Some(text), _) => text,
                (None, Some(file)) => std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
                (None, None) => "{}".to_string(),
            };
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("the payload is not valid JSON")?;
            let mut attrs = serde_json::Map::new();
            for pair in attributes {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--attr `{pair}` must be KEY=VALUE");
                };
                attrs.insert(k.to_string(), v.into());
            }
            let mut body =
                serde_json::json!({ "kind": kind, "payload": payload, "attributes": attrs });
            if let Some(id) = id {
                body["id"] = id.into();
            }
            if let Some(tenant) = tenant {
                body["tenant"] = tenant.into();
            }
            remote::emit(remote, body)
        }
        Command::Module { command } => remote::module(remote, command),
        Command::Connection { command } => remote::connection(remote, command),
        Command::Webhook { command } => remote::webhook(remote, command),
        Command::Deliveries { command } => remote::deliveries(remote, command),
        Command::Replay { id } => remote::replay(remote, &id),
        Command::Usage => remote::usage(remote),
        Command::Backup { dir } => remote::backup(remote, &dir),
        Command::Key { command } => remote::key(remote, command),
        Command::Event { command } => remote::event(remote, command),
        Command::Plugin {
            command: PluginCommand::Run(args),
        } => plugin_run::run(&args),
        Command::Plugin {
            command: PluginCommand::New(args),
        } => scaffold::run(&args),
        Command::Demo { keep_running } => runtime()?.block_on(crate::demo::run(keep_running)),
        Command::Verify {
            secret,
            id,
            timestamp,
            signature,
            body,
            tolerance,
        } => verify(&secret, &id, &timestamp, &signature, &body, &tolerance),
    }
}

fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &std::path::Path,
    tolerance: &str,
) -> anyhow::Result<ExitCode> {
    use wasmhooks::signature::{self, Verifier};
    let verifier = Verifier::parse(secret).context("--secret")?;
    let tolerance = wasmhooks::model::parse_duration(tolerance)
        .map_err(|e| anyhow::anyhow!("--tolerance: {e}"))?;
    let body = if body.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
        bytes
    } else {
        std::fs::read(body).with_context(|| format!("reading {}", body.display()))?
    };
    let now = jiff::Timestamp::now().as_second();
    match signature::verify_with(
        &verifier,
        id,
        timestamp,
        signature,
        &body,
        now,
        tolerance.as_secs() as i64,
    ) {
        Ok(()) => {
            println!("valid");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Plugins run on blocking threads; their wasm stack (at most 1 MiB) lives on the
        // thread's stack beside the host's frames.
        .thread_stack_size(4 << 20)
        .build()
        .context("starting the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let data_dir = config.data_dir.clone();
    // What the server writes (the store, compiled plugins, the secrets key) is its own.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    #[cfg(unix)]
    unsafe {
        libc::umask(0o077);
    }
    let grace = config.delivery.shutdown_grace;
    // The first Ctrl-C or SIGTERM stops the host within the grace period; a second one
    // stops it at once (what was acknowledged is durable already). Listened for before the
    // store opens, so a stop while it opens is a clean one too.
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.send_replace(true);
        shutdown_signal().await;
        eprintln!("a second stop signal: exiting without waiting");
        std::process::exit(130);
    });
    tokio::task::yield_now().await;
    let mut host = Host::open(config)?;
    host.start();
    // The first stdout line is the address: scripts and tests read it.
    println!("wasmhooks listening on http://{addr}");
    if let Some(key) = host.take_first_admin_key() {
        println!("first start: created an admin API key; it is shown only this once:");
        println!("  {key}");
        println!("use it as `Authorization: Bearer <key>` or WASMHOOKS_KEY for the CLI");
    }
    tracing::info!(%addr, data_dir = %data_dir.display(), "serving");
    let api_stop = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        }
    };
    {
        let serving = host.serve(listener, api_stop);
        tokio::pin!(serving);
        tokio::select! {
            served = &mut serving => served?,
            _ = stop.wait_for(|stopping| *stopping) => {
                tracing::info!("shutting down");
                // The flow's grace period runs while the API lets requests in progress end.
                host.begin_shutdown();
                if tokio::time::timeout(grace, &mut serving).await.is_err() {
                    tracing::warn!(
                        "API requests still in progress after delivery.shutdown_grace are cut off"
                    );
                }
            }
        }
    }
    host.shutdown().await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
