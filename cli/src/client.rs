//! A typed HTTP client for the gateway's API, used by the CLI's commands: append, read, wait
//! for the next record, invoke a function, workflows, objects and transactions, check health. It turns transport and server
//! failures into errors a person can act on; it does no retries and prints nothing.

use std::time::Duration;

use anyhow::{ensure, Context};
use base64::Engine as _;
use serde::Deserialize;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much longer than the server's own wait a blocking read may take before we give up.
const NEXT_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// The gateway caps a blocking read's wait at this.
pub const NEXT_TIMEOUT_MS_MAX: u64 = 60_000;
/// The gateway caps one read's record count at this.
pub const READ_LIMIT_MAX: usize = 10_000;
/// Bytes of a non-JSON error body quoted in an error message.
const ERROR_SNIPPET_BYTES_MAX: usize = 200;

/// A connection to one gateway.
#[derive(Clone, Debug)]
pub struct Client {
    /// The address as the user gave it, for messages.
    addr: String,
    base: reqwest::Url,
    http: reqwest::Client,
}

/// A record as read back from the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOut {
    pub seqnum: u64,
    pub tags: Vec<u64>,
    pub data: Vec<u8>,
}

/// An error the server answered with. Callers may downcast an `anyhow::Error` to it, e.g. to
/// retry when `is_retryable()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub status: u16,
    /// The gateway's code ("bad_argument", "too_large", ...), or "http_<status>" when the
    /// reply carried no JSON error.
    pub code: String,
    pub message: String,
}

impl ServerError {
    pub fn is_retryable(&self) -> bool {
        matches!(self.code.as_str(), "discarded" | "unavailable")
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server error {} ({}): {}",
            self.code, self.status, self.message
        )
    }
}

impl std::error::Error for ServerError {}

#[derive(Deserialize)]
struct RecordWire {
    seqnum: u64,
    #[serde(default)]
    tags: Vec<u64>,
    data: String,
}

impl RecordWire {
    fn decode(self) -> anyhow::Result<RecordOut> {
        let data = base64::engine::general_purpose::STANDARD
            .decode(&self.data)
            .with_context(|| format!("record {} has bad base64 data", self.seqnum))?;
        Ok(RecordOut {
            seqnum: self.seqnum,
            tags: self.tags,
            data,
        })
    }
}

#[derive(Deserialize)]
struct AppendReply {
    seqnum: u64,
}

#[derive(Deserialize)]
struct ReadReply {
    records: Vec<RecordWire>,
    next: Option<u64>,
}

#[derive(Deserialize)]
struct NextReply {
    record: Option<RecordWire>,
}

impl Client {
    /// A client for the gateway at `addr`: "host:port" or "http://host:port". Connects lazily.
    pub fn new(addr: &str) -> anyhow::Result<Client> {
        Client::configured(addr, None, None)
    }

    /// A client for the gateway at `addr`, which may be `https://host:port`: then trusted
    /// by the CA certificate at `ca` (PEM) if given, else by no one (every certificate is
    /// refused). It sends `token` (`Authorization: Bearer`) with every request, if given.
    pub fn configured(
        addr: &str,
        ca: Option<&std::path::Path>,
        token: Option<&str>,
    ) -> anyhow::Result<Client> {
        let url = bench::base_url(addr)?;
        let base = reqwest::Url::parse(&url).expect("base_url returns a parsed URL");
        let http = bench::client_builder_for(token, ca)?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let addr = addr.trim().trim_end_matches('/');
        let addr = addr.strip_prefix("http://").unwrap_or(addr).to_string();
        Ok(Client { addr, base, http })
    }

    /// Makes a token with `scopes`: its listing, and `token`, shown only now.
    pub async fn token_create(
        &self,
        name: &str,
        scopes: &[String],
        rate_per_s: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut body = serde_json::json!({ "name": name, "scopes": scopes });
        if let Some(rate) = rate_per_s {
            body["rate_per_s"] = rate.into();
        }
        self.call(
            self.http.post(self.url(&["tokens"])).json(&body),
            "create a token",
        )
        .await
    }

    /// Every live token, without secrets.
    pub async fn tokens(&self) -> anyhow::Result<serde_json::Value> {
        self.call(self.http.get(self.url(&["tokens"])), "list tokens")
            .await
    }

    /// Revokes the token with `id`.
    pub async fn token_revoke(&self, id: &str) -> anyhow::Result<()> {
        let url = self.url(&["tokens", id]);
        let _: serde_json::Value = self
            .call(self.http.delete(url), &format!("revoke token {id}"))
            .await?;
        Ok(())
    }

    /// Appends `data` to `book` under `tags`; returns its seqnum.
    pub async fn append(&self, book: u32, tags: &[u64], data: Vec<u8>) -> anyhow::Result<u64> {
        let mut url = self.url(&["log", &book.to_string(), "append"]);
        for tag in tags {
            url.query_pairs_mut().append_pair("tag", &tag.to_string());
        }
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data);
        let reply: AppendReply = self.call(request, "append").await?;
        Ok(reply.seqnum)
    }

    /// Up to `limit` records of `book` with `tag` (0: every record) from seqnum `from` on, and
    /// the seqnum to continue from (`None` when nothing more is there yet).
    pub async fn read(
        &self,
        book: u32,
        tag: u64,
        from: u64,
        limit: usize,
    ) -> anyhow::Result<(Vec<RecordOut>, Option<u64>)> {
        ensure!(
            (1..=READ_LIMIT_MAX).contains(&limit),
            "limit must be 1..={READ_LIMIT_MAX}, not {limit}"
        );
        let mut url = self.url(&["log", &book.to_string(), "records"]);
        url.query_pairs_mut()
            .append_pair("tag", &tag.to_string())
            .append_pair("from", &from.to_string())
            .append_pair("limit", &limit.to_string());
        let reply: ReadReply = self.call(self.http.get(url), "read").await?;
        let records = reply
            .records
            .into_iter()
            .map(RecordWire::decode)
            .collect::<anyhow::Result<_>>()?;
        Ok((records, reply.next))
    }

    /// The first record of `book` with `tag` at or after `from`, waiting up to `timeout_ms` for
    /// it to be appended; `None` if none came.
    pub async fn next_blocking(
        &self,
        book: u32,
        tag: u64,
        from: u64,
        timeout_ms: u64,
    ) -> anyhow::Result<Option<RecordOut>> {
        ensure!(
            timeout_ms <= NEXT_TIMEOUT_MS_MAX,
            "timeout_ms must be at most {NEXT_TIMEOUT_MS_MAX}, not {timeout_ms}"
        );
        let mut url = self.url(&["log", &book.to_string(), "next"]);
        url.query_pairs_mut()
            .append_pair("tag", &tag.to_string())
            .append_pair("from", &from.to_string())
            .append_pair("timeout_ms", &timeout_ms.to_string());
        let request = self
            .http
            .get(url)
            .timeout(Duration::from_millis(timeout_ms) + NEXT_TIMEOUT_MARGIN);
        let reply: NextReply = self.call(request, "next").await?;
        reply.record.map(RecordWire::decode).transpose()
    }

    /// Invokes `function` with `input`; returns its output bytes.
    pub async fn invoke(
        &self,
        function: &str,
        input: Vec<u8>,
        book: Option<u32>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Vec<u8>> {
        ensure!(!function.is_empty(), "no function name given");
        let mut request = self
            .http
            .post(self.url(&["function", function]))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(input);
        if let Some(book) = book {
            request = request.header("X-Tally-Book", book.to_string());
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let what = format!("invoke {function}");
        let body = self.send(request, &what).await?;
        Ok(body.to_vec())
    }

    /// Starts instance `id` of workflow `name` with `input` (JSON); with `wait_ms`, waits that
    /// long for its end. Returns the gateway's answer: the instance, or its id and status.
    pub async fn workflow_start(
        &self,
        name: &str,
        id: &str,
        input: serde_json::Value,
        book: Option<u32>,
        wait_ms: Option<u64>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["workflows", name, id]);
        if let Some(wait_ms) = wait_ms {
            url.query_pairs_mut()
                .append_pair("wait_ms", &wait_ms.to_string());
        }
        let request = with_book(self.http.post(url).json(&input), book);
        self.call(request, &format!("start {name} {id}")).await
    }

    /// Workflow instance `id`: status, output, every step.
    pub async fn workflow_show(
        &self,
        id: &str,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let request = with_book(self.http.get(self.url(&["workflows", id])), book);
        self.call(request, &format!("show {id}")).await
    }

    /// Sends signal `name` with `payload` (JSON) to instance `id`; with a key, once.
    pub async fn workflow_signal(
        &self,
        id: &str,
        name: &str,
        payload: serde_json::Value,
        book: Option<u32>,
        key: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["workflows", id, "signals", name]);
        let mut request = with_book(self.http.post(url).json(&payload), book);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.call(request, &format!("signal {id} {name}")).await
    }

    /// Cancels instance `id`.
    pub async fn workflow_cancel(
        &self,
        id: &str,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["workflows", id, "cancel"]);
        self.call(
            with_book(self.http.post(url), book),
            &format!("cancel {id}"),
        )
        .await
    }

    /// The newest instances, those with `status` if given.
    pub async fn workflow_list(
        &self,
        status: Option<&str>,
        limit: usize,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["workflows"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        if let Some(status) = status {
            url.query_pairs_mut().append_pair("status", status);
        }
        self.call(with_book(self.http.get(url), book), "list workflows")
            .await
    }

    /// Object `collection/key`'s document, or the part at `path`.
    pub async fn object_get(
        &self,
        collection: &str,
        key: &str,
        path: Option<&str>,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["objects", collection, key]);
        if let Some(path) = path {
            url.query_pairs_mut().append_pair("path", path);
        }
        let what = format!("get {collection}/{key}");
        self.call(with_book(self.http.get(url), book), &what).await
    }

    /// Sets object `collection/key`'s whole document; the gateway's answer (`{"old": ...}`).
    pub async fn object_put(
        &self,
        collection: &str,
        key: &str,
        doc: &serde_json::Value,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["objects", collection, key]);
        let what = format!("set {collection}/{key}");
        self.call(with_book(self.http.put(url).json(doc), book), &what)
            .await
    }

    /// Applies path operations (a JSON list) to object `collection/key`, all or none; the
    /// gateway's answer (`{"results": [...]}`).
    pub async fn object_patch(
        &self,
        collection: &str,
        key: &str,
        ops: &serde_json::Value,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["objects", collection, key]);
        let what = format!("patch {collection}/{key}");
        self.call(with_book(self.http.patch(url).json(ops), book), &what)
            .await
    }

    /// Deletes object `collection/key`; the gateway's answer (`{"old": ...}`).
    pub async fn object_delete(
        &self,
        collection: &str,
        key: &str,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["objects", collection, key]);
        let what = format!("delete {collection}/{key}");
        self.call(with_book(self.http.delete(url), book), &what)
            .await
    }

    /// Calls `method` of object `class/key` with `input` (JSON); its output. Sent as a message
    /// (`send`): `{"id": ...}`, the invocation that runs it. Under `idempotency_key`, once.
    pub async fn object_call(
        &self,
        (class, key, method): (&str, &str, &str),
        input: &serde_json::Value,
        send: bool,
        idempotency_key: Option<&str>,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut parts = vec!["objects", class, key, method];
        if send {
            parts.push("send");
        }
        let mut request = self.http.post(self.url(&parts)).json(input);
        if let Some(k) = idempotency_key {
            request = request.header("Idempotency-Key", k);
        }
        let what = format!("{class}/{key}.{method}");
        self.call(with_book(request, book), &what).await
    }

    /// Installs a package (its TOML text) under `name`; the gateway's description of it.
    pub async fn package_put(&self, name: &str, text: String) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["packages", name]);
        self.call(
            self.http.put(url).body(text),
            &format!("install package {name}"),
        )
        .await
    }

    /// Every installed package (`name` given: that one), with its classes.
    pub async fn packages(&self, name: Option<&str>) -> anyhow::Result<serde_json::Value> {
        let url = match name {
            Some(name) => self.url(&["packages", name]),
            None => self.url(&["packages"]),
        };
        self.call(self.http.get(url), "list packages").await
    }

    /// A page of object `collection/key`'s changes after seqnum `after`.
    pub async fn object_history(
        &self,
        collection: &str,
        key: &str,
        after: Option<u64>,
        limit: Option<usize>,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["objects", collection, key, "history"]);
        if let Some(after) = after {
            url.query_pairs_mut()
                .append_pair("after", &after.to_string());
        }
        if let Some(limit) = limit {
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
        }
        let what = format!("history of {collection}/{key}");
        self.call(with_book(self.http.get(url), book), &what).await
    }

    /// Runs a one-shot transaction (its JSON); the outcome (`{"committed": ...}`).
    pub async fn transaction(
        &self,
        transaction: &serde_json::Value,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["transactions"]);
        let request = with_book(self.http.post(url).json(transaction), book);
        self.call(request, "transaction").await
    }

    /// Creates queue `name` (with `shards`), or checks its shard count; `{"name", "shards"}`.
    pub async fn queue_create(
        &self,
        name: &str,
        shards: Option<u32>,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["queues", name]);
        if let Some(shards) = shards {
            url.query_pairs_mut()
                .append_pair("shards", &shards.to_string());
        }
        self.call(
            with_book(self.http.put(url), book),
            &format!("create {name}"),
        )
        .await
    }

    /// Creates consumer group `group` of queue `name`.
    pub async fn queue_create_group(
        &self,
        name: &str,
        group: &str,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["queues", name, "groups", group]);
        self.call(
            with_book(self.http.put(url), book),
            &format!("create group {group} of {name}"),
        )
        .await
    }

    /// Pushes one message to queue `name`; the gateway's answer (`{"id": ...}`).
    pub async fn queue_push(
        &self,
        name: &str,
        data: Vec<u8>,
        key: Option<&str>,
        shards: Option<u32>,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["queues", name, "push"]);
        if let Some(shards) = shards {
            url.query_pairs_mut()
                .append_pair("shards", &shards.to_string());
        }
        let mut request = with_book(self.http.post(url).body(data), book);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.call(request, &format!("push to {name}")).await
    }

    /// Pops a message of queue `name` for `group`, waiting up to `wait_ms`: the delivery
    /// (`{"id", "data", "deliveries", "receipt"}`), or `None` if nothing came in time.
    pub async fn queue_pop(
        &self,
        name: &str,
        group: &str,
        wait_ms: u64,
        visibility_timeout_ms: Option<u64>,
        book: Option<u32>,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let mut url = self.url(&["queues", name, "pop"]);
        url.query_pairs_mut()
            .append_pair("group", group)
            .append_pair("wait_ms", &wait_ms.to_string());
        if let Some(ms) = visibility_timeout_ms {
            url.query_pairs_mut()
                .append_pair("visibility_timeout_ms", &ms.to_string());
        }
        let request = with_book(self.http.post(url), book)
            .timeout(Duration::from_millis(wait_ms) + NEXT_TIMEOUT_MARGIN);
        let body = self.send(request, &format!("pop from {name}")).await?;
        if body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&body).map(Some).with_context(|| {
            format!(
                "pop: unexpected reply from {}: {}",
                self.addr,
                snippet(&body)
            )
        })
    }

    /// Acks the delivery `receipt` of message `id` of queue `name` for `group`.
    pub async fn queue_ack(
        &self,
        name: &str,
        group: &str,
        id: &str,
        receipt: u64,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["queues", name, "ack"]);
        url.query_pairs_mut()
            .append_pair("group", group)
            .append_pair("id", id)
            .append_pair("receipt", &receipt.to_string());
        let request = with_book(self.http.post(url), book);
        self.call(request, &format!("ack {id} of {name}")).await
    }

    /// Queue `name`'s shards, length and groups.
    pub async fn queue_stat(
        &self,
        name: &str,
        book: Option<u32>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = self.url(&["queues", name]);
        self.call(with_book(self.http.get(url), book), &format!("stat {name}"))
            .await
    }

    /// The names of the functions the gateway serves.
    pub async fn functions(&self) -> anyhow::Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Reply {
            functions: Vec<String>,
        }
        let url = self.url(&["functions"]);
        let reply: Reply = self.call(self.http.get(url), "list functions").await?;
        Ok(reply.functions)
    }

    /// Succeeds when the gateway answers its health check.
    pub async fn health(&self) -> anyhow::Result<()> {
        let url = self.url(&["health"]);
        self.send(self.http.get(url), "health").await.map(drop)
    }

    /// The base URL with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http:// URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let body = self.send(request, what).await?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{what}: unexpected reply from {}: {}",
                self.addr,
                snippet(&body)
            )
        })
    }

    /// Sends `request`; the body of a 2xx reply, or an error saying what went wrong.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<bytes::Bytes> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if status.is_success() {
            return Ok(body);
        }
        let error = server_error(status, &body);
        Err(anyhow::Error::new(error).context(format!("{what} at {}", self.addr)))
    }

    fn transport_error(&self, error: &reqwest::Error) -> anyhow::Error {
        let addr = &self.addr;
        if error.is_timeout() {
            return anyhow::anyhow!("request to {addr} timed out");
        }
        let cause = bench::root_cause(error);
        if error.is_connect() {
            anyhow::anyhow!("cannot connect to {addr}: {cause} (is `tally up` running?)")
        } else {
            anyhow::anyhow!("request to {addr} failed: {cause}")
        }
    }
}

fn server_error(status: reqwest::StatusCode, body: &[u8]) -> ServerError {
    match serde_json::from_slice::<bench::ErrorReply>(body) {
        Ok(bench::ErrorReply { error }) => ServerError {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        },
        Err(_) => ServerError {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: match snippet(body) {
                text if text.is_empty() => status.canonical_reason().unwrap_or("").to_string(),
                text => text,
            },
        },
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_SNIPPET_BYTES_MAX)]);
    text.trim().to_string()
}

impl RecordOut {
    /// One line: "<seqnum> <tags comma-separated, or -> <data>", where data is the text with
    /// `\`, newlines, carriage returns and tabs escaped when it is printable UTF-8, and
    /// "base64:..." otherwise (also when the text itself starts with "base64:").
    pub fn line(&self) -> String {
        let tags = match self.tags.as_slice() {
            [] => "-".to_string(),
            tags => tags
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        format!("{} {tags} {}", self.seqnum, display_data(&self.data))
    }
}

fn display_data(data: &[u8]) -> String {
    let printable = |text: &str| {
        !text.starts_with("base64:")
            && text
                .chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    };
    match std::str::from_utf8(data) {
        Ok(text) if printable(text) => {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out
        }
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(data)
        ),
    }
}

/// `request` in `book` (`X-Tally-Book`), if one is given.
fn with_book(request: reqwest::RequestBuilder, book: Option<u32>) -> reqwest::RequestBuilder {
    match book {
        Some(book) => request.header("X-Tally-Book", book.to_string()),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn record_lines_show_text_or_base64() {
        let check = |tags: &[u64], data: &[u8], expect: &str| {
            let record = RecordOut {
                seqnum: 42,
                tags: tags.to_vec(),
                data: data.to_vec(),
            };
            assert_eq!(record.line(), expect);
        };
        check(&[], b"hello world", "42 - hello world");
        check(&[1, 7], b"a\nb\tc\\d", r"42 1,7 a\nb\tc\\d");
        check(&[3], "héllo ✓".as_bytes(), "42 3 héllo ✓");
        check(&[], b"", "42 - ");
        check(&[], &[0, 159, 146, 150], "42 - base64:AJ+Slg==");
        check(&[], b"bell\x07", "42 - base64:YmVsbAc=");
        check(&[], b"base64:AA==", "42 - base64:YmFzZTY0OkFBPT0=");
    }

    #[test]
    fn addresses_accept_host_port_or_http_url() {
        let check = |addr: &str, expect: &str| {
            let client = Client::new(addr).unwrap();
            assert_eq!(client.url(&["log", "1", "append"]).as_str(), expect);
        };
        check("127.0.0.1:8080", "http://127.0.0.1:8080/log/1/append");
        check("http://localhost:9/", "http://localhost:9/log/1/append");
        check("[::1]:80", "http://[::1]/log/1/append");
        check("https://localhost:9", "https://localhost:9/log/1/append");
        assert!(Client::new("https://x:1/path").is_err());
        assert!(Client::new("x:1/path").is_err());
    }

    #[test]
    fn function_names_are_percent_encoded() {
        let client = Client::new("h:1").unwrap();
        assert_eq!(
            client.url(&["function", "a/b c"]).as_str(),
            "http://h:1/function/a%2Fb%20c"
        );
    }

    #[test]
    fn server_errors_show_code_and_message() {
        let check = |status: u16, body: &str, expect: &str, retryable: bool| {
            let error = server_error(
                reqwest::StatusCode::from_u16(status).unwrap(),
                body.as_bytes(),
            );
            assert_eq!(
                (error.to_string().as_str(), error.is_retryable()),
                (expect, retryable)
            );
        };
        check(
            413,
            r#"{"error":{"code":"too_large","message":"record is 2 MiB, above 1 MiB"}}"#,
            "server error too_large (413): record is 2 MiB, above 1 MiB",
            false,
        );
        check(
            503,
            r#"{"error":{"code":"unavailable","message":"no sequencer"}}"#,
            "server error unavailable (503): no sequencer",
            true,
        );
        check(502, "", "server error http_502 (502): Bad Gateway", false);
        check(
            404,
            "no route",
            "server error http_404 (404): no route",
            false,
        );
    }

    #[tokio::test]
    async fn unreachable_gateway_says_cannot_connect() {
        // Port 1 on loopback: nothing listens there. (A port picked free and closed again
        // may be taken meanwhile by another test of this process.)
        let addr = "127.0.0.1:1".to_string();
        let error = Client::new(&addr).unwrap().health().await.unwrap_err();
        let expect =
            format!("cannot connect to {addr}: connection refused (is `tally up` running?)");
        assert_eq!(format!("{error:#}"), expect);
    }

    /// Answers one request with `reply` (a full HTTP response) and returns the request.
    async fn answer_once(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body named by content-length.
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            stream.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        (addr, task)
    }

    fn json_response(status: &str, body: &str) -> &'static str {
        let text = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        Box::leak(text.into_boxed_str())
    }

    #[tokio::test]
    async fn append_sends_tags_and_returns_the_seqnum() {
        let (addr, server) = answer_once(json_response("200 OK", r#"{"seqnum":17}"#)).await;
        let seqnum = Client::new(&addr)
            .unwrap()
            .append(3, &[5, 9], b"hi".to_vec())
            .await
            .unwrap();
        assert_eq!(seqnum, 17);
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /log/3/append?tag=5&tag=9 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\nhi"), "{request}");
    }

    #[tokio::test]
    async fn read_decodes_records_and_next() {
        let body = r#"{"records":[{"seqnum":4,"tags":[2],"data":"aGk="}],"next":5}"#;
        let (addr, server) = answer_once(json_response("200 OK", body)).await;
        let (records, next) = Client::new(&addr).unwrap().read(1, 2, 4, 10).await.unwrap();
        assert_eq!(
            records,
            vec![RecordOut {
                seqnum: 4,
                tags: vec![2],
                data: b"hi".to_vec()
            }]
        );
        assert_eq!(next, Some(5));
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /log/1/records?tag=2&from=4&limit=10 "),
            "{request}"
        );
    }

    #[tokio::test]
    async fn next_blocking_returns_none_when_nothing_came() {
        let (addr, server) = answer_once(json_response("200 OK", r#"{"record":null}"#)).await;
        let record = Client::new(&addr)
            .unwrap()
            .next_blocking(1, 0, 9, 100)
            .await
            .unwrap();
        assert_eq!(record, None);
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /log/1/next?tag=0&from=9&timeout_ms=100 "),
            "{request}"
        );
    }

    #[tokio::test]
    async fn invoke_sends_book_and_key_and_reports_server_errors() {
        let body = r#"{"error":{"code":"bad_argument","message":"no function f"}}"#;
        let (addr, server) = answer_once(json_response("400 Bad Request", body)).await;
        let client = Client::new(&addr).unwrap();
        let error = client
            .invoke("f", b"in".to_vec(), Some(7), Some("k1"))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!("invoke f at {addr}: server error bad_argument (400): no function f")
        );
        let server_error = error
            .downcast_ref::<ServerError>()
            .expect("a ServerError inside");
        assert_eq!(server_error.code, "bad_argument");
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /function/f "), "{request}");
        assert!(
            request.contains("x-tally-book: 7\r\n") && request.contains("idempotency-key: k1\r\n")
        );
    }
}
