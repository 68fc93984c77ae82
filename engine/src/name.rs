//! The plain names that tenants and schedules go by: 1 to `max_bytes` ASCII letters, digits,
//! `_` and `-`, so they are safe in ids (`<schedule>-<ms>`), file names and URLs.

/// Whether `name` is a plain name of at most `max_bytes`.
pub fn is_plain(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::is_plain;

    #[test]
    fn plain_names() {
        assert!(is_plain("acme-2_b", 64));
        assert!(!is_plain("", 64));
        assert!(!is_plain("no spaces", 64));
        assert!(!is_plain("a.b", 64));
        assert!(!is_plain(&"x".repeat(65), 64));
        assert!(is_plain(&"x".repeat(64), 64));
    }
}
