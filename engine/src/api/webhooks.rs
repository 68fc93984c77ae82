//! Inbound webhooks: another system's HTTP POST, signed with a secret the two share, becomes
//! a signal for a waiting execution or a new execution of a registered definition, with the
//! request's JSON body as the payload (or input).
//!
//! The webhooks file (`proctor serve --webhooks FILE`) names each hook, its secret (from an
//! environment variable, or inline), the tenant it acts for and what it does:
//!
//! ```yaml
//! webhooks:
//!   - { name: payment-received, secret_env: PAYMENT_HOOK_SECRET, tenant: acme, signal: payment }
//!   - { name: new-order, secret_env: ORDER_HOOK_SECRET, start: order-process }
//! ```
//!
//! Routes: `POST /api/webhooks/{name}` for a `start` hook, `POST /api/webhooks/{name}/{id}`
//! for a `signal` hook (execution `id`). A request is authenticated by its signature, not by a
//! bearer token: `X-Proctor-Signature: sha256=<hex HMAC-SHA256 of the raw body>`, compared in
//! constant time. `X-Proctor-Delivery` (the sender's id for the delivery) is the replay key:
//! the signal goes out under the id `webhook:<name>:<delivery>`, which the core applies once,
//! and the start under that idempotency key, which names one execution per tenant. A sender
//! that did not get an answer therefore sends the same delivery again, and changes nothing
//! the second time.
//!
//! Secrets never leave this module: [`Secret`]'s `Debug` is redacted and no message quotes
//! one. The delivery id is not covered by the signature (as with GitHub's), so a request
//! captured in transit could be replayed under another delivery id: put the server behind TLS.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path as FilePath;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::body::{content_type, Path, RawBody};
use super::error::ApiError;
use super::views::WebhookReceipt;
use super::AppState;
use crate::core::{Execution, DEFAULT_TENANT, MAX_SIGNALS_PER_EXECUTION};
use crate::driver::Error;
use crate::store::SignalRequest;
use crate::tenant::Tenant;

/// The header carrying the body's signature: `sha256=<64 hex digits>`.
pub const SIGNATURE_HEADER: &str = "x-proctor-signature";
/// The header carrying the sender's id for the delivery (the replay key).
pub const DELIVERY_HEADER: &str = "x-proctor-delivery";
/// Shortest secret accepted: a short secret is a guessable one.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted (HMAC hashes a longer key down anyway; this bounds the file).
pub const MAX_SECRET_BYTES: usize = 1_024;
/// Most webhooks one file may hold.
pub const MAX_WEBHOOKS: usize = 1_000;
/// Longest webhook name (a URL segment, and part of every delivery's signal id or key).
pub const MAX_WEBHOOK_NAME_BYTES: usize = 64;
/// Longest delivery id: with the prefix and the name it stays within the engine's 255-byte
/// idempotency keys.
pub const MAX_DELIVERY_BYTES: usize = 128;
/// Longest definition or signal name a hook may target.
pub const MAX_TARGET_BYTES: usize = 128;
/// Locks that serialize deliveries of one signal id (see [`Webhooks::lock`]).
const DELIVERY_LOCKS: usize = 64;

/// A webhook's shared secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// What a delivery does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sends this signal to the execution named in the URL.
    Signal(String),
    /// Starts a new execution of this registered definition (its current version).
    Start(String),
}

/// One configured webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub name: String,
    /// The tenant every delivery acts for.
    pub tenant: String,
    pub action: Action,
    /// Whether the secret was written in the file (`secret:`) rather than taken from the
    /// environment (`secret_env:`): `serve` warns about it.
    pub inline_secret: bool,
    secret: Secret,
}

impl Webhook {
    /// A hook as given, unchecked (for tests and the simulator, which build their own):
    /// [`Webhooks::parse`] is what checks a file's entries.
    pub fn new(name: &str, tenant: &str, action: Action, secret: Secret) -> Webhook {
        Webhook {
            name: name.to_string(),
            tenant: tenant.to_string(),
            action,
            inline_secret: false,
            secret,
        }
    }

    /// Whether `header` (the `X-Proctor-Signature` value) signs `body` with this hook's
    /// secret. The comparison takes the same time however much of the signature matches.
    fn verify(&self, body: &[u8], header: &str) -> bool {
        let Some(hex) = header.trim().strip_prefix("sha256=") else {
            return false;
        };
        let Some(presented) = decode_hex(hex) else {
            return false;
        };
        let mut mac = mac(&self.secret.0);
        mac.update(body);
        mac.verify_slice(&presented).is_ok()
    }
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length")
}

/// The `X-Proctor-Signature` value for `body` under `secret`: `sha256=<hex>`. What a sender
/// (the tests, the simulator's client) computes; `openssl dgst -sha256 -hmac SECRET` agrees.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Hex digits (either case) to bytes; `None` unless exactly 32 bytes' worth.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    const SHA256_BYTES: usize = 32;
    let digits = hex.as_bytes();
    if digits.len() != 2 * SHA256_BYTES {
        return None;
    }
    let value = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
    digits
        .chunks(2)
        .map(|pair| Some(value(pair[0])? << 4 | value(pair[1])?))
        .collect()
}

/// The configured webhooks, by name.
#[derive(Debug)]
pub struct Webhooks {
    hooks: BTreeMap<String, Webhook>,
    /// Striped locks: a delivery holds the one its signal id hashes to while it checks,
    /// signals and checks again, so that of two copies of one delivery arriving together
    /// exactly one answers `applied: true`.
    locks: Vec<tokio::sync::Mutex<()>>,
}

/// A webhooks file that cannot be used: every problem found, each naming its entry.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| format!("{}: {p}", .file)).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<String>,
}

/// One entry of the file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    start: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    webhooks: Vec<serde_norway::Value>,
}

impl Default for Webhooks {
    /// No webhooks: every delivery is `404`.
    fn default() -> Webhooks {
        Webhooks::new([])
    }
}

impl Webhooks {
    /// The given hooks (names must be unique: a later one replaces an earlier one).
    pub fn new(hooks: impl IntoIterator<Item = Webhook>) -> Webhooks {
        Webhooks {
            hooks: hooks.into_iter().map(|h| (h.name.clone(), h)).collect(),
            locks: (0..DELIVERY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Reads a webhooks file, taking `secret_env` secrets from this process's environment.
    pub fn load(path: &FilePath) -> Result<Webhooks, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            file: path.display().to_string(),
            problems,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
        Webhooks::parse(&text, &|var| std::env::var(var).ok()).map_err(fail)
    }

    /// Parses a webhooks file, looking `secret_env` variables up with `env`; returns every
    /// problem found, each naming its entry (`webhooks[i] (name): problem`).
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Webhooks, Vec<String>> {
        let file: File = serde_norway::from_str(text).map_err(|e| vec![e.to_string()])?;
        if file.webhooks.len() > MAX_WEBHOOKS {
            return Err(vec![format!("more than {MAX_WEBHOOKS} webhooks")]);
        }
        let mut problems = Vec::new();
        let mut hooks = BTreeMap::new();
        for (i, value) in file.webhooks.into_iter().enumerate() {
            let named = value
                .get("name")
                .and_then(serde_norway::Value::as_str)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let at = format!("webhooks[{i}]{named}");
            let entry: Entry = match serde_norway::from_value(value) {
                Ok(entry) => entry,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            match Webhooks::check(&entry, env) {
                Ok(hook) => {
                    if hooks.contains_key(&hook.name) {
                        problems.push(format!("{at}: the name {:?} appears twice", hook.name));
                    } else {
                        hooks.insert(hook.name.clone(), hook);
                    }
                }
                Err(found) => problems.extend(found.into_iter().map(|p| format!("{at}: {p}"))),
            }
        }
        if problems.is_empty() {
            Ok(Webhooks::new(hooks.into_values()))
        } else {
            Err(problems)
        }
    }

    /// One entry, checked: every problem with it, none of which quotes a secret.
    fn check(entry: &Entry, env: &dyn Fn(&str) -> Option<String>) -> Result<Webhook, Vec<String>> {
        let mut problems = Vec::new();
        if !crate::name::is_plain(&entry.name, MAX_WEBHOOK_NAME_BYTES) {
            problems.push(format!(
                "name {:?} must be 1 to {MAX_WEBHOOK_NAME_BYTES} letters, digits, '_' or '-' \
                 (it is a URL segment)",
                entry.name
            ));
        }
        let secret = match (&entry.secret_env, &entry.secret) {
            (Some(_), Some(_)) => {
                problems.push("give `secret_env` or `secret`, not both".to_string());
                None
            }
            (None, None) => {
                problems.push(
                    "no secret: give `secret_env` (an environment variable holding it) or \
                     `secret`"
                        .to_string(),
                );
                None
            }
            (Some(var), None) => match env(var) {
                Some(value) => Some((value, format!("the secret in ${var}"))),
                None => {
                    problems.push(format!("environment variable {var:?} is not set"));
                    None
                }
            },
            (None, Some(value)) => Some((value.clone(), "secret".to_string())),
        };
        if let Some((value, what)) = &secret {
            if value.len() < MIN_SECRET_BYTES || value.len() > MAX_SECRET_BYTES {
                problems.push(format!(
                    "{what} must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
                ));
            }
        }
        let tenant = entry.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        if !crate::name::is_plain(tenant, crate::tenant::MAX_TENANT_BYTES) {
            problems.push(format!("tenant {tenant:?} is not a plain name"));
        }
        let action = match (&entry.signal, &entry.start) {
            (Some(signal), None) => {
                let starts_well = signal
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
                if !starts_well || !crate::name::is_plain(signal, MAX_TARGET_BYTES) {
                    problems.push(format!(
                        "signal {signal:?} is not a signal name (a letter or '_', then letters, \
                         digits, '_' or '-')"
                    ));
                }
                Some(Action::Signal(signal.clone()))
            }
            (None, Some(definition)) => {
                let fine = !definition.trim().is_empty()
                    && definition.len() <= MAX_TARGET_BYTES
                    && !definition.chars().any(char::is_control);
                if !fine {
                    problems.push(format!(
                        "start {definition:?} is not a definition name (1 to {MAX_TARGET_BYTES} \
                         bytes, no control characters)"
                    ));
                }
                Some(Action::Start(definition.clone()))
            }
            (Some(_), Some(_)) => {
                problems.push("give `signal` or `start`, not both".to_string());
                None
            }
            (None, None) => {
                problems.push(
                    "nothing to do: give `signal` (a signal for the execution in the URL) or \
                     `start` (a definition to start)"
                        .to_string(),
                );
                None
            }
        };
        match (secret, action) {
            (Some((value, _)), Some(action)) if problems.is_empty() => Ok(Webhook {
                name: entry.name.clone(),
                tenant: tenant.to_string(),
                action,
                inline_secret: entry.secret.is_some(),
                secret: Secret::new(value),
            }),
            _ => Err(problems),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Webhook> {
        self.hooks.get(name)
    }

    /// Every hook, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Webhook> {
        self.hooks.values()
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// The lock for deliveries under `signal_id`. A fixed-key hash (the standard library's
    /// SipHash with zero keys), so the stripe does not depend on the process.
    async fn lock(&self, signal_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::hash::DefaultHasher::new();
        signal_id.hash(&mut hasher);
        let stripe = (hasher.finish() % self.locks.len() as u64) as usize;
        self.locks[stripe].lock().await
    }
}

/// The request, admitted: the hook, the delivery id and the body as JSON.
struct Delivery<'a> {
    hook: &'a Webhook,
    id: String,
    body: Value,
}

impl Delivery<'_> {
    /// `webhook:<name>:<delivery>`: the signal id or idempotency key of this delivery. The
    /// name is plain (no ':'), so two different (name, delivery) pairs never share it.
    fn key(&self) -> String {
        format!("webhook:{}:{}", self.hook.name, self.id)
    }

    /// The hook's tenant, acting as `webhook:<name>` in the audit history.
    fn tenant(&self, state: &AppState) -> Result<Tenant, ApiError> {
        let tenant = state.engine.tenant(&self.hook.tenant)?;
        Ok(tenant.acting_as(&format!("webhook:{}", self.hook.name)))
    }

    fn receipt(&self, execution_id: &str, applied: bool) -> axum::Json<WebhookReceipt> {
        axum::Json(WebhookReceipt {
            webhook: self.hook.name.clone(),
            delivery: self.id.clone(),
            execution_id: execution_id.to_string(),
            applied,
        })
    }
}

/// Which route the request came in on.
#[derive(Clone, Copy)]
enum Route {
    Start,
    Signal,
}

/// Checks, in order: the hook exists (404), the request's signature (401), the route fits the
/// hook (404), the delivery id (400), the body is JSON (415, 400). The signature comes before
/// anything else about the request, so an unsigned caller learns nothing but that the hook
/// exists.
fn admit<'a>(
    state: &'a AppState,
    name: &str,
    route: Route,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Delivery<'a>, ApiError> {
    let hook = state
        .webhooks
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no webhook {name:?}")))?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !hook.verify(body, signature) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "missing or invalid X-Proctor-Signature: send sha256=<hex HMAC-SHA256 of the \
             exact body, keyed with the webhook's secret>",
        ));
    }
    match (route, &hook.action) {
        (Route::Start, Action::Start(_)) | (Route::Signal, Action::Signal(_)) => {}
        (Route::Start, Action::Signal(signal)) => {
            return Err(ApiError::not_found(format!(
                "webhook {name:?} sends signal {signal:?} to an execution: \
                 POST /api/webhooks/{name}/{{execution_id}}"
            )));
        }
        (Route::Signal, Action::Start(definition)) => {
            return Err(ApiError::not_found(format!(
                "webhook {name:?} starts {definition:?} and takes no execution id: \
                 POST /api/webhooks/{name}"
            )));
        }
    }
    let delivery = headers
        .get(DELIVERY_HEADER)
        .ok_or_else(|| {
            ApiError::bad_request(
                "X-Proctor-Delivery is required: the sender's id for this delivery, the same \
                 when it is sent again",
            )
        })?
        .to_str()
        .ok()
        .filter(|d| {
            !d.is_empty()
                && d.len() <= MAX_DELIVERY_BYTES
                && d.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "X-Proctor-Delivery must be 1 to {MAX_DELIVERY_BYTES} printable ASCII \
                 characters without spaces"
            ))
        })?;
    let media = content_type(headers);
    if media != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a webhook's body is JSON (Content-Type: application/json), not {media:?}"),
        ));
    }
    let body = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(Delivery {
        hook,
        id: delivery.to_string(),
        body,
    })
}

/// `POST /api/webhooks/{name}`: a `start` hook's delivery. A new execution of the hook's
/// definition with the body as its input: `201` and `applied: true`; the same delivery again
/// (with the same body): `200`, `applied: false`, the same execution (started if it never
/// was); the same delivery with another body: `409 idempotency_key_reused`.
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let delivery = admit(&state, &name, Route::Start, &headers, &body)?;
    let Action::Start(definition) = &delivery.hook.action else {
        unreachable!("admit checked the route against the hook")
    };
    let tenant = delivery.tenant(&state)?;
    let (id, created) = tenant
        .create_idempotent(&delivery.key(), definition, None, delivery.body.clone())
        .await?;
    match tenant.start(&id).await {
        Ok(_) | Err(Error::AlreadyLive(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, delivery.receipt(&id, created)))
}

/// `POST /api/webhooks/{name}/{execution_id}`: a `signal` hook's delivery, the body as the
/// signal's payload. `200` with `applied: true` when this request recorded the signal,
/// `applied: false` when the delivery had already been recorded (a replay); `409` when the
/// execution has ended (or holds [`MAX_SIGNALS_PER_EXECUTION`] signals) without it, so it
/// never will be; `404` for an execution that is not the hook's tenant's.
pub async fn signal(
    State(state): State<AppState>,
    Path((name, execution_id)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let delivery = admit(&state, &name, Route::Signal, &headers, &body)?;
    let Action::Signal(signal) = &delivery.hook.action else {
        unreachable!("admit checked the route against the hook")
    };
    let tenant = delivery.tenant(&state)?;
    let signal_id = delivery.key();
    let _serialized = state.webhooks.lock(&signal_id).await;
    let before = load(&tenant, &execution_id).await?;
    if recorded(&before, &signal_id) {
        return Ok(delivery.receipt(&execution_id, false));
    }
    refuse_if_closed(&before)?;
    tenant
        .signal(
            &execution_id,
            SignalRequest {
                id: signal_id.clone(),
                name: signal.clone(),
                payload: delivery.body.clone(),
            },
        )
        .await?;
    // Storage is the truth: the signal counts as delivered once the stored execution has it.
    let after = load(&tenant, &execution_id).await?;
    if recorded(&after, &signal_id) {
        return Ok(delivery.receipt(&execution_id, true));
    }
    refuse_if_closed(&after)?;
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the signal was not recorded (the execution was busy or being recovered): send the \
         same delivery again",
    ))
}

async fn load(tenant: &Tenant, id: &str) -> Result<Execution, ApiError> {
    Ok(tenant
        .load(id)
        .await?
        .ok_or_else(|| Error::UnknownExecution(id.to_string()))?)
}

fn recorded(execution: &Execution, signal_id: &str) -> bool {
    execution.signals.iter().any(|s| s.id == signal_id)
}

/// A `409` when `execution` can no longer take a signal: the core ignores signals once it
/// has ended or holds its limit of them.
fn refuse_if_closed(execution: &Execution) -> Result<(), ApiError> {
    let conflict = |why: String| Err(ApiError::new(StatusCode::CONFLICT, "conflict", why));
    if execution.status.is_terminal() {
        return conflict(format!(
            "execution {} has ended ({}): the signal was not delivered",
            execution.id, execution.status
        ));
    }
    if execution.signals.len() >= MAX_SIGNALS_PER_EXECUTION {
        return conflict(format!(
            "execution {} already holds {MAX_SIGNALS_PER_EXECUTION} signals, the most it may",
            execution.id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef";

    fn env(var: &str) -> Option<String> {
        match var {
            "HOOK_SECRET" => Some("s3cr3t-s3cr3t-s3cr3t".to_string()),
            "SHORT_SECRET" => Some("tiny".to_string()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Webhooks, Vec<String>> {
        Webhooks::parse(text, &env)
    }

    /// The problems `text` has, as one string (each expected fragment must be in it).
    fn problems(text: &str) -> String {
        match parse(text) {
            Ok(hooks) => panic!("parsed, with hooks {:?}", hooks.iter().collect::<Vec<_>>()),
            Err(problems) => problems.join("\n"),
        }
    }

    #[test]
    fn a_webhooks_file_parses_with_defaults() {
        let hooks = parse(
            "webhooks:\n\
             - { name: payment-received, secret_env: HOOK_SECRET, tenant: acme, signal: payment }\n\
             - { name: new-order, secret: '0123456789abcdef', start: order-process }\n",
        )
        .unwrap();
        let payment = hooks.get("payment-received").unwrap();
        assert_eq!(payment.tenant, "acme");
        assert_eq!(payment.action, Action::Signal("payment".into()));
        assert!(!payment.inline_secret);
        let order = hooks.get("new-order").unwrap();
        assert_eq!(order.tenant, DEFAULT_TENANT);
        assert_eq!(order.action, Action::Start("order-process".into()));
        assert!(order.inline_secret);
        assert!(hooks.get("nope").is_none());
        assert!(parse("webhooks: []").unwrap().is_empty());
    }

    #[test]
    fn each_bad_entry_is_named_with_its_problem() {
        let cases: &[(&str, &[&str])] = &[
            (
                "webhooks: [{name: a, secret_env: NOT_SET, signal: s}]",
                &["webhooks[0] (a): environment variable \"NOT_SET\" is not set"],
            ),
            (
                "webhooks: [{name: a, secret_env: SHORT_SECRET, signal: s}]",
                &["webhooks[0] (a): the secret in $SHORT_SECRET must be 16 to 1024 bytes"],
            ),
            (
                "webhooks: [{name: a, secret: short, signal: s}]",
                &["webhooks[0] (a): secret must be 16 to 1024 bytes"],
            ),
            (
                "webhooks: [{name: a, secret_env: HOOK_SECRET, signal: s, colour: red}]",
                &["webhooks[0] (a): unknown field `colour`"],
            ),
            (
                "webhooks: [{name: a, secret_env: HOOK_SECRET, signal: s}, \
                 {name: b, secret_env: HOOK_SECRET, signal: s}, \
                 {name: a, secret_env: HOOK_SECRET, start: p}]",
                &["webhooks[2] (a): the name \"a\" appears twice"],
            ),
            (
                "webhooks: [{name: a, secret_env: HOOK_SECRET, signal: s, start: p}]",
                &["webhooks[0] (a): give `signal` or `start`, not both"],
            ),
            (
                "webhooks: [{name: a, secret_env: HOOK_SECRET}]",
                &["webhooks[0] (a): nothing to do"],
            ),
            (
                "webhooks: [{name: a, signal: s}]",
                &["webhooks[0] (a): no secret"],
            ),
            (
                "webhooks: [{name: a, secret: '0123456789abcdef', secret_env: HOOK_SECRET, signal: s}]",
                &["webhooks[0] (a): give `secret_env` or `secret`, not both"],
            ),
            (
                "webhooks: [{name: 'a/b', secret_env: HOOK_SECRET, signal: s}]",
                &["webhooks[0] (a/b): name \"a/b\" must be 1 to 64"],
            ),
            (
                "webhooks: [{name: a, secret_env: HOOK_SECRET, tenant: 'x y', signal: s}]",
                &["tenant \"x y\" is not a plain name"],
            ),
            (
                "webhooks: [{name: a, secret_env: HOOK_SECRET, signal: '9 lives'}]",
                &["signal \"9 lives\" is not a signal name"],
            ),
            (
                "webhooks: [{name: a, secret_env: HOOK_SECRET, start: ''}]",
                &["start \"\" is not a definition name"],
            ),
            // Every problem of every entry, not just the first.
            (
                "webhooks: [{name: a, secret_env: NOT_SET}, {name: b, secret: x, signal: s}]",
                &[
                    "webhooks[0] (a): environment variable",
                    "webhooks[0] (a): nothing to do",
                    "webhooks[1] (b): secret must be",
                ],
            ),
            ("hooks: []", &["unknown field `hooks`"]),
        ];
        for (text, expected) in cases {
            let found = problems(text);
            for fragment in *expected {
                assert!(
                    found.contains(fragment),
                    "{text}\n  lacks {fragment:?}\n  in {found}"
                );
            }
        }
        let many = format!(
            "webhooks:\n{}",
            "- {name: a, secret_env: HOOK_SECRET, signal: s}\n".repeat(MAX_WEBHOOKS + 1)
        );
        assert!(problems(&many).contains("more than 1000 webhooks"));
    }

    #[test]
    fn no_message_or_debug_output_shows_a_secret() {
        let inline = "webhooks: [{name: a, secret: 'abc-secret-value', start: ''}]";
        assert!(!problems(inline).contains("abc-secret-value"));
        let from_env = "webhooks: [{name: a, secret_env: SHORT_SECRET, signal: s}]";
        assert!(!problems(from_env).contains("tiny"));
        let hooks = parse("webhooks: [{name: a, secret_env: HOOK_SECRET, signal: s}]").unwrap();
        let debug = format!("{hooks:?}");
        assert!(
            !debug.contains("s3cr3t") && debug.contains("redacted"),
            "{debug}"
        );
    }

    #[test]
    fn a_config_error_names_the_file_on_every_line() {
        let error = ConfigError {
            file: "hooks.yaml".into(),
            problems: vec!["webhooks[0] (a): x".into(), "webhooks[1] (b): y".into()],
        };
        assert_eq!(
            error.to_string(),
            "hooks.yaml: webhooks[0] (a): x\nhooks.yaml: webhooks[1] (b): y"
        );
    }

    fn hook() -> Webhook {
        Webhook::new(
            "h",
            DEFAULT_TENANT,
            Action::Signal("s".into()),
            Secret::new(SECRET),
        )
    }

    #[test]
    fn a_signature_verifies_only_its_own_body_and_secret() {
        let body = br#"{"amount": 10}"#;
        let good = sign(SECRET.as_bytes(), body);
        // RFC 4231 test case 2 pins the HMAC itself.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hook().verify(body, &good));
        assert!(hook().verify(
            body,
            &good.to_ascii_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(hook().verify(body, &format!(" {good} ")));
        let other_secret = sign(b"fedcba9876543210", body);
        let other_body = sign(SECRET.as_bytes(), br#"{"amount": 11}"#);
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            other_secret.as_str(),
            other_body.as_str(),
            flipped.as_str(),
            &good[7..],              // no `sha256=`
            &good[..good.len() - 2], // a byte short
            &format!("{good}00"),    // a byte long
            &good.replace("sha256=", "sha1="),
            "sha256=zz",
            "",
        ] {
            assert!(!hook().verify(body, bad), "{bad:?} verified");
        }
    }

    #[test]
    fn hex_decoding_takes_exactly_32_bytes_of_digits() {
        assert_eq!(decode_hex(&"ab".repeat(32)), Some(vec![0xab; 32]));
        assert_eq!(decode_hex(&"AB".repeat(32)), Some(vec![0xab; 32]));
        assert_eq!(decode_hex(&"ab".repeat(31)), None);
        assert_eq!(decode_hex(&format!("{}g0", "ab".repeat(31))), None);
        // Multi-byte characters are not digits (and never split).
        assert_eq!(decode_hex(&format!("{}é", "ab".repeat(31))), None);
    }
}
