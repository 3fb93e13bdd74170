//! The whole-request deadline (issue #11): a client has
//! `request_timeout_secs` to send a request's head (hyper's header read
//! timeout, see `crate::server`) and then as long again, counted from the
//! moment the head arrived, to send the whole body. A body that stops
//! arriving fails with [`BodyTimeout`]; `crate::auth::read_body` answers it
//! 408 `APIGW.0408` and the request-context layer closes the connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tower::util::MapRequestLayer;

/// The body did not arrive within the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} seconds")]
pub struct BodyTimeout(pub u64);

/// A body that fails with [`BodyTimeout`] once its deadline has passed.
pub struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    secs: u64,
}

impl DeadlineBody {
    pub fn new(inner: Body, secs: u64) -> DeadlineBody {
        DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(secs))),
            secs,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        // Checked first, so a client trickling bytes cannot outrun it.
        if this.sleep.is_elapsed() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.secs)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.secs))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The deadline's seconds if `e` (or an error it wraps) is a [`BodyTimeout`].
pub fn timed_out(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<BodyTimeout>() {
            return Some(t.0);
        }
        cur = c.source();
    }
    None
}

/// The layer that puts every request's body under the deadline. A plain
/// request map rather than a middleware function: it adds no future of its
/// own to a request in flight, and a request in flight can be an idle long
/// poll, held by each of 10,000 agents (docs/benchmarks.md, the idle
/// fleet's memory).
pub fn limit_body(secs: u64) -> MapRequestLayer<impl Fn(Request) -> Request + Clone> {
    MapRequestLayer::new(move |req: Request| req.map(|b| Body::new(DeadlineBody::new(b, secs))))
}
