//! Transparent huge pages, turned off for the binaries' processes.
//!
//! mimalloc asks the kernel for transparent huge pages on the memory it maps, and the kernel
//! then backs each first touch of a 2 MiB range with a whole huge page, zeroed at once, and
//! splits it again when the allocator returns part of it. In the perf bench (docs/PERFORMANCE.md)
//! zeroing those pages was 5% of all CPU with 100 executions in flight; with them off, in
//! alternating runs, steps/s rose by about a tenth, recovery of 10,000 executions took about a
//! third less time and its peak RSS fell. Databases and caches commonly run without them
//! (Redis and MongoDB warn when they are on) for the same latency and memory reasons.
//!
//! `proctor-sim` leaves them on: its heap is small and short-lived, and without them it ran
//! about 5% slower in three alternating pairs of its speed row.

/// Set to `on` to leave transparent huge pages as the system sets them (to compare).
pub const ENV: &str = "PROCTOR_HUGE_PAGES";

/// Turns transparent huge pages off for this process, unless [`ENV`] is `on`. The binaries
/// call this first thing: memory already mapped keeps its pages. Returns whether they are off.
pub fn turn_off_unless_asked() -> bool {
    !std::env::var(ENV).is_ok_and(|v| v == "on") && turn_off()
}

/// Turns transparent huge pages off for this process (Linux's `PR_SET_THP_DISABLE`, which
/// overrides the allocator's advice). Returns whether the kernel took it (always `false`
/// elsewhere).
pub fn turn_off() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE reads only its integer arguments and sets a flag on the
        // process's memory map; it touches no memory of ours.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn turning_them_off_sets_the_process_flag() {
        assert!(turn_off());
        // SAFETY: PR_GET_THP_DISABLE only reads the process's flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
