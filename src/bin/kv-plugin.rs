//! `kv-plugin`: go-plugin's KV example plugin, in Rust.
//!
//! A drop-in for the Go and Python KV plugins of go-plugin's `examples/grpc`:
//! same handshake (app protocol 1, `BASIC_PLUGIN=hello`), same service
//! (`/proto.KV/Get`, `/proto.KV/Put`), same files (`kv_<key>` in the working
//! directory, holding the value and a trailer naming the plugin). Deliberate
//! differences: a missing key answers `NOT_FOUND` (the others answer
//! `UNKNOWN`), and a key that is not a plain file name is refused with
//! `INVALID_ARGUMENT` instead of being pasted into a path.

use std::io::{self, ErrorKind, Write};
use std::process::ExitCode;

use goplugin::grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use goplugin::proto::kv::{Empty, GetRequest, GetResponse, Kv, PutRequest, create_kv};
use goplugin::{BlockingPool, Error, HandshakeConfig};

/// go-plugin's KV example handshake.
const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "BASIC_PLUGIN",
    magic_cookie_value: "hello",
};

/// Appended to every stored value, as the Go and Python plugins do.
const TRAILER: &[u8] = b"\n\nWritten from plugin-rust";

/// Longest file name on common Linux file systems (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Concurrent file operations; more callers queue.
const WORKERS: usize = 16;

#[derive(Clone)]
struct KvStore {
    pool: BlockingPool,
}

/// The file for `key`: `kv_<key>` in the working directory, exactly the name
/// the Go and Python plugins use, so the stores are interchangeable. Keys
/// that would not be one plain file name there are refused.
fn file_name(key: &str) -> Result<String, RpcStatus> {
    let name = format!("kv_{key}");
    let problem = if key.is_empty() {
        Some("is empty")
    } else if key.contains('/') {
        Some("contains '/'")
    } else if key.contains('\0') {
        Some("contains a NUL byte")
    } else if key == "." || key == ".." {
        Some("is '.' or '..'")
    } else if name.len() > NAME_MAX {
        Some("is too long")
    } else {
        None
    };
    match problem {
        None => Ok(name),
        Some(problem) => Err(RpcStatus::with_message(
            RpcStatusCode::INVALID_ARGUMENT,
            format!(
                "invalid key {key:?}: it {problem}; a key must be 1 to {} bytes, must not be \
                 '.' or '..', and must not contain '/' or NUL",
                NAME_MAX - 3
            ),
        )),
    }
}

fn io_status(action: &str, file: &str, err: io::Error) -> RpcStatus {
    // Conditions that may pass (a full disk, an interrupted call) are
    // UNAVAILABLE, so a caller may retry; the rest is INTERNAL.
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

impl Kv for KvStore {
    fn get(&mut self, _ctx: RpcContext<'_>, req: GetRequest, sink: UnarySink<GetResponse>) {
        self.pool.unary(sink, move || {
            let file = file_name(&req.key)?;
            let value = std::fs::read(&file).map_err(|err| match err.kind() {
                ErrorKind::NotFound => RpcStatus::with_message(
                    RpcStatusCode::NOT_FOUND,
                    format!("no value for key {:?}: {file} does not exist", req.key),
                ),
                _ => io_status("read", &file, err),
            })?;
            let mut resp = GetResponse::new();
            resp.set_value(value);
            Ok(resp)
        });
    }

    fn put(&mut self, _ctx: RpcContext<'_>, mut req: PutRequest, sink: UnarySink<Empty>) {
        self.pool.unary(sink, move || {
            let file = file_name(&req.key)?;
            let mut content = req.take_value();
            content.extend_from_slice(TRAILER);
            std::fs::write(&file, content).map_err(|err| io_status("write", &file, err))?;
            Ok(Empty::new())
        });
    }
}

fn main() -> ExitCode {
    // Logs are hclog JSON on stderr, which the host re-levels; a second
    // logger cannot exist in this binary, so the error is impossible.
    let _ = goplugin::logging::init(log::LevelFilter::Info);
    let store = KvStore {
        pool: BlockingPool::new(WORKERS),
    };
    match goplugin::serve(HANDSHAKE, create_kv(store)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ Error::NotLaunchedByHost { .. }) => {
            // Plain text, as go-plugin prints it: a person ran the binary.
            let _ = writeln!(io::stderr(), "{err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            log::error!("kv-plugin cannot serve: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(file_name(key).ok().as_deref(), Some(name), "{key:?}");
        }
        assert!(file_name(&"k".repeat(252)).is_ok());
    }

    #[test]
    fn keys_that_are_not_one_file_name_are_refused() {
        let long = "k".repeat(253);
        for key in [
            "",
            "a/b",
            "../x",
            "/etc/passwd",
            "a\0b",
            ".",
            "..",
            long.as_str(),
        ] {
            let status = file_name(key).expect_err(key);
            assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT, "{key:?}");
            assert!(status.message().contains("invalid key"), "{key:?}");
        }
    }
}
