//! Code generation for [goplugin](https://crates.io/crates/goplugin)
//! plugins and hosts, from `build.rs`, without `protoc`.
//!
//! One call in `build.rs` turns your `.proto` files into protobuf messages
//! and grpcio services; one macro in your code brings each file in:
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), goplugin_build::Error> {
//!     goplugin_build::compile_protos(&["proto/greeter.proto"], &["proto"])
//! }
//! ```
//!
//! ```text
//! // src/main.rs: the modules `greeter` (messages) and `greeter_grpc`
//! // (the `Greeter` trait, `create_greeter`, `GreeterClient`)
//! goplugin::include_proto!("greeter");
//! ```
//!
//! # What it generates
//!
//! For every proto file, the ones given and every file they import, one
//! file under `$OUT_DIR/goplugin/` holding:
//! - a module named after the file (`greeter`; `github.com.acme.thing.proto`
//!   gives `github_com_acme_thing`), with its messages and enums as
//!   rust-protobuf 3 generates them (plain `pub` fields, `Default`,
//!   `Message`; proto2 required fields are checked when a message is
//!   decoded from the wire, by `goplugin::codec::de`);
//! - when it declares services, a module `NAME_grpc` with, per service
//!   `Foo`: the trait `Foo` (one method per RPC, each answering
//!   `UNIMPLEMENTED` until you write it), `create_foo(impl Foo) ->
//!   grpcio::Service`, and `FooClient` (per RPC `method`, `method_opt`, and
//!   for unary RPCs `method_async`, `method_async_opt`), the API grpcio's own
//!   generator gives.
//!
//! Generated code reaches `grpcio` and `protobuf` through `goplugin`'s
//! re-exports (`::goplugin::grpcio`, `::goplugin::protobuf`): a crate
//! depends on `goplugin` alone, and cannot end up with a second grpcio
//! feature set (and a second build of gRPC's C++ core). `cargo:rerun-if-changed`
//! is printed for every file read.
//!
//! # Names
//!
//! - Service and method names follow grpcio's generator: `service KV` →
//!   `Kv`, `KvClient`, `create_kv`; `rpc GetValue` → `get_value`.
//! - A name that is a Rust keyword or reserved word gets a trailing `_`,
//!   as rust-protobuf does for fields: `rpc Type` → `type_` (with
//!   `type_opt`, `type_async`), `rpc Match` → `match_`, `service Self` →
//!   `Self_`. A client method whose name another one already has (`rpc
//!   GetOpt` next to `rpc Get`'s `get_opt`), or the client's own (`new`,
//!   `spawn`, `clone`), gets a `_` too. The wire paths (`/pkg.Service/Type`)
//!   are always the proto's.
//! - `include_proto!` takes the file's name without `.proto`, as written:
//!   `include_proto!("github.com.acme.thing")`, or with the directories
//!   it has under its include path, `include_proto!("sdk/logical/identity")`;
//!   a file whose name no other generated file has can also be named
//!   without its directories (`include_proto!("identity")`).
//!
//! # Imports
//!
//! A file that a given file imports is found in `includes` and generated
//! too, without being listed. The well-known types
//! (`google/protobuf/empty.proto`, `timestamp.proto`, `duration.proto`,
//! `any.proto`, `struct.proto`, `wrappers.proto`, `field_mask.proto`,
//! `descriptor.proto`, …) need no file on disk: they are the `protobuf`
//! crate's.
//!
//! Generated code names an imported file's module as `super::MODULE`, so
//! each imported file is brought in next to the one that imports it:
//!
//! ```text
//! goplugin::include_proto!("backend");   // imports sdk/logical/identity.proto
//! goplugin::include_proto!("identity");
//! ```
//!
//! Forgetting one is a compile error on a line of the generated code that
//! says which `include_proto!` to add.
//!
//! Two files of one name in different directories (`foo/v1/types.proto`,
//! `bar/v1/types.proto`) are both generated; each is included by its path
//! (`include_proto!("foo/v1/types")`), in a Rust module of its own since
//! both are module `types`. The short name (`include_proto!("types")`)
//! is then a compile error that lists both paths.
//!
//! # What is refused
//!
//! With a message that names the file, line and column: syntax and type
//! errors, duplicate field numbers, an import found in no include path,
//! proto2 groups (rust-protobuf would leave the field out), and a file
//! that imports two files of one name (both would be `super::NAME`).

#![deny(missing_docs)]

mod check;
mod error;
mod imports;
mod messages;
mod names;
mod services;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

pub use error::Error;
use imports::ProtoFile;

/// Generates code for `protos`, looking up imports in `includes`, into
/// `$OUT_DIR/goplugin`, for code that depends on the `goplugin` crate.
///
/// Shorthand for `Builder::new().compile(protos, includes)`; see
/// [`Builder`] for the options.
///
/// # Errors
/// See [`Builder::compile`].
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Error> {
    Builder::new().compile(protos, includes)
}

/// Options for the generator. Made by [`Builder::new`].
#[derive(Debug, Clone)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    runtime: String,
    rerun_if_changed: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// The default options: output under `$OUT_DIR/goplugin`, runtime
    /// paths through `::goplugin`, `rerun-if-changed` lines printed.
    pub fn new() -> Builder {
        Builder {
            out_dir: None,
            runtime: "::goplugin".to_string(),
            rerun_if_changed: true,
        }
    }

    /// Where the generated files go. Default: `$OUT_DIR/goplugin`, where
    /// `goplugin::include_proto!` looks.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.out_dir = Some(dir.into());
        self
    }

    /// The path through which generated code names the crate that
    /// re-exports `grpcio` and `protobuf` and has `codec::de` (the decoder
    /// that checks proto2 required fields). Default: `::goplugin`. (goplugin
    /// itself uses `crate`; a crate that renames its goplugin dependency
    /// gives the new name.)
    pub fn runtime_path(mut self, path: impl Into<String>) -> Builder {
        self.runtime = path.into();
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for every file read, as a
    /// build script should. Default: true.
    pub fn rerun_if_changed(mut self, print: bool) -> Builder {
        self.rerun_if_changed = print;
        self
    }

    /// Parses `protos` (paths as given, each inside one of `includes`) and
    /// the files they import, then writes one `.rs` file per proto file
    /// into the output directory (see the [crate docs](crate)).
    ///
    /// # Errors
    /// Each names what to fix:
    /// - a proto is not inside any of `includes`, cannot be read, or
    ///   imports a file found in none of them (the importing file, its line,
    ///   and the paths searched);
    /// - a syntax or type error, a duplicate field number or name, a proto2
    ///   group: file, line and column, what was found and what was expected;
    /// - a file imports two files of one name, or two services of a file
    ///   would have the same Rust names;
    /// - `OUT_DIR` is not set (outside a build script, give
    ///   [`out_dir`](Self::out_dir)), or the output cannot be written.
    pub fn compile(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let protos: Vec<&Path> = protos.iter().map(AsRef::as_ref).collect();
        let includes: Vec<&Path> = includes.iter().map(AsRef::as_ref).collect();
        if protos.is_empty() {
            return Err(Error::new("no .proto file to compile"));
        }
        let out_dir = match self.out_dir.clone() {
            Some(dir) => dir,
            None => std::env::var_os("OUT_DIR")
                .map(|dir| PathBuf::from(dir).join("goplugin"))
                .ok_or_else(|| {
                    Error::new(
                        "OUT_DIR is not set: call it from build.rs, or give Builder::out_dir",
                    )
                })?,
        };

        let files = imports::walk(&protos, &includes)?;
        if self.rerun_if_changed {
            for file in &files {
                println!("cargo:rerun-if-changed={}", file.path.display());
            }
        }
        check_modules(&files)?;
        let parsed = protobuf_parse::Parser::new()
            .pure()
            .includes(&includes)
            .inputs(files.iter().map(|f| &f.path))
            .parse_and_typecheck()
            .map_err(|e| Error::new(check::parse_error(&e, &files)))?;
        check::groups(&parsed.file_descriptors, &files).map_err(Error::new)?;

        fs::create_dir_all(&out_dir).map_err(|e| Error::write(&out_dir, e))?;
        let messages = messages::generate(&files, &includes, &out_dir, &self.runtime)?;
        let types = services::type_paths(&parsed.file_descriptors, &self.runtime);
        let mut outputs = BTreeMap::new();
        for file in &files {
            let descriptor = parsed
                .file_descriptors
                .iter()
                .find(|d| d.name() == file.name)
                .ok_or_else(|| {
                    Error::new(format!("the parser gave no descriptor for {}", file.name))
                })?;
            let services = services::generate(descriptor, &types, &self.runtime)
                .map_err(|e| Error::new(format!("{}: {e}", file.path.display())))?;
            let code = file_code(file, &messages[&file.name], services.as_deref());
            outputs.insert(file.name.clone(), code);
        }
        write_outputs(&out_dir, &files, &outputs)
    }
}

/// The lints generated code is exempt from, whatever the crate denies.
const ALLOW: &str = "#[allow(warnings, missing_docs, unreachable_pub, unused_imports, clippy::all, clippy::pedantic, clippy::nursery)]\n#[rustfmt::skip]";

/// What `include_proto!` brings in for one file.
fn file_code(file: &ProtoFile, messages: &str, services: Option<&str>) -> String {
    let module = names::file_module(&file.name);
    let mut out = format!(
        "// Generated by goplugin-build from {}. Do not edit.\n\n{ALLOW}\npub mod {module} {{\n",
        file.name
    );
    // An import not brought in is an error on this line, which says what
    // to do (rust-protobuf's code names it as `super::MODULE` further on).
    for import in &file.imports {
        out.push_str(&format!(
            "use super::{} as _; // {} imports {}: add goplugin::include_proto!(\"{}\") next to include_proto!(\"{}\")\n",
            names::file_module(import),
            file.name,
            import,
            include_name(import),
            include_name(&file.name),
        ));
    }
    out.push_str(messages);
    out.push_str("}\n");
    if let Some(services) = services {
        out.push_str(&format!(
            "\n{ALLOW}\npub mod {}_grpc {{\n{services}}}\n",
            names::file_stem(&file.name)
        ));
    }
    out
}

/// The name `include_proto!` takes for a file: its name without `.proto`.
fn include_name(proto: &str) -> &str {
    proto.strip_suffix(".proto").unwrap_or(proto)
}

/// Refuses a file that imports two files of one module name, or one of
/// its own name: generated code could not tell them apart.
fn check_modules(files: &[ProtoFile]) -> Result<(), Error> {
    for file in files {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        seen.insert(names::file_module(&file.name), &file.name);
        for import in &file.imports {
            if let Some(other) = seen.insert(names::file_module(import), import) {
                return Err(Error::new(format!(
                    "{} imports {import}, and {}, whose generated modules would both be `{}`: \
                     rename one of the two files",
                    file.path.display(),
                    if other == file.name {
                        "is itself a file".to_string()
                    } else {
                        format!("imports {other}")
                    },
                    names::file_module(import)
                )));
            }
        }
    }
    Ok(())
}

/// Writes each file's code under its name (`sdk/logical/identity.rs`),
/// and under its short names (`identity.rs`, and the module's name when it
/// differs) where no other file claims them.
fn write_outputs(
    out_dir: &Path,
    files: &[ProtoFile],
    outputs: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let primary: BTreeSet<String> = files
        .iter()
        .map(|f| include_name(&f.name).to_string())
        .collect();
    // Each short name with the files that would have it.
    let mut short: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for file in files {
        let base = include_name(&file.name)
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        for name in [base, names::file_stem(&file.name)] {
            if !primary.contains(&name) {
                short.entry(name).or_default().insert(&file.name);
            }
        }
    }
    let write = |name: &str, text: &str| -> Result<(), Error> {
        let path = out_dir.join(format!("{name}.rs"));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::write(parent, e))?;
        }
        fs::write(&path, text).map_err(|e| Error::write(&path, e))
    };
    for file in files {
        write(include_name(&file.name), &outputs[&file.name])?;
    }
    for (name, owners) in &short {
        let owners: Vec<&str> = owners.iter().copied().collect();
        if let [only] = owners.as_slice() {
            write(name, &outputs[*only])?;
        } else {
            let paths: Vec<String> = owners
                .iter()
                .map(|o| format!("include_proto!(\"{}\")", include_name(o)))
                .collect();
            write(
                name,
                &format!(
                    "compile_error!(\"goplugin-build: {} are all `{name}`: include each by its path, \
                     in a module of its own: {}\");\n",
                    owners.join(", "),
                    paths.join(", ").replace('"', "\\\"")
                ),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's code is the crate docs' (which rustdoc compiles): the
    /// build script and the macro line, as they are.
    #[test]
    fn the_readme_shows_the_documented_code() {
        let readme = include_str!("../README.md");
        let docs: String = include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//! ").or(line.strip_prefix("//!")))
            .collect::<Vec<_>>()
            .join("\n");
        let blocks: Vec<&str> = readme
            .split("```")
            .skip(1)
            .step_by(2)
            .map(|block| block.split_once('\n').map_or("", |(_, code)| code))
            .collect();
        assert_eq!(blocks.len(), 2, "{readme}");
        for block in blocks {
            assert!(
                docs.contains(block.trim_end()),
                "not in the crate docs:\n{block}"
            );
        }
    }

    /// Writes `text` as the file `name` under `dir` (directories made).
    pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, text).expect("write proto");
        path
    }

    /// Compiles `protos` (name, text) with the first as the one listed;
    /// the generated files, by their path under the output directory.
    fn compile(protos: &[(&str, &str)]) -> Result<BTreeMap<String, String>, Error> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = Vec::new();
        for (name, text) in protos {
            paths.push(write(dir.path(), name, text));
        }
        let out = dir.path().join("out");
        Builder::new()
            .out_dir(&out)
            .rerun_if_changed(false)
            .compile(&paths[..1], &[dir.path()])?;
        let mut files = BTreeMap::new();
        let mut stack = vec![out.clone()];
        while let Some(at) = stack.pop() {
            for entry in fs::read_dir(&at).expect("read out") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let name = path
                        .strip_prefix(&out)
                        .expect("under out")
                        .to_string_lossy()
                        .into_owned();
                    files.insert(name, fs::read_to_string(&path).expect("read"));
                }
            }
        }
        Ok(files)
    }

    fn compile_ok(name: &str, text: &str) -> String {
        let files = compile(&[(name, text)]).expect("compiles");
        files[&name.replace(".proto", ".rs")].clone()
    }

    fn compile_error(name: &str, text: &str) -> String {
        compile(&[(name, text)]).expect_err("fails").to_string()
    }

    #[test]
    fn a_service_with_imports_and_nested_messages() {
        let code = compile_ok(
            "greeter.proto",
            r#"syntax = "proto3";
package greet;
import "google/protobuf/empty.proto";
message Hello { message Name { string first = 1; } Name name = 1; }
service Greeter {
  rpc Say(Hello.Name) returns (google.protobuf.Empty);
  rpc Count(google.protobuf.Empty) returns (stream Hello);
  rpc Sum(stream Hello) returns (Hello);
  rpc Chat(stream Hello) returns (stream Hello);
}
"#,
        );
        assert!(code.contains("pub mod greeter {"), "{code}");
        assert!(code.contains("pub mod greeter_grpc {"), "{code}");
        assert!(code.contains("super::greeter::hello::Name"), "{code}");
        assert!(
            code.contains("::goplugin::protobuf::well_known_types::empty::Empty"),
            "{code}"
        );
        assert!(code.contains("name: \"/greet.Greeter/Say\""), "{code}");
        assert!(code.contains("pub fn create_greeter("), "{code}");
        assert!(code.contains("pub fn say_async_opt("), "{code}");
        assert!(
            code.contains("ClientSStreamReceiver<super::greeter::Hello>"),
            "{code}"
        );
        assert!(code.contains("add_client_streaming_handler"), "{code}");
        assert!(code.contains("add_duplex_streaming_handler"), "{code}");
        assert!(!code.contains("#!["), "{code}");
    }

    /// Keywords as RPC, service and file names; a service named `S`; RPC
    /// names that clash with another's client methods or the client's own.
    #[test]
    fn every_name_is_an_identifier_and_wire_paths_stay() {
        let code = compile_ok(
            "type.proto",
            r#"syntax = "proto3";
package k;
import "google/protobuf/struct.proto";
message Match { message Inner { string x = 1; } }
service S {
  rpc Type(Match.Inner) returns (google.protobuf.Struct);
  rpc Match(google.protobuf.Value) returns (Match);
  rpc Do(Match) returns (Match);
  rpc New(Match) returns (Match);
  rpc Get(Match) returns (Match);
  rpc GetOpt(Match) returns (Match);
}
service Self { rpc Async(Match) returns (Match); }
"#,
        );
        for expected in [
            "pub mod type_ {",
            "pub mod type_grpc {",
            "super::type_::match_::Inner",
            "::goplugin::protobuf::well_known_types::struct_::Struct",
            "pub trait S {",
            "fn type_(&mut self",
            "fn match_(&mut self",
            "fn do_(&mut self",
            "pub fn type_opt(",
            "pub fn new_(&self",
            "pub fn get_opt(",
            "pub fn get_opt_(&self",
            "pub fn create_s(service: impl S +",
            "pub trait Self_ {",
            "pub struct SelfClient",
            "fn async_(&mut self",
            "name: \"/k.S/Type\"",
            "name: \"/k.S/GetOpt\"",
            "name: \"/k.Self/Async\"",
        ] {
            assert!(code.contains(expected), "no `{expected}` in\n{code}");
        }
    }

    #[test]
    fn a_dotted_file_is_included_by_its_name() {
        let files = compile(&[(
            "github.com.acme.thing.proto",
            "syntax = \"proto3\";\npackage github.com.acme.thing;\nmessage A { string x = 1; }\nservice T { rpc Get(A) returns (A); }\n",
        )])
        .expect("compiles");
        let code = &files["github.com.acme.thing.rs"];
        assert!(code.contains("pub mod github_com_acme_thing {"), "{code}");
        assert!(
            code.contains("pub mod github_com_acme_thing_grpc {"),
            "{code}"
        );
        assert!(code.contains("\"/github.com.acme.thing.T/Get\""), "{code}");
        // The module's name works too, as before.
        assert_eq!(&files["github_com_acme_thing.rs"], code);
    }

    #[test]
    fn imports_are_generated_without_being_listed() {
        let files = compile(&[
            (
                "api/backend.proto",
                "syntax = \"proto3\";\nimport \"sdk/logical/identity.proto\";\nmessage R { logical.Entity e = 1; }\n",
            ),
            (
                "sdk/logical/identity.proto",
                "syntax = \"proto3\";\npackage logical;\nmessage Entity { string id = 1; }\n",
            ),
        ])
        .expect("compiles");
        let backend = &files["api/backend.rs"];
        assert!(backend.contains("super::identity::Entity"), "{backend}");
        assert!(
            backend.contains("add goplugin::include_proto!(\"sdk/logical/identity\")"),
            "{backend}"
        );
        assert!(files["sdk/logical/identity.rs"].contains("pub struct Entity"));
        assert_eq!(files["identity.rs"], files["sdk/logical/identity.rs"]);
        assert_eq!(files["backend.rs"], files["api/backend.rs"]);
    }

    #[test]
    fn files_of_one_name_each_get_their_path_and_the_short_name_says_so() {
        let files = compile(&[
            (
                "top.proto",
                "syntax = \"proto3\";\nimport \"foo/v1/types.proto\";\nmessage T { foo.A a = 1; }\n",
            ),
            (
                "foo/v1/types.proto",
                "syntax = \"proto3\";\npackage foo;\nimport \"bar/v1/types.proto\";\nmessage A { string x = 1; }\n",
            ),
            (
                "bar/v1/types.proto",
                "syntax = \"proto3\";\npackage bar;\nmessage B { string y = 1; }\n",
            ),
        ]);
        // foo/v1/types.proto imports its namesake: refused, both named.
        let err = files
            .expect_err("a file importing its namesake")
            .to_string();
        assert!(
            err.contains("foo/v1/types.proto imports bar/v1/types.proto"),
            "{err}"
        );

        let files = compile(&[
            (
                "top.proto",
                "syntax = \"proto3\";\nimport \"foo/v1/types.proto\";\nimport \"x.proto\";\nmessage T { foo.A a = 1; }\n",
            ),
            ("foo/v1/types.proto", "syntax = \"proto3\";\npackage foo;\nmessage A { string x = 1; }\n"),
            ("x.proto", "syntax = \"proto3\";\nimport \"bar/v1/types.proto\";\n"),
            ("bar/v1/types.proto", "syntax = \"proto3\";\npackage bar;\nmessage B { string y = 1; }\n"),
        ])
        .expect("compiles");
        assert!(files["foo/v1/types.rs"].contains("pub struct A"));
        assert!(files["bar/v1/types.rs"].contains("pub struct B"));
        let short = &files["types.rs"];
        assert!(short.starts_with("compile_error!"), "{short}");
        assert!(
            short.contains("include_proto!(\\\"foo/v1/types\\\")"),
            "{short}"
        );
        assert!(
            short.contains("include_proto!(\\\"bar/v1/types\\\")"),
            "{short}"
        );
    }

    #[test]
    fn a_group_is_refused_with_its_place() {
        let text = compile_error(
            "old.proto",
            "syntax = \"proto2\";\nmessage M {\n  optional int32 a = 1;\n  repeated group Item = 2 {\n    required string name = 3;\n  }\n}\n",
        );
        assert!(
            text.contains("old.proto:4:12: message `M` has the proto2 group `item`"),
            "{text}"
        );
    }

    #[test]
    fn a_duplicate_number_says_number() {
        let text = compile_error(
            "dup.proto",
            "syntax = \"proto3\";\nmessage A {\n  string a = 1;\n  string b = 1;\n}\n",
        );
        assert!(
            text.contains(
                "dup.proto:4:14: field `b` has the number 1, which field `a` (line 3) already has"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_misspelled_keyword_says_what_was_found_and_expected() {
        let text = compile_error(
            "typo.proto",
            "syntax = \"proto3\";\n\nmesage A {\n  string x = 1;\n}\n",
        );
        assert!(text.contains("typo.proto:3:1:"), "{text}");
        assert!(text.contains("found `mesage`"), "{text}");
        assert!(text.contains("(`message` misspelled?)"), "{text}");
        let text = compile_error(
            "rpc.proto",
            "syntax = \"proto3\";\nmessage A {}\nservice S {\n  rcp X(A) returns (A);\n}\n",
        );
        assert!(text.contains("rpc.proto:4:3:"), "{text}");
        assert!(
            text.contains("found `rcp`, expected rpc, option, }"),
            "{text}"
        );
    }

    #[test]
    fn a_type_error_names_the_file_and_line() {
        let text = compile_error(
            "bad.proto",
            "syntax = \"proto3\";\n\nmessage A {\n  strin x = 1;\n}\n",
        );
        assert!(text.contains("bad.proto:4:3:"), "{text}");
    }

    #[test]
    fn a_syntax_error_is_said_once_with_its_position() {
        let text = compile_error(
            "semi.proto",
            "syntax = \"proto3\";\nmessage A {\n  string x = 1\n}\n",
        );
        assert!(text.contains("semi.proto:4:1:"), "{text}");
        assert_eq!(text.matches("expecting char").count(), 1, "{text}");
    }

    #[test]
    fn a_missing_import_names_the_importer() {
        let text = compile_error(
            "imp.proto",
            "syntax = \"proto3\";\nimport \"dep/gone.proto\";\n",
        );
        assert!(
            text.contains("imp.proto:2: imports \"dep/gone.proto\""),
            "{text}"
        );
        assert!(text.contains("include paths ("), "{text}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Builder::new()
            .out_dir(dir.path().join("out"))
            .compile(&[dir.path().join("nope.proto")], &[dir.path()])
            .expect_err("fails");
        assert!(err.to_string().contains("nope.proto"), "{err}");
        assert!(
            format!("{err:?}").starts_with("goplugin-build: "),
            "{err:?}"
        );
    }
}
