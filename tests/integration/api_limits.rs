//! The local API's limits against the real binary over HTTP: answers
//! bounded in bytes (one page, and all unread answers together) under the
//! unit's 256 MiB memory limit with large points and parallel ingests,
//! keys in URL paths and percent-encoded query strings, and automatically
//! downsampled answers that are complete or followable.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::gateway::Gateway;
use crate::support::EVENT_TIMEOUT;

pub(crate) const A: &str = "507f1f77bcf86cd799439011";
pub(crate) const SRC: [&str; 3] = [
    "507f1f77bcf86cd799439012",
    "507f1f77bcf86cd799439013",
    "507f1f77bcf86cd799439014",
];
pub(crate) const ADMIN: &str = "dakkio_a_LimitsAdmin7Q2w9E4r6T8y0U1i3O5p";

/// A gateway binary with bucket `A`, the admin key [`ADMIN`] and `api`
/// lines added to `[api]`; its address read from its log.
pub(crate) struct Site {
    pub g: Gateway,
    pub url: String,
    pub addr: String,
    pub http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Site {
    pub(crate) fn start(api: &str, extra: &str) -> Site {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "[[buckets]]\nid = \"{A}\"\nname = \"a\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             admin_key_env = \"LIMITS_ADMIN\"\n{api}\n{extra}"
        );
        let g = Gateway::start_with_env(dir.path(), &cfg, &[("LIMITS_ADMIN", ADMIN)]);
        g.wait_ready();
        let addr = g.api_addr();
        Site {
            g,
            url: format!("http://{addr}"),
            addr,
            http: reqwest::Client::builder()
                .timeout(EVENT_TIMEOUT)
                .build()
                .unwrap(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// Stop cleanly and start again on the same directory (a new port).
    pub(crate) fn restart(&mut self) {
        assert!(self.g.terminate().success(), "{}", self.g.log_text());
        self.g.restart();
        self.g.wait_ready();
        self.addr = self.g.api_addr();
        self.url = format!("http://{}", self.addr);
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_with(ADMIN, method, path, body)
    }

    pub(crate) fn call_with(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.url),
            )
            .header("X-API-Key", key);
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let (status, text) = self.rt.block_on(async {
            let r = rb.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `call`, retried while the answer is 503 (budgets full for a moment).
    fn call_until_served(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let (s, v) = self.call(method, path, Some(body));
            if s != 503 || std::time::Instant::now() > deadline {
                return (s, v);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A large reading's text field: `n` bytes, different per reading.
fn blob(i: usize, n: usize) -> String {
    let c = (b'a' + (i % 26) as u8) as char;
    std::iter::repeat_n(c, n).collect()
}

/// Every page of a raw query (`limit` 100), following `hasMore` with
/// `offset + count`; checks each page's metadata on the way.
fn all_pages(site: &Site, max_count: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (s, v) = site.call_until_served(
            "POST",
            "/api/data/query",
            &json!({"bucketId": A, "filters": {"limit": 100, "offset": offset}}),
        );
        assert_eq!(s, 200, "{v}");
        let page = v["data"].as_array().unwrap().clone();
        let meta = &v["metadata"];
        assert_eq!(meta["count"].as_u64().unwrap() as usize, page.len());
        assert!(page.len() <= max_count, "page of {} items", page.len());
        assert!(!page.is_empty(), "{meta}");
        out.extend(page);
        offset += meta["count"].as_u64().unwrap() as usize;
        if !meta["hasMore"].as_bool().unwrap() {
            assert_eq!(meta["total"].as_u64().unwrap() as usize, offset);
            return out;
        }
    }
}

/// `api.max_answer_bytes`: a page of large readings stops early, says
/// `hasMore`, and following `offset + count` gives every reading back
/// exactly. (Before: 100 large readings in one answer, ~180 MiB.)
#[test]
fn a_page_of_large_readings_stops_at_max_answer_bytes_and_is_followed() {
    let site = Site::start("max_answer_bytes = \"1MiB\"", "");
    for i in 0..12 {
        let (s, v) = site.call(
            "POST",
            "/api/data",
            Some(&json!({"bucketId": A, "dataSourceId": SRC[0],
                         "timestamp": format!("2024-01-15T10:{i:02}:00Z"),
                         "values": {"blob": blob(i, 300 << 10), "i": i}})),
        );
        assert_eq!(s, 201, "{v}");
    }
    // 300 KiB each: three fit in 1 MiB, the fourth would not.
    let (s, v) = site.call(
        "POST",
        "/api/data/query",
        Some(&json!({"bucketId": A, "filters": {"limit": 100}})),
    );
    assert_eq!(s, 200);
    assert_eq!(v["metadata"]["count"], 3, "{}", v["metadata"]);
    assert_eq!(v["metadata"]["limit"], 100);
    assert_eq!(v["metadata"]["total"], 12);
    assert_eq!(v["metadata"]["hasMore"], true);
    let all = all_pages(&site, 3);
    assert_eq!(all.len(), 12);
    for (i, p) in all.iter().enumerate() {
        assert_eq!(p["values"]["i"], i, "in order, none twice");
        assert!(
            p["values"]["blob"] == blob(i, 300 << 10),
            "reading {i} whole"
        );
    }
    let mut g = site.g;
    assert!(g.terminate().success());
}

/// The attacks of issue 12 against a gateway held to the shipped unit's
/// `MemoryMax=256M`: large points, 32 parallel ingests of 2 MiB bodies, and
/// 12 connections that each ask for a page of large readings and never read
/// (once ~180 MiB per unread answer). No OOM kill; the API keeps answering;
/// every reading answered 201 comes back exactly.
#[test]
fn large_points_parallel_ingests_and_unread_answers_stay_inside_256_mib() {
    // Unread answers are cut after 3 s (`write_timeout`), freeing their
    // bytes for the reader below.
    let site = Site::start("write_timeout = \"3s\"", "");
    let Some(cgroup) = crate::support::memory_cgroup(site.g.pid(), 256 << 20) else {
        eprintln!(
            "SKIPPED: no memory cgroup can be made here (needs root and a memory controller)"
        );
        let mut g = site.g;
        g.kill();
        return;
    };
    const LARGE: usize = 1536 << 10;
    let mut sent: Vec<(usize, usize)> = Vec::new(); // (i, blob bytes)
                                                    // Large points, one by one.
    for i in 0..40 {
        let (s, v) = site.call(
            "POST",
            "/api/data",
            Some(&json!({"bucketId": A, "dataSourceId": SRC[0],
                         "values": {"blob": blob(i, LARGE), "i": i}})),
        );
        assert_eq!(s, 201, "{v}");
        sent.push((i, LARGE));
    }
    // 32 parallel ingests just under `api.body_limit` (2 MiB): each is
    // stored (201) or refused whole (503, bodies bounded in total).
    const NEAR_LIMIT: usize = (2 << 20) - 4096;
    let answers: Vec<(usize, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = (100..132)
            .map(|i| {
                let site = &site;
                s.spawn(move || {
                    let (st, v) = site.call(
                        "POST",
                        "/api/data",
                        Some(&json!({"bucketId": A, "dataSourceId": SRC[0],
                                     "values": {"blob": blob(i, NEAR_LIMIT), "i": i}})),
                    );
                    assert!(st == 201 || st == 503, "{st} {v}");
                    (i, st)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    sent.extend(
        answers
            .iter()
            .filter(|(_, s)| *s == 201)
            .map(|(i, _)| (*i, NEAR_LIMIT)),
    );
    // Unread answers: the request is sent, the answer never read.
    let logged_before = site.g.log_text().matches("path=/api/data/query").count();
    let request = format!(
        "POST /api/data/query HTTP/1.1\r\nHost: x\r\nX-API-Key: {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        json!({"bucketId": A, "filters": {"limit": 100}})
            .to_string()
            .len(),
        json!({"bucketId": A, "filters": {"limit": 100}})
    );
    let unread: Vec<std::net::TcpStream> = (0..12)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&site.addr).unwrap();
            c.write_all(request.as_bytes()).unwrap();
            c
        })
        .collect();
    // Each has been answered (200 held in the budget, or 503) once logged.
    let all_answered = site.g.wait_for_nth_log(
        "path=/api/data/query",
        logged_before + unread.len(),
        Duration::from_secs(120),
    );
    let oom_kills = crate::support::cgroup_oom_kills(&cgroup);
    let peak = crate::support::cgroup_peak(&cgroup);
    if all_answered.is_none() || oom_kills > 0 {
        let log = site.g.log_text();
        let mut g = site.g;
        g.kill();
        crate::support::remove_cgroup(&cgroup);
        panic!("{oom_kills} OOM kills, cgroup peak {peak} bytes\n{log}");
    }
    // Still serving while the unread connections are open: every reading
    // answered 201 comes back exactly, page by page.
    let (s, _) = site.call("GET", "/health", None);
    assert_eq!(s, 200);
    let all = all_pages(&site, 100);
    assert_eq!(all.len(), sent.len());
    let mut got: Vec<(usize, usize)> = all
        .iter()
        .map(|p| {
            let i = p["values"]["i"].as_u64().unwrap() as usize;
            let b = p["values"]["blob"].as_str().unwrap();
            assert!(b.bytes().all(|c| c == b'a' + (i % 26) as u8));
            (i, b.len())
        })
        .collect();
    got.sort_unstable();
    sent.sort_unstable();
    assert_eq!(got, sent);
    drop(unread);
    let oom_kills = crate::support::cgroup_oom_kills(&cgroup);
    let peak = crate::support::cgroup_peak(&cgroup);
    eprintln!(
        "attacks: {} of 32 parallel ingests stored, cgroup peak {} MiB (page cache included)",
        sent.len() - 40,
        peak >> 20
    );
    let mut g = site.g;
    assert!(g.terminate().success(), "the gateway did not stop cleanly");
    crate::support::remove_cgroup(&cgroup);
    assert_eq!(oom_kills, 0);
}

/// A key pasted into a URL path never reaches the log (DEBUG included),
/// and a percent-encoded key in the query string is refused like a plain
/// one, before anything else.
#[test]
fn keys_in_url_paths_and_encoded_query_strings_are_never_logged_and_refused() {
    let site = Site::start("", "");
    let key = "dakkio_w_PathCanary0aB1cD2eF3gH4iJ5kL6mN7oP8";
    let tail = &key[9..];
    for path in [
        format!("/api/buckets/{key}/keys"),
        format!("/api/buckets/{key}"),
        format!("/api/analytics/buckets/{key}"),
        format!("/api/buckets/{A}/keys/{key}"),
        format!("/api/buckets/{tail}/sources"),
        format!("/api/buckets/dakkio%5Fw_{tail}/sources"),
    ] {
        let (s, _) = site.call("GET", &path, None);
        assert!(s < 500, "{path}: {s}");
    }
    let (s, _) = site.call("DELETE", &format!("/api/buckets/{A}/keys/{key}"), None);
    assert!(s < 500);
    for query in [
        format!("period=7d&note=dakkio%5Fw_{tail}"),
        format!("period=7d&note=%64akkio_w_{tail}"),
        format!("period=7d&note=dakkio%255Fw_{tail}"),
        format!("api%4Bey={tail}"),
        format!("x%2Dapi%2Dkey={tail}"),
    ] {
        let (s, v) = site.call("GET", &format!("/api/analytics/buckets/{A}?{query}"), None);
        assert_eq!(s, 400, "{query}: {v}");
        assert!(v["message"].as_str().unwrap().contains("URL"), "{v}");
    }
    let mut g = site.g;
    assert!(g.terminate().success());
    let log = g.log_text();
    assert!(log.contains("api request"), "debug access log expected");
    assert!(log.contains("<redacted>"), "{log}");
    assert!(!log.contains(tail), "a key reached the log:\n{log}");
}

/// Three data sources with a reading a minute over 499 minutes, with ten
/// more fields each (so that a page of groups is large).
fn three_sources_over_499_minutes(site: &Site) -> i64 {
    let t0 = dakkio_gateway::reading::parse_timestamp("2024-01-15T00:00:00Z").unwrap();
    let fields: serde_json::Map<String, Value> = (0..10)
        .map(|f| (format!("measurement_{f:02}"), json!(f)))
        .collect();
    let mut points = Vec::new();
    for src in SRC {
        for m in 0..499 {
            let mut values = fields.clone();
            values.insert("v".into(), json!(m));
            points.push(json!({"dataSourceId": src,
                "timestamp": dakkio_gateway::reading::format_timestamp(t0 + m * 60_000),
                "values": values}));
        }
    }
    for chunk in points.chunks(1000) {
        let (s, v) = site.call(
            "POST",
            "/api/data/batch",
            Some(&json!({"bucketId": A, "dataPoints": chunk})),
        );
        assert_eq!(s, 201, "{v}");
    }
    t0
}

/// Every page of an unpaged query, following `hasMore` with `offset`
/// alone; each page must be downsampled. Returns the groups and the pages.
fn downsampled_pages(site: &Site) -> (Vec<Value>, usize) {
    let mut groups = Vec::new();
    let mut offset = 0u64;
    let mut pages = 0;
    loop {
        let mut filters = json!({});
        if offset > 0 {
            filters["offset"] = json!(offset);
        }
        let (s, v) = site.call(
            "POST",
            "/api/data/query",
            Some(&json!({"bucketId": A, "filters": filters})),
        );
        assert_eq!(s, 200, "{v}");
        let meta = &v["metadata"];
        assert_eq!(meta["downsamplingApplied"], true, "{meta}");
        groups.extend(v["data"].as_array().unwrap().clone());
        offset += meta["count"].as_u64().unwrap();
        pages += 1;
        if !meta["hasMore"].as_bool().unwrap() {
            assert_eq!(meta["total"].as_u64().unwrap(), offset);
            return (groups, pages);
        }
        assert!(pages < 20, "{meta}");
    }
}

/// The groups' counts add up to every reading, each source to the end.
fn covers_every_reading(groups: &[Value], t0: i64) {
    let counted: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 3 * 499, "every reading in exactly one group");
    for src in SRC {
        let last = groups
            .iter()
            .filter(|g| g["dataSourceId"] == src)
            .map(|g| {
                dakkio_gateway::reading::parse_timestamp(g["timestamp"].as_str().unwrap()).unwrap()
            })
            .max()
            .unwrap();
        assert!(
            last >= t0 + 485 * 60_000,
            "{src} ends at {last}, the range at {}",
            t0 + 498 * 60_000
        );
    }
}

/// Automatic downsampling aims at ~500 groups in all: three data sources
/// over 499 minutes once got 499 one-minute groups each, cut at 1000 (the
/// third source lost its range, and `hasMore` could not be followed: an
/// `offset` gave raw points). Now the whole range comes in one answer.
#[test]
fn downsampled_answers_of_three_sources_cover_the_whole_range() {
    let site = Site::start("", "");
    let t0 = three_sources_over_499_minutes(&site);
    let (groups, pages) = downsampled_pages(&site);
    assert_eq!(pages, 1, "one complete answer");
    assert!(groups.len() <= 1000);
    covers_every_reading(&groups, t0);
    let mut g = site.g;
    assert!(g.terminate().success());
}

/// A downsampled answer cut by `api.max_answer_bytes` is followed with
/// `offset` alone, page after page, to the same complete result.
#[test]
fn downsampled_answers_cut_by_bytes_are_followed_with_offset() {
    let site = Site::start("max_answer_bytes = \"64KiB\"", "");
    let t0 = three_sources_over_499_minutes(&site);
    let (groups, pages) = downsampled_pages(&site);
    assert!(pages > 1, "64 KiB pages: the answer is followed over pages");
    covers_every_reading(&groups, t0);
    let mut g = site.g;
    assert!(g.terminate().success());
}
