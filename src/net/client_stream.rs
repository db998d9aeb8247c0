//! A client connection whose write buffer exists only while an answer is being
//! written.
//!
//! Pingora writes a response's head and body with separate writes and counts on
//! the L4 stream's write buffer to send them as one segment. That buffer is
//! allocated at accept and kept for the connection's life: 1,460 bytes per idle
//! keep-alive client, 14 MiB for 10,000 of them. Turning it off costs a second
//! `sendto` per response. This wrapper, over a stream whose own write buffer is
//! off, keeps the coalescing and allocates the buffer on an answer's first small
//! write, freeing it at the flush that ends the answer.

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Writes smaller than one segment are gathered up to this size; Pingora's own
/// L4 write buffer size.
const COALESCE: usize = 1460;

/// A client stream with a write buffer allocated only while it holds bytes.
#[derive(Debug)]
pub struct ClientStream {
    inner: Stream,
    /// Bytes accepted but not yet sent; `sent` of them already went out.
    pending: Vec<u8>,
    sent: usize,
    /// Bytes went to `inner` since its last flush. Pingora flushes an answer
    /// several times (head, body, end: four a cache hit); flushing `inner`
    /// when nothing reached it since is a no-op through several layers
    /// (~70 instructions each, benches/instructions.sh).
    unflushed: bool,
}

impl ClientStream {
    /// Wraps a stream whose own write buffering is off.
    pub fn new(inner: Stream) -> Self {
        ClientStream {
            inner,
            pending: Vec::new(),
            sent: 0,
            unflushed: false,
        }
    }

    /// Sends what is pending, keeping the allocation for the answer's next writes.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            self.unflushed = true;
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0)); // no buffer for nothing
        }
        if self.pending.len() + buf.len() > COALESCE {
            ready!(self.poll_send_pending(cx))?;
            if buf.len() >= COALESCE {
                self.unflushed = true;
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(COALESCE);
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_pending(cx))?;
        // The answer is out: an idle connection holds no buffer.
        self.pending = Vec::new();
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for ClientStream {
    /// As Pingora's stream does on drop: one try to send what is still pending,
    /// without waiting.
    fn drop(&mut self) {
        if self.sent < self.pending.len() {
            let _ = self.poll_send_pending(&mut Context::from_waker(Waker::noop()));
        }
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(self).await {
            log::debug!("failed to shut a client connection down: {e}");
        }
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback pair: the gateway's end wrapped, and the client's end.
    async fn pair() -> (ClientStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let l4: pingora_core::protocols::l4::stream::Stream = server.into();
        (ClientStream::new(Box::new(l4)), client)
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_then_go_out_together_and_the_buffer_is_freed() {
        let (mut gateway, mut client) = pair().await;
        assert_eq!(gateway.write(b"").await.expect("empty"), 0);
        assert_eq!(
            gateway.pending.capacity(),
            0,
            "no buffer for an empty write"
        );
        gateway
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("head");
        gateway.write_all(b"{\"ok\":true}").await.expect("body");
        assert!(gateway.pending.capacity() >= COALESCE);
        let mut got = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(50), client.read(&mut got)).await;
        assert!(early.is_err(), "nothing is sent before the flush");
        gateway.flush().await.expect("flush");
        assert_eq!(
            gateway.pending.capacity(),
            0,
            "an idle connection holds no buffer"
        );
        let mut answer = vec![0u8; 30];
        client.read_exact(&mut answer).await.expect("read");
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n{\"ok\":true}");
    }

    #[tokio::test]
    async fn large_writes_keep_their_order_behind_pending_bytes() {
        let (mut gateway, mut client) = pair().await;
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        gateway.write_all(b"head").await.expect("head");
        gateway.write_all(&big).await.expect("big");
        gateway.write_all(b"tail").await.expect("tail");
        AsyncWriteExt::shutdown(&mut gateway)
            .await
            .expect("shutdown");
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.expect("read");
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(all.len(), want.len());
        assert!(all == want, "bytes reordered or lost");
    }
}
