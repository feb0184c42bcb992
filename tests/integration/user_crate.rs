//! A plugin crate written as the README's "Your first plugin" tells a user
//! to write one (`examples/greeter-plugin`: its own `.proto` importing
//! `google/protobuf/empty.proto`, its own handshake, `goplugin` and
//! `goplugin-build` as its only dependencies), built on its own in this
//! target dir, and run.

use std::path::PathBuf;
use std::process::Command;

use goplugin::grpcio::{CallOption, Client, Marshaller, Method, MethodType, pb_de, pb_ser};
use goplugin::protobuf::well_known_types::empty::Empty;
use goplugin::protobuf::well_known_types::wrappers::StringValue;

use crate::support::{Running, repo, run, tempdir};

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

/// Built alone (`-p`: cargo resolves features for this crate only, as for
/// a crate outside this workspace), the user's crate gets goplugin's one
/// grpcio feature set: gRPC's C++ core, built once for this target dir, is
/// not built again. Returns the plugin binary. (`make test` builds the
/// workspace without this crate, so that only this test writes its
/// binary.)
fn build_the_users_crate() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    // What cargo set for this test binary (CARGO_MANIFEST_DIR, OUT_DIR, …)
    // is not the user's environment, and build scripts that watch such a
    // variable (ring's) would run again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref())
            || [
                "CARGO_BUILD_",
                "CARGO_NET_",
                "CARGO_REGISTR",
                "CARGO_HTTP_",
                "CARGO_TERM_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if (name.starts_with("CARGO_") && !ours) || name == "OUT_DIR" {
            command.env_remove(name.as_ref());
        }
    }
    command.current_dir(repo()).args([
        "build",
        "--release",
        "--locked",
        "--package",
        "greeter-plugin",
        "--message-format=json",
    ]);
    // No watchdog: compiling goplugin and the crate takes a while on a
    // busy machine, and cargo ends by itself.
    let out = command.output().expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo build -p greeter-plugin failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its build script (which runs cmake) and its library.
    let grpcio_sys: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter(|line| line.contains("#grpcio-sys@"))
        .collect();
    assert_eq!(grpcio_sys.len(), 2, "{grpcio_sys:#?}");
    for artifact in grpcio_sys {
        assert!(
            artifact.contains(r#""fresh":true"#),
            "grpcio-sys was compiled again:\n{artifact}"
        );
    }
    let executable = stdout
        .lines()
        .filter(|line| line.contains(r#""name":"greeter-plugin""#))
        .find_map(|line| line.split(r#""executable":""#).nth(1)?.split('"').next())
        .expect("cargo names the greeter-plugin executable");
    PathBuf::from(executable)
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
    let binary = build_the_users_crate();
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
