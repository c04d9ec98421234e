//! A gRPC stack other than tonic against the client port: Python's `grpcio` with
//! `grpcio-reflection` (which speaks only reflection **v1alpha**, as older grpcurl does) and
//! `grpcio-health-checking` (the standard `grpc.health.v1` client, what `grpc_health_probe`
//! and Kubernetes' gRPC probes send).
//!
//! The reflection script does what grpcurl does: it lists the services over v1alpha, loads the
//! descriptors of `ringcache.v1.Cache` from the node, builds the request and response types
//! from them and calls `Set` and `Get` with those types alone (no generated code).
//!
//! Python is the virtualenv `scripts/test-deps` makes at `<cargo target dir>/python-clients`
//! from `tests/python-requirements.txt`, or `$RINGCACHE_TEST_PYTHON`; a missing interpreter or
//! package fails the test with the command that installs it. Each run is bounded by a timeout.

use std::process::Stdio;
use std::time::Duration;

use ringcache_server::Config;
use ringcache_tests::{TestNode, wait_until};
use tokio::net::UdpSocket;

/// Longest one script may run.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for a node to become ready.
const DEADLINE: Duration = Duration::from_secs(20);
/// How to install what the tests need.
const INSTALL: &str = "run scripts/test-deps (with the same CARGO_TARGET_DIR): it makes the \
    virtualenv <target>/python-clients with tests/python-requirements.txt; or point \
    RINGCACHE_TEST_PYTHON at a Python 3 with grpcio-reflection and grpcio-health-checking";

use ringcache_test_support::python;

/// Runs `script` with `args`; returns its stdout, or panics with its output unless it exits 0.
async fn run_python(script: &str, args: &[String]) -> String {
    let check = "import grpc, grpc_reflection.v1alpha, grpc_health.v1";
    let probe = tokio::process::Command::new(python())
        .args(["-c", check])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", python()));
    assert!(
        probe.status.success(),
        "{} lacks the gRPC packages: {}; {INSTALL}",
        python(),
        String::from_utf8_lossy(&probe.stderr)
    );
    let child = tokio::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", python()));
    let output = tokio::time::timeout(SCRIPT_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the script did not finish within {SCRIPT_DEADLINE:?}"))
        .expect("wait for the script");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the script failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Lists the services over reflection v1alpha, then calls Cache.Set and Cache.Get with types
/// built from the descriptors reflection returned. Prints one line per result.
const REFLECTION: &str = r#"
import sys, grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

channel = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(channel).result(timeout=10)
database = ProtoReflectionDescriptorDatabase(channel)
services = sorted(database.get_services())
print("services", " ".join(services))

pool = descriptor_pool.DescriptorPool(database)
cache = pool.FindServiceByName("ringcache.v1.Cache")
print("methods", " ".join(sorted(m.name for m in cache.methods)))

def call(method, **fields):
    descriptor = cache.methods_by_name[method]
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    stub = channel.unary_unary(
        "/ringcache.v1.Cache/" + method,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return stub(request_type(**fields), timeout=10)

stored = call("Set", key=b"reflected", value=b"from python")
print("set stored", stored.stored)
got = call("Get", key=b"reflected")
print("get", got.found, got.value.decode())
"#;

/// `grpc.health.v1.Health/Check` of each name in `argv[2:]` (`-` for the empty name); prints
/// `name status`, with `NOT_FOUND` for a name the server does not know.
const HEALTH: &str = r#"
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

channel = grpc.insecure_channel(sys.argv[1])
stub = health_pb2_grpc.HealthStub(channel)
for name in sys.argv[2:]:
    service = "" if name == "-" else name
    try:
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        print(name, health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    except grpc.RpcError as error:
        print(name, error.code().name)
"#;

#[tokio::test]
async fn python_grpcio_reflection_v1alpha_finds_and_calls_the_cache() {
    let node = TestNode::start_default().await;
    let out = run_python(REFLECTION, &[node.grpc_target()]).await;
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
            .to_owned()
    };
    let services = line("services ");
    for service in [
        "ringcache.v1.Cache",
        "ringcache.v1.Cluster",
        "ringcache.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.split(' ').any(|s| s == service),
            "{service} missing: {services}"
        );
    }
    assert!(!services.contains("ringcache.v1.Internal"), "{services}");
    let methods = line("methods ");
    for method in ["Get", "Set", "Pipeline"] {
        assert!(methods.split(' ').any(|m| m == method), "{methods}");
    }
    assert_eq!(line("set "), "set stored True");
    assert_eq!(line("get "), "get True from python");
    // The value is really in the node.
    let stored = node
        .node
        .store()
        .get(b"reflected", node.node.now_ms())
        .unwrap();
    assert_eq!(
        stored.map(|item| item.value.to_vec()),
        Some(b"from python".to_vec())
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn python_grpc_health_client_sees_not_serving_then_serving() {
    let names = ["-", "ringcache.v1.Cache", "no.such.Service"].map(str::to_owned);
    let args = |node: &TestNode| {
        let mut args = vec![node.grpc_target()];
        args.extend(names.iter().cloned());
        args
    };

    // A node whose seed never answers is not ready, so not serving.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::for_test();
    config.node_id = "a".to_owned();
    config.seeds = vec![silent.local_addr().unwrap().to_string()];
    let a = TestNode::start(config).await;
    wait_until(DEADLINE, || async {
        a.node
            .readiness()
            .is_err_and(|reason| reason.starts_with("not joined"))
    })
    .await
    .expect("the node reports not joined");
    let out = run_python(HEALTH, &args(&a)).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "- NOT_SERVING",
            "ringcache.v1.Cache NOT_SERVING",
            "no.such.Service NOT_FOUND"
        ],
        "{out}"
    );

    // A peer joins: ready, so serving.
    let mut config = Config::for_test();
    config.node_id = "b".to_owned();
    config.seeds = vec![a.gossip_addr.unwrap().to_string()];
    let _b = TestNode::start(config).await;
    let want = [
        "- SERVING",
        "ringcache.v1.Cache SERVING",
        "no.such.Service NOT_FOUND",
    ];
    // Once ready (the ring settles after the join), the client sees it.
    let last = std::sync::Mutex::new(String::new());
    let seen = wait_until(DEADLINE, || async {
        let out = run_python(HEALTH, &args(&a)).await;
        let done = out.lines().eq(want);
        *last.lock().unwrap() = out;
        done
    })
    .await;
    assert!(
        seen.is_ok(),
        "never {want:?}; last:\n{}",
        last.lock().unwrap()
    );
    drop(silent);
}
