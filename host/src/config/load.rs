//! Reading the settings: defaults, then the file, then `WASMHOOKS_*` variables, each layer
//! checked for unknown keys, then every value checked; and the text formats of settings
//! other modules parse (the secrets key, allow-listed networks).

use crate::model::Invalid;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A layer did not parse or had unknown keys.
    #[error("{origin}: {message}")]
    Parse {
        /// Which layer (file path or "environment").
        origin: String,
        /// What was wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The rule it breaks.
        message: String,
    },
}

impl Config {
    /// Loads defaults, then `file` if given, then `WASMHOOKS_*` variables from `env`.
    ///
    /// # Errors
    /// When the file cannot be read, a layer does not parse or has unknown keys, or a value is
    /// invalid.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialise");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let layer: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        origin: path.display().to_string(),
                        message: e.to_string(),
                    })?;
            merge(&mut table, layer);
            check(&table, &path.display().to_string())?;
        }
        let env_layer = env_table(env)?;
        if !env_layer.is_empty() {
            merge(&mut table, env_layer);
            check(&table, "environment")?;
        }
        let config = check(&table, "settings")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that types cannot express.
    ///
    /// # Errors
    /// The first invalid value, by key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if !(0.0..=1.0).contains(&self.delivery.jitter) {
            return invalid("delivery.jitter", "must be between 0 and 1");
        }
        if self.delivery.timeout.is_zero() {
            return invalid("delivery.timeout", "must be more than zero");
        }
        if self.delivery.endpoint_concurrency == 0 {
            return invalid("delivery.endpoint_concurrency", "must be at least 1");
        }
        if !(self.delivery.endpoint_rate >= 0.0 && self.delivery.endpoint_rate.is_finite()) {
            return invalid("delivery.endpoint_rate", "must be 0 (no limit) or more");
        }
        if self.storage == Engine::Postgres && self.postgres.url.is_none() {
            return invalid(
                "postgres.url",
                "is required with storage = \"postgres\" (postgres://user:password@host:port/database)",
            );
        }
        if self.postgres.pool_size == 0 {
            return invalid("postgres.pool_size", "must be at least 1");
        }
        if self.postgres.statement_timeout.is_zero() || self.postgres.connect_timeout.is_zero() {
            let key = if self.postgres.statement_timeout.is_zero() {
                "postgres.statement_timeout"
            } else {
                "postgres.connect_timeout"
            };
            return invalid(key, "must be more than zero");
        }
        if let Err(message) = check_schema_name(&self.postgres.schema) {
            return invalid("postgres.schema", &message.0);
        }
        if self.store.cache_bytes < 1 << 20 {
            return invalid("store.cache_bytes", "must be at least 1048576 (1 MiB)");
        }
        if let Some(key) = &self.secrets.key {
            if let Err(message) = parse_secrets_key(key.expose()) {
                return invalid("secrets.key", &message.0);
            }
        }
        if let Some(Err(message)) = self
            .delivery
            .allowed_destinations
            .iter()
            .map(|t| parse_network(t))
            .find(Result::is_err)
        {
            return invalid("delivery.allowed_destinations", &message.0);
        }
        if !(self.delivery.tenant_share > 0.0 && self.delivery.tenant_share <= 1.0) {
            return invalid(
                "delivery.tenant_share",
                "must be more than 0 and at most 1 (1: no cap per tenant)",
            );
        }
        if self.retention.interval < Duration::from_millis(100) {
            return invalid("retention.interval", "must be at least 100ms");
        }
        if !(1..=100_000).contains(&self.retention.batch) {
            return invalid("retention.batch", "must be 1 to 100000");
        }
        if self.delivery.max_in_flight == 0 {
            return invalid("delivery.max_in_flight", "must be at least 1");
        }
        let absolute = PluginLimits {
            cpu_time: Duration::from_secs(3600),
            memory_bytes: 64 << 30,
            output_bytes: 1 << 30,
            requests: 100_000,
            log_bytes: 1 << 30,
            state_bytes: 1 << 30,
        };
        if let Err((name, message)) = self.plugin.max_limits.check(&absolute) {
            return Err(ConfigError::Invalid {
                key: "plugin.max_limits",
                message: format!("{name} {message}"),
            });
        }
        if let Err((name, message)) = self.plugin.limits.check(&self.plugin.max_limits) {
            return Err(ConfigError::Invalid {
                key: "plugin.limits",
                message: format!("{name} {message} (plugin.max_limits.{name})"),
            });
        }
        let fair = &self.plugin.fair_share;
        for (key, budget) in [
            (
                "plugin.fair_share.webhook_cpu_per_second",
                fair.webhook_cpu_per_second,
            ),
            (
                "plugin.fair_share.tenant_cpu_per_second",
                fair.tenant_cpu_per_second,
            ),
        ] {
            if !budget.is_zero() && budget < Duration::from_millis(1) {
                return invalid(key, "must be 0s (no budget) or at least 1ms");
            }
        }
        if !((64 << 10)..=(1 << 20)).contains(&self.plugin.stack_bytes) {
            return invalid("plugin.stack_bytes", "must be 64 KiB to 1 MiB");
        }
        if self.api.max_name_len == 0 || self.api.max_url_len < 16 {
            return invalid("api", "name and URL limits are too small");
        }
        if self
            .api
            .admin_key
            .as_ref()
            .is_some_and(|k| k.expose().len() < 16)
        {
            return invalid("api.admin_key", "must be at least 16 characters");
        }
        if self
            .api
            .metrics_token
            .as_ref()
            .is_some_and(|k| k.expose().len() < 16)
        {
            return invalid("api.metrics_token", "must be at least 16 characters");
        }
        if self.api.max_batch_events == 0 {
            return invalid("api.max_batch_events", "must be at least 1");
        }
        if !(0.0..=50.0).contains(&self.store.min_free_percent) {
            return invalid("store.min_free_percent", "must be 0 to 50");
        }
        for (key, value) in [
            ("api.max_connections", self.api.max_connections),
            (
                "api.max_connections_per_address",
                self.api.max_connections_per_address,
            ),
            (
                "api.max_requests_per_connection",
                self.api.max_requests_per_connection,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if let Some(Err(message)) = self
            .api
            .trusted_proxies
            .iter()
            .map(|t| parse_network(t))
            .find(Result::is_err)
        {
            return invalid("api.trusted_proxies", &message.0);
        }
        for (key, timeout) in [
            ("api.header_timeout", self.api.header_timeout),
            ("api.body_timeout", self.api.body_timeout),
            ("api.idle_timeout", self.api.idle_timeout),
        ] {
            if timeout.is_zero() {
                return invalid(key, "must be more than 0");
            }
        }
        Ok(())
    }
}

fn check(table: &toml::Table, origin: &str) -> Result<Config, ConfigError> {
    Config::deserialize(table.clone()).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_t)), toml::Value::Table(layer_t)) => {
                merge(base_t, layer_t)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `WASMHOOKS_*` variables that belong to the command line, not to the settings.
pub const RESERVED_ENV: &[&str] = &[
    "WASMHOOKS_SERVER",
    "WASMHOOKS_KEY",
    "WASMHOOKS_SIGNING_SECRET",
];

fn env_table(env: impl IntoIterator<Item = (String, String)>) -> Result<toml::Table, ConfigError> {
    let mut root = toml::Table::new();
    for (name, raw) in env {
        let Some(path) = name.strip_prefix("WASMHOOKS_") else {
            continue;
        };
        if RESERVED_ENV.contains(&name.as_str()) {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::Parse {
                origin: "environment".into(),
                message: format!("{name}: empty key segment"),
            });
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let mut table = &mut root;
        for key in &keys[..keys.len() - 1] {
            table = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| ConfigError::Parse {
                    origin: "environment".into(),
                    message: format!("{name}: `{key}` is both a value and a table"),
                })?;
        }
        table.insert(keys[keys.len() - 1].clone(), value);
    }
    Ok(root)
}

/// Parses a key given as text: base64 of 32 bytes.
///
/// # Errors
/// A message saying what the key must be.
pub fn parse_secrets_key(text: &str) -> Result<[u8; 32], Invalid> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| Invalid::from("must be base64 of 32 random bytes (not valid base64)"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        Invalid(format!(
            "must be base64 of 32 random bytes (it has {})",
            b.len()
        ))
    })
}

/// Parses an allow-listed destination: an address (`127.0.0.1`, `::1`) or a network
/// (`10.0.0.0/8`).
///
/// # Errors
/// A message naming the text.
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, Invalid> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    if let Ok(address) = text.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(address));
    }
    Err(Invalid::from(format!(
        "`{text}` is neither an IP address nor a network such as 10.0.0.0/8"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_svix_like() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.delivery.retry_schedule.len(), 7);
        assert_eq!(config.plugin.limits.cpu_time, Duration::from_millis(50));
    }

    #[test]
    fn file_then_env_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[delivery]\njitter = 0.1\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("WASMHOOKS_DELIVERY__RETRY_SCHEDULE", "[\"100ms\", \"1s\"]"),
                ("WASMHOOKS_DATA_DIR", "/tmp/x"),
                ("OTHER", "ignored"),
                ("WASMHOOKS_SERVER", "http://used-by-emit"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.delivery.jitter, 0.1);
        assert_eq!(
            config.delivery.retry_schedule,
            vec![Duration::from_millis(100), Duration::from_secs(1)]
        );
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::load(None, env(&[("WASMHOOKS_LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err = Config::load(None, env(&[("WASMHOOKS_DELIVERY__JITTER", "3")])).unwrap_err();
        assert!(err.to_string().contains("delivery.jitter"), "{err}");
        let err = Config::load(
            None,
            env(&[("WASMHOOKS_PLUGIN__LIMITS__CPU_TIME", "5 parsecs")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("parsecs"), "{err}");
        let err = Config::load(None, env(&[("WASMHOOKS_PLUGIN__TIME_LIMIT", "5s")])).unwrap_err();
        assert!(err.to_string().contains("time_limit"), "{err}");
        // A default above its ceiling names both.
        let err =
            Config::load(None, env(&[("WASMHOOKS_PLUGIN__LIMITS__CPU_TIME", "2s")])).unwrap_err();
        assert!(
            err.to_string().contains("plugin.limits")
                && err.to_string().contains("plugin.max_limits.cpu_time"),
            "{err}"
        );
        let err = Config::load(None, env(&[("WASMHOOKS_STORAGE", "mysql")])).unwrap_err();
        assert!(
            err.to_string().contains("postgres") && err.to_string().contains("sled"),
            "{err}"
        );
        let err = Config::load(None, env(&[("WASMHOOKS_STORAGE", "postgres")])).unwrap_err();
        assert!(err.to_string().contains("postgres.url"), "{err}");
        let err = Config::load(
            None,
            env(&[
                ("WASMHOOKS_STORAGE", "postgres"),
                ("WASMHOOKS_POSTGRES__URL", "postgres://h/db"),
                ("WASMHOOKS_POSTGRES__SCHEMA", "Robert'); DROP TABLE"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("postgres.schema"), "{err}");
        let err = Config::load(None, env(&[("WASMHOOKS_PLUGIN__STACK_BYTES", "16")])).unwrap_err();
        assert!(err.to_string().contains("plugin.stack_bytes"), "{err}");
        let err = Config::load(
            None,
            env(&[("WASMHOOKS_API__MAX_CONNECTIONS_PER_ADDRESS", "0")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("api.max_connections_per_address"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[(
                "WASMHOOKS_API__TRUSTED_PROXIES",
                r#"["10.0.0.0/8", "proxy"]"#,
            )]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("api.trusted_proxies") && err.to_string().contains("proxy"),
            "{err}"
        );
    }
}
