//! The gRPC listener's connections: Nagle off, and the answers of one batch of Checks in one write.
//!
//! h2 copies a DATA frame into its write buffer only when the payload is under its chain threshold: 256
//! bytes on a connection that says it takes vectored writes (a TCP stream does), 1024 otherwise. A larger
//! frame is held aside and must be written before the next frame is buffered. An allow is about 400 bytes,
//! so with a plain TCP stream every answer was a `writev` of its own: Envoy sends a dozen Checks in one
//! segment, Redis answers them in one reply, and they went back in a dozen segments (1.15 `writev` per
//! Check, each with its loopback delivery and a wake-up of Envoy's worker: about a seventh of a cached
//! Check's CPU). [`Coalesced`] says it takes no vectored writes, so answers under 1024 bytes share h2's
//! buffer, and a larger one (an allow with its assertion) is gathered behind the frames before it instead
//! of costing two writes. h2 flushes at the end of every write it makes, so nothing waits here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Enough for h2's own 16 KiB buffer and a large answer chained behind it.
const CAPACITY: usize = 32 * 1024;

/// A gRPC connection whose writes are gathered until h2 flushes.
pub struct Coalesced(BufWriter<TcpStream>);

/// The listener's connections, with TCP_NODELAY (tonic sets it only on listeners it binds itself). A
/// Check answered after an await (Redis, the IdP) is written after the HTTP/2 frames h2 sent when the
/// request arrived (WINDOW_UPDATE); with Nagle's algorithm on, the answer then waits for Envoy's delayed
/// ACK of those, up to 40 ms: a sequential Check that reads Redis took 44 ms instead of under one.
pub fn incoming(l: TcpListener) -> impl Stream<Item = io::Result<Coalesced>> {
    TcpIncoming::from(l).with_nodelay(Some(true)).map(|s| s.map(|s| Coalesced(BufWriter::with_capacity(CAPACITY, s))))
}

impl Coalesced {
    fn tcp(&self) -> &TcpStream {
        self.0.get_ref()
    }
}

impl Connected for Coalesced {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    /// What makes h2 buffer answers up to 1024 bytes instead of writing each on its own.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn answers_leave_together_when_h2_flushes_and_nagle_is_off() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut incoming = std::pin::pin!(incoming(l));
        let mut envoy = TcpStream::connect(addr).await.unwrap();
        let mut c = incoming.next().await.unwrap().unwrap();
        assert!(c.tcp().nodelay().unwrap(), "TCP_NODELAY on the accepted connection");
        assert!(!c.is_write_vectored(), "h2 copies answers under 1024 bytes into its buffer only then");

        c.write_all(&[1; 400]).await.unwrap();
        c.write_all(&[2; 400]).await.unwrap();
        let mut first = [0; 1];
        let early = tokio::time::timeout(Duration::from_millis(100), envoy.read(&mut first)).await;
        assert!(early.is_err(), "nothing is sent before the flush");
        c.flush().await.unwrap();
        let mut got = vec![0; 800];
        envoy.read_exact(&mut got).await.unwrap();
        assert_eq!((got[0], got[399], got[400], got[799]), (1, 1, 2, 2));

        let big: Vec<u8> = (0..CAPACITY * 2 + 7).map(|i| i as u8).collect();
        c.write_all(&big).await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0; big.len()];
        envoy.read_exact(&mut got).await.unwrap();
        assert!(got == big, "an answer larger than the buffer arrives whole and in order");
    }
}
