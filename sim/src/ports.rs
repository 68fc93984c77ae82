//! The engine's ports on turmoil. Fault model: these add no faults of their own — time is
//! turmoil's simulated clock (from a fixed epoch, so runs never see the wall clock), and the
//! network is turmoil's, which the runner partitions, holds and delays. A crashed host loses
//! its tasks and sockets; what it committed to storage survives (see `runner`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proctor::clock::Clock;
use proctor::network::{Conn, Listener, Network};

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

    async fn sleep_until_ms(&self, deadline_ms: u64) {
        // As `SystemClock`: converted once, then a monotonic wait.
        let remaining_ms = deadline_ms.saturating_sub(self.now_ms());
        if remaining_ms > 0 {
            tokio::time::sleep(Duration::from_millis(remaining_ms)).await;
        }
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
