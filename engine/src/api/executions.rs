//! `/api/executions`: start (idempotently, with `Idempotency-Key`), get, list, and the
//! operator's controls: pause, resume, cancel, signal, reset.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Caller;
use super::body::{Json, OptionalJson, Path, Query};
use super::error::ApiError;
use super::views::{ExecutionPage, ExecutionView, Started};
use super::AppState;
use crate::core::ExecutionStatus;
use crate::driver::{Error, Reset};
use crate::store::{ExecutionQuery, SignalRequest, MAX_LIST_PAGE};
use crate::tenant::Tenant;

/// The header that makes a start idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// A listing's page size when the request names none.
pub const DEFAULT_PAGE: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// A registered definition's name.
    definition: String,
    /// Its version; the current one when absent.
    #[serde(default)]
    version: Option<u32>,
    #[serde(default = "empty_object")]
    input: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Creates and starts an execution. With an `Idempotency-Key`, a repeat of the request
/// (after a timeout, a crash, a lost reply) returns the execution the first one created
/// (200, `created: false`) and is started again if it never was; the same key with another
/// definition or input is 409.
pub async fn start(
    Caller(tenant): Caller,
    headers: HeaderMap,
    Json(request): Json<StartRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key is not ASCII"))
        })
        .transpose()?;
    let StartRequest {
        definition,
        version,
        input,
    } = request;
    let (id, created) = match key {
        Some(key) => {
            tenant
                .create_idempotent(key, &definition, version, input)
                .await?
        }
        None => (tenant.create_new(&definition, version, input).await?, true),
    };
    match tenant.start(&id).await {
        Ok(_) | Err(Error::AlreadyLive(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let execution = load(&tenant, &id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(Started { created, execution })))
}

async fn load(tenant: &Tenant, id: &str) -> Result<ExecutionView, ApiError> {
    let execution = tenant
        .load(id)
        .await?
        .ok_or_else(|| Error::UnknownExecution(id.to_string()))?;
    Ok(ExecutionView::of(&execution))
}

pub async fn get(
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(load(&tenant, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    definition: Option<String>,
    #[serde(default)]
    created_from_ms: Option<u64>,
    #[serde(default)]
    created_to_ms: Option<u64>,
    /// The `next` cursor of the page before.
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// One page of the tenant's executions, newest first.
pub async fn list(
    Caller(tenant): Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(status) = &q.status {
        if status.parse::<ExecutionStatus>().is_err() {
            let all: Vec<&str> = ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "status {status:?} is not one of {}",
                all.join(", ")
            )));
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_LIST_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIST_PAGE}"
        )));
    }
    let after = q.after.as_deref().map(parse_cursor).transpose()?;
    let executions = tenant
        .list(ExecutionQuery {
            tenant: String::new(),
            status: q.status,
            definition: q.definition,
            created_from_ms: q.created_from_ms,
            created_to_ms: q.created_to_ms,
            after,
            limit,
        })
        .await?;
    let next = (executions.len() == limit)
        .then(|| {
            executions
                .last()
                .map(|e| format!("{}:{}", e.created_at_ms, e.id))
        })
        .flatten();
    Ok(axum::Json(ExecutionPage { executions, next }))
}

/// `<created_at_ms>:<id>`, as `next` gives it.
fn parse_cursor(cursor: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("cursor {cursor:?} is not one `next` gave"));
    let (ms, id) = cursor.split_once(':').ok_or_else(bad)?;
    Ok((ms.parse().map_err(|_| bad())?, id.to_string()))
}

pub async fn pause(
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    tenant.pause(&id).await?;
    Ok(axum::Json(load(&tenant, &id).await?))
}

pub async fn resume(
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    tenant.resume(&id).await?;
    Ok(axum::Json(load(&tenant, &id).await?))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    reason: Option<String>,
}

pub async fn cancel(
    Caller(tenant): Caller,
    Path(id): Path<String>,
    OptionalJson(request): OptionalJson<CancelRequest>,
) -> Result<impl IntoResponse, ApiError> {
    tenant.cancel(&id, request.reason).await?;
    Ok(axum::Json(load(&tenant, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    name: String,
    #[serde(default)]
    payload: Value,
    /// The sender's id for this signal: the same id twice is applied once. A fresh one when
    /// absent (then a retried request may deliver twice).
    #[serde(default)]
    id: Option<String>,
}

pub async fn signal(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<SignalBody>,
) -> Result<impl IntoResponse, ApiError> {
    let signal_id = body
        .id
        .unwrap_or_else(|| format!("api-{}", state.engine.fresh_execution_id()));
    tenant
        .signal(
            &id,
            SignalRequest {
                id: signal_id,
                name: body.name,
                payload: body.payload,
            },
        )
        .await?;
    Ok(axum::Json(load(&tenant, &id).await?))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The checkpoint's `seq`; the latest when absent.
    #[serde(default)]
    checkpoint_seq: Option<u64>,
    /// A new input; the original when absent.
    #[serde(default)]
    input: Option<Value>,
    /// New outputs for steps completed at the checkpoint.
    #[serde(default)]
    outputs: BTreeMap<String, Value>,
}

/// Resets a paused or finished execution to a checkpoint: a new execution (201) forked from
/// it, started at once.
pub async fn reset(
    Caller(tenant): Caller,
    Path(id): Path<String>,
    OptionalJson(request): OptionalJson<ResetRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let handle = tenant
        .reset(
            &id,
            Reset {
                checkpoint_seq: request.checkpoint_seq,
                input: request.input,
                outputs: request.outputs,
            },
        )
        .await?;
    let fork = load(&tenant, &handle.id).await?;
    Ok((StatusCode::CREATED, axum::Json(fork)))
}
