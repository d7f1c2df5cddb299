//! Prometheus metrics of a gateway: log calls and their latency (through `MeteredLog`, a
//! `LogBook` wrapper), invocations per function, and gauges read from the engine at scrape
//! time.

use async_trait::async_trait;
use bytes::Bytes;
use logbook::{AppendRequest, BookId, Cond, LogBook, LogError, ReadRange, Record, Seqnum, Tag};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionName {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassName {
    pub class: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~10 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 21))
}

/// Every metric a gateway exports.
pub struct Metrics {
    registry: Registry,
    pub log_ops: Family<OpLabels, Counter>,
    pub log_latency_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub appended_records: Counter,
    pub appended_bytes: Counter,
    pub invocations: Family<FunctionLabels, Counter>,
    pub invocation_latency_seconds: Family<FunctionName, Histogram, fn() -> Histogram>,
    /// Calls waiting for a free slot under their function's concurrency limit.
    pub function_queued: Family<FunctionName, Gauge>,
    /// Calls running.
    pub function_running: Family<FunctionName, Gauge>,
    /// Durable invocations this gateway took over from a dead one.
    pub redriven: Counter,
    /// Durable invocations trimmed after the key retention.
    pub invocations_collected: Counter,
    /// Workflow instances garbage-collected, and their records trimmed.
    pub workflows_collected: Counter,
    pub workflow_records_collected: Counter,
    /// Workflow instances the last collection kept (running, or within their retention).
    pub workflows_kept: Gauge,
    /// Objects whose old versions a collection trimmed, and the records trimmed.
    pub objects_collected: Counter,
    pub object_records_collected: Counter,
    /// Queue trims, and the consumer groups' streams they cut below a checkpoint.
    pub queue_trims: Counter,
    /// Calls of objects' methods answered in done records this gateway appended, by class
    /// and outcome (`ok`, `failed`, `duplicate`).
    pub object_calls: Family<ClassLabels, Counter>,
    /// Done records this gateway appended, by class (calls / done records: how many calls a
    /// done record answers).
    pub object_done_records: Family<ClassName, Counter>,
    /// Deadlocks of open transactions this gateway broke (it wrote the victim's abort).
    pub object_deadlocks: Counter,
    /// How long methods' functions ran, by class.
    pub object_method_latency_seconds: Family<ClassName, Histogram, fn() -> Histogram>,
    pub queue_streams_cut: Counter,
    pub pending_appends: Gauge,
    pub cache_bytes: Gauge,
    pub cache_hits: Gauge,
    pub cache_misses: Gauge,
    pub index_records: Gauge,
    pub metalog_position: Gauge,
    pub storage_reads: Gauge,
    pub replicate_calls: Gauge,
    /// Time spent in each stage of the append path: `replicate` (records to durable storage),
    /// `metalog_commit` (a metalog entry made durable).
    pub stage_latency_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tally");
        let m = Metrics {
            log_ops: Family::default(),
            log_latency_seconds: Family::new_with_constructor(latency_histogram),
            appended_records: Counter::default(),
            appended_bytes: Counter::default(),
            invocations: Family::default(),
            invocation_latency_seconds: Family::new_with_constructor(latency_histogram),
            function_queued: Family::default(),
            function_running: Family::default(),
            redriven: Counter::default(),
            invocations_collected: Counter::default(),
            workflows_collected: Counter::default(),
            workflow_records_collected: Counter::default(),
            workflows_kept: Gauge::default(),
            objects_collected: Counter::default(),
            object_records_collected: Counter::default(),
            queue_trims: Counter::default(),
            object_calls: Family::default(),
            object_done_records: Family::default(),
            object_deadlocks: Counter::default(),
            object_method_latency_seconds: Family::new_with_constructor(latency_histogram),
            queue_streams_cut: Counter::default(),
            pending_appends: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_hits: Gauge::default(),
            cache_misses: Gauge::default(),
            index_records: Gauge::default(),
            metalog_position: Gauge::default(),
            storage_reads: Gauge::default(),
            replicate_calls: Gauge::default(),
            stage_latency_seconds: Family::new_with_constructor(latency_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "log_ops",
            "LogBook calls by operation and outcome",
            m.log_ops.clone(),
        );
        registry.register(
            "log_latency_seconds",
            "LogBook call latency",
            m.log_latency_seconds.clone(),
        );
        registry.register(
            "appended_records",
            "Records appended",
            m.appended_records.clone(),
        );
        registry.register(
            "appended_bytes",
            "Record bytes appended",
            m.appended_bytes.clone(),
        );
        registry.register(
            "invocations",
            "Function invocations by function and final status",
            m.invocations.clone(),
        );
        registry.register(
            "invocation_latency_seconds",
            "Function invocation latency, start to finish",
            m.invocation_latency_seconds.clone(),
        );
        registry.register(
            "function_queued",
            "Calls waiting under their function's concurrency limit",
            m.function_queued.clone(),
        );
        registry.register(
            "function_running",
            "Calls running, by function",
            m.function_running.clone(),
        );
        registry.register(
            "invocations_redriven",
            "Durable invocations taken over from a gateway that died",
            m.redriven.clone(),
        );
        registry.register(
            "invocations_collected",
            "Ended durable invocations trimmed after the idempotency retention",
            m.invocations_collected.clone(),
        );
        registry.register(
            "workflows_collected",
            "Ended workflow instances garbage-collected after their retention",
            m.workflows_collected.clone(),
        );
        registry.register(
            "workflow_records_collected",
            "Records of collected workflow instances trimmed (histories and dead table versions)",
            m.workflow_records_collected.clone(),
        );
        registry.register(
            "workflows_kept",
            "Workflow instances the last collection kept (running, or within their retention)",
            m.workflows_kept.clone(),
        );
        registry.register(
            "objects_collected",
            "Objects whose versions older than the retention a collection trimmed",
            m.objects_collected.clone(),
        );
        registry.register(
            "object_records_collected",
            "Records of libstore trimmed by collections (old versions, marks, keys)",
            m.object_records_collected.clone(),
        );
        registry.register(
            "queue_trims",
            "Trims of queues this gateway used (what every group is done with goes)",
            m.queue_trims.clone(),
        );
        registry.register(
            "object_calls",
            "Calls of objects' methods answered in done records this gateway appended, by class and outcome",
            m.object_calls.clone(),
        );
        registry.register(
            "object_done_records",
            "Done records this gateway appended, by class (each answers the calls queued since the one before)",
            m.object_done_records.clone(),
        );
        registry.register(
            "object_deadlocks",
            "Cycles of open transactions waiting for each other's locks that this gateway broke (it aborted the victim)",
            m.object_deadlocks.clone(),
        );
        registry.register(
            "object_method_latency_seconds",
            "How long objects' methods ran, by class",
            m.object_method_latency_seconds.clone(),
        );
        registry.register(
            "queue_streams_cut",
            "Consumer groups' streams a queue trim cut below a checkpoint",
            m.queue_streams_cut.clone(),
        );
        registry.register(
            "pending_appends",
            "Appends replicated but not yet ordered",
            m.pending_appends.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held by the record cache",
            m.cache_bytes.clone(),
        );
        registry.register(
            "cache_hits",
            "Reads served from the record cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Reads that went to storage",
            m.cache_misses.clone(),
        );
        registry.register(
            "index_records",
            "Records in the tag index",
            m.index_records.clone(),
        );
        registry.register(
            "metalog_position",
            "Metalog entries applied",
            m.metalog_position.clone(),
        );
        registry.register(
            "storage_reads",
            "Records fetched from storage",
            m.storage_reads.clone(),
        );
        registry.register(
            "replicate_calls",
            "Batches handed to storage",
            m.replicate_calls.clone(),
        );
        registry.register(
            "stage_latency_seconds",
            "Latency of each stage of the append path",
            m.stage_latency_seconds.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn observe(&self, op: &'static str, started: Instant, ok: bool) {
        let labels = OpLabels {
            op,
            outcome: if ok { "ok" } else { "error" },
        };
        self.log_ops.get_or_create(&labels).inc();
        self.log_latency_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn observe_stage(&self, stage: &'static str, latency: Duration) {
        self.stage_latency_seconds
            .get_or_create(&StageLabels { stage })
            .observe(latency.as_secs_f64());
    }

    /// The queued and running gauges of `function`.
    pub fn function_gauges(&self, function: &str) -> (Gauge, Gauge) {
        let name = FunctionName {
            function: function.to_string(),
        };
        (
            self.function_queued.get_or_create(&name).clone(),
            self.function_running.get_or_create(&name).clone(),
        )
    }

    /// Counts what the object runtime observed.
    pub fn observe_object(&self, observation: libobject::Observation<'_>) {
        use libobject::Observation as O;
        match observation {
            O::Call { class, outcome } => self
                .object_calls
                .get_or_create(&ClassLabels {
                    class: class.to_string(),
                    outcome,
                })
                .inc(),
            O::Done { class, .. } => self
                .object_done_records
                .get_or_create(&ClassName {
                    class: class.to_string(),
                })
                .inc(),
            O::Run { class, elapsed } => {
                self.object_method_latency_seconds
                    .get_or_create(&ClassName {
                        class: class.to_string(),
                    })
                    .observe(elapsed.as_secs_f64());
                0
            }
            O::Deadlock { .. } => self.object_deadlocks.inc(),
        };
    }

    pub fn observe_invocation(&self, function: &str, succeeded: bool, latency: Duration) {
        let status = if succeeded { "succeeded" } else { "failed" };
        self.invocations
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
                status,
            })
            .inc();
        self.invocation_latency_seconds
            .get_or_create(&FunctionName {
                function: function.to_string(),
            })
            .observe(latency.as_secs_f64());
    }
}

/// A `LogBook` that counts and times every call of the log it wraps.
pub struct MeteredLog {
    log: Arc<dyn LogBook>,
    metrics: Arc<Metrics>,
}

impl MeteredLog {
    pub fn new(log: Arc<dyn LogBook>, metrics: Arc<Metrics>) -> MeteredLog {
        MeteredLog { log, metrics }
    }

    fn appended(&self, records: u64, bytes: usize) {
        self.metrics.appended_records.inc_by(records);
        self.metrics.appended_bytes.inc_by(bytes as u64);
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        // A span per call, for traces (`telemetry`): a child of the invocation making it.
        let span = tracing::info_span!(target: "tally::trace", "log", otel.name = concat!("log ", $op));
        let result = tracing::Instrument::instrument($call, span).await;
        $self.metrics.observe($op, started, result.is_ok());
        result
    }};
}

#[async_trait]
impl LogBook for MeteredLog {
    async fn append(&self, book: BookId, tags: &[Tag], data: Bytes) -> Result<Seqnum, LogError> {
        let bytes = data.len();
        let result = timed!(self, "append", self.log.append(book, tags, data));
        if result.is_ok() {
            self.appended(1, bytes);
        }
        result
    }

    async fn cond_append(
        &self,
        book: BookId,
        tags: &[Tag],
        data: Bytes,
        cond: Cond,
    ) -> Result<Seqnum, LogError> {
        let bytes = data.len();
        let result = timed!(
            self,
            "cond_append",
            self.log.cond_append(book, tags, data, cond)
        );
        if result.is_ok() {
            self.appended(1, bytes);
        }
        result
    }

    async fn append_batch(
        &self,
        book: BookId,
        records: Vec<AppendRequest>,
    ) -> Result<Vec<Seqnum>, LogError> {
        let bytes = records.iter().map(|r| r.data.len()).sum();
        let result = timed!(self, "append_batch", self.log.append_batch(book, records));
        if let Ok(seqnums) = &result {
            self.appended(seqnums.len() as u64, bytes);
        }
        result
    }

    async fn read_next(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        timed!(self, "read_next", self.log.read_next(book, tag, min_seqnum))
    }

    async fn read_prev(
        &self,
        book: BookId,
        tag: Tag,
        max_seqnum: Seqnum,
    ) -> Result<Option<Record>, LogError> {
        timed!(self, "read_prev", self.log.read_prev(book, tag, max_seqnum))
    }

    async fn read_next_blocking(
        &self,
        book: BookId,
        tag: Tag,
        min_seqnum: Seqnum,
        timeout: Duration,
    ) -> Result<Option<Record>, LogError> {
        timed!(
            self,
            "read_next_blocking",
            self.log.read_next_blocking(book, tag, min_seqnum, timeout)
        )
    }

    async fn set_aux_data(&self, book: BookId, seqnum: Seqnum, aux: Bytes) -> Result<(), LogError> {
        timed!(
            self,
            "set_aux_data",
            self.log.set_aux_data(book, seqnum, aux)
        )
    }

    async fn trim(&self, book: BookId, tag: Tag, below: Seqnum) -> Result<(), LogError> {
        timed!(self, "trim", self.log.trim(book, tag, below))
    }

    async fn read_range(
        &self,
        book: BookId,
        tag: Tag,
        range: ReadRange,
    ) -> Result<Vec<Record>, LogError> {
        timed!(self, "read_range", self.log.read_range(book, tag, range))
    }
}
