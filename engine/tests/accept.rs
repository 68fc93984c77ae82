//! The servers' accept loops (the API and the example agent): a failed accept neither stops
//! a server that can go on nor makes one spin. Before, every failure was retried at once, so a
//! closed listener (or a process out of file descriptors) kept a core busy for good.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proctor::agent::example::{self, Behaviour};
use proctor::agent::AgentRegistry;
use proctor::api::auth::Auth;
use proctor::api::Api;
use proctor::clock::SystemClock;
use proctor::network::{Conn, Listener, Network, ACCEPT_BACKOFF_MS};
use proctor::store::SqliteStore;
use proctor::{Engine, EngineConfig, Ports};

/// EMFILE: the process is out of file descriptors.
const TOO_MANY_OPEN_FILES: i32 = 24;

/// Accepts past which a loop is taken to spin.
const SPINNING: usize = 100;

/// A listener that fails as scripted, then as closed for good; counts its accepts.
struct Scripted {
    failures: VecDeque<io::Error>,
    accepts: Arc<AtomicUsize>,
}

#[async_trait]
impl Listener for Scripted {
    async fn accept(&mut self) -> io::Result<(Box<dyn Conn>, SocketAddr)> {
        if self.accepts.fetch_add(1, Ordering::SeqCst) >= SPINNING {
            // A loop that retries without end: park it, so that the test fails on the count
            // instead of hanging (a spinning task never lets paused time advance).
            std::future::pending::<()>().await;
        }
        Err(self
            .failures
            .pop_front()
            .unwrap_or_else(|| io::ErrorKind::NotConnected.into()))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
    }
}

fn scripted() -> (Scripted, Arc<AtomicUsize>) {
    let accepts = Arc::new(AtomicUsize::new(0));
    let listener = Scripted {
        failures: VecDeque::from([
            io::Error::from_raw_os_error(TOO_MANY_OPEN_FILES),
            io::ErrorKind::ConnectionAborted.into(),
        ]),
        accepts: accepts.clone(),
    };
    (listener, accepts)
}

/// A network whose one listener is `listener`.
struct OneListener(Mutex<Option<Scripted>>);

#[async_trait]
impl Network for OneListener {
    async fn connect(&self, _addr: &str) -> io::Result<Box<dyn Conn>> {
        Err(io::ErrorKind::ConnectionRefused.into())
    }

    async fn bind(&self, _addr: &str) -> io::Result<Box<dyn Listener>> {
        let listener = self.0.lock().unwrap().take().expect("bound once");
        Ok(Box::new(listener))
    }
}

#[tokio::test(start_paused = true)]
async fn the_api_waits_out_a_lack_of_descriptors_and_stops_when_its_listener_closes() {
    let engine = Engine::new(
        Ports {
            clock: Arc::new(SystemClock),
            net: Arc::new(OneListener(Mutex::new(None))),
            store: Arc::new(SqliteStore::open_in_memory().expect("SQLite")),
            rng: proctor::rng::seeded(1),
        },
        &AgentRegistry::new(),
        EngineConfig::default(),
    )
    .expect("engine");
    let api = Api::new(engine, Auth::Open);
    let (listener, accepts) = scripted();
    let started = tokio::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        api.serve(Box::new(listener), 0, std::future::pending()),
    )
    .await
    .expect("serve returns once its listener is closed");
    // EMFILE, then an aborted connection, then closed: three accepts, one back-off.
    assert_eq!(accepts.load(Ordering::SeqCst), 3);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(ACCEPT_BACKOFF_MS)
            && waited < Duration::from_millis(2 * ACCEPT_BACKOFF_MS),
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_example_agent_stops_accepting_once_its_listener_closes() {
    let (listener, accepts) = scripted();
    let net = OneListener(Mutex::new(Some(listener)));
    let _agent = example::start(&net, "worker:1", "worker", Behaviour::default())
        .await
        .expect("agent starts");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(accepts.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        3,
        "no accept after the listener closed"
    );
}
