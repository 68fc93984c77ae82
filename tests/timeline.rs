//! The run timeline (`proctor_sim::timeline`, `cargo xtask repro --html`), end to end: a child
//! runs a harness scenario and writes the page, and headless Chromium loads it, runs its
//! script and hands back the DOM it drew. The checks read that DOM: the host and execution
//! lanes, agent calls, the engine's crash, and the violated invariant's marker.
//!
//! Needs Chromium (Debian's `chromium` package, which `.ci/run` installs): `chromium`,
//! `chromium-browser` or `google-chrome` on PATH, or `PROCTOR_CHROMIUM=/path/to/it`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use proctor::planted::Bug;

use super::{harness_file, in_child};

/// In the child: write the run's timeline page to this path.
pub const TIMELINE_ENV: &str = "PROCTOR_SIM_TIMELINE";
/// Chromium loads a local page in about a second; this bounds a wedged one.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(120);

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "timeline::planted_failure_shows_its_invariant_in_chromium",
            planted_failure_shows_its_invariant,
        ),
        Trial::test(
            "timeline::passing_run_draws_lanes_and_no_marker_in_chromium",
            passing_run_draws_no_marker,
        ),
    ]
}

/// `recovery-mid-step.yaml` crashes the engine after the agent applied step `a`'s first call;
/// with `complete_twice` planted, each step is recorded completed twice.
fn planted_failure_shows_its_invariant() -> Result<(), Failed> {
    let dom = rendered("recovery-mid-step.yaml", 0, Some(Bug::CompleteTwice))?;
    expect_lanes(&dom)?;
    let marker = r#"class="violation" data-invariant="effect_at_most_once""#;
    if !dom.contains(marker) {
        return Err(
            format!("no marker for `effect_at_most_once` in the drawn page:\n{dom}").into(),
        );
    }
    // One marker per violation (three executions, three steps each), each at an instant
    // inside the run, and the list above the plot names them.
    let instants = attribute_values(&dom, "data-at");
    if instants.len() != 9 {
        return Err(format!("expected 9 violation markers, found {}", instants.len()).into());
    }
    let run_ms = attribute_values(&dom, "data-t1")
        .first()
        .copied()
        .ok_or("the plot has no time window")?;
    if instants.iter().any(|at| *at == 0 || *at > run_ms) {
        return Err(format!("markers outside the run (0..{run_ms} ms): {instants:?}").into());
    }
    if !dom.contains("StepCompleted recorded 2 times") {
        return Err("the violation's detail is not on the page".into());
    }
    if !dom.contains("9 invariants violated") {
        return Err("the page does not say the run failed".into());
    }
    Ok(())
}

fn passing_run_draws_no_marker() -> Result<(), Failed> {
    let dom = rendered("recovery-mid-step.yaml", 0, None)?;
    expect_lanes(&dom)?;
    if dom.contains(r#"class="violation""#) {
        return Err("a passing run's page shows a violation marker".into());
    }
    if !dom.contains("all invariants hold") {
        return Err("the page does not say the run passed".into());
    }
    Ok(())
}

/// What every page of this scenario draws: a lane per host and per execution, the agent's
/// calls, and the engine's crash as a band on the engine's lane.
fn expect_lanes(dom: &str) -> Result<(), Failed> {
    if !dom.contains(r#"data-rendered="ok""#) {
        return Err(format!("the page's script did not finish drawing:\n{dom}").into());
    }
    for host in ["client", "engine", "worker"] {
        let lane = format!(r#"data-kind="host" data-lane="{host}""#);
        if !dom.contains(&lane) {
            return Err(format!("no lane for host {host}").into());
        }
    }
    let executions = dom.matches(r#"data-kind="execution""#).count();
    if executions != 3 {
        return Err(format!("expected 3 execution lanes, found {executions}").into());
    }
    if !dom.contains(r#"data-fault="crash" data-host="engine""#) {
        return Err("the engine's crash is not drawn on its lane".into());
    }
    let calls = dom.matches(r#"data-agent="worker""#).count();
    // Three executions of three steps, one of them re-dispatched after the crash.
    if calls < 9 {
        return Err(format!("expected at least 9 calls to the worker, found {calls}").into());
    }
    Ok(())
}

/// The DOM Chromium drew for the timeline of `file` (under tests/harness/) with `seed`.
fn rendered(file: &str, seed: u64, plant: Option<Bug>) -> Result<String, Failed> {
    let dir = tempfile::tempdir()?;
    let page = dir.path().join("timeline.html");
    let page_str = page.to_str().ok_or("temp path is not UTF-8")?;
    in_child(
        &harness_file(file),
        seed,
        plant,
        &[(TIMELINE_ENV, page_str)],
    )?;
    if !page.exists() {
        return Err(format!("the child wrote no page at {}", page.display()).into());
    }
    dump_dom(&page, &dir.path().join("profile"))
}

fn chromium() -> Result<PathBuf, Failed> {
    if let Some(path) = std::env::var_os("PROCTOR_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new(name).arg("--version").output() {
            if out.status.success() {
                return Ok(PathBuf::from(name));
            }
        }
    }
    Err(
        "the timeline tests need headless Chromium: `apt-get install chromium` (as .ci/run \
         does), or set PROCTOR_CHROMIUM to its path"
            .into(),
    )
}

/// Loads `page` in headless Chromium and returns the DOM after its scripts ran.
fn dump_dom(page: &Path, profile: &Path) -> Result<String, Failed> {
    let mut child = Command::new(chromium()?)
        // Root in a container has no sandbox to drop into; the background services would
        // only reach for a network this machine does not have.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout));
    let waited = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if waited.elapsed() > CHROMIUM_LIMIT {
            let _ = child.kill();
            return Err(format!("Chromium did not finish within {CHROMIUM_LIMIT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait()?;
    let dom = reader.join().map_err(|_| "reading Chromium's output")??;
    if !status.success() || dom.is_empty() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut stderr)?;
        }
        return Err(format!("Chromium failed ({status}):\n{stderr}").into());
    }
    Ok(dom)
}

/// Every value of `name="N"` attributes in `dom`, as numbers.
fn attribute_values(dom: &str, name: &str) -> Vec<u64> {
    let needle = format!(r#" {name}=""#);
    dom.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &dom[i + needle.len()..];
            rest.split('"').next()?.parse().ok()
        })
        .collect()
}
