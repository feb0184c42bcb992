//! Code generation for [goplugin](https://crates.io/crates/goplugin)
//! plugins, from `build.rs`, without `protoc`.
//!
//! One call in `build.rs` turns your `.proto` files into protobuf messages
//! and grpcio services; one macro in your code brings them in:
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
//! What it generates:
//! - for every `.proto` file `NAME.proto` given to [`compile_protos`],
//!   `$OUT_DIR/goplugin/NAME.rs` with a module `NAME` (rust-protobuf 3
//!   messages: plain `pub` fields, `Default`, `Message`) and, when the file
//!   declares services, a module `NAME_grpc` (grpcio's service trait,
//!   `create_*` function and client), named as grpcio's own generator names
//!   them;
//! - code that reaches `grpcio` and `protobuf` through `goplugin`'s
//!   re-exports (`::goplugin::grpcio`, `::goplugin::protobuf`): a plugin
//!   crate depends on `goplugin` alone, and cannot end up with a second
//!   grpcio feature set (and a second build of gRPC's C++ core);
//! - `cargo:rerun-if-changed` for every input and every file it imports.
//!
//! Imports: the well-known types (`google/protobuf/empty.proto`,
//! `timestamp.proto`, `duration.proto`, `any.proto`, `struct.proto`,
//! `wrappers.proto`, `field_mask.proto`, …) need no file on disk and map to
//! `protobuf::well_known_types`. An import of one of your own files needs
//! that file found in `includes` and compiled too (listed in `protos`), and
//! its own `include_proto!` next to the one that imports it (generated code
//! names it `super::NAME`).

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use protobuf::descriptor::{DescriptorProto, FileDescriptorProto};

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

/// What went wrong, in words that name the file (and, for a syntax or type
/// error, the line and column) to fix.
#[derive(Debug)]
pub struct Error {
    message: String,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

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
    /// re-exports `grpcio` and `protobuf`. Default: `::goplugin`. (goplugin
    /// itself uses `crate`; a crate that renames its goplugin dependency
    /// gives the new name.)
    pub fn runtime_path(mut self, path: impl Into<String>) -> Builder {
        self.runtime = path.into();
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for every input and every
    /// file it imports, as a build script should. Default: true.
    pub fn rerun_if_changed(mut self, print: bool) -> Builder {
        self.rerun_if_changed = print;
        self
    }

    /// Parses `protos` (paths as given, each inside one of `includes`),
    /// then writes one `NAME.rs` per proto into the output directory.
    ///
    /// # Errors
    /// - a proto is not inside any of `includes`, cannot be read, or two
    ///   protos have the same file name (their modules would clash);
    /// - a syntax or type error: the message names the file, line and
    ///   column;
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
            return Err(Error::new("goplugin-build: no .proto file to compile"));
        }
        let out_dir = match self.out_dir.clone() {
            Some(dir) => dir,
            None => std::env::var_os("OUT_DIR")
                .map(|dir| PathBuf::from(dir).join("goplugin"))
                .ok_or_else(|| {
                    Error::new(
                        "goplugin-build: OUT_DIR is not set: call it from build.rs, \
                         or give Builder::out_dir",
                    )
                })?,
        };
        for proto in &protos {
            if !proto.is_file() {
                return Err(Error::new(format!(
                    "goplugin-build: {} does not exist or is not a file",
                    proto.display()
                )));
            }
        }
        let parsed = protobuf_parse::Parser::new()
            .pure()
            .includes(&includes)
            .inputs(&protos)
            .parse_and_typecheck()
            .map_err(|e| Error::new(format!("goplugin-build: {}", parse_error(&e))))?;
        if self.rerun_if_changed {
            print_rerun_if_changed(&protos, &includes, &parsed.file_descriptors);
        }
        let inputs: Vec<String> = parsed
            .relative_paths
            .iter()
            .map(|path| path.to_str().to_string())
            .collect();
        let mut modules = BTreeMap::new();
        for input in &inputs {
            let module = file_stem(input);
            if let Some(other) = modules.insert(module.clone(), input.clone()) {
                return Err(Error::new(format!(
                    "goplugin-build: {other} and {input} would both be module `{module}`: \
                     rename one of them"
                )));
            }
        }

        fs::create_dir_all(&out_dir).map_err(|e| write_error(&out_dir, e))?;
        let messages_dir = out_dir.join("messages");
        if messages_dir.exists() {
            fs::remove_dir_all(&messages_dir).map_err(|e| write_error(&messages_dir, e))?;
        }
        fs::create_dir_all(&messages_dir).map_err(|e| write_error(&messages_dir, e))?;
        protobuf_codegen::Codegen::new()
            .pure()
            .includes(&includes)
            .inputs(&protos)
            .out_dir(&messages_dir)
            .customize(protobuf_codegen::Customize::default().gen_mod_rs(false))
            .run()
            .map_err(|e| Error::new(format!("goplugin-build: cannot generate messages: {e:#}")))?;

        let services = generate_services(&parsed.file_descriptors, &inputs)?;
        let paths = message_paths(&parsed.file_descriptors, &self.runtime);
        for (stem, input) in &modules {
            // rust-protobuf 3 escapes a keyword with `_` (`type_`).
            let module = escape_keyword(stem);
            let generated = messages_dir.join(format!("{module}.rs"));
            let messages = fs::read_to_string(&generated).map_err(|e| {
                Error::new(format!(
                    "goplugin-build: the generator wrote no {} for {input}: {e}",
                    generated.display()
                ))
            })?;
            let mut out = format!(
                "// Generated by goplugin-build from {input}. Do not edit.\n\n{ALLOW}\npub mod {module} {{\n{}}}\n",
                strip_inner_attributes(&rewrite_crate(&messages, "protobuf", &self.runtime, false))
            );
            if let Some(service) = services.get(input) {
                let service = rewrite_crate(service, "grpcio", &self.runtime, true);
                let service = rewrite_message_paths(&service, &paths);
                out.push_str(&format!(
                    "\n{ALLOW}\npub mod {stem}_grpc {{\n{}}}\n",
                    strip_inner_attributes(&service)
                ));
            }
            let path = out_dir.join(format!("{stem}.rs"));
            fs::write(&path, out).map_err(|e| write_error(&path, e))?;
        }
        fs::remove_dir_all(&messages_dir).map_err(|e| write_error(&messages_dir, e))
    }
}

/// The lints generated code is exempt from, whatever the crate denies.
const ALLOW: &str = "#[allow(warnings, missing_docs, unreachable_pub, clippy::all, clippy::pedantic, clippy::nursery)]\n#[rustfmt::skip]";

/// The parser's error chain without its repeats, with the line of the
/// name it complains about when the parser gives no position (type
/// errors such as an unknown type or a duplicate field name).
fn parse_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    let text = text
        .strip_prefix("using pure parser: ")
        .unwrap_or(&text)
        .to_string();
    match locate(&text) {
        Some(place) => format!("{text} (at {place})"),
        None => text,
    }
}

/// `FILE:LINE` of the first name quoted in `message`, for a message about a
/// file (`error in `FILE`: …`) that has no `at LINE:COLUMN` of its own.
fn locate(message: &str) -> Option<String> {
    let rest = message.strip_prefix("error in `")?;
    let (file, detail) = rest.split_once("`: ")?;
    if detail.starts_with("at ") {
        return None;
    }
    let name = detail.split('`').nth(1)?;
    let name = name.rsplit('.').next().filter(|n| !n.is_empty())?;
    let text = fs::read_to_string(file).ok()?;
    let line = text.lines().position(|line| {
        line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word == name)
    })?;
    Some(format!("{file}:{}", line + 1))
}

fn write_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(format!(
        "goplugin-build: cannot write {}: {e}",
        path.display()
    ))
}

/// The words rust-protobuf 3 escapes in names (with a `_` suffix), its own
/// list; rust-protobuf 2, whose names grpcio's generator uses, escapes the
/// same but `_` in file modules (with `_pb`).
const KEYWORDS: &[&str] = &[
    "_", "abstract", "alignof", "as", "async", "await", "become", "box", "break", "const",
    "continue", "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for",
    "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "offsetof",
    "override", "priv", "proc", "pub", "pure", "ref", "return", "Self", "self", "sizeof", "static",
    "struct", "super", "trait", "true", "type", "typeof", "unsafe", "unsized", "use", "virtual",
    "where", "while", "yield",
];

/// `name`, or `name_` when it is a keyword, as rust-protobuf 3 names modules.
fn escape_keyword(name: &str) -> String {
    if KEYWORDS.contains(&name) {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

/// The file module grpcio's generator names (rust-protobuf 2's rule).
fn grpcio_module(proto: &str) -> String {
    let stem = file_stem(proto);
    if stem != "_" && KEYWORDS.contains(&stem.as_str()) {
        format!("{stem}_pb")
    } else {
        stem
    }
}

/// The name of a proto file's module before keyword escaping, and of the
/// file `include_proto!` takes: the file name without `.proto`, other
/// characters than letters, digits and `_` replaced by `_`.
fn file_stem(proto: &str) -> String {
    let name = proto.rsplit('/').next().unwrap_or(proto);
    let name = name.strip_suffix(".proto").unwrap_or(name);
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let valid = c == '_' || c.is_ascii_alphanumeric();
            if valid && !(i == 0 && c.is_ascii_digit()) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn print_rerun_if_changed(protos: &[&Path], includes: &[&Path], files: &[FileDescriptorProto]) {
    for proto in protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    // Imports, where they are on disk (the well-known types are not).
    for file in files {
        if let Some(found) = includes
            .iter()
            .map(|include| include.join(file.name()))
            .find(|path| path.is_file())
        {
            println!("cargo:rerun-if-changed={}", found.display());
        }
    }
}

/// grpcio's service code for every input that declares a service, by the
/// input's relative path.
///
/// grpcio-compiler reads protobuf 2 descriptors; the descriptor's wire
/// format is the same in both majors, so each file's descriptor is encoded
/// with protobuf 3 and decoded with protobuf 2.
fn generate_services(
    files: &[FileDescriptorProto],
    inputs: &[String],
) -> Result<BTreeMap<String, String>, Error> {
    let mut descriptors = Vec::with_capacity(files.len());
    for file in files {
        let bytes = protobuf::Message::write_to_bytes(file).map_err(|e| {
            Error::new(format!(
                "goplugin-build: cannot encode the descriptor of {}: {e}",
                file.name()
            ))
        })?;
        let file: protobuf2::descriptor::FileDescriptorProto =
            protobuf2::Message::parse_from_bytes(&bytes).map_err(|e| {
                Error::new(format!("goplugin-build: cannot decode a descriptor: {e}"))
            })?;
        descriptors.push(file);
    }
    let mut services = BTreeMap::new();
    for result in grpcio_compiler::codegen::r#gen(&descriptors, inputs) {
        let module = result.name.strip_suffix("_grpc.rs").unwrap_or(&result.name);
        let content = String::from_utf8(result.content)
            .map_err(|e| Error::new(format!("goplugin-build: service code is not UTF-8: {e}")))?;
        let input = inputs
            .iter()
            .find(|input| grpcio_module(input) == module)
            .ok_or_else(|| {
                Error::new(format!(
                    "goplugin-build: grpcio's generator wrote {} for none of {inputs:?}",
                    result.name
                ))
            })?;
        services.insert(input.clone(), content);
    }
    Ok(services)
}

/// Every message's path as grpcio's generator writes it (protobuf 2
/// names: `file::Outer_Inner`) mapped to the path rust-protobuf 3 gives it
/// (`file::outer::Inner`, or the well-known type in the runtime's
/// `protobuf::well_known_types`).
fn message_paths(files: &[FileDescriptorProto], runtime: &str) -> BTreeMap<String, String> {
    fn walk(
        messages: &[DescriptorProto],
        v2_prefix: &str,
        v3_prefix: &str,
        paths: &mut BTreeMap<String, String>,
    ) {
        for message in messages {
            let name = message.name();
            paths.insert(format!("{v2_prefix}{name}"), format!("{v3_prefix}{name}"));
            let nested = escape_keyword(&protobuf_parse::snake_case(name));
            let nested_v3 = format!("{v3_prefix}{nested}::");
            walk(
                &message.nested_type,
                &format!("{v2_prefix}{name}_"),
                &nested_v3,
                paths,
            );
        }
    }
    let mut paths = BTreeMap::new();
    for file in files {
        let module = escape_keyword(&file_stem(file.name()));
        let v2 = format!("super::{}::", grpcio_module(file.name()));
        let v3 = match file.name() {
            "google/protobuf/descriptor.proto" => format!("{runtime}::protobuf::descriptor::"),
            name if name.starts_with("google/protobuf/") => {
                format!("{runtime}::protobuf::well_known_types::{module}::")
            }
            _ => format!("super::{module}::"),
        };
        walk(&file.message_type, &v2, &v3, &mut paths);
    }
    paths
}

/// Replaces each `super::…` path of `paths` in `code`, whole paths only.
fn rewrite_message_paths(code: &str, paths: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let path = &tail[..end];
        out.push_str(paths.get(path).map_or(path, String::as_str));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces the crate path `::krate::…` with `runtime::krate::…`, and, with
/// `bare`, `krate::…` too (grpcio's generator writes
/// `grpcio::unimplemented_call!`; rust-protobuf 3 always writes the leading
/// `::`, and its relative paths such as a nested `protobuf::` module of a
/// message named `Protobuf` must stay).
fn rewrite_crate(code: &str, krate: &str, runtime: &str, bare: bool) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let needle = format!("{krate}::");
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(&needle) {
        let before = &rest[..at];
        let (kept, prefix) = match before.strip_suffix("::") {
            // `::krate::`, unless it is `a::krate::`, somebody's module.
            Some(head) if !head.ends_with(is_ident) => (head, true),
            Some(_) => (before, false),
            None => (before, bare && !before.ends_with(is_ident)),
        };
        out.push_str(kept);
        if prefix {
            out.push_str(runtime);
            out.push_str("::");
        }
        out.push_str(&needle);
        rest = &rest[at + needle.len()..];
    }
    out.push_str(rest);
    out
}

/// Drops the generated files' inner attributes and module docs (`#![…]`,
/// `//!`): they cannot stand inside the `mod` block that wraps the file.
fn strip_inner_attributes(code: &str) -> String {
    code.lines()
        .filter(|line| {
            let line = line.trim_start();
            !(line.starts_with("#![") || line.starts_with("//!"))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_the_generators() {
        assert_eq!(file_stem("greeter.proto"), "greeter");
        assert_eq!(file_stem("a/b/my-api.v1.proto"), "my_api_v1");
        assert_eq!(file_stem("google/protobuf/empty.proto"), "empty");
        assert_eq!(escape_keyword("type"), "type_");
        assert_eq!(grpcio_module("google/protobuf/struct.proto"), "struct_pb");
        assert_eq!(escape_keyword("greeter"), "greeter");
    }

    #[test]
    fn crate_paths_go_through_the_runtime() {
        let code = "::protobuf::Message; x::protobuf::y; <::protobuf::A> myprotobuf::z";
        assert_eq!(
            rewrite_crate(code, "protobuf", "::goplugin", true),
            "::goplugin::protobuf::Message; x::protobuf::y; <::goplugin::protobuf::A> myprotobuf::z"
        );
        assert_eq!(
            rewrite_crate("(protobuf::Inner, ::protobuf::M)", "protobuf", "::g", false),
            "(protobuf::Inner, ::g::protobuf::M)"
        );
        assert_eq!(
            rewrite_crate(
                "{\n    grpcio::unimplemented_call!(ctx)",
                "grpcio",
                "crate",
                true
            ),
            "{\n    crate::grpcio::unimplemented_call!(ctx)"
        );
    }

    #[test]
    fn service_paths_become_protobuf_3_paths() {
        let mut paths = BTreeMap::new();
        paths.insert(
            "super::a::Outer_Inner".into(),
            "super::a::outer::Inner".into(),
        );
        paths.insert(
            "super::empty::Empty".into(),
            "::g::protobuf::well_known_types::empty::Empty".into(),
        );
        let code = "Method<super::a::Outer_Inner, super::empty::Empty> super::a::Other";
        assert_eq!(
            rewrite_message_paths(code, &paths),
            "Method<super::a::outer::Inner, ::g::protobuf::well_known_types::empty::Empty> super::a::Other"
        );
    }

    #[test]
    fn inner_attributes_and_module_docs_are_dropped() {
        let code = "#![allow(x)]\n//! doc\n  #![cfg_attr(a, b)]\n/// item doc\npub struct A;\n";
        assert_eq!(
            strip_inner_attributes(code),
            "/// item doc\npub struct A;\n"
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write proto");
        path
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
        assert!(code.contains("::goplugin::grpcio::Method"), "{code}");
        assert!(!code.contains("#!["), "{code}");
    }

    /// The code generated from `text`, as the file `name`; checks that no
    /// working file is left.
    fn compile_ok(name: &str, text: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let proto = write(dir.path(), name, text);
        let out = dir.path().join("out");
        Builder::new()
            .out_dir(&out)
            .rerun_if_changed(false)
            .compile(&[&proto], &[dir.path()])
            .expect("compiles");
        assert!(!out.join("messages").exists());
        let generated = out.join(name.replace(".proto", ".rs"));
        fs::read_to_string(generated).expect("generated file")
    }

    /// What compiling `text`, as the file `name`, fails with.
    fn compile_error(name: &str, text: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let proto = write(dir.path(), name, text);
        Builder::new()
            .out_dir(dir.path().join("out"))
            .rerun_if_changed(false)
            .compile(&[&proto], &[dir.path()])
            .expect_err("fails")
            .to_string()
    }

    #[test]
    fn a_type_error_names_the_file_and_line() {
        let text = compile_error(
            "bad.proto",
            "syntax = \"proto3\";\n\nmessage A {\n  strin x = 1;\n}\n",
        );
        assert!(text.contains("bad.proto:4"), "{text}");
    }

    #[test]
    fn a_syntax_error_is_said_once_with_its_position() {
        let text = compile_error(
            "semi.proto",
            "syntax = \"proto3\";\nmessage A {\n  string x = 1\n}\n",
        );
        assert!(text.contains("semi.proto`: at 4:1"), "{text}");
        assert_eq!(text.matches("expecting char").count(), 1, "{text}");
    }

    /// A keyword as file, message or module name, and well-known types that
    /// both generators escape (`struct.proto`).
    #[test]
    fn keywords_are_escaped_as_both_generators_escape_them() {
        let code = compile_ok(
            "type.proto",
            r#"syntax = "proto3";
import "google/protobuf/struct.proto";
message Match { message Inner { string x = 1; } }
service Types {
  rpc Find(Match.Inner) returns (google.protobuf.Struct);
  rpc Echo(google.protobuf.Value) returns (Match);
}
"#,
        );
        assert!(code.contains("pub mod type_ {"), "{code}");
        assert!(code.contains("pub mod type_grpc {"), "{code}");
        assert!(code.contains("super::type_::match_::Inner"), "{code}");
        assert!(code.contains("super::type_::Match"), "{code}");
        assert!(
            code.contains("::goplugin::protobuf::well_known_types::struct_::Struct"),
            "{code}"
        );
        assert!(!code.contains("_pb::"), "{code}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Builder::new()
            .out_dir(dir.path().join("out"))
            .compile(&[dir.path().join("nope.proto")], &[dir.path()])
            .expect_err("fails");
        assert!(err.to_string().contains("nope.proto"), "{err}");
    }
}
