//! A closed-loop benchmark's result: latency percentiles from an hdrhistogram, throughput, and
//! the configuration that produced them, printed for people or as JSON. Every append load
//! generator (Tally's append, JetStream's publish) reports in one shape, `AppendReport`, and
//! every function-call one (Tally's `/function`, Restate's ingress) in another, `CallReport`,
//! so their figures compare field by field.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::append::AppendConfig;
use crate::call::CallConfig;
use crate::closed_loop::Measured;

/// Latency figures in microseconds. All zero when nothing was measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// What a report says about the configuration of the run it describes.
pub trait RunConfig: Serialize {
    /// The human report's first words, e.g. "append benchmark".
    const TITLE: &'static str;
    /// `benchmark` and `tool` in the JSON report.
    const BENCHMARK: &'static str;
    const TOOL: &'static str;
    /// The configuration as (name, value) lines of the human report, in order.
    fn describe(&self) -> Vec<(&'static str, String)>;
}

/// What one closed-loop run measured. Counts cover the measured window only (after warmup).
#[derive(Clone, Debug, Serialize)]
pub struct AppendReport<C = AppendConfig> {
    pub config: C,
    /// Acknowledged appends.
    pub appends: u64,
    /// Appends that failed for good (not retried): bad request, connection lost, timeout.
    pub errors: u64,
    /// Attempts answered with a retryable failure (Tally's `discarded` or `unavailable`) and
    /// tried again.
    pub retried: u64,
    pub elapsed_s: f64,
    pub appends_per_s: f64,
    /// Record payload acknowledged per second, in MB (10^6 bytes); protocol overhead not
    /// counted.
    pub mb_per_s: f64,
    pub latency_us: Percentiles,
    /// The first failure seen (warmup included), so a report with errors says what they were.
    pub first_error: Option<String>,
    /// When the measured window began, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

impl<C: RunConfig> AppendReport<C> {
    pub(crate) fn new(config: C, measured: Measured) -> AppendReport<C> {
        let Measured {
            operations: appends,
            operations_with_warmup: _,
            errors,
            retried,
            elapsed_s,
            operations_per_s: appends_per_s,
            mb_per_s,
            latency_us,
            first_error,
            started_unix_ms,
        } = measured;
        AppendReport {
            config,
            appends,
            errors,
            retried,
            elapsed_s,
            appends_per_s,
            mb_per_s,
            latency_us,
            first_error,
            started_unix_ms,
        }
    }

    /// The report as lines of text, configuration first.
    pub fn human(&self) -> String {
        let l = &self.latency_us;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{} ({})", C::TITLE, rfc3339_utc(self.started_unix_ms));
        for (name, value) in self.config.describe() {
            let _ = writeln!(out, "  {name:<14}{value}");
        }
        let _ = writeln!(out, "results");
        let _ = writeln!(
            out,
            "  appends       {} in {:.2} s (errors {}, retried {})",
            self.appends, self.elapsed_s, self.errors, self.retried
        );
        let _ = writeln!(
            out,
            "  throughput    {:.1} appends/s, {:.2} MB/s",
            self.appends_per_s, self.mb_per_s
        );
        let _ = writeln!(
            out,
            "  latency_us    p50 {}  p99 {}  p999 {}  max {}  mean {:.1}",
            l.p50, l.p99, l.p999, l.max, l.mean
        );
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "  first_error   {error}");
        }
        out
    }

    /// Prints `human()` to stdout.
    pub fn print_human(&self) {
        print!("{}", self.human());
    }

    /// Figures, full configuration, a timestamp and the tool's version, as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        with_provenance::<C>(self, self.started_unix_ms)
    }

    /// Writes `to_json()`, pretty-printed, to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        write_json(&self.to_json(), path)
    }

    /// Prints the report, and writes its JSON to `json` when given (saying where).
    pub fn show(&self, json: Option<&Path>) -> anyhow::Result<()> {
        self.print_human();
        if let Some(path) = json {
            self.write_json(path)?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

/// What one closed-loop run of function calls measured. Counts cover the measured window only
/// (after warmup).
#[derive(Clone, Debug, Serialize)]
pub struct CallReport<C = CallConfig> {
    pub config: C,
    /// Calls answered with a success.
    pub calls: u64,
    /// Calls answered with a success in the whole run, warmup included: what the system did
    /// while it ran (to divide its log's growth by, say).
    pub calls_with_warmup: u64,
    /// Calls that failed for good (not retried): an error answer, connection lost, timeout.
    pub errors: u64,
    /// Attempts answered with a retryable failure (503) and tried again.
    pub retried: u64,
    pub elapsed_s: f64,
    pub calls_per_s: f64,
    pub latency_us: Percentiles,
    /// The first failure seen (warmup included), so a report with errors says what they were.
    pub first_error: Option<String>,
    /// When the measured window began, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

impl<C: RunConfig> CallReport<C> {
    pub(crate) fn new(config: C, measured: Measured) -> CallReport<C> {
        let Measured {
            operations: calls,
            operations_with_warmup: calls_with_warmup,
            errors,
            retried,
            elapsed_s,
            operations_per_s: calls_per_s,
            mb_per_s: _,
            latency_us,
            first_error,
            started_unix_ms,
        } = measured;
        CallReport {
            config,
            calls,
            calls_with_warmup,
            errors,
            retried,
            elapsed_s,
            calls_per_s,
            latency_us,
            first_error,
            started_unix_ms,
        }
    }

    /// The report as lines of text, configuration first.
    pub fn human(&self) -> String {
        let l = &self.latency_us;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{} ({})", C::TITLE, rfc3339_utc(self.started_unix_ms));
        for (name, value) in self.config.describe() {
            let _ = writeln!(out, "  {name:<14}{value}");
        }
        let _ = writeln!(out, "results");
        let _ = writeln!(
            out,
            "  calls         {} in {:.2} s (errors {}, retried {}; {} with warmup)",
            self.calls, self.elapsed_s, self.errors, self.retried, self.calls_with_warmup
        );
        let _ = writeln!(out, "  throughput    {:.1} calls/s", self.calls_per_s);
        let _ = writeln!(
            out,
            "  latency_us    p50 {}  p99 {}  p999 {}  max {}  mean {:.1}",
            l.p50, l.p99, l.p999, l.max, l.mean
        );
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "  first_error   {error}");
        }
        out
    }

    /// Prints `human()` to stdout.
    pub fn print_human(&self) {
        print!("{}", self.human());
    }

    /// Figures, full configuration, a timestamp and the tool's version, as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        with_provenance::<C>(self, self.started_unix_ms)
    }

    /// Writes `to_json()`, pretty-printed, to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        write_json(&self.to_json(), path)
    }
}

/// `report` as a JSON object with the benchmark's and tool's names, the tool's version and
/// the start of the measured window.
pub(crate) fn with_provenance<C: RunConfig>(
    report: &impl Serialize,
    started_unix_ms: u64,
) -> serde_json::Value {
    let mut value = serde_json::to_value(report).expect("the report has only plain fields");
    if let Some(object) = value.as_object_mut() {
        object.insert("benchmark".into(), C::BENCHMARK.into());
        object.insert("tool".into(), C::TOOL.into());
        object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        object.insert("timestamp".into(), rfc3339_utc(started_unix_ms).into());
    }
    value
}

pub(crate) fn write_json(value: &serde_json::Value, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `unix_ms` as "YYYY-MM-DDTHH:MM:SSZ" (Howard Hinnant's days-to-civil algorithm).
pub(crate) fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        for v in values {
            h.record(v).expect("in range");
        }
        h
    }

    #[test]
    fn percentiles_of_one_to_thousand() {
        let p = Percentiles::from_histogram(&histogram(1..=1000));
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500, 990, 999, 1000));
        assert!((p.mean - 500.5).abs() < 0.01, "mean {}", p.mean);
    }

    #[test]
    fn percentiles_keep_three_significant_digits_and_the_tail() {
        let p = Percentiles::from_histogram(&histogram((0..999).map(|_| 1000).chain([123_456])));
        assert_eq!((p.p50, p.p99), (1000, 1000));
        assert_eq!(p.p999, 1000);
        assert!((123_400..=123_600).contains(&p.max), "max {}", p.max);
    }

    #[test]
    fn percentiles_of_empty_histogram_are_zero() {
        assert_eq!(
            Percentiles::from_histogram(&histogram([])),
            Percentiles::default()
        );
    }

    fn sample_report() -> AppendReport {
        AppendReport {
            config: AppendConfig {
                addrs: vec!["127.0.0.1:8080".into()],
                protocol: crate::append::Protocol::Http,
                clients: 4,
                record_bytes: 1024,
                duration: Duration::from_millis(2500),
                tags: 3,
                book: 7,
                warmup: Duration::from_secs(1),
                ack_log: None,
            },
            appends: 1000,
            errors: 2,
            retried: 5,
            elapsed_s: 2.5,
            appends_per_s: 400.0,
            mb_per_s: 0.4096,
            latency_us: Percentiles {
                p50: 900,
                p99: 2000,
                p999: 4000,
                max: 5000,
                mean: 950.5,
            },
            first_error: Some("127.0.0.1:8080: too_large (413): record too large".into()),
            started_unix_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn json_report_has_configuration_figures_and_provenance() {
        let json = sample_report().to_json();
        let expect = serde_json::json!({
            "benchmark": "append",
            "tool": "tally-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "timestamp": "2023-11-14T22:13:20Z",
            "started_unix_ms": 1_700_000_000_123u64,
            "config": {
                "addrs": ["127.0.0.1:8080"],
                "protocol": "http",
                "clients": 4,
                "record_bytes": 1024,
                "duration_s": 2.5,
                "tags": 3,
                "book": 7,
                "warmup_s": 1.0,
                "ack_log": null,
            },
            "appends": 1000,
            "errors": 2,
            "retried": 5,
            "elapsed_s": 2.5,
            "appends_per_s": 400.0,
            "mb_per_s": 0.4096,
            "latency_us": {"p50": 900, "p99": 2000, "p999": 4000, "max": 5000, "mean": 950.5},
            "first_error": "127.0.0.1:8080: too_large (413): record too large",
        });
        assert_eq!(json, expect);
    }

    #[test]
    fn human_report_prints_configuration_before_results() {
        let text = sample_report().human();
        let config_at = text.find("clients       4").expect("clients line");
        let results_at = text.find("results").expect("results line");
        assert!(config_at < results_at, "{text}");
        assert!(
            text.contains("p50 900  p99 2000  p999 4000  max 5000"),
            "{text}"
        );
        assert!(text.contains("400.0 appends/s, 0.41 MB/s"), "{text}");
    }

    #[test]
    fn call_report_counts_calls_and_names_the_call_benchmark() {
        let report = CallReport::new(
            CallConfig::default(),
            Measured {
                operations: 500,
                operations_with_warmup: 700,
                errors: 0,
                retried: 1,
                elapsed_s: 2.0,
                operations_per_s: 250.0,
                mb_per_s: 0.0005,
                latency_us: Percentiles::default(),
                first_error: None,
                started_unix_ms: 1_700_000_000_123,
            },
        );
        let json = report.to_json();
        assert_eq!(json["benchmark"], "call");
        assert_eq!(json["calls"], 500);
        assert_eq!(json["calls_with_warmup"], 700);
        assert_eq!(json["calls_per_s"], 250.0);
        assert_eq!(
            json["config"]["urls"][0],
            "http://127.0.0.1:8080/function/noop"
        );
        assert_eq!(json["config"]["idempotency_keys"], false);
        assert!(json.get("mb_per_s").is_none() && json.get("appends").is_none());
        let text = report.human();
        assert!(
            text.starts_with("call benchmark (2023-11-14T22:13:20Z)"),
            "{text}"
        );
        assert!(text.contains("250.0 calls/s"), "{text}");
    }

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_251_199_999), "2024-02-29T23:59:59Z");
    }
}
