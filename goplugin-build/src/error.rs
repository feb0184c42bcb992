//! The one error type: a sentence that names what to fix.

use std::fmt;
use std::path::Path;

/// What went wrong, as a sentence that names the file (and, for a mistake
/// in a `.proto`, its line and column), what was expected, what was found,
/// and what to do.
///
/// `Debug` prints the same sentence, so that a build script written as
/// `fn main() -> Result<(), goplugin_build::Error>` shows it as it is.
pub struct Error {
    message: String,
}

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Error {
        Error {
            message: format!("goplugin-build: {}", message.into()),
        }
    }

    pub(crate) fn write(path: &Path, error: std::io::Error) -> Error {
        Error::new(format!("cannot write {}: {error}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_sentence() {
        let error = Error::new("proto/a.proto:3:5: something");
        assert_eq!(
            format!("{error:?}"),
            "goplugin-build: proto/a.proto:3:5: something"
        );
        assert_eq!(error.to_string(), format!("{error:?}"));
    }
}
