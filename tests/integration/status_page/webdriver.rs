//! A minimal WebDriver (W3C) client over reqwest, enough to drive the
//! status page in the distribution's Chromium through its chromedriver:
//! start the driver, open a session with a fresh profile, navigate, run a
//! script, type, click, resize, take a screenshot. Every request has a
//! time limit and a missing browser or driver is a clear failure, never a
//! hang. Nothing here downloads a browser.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The element reference key of the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The most any one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian's packages put them (`chromium`, `chromium-driver`).
const DRIVERS: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
const BROWSERS: &[&str] = &["/usr/bin/chromium", "/usr/lib/chromium/chromium"];

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The browser and its driver, or a message saying how to install them.
pub fn locate() -> Result<(PathBuf, PathBuf), String> {
    locate_in(BROWSERS, DRIVERS)
}

fn locate_in(browsers: &[&str], drivers: &[&str]) -> Result<(PathBuf, PathBuf), String> {
    match (first_existing(browsers), first_existing(drivers)) {
        (Some(b), Some(d)) => Ok((b, d)),
        (b, d) => Err(format!(
            "the browser tests need Chromium and its driver from the distribution's \
             packages (missing: {}{}); run ./scripts/test.sh, which installs them, or \
             `apt-get install chromium chromium-driver`",
            if b.is_none() { "chromium " } else { "" },
            if d.is_none() { "chromium-driver" } else { "" },
        )),
    }
}

/// A running chromedriver (killed on drop).
pub struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Driver {
    /// Start `driver` on a free loopback port and wait (bounded) for its
    /// "started successfully" line.
    pub fn start(driver: &Path) -> Driver {
        let port = testkit::mosquitto::free_port();
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(crate::support::EVENT_TIMEOUT).is_err() {
            let _ = child.kill();
            panic!(
                "{} did not start within {:?}",
                driver.display(),
                crate::support::EVENT_TIMEOUT
            );
        }
        Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(COMMAND_TIMEOUT)
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }

    /// A headless session of `browser` with a fresh profile in `profile`.
    pub async fn session(&self, browser: &Path, profile: &Path) -> Session<'_> {
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser, "args": args},
        }}});
        let v = send(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(caps),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot open a browser session: {e}"));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_owned();
        Session { driver: self, id }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut rb = http.request(method, url);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: {status}: {}", v["value"]));
    }
    Ok(v["value"].clone())
}

/// One browser session (closed with [`Session::quit`]).
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver.base, self.id);
        send(&self.driver.http, method, &url, body)
            .await
            .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Evaluate `expr` in the page until it is truthy or `timeout` passes;
    /// returns its last value. The page refreshes on its own timer, so its
    /// state is polled (each poll is one command, bounded).
    pub async fn wait_for(&self, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let script = format!("return ({expr});");
        loop {
            let v = self.execute(&script, vec![]).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy || Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {v}"))
            .to_owned()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        base64_decode(v.as_str().expect("base64 text"))
    }

    pub async fn quit(self) {
        let url = format!("{}/session/{}", self.driver.base, self.id);
        let _ = send(&self.driver.http, reqwest::Method::DELETE, &url, None).await;
    }
}

/// Standard base64 (what WebDriver screenshots are), padding optional.
fn base64_decode(text: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes_what_browsers_send() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}

/// Without the packages the test fails at once, saying what to install.
#[test]
fn a_missing_browser_is_a_clear_failure() {
    let e = locate_in(&["/nonexistent/chromium"], &["/nonexistent/chromedriver"]).unwrap_err();
    assert!(e.contains("missing: chromium chromium-driver"), "{e}");
    assert!(
        e.contains("apt-get install chromium chromium-driver"),
        "{e}"
    );
    assert!(e.contains("./scripts/test.sh"), "{e}");
}
