//! Log output as upstream ztunnel writes it, so log pipelines keep parsing it (telemetry.md
//! §b): plain lines `<time>\t<level>\t<target>\t<message>\t<key=value ...>` by default, or one
//! JSON object per line (`LOG_FORMAT=json`). The filter can be changed while running (the
//! admin `/logging` endpoint), and reset to what the process started with.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Tab-separated text (upstream's default).
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Reads `LOG_FORMAT` (`json`, anything else is plain).
    pub fn from_env() -> Self {
        match std::env::var("LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            _ => Self::Plain,
        }
    }
}

/// Why a log filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Not a tracing filter at all.
    #[error("{filter:?} is not a valid log filter: {reason}")]
    Invalid {
        /// The filter as given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A level outside `off, error, warn, info, debug, trace`.
    #[error(
        "invalid level {0:?}: use <level> or <target>=<level>, level one of off, error, warn, info, debug, trace"
    )]
    Level(String),
    /// The subscriber is gone (the process is exiting).
    #[error("the log subscriber is not running")]
    Gone,
}

/// Changes the running log filter.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    startup: String,
    current: Arc<Mutex<String>>,
}

impl fmt::Debug for LogControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogControl")
            .field("startup", &self.startup)
            .finish_non_exhaustive()
    }
}

/// Installs the process's log subscriber with `filter` (tracing `EnvFilter` syntax).
pub fn init(filter: &str, format: LogFormat) -> Result<LogControl, LogError> {
    let parsed = parse_filter(filter)?;
    let (layer, handle) = reload::Layer::new(parsed);
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(LineFormat { format });
    tracing_subscriber::registry()
        .with(layer)
        .with(output)
        .try_init()
        .map_err(|err| LogError::Invalid {
            filter: filter.to_owned(),
            reason: err.to_string(),
        })?;
    Ok(LogControl {
        handle,
        startup: filter.to_owned(),
        current: Arc::new(Mutex::new(filter.to_owned())),
    })
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(filter).map_err(|err| LogError::Invalid {
        filter: filter.to_owned(),
        reason: err.to_string(),
    })
}

impl LogControl {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adds `directives` (`<level>` or `<target>=<level>`, comma-separated) to the filter in
    /// force, after resetting it to the start-up filter when `reset`. Returns the new filter.
    pub fn update(&self, directives: Option<&str>, reset: bool) -> Result<String, LogError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = if reset {
            self.startup.clone()
        } else {
            current.clone()
        };
        for directive in directives
            .unwrap_or("")
            .split(',')
            .filter(|d| !d.is_empty())
        {
            let level = directive
                .rsplit_once('=')
                .map_or(directive, |(_, level)| level);
            if !matches!(level, "off" | "error" | "warn" | "info" | "debug" | "trace") {
                return Err(LogError::Level(directive.to_owned()));
            }
            next.push(',');
            next.push_str(directive);
        }
        let filter = parse_filter(&next)?;
        self.handle.reload(filter).map_err(|_| LogError::Gone)?;
        *current = next.clone();
        Ok(next)
    }
}

/// Writes one event as upstream does.
struct LineFormat {
    format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The scope without the crate: `state::xds_feed`, `proxy::inbound`, whichever crate
        // the module lives in.
        let target = ["ztunnel::", "mesh::"]
            .iter()
            .find_map(|krate| metadata.target().strip_prefix(krate))
            .unwrap_or(metadata.target());
        let level = metadata.level().as_str().to_ascii_lowercase();
        let time = timestamp();
        // Access records carry no span context (they describe a connection, not a task).
        let spans = if metadata.target() == "access" {
            String::new()
        } else {
            span_context(ctx)
        };
        match self.format {
            LogFormat::Plain => {
                write!(
                    writer,
                    "{time}\t{level}\t{target}{spans}\t{}",
                    fields.message
                )?;
                let mut separator = '\t';
                for (name, value) in &fields.values {
                    write!(writer, "{separator}{name}=")?;
                    value.write_plain(&mut writer)?;
                    separator = ' ';
                }
                writeln!(writer)
            }
            LogFormat::Json => {
                write!(
                    writer,
                    "{{\"level\":{},\"time\":{},\"scope\":{},\"message\":{}",
                    json(&level),
                    json(&time),
                    json(&format!("{target}{spans}")),
                    json(&fields.message)
                )?;
                for (name, value) in &fields.values {
                    write!(writer, ",{}:", json(name))?;
                    value.write_json(&mut writer)?;
                }
                writeln!(writer, "}}")
            }
        }
    }
}

/// `:span{fields}` for each span the event is in, outermost first.
fn span_context<S, N>(ctx: &FmtContext<'_, S, N>) -> String
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut out = String::new();
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            let _ = write!(out, ":{}", span.name());
            if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                && !fields.is_empty()
            {
                let _ = write!(out, "{{{fields}}}");
            }
        }
    }
    out
}

/// Now as RFC 3339 UTC with microseconds (`2024-04-11T15:38:42.182974Z`).
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    )
}

fn json(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// One field's value, kept as typed as the event gave it.
enum Value {
    /// A string: quoted in plain lines.
    Str(String),
    /// Something formatted (an address, a `%` or `?` value): bare in plain lines.
    Formatted(String),
    /// A number or boolean: bare, and a JSON number/boolean.
    Scalar(String),
}

impl Value {
    fn write_plain(&self, writer: &mut Writer<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => write!(writer, "{s:?}"),
            Self::Formatted(s) | Self::Scalar(s) => writer.write_str(s),
        }
    }

    fn write_json(&self, writer: &mut Writer<'_>) -> fmt::Result {
        match self {
            Self::Str(s) | Self::Formatted(s) => writer.write_str(&json(s)),
            Self::Scalar(s) => writer.write_str(s),
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    values: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.values
                .push((field.name(), Value::Str(value.to_owned())));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.values
            .push((field.name(), Value::Scalar(value.to_string())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.values
            .push((field.name(), Value::Scalar(value.to_string())));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.values
            .push((field.name(), Value::Scalar(value.to_string())));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.values.push((field.name(), Value::Formatted(text)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let stamp = timestamp();
        assert_eq!(stamp.len(), "2024-04-11T15:38:42.182974Z".len(), "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line one access event becomes in `format`, without its timestamp.
    fn line(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(LineFormat { format })
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let addr: std::net::SocketAddr = "10.0.0.1:4000".parse().unwrap();
            let service: Option<&str> = None;
            tracing::event!(target: "access", tracing::Level::INFO, src.addr = tracing::field::display(addr), src.workload = "web-1",
                dst.service = service, bytes_sent = 67u64, "connection complete");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.split_once(if format == LogFormat::Plain {
            '\t'
        } else {
            ','
        })
        .unwrap()
        .1
        .to_owned()
    }

    #[test]
    fn plain_lines_quote_strings_and_leave_addresses_bare() {
        assert_eq!(
            line(LogFormat::Plain),
            "info\taccess\tconnection complete\tsrc.addr=10.0.0.1:4000 src.workload=\"web-1\" bytes_sent=67\n"
        );
    }

    #[test]
    fn json_lines_keep_numbers_as_numbers() {
        let text = line(LogFormat::Json);
        let object: serde_json::Value = serde_json::from_str(&format!("{{{text}")).unwrap();
        assert_eq!(object["scope"], "access");
        assert_eq!(object["message"], "connection complete");
        assert_eq!(object["src.addr"], "10.0.0.1:4000");
        assert_eq!(object["bytes_sent"], 67);
        assert!(
            object.get("dst.service").is_none(),
            "absent fields are omitted"
        );
    }
}
