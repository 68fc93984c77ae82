//! Repository chores, the one entry point for them: `cargo xtask <task>`.
//!
//! - `ci`: what CI runs — formatting check, clippy with warnings denied, the whole test suite
//!   with `CI=true` (insta then never writes snapshots).
//! - `tidy`: the repository rules alone (they also run inside `cargo test`, see `tidy.rs`).
//!
//! Later issues add `chaos`, `repro`, `shrink` and `bench` here.

mod tidy;

use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => {
            let problems = tidy::check(&tidy::workspace_root())?;
            if problems.is_empty() {
                println!("tidy: ok");
                Ok(())
            } else {
                for p in &problems {
                    eprintln!("{p}");
                }
                bail!("tidy: {} problem(s)", problems.len())
            }
        }
        Some(other) => bail!("unknown task `{other}`; tasks: ci, tidy"),
        None => bail!("usage: cargo xtask <task>; tasks: ci, tidy"),
    }
}

fn ci() -> Result<()> {
    let root = tidy::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let steps: &[(&str, &[&str])] = &[
        ("format", &["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("tests", &["test", "--workspace", "--locked"]),
    ];
    for (name, args) in steps {
        println!("==> xtask ci: {name}: cargo {}", args.join(" "));
        let status = Command::new(&cargo)
            .args(*args)
            .current_dir(&root)
            .env("CI", "true")
            .status()
            .with_context(|| format!("running cargo {}", args.join(" ")))?;
        if !status.success() {
            bail!("xtask ci: {name} failed ({status})");
        }
    }
    println!("==> xtask ci: all checks passed");
    Ok(())
}
