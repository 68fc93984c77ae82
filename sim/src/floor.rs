//! What the simulation framework costs by itself: a scenario's hosts, idle, for a given span
//! of simulated time. `proctor-sim speed` measures it beside the real runs, as the limit
//! their speed is held against (as the raw commit rate is for the engine's durable steps).
//!
//! turmoil advances in fixed ticks and, at every tick, polls each running host's runtime,
//! whether or not anything is due on it: a run's cost has a floor proportional to its
//! simulated time times its host count, which no work saved in the engine can go under.

use std::time::Duration;

use crate::runner::builder;
use crate::scenario::{Scenario, ENGINE_HOST};

/// The hosts a run of `scenario` starts besides its client: one per agent, the engine, and
/// the mail server if the scenario has one.
pub fn host_names(scenario: &Scenario) -> Vec<String> {
    let mut hosts: Vec<String> = scenario.agents.keys().cloned().collect();
    hosts.push(ENGINE_HOST.to_string());
    hosts.extend(scenario.smtp_host.clone());
    hosts
}

/// One simulation with `hosts` that never do anything and a client that sleeps for
/// `simulated_ms`, built as every run is ([`builder`]): the ticks alone. Returns the
/// simulated time it ran.
pub fn idle_run(hosts: &[String], simulated_ms: u64, seed: u64) -> Duration {
    let mut sim = builder(seed, simulated_ms.saturating_mul(2).max(1)).build();
    for host in hosts {
        sim.host(host.as_str(), || async {
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    sim.client("client", async move {
        tokio::time::sleep(Duration::from_millis(simulated_ms)).await;
        Ok(())
    });
    sim.run()
        .expect("an idle simulation has nothing that can fail");
    sim.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::TICK_MS;

    #[test]
    fn an_idle_run_ticks_through_the_simulated_time_it_is_given() {
        // A floor that ended early would flatter the runs measured against it.
        let hosts = vec!["worker".to_string(), ENGINE_HOST.to_string()];
        for simulated_ms in [1, 250, 3_000] {
            let elapsed = idle_run(&hosts, simulated_ms, 7);
            assert!(
                elapsed >= Duration::from_millis(simulated_ms)
                    && elapsed <= Duration::from_millis(simulated_ms + 2 * TICK_MS),
                "{simulated_ms} ms asked, {elapsed:?} ran"
            );
        }
    }

    #[test]
    fn the_floor_counts_every_host_a_run_starts() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/");
        let standard =
            Scenario::load(&std::path::Path::new(dir).join("sequential-crash-mid-step.yaml"))
                .expect("the standard scenario loads");
        assert_eq!(host_names(&standard), vec!["worker", ENGINE_HOST]);
        let mail = Scenario::load(&std::path::Path::new(dir).join("email-under-faults.yaml"))
            .expect("a scenario with a mail server loads");
        let hosts = host_names(&mail);
        assert_eq!(hosts.len(), mail.agents.len() + 2, "{hosts:?}");
        assert_eq!(hosts.last(), mail.smtp_host.as_ref());
    }
}
