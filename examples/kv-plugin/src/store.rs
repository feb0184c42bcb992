//! The KV store: one file `kv_<key>` per key in a directory, written so that
//! nothing is ever lost or torn.
//!
//! - **Atomic replace.** A `Put` writes the new content to a temporary file
//!   in the same directory and renames it over `kv_<key>`. A reader opens
//!   either the old file or the new one, never a half-written one, and two
//!   `Put`s to one key never interleave: the last rename wins whole.
//! - **Temporary files** are named `.kvtmp-<pid>-<n>`: unique per process and
//!   call, and never of the form `kv_<key>`, so never visible as a key. Those
//!   left by a process that crashed are removed when a store opens.
//! - **Durability.** In [`Durability::Durable`] mode (the default) a `Put`
//!   returns only after the file's data and the directory entry are on
//!   disk (`fsync` of both), so an acknowledged value survives a plugin or
//!   OS crash. [`Durability::Relaxed`] skips both `fsync`s.
//! - **Keys** must be one plain file name: see [`Store::file_name`].
//! - **Only regular files.** A key's file is opened without following a
//!   symbolic link and without blocking (`O_NOFOLLOW | O_NONBLOCK`), and
//!   anything but a regular file (a link, a FIFO, a directory, a socket,
//!   a device) is `FAILED_PRECONDITION` naming the file: a planted `kv_x`
//!   can neither point a `Get` outside the store nor hang it.
//! - **Never blocking gRPC's thread.** [`Store::get_cached`] answers only
//!   from the kernel's caches (`openat2` with `RESOLVE_CACHED`, `preadv2`
//!   with `RWF_NOWAIT`) and says when the disk is needed, so `kv-plugin`
//!   answers a `Get` inline when it can and from its pool otherwise.
//! - **Mode 0644 whatever the umask**, for values and temporary files: the
//!   mode go-plugin's Go example gets under the usual umask 022, so either
//!   plugin can take over a directory, and never writable by group or
//!   others (under umask 000 they would be, and a local user could change a
//!   value in place).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use goplugin::grpcio::{RpcStatus, RpcStatusCode};
use goplugin::log;

/// What `kv-plugin` appends to every stored value, as the Go and Python KV
/// plugins do.
pub const TRAILER: &[u8] = b"\n\nWritten from plugin-rust";

/// Prefix of every key's file name, as in the Go and Python plugins.
const KEY_PREFIX: &str = "kv_";

/// Prefix of temporary files; never a key's file.
const TEMP_PREFIX: &str = ".kvtmp-";

/// File-name limit assumed when the file system does not say (`NAME_MAX`).
const DEFAULT_NAME_MAX: usize = 255;

/// The mode of every file the store writes: see the module docs.
const FILE_MODE: u32 = 0o644;

/// How a key's file is opened: read-only, never through a symbolic link,
/// never waiting for a FIFO's writer, closed at `exec`.
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// Whether a `Put` waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync` the file and the directory before answering (default).
    Durable,
    /// Answer once the rename is done; a crash of the OS (not of the
    /// plugin) may lose the last writes.
    Relaxed,
}

/// A directory of `kv_<key>` files.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Kept open to `fsync` the directory after renames.
    dir_handle: File,
    durability: Durability,
    max_value: usize,
    /// Appended to every value a `Put` stores.
    trailer: &'static [u8],
    name_max: usize,
    pid: u32,
    next_temp: AtomicU64,
}

impl Store {
    /// Opens the store in `dir` and removes temporary files that crashed
    /// processes left behind. Every value a `Put` stores gets `trailer`
    /// appended ([`TRAILER`] for `kv-plugin`, nothing for `counter-plugin`).
    pub fn open(
        dir: &Path,
        durability: Durability,
        max_value: usize,
        trailer: &'static [u8],
    ) -> io::Result<Store> {
        let dir_handle = File::open(dir)?;
        let store = Store {
            dir: dir.to_path_buf(),
            dir_handle,
            durability,
            max_value,
            trailer,
            name_max: name_max(dir),
            pid: std::process::id(),
            next_temp: AtomicU64::new(0),
        };
        store.remove_orphaned_temp_files()?;
        Ok(store)
    }

    /// The file name for `key`: `kv_<key>`, exactly as the Go and Python
    /// plugins name it, so the stores are interchangeable. A key that could
    /// not be one plain file name in the directory is refused with
    /// `INVALID_ARGUMENT`: empty, containing `/` or NUL, `.` or `..`, or
    /// longer than the file system's name limit allows.
    pub fn file_name(&self, key: &str) -> Result<String, RpcStatus> {
        file_name(key, self.name_max)
    }

    /// The bytes stored under `key` (value and trailer). May wait for the
    /// disk: call it where blocking is allowed.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, RpcStatus> {
        let name = self.file_name(key)?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(OPEN_FLAGS)
            .open(self.dir.join(&name))
            .map_err(|err| open_status(key, &name, &err))?;
        let len = self.readable_len(&file, &name)?;
        let mut value = Vec::with_capacity(len);
        (&file)
            .read_to_end(&mut value)
            .map_err(|err| io_status("read", &name, &err))?;
        Ok(value)
    }

    /// [`get`](Self::get) from the kernel's caches only, never waiting for
    /// the disk: `Ok(None)` when answering needs it (a path component or a
    /// page not cached, or a kernel without `openat2`/`RWF_NOWAIT`), so the
    /// caller calls `get` where blocking is allowed.
    pub fn get_cached(&self, key: &str) -> Result<Option<Vec<u8>>, RpcStatus> {
        let name = self.file_name(key)?;
        let path = CString::new(name.as_bytes()).map_err(|_| {
            RpcStatus::with_message(
                RpcStatusCode::INVALID_ARGUMENT,
                "a key with a NUL byte".into(),
            )
        })?;
        let file = match open_cached(&self.dir_handle, &path) {
            Ok(fd) => File::from(fd),
            Err(err) if would_block(&err) => return Ok(None),
            Err(err) => return Err(open_status(key, &name, &err)),
        };
        let len = self.readable_len(&file, &name)?;
        let mut value = vec![0u8; len];
        let mut filled = 0;
        loop {
            if filled == value.len() {
                // The file may have grown since fstat: read on.
                value.resize(filled + 4096, 0);
            }
            match read_cached(&file, &mut value[filled..], filled) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if would_block(&err) => return Ok(None),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(io_status("read", &name, &err)),
            }
        }
        value.truncate(filled);
        Ok(Some(value))
    }

    /// The length of a key's file, refused when it is not a regular file
    /// or longer than any value a `Put` could store (with room for another
    /// plugin's trailer): a planted file must not make a `Get` allocate
    /// whatever it says.
    fn readable_len(&self, file: &File, name: &str) -> Result<usize, RpcStatus> {
        let len = regular_file_len(file, name)?;
        let limit = self.max_value.saturating_add(4096);
        if len > limit {
            return Err(RpcStatus::with_message(
                RpcStatusCode::FAILED_PRECONDITION,
                format!(
                    "{name} holds {len} bytes, more than a value may have ({} bytes, \
                     KV_PLUGIN_MAX_VALUE_BYTES)",
                    self.max_value
                ),
            ));
        }
        Ok(len)
    }

    /// Stores `value` and the trailer under `key`, atomically.
    pub fn put(&self, key: &str, mut value: Vec<u8>) -> Result<(), RpcStatus> {
        let name = self.file_name(key)?;
        if value.len() > self.max_value {
            return Err(RpcStatus::with_message(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                format!(
                    "value of {} bytes for key {key:?} is over the limit of {} bytes \
                     (raise it with KV_PLUGIN_MAX_VALUE_BYTES)",
                    value.len(),
                    self.max_value
                ),
            ));
        }
        value.extend_from_slice(self.trailer);
        let seq = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!("{TEMP_PREFIX}{}-{seq}", self.pid));
        let written = self.write_then_rename(&temp, &name, &value);
        if written.is_err() {
            // Best effort: an orphan is also removed at the next start.
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Removes the value under `key`: `Ok(false)` when there was none. A
    /// directory in its place is `FAILED_PRECONDITION`; in durable mode the
    /// removal is on disk before this returns.
    pub fn delete(&self, key: &str) -> Result<bool, RpcStatus> {
        let name = self.file_name(key)?;
        match fs::remove_file(self.dir.join(&name)) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(false),
            Err(err) if err.raw_os_error() == Some(libc::EISDIR) => {
                return Err(not_a_regular_file(&name, "a directory"));
            }
            Err(err) => return Err(io_status("remove", &name, &err)),
        }
        if self.durability == Durability::Durable {
            self.dir_handle
                .sync_all()
                .map_err(|err| io_status("sync the directory of", &name, &err))?;
        }
        Ok(true)
    }

    fn write_then_rename(&self, temp: &Path, name: &str, content: &[u8]) -> Result<(), RpcStatus> {
        let temp_name = temp
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(temp)
            .map_err(|err| io_status("create", &temp_name, &err))?;
        // The umask narrows the mode given at creation; fchmod does not.
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(|err| io_status("set the mode of", &temp_name, &err))?;
        file.write_all(content)
            .map_err(|err| io_status("write", &temp_name, &err))?;
        if self.durability == Durability::Durable {
            file.sync_all()
                .map_err(|err| io_status("sync", &temp_name, &err))?;
        }
        drop(file);
        fs::rename(temp, self.dir.join(name)).map_err(|err| match err.raw_os_error() {
            // Something else than a file is in the way.
            Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST) => RpcStatus::with_message(
                RpcStatusCode::FAILED_PRECONDITION,
                format!(
                    "cannot replace {name}: it is a directory; the store keeps regular files only"
                ),
            ),
            _ => io_status("replace", name, &err),
        })?;
        if self.durability == Durability::Durable {
            self.dir_handle
                .sync_all()
                .map_err(|err| io_status("sync the directory of", name, &err))?;
        }
        Ok(())
    }

    /// Removes `.kvtmp-<pid>-*` files of processes that no longer run.
    /// Files of live processes (another plugin sharing the directory) are
    /// left alone: they are in the middle of a `Put`. So is whatever is not
    /// a regular file of this user's (another user's file in a shared
    /// directory, a planted directory) and whatever cannot be removed: a
    /// warning says so, and the store opens anyway.
    fn remove_orphaned_temp_files(&self) -> io::Result<()> {
        // SAFETY: geteuid cannot fail and takes no memory.
        let uid = unsafe { libc::geteuid() };
        for entry in fs::read_dir(&self.dir)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(pid) = temp_file_pid(name.as_bytes()) else {
                continue;
            };
            if pid == self.pid || process_exists(pid) {
                continue;
            }
            let shown = name.to_string_lossy();
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if !meta.file_type().is_file() || meta.uid() != uid {
                log::warn!(
                    "{shown} is named like a temporary file of the store but is not a regular \
                     file of this user's; left alone"
                );
                continue;
            }
            match fs::remove_file(entry.path()) {
                Err(err) if err.kind() != ErrorKind::NotFound => log::warn!(
                    "cannot remove {shown}, a temporary file a crashed plugin left: {err}; \
                     left alone"
                ),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The status for a key's file that cannot be opened for reading.
fn open_status(key: &str, name: &str, err: &io::Error) -> RpcStatus {
    match err.raw_os_error() {
        Some(libc::ENOENT) => RpcStatus::with_message(
            RpcStatusCode::NOT_FOUND,
            format!("no value for key {key:?}: {name} does not exist"),
        ),
        // O_NOFOLLOW on a link; a socket cannot be opened at all.
        Some(libc::ELOOP | libc::ENXIO) => not_a_regular_file(name, "a symbolic link or a socket"),
        _ => io_status("read", name, err),
    }
}

fn not_a_regular_file(name: &str, what: &str) -> RpcStatus {
    RpcStatus::with_message(
        RpcStatusCode::FAILED_PRECONDITION,
        format!(
            "{name} is {what}, not a regular file; the store reads and writes regular files \
             only: remove it"
        ),
    )
}

/// The length of `file`, or `FAILED_PRECONDITION` when it is not a
/// regular file (a FIFO, a directory, a device).
fn regular_file_len(file: &File, name: &str) -> Result<usize, RpcStatus> {
    let meta = file
        .metadata()
        .map_err(|err| io_status("inspect", name, &err))?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(usize::try_from(meta.len()).unwrap_or(usize::MAX));
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "something else"
    };
    Err(not_a_regular_file(name, what))
}

/// Whether `err` means "the answer needs the disk" (or this kernel cannot
/// say without it).
fn would_block(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAGAIN | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

/// `openat2(dir, name, OPEN_FLAGS)` resolving only through the kernel's
/// lookup cache, never through a link, never out of `dir`.
fn open_cached(dir: &File, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero `open_how` is valid (no flags), then filled in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = OPEN_FLAGS as u64;
    how.resolve = libc::RESOLVE_CACHED | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH;
    // SAFETY: `name` is NUL-terminated and `how` a live, initialised
    // open_how of the size passed; the descriptor returned is new and
    // owned by nobody else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: see above: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `preadv2(RWF_NOWAIT)`: the bytes at `offset` that are in the page
/// cache; `EAGAIN` when they are not.
fn read_cached(file: &File, buf: &mut [u8], offset: usize) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    // SAFETY: one iovec over `buf`, valid for writes of its length.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// See [`Store::file_name`].
pub fn file_name(key: &str, name_max: usize) -> Result<String, RpcStatus> {
    let name = format!("{KEY_PREFIX}{key}");
    let problem = if key.is_empty() {
        Some("is empty")
    } else if key.contains('/') {
        Some("contains '/'")
    } else if key.contains('\0') {
        Some("contains a NUL byte")
    } else if key == "." || key == ".." {
        Some("is '.' or '..'")
    } else if name.len() > name_max {
        Some("is too long")
    } else {
        None
    };
    match problem {
        None => Ok(name),
        Some(problem) => Err(RpcStatus::with_message(
            RpcStatusCode::INVALID_ARGUMENT,
            format!(
                "invalid key {key:?}: it {problem}; a key must be 1 to {} bytes of UTF-8, \
                 must not be '.' or '..', and must not contain '/' or NUL",
                name_max.saturating_sub(KEY_PREFIX.len())
            ),
        )),
    }
}

/// The pid in a temporary file's name `.kvtmp-<pid>-<n>`.
fn temp_file_pid(name: &[u8]) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX.as_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (pid, seq) = rest.split_once('-')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The file system's file-name limit for `dir`.
fn name_max(dir: &Path) -> usize {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return DEFAULT_NAME_MAX;
    };
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
    let limit = unsafe { libc::pathconf(path.as_ptr(), libc::_PC_NAME_MAX) };
    usize::try_from(limit)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_NAME_MAX)
}

/// A status for a failed file operation, naming the file and the OS error.
/// Conditions that may pass (a full disk, an interrupted call) are
/// `UNAVAILABLE`, so a caller may retry; the rest is `INTERNAL`.
fn io_status(action: &str, file: &str, err: &io::Error) -> RpcStatus {
    let code = match err.kind() {
        ErrorKind::StorageFull
        | ErrorKind::QuotaExceeded
        | ErrorKind::Interrupted
        | ErrorKind::TimedOut
        | ErrorKind::WouldBlock => RpcStatusCode::UNAVAILABLE,
        _ => RpcStatusCode::INTERNAL,
    };
    RpcStatus::with_message(code, format!("cannot {action} {file}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_removes_a_value_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Durable, 1024, b"").unwrap();
        store.put("k", b"v".to_vec()).unwrap();
        assert!(store.delete("k").unwrap(), "there was a value");
        assert!(!store.delete("k").unwrap(), "there is none now");
        assert_eq!(store.get("k").unwrap_err().code(), RpcStatusCode::NOT_FOUND);
        fs::create_dir(dir.path().join("kv_d")).unwrap();
        let err = store.delete("d").unwrap_err();
        assert_eq!(err.code(), RpcStatusCode::FAILED_PRECONDITION, "{err:?}");
        assert_eq!(
            store.delete("a/b").unwrap_err().code(),
            RpcStatusCode::INVALID_ARGUMENT
        );
    }
    use proptest::prelude::*;

    fn code(result: Result<impl std::fmt::Debug, RpcStatus>) -> RpcStatusCode {
        result.expect_err("an error").code()
    }

    #[test]
    fn a_link_is_not_followed() {
        let (dir, store) = store(Durability::Relaxed);
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("kv_x")).unwrap();
        assert_eq!(code(store.get("x")), RpcStatusCode::FAILED_PRECONDITION);
        assert_eq!(
            code(store.get_cached("x")),
            RpcStatusCode::FAILED_PRECONDITION
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let (dir, store) = store(Durability::Relaxed);
        let fifo = dir.path().join("kv_f");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for result in [store.get("f").map(drop), store.get_cached("f").map(drop)] {
            let status = result.expect_err("a FIFO");
            assert_eq!(status.code(), RpcStatusCode::FAILED_PRECONDITION);
            assert!(status.message().contains("kv_f is a FIFO"), "{status:?}");
        }
    }

    #[test]
    fn a_planted_file_larger_than_any_value_is_refused() {
        let (dir, store) = store(Durability::Relaxed);
        let big = File::create(dir.path().join("kv_big")).unwrap();
        big.set_len(1 << 40).unwrap(); // sparse: a terabyte it says it holds
        assert_eq!(code(store.get("big")), RpcStatusCode::FAILED_PRECONDITION);
        assert_eq!(
            code(store.get_cached("big")),
            RpcStatusCode::FAILED_PRECONDITION
        );
    }

    #[test]
    fn cached_reads_answer_from_the_cache_and_say_when_they_cannot() {
        let (dir, store) = store(Durability::Durable);
        store.put("k", b"value".to_vec()).unwrap();
        let want = [&b"value"[..], TRAILER].concat();
        assert_eq!(store.get_cached("k").unwrap().as_deref(), Some(&want[..]));
        // A missing file: NOT_FOUND, or "ask get" when the kernel has not
        // cached that the name is absent.
        match store.get_cached("missing") {
            Ok(None) => assert_eq!(code(store.get("missing")), RpcStatusCode::NOT_FOUND),
            other => assert_eq!(code(other), RpcStatusCode::NOT_FOUND),
        }
        // Clean pages of a synced file can be dropped from the page cache
        // (not on tmpfs, which has nowhere else to keep them).
        let file = File::open(dir.path().join("kv_k")).unwrap();
        // SAFETY: fadvise on a descriptor we own.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut fs_info: libc::statfs = unsafe { std::mem::zeroed() };
        let path = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs into a zeroed struct we own.
        assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut fs_info) }, 0);
        if fs_info.f_type != libc::TMPFS_MAGIC {
            assert_eq!(store.get_cached("k").unwrap(), None, "the page was dropped");
        }
        assert_eq!(store.get("k").unwrap(), want);
    }

    #[test]
    fn planted_temporary_files_do_not_stop_the_store() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that cannot exist: pid_max is at most 2^22.
        let planted = dir.path().join(".kvtmp-99999999-1");
        fs::create_dir(&planted).unwrap();
        fs::write(dir.path().join(".kvtmp-99999999-2"), b"orphan").unwrap();
        Store::open(dir.path(), Durability::Relaxed, 1024, TRAILER).expect("opens");
        assert!(planted.is_dir(), "a directory is left alone");
        assert!(
            !dir.path().join(".kvtmp-99999999-2").exists(),
            "an orphan goes"
        );
    }

    fn store(durability: Durability) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), durability, 1024, TRAILER).unwrap();
        (dir, store)
    }

    #[test]
    fn ordinary_keys_map_to_the_reference_file_names() {
        for (key, name) in [
            ("hello", "kv_hello"),
            ("with space", "kv_with space"),
            ("ключ", "kv_ключ"),
            ("...", "kv_..."),
            (".hidden", "kv_.hidden"),
            ("a\\b", "kv_a\\b"),
        ] {
            assert_eq!(file_name(key, 255).ok().as_deref(), Some(name), "{key:?}");
        }
        assert!(file_name(&"k".repeat(252), 255).is_ok());
    }

    #[test]
    fn keys_that_are_not_one_file_name_are_refused() {
        let long = "k".repeat(253);
        let unicode = "ключ".repeat(40);
        for key in [
            "",
            "a/b",
            "../x",
            "/etc/passwd",
            "a\0b",
            ".",
            "..",
            &long,
            &unicode,
        ] {
            let status = file_name(key, 255).expect_err(key);
            assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT, "{key:?}");
            assert!(status.message().contains("invalid key"), "{key:?}");
        }
    }

    #[test]
    fn put_get_roundtrip_in_both_modes() {
        for durability in [Durability::Durable, Durability::Relaxed] {
            let (dir, store) = store(durability);
            store.put("k", b"v1".to_vec()).unwrap();
            store.put("k", b"v2".to_vec()).unwrap();
            assert_eq!(store.get("k").unwrap(), [&b"v2"[..], TRAILER].concat());
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["kv_k"], "no temporary file is left behind");
        }
    }

    #[test]
    fn status_codes() {
        let (_dir, store) = store(Durability::Relaxed);
        assert_eq!(
            store.get("none").unwrap_err().code(),
            RpcStatusCode::NOT_FOUND
        );
        let big = store.put("big", vec![0; 1025]).unwrap_err();
        assert_eq!(big.code(), RpcStatusCode::RESOURCE_EXHAUSTED);
        assert!(
            big.message().contains("limit of 1024 bytes"),
            "{}",
            big.message()
        );
        assert!(store.put("fits", vec![0; 1024]).is_ok());
    }

    #[test]
    fn file_errors_name_the_file() {
        let (dir, store) = store(Durability::Relaxed);
        fs::create_dir(dir.path().join("kv_adir")).unwrap();
        // A directory in the way: FAILED_PRECONDITION, with the file named,
        // for an empty one and one with something in it.
        fs::create_dir(dir.path().join("kv_full")).unwrap();
        fs::write(dir.path().join("kv_full").join("x"), b"x").unwrap();
        for key in ["adir", "full"] {
            let status = store.get(key).unwrap_err();
            assert_eq!(status.code(), RpcStatusCode::FAILED_PRECONDITION);
            assert!(
                status
                    .message()
                    .starts_with(&format!("kv_{key} is a directory")),
                "{}",
                status.message()
            );
            let status = store.put(key, b"x".to_vec()).unwrap_err();
            assert_eq!(status.code(), RpcStatusCode::FAILED_PRECONDITION);
            assert!(
                status
                    .message()
                    .starts_with(&format!("cannot replace kv_{key}: ")),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn opening_removes_only_orphaned_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        // pid 0x7fff_fff0 does not exist (above Linux's pid_max); our own pid does.
        let orphan = dir.path().join(".kvtmp-2147483632-7");
        let live = dir.path().join(format!(".kvtmp-{}-1", std::process::id()));
        let other = dir.path().join(".kvtmp-notapid");
        for path in [&orphan, &live, &other] {
            fs::write(path, b"partial").unwrap();
        }
        Store::open(dir.path(), Durability::Relaxed, 16, TRAILER).unwrap();
        assert!(!orphan.exists(), "orphan removed");
        assert!(live.exists(), "a live process's temp file is kept");
        assert!(other.exists(), "files of other shapes are not ours");
    }

    proptest! {
        #[test]
        fn accepted_keys_are_exactly_one_plain_file_name(key in "\\PC{0,300}|[./a\\x00]{0,4}") {
            match file_name(&key, 255) {
                Ok(name) => {
                    prop_assert_eq!(&name, &format!("kv_{key}"));
                    prop_assert!(name.len() <= 255);
                    let components: Vec<_> = Path::new(&name).components().collect();
                    use std::path::Component;
                    prop_assert_eq!(components.len(), 1);
                    prop_assert!(matches!(components[0], Component::Normal(n) if n == name.as_str()));
                    prop_assert!(!name.starts_with(TEMP_PREFIX));
                }
                Err(status) => {
                    prop_assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT);
                    prop_assert!(key.is_empty() || key.contains(['/', '\0']) || key == "." || key == ".."
                        || key.len() > 252);
                }
            }
        }

        #[test]
        fn temp_names_are_never_keys(pid in any::<u32>(), seq in any::<u64>()) {
            let name = format!("{TEMP_PREFIX}{pid}-{seq}");
            prop_assert!(!name.starts_with(KEY_PREFIX));
            prop_assert_eq!(temp_file_pid(name.as_bytes()), Some(pid));
        }
    }
}
