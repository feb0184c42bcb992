//! goplugin-build on protocols that trip code generators: a user crate
//! with keyword RPC names, a service named `S`, a dotted file, an
//! unlisted import and a proto2 required field (tests/fixtures/odd-names), and real go-plugin
//! ecosystems' protos (tests/fixtures/proto-corpus, fetched by `make
//! test`), each built as a user crate and run over the wire.

use std::process::Command;

use crate::support::{build_user_crate, run, tempdir};

#[test]
fn keyword_rpcs_a_service_named_s_a_dotted_file_and_an_unlisted_import_answer_over_the_wire() {
    let binary = build_user_crate("odd-names");
    let dir = tempdir();
    let mut command = Command::new(&binary);
    command.current_dir(dir.path()).env("TMPDIR", dir.path());
    let out = run(command);
    let stdout = out.stdout_str();
    assert!(out.status.success(), "{stdout}\n{}", out.stderr);
    assert_eq!(
        stdout,
        "Type: type of x (9 letters)\n\
         Match: y matches (9 letters)\n\
         Do: done (4 letters)\n\
         Letters: a,b,c\n\
         Type (async): type of z (9 letters)\n\
         Async: async w (7 letters)\n\
         Check: id 7 (4 letters)\n\
         Check without id: 13-INTERNAL Failed to deserialize response message: \
         Codec(Error(MessageNotInitialized(\"Legacy\")))\n"
    );
}

#[test]
fn the_proto_corpus_compiles_serves_and_answers() {
    let binary = build_user_crate("proto-corpus");
    let out = run(Command::new(&binary));
    let stdout = out.stdout_str();
    assert!(out.status.success(), "{stdout}\n{}", out.stderr);
    for expected in [
        "ok tfplugin5.Provider: ",
        "ok tfplugin5.Provisioner: ",
        "ok tfplugin6.Provider: ",
        "ok plugin.GRPCController: 1 calls (shutdown)",
        "ok plugin.GRPCBroker: 0 calls",
        "ok plugin.GRPCStdio: 0 calls",
        "ok pb.Backend: ",
        "ok pb.Storage: ",
        "ok pb.SystemView: ",
        "ok dbplugin.Database: ",
        "ok dbplugin.v5.Database: ",
        "ok pluginv2.Data: ",
        "ok kms: messages only, compiled",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    // `rpc Type` of Vault's Backend and both Database services.
    for service in ["pb.Backend", "dbplugin.Database", "dbplugin.v5.Database"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("ok {service}: ")))
            .expect("the service's line");
        assert!(line.contains("type_"), "{line}");
    }
    assert!(stdout.contains(" services served and "), "{stdout}");
}

/// goplugin-build generates services itself: no grpcio-compiler and no
/// protobuf 2 (RUSTSEC-2024-0437) anywhere in the graph, build time
/// included.
#[test]
fn no_protobuf_2_in_the_dependency_graph() {
    let lock =
        std::fs::read_to_string(crate::support::repo().join("Cargo.lock")).expect("Cargo.lock");
    for package in lock.split("[[package]]") {
        let field = |key: &str| {
            package
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{key} = \"")))
                .and_then(|rest| rest.strip_suffix('"'))
                .unwrap_or_default()
                .to_string()
        };
        let (name, version) = (field("name"), field("version"));
        assert!(
            !(name == "protobuf" && version.starts_with("2.")) && name != "grpcio-compiler",
            "{name} {version} is in Cargo.lock"
        );
    }
}
