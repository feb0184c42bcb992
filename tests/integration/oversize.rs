//! A message far over the plugin's limit, from a local client that can
//! reach the listener (TCP without AutoMTLS): refused without being held,
//! memory stays bounded, the plugin and the host's calls go on.

use std::sync::Arc;
use std::time::Duration;

use goplugin::grpcio::{CallOption, ChannelBuilder, EnvBuilder, RpcStatusCode};
use kv_plugin::proto::{kv::PutRequest, kv_grpc::KvClient};

use crate::support::{COOKIE, Plugin, Running, rss_kb};

#[test]
fn a_600_mb_message_is_refused_without_being_held() {
    let running = Running::start(Plugin::Rust, &[COOKIE, ("KV_PLUGIN_NETWORK", "tcp")]);
    let pid = running.pid();
    let host = KvClient::new(running.channel());
    let small = |key: &str| PutRequest {
        key: key.into(),
        value: vec![1; 1 << 20],
        ..Default::default()
    };
    host.put(&small("before")).expect("put before");
    let before = rss_kb(pid);

    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let stranger = KvClient::new(
        ChannelBuilder::new(env)
            .max_send_message_len(-1)
            .connect(&running.target()),
    );
    let huge = PutRequest {
        key: "huge".into(),
        value: vec![7; 600 << 20],
        ..Default::default()
    };
    match stranger.put_opt(
        &huge,
        CallOption::default().timeout(Duration::from_secs(60)),
    ) {
        Err(goplugin::grpcio::Error::RpcFailure(status)) => {
            assert_eq!(
                status.code(),
                RpcStatusCode::RESOURCE_EXHAUSTED,
                "{status:?}"
            )
        }
        other => panic!("a 600 MB Put must be RESOURCE_EXHAUSTED, got {other:?}"),
    }
    drop(huge);
    // gRPC frees the reset stream's buffers on its own threads, a moment
    // after the client has its answer, and kv-plugin gives free memory
    // back once a second: the lowest RSS of the next two seconds.
    let settled = || {
        let mut lowest = rss_kb(pid);
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            lowest = lowest.min(rss_kb(pid));
        }
        lowest
    };
    // While the stranger's connection stays open, gRPC may keep buffers of
    // it, within the server's memory quota (8 × (4 MiB + 64 KiB)).
    let open = settled();
    drop(stranger);
    let closed = settled();
    eprintln!(
        "plugin RSS: {before} kB before, {open} kB after a 600 MB Put with the sender's \
         connection open, {closed} kB once it closed"
    );
    assert!(
        open < before + 40 * 1024,
        "{before} kB before, {open} kB after, connection open"
    );
    // Once it is gone, kv-plugin has glibc give the memory back: within a
    // few MB of before (issue #11).
    assert!(
        closed < before + 8 * 1024,
        "{before} kB before, {closed} kB after, connection closed"
    );
    host.put(&small("after"))
        .expect("the host's connection goes on");
    let _ = running.shutdown();
}
