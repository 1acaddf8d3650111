//! The local dakkio API: devices and dashboards on the site write and read
//! through the gateway with dakkio's own paths, bodies, key types and error
//! bodies, even while the internet is down.
//!
//! # Design
//!
//! **Serving.** [`Api::run`] binds `api.listen` and logs `local API
//! listening` with the bound `addr`; [`Api::serve`] takes an already bound
//! listener (tests bind `127.0.0.1:0`). Connections are served by hyper
//! directly, with the axum [`Router`] as the service, because the gateway
//! needs what `axum::serve` lacks: a header-read timeout
//! (`api.header_timeout`, which also closes idle keep-alive connections), a
//! write-stall timeout (`api.write_timeout`: a client that pipelines
//! requests and never reads the answers is cut, see `stall.rs`), a cap on
//! requests per connection (`api.max_requests_per_connection`), a
//! connection cap (`api.max_connections`: beyond it the accept loop waits,
//! the kernel backlog holds the rest) and optional TLS (rustls with ring,
//! TLS 1.2/1.3). Every request runs under `api.request_timeout` (408),
//! except an ingest once its readings are handed to the store: it waits
//! for the commit and answers 201 (or 503), since a 408 followed by the
//! commit would make a retrying client store the readings twice. Bodies
//! are read with `api.body_limit` (413).
//!
//! **Store reads and bodies.** Handlers that read the store for their
//! answer hold one of `api.max_parallel_queries` slots (the store has 8
//! read threads; the uplink's claims must always find one free); heavy
//! query work runs under `api.query_timeout` and is stopped, SQLite
//! included, when the request future is dropped (client gone, 408, 503).
//! Bodies reserve their bytes in `api.max_body_bytes_in_flight` until the
//! handler is done (see `routes/mod.rs`). Answers are bounded the same
//! way: a query page stops at `api.max_answer_bytes` (with `hasMore`), and
//! every answer holds its bytes in `api.max_answer_bytes_in_flight` until
//! it is handed to the socket (see `answer.rs`), so clients that never
//! read cannot pile answers up in memory.
//!
//! **Order of checks** on every request, the same for every endpoint so the
//! authorisation matrix is predictable:
//! 1. a key in the query string → 400 (before anything else, it must be
//!    replaced); query strings are never logged;
//! 2. no key, malformed, unknown or deleted → 401 `Invalid or missing API key`;
//! 3. ... or 429 with `Retry-After` instead, once the client address has
//!    had `api.auth_failures_per_minute` failures in its minute. Failures
//!    are throttled, never a current key: it is served even from a
//!    throttled address (a NAT or proxy shares one address);
//! 4. the key type may not use the endpoint → 403 with dakkio's message;
//! 5. body / parameters invalid → 400 (Zod-like `details`), then
//!    `Invalid bucket ID format`;
//! 6. a write/read key of another bucket (or of an unknown one) → 403
//!    `API key does not have access to this bucket`;
//! 7. the bucket is not configured → 404 `Bucket not found`.
//!
//! **Ingest** goes through the store like MQTT and serial readings: the
//! handler awaits the group commit, then answers 201; the store refusing
//! (full with `on_full = "reject"`, disk full, stopping) is a 503 with
//! nothing accepted.
//!
//! **Keys.** See `auth.rs`: hashes only, an in-memory table updated on
//! create/delete, `lastUsedAt` flushed every [`LAST_USED_FLUSH`] and at stop.
//!
//! **Choices where dakkio's docs are silent** (dakkio-api.md §6, kept here):
//! - query: `startTime` inclusive, `endTime` exclusive; `limit` default 100
//!   (max 1000) for raw points and 1000 for aggregated groups; aggregated
//!   items are `{timestamp, dataSourceId, values, count}`, one per data
//!   source and interval; automatic downsampling (avg over an interval
//!   chosen for about 500 groups in all, whatever the number of data
//!   sources) runs only when the request names no
//!   `aggregation`/`groupBy`/`limit`, does not set
//!   `filters.downsampling = false`, covers a data source not created with
//!   `downsampling: false`, and the range holds more than 500
//!   points — a client that sets `limit` gets raw points, and an `offset`
//!   alone follows a downsampled answer's `hasMore` (more than 250 data
//!   sources, or a page cut at `api.max_answer_bytes`);
//! - every page is bounded by `limit` and by `api.max_answer_bytes`: a
//!   page of large readings stops early (`count` short of `limit`,
//!   `hasMore: true`); the next starts at `offset + count`;
//! - batch answer: `{"message": "Batch ingested successfully", "count",
//!   "dataPointIds"}`; a batch is all-or-nothing;
//! - creating or deleting buckets: 403 saying buckets are managed in dakkio;
//! - ingest with a read key: 403 `Only Admin and Write keys can ingest data`;
//!   creating keys without admin: 403 `Only Admin keys can create API keys`;
//! - alert rules (`routes/alerts.rs`, dakkio documents only create and
//!   list): `GET|PUT|PATCH|DELETE /api/alerts/:alertId` and `POST
//!   /api/alerts/:alertId/pause|resume` are the gateway's own, with the
//!   same envelopes; a read key may list and get, not change (403 `Only
//!   Admin and Write keys can manage alert rules`).

mod answer;
mod auth;
mod error;
pub(crate) mod routes;
mod stall;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::store::StoreHandle;
use crate::telemetry::{Health, Part};

pub use auth::{generate_key, well_formed, AdminSlot, KeyKind, Principal};
pub use error::ApiError;

/// How often `lastUsedAt` of used keys is written.
pub const LAST_USED_FLUSH: Duration = Duration::from_secs(30);
/// How long open requests may finish after stop is requested.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// The local API part.
pub struct Api {
    state: Arc<State>,
}

/// Shared by every request.
pub(crate) struct State {
    pub config: Arc<Config>,
    pub store: StoreHandle,
    pub keys: auth::KeyTable,
    pub throttle: Mutex<auth::Throttle>,
    /// `api.max_body_bytes_in_flight`, one permit per byte.
    pub body_bytes: Semaphore,
    /// `api.max_answer_bytes_in_flight`, one permit per byte (see `answer.rs`).
    pub answer_bytes: Arc<Semaphore>,
    /// `api.max_parallel_queries` slots for store queries.
    pub query_slots: Semaphore,
    pub health: Health,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The alert engine (`None`: not running; the alert routes answer 503).
    pub alerts: Option<crate::alerts::AlertsHandle>,
}

/// The client's address, put into each request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub IpAddr);

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("cannot listen on `{addr}` (`api.listen`): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the TLS files (`api.tls_cert_file`, `api.tls_key_file`): {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot read the issued API keys: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl Api {
    /// Build the part; reads the issued keys from the store.
    pub async fn new(
        config: Arc<Config>,
        store: StoreHandle,
        health: Health,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Result<Api, ApiStartError> {
        let admin = AdminSlot::new(config.api.admin_key.as_ref().map(|k| k.sha256));
        Self::with_admin_slot(config, store, health, metrics, admin).await
    }

    /// Like [`Api::new`], with the admin key's hash in a slot the caller
    /// keeps: the configuration reload sets a new admin key there and the
    /// next request sees it (no rebind).
    pub async fn with_admin_slot(
        config: Arc<Config>,
        store: StoreHandle,
        health: Health,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        admin: AdminSlot,
    ) -> Result<Api, ApiStartError> {
        // The API's store reads run on their own low-priority threads.
        store
            .reader()
            .start_query_threads(config.api.max_parallel_queries);
        let rows = store.reader().api_keys().await?;
        let entries = rows.iter().filter_map(auth::KeyEntry::from_row).collect();
        let throttle = auth::Throttle::new(
            config.api.auth_failures_per_minute,
            config.api.auth_throttle_clients,
        );
        Ok(Api {
            state: Arc::new(State {
                keys: auth::KeyTable::with_admin_slot(admin, entries),
                throttle: Mutex::new(throttle),
                query_slots: Semaphore::new(config.api.max_parallel_queries),
                body_bytes: Semaphore::new(config.api.max_body_bytes_in_flight),
                answer_bytes: Arc::new(Semaphore::new(config.api.max_answer_bytes_in_flight)),
                config,
                store,
                health,
                metrics,
                alerts: None,
            }),
        })
    }

    /// The router alone, without a listener (the fuzz harness calls it
    /// directly).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn router(&self) -> Router {
        routes::router(self.state.clone())
    }

    /// Serve the alert-rule endpoints with this engine (call before
    /// serving).
    pub fn with_alerts(mut self, alerts: crate::alerts::AlertsHandle) -> Api {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.alerts = Some(alerts);
        }
        self
    }

    /// Bind `api.listen` and serve until `cancel`. A bind or TLS failure is
    /// logged at ERROR and reported on the health board; the rest of the
    /// gateway keeps running.
    pub async fn run(self, cancel: CancellationToken) {
        let addr = self.state.config.api.listen;
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(source) => {
                let e = ApiStartError::Bind { addr, source };
                error!(error = %e, "local API not started");
                self.state.health.set_degraded(&Part::Api, e.to_string());
                return;
            }
        };
        if let Err(e) = self.serve(listener, cancel).await {
            error!(error = %e, "local API not started");
        }
    }

    /// Serve on `listener` until `cancel`; then let open requests finish
    /// (within [`STOP_DEADLINE`]) and write pending `lastUsedAt` values.
    pub async fn serve(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), ApiStartError> {
        let state = self.state;
        let cfg = &state.config.api;
        let tls = match &cfg.tls {
            Some(t) => Some(tls_acceptor(t).inspect_err(|e| {
                state.health.set_degraded(&Part::Api, e.to_string());
            })?),
            None => None,
        };
        let addr = listener
            .local_addr()
            .map_err(|source| ApiStartError::Bind {
                addr: cfg.listen,
                source,
            })?;
        info!(
            addr = %addr,
            tls = tls.is_some(),
            buckets = state.config.buckets.len(),
            keys = state.keys.count(),
            "local API listening"
        );
        if !state.keys.has_admin() {
            info!(
                "no admin key configured (`api.admin_key_env`, `api.admin_key_file` or \
                 `api.admin_key_sha256`): key management and the admin endpoints of the \
                 local API answer 401 until one is"
            );
        }
        // Rows for the configured buckets, so each has its `createdAt`.
        let buckets = state.config.buckets.iter().map(|b| b.id.clone()).collect();
        if let Err(e) = state.store.ensure_buckets(buckets).await {
            warn!(error = %e, "cannot record the configured buckets; their `createdAt` waits for their first reading");
        }
        state.health.set_ok(&Part::Api);
        let app = routes::router(state.clone());
        let conns = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(cfg.max_connections));
        // `lastUsedAt` writer; tracked with the connections, ends on `cancel`.
        {
            let state = state.clone();
            let cancel = cancel.clone();
            conns.spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(LAST_USED_FLUSH) => flush_last_used(&state).await,
                    }
                }
            });
        }
        let mut accept_errors = 0u64;
        loop {
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: wait a little, say so once.
                        accept_errors += 1;
                        if accept_errors == 1 {
                            warn!(error = %e, "local API cannot accept connections; retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            };
            if accept_errors > 0 {
                info!(
                    failed = accept_errors,
                    "local API accepting connections again"
                );
                accept_errors = 0;
            }
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let tls = tls.clone();
            let cancel = cancel.clone();
            let limits = ConnLimits::of(cfg);
            // Every write (TLS records included) is bounded by `api.write_timeout`.
            let stream = stall::StallTimeout::new(stream, cfg.write_timeout);
            conns.spawn(async move {
                let _permit = permit;
                match tls {
                    None => serve_connection(stream, peer, app, limits, cancel).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve_connection(s, peer, app, limits, cancel).await,
                            Ok(Err(e)) => {
                                debug!(client = %peer.ip(), error = %e, "TLS handshake failed")
                            }
                            Err(_) => debug!(client = %peer.ip(), "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        drop(listener);
        conns.close();
        if tokio::time::timeout(STOP_DEADLINE, conns.wait())
            .await
            .is_err()
        {
            warn!(deadline = ?STOP_DEADLINE, "local API requests still open at stop; closing them");
        }
        flush_last_used(&state).await;
        info!("local API stopped");
        Ok(())
    }
}

async fn flush_last_used(state: &State) {
    let used = state.keys.take_dirty();
    if used.is_empty() {
        return;
    }
    if let Err(e) = state.store.touch_api_keys(used).await {
        warn!(error = %e, "cannot record when API keys were last used");
    }
}

/// Per-connection limits from `[api]`.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    /// `api.header_timeout`: also the idle time between requests.
    header: Duration,
    /// `api.max_requests_per_connection`.
    requests: u64,
}

impl ConnLimits {
    fn of(cfg: &crate::config::ApiConfig) -> ConnLimits {
        ConnLimits {
            header: cfg.header_timeout,
            requests: cfg.max_requests_per_connection,
        }
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: ConnLimits,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = ClientAddr(peer.ip());
    // hyper answers pipelined requests one at a time, in order; after
    // `api.max_requests_per_connection` the answer says `Connection: close`
    // and hyper closes once it is written, so no client keeps a connection
    // (and its slot) busy with an endless pipeline.
    let served = Arc::new(AtomicU64::new(0));
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(client);
        let mut app = app.clone();
        let last = served.fetch_add(1, Ordering::Relaxed) + 1 >= limits.requests;
        async move {
            let mut resp = app.call(req.map(axum::body::Body::new)).await?;
            if last {
                resp.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(client = %peer.ip(), error = %e, "connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn tls_acceptor(t: &crate::config::ApiTls) -> Result<tokio_rustls::TlsAcceptor, ApiStartError> {
    let config = crate::tls::server_config(&t.cert_file, &t.key_file)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
