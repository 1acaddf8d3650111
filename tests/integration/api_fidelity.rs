//! The local API answers as dakkio documents (dakkio-api.md §2.4, §2.5,
//! §2.9), against the real binary over HTTP: creating data sources,
//! `createdAt`/`updatedAt` and `organizationId` on buckets, `plan` and
//! `usage` in the overview.

use serde_json::{json, Value};

use crate::api_limits::{Site, A, SRC};

fn is_iso(v: &Value) -> bool {
    v.as_str()
        .and_then(dakkio_gateway::reading::parse_timestamp)
        .is_some()
}

fn is_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| dakkio_gateway::reading::is_object_id(s) && s == s.to_lowercase())
}

fn issued_key(site: &Site, kind: &str) -> String {
    let (s, v) = site.call(
        "POST",
        &format!("/api/buckets/{A}/keys"),
        Some(&json!({"type": kind, "name": kind})),
    );
    assert_eq!(s, 201, "{v}");
    v["apiKey"]["key"].as_str().unwrap().to_owned()
}

/// `POST /api/buckets/:id/sources` creates a data source with a new id, in
/// dakkio's shape; devices ingest with that id; the list, the bucket
/// analytics and a restart keep its name and times; a read key may not
/// create one; `store.max_sources_per_bucket` bounds creation too.
#[test]
fn data_sources_are_created_in_dakkios_shape_kept_and_listed() {
    let mut site = Site::start("", "[store]\nmax_sources_per_bucket = 2\n");
    let write = issued_key(&site, "write");
    let read = issued_key(&site, "read");
    let path = format!("/api/buckets/{A}/sources");
    let body = json!({
        "name": "Temperature Sensor",
        "description": "DHT22 temperature and humidity sensor",
        "schema": {
            "temperature": {"type": "number", "unit": "celsius", "description": "Temperature reading"},
            "humidity": "number"
        }
    });
    let (s, v) = site.call_with(&read, "POST", &path, Some(&body));
    assert_eq!(s, 403, "{v}");
    assert_eq!(
        v["message"],
        "Only Admin and Write keys can create data sources"
    );
    let (s, v) = site.call_with(&write, "POST", &path, Some(&json!({"schema": {}})));
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["details"][0]["path"], json!(["body", "name"]));
    let (s, v) = site.call_with(&write, "POST", &path, Some(&body));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["message"], "Data source created successfully");
    let src = &v["dataSource"];
    assert!(is_id(&src["_id"]), "{src}");
    assert_eq!(src["bucketId"], A);
    assert_eq!(src["name"], "Temperature Sensor");
    assert_eq!(src["type"], "sensor");
    assert_eq!(src["description"], body["description"]);
    assert_eq!(
        src["schema"],
        json!({"temperature": {"type": "number", "unit": "celsius", "description": "Temperature reading"},
               "humidity": {"type": "number"}})
    );
    assert_eq!(src["downsampling"], true);
    assert_eq!(src["status"], "active");
    assert!(is_iso(&src["createdAt"]) && src["createdAt"] == src["updatedAt"]);
    let id = src["_id"].as_str().unwrap().to_owned();
    let created = src.clone();
    // Devices ingest with the new id.
    let (s, v) = site.call_with(
        &write,
        "POST",
        "/api/data",
        Some(&json!({"bucketId": A, "dataSourceId": id, "values": {"temperature": 21.5}})),
    );
    assert_eq!(s, 201, "{v}");
    let listed = |site: &Site| {
        let (s, v) = site.call_with(&read, "GET", &path, None);
        assert_eq!(s, 200, "{v}");
        v["dataSources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["_id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{v}"))
    };
    let one = listed(&site);
    for key in [
        "name",
        "type",
        "description",
        "schema",
        "createdAt",
        "updatedAt",
    ] {
        assert_eq!(one[key], created[key], "{key}: {one}");
    }
    assert!(is_iso(&one["lastDataPoint"]));
    let (s, v) = site.call(
        "GET",
        &format!("/api/analytics/buckets/{A}?period=24h"),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(
        v["analytics"]["dataSourceStats"][0]["name"],
        "Temperature Sensor"
    );
    // A source seen only in readings gets its time too; then the cap (2).
    let (s, _) = site.call_with(
        &write,
        "POST",
        "/api/data",
        Some(&json!({"bucketId": A, "dataSourceId": SRC[0], "values": {"t": 1}})),
    );
    assert_eq!(s, 201);
    let (s, v) = site.call_with(&write, "POST", &path, Some(&body));
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("max_sources_per_bucket"),
        "{v}"
    );
    site.restart();
    let again = listed(&site);
    assert_eq!(again, one, "kept across a restart");
    let (_, v) = site.call_with(&read, "GET", &path, None);
    let seen = v["dataSources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["_id"] == SRC[0])
        .cloned()
        .unwrap();
    assert!(is_iso(&seen["createdAt"]), "{seen}");
    let mut g = site.g;
    assert!(g.terminate().success());
}

/// Buckets carry `organizationId`, `createdAt` and `updatedAt` (stable
/// across restarts); the overview carries `plan` and `usage` in dakkio's
/// shape, its organisation the same id as the buckets'.
#[test]
fn buckets_and_overview_carry_dakkios_fields() {
    let mut site = Site::start("", "[uplink]\nmax_calls_per_month = 10000\n");
    let (s, v) = site.call("GET", "/api/buckets", None);
    assert_eq!(s, 200, "{v}");
    let b = &v["buckets"][0];
    assert!(is_id(&b["organizationId"]), "{b}");
    assert!(is_iso(&b["createdAt"]), "{b}");
    assert!(is_iso(&b["updatedAt"]), "{b}");
    let first = b.clone();
    let (s, v) = site.call("GET", &format!("/api/buckets/{A}"), None);
    assert_eq!(s, 200);
    for key in ["organizationId", "createdAt", "updatedAt"] {
        assert_eq!(v["bucket"][key], first[key], "{key}");
    }
    let (s, v) = site.call("GET", "/api/analytics/overview", None);
    assert_eq!(s, 200, "{v}");
    let o = &v["overview"];
    assert_eq!(o["organization"]["_id"], first["organizationId"]);
    let plan = &o["plan"];
    assert!(plan["name"].is_string(), "{plan}");
    assert_eq!(plan["maxBuckets"], 1);
    assert_eq!(plan["maxApiCalls"], 10000);
    assert!(plan["maxRetentionDays"].as_u64().is_some(), "{plan}");
    let usage = &o["usage"];
    assert!(usage["apiCallsThisMonth"].as_u64().is_some(), "{usage}");
    assert_eq!(usage["apiCallsLimit"], 10000);
    assert!(usage["apiCallsPercentage"].is_number(), "{usage}");
    assert!(usage["storageUsedBytes"].as_u64().is_some());
    assert!(usage["storageUsedFormatted"].is_string());
    site.restart();
    let (_, v) = site.call("GET", "/api/buckets", None);
    assert_eq!(v["buckets"][0], first, "the same after a restart");
    let mut g = site.g;
    assert!(g.terminate().success());
}

/// dakkio: a data source created with `downsampling: false` is never
/// averaged on its own; one created without (the default) is, above 500
/// points.
#[test]
fn a_source_created_without_downsampling_is_answered_raw() {
    let site = Site::start("", "");
    let path = format!("/api/buckets/{A}/sources");
    let mut ids = Vec::new();
    for flag in [false, true] {
        let (s, v) = site.call(
            "POST",
            &path,
            Some(&json!({"name": format!("downsampling {flag}"),
                         "schema": {"v": "number"}, "downsampling": flag})),
        );
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["dataSource"]["downsampling"], flag);
        ids.push(v["dataSource"]["_id"].as_str().unwrap().to_owned());
    }
    let t0 = dakkio_gateway::reading::parse_timestamp("2024-01-15T00:00:00Z").unwrap();
    for id in &ids {
        let points: Vec<Value> = (0..600)
            .map(|m| {
                json!({"dataSourceId": id, "values": {"v": m},
                   "timestamp": dakkio_gateway::reading::format_timestamp(t0 + m * 60_000)})
            })
            .collect();
        let (s, v) = site.call(
            "POST",
            "/api/data/batch",
            Some(&json!({"bucketId": A, "dataPoints": points})),
        );
        assert_eq!(s, 201, "{v}");
    }
    let query = |id: &str| {
        let (s, v) = site.call(
            "POST",
            "/api/data/query",
            Some(&json!({"bucketId": A, "filters": {"dataSourceId": id}})),
        );
        assert_eq!(s, 200, "{v}");
        v["metadata"].clone()
    };
    let raw = query(&ids[0]);
    assert!(raw.get("downsamplingApplied").is_none(), "{raw}");
    assert_eq!(raw["total"], 600);
    assert_eq!(raw["count"], 100);
    let averaged = query(&ids[1]);
    assert_eq!(averaged["downsamplingApplied"], true, "{averaged}");
    let mut g = site.g;
    assert!(g.terminate().success());
}
