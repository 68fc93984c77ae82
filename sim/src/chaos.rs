//! Random faults from a scenario's `chaos` rates, drawn from the seed before the run starts,
//! so a chaos run is a scripted run whose script came from the seed (and can be printed,
//! replayed and, later, shrunk).
//!
//! Swarm testing: with `swarm`, each seed enables a random non-empty subset of the fault kinds
//! that have a rate. Runs dominated by one kind (only partitions, only storage errors) find
//! bugs that an even mix of everything hides.

use rand::seq::IndexedRandom;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scenario::{Chaos, DiskFault, Fault, Point, ENGINE_HOST};

/// Random faults start on this grid.
const SLOT_MS: u64 = 100;
/// Bounds of a random outage (crash, partition, hold, slow link).
const MIN_OUTAGE_MS: u64 = 50;
const MAX_OUTAGE_MS: u64 = 2_000;
/// Bounds of a slow link's latency.
const MIN_SLOW_MS: u64 = 20;
const MAX_SLOW_MS: u64 = 500;
/// Bounds of a loss burst's per-ms chance of a momentary break.
const MIN_LOSS: f64 = 0.05;
const MAX_LOSS: f64 = 0.5;
/// Least chance of duplicating a connection during a random spell of duplicates.
const MIN_DUPLICATE: f64 = 0.2;
/// A random power cut strikes within this many of the engine's disk writes after it is armed.
const MAX_CUT_WRITE: u32 = 64;

/// The faults one seed's chaos adds to the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Timed faults, in time order.
    pub faults: Vec<Fault>,
    /// Per-write chances of storage faults, during the chaos window.
    pub io_error_rate: f64,
    pub ambiguous_rate: f64,
    /// Per disk operation: the chance of EIO, during the chaos window.
    pub disk_error_rate: f64,
    /// The kinds this seed enabled.
    pub kinds: Vec<&'static str>,
}

/// Draws `chaos`'s faults for `seed` over hosts `engine` and `agents`.
pub fn plan(chaos: &Chaos, agents: &[String], seed: u64) -> Plan {
    // Its own stream: changing a rate never shifts turmoil's or the engine's draws.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4348_414f_5321_0000);
    let mut kinds: Vec<(&'static str, f64)> = [
        ("engine_crash", chaos.crash_rate),
        ("agent_crash", chaos.agent_crash_rate),
        ("partition", chaos.partition_rate),
        ("hold", chaos.hold_rate),
        ("latency", chaos.latency_rate),
        ("loss", chaos.loss_rate),
        ("io_error", chaos.storage_error_rate),
        ("ambiguous_commit", chaos.ambiguous_commit_rate),
        ("disk_error", chaos.disk_error_rate),
        ("disk_full", chaos.disk_full_rate),
        ("power_cut", chaos.power_cut_rate),
        ("duplicate", chaos.duplicate_rate),
    ]
    .into_iter()
    .filter(|(_, rate)| *rate > 0.0)
    .collect();
    if chaos.swarm && !kinds.is_empty() {
        let all = kinds.clone();
        kinds.retain(|_| rng.random_bool(0.5));
        if kinds.is_empty() {
            kinds.push(*all.choose(&mut rng).expect("not empty"));
        }
    }
    let rate = |kind: &str| {
        kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0.0, |(_, r)| *r)
    };
    let hosts: Vec<String> = std::iter::once(ENGINE_HOST.to_string())
        .chain(agents.iter().cloned())
        .collect();
    let links: Vec<(String, String)> = hosts
        .iter()
        .enumerate()
        .flat_map(|(i, a)| hosts[i + 1..].iter().map(move |b| (a.clone(), b.clone())))
        .collect();
    // When each host is back up, and each link whole again: faults of one kind on one target
    // never overlap, so each repair or restart undoes exactly the fault it belongs to.
    let mut host_up_at = vec![0u64; hosts.len()];
    let mut link_free_at = vec![[0u64; 4]; links.len()];
    let mut disk_free_at = 0u64;
    let mut duplicate_free_at = vec![0u64; hosts.len()];
    let mut faults = Vec::new();
    let per_slot = |rate_per_s: f64| (rate_per_s * SLOT_MS as f64 / 1_000.0).min(1.0);
    let mut at_ms = SLOT_MS;
    while at_ms < chaos.window_ms {
        let outage = |rng: &mut ChaCha8Rng| rng.random_range(MIN_OUTAGE_MS..=MAX_OUTAGE_MS);
        let (engine, agent) = (
            per_slot(rate("engine_crash")),
            per_slot(rate("agent_crash")),
        );
        if engine > 0.0 && rng.random_bool(engine) && host_up_at[0] <= at_ms {
            let down = outage(&mut rng);
            host_up_at[0] = at_ms + down;
            faults.push(crash(at_ms, ENGINE_HOST, down));
        }
        if agent > 0.0 && !agents.is_empty() && rng.random_bool(agent) {
            let i = rng.random_range(1..hosts.len());
            let down = outage(&mut rng);
            if host_up_at[i] <= at_ms {
                host_up_at[i] = at_ms + down;
                faults.push(crash(at_ms, &hosts[i], down));
            }
        }
        let cut = per_slot(rate("power_cut"));
        if cut > 0.0 && rng.random_bool(cut) && host_up_at[0] <= at_ms {
            let down = outage(&mut rng);
            let nth = rng.random_range(1..=MAX_CUT_WRITE);
            // When it strikes is known only in the run; until then the engine counts as up.
            faults.push(Fault {
                point: Some(Point::DiskWrite),
                nth,
                ..crash(at_ms, ENGINE_HOST, down)
            });
        }
        let full = per_slot(rate("disk_full"));
        if full > 0.0 && rng.random_bool(full) {
            let lasts = outage(&mut rng);
            if disk_free_at <= at_ms {
                disk_free_at = at_ms + lasts;
                faults.push(Fault {
                    disk: Some(DiskFault::Full),
                    for_ms: Some(lasts),
                    ..blank(at_ms)
                });
            }
        }
        let duplicate = per_slot(rate("duplicate"));
        if duplicate > 0.0 && !agents.is_empty() && rng.random_bool(duplicate) {
            let i = rng.random_range(1..hosts.len());
            let lasts = outage(&mut rng);
            let chance = rng.random_range(MIN_DUPLICATE..=1.0);
            if duplicate_free_at[i] <= at_ms {
                duplicate_free_at[i] = at_ms + lasts;
                faults.push(Fault {
                    duplicate: Some(hosts[i].clone()),
                    duplicate_rate: Some(chance),
                    for_ms: Some(lasts),
                    ..blank(at_ms)
                });
            }
        }
        for (k, kind) in ["partition", "hold", "latency", "loss"]
            .into_iter()
            .enumerate()
        {
            let p = per_slot(rate(kind));
            if p == 0.0 || links.is_empty() || !rng.random_bool(p) {
                continue;
            }
            let l = rng.random_range(0..links.len());
            let lasts = outage(&mut rng);
            let slow_ms = rng.random_range(MIN_SLOW_MS..=MAX_SLOW_MS);
            // Drawn only for loss, so adding the kind shifted no other kind's draws.
            let loss_rate = (kind == "loss").then(|| rng.random_range(MIN_LOSS..=MAX_LOSS));
            if link_free_at[l][k] > at_ms {
                continue;
            }
            link_free_at[l][k] = at_ms + lasts;
            let link = Some(links[l].clone());
            let mut fault = blank(at_ms);
            fault.for_ms = Some(lasts);
            match kind {
                "partition" => fault.partition = link,
                "hold" => fault.hold = link,
                "loss" => {
                    fault.loss = link;
                    fault.loss_rate = loss_rate;
                }
                _ => {
                    fault.latency = link;
                    fault.latency_ms = Some(slow_ms);
                }
            }
            faults.push(fault);
        }
        at_ms += SLOT_MS;
    }
    Plan {
        faults,
        io_error_rate: rate("io_error"),
        ambiguous_rate: rate("ambiguous_commit"),
        disk_error_rate: rate("disk_error"),
        kinds: kinds.into_iter().map(|(k, _)| k).collect(),
    }
}

fn blank(at_ms: u64) -> Fault {
    Fault {
        at_ms: Some(at_ms),
        ..Fault::default()
    }
}

fn crash(at_ms: u64, host: &str, down_ms: u64) -> Fault {
    Fault {
        crash: Some(host.to_string()),
        restart_after_ms: Some(down_ms),
        ..blank(at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chaos() -> Chaos {
        Chaos {
            window_ms: 5_000,
            crash_rate: 1.0,
            agent_crash_rate: 1.0,
            partition_rate: 2.0,
            hold_rate: 1.0,
            latency_rate: 1.0,
            storage_error_rate: 0.01,
            ambiguous_commit_rate: 0.01,
            disk_error_rate: 0.001,
            disk_full_rate: 0.5,
            power_cut_rate: 1.0,
            loss_rate: 1.0,
            duplicate_rate: 1.0,
            swarm: true,
        }
    }

    #[test]
    fn same_seed_same_plan_and_swarm_varies_the_kinds() {
        let agents = vec!["a".to_string(), "b".to_string()];
        assert_eq!(plan(&chaos(), &agents, 7), plan(&chaos(), &agents, 7));
        let kinds: std::collections::BTreeSet<Vec<&str>> =
            (0..32).map(|s| plan(&chaos(), &agents, s).kinds).collect();
        assert!(kinds.len() > 4, "swarm picked only {kinds:?}");
        assert!(kinds.iter().all(|k| !k.is_empty()));
    }

    #[test]
    fn without_swarm_every_kind_is_on_and_outages_never_overlap() {
        let agents = vec!["a".to_string()];
        let c = Chaos {
            swarm: false,
            ..chaos()
        };
        let p = plan(&c, &agents, 3);
        assert_eq!(p.kinds.len(), 12);
        let mut engine_up_at = 0;
        for f in p
            .faults
            .iter()
            .filter(|f| f.crash.as_deref() == Some("engine") && f.point.is_none())
        {
            let at = f.at_ms.expect("timed");
            assert!(
                at >= engine_up_at,
                "crash at {at} while down until {engine_up_at}"
            );
            engine_up_at = at + f.restart_after_ms.expect("restarts");
        }
        assert!(p.faults.iter().all(|f| f.at_ms < Some(c.window_ms)));
    }
}
