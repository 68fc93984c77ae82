//! The SQLite VFS that puts the engine's database on the simulated disk ([`crate::disk`]).
//!
//! SQLite's C file I/O never passes through Rust's `std::fs`, so a simulated disk must sit
//! below SQLite itself: this VFS (registered once per process as [`VFS_NAME`]) turns SQLite's
//! file calls into [`DiskState`] operations on the disk its path names. The engine opens the
//! file with its production settings (WAL, `synchronous=FULL`) plus exclusive locking: this
//! VFS has no shared memory (version 1 I/O methods), and SQLite keeps the WAL index in the
//! heap when the lock is held for the connection's life. One connection uses a disk at a time
//! within a life, so locks need no more than the crash fence ([`DiskState::may_lock`]).
//!
//! Written against `rusqlite::ffi` (the SQLite bindings the engine already links) rather than
//! a VFS wrapper crate: the one maintained wrapper builds its own bindings with bindgen, which
//! needs libclang on every machine that builds the simulator.
//!
//! Every callback is panic-free by construction (a panic cannot unwind into C): locks are
//! taken poisoned or not, and every pointer SQLite hands over is checked for null.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::{Arc, Mutex, MutexGuard, Once};

use rusqlite::ffi;

use crate::disk::{disk_of, DiskError, DiskState};
use crate::runner::EPOCH_MS;

/// The name the engine opens its database with (`SqliteOptions::vfs`).
pub const VFS_NAME: &str = "proctor-sim";
const VFS_NAME_C: &CStr = c"proctor-sim";
/// Longest path SQLite may hand us.
const MAX_PATH_BYTES: c_int = 512;
/// The device's sector. It claims no atomic writes, so SQLite assumes the worst a crash can do
/// inside a write; it claims power-safe overwrite, as SQLite's unix VFS does by default, because
/// that is the crash model: a write is kept, lost or torn to a prefix, and no byte outside it
/// changes (SQLite then pads no commit to a sector, and the store's WAL buffer serves it).
const SECTOR_BYTES: c_int = 512;

/// SQLite allocates `szOsFile` bytes per open file and hands them to `xOpen`; this is that
/// block: SQLite's base struct first, then our handle.
#[repr(C)]
struct SimFile {
    base: ffi::sqlite3_file,
    handle: *mut Handle,
}

struct Handle {
    /// The disk its path names; a nameless temporary file gets a private disk of its own
    /// (never crashed, never faulted, gone with the handle).
    disk: Arc<Mutex<DiskState>>,
    name: String,
    /// The life it was opened in: after a crash it is fenced off.
    generation: u64,
    delete_on_close: bool,
}

/// The file name of a nameless temporary file on its private disk.
const TEMP_FILE: &str = "temp";

fn lock(disk: &Mutex<DiskState>) -> MutexGuard<'_, DiskState> {
    disk.lock().unwrap_or_else(|p| p.into_inner())
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Registers the VFS (once per process). Not the default VFS: only connections that name it
/// use it.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: std::mem::size_of::<SimFile>() as c_int,
            mxPathname: MAX_PATH_BYTES,
            pNext: null_mut(),
            zName: VFS_NAME_C.as_ptr(),
            pAppData: null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: None,
            xDlError: None,
            xDlSym: None,
            xDlClose: None,
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        // SQLite keeps the pointer for the life of the process: leaked on purpose.
        // SAFETY: a fully initialised vfs struct that is never freed.
        let rc = unsafe { ffi::sqlite3_vfs_register(Box::leak(vfs), 0) };
        assert_eq!(rc, ffi::SQLITE_OK, "registering the simulator's VFS");
    });
}

/// Reseeds SQLite's process-wide PRNG (WAL salts come from it), so a run's disk bytes are a
/// function of its seed too.
pub fn seed_prng(seed: u64) {
    // SAFETY: a documented test-control op taking an int and a (null) connection.
    unsafe {
        ffi::sqlite3_test_control(
            ffi::SQLITE_TESTCTRL_PRNG_SEED,
            (seed as u32) as c_int,
            null_mut::<ffi::sqlite3>(),
        );
    }
}

/// SAFETY: `file` is a block SQLite allocated for this VFS, initialised by `x_open`.
unsafe fn handle<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a mut Handle> {
    let file = file as *mut SimFile;
    if file.is_null() {
        return None;
    }
    (*file).handle.as_mut()
}

/// A read's or write's handle, length and offset, if all are usable.
/// SAFETY: as [`handle`].
unsafe fn io_args<'a>(
    file: *mut ffi::sqlite3_file,
    buf_is_null: bool,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> Option<(&'a mut Handle, usize, usize)> {
    if buf_is_null {
        return None;
    }
    Some((
        handle(file)?,
        usize::try_from(amount).ok()?,
        usize::try_from(offset).ok()?,
    ))
}

/// SAFETY: `name` is null or a NUL-terminated string.
unsafe fn path<'a>(name: *const c_char) -> Option<&'a str> {
    if name.is_null() {
        None
    } else {
        CStr::from_ptr(name).to_str().ok()
    }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let out = file as *mut SimFile;
    if out.is_null() {
        return ffi::SQLITE_CANTOPEN;
    }
    // A failed open must leave pMethods null, so SQLite does not call xClose on it.
    (*out).base.pMethods = null();
    (*out).handle = null_mut();
    let (disk, name, create) = if name.is_null() {
        (DiskState::private(), TEMP_FILE, true)
    } else {
        let Some(name) = path(name) else {
            return ffi::SQLITE_CANTOPEN;
        };
        let Some(disk) = disk_of(name) else {
            return ffi::SQLITE_CANTOPEN;
        };
        (disk, name, flags & ffi::SQLITE_OPEN_CREATE != 0)
    };
    let opened = lock(&disk).open(name, create);
    let Ok(generation) = opened else {
        return ffi::SQLITE_CANTOPEN;
    };
    let handle = Handle {
        disk,
        name: name.to_string(),
        generation,
        delete_on_close: flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0,
    };
    (*out).handle = Box::into_raw(Box::new(handle));
    (*out).base.pMethods = &IO_METHODS;
    if !out_flags.is_null() {
        *out_flags = flags;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let file = file as *mut SimFile;
    if file.is_null() || (*file).handle.is_null() {
        return ffi::SQLITE_OK;
    }
    let handle = Box::from_raw((*file).handle);
    (*file).handle = null_mut();
    let mut disk = lock(&handle.disk);
    disk.close(&handle.name, handle.generation);
    if handle.delete_on_close && disk.may_lock(handle.generation) {
        let _ = disk.delete(&handle.name);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let Some((handle, amount, offset)) = io_args(file, buf.is_null(), amount, offset) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let out = std::slice::from_raw_parts_mut(buf as *mut u8, amount);
    match lock(&handle.disk).read(&handle.name, handle.generation, offset, out) {
        Ok(n) if n == amount => ffi::SQLITE_OK,
        Ok(n) => {
            // SQLite requires the unread tail zeroed on a short read.
            out[n..].fill(0);
            ffi::SQLITE_IOERR_SHORT_READ
        }
        Err(_) => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let Some((handle, amount, offset)) = io_args(file, buf.is_null(), amount, offset) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let data = std::slice::from_raw_parts(buf as *const u8, amount);
    match lock(&handle.disk).write(&handle.name, handle.generation, offset, data) {
        Ok(()) => ffi::SQLITE_OK,
        Err(DiskError::Full) => ffi::SQLITE_FULL,
        Err(_) => ffi::SQLITE_IOERR_WRITE,
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let (Some(handle), Ok(size)) = (handle(file), usize::try_from(size)) else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    match lock(&handle.disk).truncate(&handle.name, handle.generation, size) {
        Ok(()) => ffi::SQLITE_OK,
        Err(_) => ffi::SQLITE_IOERR_TRUNCATE,
    }
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    let synced = match handle(file) {
        None => Err(DiskError::NotFound),
        Some(h) => lock(&h.disk).sync(&h.name, h.generation),
    };
    match synced {
        Ok(()) => ffi::SQLITE_OK,
        Err(_) => ffi::SQLITE_IOERR_FSYNC,
    }
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    let len = match handle(file) {
        None => Err(DiskError::NotFound),
        Some(h) => lock(&h.disk).size(&h.name, h.generation),
    };
    match len {
        Ok(len) if !size.is_null() => {
            *size = len as ffi::sqlite3_int64;
            ffi::SQLITE_OK
        }
        _ => ffi::SQLITE_IOERR_FSTAT,
    }
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    match handle(file) {
        // A dead life's connection asks for the lock as it closes (to checkpoint and delete
        // the WAL): refused, so it leaves the files to the living.
        Some(h) if !lock(&h.disk).may_lock(h.generation) => ffi::SQLITE_BUSY,
        _ => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_unlock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(
    _file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    if !out.is_null() {
        *out = 0;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(
    _file: *mut ffi::sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    SECTOR_BYTES
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    let Some(disk) = path(name).and_then(disk_of) else {
        return ffi::SQLITE_IOERR_DELETE_NOENT;
    };
    let deleted = lock(&disk).delete(path(name).unwrap_or_default());
    match deleted {
        Ok(()) => ffi::SQLITE_OK,
        Err(DiskError::NotFound) => ffi::SQLITE_IOERR_DELETE_NOENT,
        Err(_) => ffi::SQLITE_IOERR_DELETE,
    }
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    if out.is_null() {
        return ffi::SQLITE_IOERR_ACCESS;
    }
    let name = path(name);
    let len = name
        .and_then(|n| disk_of(n).map(|d| (n, d)))
        .and_then(|(n, d)| lock(&d).len(n));
    // As the unix VFS does: an empty file "does not exist" (a WAL truncated to nothing).
    let exists = match len {
        Some(len) => flags != ffi::SQLITE_ACCESS_EXISTS || len > 0,
        None => false,
    };
    *out = c_int::from(exists);
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    out_len: c_int,
    out: *mut c_char,
) -> c_int {
    if name.is_null() || out.is_null() {
        return ffi::SQLITE_CANTOPEN;
    }
    let bytes = CStr::from_ptr(name).to_bytes_with_nul();
    if bytes.len() > usize::try_from(out_len).unwrap_or(0) {
        return ffi::SQLITE_CANTOPEN;
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len());
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_randomness(
    _vfs: *mut ffi::sqlite3_vfs,
    len: c_int,
    out: *mut c_char,
) -> c_int {
    // Nothing random may enter a run except from its seed ([`seed_prng`] seeds SQLite's PRNG).
    if let (false, Ok(n)) = (out.is_null(), usize::try_from(len)) {
        std::ptr::write_bytes(out, 0, n);
    }
    len
}

unsafe extern "C" fn x_sleep(_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // One connection per life never waits for a lock; sleeping would stall the simulation.
    micros
}

/// The Julian day of the Unix epoch, in ms, as SQLite counts time.
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;

unsafe extern "C" fn x_current_time(_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SQL's own clock is unused by the engine (times are bound parameters); a constant keeps
    // it out of the run.
    if !out.is_null() {
        *out = (UNIX_EPOCH_JULIAN_MS + EPOCH_MS as i64) as f64 / 86_400_000.0;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_current_time_int64(
    _vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    if !out.is_null() {
        *out = UNIX_EPOCH_JULIAN_MS + EPOCH_MS as i64;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _len: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use proctor::core::Execution;
    use proctor::definition::{self, Format};
    use proctor::store::{self, SqliteOptions, SqliteStore, Storage, Synchronous};
    use serde_json::json;

    use super::*;
    use crate::disk::{Disk, Op, Unsynced};

    /// The store's methods never wait: polls once.
    fn now<F: Future>(future: F) -> F::Output {
        match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("a store call waited"),
        }
    }

    fn open(disk: &Disk, synchronous: Synchronous) -> Result<SqliteStore, store::Error> {
        SqliteStore::open_with(
            &disk.path("proctor.db"),
            &SqliteOptions {
                vfs: Some(VFS_NAME.to_string()),
                synchronous,
                exclusive: true,
                cache_kib: proctor::store::SQLITE_DEFAULT_CACHE_KIB,
                wal_autocheckpoint_pages: proctor::store::SQLITE_DEFAULT_WAL_AUTOCHECKPOINT_PAGES,
                ..SqliteOptions::default()
            },
        )
    }

    fn execution(id: &str) -> Execution {
        let yaml = "name: t\nsteps:\n  - { id: wait, type: timer, duration: 1s }\n";
        let def = definition::parse("t.yaml", yaml, Format::Yaml).expect("parses");
        // A sizeable input, so that the WAL fills and checkpoints within the test.
        let input = json!({ "pad": "x".repeat(2_000) });
        Execution::new(id.to_string(), std::sync::Arc::new(def), input, 1_000)
    }

    fn stored(store: &SqliteStore) -> usize {
        now(store.list_active()).expect("lists").len()
    }

    #[test]
    fn with_full_sync_every_acknowledged_create_survives_power_cuts() {
        let mut torn_or_lost = 0;
        for seed in 0..8 {
            let disk = Disk::new(seed, Unsynced::Random);
            let mut created = 0;
            for life in 0..6 {
                let store = open(&disk, Synchronous::Full).expect("reopens after a crash");
                let found = stored(&store);
                // The create whose sync failed last life may have landed, or not.
                assert!(
                    found == created || found == created + 1,
                    "seed {seed} life {life}: {found} of {created} acknowledged"
                );
                created = found;
                for _ in 0..40 {
                    now(store.create(&execution(&format!("e{created}")))).expect("creates");
                    created += 1;
                }
                // A commit whose sync fails leaves its WAL frames volatile for the crash.
                disk.lock().arm(Op::Sync, 1);
                let ambiguous = now(store.create(&execution(&format!("e{created}"))));
                assert!(
                    matches!(ambiguous, Err(store::Error::Io(_))),
                    "{ambiguous:?}"
                );
                disk.lock().crash();
            }
            let s = disk.lock().stats.clone();
            torn_or_lost += s.torn + s.lost;
        }
        assert!(torn_or_lost > 0, "the crashes never lost a write");
    }

    /// SQLite writes each WAL frame with two calls; at FULL the store's WAL buffer hands a
    /// commit's frames to the disk in one. At NORMAL, which it does not serve, they reach the
    /// disk as SQLite makes them.
    #[test]
    fn at_full_a_commit_reaches_the_disk_in_one_write() {
        let writes = |synchronous| {
            let disk = Disk::new(1, Unsynced::Keep);
            let store = open(&disk, synchronous).expect("opens");
            let before = disk.lock().stats.writes;
            for i in 0..40 {
                now(store.create(&execution(&format!("e{i}")))).expect("creates");
            }
            let after = disk.lock().stats.writes;
            assert_eq!(stored(&store), 40);
            after - before
        };
        let full = writes(Synchronous::Full);
        let normal = writes(Synchronous::Normal);
        assert!(full <= 40, "{full} writes for 40 commits at FULL");
        assert!(normal >= 4 * 40, "{normal} writes for 40 commits at NORMAL");
    }

    #[test]
    fn with_sync_off_a_power_cut_loses_acknowledged_creates() {
        let disk = Disk::new(1, Unsynced::Lose);
        let store = open(&disk, Synchronous::Off).expect("opens");
        for i in 0..10 {
            now(store.create(&execution(&format!("e{i}")))).expect("creates");
        }
        assert_eq!(stored(&store), 10);
        disk.lock().crash();
        drop(store);
        let store = open(&disk, Synchronous::Off).expect("reopens");
        assert_eq!(stored(&store), 0, "nothing was ever synced");
    }

    #[test]
    fn disk_full_and_eio_are_named_errors_and_pass() {
        let disk = Disk::new(2, Unsynced::Random);
        let store = open(&disk, Synchronous::Full).expect("opens");
        disk.lock().full = true;
        let full = now(store.create(&execution("a")));
        assert!(matches!(full, Err(store::Error::DiskFull(_))), "{full:?}");
        disk.lock().full = false;
        now(store.create(&execution("a"))).expect("space again");
        disk.lock().arm(Op::Sync, 1);
        let failed = now(store.create(&execution("b")));
        assert!(matches!(failed, Err(store::Error::Io(_))), "{failed:?}");
        now(store.create(&execution("c"))).expect("the device answers again");
        assert!(now(store.load("a")).expect("reads").is_some());
        assert!(now(store.load("c")).expect("reads").is_some());
    }

    /// SQLite's nameless temporary files (a temp table with `temp_store=FILE`, spilling out
    /// of a 5-page cache) live on a private disk of their own and work like any file.
    #[test]
    fn nameless_temporary_files_work() {
        let disk = Disk::new(4, Unsynced::Random);
        let conn = rusqlite::Connection::open_with_flags_and_vfs(
            disk.path("temp-test.db"),
            rusqlite::OpenFlags::default(),
            VFS_NAME,
        )
        .expect("opens");
        conn.execute_batch(
            "PRAGMA temp_store = FILE;
             CREATE TEMP TABLE t (x BLOB);
             PRAGMA temp.cache_size = 5;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO t SELECT randomblob(1000) FROM n;",
        )
        .expect("a temp table is written");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("and read");
        assert_eq!(rows, 500);
    }

    #[test]
    fn a_dead_life_cannot_touch_the_next_one() {
        let disk = Disk::new(3, Unsynced::Keep);
        let old = open(&disk, Synchronous::Full).expect("opens");
        now(old.create(&execution("a"))).expect("creates");
        disk.lock().crash();
        let new = open(&disk, Synchronous::Full).expect("reopens");
        assert!(now(old.create(&execution("ghost"))).is_err(), "fenced");
        // The old connection closes (as a crashed host's tasks drop): no checkpoint, no
        // deleted WAL under the new one.
        drop(old);
        now(new.create(&execution("b"))).expect("creates");
        disk.lock().crash();
        drop(new);
        let again = open(&disk, Synchronous::Full).expect("reopens");
        assert_eq!(stored(&again), 2);
        assert!(now(again.load("ghost")).expect("reads").is_none());
    }
}
