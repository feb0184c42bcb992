//! A plugin crate written as the README's "Your first plugin" tells a user
//! to write one (`examples/greeter-plugin`: its own `.proto` importing
//! `google/protobuf/empty.proto`, its own handshake, `goplugin` and
//! `goplugin-build` as its only dependencies), built on its own in this
//! target dir, and run.

use std::process::Command;

use goplugin::grpcio::{CallOption, Client, Marshaller, Method, MethodType, pb_de, pb_ser};
use goplugin::protobuf::well_known_types::empty::Empty;
use goplugin::protobuf::well_known_types::wrappers::StringValue;

use crate::support::{Running, build_user_crate, repo, run, tempdir};

/// The names listed in one `[section]` of a Cargo.toml.
fn dependencies(manifest: &str, section: &str) -> Vec<String> {
    let header = format!("[{section}]");
    manifest
        .lines()
        .skip_while(|line| line.trim() != header)
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with('['))
        .filter_map(|line| {
            line.split_once('=')
                .map(|(name, _)| name.trim().to_string())
        })
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect()
}

/// The README shows the crate's files as they are.
#[test]
fn the_readme_shows_the_first_plugin_as_it_is() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    for file in ["src/main.rs", "build.rs", "proto/greeter.proto"] {
        let text = std::fs::read_to_string(repo().join("examples/greeter-plugin").join(file))
            .expect("greeter-plugin file");
        assert!(
            readme.contains(&text),
            "README.md's \"Your first plugin\" does not show examples/greeter-plugin/{file} as it is"
        );
    }
}

#[test]
fn a_plugin_crate_depends_on_goplugin_alone() {
    let manifest = std::fs::read_to_string(repo().join("examples/greeter-plugin/Cargo.toml"))
        .expect("greeter-plugin's Cargo.toml");
    assert_eq!(dependencies(&manifest, "dependencies"), ["goplugin"]);
    assert_eq!(
        dependencies(&manifest, "build-dependencies"),
        ["goplugin-build"]
    );
    assert!(dependencies(&manifest, "dev-dependencies").is_empty());
}

/// A call of `greeter.Greeter/METHOD`; `StringValue` has the wire form of
/// `HelloRequest` and `HelloReply` (one string, field 1), so this test
/// needs no code generated from the user's proto.
fn method<Req: goplugin::protobuf::Message>(name: &'static str) -> Method<Req, StringValue> {
    Method {
        ty: MethodType::Unary,
        name,
        req_mar: Marshaller {
            ser: pb_ser,
            de: pb_de,
        },
        resp_mar: Marshaller {
            ser: pb_ser,
            de: pb_de,
        },
    }
}

#[test]
fn a_plugin_crate_builds_without_a_second_grpc_core_and_serves_its_own_proto() {
    serves_the_greeter(&build_user_crate("greeter-plugin"));
}

/// goplugin's and goplugin-build's packages (`cargo package`, unpacked)
/// stand on their own: the library's unit and doc tests pass from its
/// package, and the README's greeter, built on both packages as a user
/// outside this repository would (sharing this target dir, so gRPC's core
/// is not compiled again), runs and answers.
#[test]
fn the_packages_test_themselves_and_build_the_greeter() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // <target>/release/build
    let target = crate::support::example_bin("build")
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target dir")
        .to_path_buf();
    let mut package = Command::new(&cargo);
    package
        .args(["package", "--no-verify", "--allow-dirty"])
        .args(["-p", "goplugin-build", "-p", "goplugin"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo());
    run(package).assert_success();
    let unpacked = tempdir();
    let version = env!("CARGO_PKG_VERSION");
    for name in ["goplugin", "goplugin-build"] {
        let mut untar = Command::new("tar");
        untar
            .arg("-xzf")
            .arg(target.join(format!("package/{name}-{version}.crate")))
            .arg("-C")
            .arg(unpacked.path());
        run(untar).assert_success();
    }
    let library = unpacked.path().join(format!("goplugin-{version}"));
    let codegen = unpacked.path().join(format!("goplugin-build-{version}"));
    let patch = format!(
        "patch.crates-io.goplugin-build.path={:?}",
        codegen.display().to_string()
    );
    // The library's own tests, unit and doc, from its package alone.
    let mut test = Command::new(&cargo);
    test.current_dir(&library)
        .env("CARGO_TARGET_DIR", &target)
        .args(["test", "--release", "--config", &patch]);
    let tested = run(test);
    tested.assert_success();
    assert!(
        tested.stderr.contains("Doc-tests goplugin"),
        "the doc tests ran: {}",
        tested.stderr
    );
    // The greeter as its own project, depending on the unpacked packages.
    let greeter = unpacked.path().join("greeter-plugin");
    for file in ["src/main.rs", "build.rs", "proto/greeter.proto"] {
        let to = greeter.join(file);
        std::fs::create_dir_all(to.parent().expect("a directory")).expect("mkdir");
        std::fs::copy(repo().join("examples/greeter-plugin").join(file), &to).expect("copy");
    }
    let manifest = std::fs::read_to_string(repo().join("examples/greeter-plugin/Cargo.toml"))
        .expect("its Cargo.toml")
        .replace(
            "path = \"../..\"",
            &format!("path = {:?}", library.display().to_string()),
        )
        .replace(
            "path = \"../../goplugin-build\"",
            &format!("path = {:?}", codegen.display().to_string()),
        );
    assert!(!manifest.contains("../"), "{manifest}");
    std::fs::write(greeter.join("Cargo.toml"), manifest + "\n[workspace]\n").expect("write");
    // The versions this repository builds with: a fresh resolution could
    // take a newer build dependency of grpcio-sys (cc, cmake), and compile
    // gRPC's core again (measured: 9 minutes).
    std::fs::copy(repo().join("Cargo.lock"), greeter.join("Cargo.lock")).expect("Cargo.lock");
    let binary = crate::support::build_crate_at(&greeter, "greeter-plugin", &target, &[patch]);
    serves_the_greeter(&binary);
}

/// Runs a built greeter: refused without its cookie, then called.
fn serves_the_greeter(binary: &std::path::Path) {
    let binary = binary.to_path_buf();
    let dir = tempdir();
    let greeter = || {
        let mut command = Command::new(&binary);
        command
            .current_dir(dir.path())
            .env_clear()
            .env("TMPDIR", dir.path());
        command
    };
    let out = run(greeter());
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout_str(), "");
    assert!(
        out.stderr.contains("This binary is a plugin"),
        "{}",
        out.stderr
    );

    let mut command = greeter();
    command.env("GREETER_PLUGIN", "hi");
    let running = Running::spawn(command, true);
    assert!(running.line.starts_with("1|1|unix|"), "{}", running.line);
    let client = Client::new(running.channel());
    let hello = StringValue {
        value: "Rust".to_string(),
        ..StringValue::default()
    };
    let reply = client
        .unary_call(
            &method("/greeter.Greeter/SayHello"),
            &hello,
            CallOption::default(),
        )
        .expect("SayHello");
    assert_eq!(reply.value, "Hello, Rust!");
    let last = client
        .unary_call(
            &method::<Empty>("/greeter.Greeter/LastGreeting"),
            &Empty::new(),
            CallOption::default(),
        )
        .expect("LastGreeting");
    assert_eq!(last.value, "Hello, Rust!");
    let out = running.shutdown();
    assert!(out.status.success(), "{}", out.stderr);
    // plugin_main logs at Trace by default, as Go plugins do (the host
    // filters): the user's debug line is there.
    assert!(
        out.stderr
            .lines()
            .any(|line| line.contains(r#""@level":"debug""#)
                && line.contains(r#""@message":"greeted Rust""#)),
        "{}",
        out.stderr
    );
}

/// On a system other than Linux, goplugin's build script stops the build
/// with one message naming the system, before it does anything else.
#[test]
fn the_build_stops_on_other_systems_with_one_message() {
    let build = crate::support::example_bin("build");
    let script = std::fs::read_dir(&build)
        .expect("the build scripts' directory")
        .filter_map(Result::ok)
        .filter(|entry| {
            // goplugin-<hash>, not goplugin-build-<hash>.
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_prefix("goplugin-")
                .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .map(|entry| entry.path().join("build-script-build"))
        .filter(|path| path.exists())
        .max_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .expect("goplugin's compiled build script");
    for (os, works) in [("macos", false), ("windows", false), ("linux", true)] {
        let out_dir = crate::support::tempdir();
        let output = std::process::Command::new(&script)
            .current_dir(crate::support::repo())
            .env("CARGO_CFG_TARGET_OS", os)
            .env("OUT_DIR", out_dir.path())
            .env("CARGO_MANIFEST_DIR", crate::support::repo())
            .env_remove("CARGO_FEATURE_STATIC_LIBS")
            .env_remove("CARGO_FEATURE_ABSEIL_CPUFREQ")
            .output()
            .expect("run the build script");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if works {
            // It goes on (here without cargo's whole environment, so it may
            // fail later for other reasons), never with that message.
            assert!(!stderr.contains("Linux only"), "{stderr}");
            continue;
        }
        assert_eq!(output.status.code(), Some(1), "{os}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{os}: one message, nothing else: {stderr}"
        );
        assert!(
            stderr.starts_with(&format!(
                "error: goplugin: goplugin builds for Linux only, and this target's system is \"{os}\""
            )),
            "{stderr}"
        );
    }
}

/// Both published crates' packages carry the licence text their
/// `license = "MPL-2.0"` names.
#[test]
fn each_package_carries_its_licence() {
    let licence = std::fs::read_to_string(repo().join("LICENSE")).expect("LICENSE");
    assert!(licence.starts_with("Mozilla Public License Version 2.0"));
    for package in ["goplugin", "goplugin-build"] {
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command
            .args([
                "package",
                "--list",
                "--allow-dirty",
                "--offline",
                "-p",
                package,
            ])
            .current_dir(repo());
        let listed = run(command);
        listed.assert_success();
        let files = listed.stdout_str();
        assert!(
            files.lines().any(|file| file == "LICENSE"),
            "{package}'s package has no LICENSE: {files}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(repo().join("goplugin-build/LICENSE")).expect("its LICENSE"),
        licence
    );
}

/// The documentation's example protocols (`proto/doc`, which the package
/// carries for its doc tests) are the example plugins' own.
#[test]
fn the_doc_examples_protocols_are_the_example_plugins() {
    for (doc, example) in [
        ("proto/doc/kv.proto", "examples/kv-plugin/proto/kv.proto"),
        (
            "proto/doc/counter.proto",
            "examples/counter-plugin/proto/counter.proto",
        ),
    ] {
        let read = |path: &str| std::fs::read_to_string(repo().join(path)).expect(path);
        assert_eq!(read(doc), read(example), "{doc} differs from {example}");
    }
}

/// Every Rust and protobuf block of the README and the guides is code that
/// builds here, as it is: a file of the examples or the sources, or the
/// visible lines of a doc example rustdoc compiles.
#[test]
fn every_code_block_of_the_docs_is_compiled_code() {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("a source directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "rs" || ext == "proto")
            {
                out.push(path);
            }
        }
    }
    let mut sources = Vec::new();
    for dir in ["src", "goplugin-build/src", "examples"] {
        files(&repo().join(dir), &mut sources);
    }
    let mut corpus = Vec::new();
    for path in &sources {
        let text = std::fs::read_to_string(path).expect("a source file");
        // The visible lines of its doc comments: what rustdoc shows.
        let docs: Vec<&str> = text
            .lines()
            .filter_map(|line| {
                let line = line.trim_start();
                let doc = line
                    .strip_prefix("///")
                    .or_else(|| line.strip_prefix("//!"))?;
                Some(doc.strip_prefix(' ').unwrap_or(doc))
            })
            .filter(|line| *line != "#" && !line.starts_with("# "))
            .collect();
        corpus.push(docs.join("\n"));
        corpus.push(text);
    }
    let mut pages = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .flatten()
    {
        pages.push(entry.path());
    }
    let mut checked = 0;
    for page in pages {
        let text = std::fs::read_to_string(&page).expect("a page");
        let mut blocks = text.split("\n```").skip(1);
        while let Some(block) = blocks.next() {
            // Every other split is the text between two blocks.
            let _ = blocks.next();
            let (lang, code) = block.split_once('\n').unwrap_or((block, ""));
            if !(lang.starts_with("rust") || lang == "protobuf") {
                continue;
            }
            let code = code.trim_end();
            assert!(
                corpus.iter().any(|source| source.contains(code)),
                "{}: this {lang} block is not code that builds here:\n{code}",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} blocks found");
}
