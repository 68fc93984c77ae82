//! `/api/definitions`: register (a new version), list, get by name and version, roll back.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::body::{content_type, Json, Path, RawBody};
use super::error::ApiError;
use super::views::Registered;
use super::AppState;
use crate::definition::{self, Format};

/// Registers the body as a new version of its definition: YAML (`application/yaml`,
/// `text/yaml`) or JSON (`application/json`). Unchanged content returns the current version
/// (200) instead of adding one (201).
pub async fn register(
    Caller(tenant): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let format = match content_type(&headers).as_str() {
        "application/json" => Format::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Format::Yaml,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("a definition is application/yaml or application/json, not {other:?}"),
            ))
        }
    };
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
    let process = definition::parse("request body", text, format)
        .map_err(|d| ApiError::from(crate::driver::Error::Invalid(d)))?;
    let name = process.name.clone();
    let before = tenant
        .definitions()
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .map(|d| d.latest);
    let version = tenant.register_definition(process).await?;
    let created = before.is_none_or(|latest| version > latest);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(Registered {
            name,
            version,
            created,
        }),
    ))
}

pub async fn list(Caller(tenant): Caller) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        json!({ "definitions": tenant.definitions().await? }),
    ))
}

async fn one(
    tenant: &crate::tenant::Tenant,
    state: &AppState,
    name: &str,
    version: Option<u32>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let def = state
        .engine
        .registered(tenant.name(), name, version)
        .await?;
    Ok(axum::Json(json!({
        "name": def.name,
        "version": def.version,
        "definition": *def,
    })))
}

/// The current version.
pub async fn current(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    one(&tenant, &state, &name, None).await
}

pub async fn version(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let version: u32 = version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("version {version:?} is not a number")))?;
    one(&tenant, &state, &name, Some(version)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCurrent {
    version: u32,
}

/// Makes a registered version current for new executions (a rollback, or forward again).
pub async fn set_current(
    Caller(tenant): Caller,
    Path(name): Path<String>,
    Json(body): Json<SetCurrent>,
) -> Result<impl IntoResponse, ApiError> {
    tenant.set_current_definition(&name, body.version).await?;
    Ok(axum::Json(json!({ "name": name, "current": body.version })))
}
