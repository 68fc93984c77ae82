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
    async fn accept(&mut self) -> io::Result<(Box<dyn Conn>, SocketAddr)>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
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
