//! Logs and traces, set up once per process by [`init`].
//!
//! ```text
//!   tracing events/spans ──▶ Registry ──▶ EnvFilter (RUST_LOG syntax, from the config)
//!                                            ├─▶ fmt layer ──▶ stderr (text, or JSON lines)
//!                                            └─▶ tracing-opentelemetry ──▶ batch span processor
//!                                                 (only with `otlp_endpoint`)   └─▶ OTLP/gRPC
//! ```
//!
//! Why it looks like this:
//!
//! * Libraries take a [`TelemetryConfig`]; only `main.rs` reads `RUST_LOG` and flags (STYLE.md),
//!   so a test or an embedding can set up telemetry without touching the environment.
//! * Logs go to stderr: the CNI plugin (which shares this module's approach) owns stdout, and
//!   container runtimes collect stderr anyway.
//! * The span exporter is opentelemetry's batch processor (a background thread driving the tonic
//!   exporter, whose connection lives on the tokio runtime): spans never block a request, and a
//!   collector that is down costs dropped spans, not latency. That is why [`init`] must run inside
//!   a tokio runtime when an endpoint is set.
//! * The HTTP/2 stack's own spans are kept away from the exporter so that exporting a span never
//!   produces more spans to export.
//! * The W3C trace-context propagator is installed globally, so the gRPC services and clients can
//!   carry a trace from the node agent into the server.
//! * [`init`] installs a *global* subscriber, which a process can do once: a second call is an
//!   error ([`TelemetryError::AlreadyInitialized`]), never a panic, so tests may race for it.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::ExporterBuildError;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::runtime::RuntimeFlavor;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::util::TryInitError;

/// How long dropping the [`TelemetryGuard`] waits for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Targets whose spans never reach the exporter: the exporter's own transport.
const NOT_EXPORTED: [&str; 6] = [
    "opentelemetry",
    "h2",
    "hyper",
    "hyper_util",
    "tower",
    "tonic::transport",
];

/// Logs and traces, as the `[telemetry]` table of the server's TOML config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Which spans and events are kept, in `RUST_LOG` syntax (`info`,
    /// `info,ipam_server::raft=debug`, …). Default `info,openraft=warn` (openraft logs every
    /// election and replication change at info); an empty filter keeps errors only.
    pub filter: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
    /// Export spans over OTLP/gRPC to this collector (`http://otel-collector:4317`); no export
    /// when unset.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            filter: "info,openraft=warn".to_owned(),
            json: false,
            otlp_endpoint: None,
            service_name: "ipam-server".to_owned(),
        }
    }
}

impl TelemetryConfig {
    /// Checks what can be checked without installing anything: the filter parses, the endpoint
    /// is an http(s) URL, the service has a name.
    ///
    /// # Errors
    ///
    /// The first setting that is wrong, and why.
    pub fn validate(&self) -> Result<()> {
        self.env_filter()?;
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(TelemetryError::Endpoint {
                endpoint: endpoint.clone(),
                why: "write it as a URL, e.g. http://otel-collector:4317".to_owned(),
            });
        }
        if self.service_name.trim().is_empty() {
            return Err(TelemetryError::ServiceName);
        }
        Ok(())
    }

    fn env_filter(&self) -> Result<EnvFilter> {
        EnvFilter::builder()
            .parse(&self.filter)
            .map_err(|source| TelemetryError::Filter {
                filter: self.filter.clone(),
                source,
            })
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter is not valid `RUST_LOG` syntax.
    #[error("log filter {filter:?} is invalid: {source} (write e.g. \"info\" or \"info,ipam_server::raft=debug\")")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What the parser said.
        source: ParseError,
    },
    /// The OTLP endpoint is not usable.
    #[error("OTLP endpoint {endpoint:?}: {why}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        why: String,
    },
    /// The service name is empty.
    #[error("service_name is empty: exported spans need a service.name")]
    ServiceName,
    /// An OTLP endpoint is set but `init` was called outside a tokio runtime, which the gRPC
    /// exporter's connection needs.
    #[error("an OTLP endpoint is set but telemetry::init was called outside a tokio runtime")]
    NoRuntime,
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] ExporterBuildError),
    /// A global subscriber is already installed (`init` ran before, or another library set one).
    #[error("telemetry is already initialized in this process: {0}")]
    AlreadyInitialized(#[from] TryInitError),
}

/// The result of this module's functions.
pub type Result<T, E = TelemetryError> = std::result::Result<T, E>;

/// Keeps the span exporter alive; dropping it flushes the spans still queued (waiting up to 5 s)
/// and shuts the exporter down. Hold it in `main` until the process ends.
#[derive(Debug)]
#[must_use = "dropping the guard shuts the span exporter down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn exports_spans(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let shutdown = move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        // The shutdown blocks on the exporter thread, whose export needs the runtime's workers:
        // on a multi-threaded runtime, hand this worker's tasks to another one while waiting.
        let result = match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(shutdown),
            _ => shutdown(),
        };
        if let Err(error) = result {
            tracing::warn!(%error, "span exporter did not shut down cleanly; recent spans may be lost");
        }
    }
}

/// Installs the process's global subscriber: the filter, logs to stderr and, when
/// `otlp_endpoint` is set, span export over OTLP/gRPC. Call it once, early in `main`, inside the
/// tokio runtime when exporting.
///
/// # Errors
///
/// An invalid setting (see [`TelemetryConfig::validate`]), an endpoint set outside a tokio
/// runtime, or a subscriber already installed.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard> {
    config.validate()?;
    let filter = config.env_filter()?;
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, &config.service_name)?),
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(config.service_name.clone()))
            .with_filter(filter_fn(|meta| {
                !NOT_EXPORTED.iter().any(|target| meta.target().starts_with(target))
            }))
    });
    let text = (!config.json).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = config
        .json
        .then(|| fmt::layer().json().with_current_span(true).with_writer(std::io::stderr));
    // On failure the provider is dropped here, which shuts its exporter thread down.
    let guard = TelemetryGuard { provider };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init()?;
    if let Some(provider) = &guard.provider {
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
    }
    Ok(guard)
}

fn tracer_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider> {
    // The tonic channel spawns its connection task on the current runtime.
    Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let exporter = SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service_name.to_owned()).build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_says_what_is_wrong() {
        let config = TelemetryConfig {
            filter: "info,ipam_server=loud".to_owned(),
            ..TelemetryConfig::default()
        };
        let error = config.validate().err();
        let Some(TelemetryError::Filter { filter, .. }) = &error else {
            panic!("expected a filter error, got {error:?}");
        };
        assert_eq!(filter, "info,ipam_server=loud");
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("info,ipam_server=loud"), "{message}");
        assert!(message.contains("invalid"), "{message}");
    }

    #[test]
    fn the_defaults_and_usual_filters_are_valid() {
        assert!(TelemetryConfig::default().validate().is_ok());
        for filter in ["", "debug", "warn,ipam_server::raft=trace,openraft=info", "off"] {
            let config = TelemetryConfig {
                filter: filter.to_owned(),
                ..TelemetryConfig::default()
            };
            assert!(config.validate().is_ok(), "{filter:?}");
        }
    }

    #[test]
    fn an_endpoint_must_be_a_url_and_the_service_named() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("otel-collector:4317".to_owned()),
            ..TelemetryConfig::default()
        };
        assert!(matches!(config.validate(), Err(TelemetryError::Endpoint { .. })));
        let config = TelemetryConfig {
            service_name: " ".to_owned(),
            ..TelemetryConfig::default()
        };
        assert!(matches!(config.validate(), Err(TelemetryError::ServiceName)));
    }

    #[test]
    fn export_outside_a_runtime_is_an_error_and_installs_nothing() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".to_owned()),
            ..TelemetryConfig::default()
        };
        assert!(matches!(init(&config), Err(TelemetryError::NoRuntime)));
    }

    #[test]
    fn the_toml_table_rejects_unknown_keys_and_fills_defaults() {
        let config: TelemetryConfig = toml::from_str("json = true").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config,
            TelemetryConfig {
                json: true,
                ..TelemetryConfig::default()
            }
        );
        assert!(toml::from_str::<TelemetryConfig>("jsn = true").is_err());
    }
}
