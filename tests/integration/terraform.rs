//! `terraform-provider-kv` through a real OpenTofu (built from its Go
//! module at the pinned release by `make terraform`): the whole life of a
//! resource with and without AutoMTLS, Ctrl-C during a slow apply, the host
//! SIGKILLed mid-apply, 40 resources at once, and debug mode with
//! `TF_REATTACH_PROVIDERS`. After every step no provider runs in the
//! working directory and no socket is left in its `TMPDIR`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Output, alive, assert_nothing_left, example_bin, gone_within, processes_in, repo, run, tempdir,
};

/// The OpenTofu binary `make terraform` builds.
fn tofu_binary() -> PathBuf {
    let path = repo().join(".build/opentofu/tofu");
    assert!(
        path.exists(),
        "{} is missing: build OpenTofu with `make terraform` (or run `make test`)",
        path.display()
    );
    path
}

/// A working directory for OpenTofu with the provider installed through
/// `dev_overrides`, its own `TMPDIR` (the provider's sockets) and `HOME`.
struct Workspace {
    dir: tempfile::TempDir,
    tmp: tempfile::TempDir,
    home: tempfile::TempDir,
    tls: bool,
}

impl Workspace {
    fn new(tls: bool) -> Workspace {
        let workspace = Workspace {
            dir: tempdir(),
            tmp: tempdir(),
            home: tempdir(),
            tls,
        };
        let provider_dir = example_bin("terraform-provider-kv")
            .parent()
            .expect("the binary's directory")
            .display()
            .to_string();
        fs::write(
            workspace.home.path().join("tofurc"),
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"registry.opentofu.org/goplugin/kv\" = \"{provider_dir}\"\n  }}\n  direct {{}}\n}}\n"
            ),
        )
        .expect("CLI config");
        workspace
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `main.tf` with the provider block and `body`.
    fn config(&self, body: &str) {
        let tf = format!(
            "terraform {{\n  required_providers {{\n    kv = {{ source = \"goplugin/kv\" }}\n  }}\n}}\n\n{body}\n"
        );
        fs::write(self.dir().join("main.tf"), tf).expect("main.tf");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(tofu_binary());
        command
            .args(args)
            .current_dir(self.dir())
            .env("TF_CLI_CONFIG_FILE", self.home.path().join("tofurc"))
            .env("HOME", self.home.path())
            .env("TMPDIR", self.tmp.path())
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("TF_LOG")
            .env_remove("TF_REATTACH_PROVIDERS")
            .env_remove("KV_PROVIDER_APPLY_DELAY_MS");
        if !self.tls {
            command.env("TF_DISABLE_PLUGIN_TLS", "1");
        }
        command
    }

    /// Runs `tofu ARGS` to its end; then checks that nothing is left.
    fn tofu(&self, args: &[&str]) -> Output {
        let output = run(self.command(args));
        self.assert_nothing_left();
        output
    }

    fn value(&self, key: &str) -> Option<String> {
        fs::read_to_string(self.dir().join(format!("kv_{key}"))).ok()
    }

    /// No process runs in the directory within a second, then no socket
    /// is in `TMPDIR`.
    #[track_caller]
    fn assert_nothing_left(&self) {
        assert_nothing_left(self.dir(), self.tmp.path());
    }
}

/// Live `terraform-provider-kv` processes working in `dir`.
fn providers_in(dir: &Path) -> Vec<u32> {
    processes_in(dir)
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim().starts_with("terraform-provi"))
        })
        .collect()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}\n--- stdout:\n{}\n--- stderr:\n{}",
        output.stdout_str(),
        output.stderr
    );
}

const APPLY: &[&str] = &["apply", "-auto-approve", "-input=false", "-no-color"];
const PLAN: &[&str] = &["plan", "-input=false", "-no-color", "-detailed-exitcode"];
const DESTROY: &[&str] = &["destroy", "-auto-approve", "-input=false", "-no-color"];

fn item(key: &str, value: &str) -> String {
    format!(
        "resource \"kv_item\" \"a\" {{\n  key   = \"{key}\"\n  value = \"{value}\"\n}}\n\n\
         data \"kv_item\" \"a\" {{\n  key = kv_item.a.key\n}}\n\n\
         output \"read\" {{\n  value = data.kv_item.a.value\n}}\n"
    )
}

fn life_of_a_resource(tls: bool) {
    let ws = Workspace::new(tls);
    ws.config(&item("alpha", "one"));
    let plan = ws.tofu(PLAN);
    assert_exit(&plan, 2, "a plan with a change");
    assert!(
        plan.stdout_str().contains("1 to add"),
        "{}",
        plan.stdout_str()
    );

    let apply = ws.tofu(APPLY);
    assert_exit(&apply, 0, "apply");
    assert_eq!(ws.value("alpha").as_deref(), Some("one"));
    assert!(
        apply.stdout_str().contains("read = \"one\""),
        "{}",
        apply.stdout_str()
    );
    assert_exit(&ws.tofu(PLAN), 0, "no changes after apply");

    ws.config(&item("alpha", "two"));
    let update = ws.tofu(APPLY);
    assert_exit(&update, 0, "update");
    assert!(
        update.stdout_str().contains("1 changed"),
        "{}",
        update.stdout_str()
    );
    assert_eq!(ws.value("alpha").as_deref(), Some("two"));

    fs::remove_file(ws.dir().join("kv_alpha")).expect("deleted by hand");
    let drift = ws.tofu(PLAN);
    assert_exit(&drift, 2, "drift: the file is gone");
    assert!(
        drift.stdout_str().contains("1 to add"),
        "{}",
        drift.stdout_str()
    );
    assert_exit(&ws.tofu(APPLY), 0, "apply after drift");
    assert_eq!(ws.value("alpha").as_deref(), Some("two"));

    ws.config(&item("beta", "two"));
    let replace = ws.tofu(PLAN);
    assert_exit(&replace, 2, "a new key");
    assert!(
        replace.stdout_str().contains("must be replaced"),
        "{}",
        replace.stdout_str()
    );
    assert_exit(&ws.tofu(APPLY), 0, "replace");
    assert_eq!(ws.value("beta").as_deref(), Some("two"));
    assert_eq!(
        ws.value("alpha"),
        None,
        "the old file went with the old item"
    );

    ws.config(&item("a/b", "two"));
    let bad = ws.tofu(PLAN);
    assert_exit(&bad, 1, "a bad key");
    assert!(bad.stderr.contains("Invalid key"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("kv_item.a"),
        "names the resource: {}",
        bad.stderr
    );

    ws.config(&item("beta", "two"));
    assert_exit(&ws.tofu(DESTROY), 0, "destroy");
    assert_eq!(ws.value("beta"), None);

    // A value that exists already, taken under management.
    fs::write(ws.dir().join("kv_found"), "there").expect("a file made by hand");
    ws.config(&item("found", "there"));
    let missing = ws.tofu(&[
        "import",
        "-input=false",
        "-no-color",
        "kv_item.a",
        "nothing",
    ]);
    assert_exit(&missing, 1, "importing a missing value");
    assert!(
        missing.stderr.contains("Cannot import a missing value"),
        "the provider's diagnostic: {}",
        missing.stderr
    );
    let import = ws.tofu(&["import", "-input=false", "-no-color", "kv_item.a", "found"]);
    assert_exit(&import, 0, "import");
    assert_exit(
        &ws.tofu(PLAN),
        0,
        "the imported item matches its configuration",
    );
    assert_exit(&ws.tofu(DESTROY), 0, "destroy the imported item");
    assert_eq!(ws.value("found"), None);
}

#[test]
fn opentofu_plans_applies_updates_refreshes_replaces_and_destroys_with_automtls() {
    life_of_a_resource(true);
}

#[test]
fn opentofu_does_the_same_without_plugin_tls() {
    life_of_a_resource(false);
}

#[test]
fn forty_resources_apply_in_parallel_over_one_connection() {
    let ws = Workspace::new(true);
    ws.config(
        "resource \"kv_item\" \"many\" {\n  count = 40\n  key   = \"k${count.index}\"\n  value = \"v${count.index}\"\n}\n",
    );
    assert_exit(&ws.tofu(APPLY), 0, "40 resources");
    for i in 0..40 {
        assert_eq!(ws.value(&format!("k{i}")), Some(format!("v{i}")));
    }
    assert_exit(&ws.tofu(PLAN), 0, "no changes");
    assert_exit(&ws.tofu(DESTROY), 0, "destroy 40");
    assert_eq!(ws.value("k0"), None);
}

/// `tofu apply` of one slow resource, started: the child, once the
/// provider is applying.
fn slow_apply(ws: &Workspace) -> Child {
    ws.config(&item("slow", "x"));
    let mut command = ws.command(APPLY);
    command
        .env("KV_PROVIDER_APPLY_DELAY_MS", "20000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("tofu apply");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in lines.by_ref() {
        let line = line.expect("tofu's stdout");
        if line.contains("Creating...") {
            break;
        }
        assert!(Instant::now() < deadline, "tofu never started creating");
    }
    // Drain the rest, so tofu never blocks on its stdout.
    thread::spawn(move || lines.for_each(drop));
    // The provider is in ApplyResourceChange, waiting.
    thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn ctrl_c_during_a_slow_apply_stops_the_provider_at_once() {
    let ws = Workspace::new(true);
    let mut child = slow_apply(&ws);
    let began = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("tofu's stderr");
    let status = child.wait().expect("tofu exits");
    let took = began.elapsed();
    assert!(!status.success(), "an interrupted apply fails");
    assert!(
        took < Duration::from_secs(5),
        "StopProvider must end the 20 s apply at once; tofu took {took:?}"
    );
    assert!(
        stderr.contains("Stopped"),
        "the apply's diagnostic: {stderr}"
    );
    assert_eq!(ws.value("slow"), None, "nothing written");
    ws.assert_nothing_left();
}

#[test]
fn a_provider_does_not_outlive_a_host_killed_mid_apply() {
    let ws = Workspace::new(true);
    let mut child = slow_apply(&ws);
    let providers = providers_in(ws.dir());
    assert_eq!(providers.len(), 1, "one provider applying: {providers:?}");
    child.kill().expect("SIGKILL tofu");
    child.wait().expect("reaped");
    assert!(
        gone_within(providers[0], Duration::from_secs(1)),
        "the provider outlived its host"
    );
    ws.assert_nothing_left();
}

/// `terraform-provider-kv -debug` in `ws`: the process and the value of
/// `TF_REATTACH_PROVIDERS` it prints.
fn start_debug(ws: &Workspace) -> (Child, String) {
    let mut provider = Command::new(example_bin("terraform-provider-kv"))
        .arg("-debug")
        .current_dir(ws.dir())
        .env("TMPDIR", ws.tmp.path())
        .env_remove("TF_PLUGIN_MAGIC_COOKIE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("terraform-provider-kv -debug");
    let stdout = provider.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let reattach = lines
        .by_ref()
        .map(|line| line.expect("the provider's stdout"))
        .find_map(|line| {
            line.trim()
                .strip_prefix("TF_REATTACH_PROVIDERS='")
                .map(|value| value.trim_end_matches('\'').to_string())
        })
        .expect("the line to export");
    thread::spawn(move || lines.for_each(drop));
    (provider, reattach)
}

/// The provider's entry of a `TF_REATTACH_PROVIDERS` value.
fn reattach_entry(reattach: &str) -> goplugin::ReattachConfig {
    let config: serde_json::Value = serde_json::from_str(reattach).expect("JSON");
    let entry = config
        .get("registry.opentofu.org/goplugin/kv")
        .expect("the provider's address");
    goplugin::ReattachConfig::from_json(&entry.to_string()).expect("go-plugin's form")
}

#[test]
fn debug_mode_serves_opentofu_through_tf_reattach_providers() {
    let ws = Workspace::new(true);
    let (mut provider, reattach) = start_debug(&ws);
    let entry = reattach_entry(&reattach);
    assert_eq!(entry.protocol, "grpc");
    assert_eq!(entry.protocol_version, 6);
    assert!(entry.test);
    assert_eq!(entry.pid, provider.id());

    ws.config(&item("debug", "attached"));
    for args in [APPLY, DESTROY] {
        let mut command = ws.command(args);
        command.env("TF_REATTACH_PROVIDERS", &reattach);
        let output = run(command);
        assert_exit(&output, 0, "tofu with the debug provider");
        if args == APPLY {
            assert_eq!(ws.value("debug").as_deref(), Some("attached"));
        }
        // tofu does not stop a provider in test mode.
        assert!(alive(provider.id()), "the debug provider still serves");
    }
    assert_eq!(ws.value("debug"), None);
    Command::new("kill")
        .args(["-INT", &provider.id().to_string()])
        .status()
        .expect("Ctrl-C");
    let status = provider.wait().expect("the provider exits");
    assert!(status.success(), "Ctrl-C ends debug mode cleanly: {status}");
    ws.assert_nothing_left();
}

#[test]
fn a_debug_provider_stops_when_a_host_that_owns_it_kills_it() {
    let ws = Workspace::new(true);
    let (mut provider, reattach) = start_debug(&ws);
    let mut entry = reattach_entry(&reattach);
    // A host that takes it over rather than borrowing it.
    entry.test = false;
    let handshake = goplugin::HandshakeConfig {
        protocol_version: 6,
        magic_cookie_key: "TF_PLUGIN_MAGIC_COOKIE",
        magic_cookie_value: "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
    };
    let client = goplugin::Client::builder(handshake)
        .reattach(entry)
        .start()
        .expect("attach to the debug provider");
    client.ping().expect("health");
    client.kill();
    let status = provider.wait().expect("the provider exits");
    assert!(
        status.success(),
        "the host's Kill ends debug mode: {status}"
    );
    ws.assert_nothing_left();
}
