//! HTTP plumbing: the accept loop, one task per connection, and the request
//! handler that reads the body, plays scripts and hands the decision to
//! [`Shared::process`].
//!
//! Raw hyper rather than axum because the faults need the connection itself:
//! a handler can ask its connection task to close (or reset) the socket
//! without answering, and `stop` cancels every connection at once.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::record::Answer;
use super::script::Script;
use super::state::{BodyError, RequestCtx, Route, Shared};
use dakkio_gateway::dakkio::validate::{parse_batch, parse_single};

/// Bind with `SO_REUSEADDR` so that a restart can take the same port back
/// while connections of the previous run sit in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serve `listener` until `cancel`; every task goes into `tracker`.
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(accept_loop(listener, shared, cancel, tracker.clone()));
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of
                    // spinning; the listener stays usable.
                    tracing::debug!(error = %e, "stand-in accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(serve_connection(stream, shared.clone(), cancel.clone()));
    }
}

/// Lets a request handler end its own connection without a response.
#[derive(Default)]
struct ConnCtl {
    kill: Notify,
    reset: AtomicBool,
}

impl ConnCtl {
    fn kill(&self, reset: bool) {
        self.reset.store(reset, Ordering::SeqCst);
        self.kill.notify_one();
    }

    async fn killed(&self) -> bool {
        self.kill.notified().await;
        self.reset.load(Ordering::SeqCst)
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, cancel: CancellationToken) {
    #[cfg(unix)]
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let ctl = Arc::new(ConnCtl::default());
    let svc = {
        let ctl = ctl.clone();
        service_fn(move |req| handle(shared.clone(), ctl.clone(), req))
    };
    // No header-read timeout: it would need a timer, and slow clients are
    // not what the stand-in tests.
    let conn = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        reset = ctl.killed() => {
            if reset {
                // `conn` still owns the socket here, so `fd` is valid; it is
                // closed right after, when `conn` drops at the end of scope.
                #[cfg(unix)]
                set_linger_zero(fd);
            }
        }
        // Stop: in-flight requests (stalled ones included) lose their
        // connection, as they would when a server dies.
        _ = cancel.cancelled() => {}
    }
}

/// `SO_LINGER` {on, 0}: the coming close sends RST instead of FIN.
#[cfg(unix)]
fn set_linger_zero(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is an open socket owned by the caller's connection for the
    // duration of this call; `linger` is a valid `struct linger` and the size
    // passed matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "stand-in could not set SO_LINGER");
    }
}

async fn handle(
    shared: Arc<Shared>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let route = match (req.method(), req.uri().path()) {
        (&Method::POST, "/api/data/batch") => Some(Route::Batch),
        (&Method::POST, "/api/data") => Some(Route::Single),
        _ => None,
    };
    let headers = req.headers();
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let json_content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
        });
    let declared: Option<u64> = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let limit = shared.lock().body_limit;

    let body: Result<Bytes, BodyError> = if declared.is_some_and(|n| n > limit as u64) {
        Err(BodyError::TooLarge)
    } else {
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
            Err(_) => Err(BodyError::Broken),
        }
    };
    let outcome = match (route, &body) {
        (Some(Route::Batch), Ok(b)) => Some(parse_batch(b)),
        (Some(Route::Single), Ok(b)) => Some(parse_single(b)),
        _ => None,
    };
    let mut ctx = RequestCtx {
        method,
        path,
        route,
        key,
        json_content_type,
        bucket_hint: outcome.as_ref().and_then(|o| o.bucket_hint.clone()),
        points: outcome.as_ref().map_or(0, |o| o.points),
        scripted: false,
    };

    if let Some(script) = shared.next_script(ctx.bucket_hint.as_deref()) {
        ctx.scripted = true;
        match script {
            Script::Respond(reply) => return Ok(to_hyper(shared.scripted_reply(&ctx, reply))),
            Script::Delay(d) => tokio::time::sleep(d).await,
            Script::AcceptThenStall => {
                drop(shared.process(ctx, body.as_ref().map_err(|e| *e), outcome));
                return std::future::pending().await;
            }
            Script::Stall => {
                shared.log_fault(&ctx, Answer::Stalled);
                // The connection task drops this future on stop or when the
                // client closes the connection.
                return std::future::pending().await;
            }
            Script::DropConnection | Script::ResetConnection => {
                let reset = matches!(script, Script::ResetConnection);
                let answer = if reset {
                    Answer::Reset
                } else {
                    Answer::Dropped
                };
                shared.log_fault(&ctx, answer);
                ctl.kill(reset);
                return std::future::pending().await;
            }
        }
    }
    let resp = shared.process(ctx, body.as_ref().map_err(|e| *e), outcome);
    Ok(to_hyper(resp))
}

fn to_hyper(resp: super::state::Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(resp.body));
    *out.status_mut() = hyper::StatusCode::from_u16(resp.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&resp.content_type) {
        headers.insert(CONTENT_TYPE, v);
    }
    for (name, value) in resp.headers {
        let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    out
}
