//! The Network port: byte streams to and from addresses.
//!
//! HTTP (hyper) runs on top of these streams, so the same agent client and servers work on
//! real TCP ([`TokioNetwork`]) and on the simulator's network. Every use must carry a timeout:
//! a partitioned link drops bytes silently rather than failing.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

#[async_trait]
pub trait Network: Send + Sync {
    /// Connects to `addr` (`host:port`).
    async fn connect(&self, addr: &str) -> io::Result<Box<dyn Conn>>;
    /// Listens on `addr` (`host:port`; port 0 picks a free one).
    async fn bind(&self, addr: &str) -> io::Result<Box<dyn Listener>>;
}

#[async_trait]
pub trait Listener: Send {
    /// The next connection. A listener that can never accept again (its network is gone)
    /// answers `NotConnected`, so that the loop calling it stops ([`AcceptFailure::Closed`]).
    async fn accept(&mut self) -> io::Result<(Box<dyn Conn>, SocketAddr)>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// How long an accept loop waits after the process ran out of something it needs to accept
/// (file descriptors, memory): accepting again at once would fail again at once, and a loop
/// that retried without waiting would spin on a core until something is freed.
pub const ACCEPT_BACKOFF_MS: u64 = 50;

/// What a failed accept means for the loop that called it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptFailure {
    /// The listener will never accept again: stop.
    Closed,
    /// That one connection failed (reset or aborted before it was accepted): accept the next.
    Connection,
    /// Anything else, above all running out of file descriptors: accept again after
    /// [`ACCEPT_BACKOFF_MS`].
    Resources,
}

impl AcceptFailure {
    pub fn of(e: &io::Error) -> AcceptFailure {
        use io::ErrorKind::*;
        match e.kind() {
            NotConnected => AcceptFailure::Closed,
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
            | TimedOut => AcceptFailure::Connection,
            _ => AcceptFailure::Resources,
        }
    }

    /// Waits as this failure asks before the next accept; false when there must be none.
    async fn before_next_accept(self) -> bool {
        match self {
            AcceptFailure::Closed => false,
            AcceptFailure::Connection => true,
            AcceptFailure::Resources => {
                // tokio's timer, as the servers' other waits: simulated time in the simulator.
                tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                true
            }
        }
    }
}

/// The next connection on `listener`, each failed accept handled as [`AcceptFailure::of`]
/// says (skipped, or waited out); `None` once the listener will never accept again. Every
/// accept loop goes through it, so none retries a failure at once (which spins).
pub async fn accept_next(listener: &mut dyn Listener) -> Option<(Box<dyn Conn>, SocketAddr)> {
    loop {
        match listener.accept().await {
            Ok(accepted) => return Some(accepted),
            Err(e) => {
                let failure = AcceptFailure::of(&e);
                tracing::debug!("accept failed ({failure:?}): {e}");
                if !failure.before_next_accept().await {
                    return None;
                }
            }
        }
    }
}

/// Connections the kernel may hold, handshake done, for a listener that has not accepted them
/// yet (the kernel caps it at `net.core.somaxconn`). Past it a connect is dropped and waits out
/// a SYN retransmission (a second) before it is tried again: tokio's default, 1,024, overflowed
/// when a thousand executions called one agent at once.
pub const LISTEN_BACKLOG: u32 = 4_096;

/// Real TCP through tokio.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNetwork;

#[async_trait]
impl Network for TokioNetwork {
    async fn connect(&self, addr: &str) -> io::Result<Box<dyn Conn>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }

    async fn bind(&self, addr: &str) -> io::Result<Box<dyn Listener>> {
        // As tokio's `TcpListener::bind` (each resolved address in turn, SO_REUSEADDR), with
        // a longer accept queue than tokio's 1,024.
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await? {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            match socket.bind(addr) {
                Ok(()) => return Ok(Box::new(socket.listen(LISTEN_BACKLOG)?)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolved to nothing",
            )
        }))
    }
}

#[async_trait]
impl Listener for tokio::net::TcpListener {
    async fn accept(&mut self) -> io::Result<(Box<dyn Conn>, SocketAddr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((Box::new(stream), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_name_binds_and_its_listener_accepts() {
        let mut listener = TokioNetwork.bind("localhost:0").await.expect("binds");
        let addr = listener.local_addr().expect("bound").to_string();
        let mut client = TokioNetwork.connect(&addr).await.expect("connects");
        let (mut served, _) = listener.accept().await.expect("accepts");
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        served.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_port_in_use_is_refused_with_the_os_error() {
        let listener = TokioNetwork.bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("bound").to_string();
        let err = match TokioNetwork.bind(&addr).await {
            Ok(_) => panic!("{addr} bound twice"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn accept_failures_are_told_apart() {
        let of = |e: io::Error| AcceptFailure::of(&e);
        assert_eq!(
            of(io::ErrorKind::NotConnected.into()),
            AcceptFailure::Closed
        );
        assert_eq!(
            of(io::ErrorKind::ConnectionAborted.into()),
            AcceptFailure::Connection
        );
        // EMFILE: out of file descriptors.
        assert_eq!(
            of(io::Error::from_raw_os_error(24)),
            AcceptFailure::Resources
        );
    }
}
