//! The operator commands: a thin client of a running server's REST API. Each command is one
//! API call (lists may follow cursors); the CLI adds no behaviour of its own, so the CLI and
//! the API cannot disagree.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

pub use super::remote_args::*;

/// The API client, run to completion for one command.
pub struct Client {
    api: wasmhooks::client::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client of `remote`.
    ///
    /// # Errors
    /// When the key is not a valid header value or the runtime cannot start.
    pub fn new(remote: &Remote) -> anyhow::Result<Client> {
        Ok(Client {
            api: wasmhooks::client::Client::new(&remote.server, remote.key.as_deref())?,
            runtime: super::runtime()?,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
        body: Option<Body>,
    ) -> anyhow::Result<Answer> {
        Ok(self
            .runtime
            .block_on(self.api.call(method, path, query, body))?)
    }
}

fn succeeded(answer: &Answer) -> bool {
    (200..300).contains(&answer.status)
}

/// Prints an answer: the error on stderr (exit 1), or the body as pretty JSON.
fn show(answer: Answer) -> anyhow::Result<ExitCode> {
    if !succeeded(&answer) {
        return Ok(fail(&answer));
    }
    println!("{}", serde_json::to_string_pretty(&answer.body)?);
    Ok(ExitCode::SUCCESS)
}

fn fail(answer: &Answer) -> ExitCode {
    if let Err(error) = answer.clone().into_result() {
        eprintln!("error: {error}");
    }
    ExitCode::FAILURE
}

/// Columns of a table: header and the JSON field shown under it.
type Columns = &'static [(&'static str, &'static str)];

/// Runs a list call (following cursors with `--all`) and prints a table or JSON.
fn list(
    client: &Client,
    path: &str,
    args: &ListArgs,
    mut query: Vec<(String, String)>,
    columns: Columns,
) -> anyhow::Result<ExitCode> {
    for filter in &args.filters {
        let (k, v) = split_pair(filter, "--filter")?;
        query.push((k, v));
    }
    for (name, value) in [
        ("limit", args.limit.map(|l| l.to_string())),
        ("order_by", args.order_by.clone()),
        ("direction", args.direction.clone()),
    ] {
        if let Some(value) = value {
            query.push((name.to_string(), value));
        }
    }
    let mut cursor = args.cursor.clone();
    let mut rows = Vec::new();
    loop {
        let mut q = query.clone();
        if let Some(c) = &cursor {
            q.push(("cursor".into(), c.clone()));
        }
        let answer = client.call(reqwest::Method::GET, path, &q, None)?;
        if !succeeded(&answer) {
            return Ok(fail(&answer));
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer.body)?);
        } else {
            rows.extend(answer.body["data"].as_array().cloned().unwrap_or_default());
        }
        cursor = answer.body["next_cursor"].as_str().map(str::to_string);
        if !args.all || cursor.is_none() {
            break;
        }
    }
    if !args.json {
        print_table(columns, &rows);
        if let Some(c) = cursor {
            println!("(more: --cursor {c})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print_table(columns: Columns, rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, pointer)| cell(row.pointer(pointer).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|(h, _)| *h).collect());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

fn expand_query(expand: Option<&String>) -> Vec<(String, String)> {
    expand
        .map(|e| vec![("expand".to_string(), e.clone())])
        .unwrap_or_default()
}

const MODULE_COLUMNS: Columns = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("VERSION", "/version"),
    ("SIZE", "/size"),
    ("FEATURES", "/features"),
];
const CONNECTION_COLUMNS: Columns = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("BASE URL", "/base_url"),
    ("AUTH", "/auth/type"),
];
const WEBHOOK_COLUMNS: Columns = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("ENABLED", "/enabled"),
    ("KINDS", "/event_kinds"),
    ("CONNECTION", "/connection_id"),
    ("URL", "/url"),
];
const DELIVERY_COLUMNS: Columns = &[
    ("ID", "/id"),
    ("STATUS", "/status"),
    ("WEBHOOK", "/webhook_id"),
    ("EVENT", "/event_id"),
    ("CREATED", "/created_at"),
    ("ATTEMPTS", "/attempt_count"),
    ("LAST", "/last_status"),
];
const KEY_COLUMNS: Columns = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("ROLE", "/role"),
    ("TENANT", "/tenant"),
    ("REVOKED", "/revoked"),
];

use reqwest::Method as M;
use wasmhooks::client::{Answer, Body};

/// Runs a module command.
///
/// # Errors
/// When the server cannot be reached or a file cannot be read.
pub fn module(remote: &Remote, command: ModuleCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    match command {
        ModuleCommand::Upload {
            file,
            name,
            version,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let query = vec![("name".into(), name), ("version".into(), version)];
            show(c.call(M::POST, "/v1/modules", &query, Some(Body::Wasm(bytes)))?)
        }
        ModuleCommand::List(args) => list(&c, "/v1/modules", &args, Vec::new(), MODULE_COLUMNS),
        ModuleCommand::Get { id, expand } => show(c.call(
            M::GET,
            &format!("/v1/modules/{id}"),
            &expand_query(expand.as_ref()),
            None,
        )?),
        ModuleCommand::Delete { id } => {
            show(c.call(M::DELETE, &format!("/v1/modules/{id}"), &[], None)?)
        }
    }
}

/// Runs a connection command.
///
/// # Errors
/// When the server cannot be reached or an argument is malformed.
pub fn connection(remote: &Remote, command: ConnectionCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    match command {
        ConnectionCommand::Create(fields) => show(c.call(
            M::POST,
            "/v1/connections",
            &[],
            Some(Body::Json(fields.to_json()?)),
        )?),
        ConnectionCommand::List(args) => {
            list(&c, "/v1/connections", &args, Vec::new(), CONNECTION_COLUMNS)
        }
        ConnectionCommand::Get { id, expand } => show(c.call(
            M::GET,
            &format!("/v1/connections/{id}"),
            &expand_query(expand.as_ref()),
            None,
        )?),
        ConnectionCommand::Update { id, fields } => show(c.call(
            M::PATCH,
            &format!("/v1/connections/{id}"),
            &[],
            Some(Body::Json(fields.to_json()?)),
        )?),
        ConnectionCommand::Delete { id } => {
            show(c.call(M::DELETE, &format!("/v1/connections/{id}"), &[], None)?)
        }
    }
}

/// Runs a webhook command.
///
/// # Errors
/// When the server cannot be reached or an argument is malformed.
pub fn webhook(remote: &Remote, command: WebhookCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    let path = |id: &str, action: &str| format!("/v1/webhooks/{id}{action}");
    match command {
        WebhookCommand::Create(fields) => show(c.call(
            M::POST,
            "/v1/webhooks",
            &[],
            Some(Body::Json(fields.to_json()?)),
        )?),
        WebhookCommand::List(args) => list(&c, "/v1/webhooks", &args, Vec::new(), WEBHOOK_COLUMNS),
        WebhookCommand::Get { id, expand } => {
            show(c.call(M::GET, &path(&id, ""), &expand_query(expand.as_ref()), None)?)
        }
        WebhookCommand::Update { id, fields } => show(c.call(
            M::PATCH,
            &path(&id, ""),
            &[],
            Some(Body::Json(fields.to_json()?)),
        )?),
        WebhookCommand::Delete { id } => show(c.call(M::DELETE, &path(&id, ""), &[], None)?),
        WebhookCommand::Enable { id } => show(c.call(M::POST, &path(&id, "/enable"), &[], None)?),
        WebhookCommand::Disable { id } => {
            show(c.call(M::POST, &path(&id, "/disable"), &[], None)?)
        }
        WebhookCommand::Test { id, event } => {
            let event = read_json_file(&event)?;
            show(c.call(M::POST, &path(&id, "/test"), &[], Some(Body::Json(event)))?)
        }
        WebhookCommand::Recover { id, since, until } => {
            let mut body = json!({ "since": since });
            if let Some(until) = until {
                body["until"] = until.into();
            }
            show(c.call(M::POST, &path(&id, "/recover"), &[], Some(Body::Json(body)))?)
        }
        WebhookCommand::RotateSecret { id, secret, scheme } => {
            let mut body = json!({});
            if let Some(secret) = secret {
                body["secret"] = secret.into();
            }
            if let Some(scheme) = scheme {
                body["scheme"] = scheme.into();
            }
            show(c.call(
                M::POST,
                &path(&id, "/rotate-secret"),
                &[],
                Some(Body::Json(body)),
            )?)
        }
    }
}

/// Runs a delivery command.
///
/// # Errors
/// When the server cannot be reached or an argument is malformed.
pub fn deliveries(remote: &Remote, command: DeliveryCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    match command {
        DeliveryCommand::List {
            webhook,
            event,
            status,
            since,
            until,
            list: args,
        } => {
            let query: Vec<(String, String)> = [
                ("webhook_id", webhook),
                ("event_id", event),
                ("status", status),
                ("created_after", since),
                ("created_before", until),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
            list(&c, "/v1/deliveries", &args, query, DELIVERY_COLUMNS)
        }
        DeliveryCommand::Get { id, expand } => show(c.call(
            M::GET,
            &format!("/v1/deliveries/{id}"),
            &expand_query(expand.as_ref()),
            None,
        )?),
    }
}

/// Replays one delivery.
///
/// # Errors
/// When the server cannot be reached.
pub fn replay(remote: &Remote, id: &str) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    show(c.call(M::POST, &format!("/v1/deliveries/{id}/replay"), &[], None)?)
}

/// Shows the evaluation time per webhook and who is throttled.
///
/// # Errors
/// When the server cannot be reached.
pub fn usage(remote: &Remote) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    show(c.call(M::GET, "/v1/usage", &[], None)?)
}

/// Has the server write a backup into `dir` (made absolute from this directory).
///
/// # Errors
/// When the server cannot be reached, or the working directory cannot be read.
pub fn backup(remote: &Remote, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    let body = json!({ "dir": dir.display().to_string() });
    show(c.call(M::POST, "/v1/backup", &[], Some(Body::Json(body)))?)
}

/// Runs an API key command.
///
/// # Errors
/// When the server cannot be reached.
pub fn key(remote: &Remote, command: KeyCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    match command {
        KeyCommand::Create { name, role, tenant } => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(tenant) = tenant {
                body["tenant"] = tenant.into();
            }
            let answer = c.call(M::POST, "/v1/keys", &[], Some(Body::Json(body)))?;
            if succeeded(&answer) {
                eprintln!("the key is shown only this once; store it now");
            }
            show(answer)
        }
        KeyCommand::List(args) => list(&c, "/v1/keys", &args, Vec::new(), KEY_COLUMNS),
        KeyCommand::Get { id } => show(c.call(M::GET, &format!("/v1/keys/{id}"), &[], None)?),
        KeyCommand::Revoke { id } => {
            show(c.call(M::DELETE, &format!("/v1/keys/{id}"), &[], None)?)
        }
    }
}

/// Runs an event command.
///
/// # Errors
/// When the server cannot be reached.
pub fn event(remote: &Remote, command: EventCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    match command {
        EventCommand::Get { id, tenant } => {
            let query: Vec<(String, String)> = tenant
                .into_iter()
                .map(|t| ("tenant".to_string(), t))
                .collect();
            show(c.call(M::GET, &format!("/v1/events/{id}"), &query, None)?)
        }
    }
}

/// Emits one event.
///
/// # Errors
/// When the server cannot be reached.
pub fn emit(remote: &Remote, body: Value) -> anyhow::Result<ExitCode> {
    let c = Client::new(remote)?;
    let answer = c.call(M::POST, "/v1/events", &[], Some(Body::Json(body)))?;
    if !succeeded(&answer) {
        return Ok(fail(&answer));
    }
    println!("{}", answer.body);
    Ok(ExitCode::SUCCESS)
}

fn read_json_file(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}
