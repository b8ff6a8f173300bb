//! The log: `tracing` lines on stderr, filtered by `RUST_LOG`, coloured only on a terminal;
//! and the host's spans over OTLP when a collector is configured.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Crate families kept at `warn` unless `RUST_LOG` names them: wasmtime and its compiler
/// (Cranelift and its register allocator) log every function they compile, about 150 MB a
/// second at `trace`, which would drown the host's own lines. A directive's target matches
/// every target it begins, so `wasmtime` covers `wasmtime_wasi`, `wasmtime_internal_cranelift`….
const QUIETED: &[&str] = &["wasmtime", "cranelift", "regalloc2"];

/// The level [`QUIETED`] crates are held at.
const QUIET_LEVEL: &str = "warn";

/// The filter directives for a `RUST_LOG` value (`None` or empty: `info`): the value as
/// given, then `<crate>=warn` for each [`QUIETED`] family it does not name itself, unless its
/// default level is already `warn` or quieter. A directive naming a longer target
/// (`wasmtime_wasi=debug`) is more specific than the added one, so it still applies.
pub fn directives(rust_log: Option<&str>) -> String {
    let given = rust_log.map(str::trim).filter(|v| !v.is_empty());
    let base = given.unwrap_or("info");
    if !louder_than_warn(default_level(base)) {
        return base.to_string();
    }
    let named: Vec<&str> = base.split(',').filter_map(target).collect();
    let mut out = base.to_string();
    for family in QUIETED.iter().filter(|f| !named.contains(f)) {
        out.push_str(&format!(",{family}={QUIET_LEVEL}"));
    }
    out
}

/// The target a directive names (`wasmtime=debug`, `wasmtime[span]=info`, `wasmtime`), or
/// `None` for a bare level (`trace`).
fn target(directive: &str) -> Option<&str> {
    let directive = directive.trim();
    let name = directive.split(['=', '[']).next().unwrap_or("").trim();
    let bare_level = !directive.contains('=') && !directive.contains('[') && is_level(name);
    (!name.is_empty() && !bare_level).then_some(name)
}

/// The level of the last bare-level directive (`trace` in `wasmhooks=info,trace`), which
/// applies to every target no directive names; `None` when there is none (only errors then).
fn default_level(directives: &str) -> Option<String> {
    directives
        .rsplit(',')
        .map(str::trim)
        .find(|d| !d.contains('=') && !d.contains('[') && is_level(d))
        .map(str::to_ascii_lowercase)
}

fn is_level(text: &str) -> bool {
    ["trace", "debug", "info", "warn", "error", "off"].contains(&text.to_ascii_lowercase().as_str())
}

fn louder_than_warn(level: Option<String>) -> bool {
    matches!(level.as_deref(), Some("trace" | "debug" | "info"))
}

/// Installs the log on stderr: `RUST_LOG`'s directives (an invalid value falls back to the
/// default), colours only when stderr is a terminal and `NO_COLOR` is unset. When an OTLP
/// endpoint is configured ([`otlp_configured`]), the host's spans (a delivery, each attempt,
/// each plugin call, with their ids) are also exported over OTLP/HTTP; the provider returned
/// is to be shut down at exit, which sends what is still buffered.
pub fn init() -> Option<SdkTracerProvider> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(directives(None)));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_filter(filter);
    let provider = otlp_configured().then(trace_provider).flatten();
    // Only the host's own spans, whatever RUST_LOG says of the log lines.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("wasmhooks"))
            .with_filter(Targets::new().with_target("wasmhooks", Level::INFO))
    });
    tracing_subscriber::registry().with(log).with(traces).init();
    provider
}

/// Whether OTLP export is configured, by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (the collector's base URL; traces go to `/v1/traces` under it) or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL). Off when neither is set.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// A trace provider exporting in batches over OTLP/HTTP (protobuf) on its own thread; the
/// other `OTEL_*` variables (headers, timeout, batch settings) apply as the SDK reads them.
fn trace_provider() -> Option<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("OTLP trace export is off: {e}");
            return None;
        }
    };
    let resource = Resource::builder().with_service_name("wasmhooks").build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn wasmtime_and_cranelift_stay_at_warn_unless_named() {
        let quiet = ",wasmtime=warn,cranelift=warn,regalloc2=warn";
        assert_eq!(directives(None), format!("info{quiet}"));
        assert_eq!(directives(Some(" ")), format!("info{quiet}"));
        assert_eq!(directives(Some("trace")), format!("trace{quiet}"));
        assert_eq!(
            directives(Some("wasmhooks=debug,trace")),
            format!("wasmhooks=debug,trace{quiet}")
        );
        // Naming a family keeps the operator's choice for it; the others stay quiet.
        assert_eq!(
            directives(Some("trace,wasmtime=debug")),
            "trace,wasmtime=debug,cranelift=warn,regalloc2=warn"
        );
        assert_eq!(
            directives(Some("cranelift,trace")),
            "cranelift,trace,wasmtime=warn,regalloc2=warn"
        );
        assert_eq!(
            directives(Some("debug,regalloc2[x]=trace")),
            "debug,regalloc2[x]=trace,wasmtime=warn,cranelift=warn"
        );
        // A longer target is more specific than the added directive, which stays.
        assert_eq!(
            directives(Some("trace,wasmtime_wasi=trace")),
            format!("trace,wasmtime_wasi=trace{quiet}")
        );
        // Nothing louder than warn by default: nothing to quiet.
        assert_eq!(directives(Some("warn")), "warn");
        assert_eq!(directives(Some("wasmhooks=trace")), "wasmhooks=trace");
        assert_eq!(directives(Some("OFF")), "OFF");
    }

    #[test]
    fn the_directives_parse_as_a_filter() {
        for value in [None, Some("trace"), Some("trace,wasmtime=debug")] {
            let text = directives(value);
            assert!(
                tracing_subscriber::EnvFilter::try_new(&text).is_ok(),
                "{text}"
            );
        }
    }
}
