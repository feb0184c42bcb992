//! Which files to generate: the listed ones and every file they import,
//! found on disk in the include paths, with an error that names the
//! importing file and the paths searched when one is not.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::source;

/// The files the `protobuf` crate brings (`::protobuf::well_known_types`,
/// `::protobuf::descriptor`): imported freely, never generated.
pub(crate) const PROVIDED: &[&str] = &[
    "google/protobuf/any.proto",
    "google/protobuf/api.proto",
    "google/protobuf/descriptor.proto",
    "google/protobuf/duration.proto",
    "google/protobuf/empty.proto",
    "google/protobuf/field_mask.proto",
    "google/protobuf/source_context.proto",
    "google/protobuf/struct.proto",
    "google/protobuf/timestamp.proto",
    "google/protobuf/type.proto",
    "google/protobuf/wrappers.proto",
];

/// A file to generate.
#[derive(Debug, Clone)]
pub(crate) struct ProtoFile {
    /// Its name as imports say it, relative to its include path
    /// (`sdk/logical/identity.proto`).
    pub(crate) name: String,
    /// Where it is on disk.
    pub(crate) path: PathBuf,
    /// The files it imports that are generated too (not [`PROVIDED`]).
    pub(crate) imports: Vec<String>,
}

/// The listed `protos` and everything they import, listed ones first.
pub(crate) fn walk(protos: &[&Path], includes: &[&Path]) -> Result<Vec<ProtoFile>, Error> {
    let mut files: Vec<ProtoFile> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue: Vec<(String, PathBuf)> = Vec::new();
    for proto in protos {
        if !proto.is_file() {
            return Err(Error::new(format!(
                "{} does not exist or is not a file",
                proto.display()
            )));
        }
        let name = relative_name(proto, includes)?;
        queue.push((name, proto.to_path_buf()));
    }
    let mut next = 0;
    while next < queue.len() {
        let (name, path) = queue[next].clone();
        next += 1;
        if !seen.insert(name.clone()) {
            continue;
        }
        let text = fs::read_to_string(&path)
            .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
        let mut imports = Vec::new();
        for (import, line) in source::imports(&source::tokens(&text)) {
            if PROVIDED.contains(&import.as_str()) {
                continue;
            }
            let found = includes
                .iter()
                .map(|include| include.join(&import))
                .find(|candidate| candidate.is_file())
                .ok_or_else(|| missing_import(&path, line, &import, includes))?;
            imports.push(import.clone());
            queue.push((import, found));
        }
        files.push(ProtoFile {
            name,
            path,
            imports,
        });
    }
    Ok(files)
}

/// `proto`'s name relative to the first include path that holds it.
fn relative_name(proto: &Path, includes: &[&Path]) -> Result<String, Error> {
    let absolute = |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let proto_abs = absolute(proto);
    for include in includes {
        let relative = proto
            .strip_prefix(include)
            .ok()
            .map(Path::to_path_buf)
            .or_else(|| {
                proto_abs
                    .strip_prefix(absolute(include))
                    .ok()
                    .map(Path::to_path_buf)
            });
        if let Some(relative) = relative {
            let parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            return Ok(parts.join("/"));
        }
    }
    Err(Error::new(format!(
        "{} is in none of the include paths ({}): give the directory its imports are \
         relative to (often the one that holds it) in `includes`",
        proto.display(),
        searched(includes)
    )))
}

fn missing_import(importer: &Path, line: usize, import: &str, includes: &[&Path]) -> Error {
    Error::new(format!(
        "{}:{line}: imports \"{import}\", which is in none of the include paths ({}): \
         add the directory that holds {import} to `includes`",
        importer.display(),
        searched(includes)
    ))
}

fn searched(includes: &[&Path]) -> String {
    if includes.is_empty() {
        return "none given".to_string();
    }
    includes
        .iter()
        .map(|include| include.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::write;

    #[test]
    fn imports_are_followed_and_provided_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(
            dir.path(),
            "top.proto",
            "import \"a/dep.proto\";\nimport \"google/protobuf/empty.proto\";",
        );
        write(dir.path(), "a/dep.proto", "import \"a/leaf.proto\";");
        write(dir.path(), "a/leaf.proto", "");
        let files = walk(&[&top], &[dir.path()]).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["top.proto", "a/dep.proto", "a/leaf.proto"]);
        assert_eq!(files[0].imports, ["a/dep.proto"]);
    }

    #[test]
    fn a_missing_import_names_the_importer_and_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(
            dir.path(),
            "top.proto",
            "syntax = \"proto3\";\nimport \"nope/x.proto\";",
        );
        let err = walk(&[&top], &[dir.path()]).unwrap_err().to_string();
        assert!(
            err.contains("top.proto:2: imports \"nope/x.proto\""),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn a_proto_outside_the_includes_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(dir.path(), "x/top.proto", "");
        let err = walk(&[&top], &[&dir.path().join("y")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("top.proto is in none of the include paths"),
            "{err}"
        );
    }
}
