//! `cargo xtask shrink SCENARIO --seed N [--plant BUG] [--out DIR]`: reduces a failing run to
//! a minimal one that fails the same way (`proctor_sim::shrink`: the chaos plan written out as
//! a script, then delta debugging over faults, rates, durations and executions), writes it as
//! a scenario file (default under target/shrunk/) and prints the command that replays it.
//!
//! The search runs inside one optimised `proctor-sim shrink` process (its runs are sequential,
//! so each replays exactly); with `--plant`, that binary is built with the test-only
//! `planted-bugs` feature and the bug planted.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tidy::workspace_root;

pub fn shrink(args: &[String]) -> Result<()> {
    let plants = args
        .iter()
        .any(|a| a == "--plant" || a.starts_with("--plant="));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args(["run", "--quiet", "--release", "--package", "proctor-sim"]);
    if plants {
        command.args(["--features", "planted-bugs"]);
    }
    let status = command
        .args(["--bin", "proctor-sim", "--", "shrink"])
        .args(args)
        .current_dir(workspace_root())
        .status()
        .context("running proctor-sim shrink")?;
    if !status.success() {
        bail!("shrink failed ({status})");
    }
    Ok(())
}
