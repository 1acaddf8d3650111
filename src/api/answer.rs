//! Answers in flight: every answer of the local API larger than
//! [`UNCOUNTED`] holds its bytes in `api.max_answer_bytes_in_flight` until
//! it has been handed to the socket, so clients that send queries and never
//! read the answers cannot make the gateway hold them without bound (three
//! unread 180 MiB pages once went past the unit's `MemoryMax`).
//!
//! Invariants:
//! - an answer is built first (its size is then known, and bounded by
//!   `api.max_answer_bytes` for queries), then reserves `min(size, budget)`;
//!   with no room within [`ANSWER_BUDGET_WAIT`] it is dropped and the
//!   request gets 503 with `Retry-After`;
//! - the body is handed to hyper in [`CHUNK`]-byte copies, only as fast as
//!   hyper takes them (it polls the body when its write buffer has room):
//!   what waits in hyper's buffer per connection is a few chunks, not the
//!   answer;
//! - the reservation is released when the body is dropped: fully written,
//!   or the connection closed (`api.write_timeout` cuts a client that does
//!   not read).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Answers up to this size are not counted (error bodies, key lists,
/// health): bounded by `max_connections` × this.
pub(crate) const UNCOUNTED: usize = 16 << 10;
/// Bytes handed to hyper per poll.
const CHUNK: usize = 16 << 10;
/// How long an answer waits for room before the request gets 503.
const ANSWER_BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Hold `resp`'s bytes in `budget` (`api.max_answer_bytes_in_flight`,
/// `limit` permits in all) until its body is dropped; 503 when no room is
/// made within [`ANSWER_BUDGET_WAIT`].
pub(crate) async fn bound(resp: Response, budget: &Arc<Semaphore>, limit: usize) -> Response {
    let Some(len) = resp.body().size_hint().exact() else {
        // Not built in memory (no handler streams today).
        return resp;
    };
    if len as usize <= UNCOUNTED {
        return resp;
    }
    let want = (len as usize).min(limit).max(1) as u32;
    let permit =
        match tokio::time::timeout(ANSWER_BUDGET_WAIT, budget.clone().acquire_many_owned(want))
            .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return ApiError::Unavailable("The local API is stopping".into()).into_response()
            }
            Err(_) => {
                metrics::counter!("dakkio_api_answers_refused_total").increment(1);
                return ApiError::Unavailable(format!(
                    "The gateway holds too many unread answers (more than {limit} bytes, \
                 `api.max_answer_bytes_in_flight`); retry shortly"
                ))
                .into_response();
            }
        };
    let (parts, body) = resp.into_parts();
    // The body is complete in memory (its exact size is known): collecting
    // it does not wait.
    let bytes = match http_body_util::BodyExt::collect(body).await {
        Ok(c) => c.to_bytes(),
        Err(_) => return ApiError::Internal("an answer could not be built".into()).into_response(),
    };
    Response::from_parts(
        parts,
        Body::new(Chunked {
            bytes,
            _permit: permit,
        }),
    )
}

/// An answer handed out in copies of [`CHUNK`] bytes, holding its
/// reservation until dropped.
struct Chunked {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.bytes.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.bytes.len().min(CHUNK);
        // A copy: once the last chunk is out, the answer itself is freed
        // with this body, whatever hyper still buffers.
        let chunk = Bytes::copy_from_slice(&self.bytes[..n]);
        let rest = self.bytes.split_off(n);
        self.bytes = rest;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: usize) -> Response {
        Response::new(Body::from(vec![b'x'; n]))
    }

    #[tokio::test]
    async fn answers_hold_their_bytes_until_dropped_and_small_ones_are_free() {
        let budget = Arc::new(Semaphore::new(100 << 10));
        let small = bound(answer(UNCOUNTED), &budget, 100 << 10).await;
        assert_eq!(budget.available_permits(), 100 << 10);
        let big = bound(answer(60 << 10), &budget, 100 << 10).await;
        assert_eq!(big.status(), 200);
        assert_eq!(budget.available_permits(), 40 << 10);
        // No room for another 60 KiB: 503 after the wait.
        let refused = bound(answer(60 << 10), &budget, 100 << 10).await;
        assert_eq!(refused.status(), 503);
        // The held answer comes out whole, in chunks; its bytes are then free.
        let body = http_body_util::BodyExt::collect(big.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), 60 << 10);
        assert_eq!(budget.available_permits(), 100 << 10);
        drop(small);
        // Larger than the whole budget: reserves all of it, still answered.
        let huge = bound(answer(200 << 10), &budget, 100 << 10).await;
        assert_eq!(huge.status(), 200);
        assert_eq!(budget.available_permits(), 0);
        drop(huge);
        assert_eq!(budget.available_permits(), 100 << 10);
    }
}
