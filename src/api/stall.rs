//! A connection wrapper that fails a write stalled for longer than
//! `api.write_timeout`: a client that sends requests (pipelined or not) and
//! never reads the answers fills the socket buffers, and without this the
//! connection — and its slot of `api.max_connections` — would be held for
//! good.
//!
//! Invariant: the timer runs only while a write, flush or shutdown is
//! pending and restarts on any progress, so a slow reader that keeps
//! draining is never cut; reads are passed through untouched (idle
//! connections are closed by hyper's header-read timeout).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `I` with a bound on how long a write may make no progress.
pub(crate) struct StallTimeout<I> {
    inner: I,
    limit: Duration,
    /// Armed on the first `Pending` write, cleared on progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> StallTimeout<I> {
    pub(crate) fn new(inner: I, limit: Duration) -> StallTimeout<I> {
        StallTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Map the inner result: progress disarms the timer; `Pending` arms it
    /// (or polls it) and becomes an error once it fires.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.stalled = None;
                Poll::Ready(v)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for `api.write_timeout`",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_nobody_reads_fails_and_one_that_is_read_completes() {
        let (a, _b) = tokio::io::duplex(16);
        let mut s = StallTimeout::new(a, Duration::from_millis(100));
        let e = s.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (a, mut b) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out.len()
        });
        let mut s = StallTimeout::new(a, Duration::from_secs(30));
        s.write_all(&[0u8; 4096]).await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
