//! Repository rules, checked as a `#[test]` so that plain `cargo test` enforces them:
//!
//! - every Rust module in engine/ and sim/ opens with a `//!` doc saying what it holds;
//! - engine and simulator logic read no real time, real randomness or threads (`SystemTime::now`,
//!   `Instant::now`, `thread_rng`, `rand::rng()`, `std::thread`), except the production Clock and
//!   the CLI entry point, which are where real time is supposed to come from;
//! - `tokio::select!` is always `biased;` (an unbiased one picks branches at random);
//! - no test is `#[ignore]`d: slow tests hide behind an environment variable instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Files allowed to read real time: the production implementations of the ports.
const REAL_TIME_ALLOWED: &[&str] = &["engine/src/clock.rs", "engine/src/main.rs"];

const FORBIDDEN: &[&str] = &[
    "SystemTime::now",
    "Instant::now",
    "thread_rng",
    "rand::rng()",
    "std::thread",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Returns one line per broken rule, `path:line: problem`.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut logic = Vec::new();
    for dir in ["engine/src", "sim/src"] {
        rust_files(&root.join(dir), &mut logic)?;
    }
    for path in &logic {
        let rel = path.strip_prefix(root).unwrap_or(path);
        let rel_str = rel.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(path)?;
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{rel_str}:1: module has no `//!` doc comment"));
        }
        let allowed = REAL_TIME_ALLOWED.contains(&rel_str.as_str());
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !allowed {
                for needle in FORBIDDEN {
                    if code.contains(needle) {
                        problems.push(format!(
                            "{rel_str}:{}: `{needle}` in engine/sim logic: take time from the Clock, randomness from the injected Rng",
                            i + 1
                        ));
                    }
                }
            }
            if code.contains("select!") && !code.contains("biased") {
                let next = lines.get(i + 1).copied().unwrap_or("");
                if !next.contains("biased") {
                    problems.push(format!(
                        "{rel_str}:{}: `select!` without `biased;` picks branches at random",
                        i + 1
                    ));
                }
            }
        }
    }
    let mut all = Vec::new();
    for dir in ["engine", "sim", "tests", "xtask"] {
        rust_files(&root.join(dir), &mut all)?;
    }
    let ignore_attr = concat!("#[", "ignore");
    for path in &all {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        for (i, line) in std::fs::read_to_string(path)?.lines().enumerate() {
            if line.trim_start().starts_with(ignore_attr) {
                problems.push(format!(
                    "{rel}:{}: ignored test: gate slow tests on an environment variable instead",
                    i + 1
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_is_tidy() {
        let problems = check(&workspace_root()).unwrap();
        assert!(
            problems.is_empty(),
            "tidy problems:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn tidy_catches_real_time_and_missing_docs() {
        let dir = tempdir();
        let src = dir.join("engine/src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("bad.rs"),
            "fn f() { let _ = std::time::SystemTime::now(); }\n",
        )
        .unwrap();
        let problems = check(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            problems.iter().any(|p| p.contains("no `//!` doc")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("SystemTime::now")),
            "{problems:?}"
        );
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("proctor-tidy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
