//! The simulated disk under the engine's SQLite (through [`crate::vfs`]).
//!
//! Fault model, after what real disks and kernels do:
//! - A write or truncate lands in the page cache: later reads see it at once, but it is
//!   *volatile* until the file is synced. A sync makes everything written to that file before
//!   it durable.
//! - A crash (power cut) takes the host's memory and every unsynced operation's fate from the
//!   disk's [`Unsynced`] policy: all lost, all kept, or each one independently kept, lost or
//!   (a write) torn, keeping only a prefix of its bytes. Kept and lost operations may
//!   interleave in any order, as a disk that reorders its queue would leave them.
//! - Armed faults: the next N reads, writes or syncs fail with EIO; a full disk refuses every
//!   write that would grow a file. A per-operation EIO rate serves chaos runs.
//! - A power cut can also strike *during* a write ([`DiskState::arm_cut`]): the write that
//!   triggers it is the last, its fate decided like any unsynced one, and the engine's commit
//!   fails half done, as it would when the machine dies between two syscalls.
//! - A crash also *fences* the old life: every file handle opened before it fails from then
//!   on, and its lock requests are refused, so the dead connection (dropped later, when the
//!   host's tasks are) can neither checkpoint nor delete the new life's WAL.
//!
//! All randomness comes from the disk's own seeded stream. Plain data, no I/O: the VFS calls
//! these methods with the disk's lock held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// What a crash does to writes that were never synced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unsynced {
    /// Each unsynced operation independently survives, vanishes or (a write) is torn.
    #[default]
    Random,
    /// Every unsynced operation vanishes.
    Lose,
    /// Every unsynced operation survives (a clean power-off).
    Keep,
}

/// Why a disk operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The handle belongs to a life of the host that has crashed since it was opened.
    Stale,
    /// The device failed the operation (EIO).
    Io,
    /// No space left (ENOSPC): nothing was written.
    Full,
    /// No such file.
    NotFound,
    /// The file is open in the current life (it cannot be deleted under its user).
    Busy,
}

/// Which operation an EIO hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Read,
    Write,
    Sync,
}

/// Counts of what the disk did and suffered, for the run's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Writes the disk took (failed and refused ones not counted).
    pub writes: u64,
    pub syncs: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub sync_errors: u64,
    /// Writes refused because the disk was full.
    pub full_refusals: u64,
    pub crashes: u64,
    /// Unsynced operations a crash kept, lost, or tore.
    pub kept: u64,
    pub lost: u64,
    pub torn: u64,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    Truncate(usize),
}

#[derive(Clone, Default)]
struct File {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What reads see: `durable` with `pending` applied.
    current: Vec<u8>,
    /// Operations since the last sync, oldest first.
    pending: Vec<Pending>,
}

fn apply(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            // Overwrites what is there, then appends the rest (a gap past the end reads as
            // zeros), so an append copies its bytes once instead of zeroing them first.
            if bytes.len() < *offset {
                bytes.resize(*offset, 0);
            }
            let overlap = (bytes.len() - offset).min(data.len());
            bytes[*offset..offset + overlap].copy_from_slice(&data[..overlap]);
            bytes.extend_from_slice(&data[overlap..]);
        }
        Pending::Truncate(len) => bytes.truncate(*len),
    }
}

/// Most bytes one simulated file may hold: a bound on a run's memory, far above what a
/// scenario writes.
pub const MAX_FILE_BYTES: usize = 256 << 20;

/// The disk's state. Reached through [`Disk::lock`].
#[derive(Debug)]
pub struct DiskState {
    files: BTreeMap<String, File>,
    /// The host's life; handles carry the one they were opened in.
    generation: u64,
    /// Handles open in the current life, per file.
    open: BTreeMap<String, usize>,
    pub unsynced: Unsynced,
    /// Armed EIOs: the next this many operations of each kind fail.
    armed: BTreeMap<Op, u32>,
    /// Per-operation EIO chance (chaos), for reads, writes and syncs alike.
    pub error_rate: f64,
    /// While set, a write that would grow a file fails with ENOSPC.
    pub full: bool,
    /// Power cuts armed at writes: (the scenario fault's index, writes left until it).
    cuts: Vec<(usize, u64)>,
    /// The fault whose power cut struck in a write; the runner crashes the host and clears it.
    pub cut: Option<usize>,
    pub stats: DiskStats,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "File {{ {} bytes, {} unsynced }}",
            self.current.len(),
            self.pending.len()
        )
    }
}

impl DiskState {
    fn new(seed: u64, unsynced: Unsynced) -> DiskState {
        DiskState {
            files: BTreeMap::new(),
            generation: 1,
            open: BTreeMap::new(),
            unsynced,
            armed: BTreeMap::new(),
            error_rate: 0.0,
            full: false,
            cuts: Vec::new(),
            cut: None,
            stats: DiskStats::default(),
            // Its own stream: the disk's draws never shift turmoil's or the engine's.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x4449_534b_0000_0001),
        }
    }

    /// A disk of one's own, for a nameless temporary file: no registry, no faults; its
    /// (unused) crash stream has a fixed seed, so it draws nothing from the run.
    pub(crate) fn private() -> Arc<Mutex<DiskState>> {
        Arc::new(Mutex::new(DiskState::new(0, Unsynced::Keep)))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The next `count` operations of kind `op` fail with EIO.
    pub fn arm(&mut self, op: Op, count: u32) {
        *self.armed.entry(op).or_insert(0) += count;
    }

    /// Suspends the EIO faults (armed and rate) for an observer's reads, which must neither
    /// fail nor use up the run's faults; [`DiskState::resume_faults`] puts them back.
    pub fn suspend_faults(&mut self) -> SuspendedFaults {
        SuspendedFaults {
            armed: std::mem::take(&mut self.armed),
            error_rate: std::mem::replace(&mut self.error_rate, 0.0),
        }
    }

    pub fn resume_faults(&mut self, suspended: SuspendedFaults) {
        self.armed = suspended.armed;
        self.error_rate = suspended.error_rate;
    }

    /// The power goes out during the `nth` write from now (1 = the next one); `fault` names
    /// it in [`DiskState::cut`].
    pub fn arm_cut(&mut self, fault: usize, nth: u64) {
        self.cuts.push((fault, nth.max(1)));
    }

    /// Counts a write against the armed cuts; the fault whose cut strikes now, if one does.
    fn cut_now(&mut self) -> Option<usize> {
        let mut struck = None;
        for (fault, left) in &mut self.cuts {
            *left -= 1;
            if *left == 0 && struck.is_none() {
                struck = Some(*fault);
            }
        }
        let struck = struck?;
        self.cuts.retain(|(fault, _)| *fault != struck);
        Some(struck)
    }

    /// Whether this operation fails with EIO (armed first, then the rate), counted.
    fn eio(&mut self, op: Op) -> bool {
        let failed = match self.armed.get_mut(&op) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => self.error_rate > 0.0 && self.rng.random_bool(self.error_rate),
        };
        if failed {
            match op {
                Op::Read => self.stats.read_errors += 1,
                Op::Write => self.stats.write_errors += 1,
                Op::Sync => self.stats.sync_errors += 1,
            }
        }
        failed
    }

    fn live(&self, generation: u64) -> Result<(), DiskError> {
        if generation == self.generation {
            Ok(())
        } else {
            Err(DiskError::Stale)
        }
    }

    fn file(&mut self, name: &str) -> Result<&mut File, DiskError> {
        self.files.get_mut(name).ok_or(DiskError::NotFound)
    }

    /// The length of `name` as reads see it, whatever the life (for `xAccess`).
    pub fn len(&self, name: &str) -> Option<usize> {
        self.files.get(name).map(|f| f.current.len())
    }

    /// Opens `name` in the current life (creating it, empty and durable, with `create`);
    /// returns the life the handle belongs to.
    pub fn open(&mut self, name: &str, create: bool) -> Result<u64, DiskError> {
        if !self.files.contains_key(name) {
            if !create {
                return Err(DiskError::NotFound);
            }
            self.files.insert(name.to_string(), File::default());
        }
        *self.open.entry(name.to_string()).or_insert(0) += 1;
        Ok(self.generation)
    }

    pub fn close(&mut self, name: &str, generation: u64) {
        if generation != self.generation {
            return;
        }
        if let Some(n) = self.open.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(name);
            }
        }
    }

    /// Deletes `name` (durably: directory changes are not modelled as volatile). Refused
    /// while the current life has it open.
    pub fn delete(&mut self, name: &str) -> Result<(), DiskError> {
        if self.open.contains_key(name) {
            return Err(DiskError::Busy);
        }
        self.files
            .remove(name)
            .map(|_| ())
            .ok_or(DiskError::NotFound)
    }

    /// Reads into `buf` from `offset`; returns the bytes read (short at the end of the file).
    pub fn read(
        &mut self,
        name: &str,
        generation: u64,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<usize, DiskError> {
        self.live(generation)?;
        if self.eio(Op::Read) {
            return Err(DiskError::Io);
        }
        let file = self.file(name)?;
        let available = file.current.len().saturating_sub(offset).min(buf.len());
        if available > 0 {
            // Past the end there is nothing to copy (and `offset` may lie beyond it).
            buf[..available].copy_from_slice(&file.current[offset..offset + available]);
        }
        Ok(available)
    }

    pub fn write(
        &mut self,
        name: &str,
        generation: u64,
        offset: usize,
        data: &[u8],
    ) -> Result<(), DiskError> {
        self.live(generation)?;
        let end = offset.checked_add(data.len()).ok_or(DiskError::Full)?;
        let grows = end > self.file(name)?.current.len();
        if (grows && self.full) || end > MAX_FILE_BYTES {
            self.stats.full_refusals += 1;
            return Err(DiskError::Full);
        }
        let struck = self.cut_now();
        if struck.is_none() && self.eio(Op::Write) {
            return Err(DiskError::Io);
        }
        let file = self.file(name)?;
        let op = Pending::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut file.current, &op);
        file.pending.push(op);
        self.stats.writes += 1;
        if let Some(fault) = struck {
            // The write was under way when the power went: it suffers the crash's policy,
            // and the writer (now of a dead life) never hears back.
            self.crash();
            self.cut = Some(fault);
            return Err(DiskError::Stale);
        }
        Ok(())
    }

    pub fn truncate(&mut self, name: &str, generation: u64, len: usize) -> Result<(), DiskError> {
        self.live(generation)?;
        let file = self.file(name)?;
        if len < file.current.len() {
            let op = Pending::Truncate(len);
            apply(&mut file.current, &op);
            file.pending.push(op);
        }
        Ok(())
    }

    /// Makes everything written to `name` so far durable.
    pub fn sync(&mut self, name: &str, generation: u64) -> Result<(), DiskError> {
        self.live(generation)?;
        if self.eio(Op::Sync) {
            // The data stays where it was: in the cache, volatile.
            return Err(DiskError::Io);
        }
        self.stats.syncs += 1;
        let file = self.file(name)?;
        for op in std::mem::take(&mut file.pending) {
            apply(&mut file.durable, &op);
        }
        debug_assert_eq!(file.durable, file.current, "a synced file is all durable");
        Ok(())
    }

    pub fn size(&self, name: &str, generation: u64) -> Result<usize, DiskError> {
        self.live(generation)?;
        self.files
            .get(name)
            .map(|f| f.current.len())
            .ok_or(DiskError::NotFound)
    }

    /// Whether a handle of `generation` may lock the database: only the current life's.
    pub fn may_lock(&self, generation: u64) -> bool {
        generation == self.generation
    }

    /// The power goes out: the current life's handles are fenced off, and each file keeps its
    /// durable bytes plus whatever of its unsynced operations the policy lets survive.
    pub fn crash(&mut self) {
        self.generation += 1;
        self.open.clear();
        self.stats.crashes += 1;
        let policy = self.unsynced;
        for file in self.files.values_mut() {
            if file.pending.is_empty() {
                // All durable already: reads see exactly what survives.
                continue;
            }
            for op in std::mem::take(&mut file.pending) {
                let fate = match policy {
                    Unsynced::Keep => 0,
                    Unsynced::Lose => 1,
                    Unsynced::Random => self.rng.random_range(0..3u8),
                };
                match (fate, op) {
                    (0, op) => {
                        apply(&mut file.durable, &op);
                        self.stats.kept += 1;
                    }
                    (2, Pending::Write { offset, data }) if data.len() > 1 => {
                        let keep = self.rng.random_range(1..data.len());
                        let torn = Pending::Write {
                            offset,
                            data: data[..keep].to_vec(),
                        };
                        apply(&mut file.durable, &torn);
                        self.stats.torn += 1;
                    }
                    _ => self.stats.lost += 1,
                }
            }
            file.current.clone_from(&file.durable);
        }
        // Armed faults belonged to the old life's operations.
        self.armed.clear();
    }
}

/// EIO faults taken out of the disk while an observer reads (see `suspend_faults`).
#[derive(Debug)]
pub struct SuspendedFaults {
    armed: BTreeMap<Op, u32>,
    error_rate: f64,
}

/// The process-wide registry the VFS finds disks in, by the id in their path.
static DISKS: Mutex<BTreeMap<u64, Arc<Mutex<DiskState>>>> = Mutex::new(BTreeMap::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A simulated disk, alive (and reachable by the VFS) until dropped.
#[derive(Debug)]
pub struct Disk {
    id: u64,
    state: Arc<Mutex<DiskState>>,
}

impl Disk {
    pub fn new(seed: u64, unsynced: Unsynced) -> Disk {
        crate::vfs::register();
        // The id only names the disk in paths; it never reaches a run's behaviour.
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = Arc::new(Mutex::new(DiskState::new(seed, unsynced)));
        lock_registry().insert(id, state.clone());
        Disk { id, state }
    }

    /// The path of a file on this disk, to open through [`crate::vfs::VFS_NAME`].
    pub fn path(&self, file: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("{}{}/{file}", PATH_PREFIX, self.id))
    }

    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        lock_registry().remove(&self.id);
    }
}

const PATH_PREFIX: &str = "/proctor-sim-disk-";

fn lock_registry() -> MutexGuard<'static, BTreeMap<u64, Arc<Mutex<DiskState>>>> {
    DISKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The disk a path names, if it is still alive.
pub(crate) fn disk_of(path: &str) -> Option<Arc<Mutex<DiskState>>> {
    let rest = path.strip_prefix(PATH_PREFIX)?;
    let id: u64 = rest.split('/').next()?.parse().ok()?;
    lock_registry().get(&id).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(unsynced: Unsynced) -> (DiskState, u64) {
        let mut d = DiskState::new(7, unsynced);
        let generation = d.open("f", true).expect("creates");
        (d, generation)
    }

    fn contents(d: &mut DiskState, generation: u64) -> Vec<u8> {
        let mut buf = vec![0; 64];
        let n = d.read("f", generation, 0, &mut buf).expect("reads");
        buf.truncate(n);
        buf
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_ones_do_not() {
        let (mut d, g) = disk(Unsynced::Lose);
        d.write("f", g, 0, b"durable").expect("writes");
        d.sync("f", g).expect("syncs");
        d.write("f", g, 0, b"VOLATILE!").expect("writes");
        assert_eq!(contents(&mut d, g), b"VOLATILE!", "reads see the cache");
        d.crash();
        let g2 = d.open("f", false).expect("still there");
        assert_eq!(contents(&mut d, g2), b"durable");
        assert_eq!((d.stats.lost, d.stats.kept), (1, 0));
    }

    #[test]
    fn a_crash_fences_the_old_life() {
        let (mut d, g) = disk(Unsynced::Keep);
        d.crash();
        assert_eq!(d.write("f", g, 0, b"x"), Err(DiskError::Stale));
        assert_eq!(d.sync("f", g), Err(DiskError::Stale));
        assert!(!d.may_lock(g));
        let g2 = d.open("f", false).expect("opens");
        assert!(d.may_lock(g2));
        assert_eq!(d.delete("f"), Err(DiskError::Busy), "open in this life");
        d.close("f", g); // the old life's close changes nothing
        assert_eq!(d.delete("f"), Err(DiskError::Busy));
        d.close("f", g2);
        assert_eq!(d.delete("f"), Ok(()));
    }

    #[test]
    fn random_crashes_keep_lose_and_tear_unsynced_writes() {
        let (mut d, mut g) = disk(Unsynced::Random);
        for _ in 0..50 {
            d.write("f", g, 0, b"0123456789").expect("writes");
            d.crash();
            g = d.open("f", false).expect("opens");
        }
        let s = &d.stats;
        assert!(s.kept > 0 && s.lost > 0 && s.torn > 0, "{s:?}");
        assert_eq!(s.kept + s.lost + s.torn, 50);
    }

    #[test]
    fn armed_and_full_faults_fail_operations_and_clear() {
        let (mut d, g) = disk(Unsynced::Keep);
        d.write("f", g, 0, b"abc").expect("writes");
        d.full = true;
        assert_eq!(d.write("f", g, 3, b"d"), Err(DiskError::Full), "grows");
        assert_eq!(d.write("f", g, 0, b"x"), Ok(()), "overwrites in place");
        d.full = false;
        d.arm(Op::Sync, 1);
        assert_eq!(d.sync("f", g), Err(DiskError::Io));
        assert_eq!(d.sync("f", g), Ok(()));
        d.arm(Op::Read, 2);
        let mut buf = [0u8; 3];
        assert_eq!(d.read("f", g, 0, &mut buf), Err(DiskError::Io));
        assert_eq!(d.read("f", g, 0, &mut buf), Err(DiskError::Io));
        assert_eq!(d.read("f", g, 0, &mut buf), Ok(3));
        assert_eq!(&buf, b"xbc");
        assert_eq!(
            (
                d.stats.full_refusals,
                d.stats.sync_errors,
                d.stats.read_errors
            ),
            (1, 1, 2)
        );
    }

    #[test]
    fn a_power_cut_in_a_write_ends_the_life_there() {
        let (mut d, g) = disk(Unsynced::Lose);
        d.arm_cut(4, 2);
        d.write("f", g, 0, b"one").expect("the first write");
        assert_eq!(d.write("f", g, 3, b"two"), Err(DiskError::Stale));
        assert_eq!(d.cut, Some(4));
        assert_eq!(
            d.write("f", g, 6, b"three"),
            Err(DiskError::Stale),
            "fenced"
        );
        let g2 = d.open("f", false).expect("opens");
        assert_eq!(d.size("f", g2), Ok(0), "nothing was synced");
        d.write("f", g2, 0, b"x").expect("no cut armed any more");
    }

    /// Found by `disk-full-and-eio` seed 4 once the WAL buffer served reads of frames it had not
    /// yet written: SQLite read past the file's end and the disk panicked.
    #[test]
    fn a_read_past_the_end_reads_nothing() {
        let (mut d, g) = disk(Unsynced::Lose);
        d.write("f", g, 0, b"abc").expect("writes");
        let mut buf = [7u8; 4];
        assert_eq!(d.read("f", g, 10, &mut buf), Ok(0));
        assert_eq!(d.read("f", g, 3, &mut buf), Ok(0));
        assert_eq!(d.read("f", g, 1, &mut buf), Ok(2));
        assert_eq!(&buf[..2], b"bc");
    }

    #[test]
    fn truncation_is_volatile_until_synced() {
        let (mut d, g) = disk(Unsynced::Lose);
        d.write("f", g, 0, b"abcdef").expect("writes");
        d.sync("f", g).expect("syncs");
        d.truncate("f", g, 2).expect("truncates");
        assert_eq!(d.size("f", g), Ok(2));
        d.crash();
        let g2 = d.open("f", false).expect("opens");
        assert_eq!(d.size("f", g2), Ok(6));
    }
}
