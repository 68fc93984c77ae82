//! The engine's ports on turmoil. Time is turmoil's simulated clock (from a fixed epoch, so
//! runs never see the wall clock), and the network is turmoil's, which the runner partitions,
//! holds, delays and makes lossy. One fault of their own: [`DuplicatingNetwork`], the engine's
//! network, can deliver a connection's requests twice. A crashed host loses its tasks and
//! sockets; what it committed to storage survives (see `runner`).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use proctor::clock::Clock;
use proctor::network::{Conn, Listener, Network};
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Simulated wall time: turmoil's time since the epoch set on the builder, plus an offset
/// that the scenario's `clock.start` sets and `clock_jump_ms` faults move forward or back
/// (shared by every life of the engine host: a wall clock does not reset when a process
/// restarts). Waits run on tokio's timer, which is turmoil's simulated (monotonic) time.
#[derive(Clone, Debug, Default)]
pub struct SimClock {
    offset_ms: Arc<AtomicI64>,
}

impl SimClock {
    pub fn new(offset_ms: Arc<AtomicI64>) -> SimClock {
        SimClock { offset_ms }
    }
}

#[async_trait]
impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let sim_ms = turmoil::since_epoch()
            .expect("SimClock is used inside a turmoil host")
            .as_millis() as u64;
        sim_ms.saturating_add_signed(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// turmoil's simulated TCP; addresses are `host-name:port`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimNetwork;

#[async_trait]
impl Network for SimNetwork {
    async fn connect(&self, addr: &str) -> io::Result<Box<dyn Conn>> {
        Ok(Box::new(turmoil::net::TcpStream::connect(addr).await?))
    }

    async fn bind(&self, addr: &str) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(SimListener(
            turmoil::net::TcpListener::bind(addr).await?,
        )))
    }
}

/// Duplicated requests, a message-level fault: per destination host, the chance that a new
/// connection's bytes are also sent down a second connection to the same address whose
/// answers nobody reads. The peer receives every request on it twice, concurrently, as a
/// network that duplicates (or a proxy that retries) would deliver it; its idempotency must
/// make the second one harmless.
#[derive(Debug)]
pub struct Duplicates {
    rates: BTreeMap<String, f64>,
    /// Connections duplicated so far.
    pub duplicated: u64,
    rng: ChaCha8Rng,
}

impl Duplicates {
    pub fn new(seed: u64) -> Duplicates {
        Duplicates {
            rates: BTreeMap::new(),
            duplicated: 0,
            // Its own stream: duplicates never shift turmoil's or the engine's draws.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x4455_504c_4943_4154),
        }
    }

    /// Connections to `host` are duplicated with chance `rate` (0 ends it).
    pub fn set(&mut self, host: &str, rate: f64) {
        if rate > 0.0 {
            self.rates.insert(host.to_string(), rate);
        } else {
            self.rates.remove(host);
        }
    }

    /// Whether this connection to `host` is duplicated; draws only while a rate is set.
    fn draw(&mut self, host: &str) -> bool {
        let duplicate = match self.rates.get(host) {
            Some(&rate) => self.rng.random_bool(rate.clamp(0.0, 1.0)),
            None => false,
        };
        self.duplicated += u64::from(duplicate);
        duplicate
    }
}

/// The engine host's network: [`SimNetwork`], with [`Duplicates`].
#[derive(Clone, Debug)]
pub struct DuplicatingNetwork {
    pub duplicates: Arc<Mutex<Duplicates>>,
}

#[async_trait]
impl Network for DuplicatingNetwork {
    async fn connect(&self, addr: &str) -> io::Result<Box<dyn Conn>> {
        let primary = turmoil::net::TcpStream::connect(addr).await?;
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let duplicate = self
            .duplicates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .draw(host);
        if !duplicate {
            return Ok(Box::new(primary));
        }
        // The host answered the first connection; if it refuses the second, no duplicate.
        Ok(match turmoil::net::TcpStream::connect(addr).await {
            Ok(shadow) => Box::new(Mirror {
                primary,
                shadow: Some(shadow),
                backlog: Vec::new(),
            }),
            Err(_) => Box::new(primary),
        })
    }

    async fn bind(&self, addr: &str) -> io::Result<Box<dyn Listener>> {
        SimNetwork.bind(addr).await
    }
}

/// A connection whose writes are copied to a second one (best effort: the copy is dropped
/// on its first error) and whose reads come from the first only.
struct Mirror {
    primary: turmoil::net::TcpStream,
    shadow: Option<turmoil::net::TcpStream>,
    /// Bytes written to `primary` and not yet to `shadow`.
    backlog: Vec<u8>,
}

impl Mirror {
    fn pump(&mut self, cx: &mut Context<'_>) {
        while let (Some(shadow), false) = (self.shadow.as_mut(), self.backlog.is_empty()) {
            match Pin::new(shadow).poll_write(cx, &self.backlog) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.backlog.drain(..n);
                }
                Poll::Ready(_) => self.shadow = None,
                Poll::Pending => return,
            }
        }
    }
}

/// How long a duplicate connection stays open after its original closed, so that the peer
/// handles the duplicate to the end (a closed connection would cancel it mid-way).
const DUPLICATE_LINGER_MS: u64 = 10_000;

impl Drop for Mirror {
    fn drop(&mut self) {
        let Some(mut shadow) = self.shadow.take() else {
            return;
        };
        let backlog = std::mem::take(&mut self.backlog);
        // Dropped as its host dies: the duplicate dies with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The duplicate lives on by itself: finish sending it, then read (and drop) whatever
        // the peer answers until it closes, or for a bounded time.
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let linger = async {
                if shadow.write_all(&backlog).await.is_err() {
                    return;
                }
                let mut sink = [0u8; 4096];
                while matches!(shadow.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(Duration::from_millis(DUPLICATE_LINGER_MS), linger).await;
        });
    }
}

impl AsyncRead for Mirror {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.primary).poll_read(cx, buf)
    }
}

impl AsyncWrite for Mirror {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.primary).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.backlog.extend_from_slice(&buf[..n]);
            self.pump(cx);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pump(cx);
        Pin::new(&mut self.primary).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pump(cx);
        Pin::new(&mut self.primary).poll_shutdown(cx)
    }
}

struct SimListener(turmoil::net::TcpListener);

#[async_trait]
impl Listener for SimListener {
    async fn accept(&mut self) -> io::Result<(Box<dyn Conn>, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((Box::new(stream), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
