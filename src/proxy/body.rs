//! The client's request body on its way upstream, held to `server.max_request_body` and to a
//! minimum pace (`server.body_timeout`, `server.min_body_rate`): a body that breaks either ends
//! with a [`BodyError`], which makes the upstream client abort the upstream request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::config::Server;
use crate::reply::BoxError;

/// Why the proxy stopped reading a request body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    /// Fewer than `need` bytes arrived while the proxy waited `window` for them.
    #[error("the request body brought {got} bytes in {window:?}, fewer than the {need} required")]
    TooSlow {
        got: u64,
        need: u64,
        window: Duration,
    },
}

/// The request body with its limit and pace. The pace is measured in windows of
/// `body_timeout`: the first starts when the proxy first waits for the client, and each must
/// bring `max(1, min_body_rate × body_timeout)` bytes. Time spent while the upstream is not
/// reading (the body is not polled) is not held against the client unless it also sent
/// nothing. The clock is read once per window, not per chunk.
pub struct Paced {
    inner: Incoming,
    limit: u64,
    seen: u64,
    window: Duration,
    need: u64,
    /// `seen` when the current window started.
    window_start: u64,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Paced {
    pub fn new(inner: Incoming, server: &Server) -> Paced {
        let need = u64::try_from(
            u128::from(server.min_body_rate) * server.body_timeout.as_millis() / 1000,
        )
        .unwrap_or(u64::MAX)
        .max(1);
        Paced {
            inner,
            limit: server.max_request_body,
            seen: 0,
            window: server.body_timeout,
            need,
            window_start: 0,
            deadline: None,
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(d.len() as u64);
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit).into())));
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        // Waiting for the client: its window runs.
        let (window, seen) = (this.window, this.seen);
        let start = &mut this.window_start;
        let deadline = this.deadline.get_or_insert_with(|| {
            *start = seen;
            Box::pin(tokio::time::sleep(window))
        });
        while deadline.as_mut().poll(cx).is_ready() {
            let got = this.seen - this.window_start;
            if got < this.need {
                return Poll::Ready(Some(Err(BodyError::TooSlow {
                    got,
                    need: this.need,
                    window,
                }
                .into())));
            }
            this.window_start = this.seen;
            deadline.as_mut().reset(Instant::now() + window);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
