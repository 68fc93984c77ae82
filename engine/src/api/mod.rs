//! The HTTP API (`proctor serve`): definitions, executions, their events (history and a live
//! Server-Sent Events stream), recovery status and health, as JSON over axum; and inbound
//! webhooks ([`webhooks`]), which turn a signed POST into a signal or a start.
//!
//! The server runs over the [`Network`] port, so the simulator's client host drives this very
//! router over simulated TCP. Every route but the webhooks' (which act for their configured
//! tenant, authenticated by signature) acts for the caller's tenant ([`auth::Caller`]);
//! every failure is `{"error": {"type", "message"}}` ([`error::ApiError`]). The routes are
//! listed once, in [`ROUTES`], which the OpenAPI document (`engine/openapi.yaml`) is checked
//! against.

pub mod auth;
mod body;
pub mod client;
mod definitions;
pub mod error;
mod events;
mod executions;
pub mod views;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post, put};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{broadcast, watch};

use crate::driver::Engine;
use crate::event::EventRecord;
use crate::network::{accept_next, Listener};
use auth::Auth;
use error::ApiError;
use webhooks::Webhooks;

/// Largest request body (a definition, an input, a signal): 1 MiB. A larger one is 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Events buffered for live streams; a stream that falls further behind reads the store.
pub const EVENT_BUFFER: usize = 4_096;
/// Live event streams open at once; one more is refused (503).
pub const MAX_STREAMS: usize = 1_024;
/// Connections served at once; past this, accepting waits.
pub const MAX_CONNECTIONS: usize = 4_096;
/// Events one history page returns at most.
pub const MAX_EVENTS_PAGE: usize = 1_000;
/// How often an idle event stream sends a keep-alive comment.
pub const KEEP_ALIVE_MS: u64 = 15_000;

/// The OpenAPI document, served at `/api/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// Every route: method and path (axum syntax). The OpenAPI document must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/health"),
    ("GET", "/api/openapi.yaml"),
    ("GET", "/api/definitions"),
    ("POST", "/api/definitions"),
    ("GET", "/api/definitions/{name}"),
    ("PUT", "/api/definitions/{name}/current"),
    ("GET", "/api/definitions/{name}/versions/{version}"),
    ("GET", "/api/executions"),
    ("POST", "/api/executions"),
    ("GET", "/api/executions/recovery/status"),
    ("GET", "/api/executions/{id}"),
    ("POST", "/api/executions/{id}/pause"),
    ("POST", "/api/executions/{id}/resume"),
    ("POST", "/api/executions/{id}/cancel"),
    ("POST", "/api/executions/{id}/signal"),
    ("POST", "/api/executions/{id}/reset"),
    ("GET", "/api/executions/{id}/events"),
    ("GET", "/api/executions/{id}/events/stream"),
    ("POST", "/api/webhooks/{name}"),
    ("POST", "/api/webhooks/{name}/{execution_id}"),
];

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    auth: Arc<Auth>,
    /// Inbound webhooks (authenticated by their signatures, not by `auth`).
    webhooks: Arc<Webhooks>,
    /// Every committed event, for live streams.
    events: broadcast::Sender<EventRecord>,
    /// Becomes true when the server shuts down: live streams end.
    shutdown: watch::Receiver<bool>,
    streams: Arc<tokio::sync::Semaphore>,
}

/// The API over one engine.
pub struct Api {
    state: AppState,
    shutdown: watch::Sender<bool>,
}

impl Api {
    /// Subscribes to the engine's events (once per `Api`).
    pub fn new(engine: Engine, auth: Auth) -> Api {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let sender = events.clone();
        engine.bus().subscribe(move |e| {
            // No receiver (no stream open) is fine: the store has every event.
            let _ = sender.send(e.clone());
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        Api {
            state: AppState {
                engine,
                auth: Arc::new(auth),
                webhooks: Arc::new(Webhooks::default()),
                events,
                shutdown: shutdown_rx,
                streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            },
            shutdown,
        }
    }

    /// The same API, also answering `webhooks`' deliveries (`POST /api/webhooks/...`).
    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Api {
        self.state.webhooks = Arc::new(webhooks);
        self
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until [`Api::shut_down`] (or `stop` resolves): then stops
    /// accepting, ends live streams, and lets requests in progress finish (at most
    /// `grace_ms`).
    pub async fn serve(
        &self,
        mut listener: Box<dyn Listener>,
        grace_ms: u64,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let app = self.router();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut stop = std::pin::pin!(stop);
        let mut shutdown = self.shutdown.subscribe();
        loop {
            // Stopping comes first: a stream of new connections must not keep it waiting.
            let permit = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = shutdown.wait_for(|s| *s) => break,
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            };
            let accepted = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = shutdown.wait_for(|s| *s) => break,
                // A reset before accept is that connection's problem; too many open files is
                // waited out (and a stop still comes first meanwhile).
                accepted = accept_next(&mut *listener) => accepted,
            };
            let Some((conn, _peer)) = accepted else {
                break;
            };
            let service = TowerToHyperService::new(app.clone());
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("connection ended: {e}");
                }
                drop(permit);
            });
        }
        self.shut_down();
        drop(listener);
        let sleep = tokio::time::sleep(Duration::from_millis(grace_ms));
        tokio::select! {
            biased;
            _ = graceful.shutdown() => {}
            _ = sleep => tracing::warn!("requests still in progress after {grace_ms}ms; leaving them"),
        }
    }

    /// Stops the server: [`Api::serve`] stops accepting and live streams end.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/openapi.yaml", get(openapi))
        .route(
            "/api/definitions",
            get(definitions::list).post(definitions::register),
        )
        .route("/api/definitions/{name}", get(definitions::current))
        .route(
            "/api/definitions/{name}/current",
            put(definitions::set_current),
        )
        .route(
            "/api/definitions/{name}/versions/{version}",
            get(definitions::version),
        )
        .route(
            "/api/executions",
            get(executions::list).post(executions::start),
        )
        .route("/api/executions/recovery/status", get(recovery_status))
        .route("/api/executions/{id}", get(executions::get))
        .route("/api/executions/{id}/pause", post(executions::pause))
        .route("/api/executions/{id}/resume", post(executions::resume))
        .route("/api/executions/{id}/cancel", post(executions::cancel))
        .route("/api/executions/{id}/signal", post(executions::signal))
        .route("/api/executions/{id}/reset", post(executions::reset))
        .route("/api/executions/{id}/events", get(events::history))
        .route("/api/executions/{id}/events/stream", get(events::stream))
        .route("/api/webhooks/{name}", post(webhooks::start))
        .route(
            "/api/webhooks/{name}/{execution_id}",
            post(webhooks::signal),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn openapi() -> impl axum::response::IntoResponse {
    ([("content-type", "application/yaml")], OPENAPI_YAML)
}

/// The last recovery report (of this server's start), for any authenticated caller.
async fn recovery_status(
    _caller: auth::Caller,
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    let report = state.engine.last_recovery_report();
    axum::Json(serde_json::json!({ "report": report }))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}
