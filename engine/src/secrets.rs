//! Secrets for outbound requests: values an `http` step's header names as `${secrets.NAME}`.
//!
//! The reference, not the value, is what the core renders and stores (in the step's input,
//! its events, its checkpoints): the value is filled in by the driver only as the request is
//! sent, and is cut out of any error text that comes back ([`Secrets::redact`]). Values come
//! from configuration: `proctor run` and `proctor serve` read every `PROCTOR_SECRET_<NAME>`
//! environment variable ([`Secrets::from_vars`]); the simulator gives its own.

use std::collections::BTreeMap;
use std::fmt;

/// How a reference starts: `${secrets.NAME}`.
pub const OPENER: &str = "${secrets.";
/// The environment variables `proctor` reads secrets from: `PROCTOR_SECRET_TOKEN` is `TOKEN`.
pub const ENV_PREFIX: &str = "PROCTOR_SECRET_";
/// What a secret's value is replaced with in error text.
pub const REDACTED: &str = "[redacted]";
/// Longest secret name; keeps references (and error messages) bounded.
pub const MAX_NAME_LEN: usize = 64;

/// Named secret values. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets {
            values: values
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect(),
        }
    }

    /// The secrets among `vars` (environment variables): `PROCTOR_SECRET_<NAME>=value`.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets::new(vars.into_iter().filter_map(|(key, value)| {
            let name = key.strip_prefix(ENV_PREFIX)?;
            is_name(name).then(|| (name.to_string(), value))
        }))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// `text` with each `${secrets.NAME}` replaced by its value; the first unknown name is
    /// the error.
    pub fn fill(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        for piece in pieces(text)? {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Secret(name) => out.push_str(self.values.get(name).ok_or_else(|| {
                    format!("secret {name} is not configured (set {ENV_PREFIX}{name})")
                })?),
            }
        }
        Ok(out)
    }

    /// `text` with every secret's value replaced by [`REDACTED`]: for anything that came back
    /// from the outside and may quote a request (an error body, a transport error).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first, so a secret that contains another is cut whole.
        let mut values: Vec<&String> = self.values.values().collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for value in values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }
}

/// The secret names `text` refers to; an error for a malformed reference.
pub fn references(text: &str) -> Result<Vec<&str>, String> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Secret(name) => Some(name),
            Piece::Text(_) => None,
        })
        .collect())
}

/// A header value split at its secret references.
enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

/// `text` as text and `${secrets.NAME}` references, in order; an error for a malformed one.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPENER) {
        pieces.push(Piece::Text(&rest[..at]));
        let after = &rest[at + OPENER.len()..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed `${secrets.` (write `${secrets.NAME}`)".to_string())?;
        let name = &after[..end];
        if !is_name(name) {
            return Err(format!(
                "`${{secrets.{name}}}`: a secret's name is letters, digits and '_', starting with a \
                 letter or '_', at most {MAX_NAME_LEN} characters"
            ));
        }
        pieces.push(Piece::Secret(name));
        rest = &after[end + 1..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::from_vars([
            (
                "PROCTOR_SECRET_TOKEN".to_string(),
                "s3cr3t-value".to_string(),
            ),
            ("PROCTOR_SECRET_EMPTY".to_string(), String::new()),
            ("PROCTOR_SECRET_bad-name".to_string(), "x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ])
    }

    #[test]
    fn secrets_come_from_prefixed_variables_with_valid_names_and_values() {
        let s = secrets();
        assert_eq!(s.names().collect::<Vec<_>>(), vec!["TOKEN"]);
        assert_eq!(format!("{s:?}"), r#"{"TOKEN"}"#, "Debug shows names only");
    }

    #[test]
    fn references_are_filled_and_unknown_ones_named() {
        let s = secrets();
        assert_eq!(
            s.fill("Bearer ${secrets.TOKEN}").unwrap(),
            "Bearer s3cr3t-value"
        );
        assert_eq!(s.fill("plain").unwrap(), "plain");
        let err = s.fill("${secrets.OTHER}").unwrap_err();
        assert!(err.contains("secret OTHER is not configured"), "{err}");
        assert!(err.contains("PROCTOR_SECRET_OTHER"), "{err}");
    }

    #[test]
    fn values_are_redacted_from_text() {
        let s = secrets();
        assert_eq!(
            s.redact("401: bad token s3cr3t-value (s3cr3t-value)"),
            "401: bad token [redacted] ([redacted])"
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        assert_eq!(
            references("a ${secrets.A} b ${secrets._B2}").unwrap(),
            vec!["A", "_B2"]
        );
        assert!(references("${secrets.A").is_err());
        assert!(references("${secrets.1A}").is_err());
        assert!(references("${secrets.a-b}").is_err());
        assert!(references("no secrets").unwrap().is_empty());
    }
}
