//! The rules each part of a webhook definition must meet, apart from the definitions it
//! names (a module, a connection) and the host's settings: sizes, counts and forms, each
//! refused with the field it concerns.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Error;
use crate::model::{
    parse_duration, validate_kind, BatchConfig, ResponsePath, ResponseValue, Schedule,
};

/// Longest request timeout a webhook may set.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest delay a webhook may set.
const MAX_DELAY: Duration = Duration::from_secs(30 * 86_400);
/// Most events in one batch.
const MAX_BATCH: u32 = 1000;
/// Longest batch window.
const MAX_BATCH_WINDOW: Duration = Duration::from_secs(3600);
/// Most retry steps a webhook may set.
const MAX_RETRY_STEPS: usize = 50;
/// Longest single retry delay.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);
/// Shortest single retry delay.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Most event kinds one webhook takes.
pub const MAX_EVENT_KINDS: usize = 64;
/// Most attributes one scope names.
pub const MAX_SCOPE_ATTRIBUTES: usize = 64;
/// Most accepted values of one scope attribute.
pub const MAX_SCOPE_VALUES: usize = 256;
/// Longest accepted scope value, in bytes (as long as an event attribute's value).
pub const MAX_SCOPE_VALUE: usize = crate::model::MAX_ATTRIBUTE_VALUE;
/// Most bytes of a whole scope (attribute names and values): every event of the webhook's
/// tenant is matched against it, on the API's threads.
pub const MAX_SCOPE_BYTES: usize = 64 * 1024;
/// Largest plugin config, in bytes of JSON.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// At least one kind, at most [`MAX_EVENT_KINDS`], each a kind or a pattern.
pub(super) fn check_event_kinds(event_kinds: &[String]) -> Result<(), Error> {
    if event_kinds.is_empty() {
        return Err(Error::invalid(
            "event_kinds",
            "at least one event kind is required",
        ));
    }
    if event_kinds.len() > MAX_EVENT_KINDS {
        return Err(Error::invalid(
            "event_kinds",
            format!(
                "has {} kinds; the limit is {MAX_EVENT_KINDS}",
                event_kinds.len()
            ),
        ));
    }
    for (i, kind) in event_kinds.iter().enumerate() {
        validate_kind(kind, true).map_err(|m| Error::invalid(format!("event_kinds[{i}]"), m))?;
    }
    Ok(())
}

/// A scope's size, and each attribute's name and values.
pub(super) fn check_scope(scope: &BTreeMap<String, Vec<String>>) -> Result<(), Error> {
    if scope.len() > MAX_SCOPE_ATTRIBUTES {
        return Err(Error::invalid(
            "scope",
            format!(
                "names {} attributes; the limit is {MAX_SCOPE_ATTRIBUTES}",
                scope.len()
            ),
        ));
    }
    let scope_bytes: usize = scope
        .iter()
        .map(|(attribute, values)| attribute.len() + values.iter().map(String::len).sum::<usize>())
        .sum();
    if scope_bytes > MAX_SCOPE_BYTES {
        return Err(Error::invalid(
            "scope",
            format!("is {scope_bytes} bytes of names and values; the limit is {MAX_SCOPE_BYTES}"),
        ));
    }
    for (attribute, values) in scope {
        if values.len() > MAX_SCOPE_VALUES {
            return Err(Error::invalid(
                format!("scope.{attribute}"),
                format!(
                    "lists {} values; the limit is {MAX_SCOPE_VALUES}",
                    values.len()
                ),
            ));
        }
        if let Some(long) = values.iter().find(|v| v.len() > MAX_SCOPE_VALUE) {
            return Err(Error::invalid(
                format!("scope.{attribute}"),
                format!(
                    "a value is {} bytes; the limit is {MAX_SCOPE_VALUE}",
                    long.len()
                ),
            ));
        }
        if attribute.is_empty() || attribute.len() > 128 {
            return Err(Error::invalid(
                "scope",
                format!("attribute name `{attribute}` must be 1 to 128 characters"),
            ));
        }
        if values.is_empty() {
            return Err(Error::invalid(
                format!("scope.{attribute}"),
                "list at least one accepted value (leave the attribute out for all values)",
            ));
        }
    }

    Ok(())
}

/// A JSON object, at most [`MAX_CONFIG_BYTES`].
pub(super) fn check_config(config: &serde_json::Value) -> Result<(), Error> {
    if !config.is_object() {
        return Err(Error::invalid("config", "must be a JSON object"));
    }
    let config_bytes = config.to_string().len();
    if config_bytes > MAX_CONFIG_BYTES {
        return Err(Error::invalid(
            "config",
            format!("is {config_bytes} bytes of JSON; the limit is {MAX_CONFIG_BYTES}"),
        ));
    }

    Ok(())
}

/// HTTP statuses only.
pub(super) fn check_success_statuses(statuses: &[u16]) -> Result<(), Error> {
    for (i, status) in statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            return Err(Error::invalid(
                format!("success_statuses[{i}]"),
                format!("{status} is not an HTTP status (100 to 599)"),
            ));
        }
    }
    Ok(())
}

/// A request timeout: more than 0, at most 5 minutes.
pub(super) fn timeout(text: String) -> Result<Duration, Error> {
    let d = parse_duration(&text).map_err(|m| Error::invalid("timeout", m))?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(Error::invalid(
            "timeout",
            format!("must be more than 0 and at most {}s", MAX_TIMEOUT.as_secs()),
        ));
    }
    Ok(d)
}

/// A retry schedule: at most [`MAX_RETRY_STEPS`] waits of 100 ms to 7 days.
pub(super) fn retry_schedule(list: Vec<String>) -> Result<Vec<Duration>, Error> {
    if list.len() > MAX_RETRY_STEPS {
        return Err(Error::invalid(
            "retry_schedule",
            format!("has {} steps; the limit is {MAX_RETRY_STEPS}", list.len()),
        ));
    }
    let mut schedule = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        let field = format!("retry_schedule[{i}]");
        let d = parse_duration(text).map_err(|m| Error::invalid(&field, m))?;
        if d > MAX_RETRY_DELAY {
            return Err(Error::invalid(field, "must be at most 7d"));
        }
        if d < MIN_RETRY_DELAY {
            return Err(Error::invalid(field, "must be at least 100ms"));
        }
        schedule.push(d);
    }
    Ok(schedule)
}

/// A delay before the first attempt: at most 30 days.
pub(super) fn delay(text: String) -> Result<Duration, Error> {
    let d = parse_duration(&text).map_err(|m| Error::invalid("delay", m))?;
    if d > MAX_DELAY {
        return Err(Error::invalid("delay", "must be at most 30d"));
    }
    Ok(d)
}

/// A JSON pointer of 1 to 256 characters.
pub(super) fn check_entity_key(pointer: Option<&str>) -> Result<(), Error> {
    if let Some(pointer) = pointer {
        if !pointer.starts_with('/') || pointer.len() > 256 {
            return Err(Error::invalid(
                "entity_key",
                format!("`{pointer}` is not a JSON pointer like /sku or /order/id (1 to 256 characters, starting with /)"),
            ));
        }
    }
    Ok(())
}

/// A batch's size and window, and never with an entity or a delay (`keyed_or_delayed`).
pub(super) fn check_batch(
    batch: Option<&BatchConfig>,
    keyed_or_delayed: bool,
) -> Result<(), Error> {
    let Some(batch) = batch else {
        return Ok(());
    };
    if batch.max_size == 0 || batch.max_size > MAX_BATCH {
        return Err(Error::invalid(
            "batch.max_size",
            format!("must be 1 to {MAX_BATCH}"),
        ));
    }
    if batch.window.is_zero() || batch.window > MAX_BATCH_WINDOW {
        return Err(Error::invalid(
            "batch.window",
            "must be more than 0 and at most 1h",
        ));
    }
    if keyed_or_delayed {
        return Err(Error::invalid(
            "batch",
            "cannot be combined with entity_key or delay; a batch collects for its window",
        ));
    }
    Ok(())
}

/// A schedule's windows and time zone.
pub(super) fn check_schedule(schedule: Option<&Schedule>) -> Result<(), Error> {
    match schedule {
        Some(schedule) => schedule
            .check()
            .map(drop)
            .map_err(|(field, message)| Error::invalid(field, message)),
        None => Ok(()),
    }
}

/// A response value's path, when it has one.
pub(super) fn check_response_value(value: Option<&ResponseValue>) -> Result<(), Error> {
    if let Some(path) = value.and_then(|r| r.path.as_deref()) {
        ResponsePath::parse(path).map_err(|m| Error::invalid("response_value.path", m))?;
    }
    Ok(())
}
