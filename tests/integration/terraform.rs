//! `terraform-provider-kv` through HashiCorp Terraform and OpenTofu, both
//! built from their Go modules at pinned releases by `make terraform`: the
//! whole life of a resource with and without AutoMTLS, Ctrl-C during a slow
//! apply, the host SIGKILLed mid-apply, 40 resources at once, and debug
//! mode with the `TF_REATTACH_PROVIDERS` line the provider prints, as is.
//! After every step no provider runs in the working directory and no socket
//! is left in its `TMPDIR`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Output, alive, assert_nothing_left, example_bin, gone_within, processes_in, repo, run, tempdir,
};

/// The two hosts of Terraform providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// HashiCorp Terraform v1.5.7 (tests/fixtures/terraform).
    Terraform,
    /// OpenTofu (tests/fixtures/opentofu).
    OpenTofu,
}

impl Tool {
    /// The binary `make terraform` builds.
    fn binary(self) -> PathBuf {
        let path = repo().join(match self {
            Tool::Terraform => ".build/terraform/terraform",
            Tool::OpenTofu => ".build/opentofu/tofu",
        });
        assert!(
            path.exists(),
            "{} is missing: build it with `make terraform` (or run `make test`)",
            path.display()
        );
        path
    }

    /// The CLI configuration docs/terraform-and-opentofu.md gives for
    /// this tool, as it is (the tests use it, so it cannot go stale).
    fn documented_cli_config(self) -> String {
        let guide = fs::read_to_string(repo().join("docs/terraform-and-opentofu.md"))
            .expect("the providers guide");
        let key = format!("\"{}/goplugin/kv\"", self.registry());
        guide
            .split("```hcl\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .find(|block| block.contains(&key))
            .unwrap_or_else(|| panic!("the guide has no CLI configuration for {key}"))
            .to_string()
    }

    /// The registry a configuration's `source = "goplugin/kv"` means.
    fn registry(self) -> &'static str {
        match self {
            Tool::Terraform => "registry.terraform.io",
            Tool::OpenTofu => "registry.opentofu.org",
        }
    }
}

/// A working directory for a tool with the provider installed through
/// `dev_overrides` (the README's CLI configuration), its own `TMPDIR` (the
/// provider's sockets) and `HOME`.
struct Workspace {
    tool: Tool,
    dir: tempfile::TempDir,
    tmp: tempfile::TempDir,
    home: tempfile::TempDir,
    tls: bool,
}

impl Workspace {
    fn new(tool: Tool, tls: bool) -> Workspace {
        let provider_dir = example_bin("terraform-provider-kv")
            .parent()
            .expect("the binary's directory")
            .display()
            .to_string();
        Workspace::with_cli_config(
            tool,
            tls,
            &tool.documented_cli_config().replace(
                "/path/to/the/directory/of/terraform-provider-kv",
                &provider_dir,
            ),
        )
    }

    /// A workspace where the provider is not installed at all: only a
    /// debug provider's `TF_REATTACH_PROVIDERS` can serve it.
    fn uninstalled(tool: Tool) -> Workspace {
        Workspace::with_cli_config(tool, true, "")
    }

    fn with_cli_config(tool: Tool, tls: bool, config: &str) -> Workspace {
        let workspace = Workspace {
            tool,
            dir: tempdir(),
            tmp: tempdir(),
            home: tempdir(),
            tls,
        };
        fs::write(workspace.home.path().join("cli.tfrc"), config).expect("CLI config");
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
        let mut command = Command::new(self.tool.binary());
        command
            .args(args)
            .current_dir(self.dir())
            .env("TF_CLI_CONFIG_FILE", self.home.path().join("cli.tfrc"))
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

    /// Runs the tool with `args` to its end; then checks that nothing is
    /// left.
    fn run(&self, args: &[&str]) -> Output {
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

fn life_of_a_resource(tool: Tool, tls: bool) {
    let ws = Workspace::new(tool, tls);
    ws.config(&item("alpha", "one"));
    let plan = ws.run(PLAN);
    assert_exit(&plan, 2, "a plan with a change");
    assert!(
        plan.stdout_str().contains("1 to add"),
        "{}",
        plan.stdout_str()
    );

    let apply = ws.run(APPLY);
    assert_exit(&apply, 0, "apply");
    assert_eq!(ws.value("alpha").as_deref(), Some("one"));
    assert!(
        apply.stdout_str().contains("read = \"one\""),
        "{}",
        apply.stdout_str()
    );
    assert_exit(&ws.run(PLAN), 0, "no changes after apply");

    ws.config(&item("alpha", "two"));
    let update = ws.run(APPLY);
    assert_exit(&update, 0, "update");
    assert!(
        update.stdout_str().contains("1 changed"),
        "{}",
        update.stdout_str()
    );
    assert_eq!(ws.value("alpha").as_deref(), Some("two"));

    fs::remove_file(ws.dir().join("kv_alpha")).expect("deleted by hand");
    let drift = ws.run(PLAN);
    assert_exit(&drift, 2, "drift: the file is gone");
    assert!(
        drift.stdout_str().contains("1 to add"),
        "{}",
        drift.stdout_str()
    );
    assert_exit(&ws.run(APPLY), 0, "apply after drift");
    assert_eq!(ws.value("alpha").as_deref(), Some("two"));

    ws.config(&item("beta", "two"));
    let replace = ws.run(PLAN);
    assert_exit(&replace, 2, "a new key");
    assert!(
        replace.stdout_str().contains("must be replaced"),
        "{}",
        replace.stdout_str()
    );
    assert_exit(&ws.run(APPLY), 0, "replace");
    assert_eq!(ws.value("beta").as_deref(), Some("two"));
    assert_eq!(
        ws.value("alpha"),
        None,
        "the old file went with the old item"
    );

    ws.config(&item("a/b", "two"));
    let bad = ws.run(PLAN);
    assert_exit(&bad, 1, "a bad key");
    assert!(bad.stderr.contains("Invalid key"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("kv_item.a"),
        "names the resource: {}",
        bad.stderr
    );

    ws.config(&item("beta", "two"));
    assert_exit(&ws.run(DESTROY), 0, "destroy");
    assert_eq!(ws.value("beta"), None);

    // A value that exists already, taken under management.
    fs::write(ws.dir().join("kv_found"), "there").expect("a file made by hand");
    ws.config(&item("found", "there"));
    let missing = ws.run(&[
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
    let import = ws.run(&["import", "-input=false", "-no-color", "kv_item.a", "found"]);
    assert_exit(&import, 0, "import");
    assert_exit(
        &ws.run(PLAN),
        0,
        "the imported item matches its configuration",
    );
    assert_exit(&ws.run(DESTROY), 0, "destroy the imported item");
    assert_eq!(ws.value("found"), None);
}

#[test]
fn terraform_plans_applies_updates_refreshes_replaces_imports_and_destroys_with_automtls() {
    life_of_a_resource(Tool::Terraform, true);
}

#[test]
fn terraform_does_the_same_without_plugin_tls() {
    life_of_a_resource(Tool::Terraform, false);
}

#[test]
fn opentofu_plans_applies_updates_refreshes_replaces_imports_and_destroys_with_automtls() {
    life_of_a_resource(Tool::OpenTofu, true);
}

#[test]
fn opentofu_does_the_same_without_plugin_tls() {
    life_of_a_resource(Tool::OpenTofu, false);
}

#[test]
fn terraform_applies_forty_resources_in_parallel_over_one_connection() {
    forty_resources(Tool::Terraform);
}

#[test]
fn opentofu_applies_forty_resources_in_parallel_over_one_connection() {
    forty_resources(Tool::OpenTofu);
}

fn forty_resources(tool: Tool) {
    let ws = Workspace::new(tool, true);
    ws.config(
        "resource \"kv_item\" \"many\" {\n  count = 40\n  key   = \"k${count.index}\"\n  value = \"v${count.index}\"\n}\n",
    );
    assert_exit(&ws.run(APPLY), 0, "40 resources");
    for i in 0..40 {
        assert_eq!(ws.value(&format!("k{i}")), Some(format!("v{i}")));
    }
    assert_exit(&ws.run(PLAN), 0, "no changes");
    assert_exit(&ws.run(DESTROY), 0, "destroy 40");
    assert_eq!(ws.value("k0"), None);
}

/// Ctrl-C (SIGINT) to `child`, as a terminal would send it.
fn ctrl_c(child: &Child) {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success(), "kill -INT {}", child.id());
}

/// An apply of one slow resource, started: the child, once the provider is
/// applying.
fn slow_apply(ws: &Workspace) -> Child {
    ws.config(&item("slow", "x"));
    let mut command = ws.command(APPLY);
    command
        .env("KV_PROVIDER_APPLY_DELAY_MS", "20000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("apply");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in lines.by_ref() {
        let line = line.expect("the tool's stdout");
        if line.contains("Creating...") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the apply never started creating"
        );
    }
    // Drain the rest, so the tool never blocks on its stdout.
    thread::spawn(move || lines.for_each(drop));
    // The provider is in ApplyResourceChange, waiting.
    thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn terraform_ctrl_c_during_a_slow_apply_stops_the_provider_at_once() {
    ctrl_c_during_a_slow_apply(Tool::Terraform);
}

#[test]
fn opentofu_ctrl_c_during_a_slow_apply_stops_the_provider_at_once() {
    ctrl_c_during_a_slow_apply(Tool::OpenTofu);
}

fn ctrl_c_during_a_slow_apply(tool: Tool) {
    let ws = Workspace::new(tool, true);
    let mut child = slow_apply(&ws);
    let began = Instant::now();
    ctrl_c(&child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("the tool's stderr");
    let status = child.wait().expect("the tool exits");
    let took = began.elapsed();
    assert!(!status.success(), "an interrupted apply fails");
    assert!(
        took < Duration::from_secs(5),
        "StopProvider must end the 20 s apply at once; {tool:?} took {took:?}"
    );
    assert!(
        stderr.contains("Stopped"),
        "the apply's diagnostic: {stderr}"
    );
    assert_eq!(ws.value("slow"), None, "nothing written");
    ws.assert_nothing_left();
}

#[test]
fn a_provider_does_not_outlive_terraform_killed_mid_apply() {
    host_killed_mid_apply(Tool::Terraform);
}

#[test]
fn a_provider_does_not_outlive_opentofu_killed_mid_apply() {
    host_killed_mid_apply(Tool::OpenTofu);
}

fn host_killed_mid_apply(tool: Tool) {
    let ws = Workspace::new(tool, true);
    let mut child = slow_apply(&ws);
    let providers = providers_in(ws.dir());
    assert_eq!(providers.len(), 1, "one provider applying: {providers:?}");
    child.kill().expect("SIGKILL the tool");
    child.wait().expect("reaped");
    assert!(
        gone_within(providers[0], Duration::from_secs(1)),
        "the provider outlived its host"
    );
    ws.assert_nothing_left();
}

/// `terraform-provider-kv -debug` (and `args`) in `ws`: the process, and
/// the value of `TF_REATTACH_PROVIDERS` it prints (the line as is).
fn start_debug(ws: &Workspace, args: &[&str]) -> (Child, String) {
    let mut provider = Command::new(example_bin("terraform-provider-kv"))
        .arg("-debug")
        .args(args)
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

/// The entries of a `TF_REATTACH_PROVIDERS` value.
fn reattach_entries(reattach: &str) -> BTreeMap<String, goplugin::ReattachConfig> {
    goplugin::ReattachConfig::map_from_json(reattach).expect("a map of go-plugin's form")
}

#[test]
fn terraform_attaches_to_a_debug_provider_with_the_line_it_prints() {
    debug_mode(Tool::Terraform);
}

#[test]
fn opentofu_attaches_to_a_debug_provider_with_the_line_it_prints() {
    debug_mode(Tool::OpenTofu);
}

/// The provider in debug mode, not installed for the tool: the tool serves
/// the configuration through it ("unmanaged") and starts no provider of
/// its own, then Ctrl-C ends it cleanly.
fn debug_mode(tool: Tool) {
    let ws = Workspace::uninstalled(tool);
    let (mut provider, reattach) = start_debug(&ws, &[]);
    let entries = reattach_entries(&reattach);
    assert_eq!(
        entries.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "registry.opentofu.org/goplugin/kv",
            "registry.terraform.io/goplugin/kv"
        ],
        "one line for both tools"
    );
    for entry in entries.values() {
        assert_eq!(entry.protocol, "grpc");
        assert_eq!(entry.protocol_version, 6);
        assert!(entry.test);
        assert_eq!(entry.pid, provider.id());
    }

    ws.config(&item("debug", "attached"));
    for args in [APPLY, DESTROY] {
        let mut command = ws.command(args);
        command
            .env("TF_REATTACH_PROVIDERS", &reattach)
            .env("TF_LOG", "trace");
        let output = run(command);
        assert_exit(&output, 0, "the tool with the debug provider");
        let unmanaged = format!(
            "Provider {}/goplugin/kv is overridden as an \"unmanaged provider\"",
            tool.registry()
        );
        assert!(
            output.stderr.contains(&unmanaged),
            "{tool:?} takes the provider from the line: {}",
            output.stderr
        );
        assert!(
            !output.stderr.contains("starting plugin"),
            "{tool:?} started a provider of its own"
        );
        if args == APPLY {
            assert_eq!(ws.value("debug").as_deref(), Some("attached"));
        }
        // A tool does not stop a provider in test mode.
        assert!(alive(provider.id()), "the debug provider still serves");
        assert_eq!(providers_in(ws.dir()), [provider.id()]);
    }
    assert_eq!(ws.value("debug"), None);
    ctrl_c(&provider);
    let status = provider.wait().expect("the provider exits");
    assert!(status.success(), "Ctrl-C ends debug mode cleanly: {status}");
    ws.assert_nothing_left();
}

/// `--address` chooses the key; a full address is keyed under its host
/// only, and a bad one fails before serving, naming it.
#[test]
fn a_debug_providers_address_is_its_authors_choice() {
    let ws = Workspace::uninstalled(Tool::Terraform);
    let (mut provider, reattach) = start_debug(&ws, &["--address", "registry.terraform.io/me/kv"]);
    assert_eq!(
        reattach_entries(&reattach)
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["registry.terraform.io/me/kv"]
    );
    ctrl_c(&provider);
    let status = provider.wait().expect("the provider exits");
    assert!(status.success(), "Ctrl-C ends debug mode cleanly: {status}");

    let mut command = Command::new(example_bin("terraform-provider-kv"));
    command
        .args(["-debug", "--address", "me/kv_item"])
        .current_dir(ws.dir())
        .env("TMPDIR", ws.tmp.path());
    let bad = run(command);
    assert_eq!(bad.status.code(), Some(1), "{}", bad.stderr);
    assert!(bad.stdout.is_empty(), "nothing on stdout");
    assert!(
        bad.stderr
            .contains("provider address \"me/kv_item\": type \"kv_item\""),
        "{}",
        bad.stderr
    );
    ws.assert_nothing_left();
}

#[test]
fn a_debug_provider_stops_when_a_host_that_owns_it_kills_it() {
    let ws = Workspace::uninstalled(Tool::OpenTofu);
    let (mut provider, reattach) = start_debug(&ws, &[]);
    let mut entry = reattach_entries(&reattach)
        .remove("registry.terraform.io/goplugin/kv")
        .expect("the provider's entry");
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
