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
    pub async fn before_next_accept(self) -> bool {
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
        Ok(Box::new(tokio::net::TcpListener::bind(addr).await?))
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
