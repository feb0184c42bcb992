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

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use goplugin::grpcio::{RpcStatus, RpcStatusCode};

/// What `kv-plugin` appends to every stored value, as the Go and Python KV
/// plugins do.
pub const TRAILER: &[u8] = b"\n\nWritten from plugin-rust";

/// Prefix of every key's file name, as in the Go and Python plugins.
const KEY_PREFIX: &str = "kv_";

/// Prefix of temporary files; never a key's file.
const TEMP_PREFIX: &str = ".kvtmp-";

/// File-name limit assumed when the file system does not say (`NAME_MAX`).
const DEFAULT_NAME_MAX: usize = 255;

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

    /// The bytes stored under `key` (value and trailer).
    pub fn get(&self, key: &str) -> Result<Vec<u8>, RpcStatus> {
        let name = self.file_name(key)?;
        fs::read(self.dir.join(&name)).map_err(|err| match err.kind() {
            ErrorKind::NotFound => RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("no value for key {key:?}: {name} does not exist"),
            ),
            _ => io_status("read", &name, &err),
        })
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

    fn write_then_rename(&self, temp: &Path, name: &str, content: &[u8]) -> Result<(), RpcStatus> {
        let temp_name = temp
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(temp)
            .map_err(|err| io_status("create", &temp_name, &err))?;
        file.write_all(content)
            .map_err(|err| io_status("write", &temp_name, &err))?;
        if self.durability == Durability::Durable {
            file.sync_all()
                .map_err(|err| io_status("sync", &temp_name, &err))?;
        }
        drop(file);
        fs::rename(temp, self.dir.join(name)).map_err(|err| io_status("replace", name, &err))?;
        if self.durability == Durability::Durable {
            self.dir_handle
                .sync_all()
                .map_err(|err| io_status("sync the directory of", name, &err))?;
        }
        Ok(())
    }

    /// Removes `.kvtmp-<pid>-*` files of processes that no longer run.
    /// Files of live processes (another plugin sharing the directory) are
    /// left alone: they are in the middle of a `Put`.
    fn remove_orphaned_temp_files(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(pid) = temp_file_pid(name.as_bytes()) else {
                continue;
            };
            if pid != self.pid && !process_exists(pid) {
                match fs::remove_file(entry.path()) {
                    Err(err) if err.kind() != ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
            }
        }
        Ok(())
    }
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
    use proptest::prelude::*;

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
        let status = store.get("adir").unwrap_err();
        assert_eq!(status.code(), RpcStatusCode::INTERNAL);
        assert!(
            status.message().starts_with("cannot read kv_adir: "),
            "{}",
            status.message()
        );
        let status = store.put("adir", b"x".to_vec()).unwrap_err();
        assert_eq!(status.code(), RpcStatusCode::INTERNAL);
        assert!(
            status.message().starts_with("cannot replace kv_adir: "),
            "{}",
            status.message()
        );
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
