//! The `client` host: submits the workload through the engine's HTTP API over simulated TCP,
//! exactly as a real client would, and waits for every execution it started to finish.
//!
//! It registers the process (in each tenant, with that tenant's bearer token), applies the
//! workload's definition changes, starts execution n with idempotency key
//! `<scenario>-<n:04>` and retries that start, under the same key, until it is answered: a
//! start whose reply a crash, a partition or an ambiguous commit lost is asked again and must
//! come back as the same execution. It sends the workload's signals (each under a fixed
//! signal id, retried until answered; with `workload.webhook`, as signed webhook deliveries
//! whose delivery id is that signal id), samples progress (`workload.monitor`) and polls the
//! listing until everything it started is terminal. A 4xx answer is a bug in the scenario or
//! the engine, and fails the run.
//!
//! The end of the run is judged by the harness, not the client: the client's view must show
//! every execution terminal, and so must the durable store (scheduled runs and children
//! included), after the fault window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proctor::api::client::{ApiClient, ClientError};
use proctor::api::webhooks::{Action, Secret, Webhook, Webhooks};
use proctor::core::{ExecutionStatus, DEFAULT_TENANT};

use crate::ports::SimNetwork;
use crate::runner::{sim_elapsed_ms, sleep_until_sim_ms, stuck, Shared, StartAck};
use crate::scenario::{
    Scenario, WorkloadCancel, WorkloadPause, WorkloadSignal, API_PORT, ENGINE_HOST,
};

/// How often the client polls the API for its executions.
const POLL_MS: u64 = 25;
/// How long the client waits before asking again after no answer or a 5xx.
const RETRY_MS: u64 = 50;
/// One request's bound: past it, the client treats the request as unanswered.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// A live stream silent this long is given up and opened again from the last event seen (a
/// partitioned link drops bytes without a word).
const STREAM_SILENCE_MS: u64 = 1_000;

/// The bearer token the scenario's tenant `tenant` is configured with.
pub(crate) fn token_for(tenant: &str) -> String {
    format!("sim-token-of-{tenant}")
}

/// The webhook that carries signal `signal` to `tenant`'s executions (`workload.webhook`):
/// one per signal name and tenant, since a webhook acts for one tenant.
fn webhook_name(signal: &str, tenant: Option<&String>) -> String {
    match tenant {
        Some(tenant) => format!("{signal}-{tenant}"),
        None => signal.to_string(),
    }
}

/// The secret webhook `name` is configured with.
fn webhook_secret(name: &str) -> String {
    format!("sim-webhook-secret-of-{name}")
}

/// The webhooks the engine host serves: with `workload.webhook`, one per signal name and
/// tenant; none otherwise.
pub(crate) fn webhooks(scenario: &Scenario) -> Webhooks {
    if !scenario.workload.webhook {
        return Webhooks::default();
    }
    let signals: BTreeSet<&String> = scenario.workload.signals.iter().map(|s| &s.name).collect();
    let tenants: Vec<Option<&String>> = if scenario.workload.tenants.is_empty() {
        vec![None]
    } else {
        scenario.workload.tenants.iter().map(Some).collect()
    };
    let mut hooks = Vec::new();
    for signal in signals {
        for tenant in &tenants {
            let name = webhook_name(signal, *tenant);
            let secret = Secret::new(webhook_secret(&name));
            let tenant = tenant.map_or(DEFAULT_TENANT, String::as_str);
            hooks.push(Webhook::new(
                &name,
                tenant,
                Action::Signal(signal.clone()),
                secret,
            ));
        }
    }
    Webhooks::new(hooks)
}

/// The tenant that submits execution `n`.
pub(crate) fn tenant_of(scenario: &Scenario, n: usize) -> Option<&String> {
    let tenants = &scenario.workload.tenants;
    (!tenants.is_empty()).then(|| &tenants[n % tenants.len()])
}

/// The workload's idempotency key for submission `n`.
pub(crate) fn key_of(scenario: &Scenario, n: usize) -> String {
    format!("{}-{n:04}", scenario.name)
}

struct Clients {
    open: ApiClient,
    /// By tenant (empty without `workload.tenants`).
    tenants: BTreeMap<String, ApiClient>,
}

impl Clients {
    fn new() -> Clients {
        let addr = format!("{ENGINE_HOST}:{API_PORT}");
        Clients {
            open: ApiClient::new(Arc::new(SimNetwork), &addr, REQUEST_TIMEOUT_MS),
            tenants: BTreeMap::new(),
        }
    }

    /// Every client the workload uses: one per tenant, or the open one.
    fn all(&self) -> Vec<&ApiClient> {
        if self.tenants.is_empty() {
            vec![&self.open]
        } else {
            self.tenants.values().collect()
        }
    }

    fn of(&self, tenant: Option<&String>) -> &ApiClient {
        tenant
            .and_then(|t| self.tenants.get(t))
            .unwrap_or(&self.open)
    }
}

/// Asks until answered: no answer, a 5xx (storage trouble) and a 503 are retried; a 4xx is
/// returned.
async fn until_answered<T, F, Fut>(what: &str, mut request: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    loop {
        match request().await {
            Ok(v) => return Ok(v),
            Err(e) if e.status().is_none_or(|s| s >= 500) => {
                tracing::debug!("{what}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn refused(what: &str, e: ClientError) -> Box<dyn std::error::Error> {
    format!("the API refused {what}: {e}").into()
}

/// The client host's life (it never crashes).
pub(crate) async fn run(shared: Arc<Shared>, scenario: Scenario) -> turmoil::Result {
    let mut clients = Clients::new();
    for tenant in &scenario.workload.tenants {
        clients
            .tenants
            .insert(tenant.clone(), clients.open.with_token(&token_for(tenant)));
    }
    let clients = Arc::new(clients);
    for client in clients.all() {
        let processes =
            std::iter::once(&scenario.process).chain(&scenario.workload.loaded_definitions);
        for process in processes {
            until_answered("registering", || client.register_process(process))
                .await
                .map_err(|e| refused("a definition", e))?;
        }
    }
    if !scenario.workload.signals.is_empty() {
        let (shared, scenario, clients) = (shared.clone(), scenario.clone(), clients.clone());
        tokio::spawn(async move {
            if let Err(e) = send_signals(&shared, &scenario, &clients).await {
                shared.client_error(e.to_string());
            }
        });
    }
    if let Some(pause) = scenario.workload.pause.clone() {
        let (shared, scenario, clients) = (shared.clone(), scenario.clone(), clients.clone());
        tokio::spawn(async move {
            if let Err(e) = send_pauses(&shared, &scenario, &clients, pause).await {
                shared.client_error(e.to_string());
            }
        });
    }
    if let Some(cancel) = scenario.workload.cancel.clone() {
        let (shared, scenario, clients) = (shared.clone(), scenario.clone(), clients.clone());
        tokio::spawn(async move {
            if let Err(e) = send_cancels(&shared, &scenario, &clients, cancel).await {
                shared.client_error(e.to_string());
            }
        });
    }
    if scenario.workload.stream {
        for n in 0..scenario.workload.executions {
            let (shared, scenario, clients) = (shared.clone(), scenario.clone(), clients.clone());
            tokio::spawn(async move {
                let client = clients.of(tenant_of(&scenario, n)).clone();
                if let Err(e) = follow_stream(&shared, &client, n).await {
                    shared.client_error(e.to_string());
                }
            });
        }
    }
    {
        // Submitting runs beside the waiting, so progress is sampled from the first start.
        let (shared, scenario, clients) = (shared.clone(), scenario.clone(), clients.clone());
        tokio::spawn(async move {
            if let Err(e) = submit_all(&shared, &scenario, &clients).await {
                shared.client_error(e.to_string());
            }
        });
    }
    wait_for_the_end(&shared, &scenario, &clients).await
}

/// Starts every execution of the workload, in order, applying definition changes as they
/// come due.
async fn submit_all(
    shared: &Shared,
    scenario: &Scenario,
    clients: &Clients,
) -> Result<(), Box<dyn std::error::Error>> {
    let name = &scenario.process.name;
    let mut changes = scenario.workload.versions.iter().peekable();
    for n in 0..scenario.workload.executions {
        while let Some(change) = changes.next_if(|c| c.after <= n) {
            match (&change.loaded, change.current) {
                (Some(process), _) => {
                    until_answered("registering", || clients.open.register_process(process))
                        .await
                        .map_err(|e| refused("a new version", e))?;
                }
                (None, Some(version)) => {
                    until_answered("rolling back", || {
                        clients.open.set_current_definition(name, version)
                    })
                    .await
                    .map_err(|e| refused("a rollback", e))?;
                }
                (None, None) => unreachable!("checked at load"),
            }
        }
        let tenant = tenant_of(scenario, n);
        let client = clients.of(tenant);
        let key = key_of(scenario, n);
        let input = &scenario.workload.input;
        let sent_ms = crate::runner::sim_elapsed_ms();
        let started = until_answered("starting", || client.start(name, input, Some(&key)))
            .await
            .map_err(|e| refused(&format!("start {key}"), e))?;
        shared.acknowledge(StartAck {
            key,
            id: started.execution.id.clone(),
            created: started.created,
            tenant: tenant.cloned(),
            sent_ms,
            answered_ms: crate::runner::sim_elapsed_ms(),
        });
        if scenario.workload.spacing_ms > 0 {
            tokio::time::sleep(Duration::from_millis(scenario.workload.spacing_ms)).await;
        }
    }
    Ok(())
}

/// Sends the workload's signals: each to every execution once it is due and the execution
/// acknowledged, under the signal id `<key>:<name>:<k>`, asked until answered (the engine
/// applies each id once, so a repeat after a lost reply is harmless).
async fn send_signals(
    shared: &Shared,
    scenario: &Scenario,
    clients: &Clients,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut due: Vec<(usize, &WorkloadSignal)> =
        scenario.workload.signals.iter().enumerate().collect();
    due.sort_by_key(|(k, s)| (s.at_ms, *k));
    for (k, signal) in due {
        sleep_until_sim_ms(signal.at_ms).await;
        for n in 0..scenario.workload.executions {
            let id = acknowledged(shared, n).await;
            let tenant = tenant_of(scenario, n);
            let client = clients.of(tenant);
            let signal_id = format!("{}:{}:{k}", key_of(scenario, n), signal.name);
            if scenario.workload.webhook {
                deliver(&clients.open, &id, signal, tenant, &signal_id).await?;
                continue;
            }
            until_answered("signalling", || {
                client.signal(&id, &signal.name, &signal.payload, &signal_id)
            })
            .await
            .map_err(|e| refused(&format!("signal {signal_id}"), e))?;
        }
    }
    Ok(())
}

/// Sends `signal` to execution `id` through its webhook, under the delivery id `delivery`,
/// asked until answered: a delivery whose answer was lost is sent again as it was, and the
/// engine applies it once. No bearer token: the signature authenticates it. A 409 means the
/// execution ended without it (its wait timed out), as the signal route's `200` would.
async fn deliver(
    open: &ApiClient,
    id: &str,
    signal: &WorkloadSignal,
    tenant: Option<&String>,
    delivery: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    const CONFLICT: u16 = 409;
    let hook = webhook_name(&signal.name, tenant);
    let secret = webhook_secret(&hook);
    let answered = until_answered("delivering", || {
        open.webhook(
            &hook,
            Some(id),
            delivery,
            &signal.payload,
            secret.as_bytes(),
        )
    })
    .await;
    match answered {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(CONFLICT) => Ok(()),
        Err(e) => Err(refused(&format!("webhook delivery {delivery}"), e)),
    }
}

/// The execution submission `n` started, once acknowledged.
async fn acknowledged(shared: &Shared, n: usize) -> String {
    loop {
        if let Some(id) = shared.acknowledged_id(n) {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
    }
}

/// Pauses every `every`th execution once the run is `at_ms` old, then resumes those it paused
/// `resume_after_ms` later. A 409 means the execution had ended (or was not paused): nothing
/// to do.
async fn send_pauses(
    shared: &Shared,
    scenario: &Scenario,
    clients: &Clients,
    pause: WorkloadPause,
) -> Result<(), Box<dyn std::error::Error>> {
    const CONFLICT: u16 = 409;
    sleep_until_sim_ms(pause.at_ms).await;
    let mut paused = Vec::new();
    for n in (0..scenario.workload.executions).step_by(pause.every.max(1)) {
        let id = acknowledged(shared, n).await;
        let client = clients.of(tenant_of(scenario, n));
        match until_answered("pausing", || client.pause(&id)).await {
            Ok(_) => paused.push((n, id)),
            Err(e) if e.status() == Some(CONFLICT) => {}
            Err(e) => return Err(refused(&format!("pause {id}"), e)),
        }
    }
    sleep_until_sim_ms(pause.at_ms + pause.resume_after_ms).await;
    for (n, id) in paused {
        let client = clients.of(tenant_of(scenario, n));
        match until_answered("resuming", || client.resume(&id)).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(CONFLICT) => {}
            Err(e) => return Err(refused(&format!("resume {id}"), e)),
        }
    }
    Ok(())
}

/// Cancels every `every`th execution once the run is `at_ms` old.
async fn send_cancels(
    shared: &Shared,
    scenario: &Scenario,
    clients: &Clients,
    cancel: WorkloadCancel,
) -> Result<(), Box<dyn std::error::Error>> {
    sleep_until_sim_ms(cancel.at_ms).await;
    for n in (0..scenario.workload.executions).step_by(cancel.every.max(1)) {
        let id = acknowledged(shared, n).await;
        let client = clients.of(tenant_of(scenario, n));
        until_answered("cancelling", || client.cancel(&id, Some("workload cancel")))
            .await
            .map_err(|e| refused(&format!("cancel {id}"), e))?;
    }
    Ok(())
}

/// Follows execution `n`'s live event stream to its terminal event, opening it again after
/// every failure (a crash, a partition, a shutdown) from the last event seen, and records
/// every event delivered.
async fn follow_stream(
    shared: &Shared,
    client: &ApiClient,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let id = acknowledged(shared, n).await;
    let mut last = 0;
    loop {
        match client.stream(&id, last).await {
            Ok(mut stream) => loop {
                let silence = Duration::from_millis(STREAM_SILENCE_MS);
                match tokio::time::timeout(silence, stream.next()).await {
                    Ok(Some(Ok(record))) => {
                        shared.record_streamed(&id, &record);
                        last = record.seq;
                        if record.event.is_terminal() {
                            return Ok(());
                        }
                    }
                    // Ended, broken or silent: open it again.
                    _ => break,
                }
            },
            Err(e) if e.status().is_some_and(|s| s < 500) => {
                return Err(refused(&format!("the stream of {id}"), e))
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
    }
}

/// Polls until every started execution is terminal in the client's view and in the store,
/// and the fault window has passed; fails the run past the liveness bound.
async fn wait_for_the_end(
    shared: &Shared,
    scenario: &Scenario,
    clients: &Clients,
) -> turmoil::Result {
    let total = scenario.workload.executions;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    loop {
        if let Some(e) = shared.take_client_error() {
            return Err(e.into());
        }
        let acknowledged = shared.acknowledged_ids();
        if scenario.workload.monitor {
            for (n, id) in acknowledged.iter().enumerate() {
                let client = clients.of(tenant_of(scenario, n));
                if let Ok(view) = client.get(id).await {
                    shared.record_progress(id, view.progress.percent);
                }
            }
        }
        for client in clients.all() {
            // One page holds every execution of a scenario (at most MAX_LIST_PAGE).
            if let Ok(page) = client.list("limit=500").await {
                let listed: BTreeSet<&str> =
                    page.executions.iter().map(|e| e.id.as_str()).collect();
                for e in &page.executions {
                    if e.status.parse().is_ok_and(ExecutionStatus::is_terminal) {
                        finished.insert(e.id.clone());
                    }
                }
                // A retention purge deletes only finished executions.
                if scenario.workload.purge.is_some() {
                    for id in &acknowledged {
                        if !listed.contains(id.as_str()) {
                            finished.insert(id.clone());
                        }
                    }
                }
            }
        }
        let submitted = shared.submitted.load(Ordering::SeqCst);
        let elapsed = sim_elapsed_ms();
        let window_end = shared.window_end_ms.load(Ordering::SeqCst);
        let all_seen = acknowledged.iter().all(|id| finished.contains(id))
            && (!scenario.workload.stream || shared.streams_ended(&acknowledged));
        // Done once all is finished and every scripted fault has had its turn (a fault
        // scheduled after the work ends still runs, so it is never silently skipped).
        if submitted == total && all_seen && elapsed >= window_end && shared.store_is_idle().await {
            return Ok(());
        }
        if elapsed > window_end + scenario.liveness_ms {
            return Err(stuck(shared, submitted, total, elapsed - window_end)
                .await
                .into());
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}
