//! The Dockerfile, the container health check and docker-compose: how they build and start
//! ringcached, checked against the binary.

use super::*;

// ---- the Dockerfile ------------------------------------------------------------------------------

/// Instructions as `(INSTRUCTION, rest)`, continuation lines joined, comments dropped.
pub(super) fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

pub(super) fn docker_stages() -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (op, rest) in dockerfile() {
        if op == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().unwrap().push((op, rest));
    }
    stages
}

/// The runtime stage: the last one.
pub(super) fn docker_runtime() -> Vec<(String, String)> {
    docker_stages().pop().unwrap()
}

pub(super) fn docker_exec_form(rest: &str, what: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{what} {rest}: want exec form: {e}"))
}

/// The image's `ENV`, every variable.
pub(super) fn docker_env() -> BTreeMap<String, String> {
    docker_runtime()
        .iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(super) fn ringcache_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, _)| k.starts_with("RINGCACHE_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(super) fn docker_launch() -> Launch {
    let runtime = docker_runtime();
    let find = |name: &str| {
        runtime
            .iter()
            .rev()
            .find(|(op, _)| op == name)
            .map(|(_, rest)| docker_exec_form(rest, name))
    };
    let entrypoint = find("ENTRYPOINT").expect("an ENTRYPOINT");
    assert_eq!(entrypoint[0], "ringcached", "the entrypoint is ringcached");
    let mut args = entrypoint[1..].to_vec();
    args.extend(find("CMD").unwrap_or_default());
    Launch {
        what: "Dockerfile".into(),
        args,
        env: ringcache_env(&docker_env()),
        config: None,
        secrets: BTreeMap::new(),
    }
}

// ---- docker-compose ------------------------------------------------------------------------------

pub(super) fn compose() -> Value {
    let docs = yaml_docs("docker-compose.yml");
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

pub(super) fn compose_services() -> Vec<(String, Value)> {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(super) fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .map(|item| {
                let (k, v) = str_of(item, "environment").split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

pub(super) fn compose_launches() -> Vec<(Launch, Value)> {
    compose_services()
        .into_iter()
        .map(|(name, service)| {
            let args = match &service["command"] {
                Value::Array(list) => list
                    .iter()
                    .map(|a| str_of(a, "command").to_owned())
                    .collect(),
                Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            let mut env = ringcache_env(&docker_env());
            env.extend(ringcache_env(&compose_env(&service)));
            let launch = Launch {
                what: format!("docker-compose.yml {name}"),
                args,
                env,
                config: None,
                secrets: BTreeMap::new(),
            };
            (launch, service)
        })
        .collect()
}

#[test]
pub(super) fn dockerfile_builds_both_binaries_and_runs_them_unprivileged() {
    let stages = docker_stages();
    let args: BTreeMap<String, String> = stages[0]
        .iter()
        .filter(|(op, _)| op == "ARG")
        .filter_map(|(_, rest)| rest.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let image = |stage: &[(String, String)]| {
        let from = &stage[0];
        assert_eq!(from.0, "FROM");
        let mut image = from.1.split_whitespace().next().unwrap().to_owned();
        for (k, v) in &args {
            image = image.replace(&format!("${{{k}}}"), v);
        }
        image
    };
    let (builder, runtime) = (&stages[1], &stages[stages.len() - 1]);
    assert_eq!(
        stages.len(),
        3,
        "one ARG preamble, a builder and a runtime stage"
    );
    assert_eq!(image(builder), "rust:1-bookworm");
    assert_eq!(image(runtime), "debian:bookworm-slim");
    let build = builder
        .iter()
        .find(|(op, rest)| op == "RUN" && rest.contains("cargo build"))
        .expect("a cargo build step");
    for part in ["--release", "--locked", "--bin ringcached", "--bin ringctl"] {
        assert!(build.1.contains(part), "cargo build without {part}");
    }

    // COPY sources from the context exist (the context is the repository root).
    for (op, rest) in stages.iter().flatten() {
        if op != "COPY" || rest.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: no such path");
        }
    }
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, rest)| rest)
        .collect();
    assert!(
        copies.iter().any(|c| c.contains("--from=builder")
            && c.contains("/ringcached")
            && c.contains("/ringctl")
            && c.ends_with("/usr/local/bin/")),
        "both binaries go to /usr/local/bin"
    );
    assert!(
        copies.iter().any(|c| c
            .contains("deploy/healthcheck.sh /usr/local/bin/ringcache-healthcheck")
            && c.contains("--chmod=0755")),
        "the health check script is installed executable"
    );

    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, rest)| rest.clone())
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric uid");
    assert_ne!(uid, 0, "runs as root");
    // The data dir's mount point exists, owned by that user (a new named volume copies it).
    assert!(
        runtime.iter().any(|(op, rest)| op == "RUN"
            && rest.contains(DATA_DIR)
            && rest.contains(&format!("-o {uid}"))),
        "the image makes {DATA_DIR}, owned by uid {uid}"
    );
    for m in k8s_sets() {
        let sts = statefulset(&m);
        assert_eq!(
            sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"], uid,
            "{}: the pod runs as the image's user",
            m.what
        );
    }

    let exposed: BTreeSet<String> = runtime
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let want: BTreeSet<String> = [
        format!("{GRPC_PORT}/tcp"),
        format!("{GOSSIP_PORT}/udp"),
        format!("{HTTP_PORT}/tcp"),
        "7382/tcp".to_owned(),
        format!("{RESP_PORT}/tcp"),
    ]
    .into();
    assert_eq!(exposed, want);

    let health = runtime
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, rest)| rest.clone())
        .expect("a HEALTHCHECK");
    let (_, cmd) = health.split_once("CMD ").expect("HEALTHCHECK ... CMD");
    assert_eq!(
        docker_exec_form(cmd, "HEALTHCHECK CMD"),
        ["ringcache-healthcheck", "/health/live"]
    );
    let script = read("healthcheck.sh");
    assert!(script.contains(&format!("${{RINGCACHE_HTTP_PORT:-{HTTP_PORT}}}")));

    assert_eq!(
        docker_env().get("RINGCACHE_BIND").map(String::as_str),
        Some("0.0.0.0")
    );
    assert!(
        dockerfile()
            .iter()
            .any(|(op, rest)| op == "STOPSIGNAL" && rest == "SIGTERM")
    );
    let ignore = read("Dockerfile.dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "target/ stays out of the context"
    );

    // As documented: the image's wildcard bind without an advertise address is refused, by name.
    let out = Command::new(BIN)
        .env_clear()
        .envs(docker_env())
        .args(["--grpc-port=0", "--http-port=0", "--gossip-port=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("advertise_addr"));
}

#[test]
pub(super) fn the_health_check_script_passes_on_a_live_node_and_fails_on_a_dead_one() {
    let script = deploy().join("healthcheck.sh");
    let check = |port: u16, path: &str| {
        Command::new("bash")
            .arg(&script)
            .arg(path)
            .env("RINGCACHE_HTTP_PORT", port.to_string())
            .stderr(Stdio::null())
            .status()
            .expect("run bash")
            .success()
    };
    let (node, addr) = local_node();
    let (_, port) = host_port(&addr);
    assert!(check(port, "/health/live"));
    assert!(check(port, "/health/ready"), "a lone node is active");
    assert!(!check(port, "/no/such/path"), "only a 200 passes");
    drop(node);
    assert!(!check(port, "/health/live"), "nobody listens any more");
}

#[test]
pub(super) fn compose_nodes_advertise_their_own_address_and_join_through_node_one() {
    let compose = compose();
    let networks = compose["networks"].as_object().expect("networks");
    assert_eq!(networks.len(), 1, "one user network");
    let (network, definition) = networks.iter().next().unwrap();
    let subnet = str_of(
        &definition["ipam"]["config"][0]["subnet"],
        "the network's subnet",
    );

    let launches = compose_launches();
    assert_eq!(launches.len(), 3, "three nodes");
    let mut addresses = Vec::new();
    let mut ids = BTreeSet::new();
    for (launch, service) in &launches {
        let what = &launch.what;
        let ip = ipv4(str_of(
            &service["networks"][network]["ipv4_address"],
            "ipv4_address",
        ));
        assert!(in_subnet(ip, subnet), "{what}: {ip} outside {subnet}");
        assert_eq!(launch.setting("bind").as_deref(), Some("0.0.0.0"), "{what}");
        assert_eq!(
            launch.setting("advertise_addr"),
            Some(ip.to_string()),
            "{what} advertises its own address"
        );
        let id = launch.setting("node_id").expect("a node id");
        assert!(ids.insert(id.clone()), "{what}: node id {id} used twice");
        addresses.push(ip.to_string());

        let health = serde_json::to_string(&service["healthcheck"]["test"]).unwrap();
        assert!(
            health.contains("ringcache-healthcheck") && health.contains("/health/live"),
            "{what}: healthcheck {health}"
        );
        let grace =
            humantime::parse_duration(str_of(&service["stop_grace_period"], "stop_grace_period"))
                .unwrap();
        assert!(
            grace >= launch.graceful_stop(),
            "{what}: stop_grace_period {grace:?} < graceful stop {:?}",
            launch.graceful_stop()
        );
        let limit = binary_size(str_of(&service["mem_limit"], "mem_limit"));
        let want = memory_limit_for(launch.max_memory());
        assert!(
            limit >= want && limit - want < 8 << 20,
            "{what}: mem_limit {limit} for max_memory {}: want {want} rounded up",
            launch.max_memory()
        );
        assert_ne!(
            service["restart"], "always",
            "{what}: a drained node must stay down"
        );
        assert_ne!(
            service["restart"], "unless-stopped",
            "{what}: a drained node must stay down"
        );

        // Published ports: loopback only, gRPC and HTTP over TCP.
        for port in service["ports"].as_array().into_iter().flatten() {
            let spec = str_of(port, "ports entry");
            let (spec, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
            let parts: Vec<&str> = spec.split(':').collect();
            assert_eq!(parts.len(), 3, "{what}: {spec}: want IP:HOST:CONTAINER");
            assert_eq!(
                parts[0], "127.0.0.1",
                "{what}: {spec} is published beyond loopback"
            );
            let container: u16 = parts[2].parse().unwrap();
            assert!(
                (container == GRPC_PORT || container == HTTP_PORT || container == RESP_PORT)
                    && proto == "tcp",
                "{what}: publishes {container}/{proto}"
            );
        }
    }
    let first = &addresses[0];
    assert!(
        launches[0].1["ports"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "node 1 publishes its ports"
    );
    for (launch, service) in &launches {
        let seeds = launch.seeds();
        assert!(
            seeds.contains(&format!("{first}:{GOSSIP_PORT}")),
            "{}: seeds {seeds:?} do not name node 1's gossip address",
            launch.what
        );
        for seed in &seeds {
            let (host, _) = host_port(seed);
            assert!(
                addresses.iter().any(|a| a == host),
                "{}: seed {seed} is no node",
                launch.what
            );
        }
        if launch.what != launches[0].0.what {
            let first_name = &compose_services()[0].0;
            assert_eq!(
                service["depends_on"][first_name]["condition"], "service_healthy",
                "{} starts after node 1 is healthy",
                launch.what
            );
        }
    }
}
