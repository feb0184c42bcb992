//! The example plugins under go-plugin's own example hosts, unmodified
//! (`examples/grpc` and `examples/bidirectional` at the pinned go-plugin
//! release, built by `make hosts` from the Go module proxy), run as their
//! README says, next to go-plugin's own Go plugins for the same examples.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::{Output, assert_nothing_left, example_bin, go_binary, run, tempdir};

/// go-plugin's KV example host with `KV_PLUGIN=plugin`, in `dir`.
fn kv_host(plugin: &Path, dir: &Path, tmp: &Path, args: &[&str]) -> Output {
    example_host(
        "examples/grpc/grpc",
        &[
            ("KV_PROTO", "grpc".as_ref()),
            ("KV_PLUGIN", plugin.as_os_str()),
        ],
        dir,
        tmp,
        args,
    )
}

/// go-plugin's bidirectional example host with `COUNTER_PLUGIN=plugin`.
fn counter_host(plugin: &Path, dir: &Path, tmp: &Path, args: &[&str]) -> Output {
    example_host(
        "examples/bidirectional/bidirectional",
        &[("COUNTER_PLUGIN", plugin.as_os_str())],
        dir,
        tmp,
        args,
    )
}

/// One of go-plugin's example hosts, run with `vars`, in `dir`, with its
/// plugins' sockets in `tmp`.
fn example_host(
    host: &str,
    vars: &[(&str, &OsStr)],
    dir: &Path,
    tmp: &Path,
    args: &[&str],
) -> Output {
    let mut command = Command::new(go_binary(host));
    command
        .args(args)
        .current_dir(dir)
        .envs(vars.iter().copied())
        .env("TMPDIR", tmp)
        .env_remove("BASIC_PLUGIN");
    run(command)
}

#[test]
fn kv_plugin_under_go_plugins_own_kv_example_host() {
    let (dir, tmp) = (tempdir(), tempdir());
    let plugin = example_bin("kv-plugin");
    kv_host(&plugin, dir.path(), tmp.path(), &["put", "hello", "world"]).assert_success();
    let out = kv_host(&plugin, dir.path(), tmp.path(), &["get", "hello"]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "world\n\nWritten from plugin-rust\n");

    // The example host prints the error and exits 1, without calling
    // Kill(): the plugin must notice on its own that its host is gone.
    let out = kv_host(&plugin, dir.path(), tmp.path(), &["get", "missing"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stdout_str()
            .starts_with("error: rpc error: code = NotFound desc = "),
        "{}",
        out.stdout_str()
    );
    assert_nothing_left(dir.path(), tmp.path());
}

#[test]
fn kv_plugin_reads_what_go_plugins_own_kv_plugin_wrote() {
    let (dir, tmp) = (tempdir(), tempdir());
    let go = go_binary("examples/grpc/plugin-go-grpc");
    kv_host(&go, dir.path(), tmp.path(), &["put", "k", "from go"]).assert_success();
    let out = kv_host(
        &example_bin("kv-plugin"),
        dir.path(),
        tmp.path(),
        &["get", "k"],
    );
    out.assert_success();
    // The Go plugin's trailer, stored with the value, comes back as is.
    assert_eq!(out.stdout_str(), "from go\n\nWritten from plugin-go-grpc\n");
    assert_nothing_left(dir.path(), tmp.path());
}

#[test]
fn counter_plugin_under_go_plugins_own_bidirectional_example_host() {
    let (dir, tmp) = (tempdir(), tempdir());
    let plugin = example_bin("counter-plugin");
    // Each put: the host serves AddHelper on a broker id, the plugin dials
    // it and asks the host for stored + N.
    counter_host(&plugin, dir.path(), tmp.path(), &["put", "hits", "5"]).assert_success();
    counter_host(&plugin, dir.path(), tmp.path(), &["put", "hits", "7"]).assert_success();
    let out = counter_host(&plugin, dir.path(), tmp.path(), &["get", "hits"]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "12\n");
    assert_eq!(
        fs::read_to_string(dir.path().join("kv_hits")).expect("kv_hits"),
        r#"{"Value":12}"#,
        "stored as the Go example stores it"
    );

    let out = counter_host(&plugin, dir.path(), tmp.path(), &["get", "missing"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stdout_str()
            .starts_with("Error: rpc error: code = NotFound desc = "),
        "{}",
        out.stdout_str()
    );
    assert_nothing_left(dir.path(), tmp.path());
}

#[test]
fn counter_plugin_and_go_plugins_own_counter_plugin_share_their_files() {
    let (dir, tmp) = (tempdir(), tempdir());
    let rust = example_bin("counter-plugin");
    let go = go_binary("examples/bidirectional/plugin-go-grpc");
    counter_host(&go, dir.path(), tmp.path(), &["put", "k", "40"]).assert_success();
    counter_host(&rust, dir.path(), tmp.path(), &["put", "k", "2"]).assert_success();
    let out = counter_host(&go, dir.path(), tmp.path(), &["get", "k"]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "42\n");
    assert_nothing_left(dir.path(), tmp.path());
}
