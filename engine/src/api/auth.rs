//! Bearer tokens: each maps to one tenant. A request without a token the file names gets 401;
//! with one, every read and change is scoped to that token's tenant, so another tenant's
//! execution answers 404, exactly as a missing one does.

use std::collections::BTreeSet;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::tenant::Tenant;

/// Shortest token accepted in a tokens file: a short token is a guessable one.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Most tokens one file may hold.
pub const MAX_TOKENS: usize = 10_000;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it: recorded as the actor of every change made with it.
    pub name: String,
    pub token: String,
    pub tenant: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// Who may call the API, and as which tenant.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No tokens file: every request acts for the default tenant (local use only).
    Open,
    Tokens(Vec<TokenEntry>),
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct TokensError {
    pub file: String,
    pub problem: String,
}

impl Auth {
    /// Reads a tokens file: `tokens: [{name, token, tenant}, ...]`.
    pub fn load(path: &Path) -> Result<Auth, TokensError> {
        let fail = |problem: String| TokensError {
            file: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Auth::parse(&text).map_err(fail)
    }

    pub fn parse(text: &str) -> Result<Auth, String> {
        let file: TokensFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.len() > MAX_TOKENS {
            return Err(format!("more than {MAX_TOKENS} tokens"));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in file.tokens.iter().enumerate() {
            let at = format!("tokens[{i}] ({})", t.name);
            if t.token.len() < MIN_TOKEN_BYTES || !t.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{at}: token must be at least {MIN_TOKEN_BYTES} printable ASCII characters"
                ));
            }
            if !crate::name::is_plain(&t.tenant, crate::tenant::MAX_TENANT_BYTES) {
                return Err(format!("{at}: tenant {:?} is not a plain name", t.tenant));
            }
            if !seen.insert(t.token.as_str()) {
                return Err(format!("{at}: the same token appears twice"));
            }
        }
        Ok(Auth::Tokens(file.tokens))
    }

    /// The entry whose token is `presented`. Every entry is compared in full, so the time
    /// taken does not tell how much of a token matched.
    fn find(&self, presented: &str) -> Option<&TokenEntry> {
        let Auth::Tokens(entries) = self else {
            return None;
        };
        let mut found = None;
        for entry in entries {
            if constant_time_eq(entry.token.as_bytes(), presented.as_bytes()) {
                found = Some(entry);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller, authenticated: the engine as its tenant sees it, acting as the token's holder.
pub struct Caller(pub Tenant);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        match &*state.auth {
            Auth::Open => Ok(Caller(state.engine.default_tenant().acting_as("api"))),
            auth @ Auth::Tokens(_) => {
                let presented = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(ApiError::unauthorized)?;
                let entry = auth.find(presented).ok_or_else(ApiError::unauthorized)?;
                let tenant = state.engine.tenant(&entry.tenant)?;
                Ok(Caller(tenant.acting_as(&entry.name)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_errors_name_the_entry_and_the_problem() {
        let short = "tokens: [{name: ci, token: abc, tenant: acme}]";
        let e = Auth::parse(short).unwrap_err();
        assert!(
            e.contains("tokens[0] (ci)") && e.contains("at least 16"),
            "{e}"
        );
        let tenant = "tokens: [{name: ci, token: aaaaaaaaaaaaaaaaaaaa, tenant: 'a b'}]";
        assert!(Auth::parse(tenant)
            .unwrap_err()
            .contains("not a plain name"));
        let twice = "tokens: [{name: a, token: aaaaaaaaaaaaaaaaaaaa, tenant: x}, \
                     {name: b, token: aaaaaaaaaaaaaaaaaaaa, tenant: y}]";
        assert!(Auth::parse(twice).unwrap_err().contains("twice"));
        let unknown = "tokens: [{name: a, token: aaaaaaaaaaaaaaaaaaaa, tenant: x, role: admin}]";
        assert!(Auth::parse(unknown).unwrap_err().contains("role"));
    }

    #[test]
    fn a_token_finds_only_its_own_entry() {
        let auth = Auth::parse(
            "tokens: [{name: a, token: aaaaaaaaaaaaaaaaaaaa, tenant: x}, \
             {name: b, token: bbbbbbbbbbbbbbbbbbbb, tenant: y}]",
        )
        .unwrap();
        assert_eq!(auth.find("bbbbbbbbbbbbbbbbbbbb").unwrap().tenant, "y");
        assert!(auth.find("bbbbbbbbbbbbbbbbbbb").is_none());
        assert!(auth.find("").is_none());
    }
}
