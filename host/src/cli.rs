//! Command-line interface: `serve`, `emit`, `plugin run`, `demo`.

mod plugin_run;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::Host;

/// wasmhooks: webhook delivery with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "wasmhooks", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
        /// The server's base URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080",
            env = "WASMHOOKS_SERVER"
        )]
        server: String,
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
}

/// Plugin author tools.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin on an event locally (no server): prints the decision, the requests, the
    /// logs and what the evaluation cost.
    Run {
        /// The component (.wasm).
        wasm: PathBuf,
        /// Event JSON file: {"kind": …, "payload": …, optional id, tenant, attributes, occurred_at}.
        #[arg(long)]
        event: PathBuf,
        /// Webhook config JSON file (default {}).
        #[arg(long)]
        config: Option<PathBuf>,
        /// URL the requests would go to (for showing full URLs).
        #[arg(long, default_value = "https://receiver.example/webhook")]
        url: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command.
///
/// # Errors
/// Whatever the command failed on, with context.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
            runtime()?.block_on(serve(settings))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit {
            server,
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
            runtime()?.block_on(async {
                let response = reqwest::Client::new()
                    .post(format!("{}/v1/events", server.trim_end_matches('/')))
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| format!("sending to {server}"))?;
                let status = response.status();
                let text = response.text().await?;
                println!("{text}");
                if status.is_success() {
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("server answered {status}");
                    Ok(ExitCode::FAILURE)
                }
            })
        }
        Command::Plugin {
            command:
                PluginCommand::Run {
                    wasm,
                    event,
                    config,
                    url,
                    json,
                },
        } => plugin_run::run(&wasm, &event, config.as_deref(), &url, json),
        Command::Demo { keep_running } => runtime()?.block_on(crate::demo::run(keep_running)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let data_dir = config.data_dir.clone();
    let mut host = Host::open(config)?;
    host.start();
    // The first stdout line is the address: scripts and tests read it.
    println!("wasmhooks listening on http://{addr}");
    tracing::info!(%addr, data_dir = %data_dir.display(), "serving");
    host.serve(listener, shutdown_signal()).await?;
    tracing::info!("shutting down");
    host.shutdown().await;
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
