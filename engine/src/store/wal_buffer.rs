//! A VFS shim that hands each commit's WAL writes to the file system in one call.
//!
//! SQLite writes a WAL frame with two `xWrite` calls (its 24-byte header, then the page), so a
//! group commit of 40 transitions, about 100 frames, made some 200 `pwrite` system calls before
//! its sync, on the one thread every commit waits for (docs/PERFORMANCE.md). This shim wraps
//! another VFS (the OS's, or the simulator's disk, so that the simulator's power cuts exercise
//! it) and, for WAL files only, gathers writes that follow each other into one buffer, written
//! with as few calls as the wrapped VFS takes at a sync, a write elsewhere in the file, a close,
//! or the buffer reaching [`MAX_BUFFER_BYTES`]. Reads and size queries see the buffer laid over
//! the file, and a truncation drops what it would cut off. Every other file, and every other
//! method, goes straight through.
//!
//! What makes it sound, each a condition of buffering:
//! - `synchronous=FULL` (the store uses the shim only then): SQLite syncs the WAL at every
//!   commit before it publishes the commit's frames in the WAL index, so no reader (another
//!   connection, through its own handle) looks for a frame still in a buffer. Frames a
//!   transaction spills before its commit are published only when it commits, and the writing
//!   connection's own reads see its buffer. At `NORMAL` a commit publishes with no sync.
//! - A device with power-safe overwrite (the database file's characteristics, as SQLite's unix
//!   VFS has them by default): without it SQLite pads a commit to a sector boundary and
//!   publishes the commit before the end of the padding is synced.
//! - The WAL's database file opened through this shim too, which tells it when the connection
//!   releases the WAL's write lock: what a buffer still holds then is from a transaction rolled
//!   back, and is dropped before another connection can write the same offsets.
//!
//! Durability is unchanged: nothing was durable before the sync, and the sync writes the buffer
//! first; a process that dies first loses only frames of a commit that never returned.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::Mutex;

use rusqlite::ffi;

/// The most bytes a WAL file's buffer holds before it is written out: bounds the memory of a
/// transaction that spills many pages.
pub const MAX_BUFFER_BYTES: usize = 1 << 20;

/// The most bytes handed to the wrapped VFS in one write: SQLite's unix VFS writes at most
/// 128 KiB less one byte per call (it masks a larger amount to its low 17 bits, so a 1 MiB
/// write wrote nothing and came back as a full disk). 31 pages.
const MAX_WRITE_BYTES: usize = 31 * 4096;

/// Registers (once per process and base) the shim over the VFS named `base` (SQLite's default
/// when `None`) and returns the name to open connections with.
pub fn register(base: Option<&str>) -> Result<String, String> {
    static REGISTERED: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let key = base.unwrap_or("").to_string();
    let mut registered = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = registered.get(&key) {
        return Ok(name.clone());
    }
    let base_name = base
        .map(|b| CString::new(b).map_err(|_| format!("VFS name {b:?} holds a NUL")))
        .transpose()?;
    // SAFETY: a null name asks for the default VFS; otherwise a NUL-terminated name.
    let base_vfs =
        unsafe { ffi::sqlite3_vfs_find(base_name.as_ref().map_or(null(), |n| n.as_ptr())) };
    if base_vfs.is_null() {
        return Err(format!(
            "no SQLite VFS named {:?}",
            base.unwrap_or("(default)")
        ));
    }
    // SAFETY: a registered VFS stays valid for the process's life.
    let base_ref = unsafe { &*base_vfs };
    // SAFETY: a registered VFS's name is a NUL-terminated string.
    let base_label = unsafe { CStr::from_ptr(base_ref.zName) }.to_string_lossy();
    let name = format!("proctor-wal-buffer-{base_label}");
    let name_c = CString::new(name.clone()).map_err(|_| "VFS name holds a NUL".to_string())?;
    let inner_size = usize::try_from(base_ref.szOsFile).map_err(|_| "bad szOsFile".to_string())?;
    let vfs = Box::new(ffi::sqlite3_vfs {
        iVersion: 2,
        szOsFile: std::mem::size_of::<ShimFile>() as c_int,
        mxPathname: base_ref.mxPathname,
        pNext: null_mut(),
        // Leaked with the struct: SQLite keeps both for the life of the process.
        zName: name_c.into_raw(),
        pAppData: Box::into_raw(Box::new(Base {
            vfs: base_vfs,
            inner_size,
        })) as *mut c_void,
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
    // SAFETY: a fully initialised vfs struct that is never freed.
    let rc = unsafe { ffi::sqlite3_vfs_register(Box::leak(vfs), 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("registering {name}: SQLite error {rc}"));
    }
    registered.insert(key, name.clone());
    Ok(name)
}

/// The wrapped VFS, in the shim's `pAppData`.
struct Base {
    vfs: *mut ffi::sqlite3_vfs,
    /// Its `szOsFile`: the bytes each of its open files needs.
    inner_size: usize,
}

/// SQLite allocates `szOsFile` bytes per open file and hands them to `xOpen`: SQLite's base
/// struct first (pointing at this shim's methods), then the wrapped VFS's file, allocated
/// apart at its own size, and the buffer (WAL files only).
#[repr(C)]
struct ShimFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// A buffered WAL file's buffer; null for every other file.
    buffer: *mut Buffer,
    /// A buffered WAL file: its database's file; that database file: the WAL's. Null when
    /// there is none or it closed. Both are this shim's files.
    peer: *mut ShimFile,
}

/// SQLite's WAL write lock, the first of the locks in the WAL index (`WAL_WRITE_LOCK`).
const WAL_WRITE_LOCK: c_int = 0;

/// Whether `file` is one of this shim's open files.
/// SAFETY: `file` is null or an `sqlite3_file` SQLite handed out.
unsafe fn is_shim_file(file: *mut ffi::sqlite3_file) -> bool {
    if file.is_null() {
        return false;
    }
    let methods = (*file).pMethods;
    std::ptr::eq(methods, &IO_METHODS_V1)
        || std::ptr::eq(methods, &IO_METHODS_V2)
        || std::ptr::eq(methods, &IO_METHODS_V3)
}

/// Writes gathered for a WAL file: `bytes` go at `offset` onwards.
struct Buffer {
    offset: i64,
    bytes: Vec<u8>,
}

impl Buffer {
    /// The file offsets it holds: `[start, end)`.
    fn span(&self) -> (i64, i64) {
        (self.offset, self.offset + self.bytes.len() as i64)
    }
}

/// SAFETY: `vfs` is this shim's registered struct.
unsafe fn base_of<'a>(vfs: *mut ffi::sqlite3_vfs) -> &'a Base {
    &*((*vfs).pAppData as *const Base)
}

/// SAFETY: `file` is a block of this shim's, opened by `x_open` (its inner file is open).
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, Option<&'a mut Buffer>) {
    let file = file as *mut ShimFile;
    ((*file).inner, (*file).buffer.as_mut())
}

/// SAFETY: `inner` is an open file of the wrapped VFS.
unsafe fn inner_methods<'a>(inner: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*inner).pMethods
}

/// Writes out what `buffer` holds, in as few calls as the wrapped VFS takes, and empties it
/// whatever the outcome. Only a write, a sync and a close flush, and SQLite hears each of their
/// errors and gives up the transaction the bytes belong to (a commit's are written at its
/// sync, before it publishes them), so bytes a failed write left are never wanted again; kept,
/// they could land over frames another connection writes at the same offsets next.
/// SAFETY: `inner` is an open file of the wrapped VFS.
unsafe fn flush(inner: *mut ffi::sqlite3_file, buffer: Option<&mut Buffer>) -> c_int {
    let Some(buffer) = buffer else {
        return ffi::SQLITE_OK;
    };
    let Some(write) = inner_methods(inner).xWrite else {
        buffer.bytes.clear();
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut written = 0;
    let mut rc = ffi::SQLITE_OK;
    while written < buffer.bytes.len() {
        let chunk = &buffer.bytes[written..(written + MAX_WRITE_BYTES).min(buffer.bytes.len())];
        // At most MAX_WRITE_BYTES: fits a c_int.
        rc = write(
            inner,
            chunk.as_ptr() as *const c_void,
            chunk.len() as c_int,
            buffer.offset + written as i64,
        );
        if rc != ffi::SQLITE_OK {
            break;
        }
        written += chunk.len();
    }
    buffer.offset += written as i64;
    buffer.bytes.clear();
    rc
}

static IO_METHODS_V1: ffi::sqlite3_io_methods = io_methods(1);
static IO_METHODS_V2: ffi::sqlite3_io_methods = io_methods(2);
static IO_METHODS_V3: ffi::sqlite3_io_methods = io_methods(3);

/// The shim's methods, at the wrapped file's version: SQLite looks for shared memory and
/// memory-mapped reads by the version, so the shim offers exactly what the wrapped file does.
const fn io_methods(version: c_int) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: version,
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
        xShmMap: if version >= 2 { Some(x_shm_map) } else { None },
        xShmLock: if version >= 2 { Some(x_shm_lock) } else { None },
        xShmBarrier: if version >= 2 {
            Some(x_shm_barrier)
        } else {
            None
        },
        xShmUnmap: if version >= 2 {
            Some(x_shm_unmap)
        } else {
            None
        },
        xFetch: if version >= 3 { Some(x_fetch) } else { None },
        xUnfetch: if version >= 3 { Some(x_unfetch) } else { None },
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let out = file as *mut ShimFile;
    if out.is_null() {
        return ffi::SQLITE_CANTOPEN;
    }
    // A failed open must leave pMethods null, so SQLite does not call xClose on it.
    (*out).base.pMethods = null();
    (*out).inner = null_mut();
    (*out).buffer = null_mut();
    (*out).peer = null_mut();
    let base = base_of(vfs);
    let Some(open) = (*base.vfs).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    let Ok(size) = c_int::try_from(base.inner_size) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let inner = ffi::sqlite3_malloc(size) as *mut ffi::sqlite3_file;
    if inner.is_null() {
        return ffi::SQLITE_NOMEM;
    }
    std::ptr::write_bytes(inner as *mut u8, 0, base.inner_size);
    let rc = open(base.vfs, name, inner, flags, out_flags);
    if rc != ffi::SQLITE_OK || (*inner).pMethods.is_null() {
        // An open that failed but set its methods still wants its close.
        if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
            close(inner);
        }
        ffi::sqlite3_free(inner as *mut c_void);
        return if rc == ffi::SQLITE_OK {
            ffi::SQLITE_CANTOPEN
        } else {
            rc
        };
    }
    (*out).inner = inner;
    (*out).base.pMethods = match (*(*inner).pMethods).iVersion {
        v if v >= 3 => &IO_METHODS_V3,
        2 => &IO_METHODS_V2,
        _ => &IO_METHODS_V1,
    };
    if flags & ffi::SQLITE_OPEN_WAL != 0 && !name.is_null() {
        // The WAL's database file: the same connection opened it first, through this shim.
        let db = ffi::sqlite3_database_file_object(name);
        if is_shim_file(db) && powersafe_overwrite(db as *mut ShimFile) {
            let db = db as *mut ShimFile;
            (*out).buffer = Box::into_raw(Box::new(Buffer {
                offset: 0,
                bytes: Vec::new(),
            }));
            (*out).peer = db;
            (*db).peer = out;
        }
    }
    ffi::SQLITE_OK
}

/// Whether the database's device promises that a write changes no byte outside it. Without
/// that SQLite pads a commit to a sector boundary, syncing in the middle of the padding and
/// publishing the commit before the rest of the padding is synced: those bytes could then sit
/// in the buffer while a reader looks for them, so such a WAL is not buffered.
/// SAFETY: `db` is an open file of this shim's.
unsafe fn powersafe_overwrite(db: *mut ShimFile) -> bool {
    let inner = (*db).inner;
    let characteristics = match inner_methods(inner).xDeviceCharacteristics {
        Some(characteristics) => characteristics(inner),
        None => 0,
    };
    characteristics & ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE != 0
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let out = file as *mut ShimFile;
    if !(*out).peer.is_null() {
        (*(*out).peer).peer = null_mut();
        (*out).peer = null_mut();
    }
    let (inner, buffer) = parts(file);
    let flushed = flush(inner, buffer);
    if !(*out).buffer.is_null() {
        drop(Box::from_raw((*out).buffer));
        (*out).buffer = null_mut();
    }
    let closed = match inner_methods(inner).xClose {
        Some(close) => close(inner),
        None => ffi::SQLITE_OK,
    };
    ffi::sqlite3_free(inner as *mut c_void);
    (*out).inner = null_mut();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (inner, buffer) = parts(file);
    let Some(read) = inner_methods(inner).xRead else {
        return ffi::SQLITE_IOERR_READ;
    };
    let (Some(buffer), Ok(len), false) = (buffer, usize::try_from(amount), buf.is_null()) else {
        return read(inner, buf, amount, offset);
    };
    let (start, end) = (offset, offset + len as i64);
    let (held_start, held_end) = buffer.span();
    // Wholly in the buffer (frames of the open transaction read back): the file is not read.
    let rc = if held_start <= start && end <= held_end {
        ffi::SQLITE_OK
    } else {
        read(inner, buf, amount, offset)
    };
    if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ {
        return rc;
    }
    // What the buffer holds is newer than the file: laid over what the file gave. Served
    // here rather than by flushing, so that a read never fails on a write still pending (a
    // full disk fails the write, never the read).
    let (from, to) = (start.max(held_start), end.min(held_end));
    if from < to {
        let out = std::slice::from_raw_parts_mut(buf as *mut u8, len);
        let src = &buffer.bytes[(from - held_start) as usize..(to - held_start) as usize];
        out[(from - start) as usize..(to - start) as usize].copy_from_slice(src);
    }
    if rc == ffi::SQLITE_IOERR_SHORT_READ {
        // The file ended inside the read: whole only if the buffer reaches from the file's end
        // to the read's end.
        let mut file_end = 0;
        let sized = match inner_methods(inner).xFileSize {
            Some(file_size) => file_size(inner, &mut file_end),
            None => ffi::SQLITE_IOERR_FSTAT,
        };
        if sized == ffi::SQLITE_OK && held_start <= file_end.max(start) && held_end >= end {
            return ffi::SQLITE_OK;
        }
    }
    rc
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (inner, buffer) = parts(file);
    let (Some(buffer), Ok(len)) = (buffer, usize::try_from(amount)) else {
        return match inner_methods(inner).xWrite {
            Some(write) => write(inner, buf, amount, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        };
    };
    if buf.is_null() {
        return ffi::SQLITE_IOERR_WRITE;
    }
    let follows = buffer.span().1 == offset;
    if !buffer.bytes.is_empty() && !follows {
        let rc = flush(inner, Some(&mut *buffer));
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if buffer.bytes.is_empty() {
        buffer.offset = offset;
    }
    buffer
        .bytes
        .extend_from_slice(std::slice::from_raw_parts(buf as *const u8, len));
    if buffer.bytes.len() >= MAX_BUFFER_BYTES {
        return flush(inner, Some(buffer));
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // What lies past the new end would be cut off anyway: dropped, not written (on a full disk
    // writing it first could stop the truncation that frees the space). What stays below the
    // new end is written later, which ends the same.
    let (inner, buffer) = parts(file);
    if let Some(buffer) = buffer {
        let keep = (size - buffer.offset).clamp(0, buffer.bytes.len() as i64);
        buffer.bytes.truncate(keep as usize);
    }
    match inner_methods(inner).xTruncate {
        Some(truncate) => truncate(inner, size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    }
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let (inner, buffer) = parts(file);
    match (flush(inner, buffer), inner_methods(inner).xSync) {
        (ffi::SQLITE_OK, Some(sync)) => sync(inner, flags),
        (ffi::SQLITE_OK, None) => ffi::SQLITE_IOERR_FSYNC,
        (failed, _) => failed,
    }
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    let (inner, buffer) = parts(file);
    let rc = match inner_methods(inner).xFileSize {
        Some(file_size) => file_size(inner, size),
        None => ffi::SQLITE_IOERR_FSTAT,
    };
    // The size the file will have once the buffer is written: not flushed (see `x_read`).
    if let (ffi::SQLITE_OK, Some(buffer), false) = (rc, buffer, size.is_null()) {
        if !buffer.bytes.is_empty() {
            *size = (*size).max(buffer.span().1);
        }
    }
    rc
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xLock {
        Some(lock) => lock(inner, level),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xUnlock {
        Some(unlock) => unlock(inner, level),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xCheckReservedLock {
        Some(check) => check(inner, out),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // Not flushed: the controls SQLite sends a WAL are flags and size hints, and it ignores
    // their errors.
    let (inner, _) = parts(file);
    match inner_methods(inner).xFileControl {
        Some(control) => control(inner, op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xSectorSize {
        Some(sector_size) => sector_size(inner),
        None => 4096,
    }
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xDeviceCharacteristics {
        Some(characteristics) => characteristics(inner),
        None => 0,
    }
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xShmMap {
        Some(map) => map(inner, region, size, extend, out),
        None => ffi::SQLITE_IOERR_SHMMAP,
    }
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    let (inner, _) = parts(file);
    let rc = match inner_methods(inner).xShmLock {
        Some(lock) => lock(inner, offset, n, flags),
        None => ffi::SQLITE_IOERR_SHMLOCK,
    };
    let released = flags == ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE
        && offset <= WAL_WRITE_LOCK
        && offset + n > WAL_WRITE_LOCK;
    let wal = (*(file as *mut ShimFile)).peer;
    if rc == ffi::SQLITE_OK && released && !wal.is_null() {
        // The write transaction is over. A commit's bytes were written at its sync, so what
        // is left belongs to one rolled back (frames it spilled): stale, and from now on
        // another connection may write those very offsets, which a later flush would
        // overwrite and a read of ours would cover. (Held for a connection's life, as the
        // simulator's is, the lock is never released; with no other writer, stale bytes are
        // only written before being overwritten.)
        if let Some(buffer) = (*wal).buffer.as_mut() {
            buffer.bytes.clear();
        }
    }
    rc
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    let (inner, _) = parts(file);
    if let Some(barrier) = inner_methods(inner).xShmBarrier {
        barrier(inner);
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xShmUnmap {
        Some(unmap) => unmap(inner, delete),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (inner, buffer) = parts(file);
    let pending = buffer.is_some_and(|b| !b.bytes.is_empty());
    match inner_methods(inner).xFetch {
        // A map would not show the pending writes: no map, and SQLite reads instead.
        Some(fetch) if !pending => fetch(inner, offset, amount, out),
        _ => {
            if !out.is_null() {
                *out = null_mut();
            }
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    let (inner, _) = parts(file);
    match inner_methods(inner).xUnfetch {
        Some(unfetch) => unfetch(inner, offset, page),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let base = base_of(vfs);
    match (*base.vfs).xDelete {
        Some(delete) => delete(base.vfs, name, sync_dir),
        None => ffi::SQLITE_IOERR_DELETE,
    }
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let base = base_of(vfs);
    match (*base.vfs).xAccess {
        Some(access) => access(base.vfs, name, flags, out),
        None => ffi::SQLITE_IOERR_ACCESS,
    }
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    size: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base_of(vfs);
    match (*base.vfs).xFullPathname {
        Some(full) => full(base.vfs, name, size, out),
        None => ffi::SQLITE_CANTOPEN,
    }
}

unsafe extern "C" fn x_randomness(
    vfs: *mut ffi::sqlite3_vfs,
    size: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base_of(vfs);
    match (*base.vfs).xRandomness {
        Some(randomness) => randomness(base.vfs, size, out),
        None => 0,
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let base = base_of(vfs);
    match (*base.vfs).xSleep {
        Some(sleep) => sleep(base.vfs, micros),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let base = base_of(vfs);
    match (*base.vfs).xCurrentTime {
        Some(now) => now(base.vfs, out),
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    size: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base_of(vfs);
    match (*base.vfs).xGetLastError {
        Some(last) => last(base.vfs, size, out),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    let base = base_of(vfs);
    if (*base.vfs).iVersion >= 2 {
        if let Some(now) = (*base.vfs).xCurrentTimeInt64 {
            return now(base.vfs, out);
        }
    }
    let mut days = 0.0;
    let rc = x_current_time(vfs, &mut days);
    if rc == ffi::SQLITE_OK && !out.is_null() {
        *out = (days * 86_400_000.0) as ffi::sqlite3_int64;
    }
    rc
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{Connection, OpenFlags};

    use super::register;

    fn open(path: &Path, vfs: &str) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA cache_size = 10;")
            .unwrap();
        conn
    }

    fn count(conn: &Connection, v: &str) -> i64 {
        conn.query_row("SELECT count(*) FROM t WHERE v = ?1", [v], |r| r.get(0))
            .unwrap()
    }

    /// A transaction larger than its connection's cache spills frames into the WAL buffer, then
    /// rolls back; a second connection writes the same offsets and commits. The first must read
    /// the second's rows, not its own stale frames, and its next commit must not write them
    /// over the second's.
    #[test]
    fn a_rolled_back_transactions_frames_never_cover_another_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.db");
        let vfs = register(None).unwrap();
        let a = open(&path, &vfs);
        a.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        let b = open(&path, &vfs);
        let (a_text, b_text) = ("a".repeat(500), "b".repeat(100));
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        for k in 0..500 {
            a.execute("INSERT INTO t VALUES (?1, ?2)", (k, &a_text))
                .unwrap();
        }
        a.execute_batch("ROLLBACK").unwrap();
        b.execute_batch("BEGIN IMMEDIATE").unwrap();
        for k in 0..50 {
            b.execute("INSERT INTO t VALUES (?1, ?2)", (k, &b_text))
                .unwrap();
        }
        b.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&a, &b_text), 50);
        a.execute("INSERT INTO t VALUES (1000, 'a')", []).unwrap();
        drop((a, b));
        let plain = Connection::open(&path).unwrap();
        assert_eq!(count(&plain, &b_text), 50);
        assert_eq!(count(&plain, "a"), 1);
        assert_eq!(count(&plain, &a_text), 0);
        let integrity: String = plain
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }
}
