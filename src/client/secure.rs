//! go-plugin's `SecureConfig`: a plugin binary runs only with the SHA-256
//! the host expects.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Step};

/// go-plugin's `SecureConfig`: the plugin binary must have this SHA-256,
/// or it is not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureConfig {
    sha256: [u8; 32],
}

impl SecureConfig {
    /// The SHA-256 the binary must have, as 64 hex digits (`sha256sum`).
    pub fn sha256_hex(hex: &str) -> Result<SecureConfig> {
        let hex = hex.trim();
        let mut sha256 = [0u8; 32];
        let valid = hex.len() == 64
            && hex.is_ascii()
            && sha256.iter_mut().enumerate().all(|(i, byte)| {
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map(|b| *byte = b)
                    .is_ok()
            });
        if valid {
            Ok(SecureConfig { sha256 })
        } else {
            Err(Error::client(
                "",
                Step::SecureConfig,
                format!("{hex:?} is not a SHA-256 checksum (64 hex digits)"),
            ))
        }
    }

    /// The SHA-256 the binary must have.
    pub fn sha256(sha256: [u8; 32]) -> SecureConfig {
        SecureConfig { sha256 }
    }

    /// Checks the file at `path`: `Ok(())`, or the checksum it has.
    pub(super) fn check(&self, path: &Path) -> std::result::Result<(), String> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {} to check it: {e}", path.display()))?;
        let mut context = openssl::sha::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => context.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        let found = context.finish();
        if found == self.sha256 {
            Ok(())
        } else {
            Err(format!(
                "checksums did not match: {} has SHA-256 {}, the host expects {}",
                path.display(),
                hex(found.as_ref()),
                hex(&self.sha256)
            ))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `command`'s program as the path it runs: with a slash, relative to the
/// command's directory when it has one (std changes directory before
/// `exec`); else the first match in `PATH`.
pub(super) fn resolve_program(program: &std::ffi::OsStr, dir: Option<&Path>) -> PathBuf {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return match dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_as_command_runs_them() {
        let sh = resolve_program("sh".as_ref(), None);
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(
            resolve_program("./p".as_ref(), Some(Path::new("/opt/x"))),
            Path::new("/opt/x/./p")
        );
        assert_eq!(
            resolve_program("/bin/p".as_ref(), Some(Path::new("/opt"))),
            Path::new("/bin/p")
        );
    }

    #[test]
    fn checksums_parse_from_hex() {
        let hex = "ab".repeat(32);
        assert_eq!(
            SecureConfig::sha256_hex(&hex).unwrap(),
            SecureConfig::sha256([0xab; 32])
        );
        for bad in [
            "",
            "ab",
            &"zz".repeat(32),
            &"ab".repeat(33),
            &"é".repeat(32),
        ] {
            assert!(SecureConfig::sha256_hex(bad).is_err(), "{bad:?}");
        }
    }
}
