//! Requests refused below the application (issue #11): hyper answers a
//! request it cannot parse (a control character in a header value, two
//! `Content-Length`s, `Content-Length: -1`, more than 100 headers, a huge
//! head, a garbage request line) itself, with an empty 400/431 and no
//! request id, and gives the application no way to change that answer.
//!
//! [`GatewayErrors`] wraps a connection's stream and recognises that answer
//! as it is written: a response head with status 4xx/5xx and no
//! `x-request-id` (every answer of the application has one, see
//! `crate::api::request_context`). It writes the gateway shape instead —
//! `{"error_code", "error_msg", "request_id"}` with the same id in
//! `X-Request-Id`, `Connection: close` — and logs an access-log line. hyper
//! closes the connection after such an answer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose parse-error answers from hyper are rewritten.
pub struct GatewayErrors<S> {
    inner: S,
    peer: SocketAddr,
    /// A rewritten answer not yet fully written.
    pending: Vec<u8>,
    written: usize,
}

impl<S> GatewayErrors<S> {
    pub fn new(inner: S, peer: SocketAddr) -> Self {
        GatewayErrors {
            inner,
            peer,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The status of `buf` if it is a response head written by hyper itself
/// (an error status, no request id).
fn hyper_error_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if status < 400 {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    (!head.contains("\r\nx-request-id:")).then_some(status)
}

/// The gateway answer for a request hyper refused with `status`.
fn gateway_answer(status: u16, peer: &SocketAddr) -> Vec<u8> {
    let id = crate::error::new_request_id();
    let (code, reason, msg) = match status {
        431 => (
            "APIGW.0431",
            "Request Header Fields Too Large",
            "Request header fields too large: too many headers or a header too long",
        ),
        414 => ("APIGW.0414", "URI Too Long", "Request URI too long"),
        505 => (
            "APIGW.0505",
            "HTTP Version Not Supported",
            "HTTP version not supported",
        ),
        _ => (
            "APIGW.0400",
            "Bad Request",
            "Bad request: the request line or headers could not be parsed",
        ),
    };
    let status = if matches!(status, 431 | 414 | 505) {
        status
    } else {
        400
    };
    let body =
        serde_json::json!({"error_code": code, "error_msg": msg, "request_id": id}).to_string();
    tracing::info!(
        request_id = %id,
        method = "-",
        path = "-",
        source = %peer,
        status,
        code,
        "request refused before parsing completed"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nx-request-id: {id}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncWrite + Unpin> GatewayErrors<S> {
    /// Writes what is left of a rewritten answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GatewayErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GatewayErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.drain(cx))?;
        if let Some(status) = hyper_error_status(buf) {
            this.pending = gateway_answer(status, &this.peer);
            this.written = 0;
            // hyper's own head is consumed; ours goes out instead.
            let _ = this.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::hyper_error_status;

    #[test]
    fn only_heads_without_a_request_id_and_with_an_error_status_are_hypers() {
        assert_eq!(
            hyper_error_status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            hyper_error_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n"),
            Some(431)
        );
        assert_eq!(
            hyper_error_status(b"HTTP/1.1 400 Bad Request\r\nx-request-id: ab\r\n\r\n{}"),
            None
        );
        assert_eq!(hyper_error_status(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(hyper_error_status(b"HTTP/1.1 100 Continue\r\n\r\n"), None);
        assert_eq!(hyper_error_status(b"{\"a\": 1}"), None);
        // Not a complete head: left alone.
        assert_eq!(hyper_error_status(b"HTTP/1.1 400 Bad Request\r\n"), None);
    }
}
