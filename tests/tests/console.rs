//! The web console in a real browser: Debian's headless Chromium, driven over WebDriver by
//! chromedriver, against a running cluster whose gateways ask for tokens. Each page loads and
//! shows what the API says; signalling and cancelling a waiting workflow from its page works.
//! Each page's screenshot is written to `target/console-screenshots/` (or
//! `$TALLY_SCREENSHOTS`).
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver` packages;
//! the test installs them with apt-get when they are missing and it runs as root.

use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_tests::Cluster;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a page may take to show what is waited for.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs Chromium and chromedriver if they are missing.
fn browser_installed() {
    if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(["chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let mut status = install();
    if !matches!(status, Ok(s) if s.success()) {
        // The package lists may be older than the packages.
        let _ = Command::new("apt-get").arg("update").status();
        status = install();
    }
    assert!(
        matches!(status, Ok(s) if s.success()) && Path::new(CHROMEDRIVER).exists(),
        "the console test needs Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver, as root): installing them failed: {status:?}"
    );
}

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the browsers it started are a process group of their own: a
        // failing test leaves none behind.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    use std::os::unix::process::CommandExt as _;
    let child = Command::new(CHROMEDRIVER)
        .process_group(0)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    tally_tests::wait_until(Duration::from_secs(20), || {
        reqwest::blocking::get(&status).is_ok_and(|r| r.status().is_success())
    })
    .expect("chromedriver answers");
    Driver { child, url }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                // This machine's network is closed: nothing may try to reach beyond loopback.
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// The gateway's API, with the admin token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        let reply = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("the gateway answers");
        assert!(
            reply.status().is_success(),
            "GET {path}: {}",
            reply.status()
        );
        reply.json().await.expect("JSON")
    }

    async fn post(&self, path: &str, body: &str) -> Value {
        let reply = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .expect("the gateway answers");
        let status = reply.status();
        let text = reply.text().await.expect("a body");
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// Waits until the element at `css` exists and its text satisfies `ok`; its text.
async fn text_when(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(text) = e.text().await {
                if ok(&text) {
                    return text;
                }
                last = Some(text);
            }
        }
        assert!(
            start.elapsed() < PAGE_TIMEOUT,
            "{css} never showed what was expected; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    text_when(c, css, |_| true).await
}

async fn all(c: &Client, css: &str) -> Vec<Element> {
    c.find_all(Locator::Css(css)).await.expect("a query")
}

/// The numbers `field` of the objects of an API answer's list `list`.
fn numbers(answer: &Value, list: &str, field: &str) -> Vec<u64> {
    answer[list]
        .as_array()
        .unwrap_or_else(|| panic!("no list {list} in {answer}"))
        .iter()
        .map(|item| item[field].as_u64().expect("a number"))
        .collect()
}

/// The numbers the rows at `rows` carry in attribute `attr`, in page order.
async fn shown(c: &Client, rows: &str, attr: &str) -> Vec<u64> {
    let mut numbers = Vec::new();
    for row in all(c, &format!("{rows}[{attr}]")).await {
        if let Ok(Some(n)) = row.attr(attr).await {
            numbers.push(n.parse().expect("a number"));
        }
    }
    numbers
}

/// Opens console page `hash` and waits until it has shown data.
async fn open(c: &Client, base: &str, hash: &str) {
    c.goto(&format!("{base}/console#/{hash}"))
        .await
        .expect("the page loads");
    c.wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Css(&format!(
            "#page[data-route='{hash}'][data-loaded]"
        )))
        .await
        .expect("the view shows its data");
}

/// Clicks the element at `css` (`what` it is, for a failure's message).
async fn click(c: &Client, css: &str, what: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .click()
        .await
        .expect("a click");
}

/// Whether the SVG element at `css` is drawn with some width.
async fn is_drawn(c: &Client, css: &str) -> bool {
    let script = "const e = document.querySelector(arguments[0]); \
                  return e !== null && typeof e.getBBox === 'function' && e.getBBox().width > 0;";
    c.execute(script, vec![json!(css)])
        .await
        .is_ok_and(|drawn| drawn == json!(true))
}

async fn drawn(c: &Client, css: &str) {
    let start = Instant::now();
    while !is_drawn(c, css).await {
        assert!(start.elapsed() < PAGE_TIMEOUT, "{css} was never drawn");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is written");
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("TALLY_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tally_tests::profile_dir().join("../console-screenshots"));
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

#[test]
fn every_console_page_shows_what_the_api_says() {
    browser_installed();
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut cluster = Cluster::up(&dir.path().join("cluster"), 3, 3, 2).expect("cluster up");
    let base = cluster.gateways()[0].clone();
    let driver = start_driver();
    let shots = screenshot_dir();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        // The first token needs none; from then on every request needs one.
        let made: Value = http
            .post(format!("{base}/tokens"))
            .json(&json!({"name": "console", "scopes": ["admin"]}))
            .send()
            .await
            .expect("a token")
            .json()
            .await
            .expect("JSON");
        let api = Api {
            http,
            base: base.clone(),
            token: made["token"].as_str().expect("a token").to_string(),
        };
        // Something for every page to show.
        for i in 0..5 {
            api.post("/function/echo", &format!("console {i}")).await;
        }
        api.post("/workflows/approval/to-approve", r#"{"timeout_s": 600}"#)
            .await;
        api.post("/workflows/approval/to-cancel", r#"{"timeout_s": 600}"#)
            .await;
        let put = api
            .http
            .put(format!("{base}/objects/carts/c1"))
            .bearer_auth(&api.token)
            .body(r#"{"items": []}"#)
            .send()
            .await
            .expect("a put");
        assert!(put.status().is_success());
        let patch = api
            .http
            .patch(format!("{base}/objects/carts/c1"))
            .bearer_auth(&api.token)
            .body(r#"[{"op": "push", "path": "/items", "value": "apple"}]"#)
            .send()
            .await
            .expect("a patch");
        assert!(patch.status().is_success());
        api.post("/queues/jobs/push", "job 1").await;
        api.post("/queues/jobs/push", "job 2").await;

        let c = browser(&driver, &dir.path().join("profile")).await;

        // Without a token the console says it needs one.
        c.goto(&format!("{base}/console#/cluster"))
            .await
            .expect("the page loads");
        text_when(&c, "#error", |t| t.contains("asks for a token")).await;
        let token = c.find(Locator::Css("#token")).await.expect("a token field");
        token.send_keys(&api.token).await.expect("typing");
        click(&c, "#settings button", "the button").await;

        // Cluster: the leader, and every sequencer and storage node, healthy.
        let status = api.get("/cluster").await;
        let leader = status["leader"].as_str().expect("a leader").to_string();
        text_when(&c, "#cluster-leader", |t| {
            t == format!("sequencer {leader}")
        })
        .await;
        for role in ["sequencer", "storage"] {
            for id in cluster.ids(role) {
                let health = format!("tr[data-node='{role}-{id}'] td:nth-child(3)");
                text_when(&c, &health, |t| t == "ok").await;
            }
        }
        let shards = status["sequencers"][&leader]["shards"]
            .as_object()
            .expect("the leader's shards")
            .len();
        assert!(shards > 0);
        assert_eq!(all(&c, "#shards tbody tr[data-shard]").await.len(), shards);
        // The append-rate chart draws a line once two samples were taken.
        drawn(&c, "#appends polyline").await;
        screenshot(&c, &shots, "cluster").await;

        // Log: book 0's first page, record by record.
        open(&c, &base, "log").await;
        let want = numbers(
            &api.get("/log/0/records?limit=50").await,
            "records",
            "seqnum",
        );
        assert!(!want.is_empty());
        assert_eq!(
            shown(&c, "#records tbody tr", "data-seqnum").await,
            want,
            "the log page shows the API's first page"
        );
        // The books and book 0's tags as the API lists them; a click on a tag reads its records.
        let books = api.get("/log").await;
        let book0 = books["books"]
            .as_array()
            .expect("books")
            .iter()
            .find(|b| b["book"] == 0)
            .expect("book 0 is listed");
        text_when(&c, "tr[data-book='0'] td:nth-child(2)", |t| {
            Some(t) == book0["records"].as_u64().map(|n| n.to_string()).as_deref()
        })
        .await;
        let tags = numbers(&api.get("/log/0/tags?limit=20").await, "tags", "tag");
        assert!(!tags.is_empty());
        assert_eq!(shown(&c, "#tags tbody tr", "data-tag").await, tags);
        screenshot(&c, &shots, "log").await;
        let tag = tags[0];
        let want = numbers(
            &api.get(&format!("/log/0/records?tag={tag}&limit=50")).await,
            "records",
            "seqnum",
        );
        click(&c, &format!("tr[data-tag='{tag}']"), "the tag's row").await;
        let start = Instant::now();
        loop {
            let shown = shown(&c, "#records tbody tr", "data-seqnum").await;
            if shown == want {
                break;
            }
            assert!(
                start.elapsed() < PAGE_TIMEOUT,
                "tag {tag}'s records: shown {shown:?}, the API's {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Functions: every function; the invocations this gateway ran, and one's output.
        open(&c, &base, "functions").await;
        let functions = api.get("/functions").await;
        let names = functions["functions"].as_array().expect("names").len();
        assert_eq!(
            all(&c, "#functions tbody tr[data-function]").await.len(),
            names
        );
        text_when(&c, "tr[data-function='echo'] td:nth-child(3)", |t| t == "5").await;
        // The latency chart draws the calls made while the page watches.
        let start = Instant::now();
        while !is_drawn(&c, "#latency polyline").await {
            assert!(
                start.elapsed() < PAGE_TIMEOUT,
                "the latency chart never drew"
            );
            api.post("/function/echo", "watched").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let invocations = api.get("/invocations?function=echo").await;
        let newest = &invocations["invocations"][0];
        let id = newest["id"].as_str().expect("an id");
        click(
            &c,
            &format!("tr[data-invocation='{id}']"),
            "the newest echo is listed",
        )
        .await;
        let output = text(&c, "#invocation-output").await;
        assert_eq!(output, newest["output"].as_str().expect("an output"));
        assert_eq!(text(&c, "#invocation-input").await, output, "echo echoes");
        screenshot(&c, &shots, "functions").await;

        // Workflows: both instances listed; one approved by a signal from its page.
        open(&c, &base, "workflows").await;
        for id in ["to-approve", "to-cancel"] {
            text_when(
                &c,
                &format!("tr[data-instance='{id}'] td:nth-child(3)"),
                |t| t == "running",
            )
            .await;
        }
        screenshot(&c, &shots, "workflows").await;
        click(&c, "tr[data-instance='to-approve']", "listed").await;
        text_when(&c, "#wf-waiting", |t| t.contains("approve")).await;
        let instance = api.get("/workflows/to-approve").await;
        assert_eq!(
            all(&c, "#steps tbody tr").await.len(),
            instance["steps"].as_array().expect("steps").len()
        );
        screenshot(&c, &shots, "workflow-waiting").await;
        c.find(Locator::Css("#signal-name"))
            .await
            .expect("the signal field")
            .send_keys("approve")
            .await
            .expect("typing");
        let payload = c
            .find(Locator::Css("#signal-payload"))
            .await
            .expect("payload");
        payload.clear().await.expect("cleared");
        payload.send_keys(r#""the console""#).await.expect("typing");
        click(&c, "#signal-send", "the button").await;
        text_when(&c, "#wf-state", |t| t == "succeeded").await;
        let approved = api.get("/workflows/to-approve").await;
        assert_eq!(approved["status"], "succeeded");
        assert_eq!(
            approved["output"],
            json!({"approved": true, "by": "the console"})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&text(&c, "#wf-output").await).expect("JSON"),
            approved["output"]
        );
        screenshot(&c, &shots, "workflow-signalled").await;

        // The other one cancelled from its page.
        open(&c, &base, "workflows/to-cancel").await;
        click(&c, "#cancel", "the button").await;
        text_when(&c, "#wf-state", |t| t == "cancelled").await;
        assert_eq!(api.get("/workflows/to-cancel").await["status"], "cancelled");
        screenshot(&c, &shots, "workflow-cancelled").await;

        // Objects: the document and each change.
        open(&c, &base, "objects/carts/c1").await;
        let doc = api.get("/objects/carts/c1").await;
        let shown: Value =
            serde_json::from_str(&text(&c, "#object-doc").await).expect("the document as JSON");
        assert_eq!(shown, doc);
        let history = api.get("/objects/carts/c1/history").await;
        assert_eq!(
            all(&c, "#history tbody tr[data-seqnum]").await.len(),
            history["changes"].as_array().expect("changes").len()
        );
        screenshot(&c, &shots, "objects").await;

        // Queues: the queue this gateway pushed to, its length as the API says.
        open(&c, &base, "queues").await;
        let stat = api.get("/queues/jobs").await;
        text_when(&c, "#queue-length-jobs", |t| {
            t == stat["length"].as_u64().expect("a length").to_string()
        })
        .await;
        screenshot(&c, &shots, "queues").await;

        c.close().await.expect("the session ends");
    });
    cluster.down().expect("cluster down");
}
