//! The Kubernetes manifests of deploy/k8s/ and the Helm chart rendered with each values file:
//! objects that select each other, ports, probes, grace periods, memory, zones and snapshots.

use super::*;

// ---- Kubernetes ----------------------------------------------------------------------------------

/// A set of Kubernetes objects deployed together: the files of `deploy/k8s/`, or the Helm chart
/// rendered with some values; and what those values ask for.
#[derive(Debug, Clone)]
pub(super) struct Manifests {
    pub(super) what: String,
    pub(super) docs: Vec<Value>,
    pub(super) expect: Expect,
}

/// What a set of manifests was made to deploy.
#[derive(Debug, Clone)]
pub(super) struct Expect {
    pub(super) replicas: u64,
    /// The RESP port is served (and in the Services).
    pub(super) resp: bool,
    pub(super) cluster_domain: String,
    /// The memory limit is max_memory x 1.3 + 128Mi rounded up to a MiB (not set by hand).
    pub(super) computed_memory: bool,
    /// Each pod has a data volume (a volumeClaimTemplate) for its snapshot.
    pub(super) persistence: bool,
}

impl Manifests {
    /// The one object of `kind` named `name` (any name when `None`).
    pub(super) fn one(&self, kind: &str, name: Option<&str>) -> Value {
        let found: Vec<&Value> = self
            .of_kind(kind)
            .into_iter()
            .filter(|doc| name.is_none_or(|n| doc["metadata"]["name"] == n))
            .collect();
        assert_eq!(found.len(), 1, "{}: want one {kind} {name:?}", self.what);
        found[0].clone()
    }

    pub(super) fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|doc| doc["kind"] == kind).collect()
    }
}

/// The files of `deploy/k8s/` (the Prometheus Operator's ServiceMonitor included).
pub(super) fn static_k8s() -> Manifests {
    let docs = deploy_files()
        .iter()
        .filter(|f| f.starts_with("k8s/") && (f.ends_with(".yaml") || f.ends_with(".yml")))
        .flat_map(|f| yaml_docs(f))
        .collect();
    Manifests {
        what: "deploy/k8s".into(),
        docs,
        expect: Expect {
            replicas: 3,
            resp: true,
            cluster_domain: "cluster.local".into(),
            computed_memory: true,
            persistence: true,
        },
    }
}

/// Every set of Kubernetes manifests: `deploy/k8s/` and the chart with each values file.
pub(super) fn k8s_sets() -> Vec<Manifests> {
    let mut sets = vec![static_k8s()];
    sets.extend(helm::standard_renders().iter().cloned());
    sets
}

pub(super) fn statefulset(m: &Manifests) -> Value {
    m.one("StatefulSet", None)
}

pub(super) fn ringcached_container(sts: &Value) -> Value {
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "ringcached")
        .expect("a container named ringcached")
        .clone()
}

/// The container's env: `name -> value` for plain values (a `resourceFieldRef` is resolved as
/// the kubelet does: the container's resource over the divisor, rounded up), `name -> fieldRef
/// path` for the downward API's pod fields.
pub(super) fn container_env(
    container: &Value,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut values = BTreeMap::new();
    let mut fields = BTreeMap::new();
    for item in container["env"].as_array().into_iter().flatten() {
        let name = str_of(&item["name"], "env name").to_owned();
        if let Some(value) = item["value"].as_str() {
            values.insert(name, value.to_owned());
        } else if let Some(path) = item["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            fields.insert(name, path.to_owned());
        } else if let Some(resource) = item["valueFrom"]["resourceFieldRef"].as_object() {
            assert_eq!(
                resource["containerName"], container["name"],
                "env {name}: the container's own resources"
            );
            let path = str_of(&resource["resource"], "resource");
            let (kind, what) = path.split_once('.').expect("requests.X or limits.X");
            let quantity = &container["resources"][kind][what];
            let divisor = resource.get("divisor").map_or(1.0, cpu_cores);
            let value = (cpu_cores(quantity) / divisor).ceil();
            assert!(value >= 1.0, "env {name}: {path} {quantity}");
            values.insert(name, format!("{value}"));
        } else {
            panic!("env {name}: want a value, a fieldRef or a resourceFieldRef");
        }
    }
    (values, fields)
}

/// A CPU quantity ("1", "500m", 2) in cores.
pub(super) fn cpu_cores(quantity: &Value) -> f64 {
    match quantity {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => match s.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().expect("millicores") / 1000.0,
            None => s.parse().unwrap_or_else(|_| panic!("CPU quantity {s:?}")),
        },
        other => panic!("CPU quantity {other}"),
    }
}

/// The pod's volume mounted at the directory holding `path` in `container`, and the file's
/// name inside it.
pub(super) fn mount_of<'a>(
    sts: &'a Value,
    container: &Value,
    path: &str,
) -> Option<(&'a Value, String)> {
    let pod = &sts["spec"]["template"]["spec"];
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let dir = str_of(&mount["mountPath"], "mountPath").trim_end_matches('/');
        let Some(file) = path.strip_prefix(&format!("{dir}/")) else {
            continue;
        };
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        return Some((volume, file.to_owned()));
    }
    None
}

/// The key of a ConfigMap or Secret volume that is projected as `file`.
pub(super) fn projected_key(source: &Value, file: &str) -> String {
    match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == file)
            .map(|i| str_of(&i["key"], "key").to_owned())
            .unwrap_or_else(|| panic!("{source}: projects no {file}")),
        None => file.to_owned(),
    }
}

/// The text of the file at `path` inside the container, from the ConfigMap mounted there.
pub(super) fn mounted_config(m: &Manifests, sts: &Value, container: &Value, path: &str) -> String {
    let (volume, file) = mount_of(sts, container, path)
        .unwrap_or_else(|| panic!("{}: nothing is mounted at {path}", m.what));
    let map = &volume["configMap"];
    let name = str_of(&map["name"], "configMap name");
    let key = projected_key(map, &file);
    let config_map = m.one("ConfigMap", Some(name));
    str_of(&config_map["data"][&key], "ConfigMap data").to_owned()
}

pub(super) fn k8s_launch(m: &Manifests) -> Launch {
    let sts = statefulset(m);
    let container = ringcached_container(&sts);
    let mut args: Vec<String> = Vec::new();
    if let Some(command) = container["command"].as_array() {
        assert!(
            str_of(&command[0], "command").ends_with("ringcached"),
            "command runs ringcached"
        );
        args.extend(command[1..].iter().map(|a| str_of(a, "command").to_owned()));
    }
    args.extend(
        container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| str_of(a, "args").to_owned()),
    );
    let (values, _) = container_env(&container);
    let mut env = ringcache_env(&docker_env());
    env.extend(ringcache_env(&values));
    let mut launch = Launch {
        what: m.what.clone(),
        args,
        env,
        config: None,
        secrets: BTreeMap::new(),
    };
    if let Some(path) = launch.setting("config") {
        launch.config = Some(mounted_config(m, &sts, &container, &path));
    }
    // Files the flags name inside mounted Secrets: which Secret and key each one is.
    for (flag, value) in launch.flags() {
        if !value.starts_with('/') || flag == "config" {
            continue;
        }
        let (volume, file) = mount_of(&sts, &container, &value)
            .unwrap_or_else(|| panic!("{}: --{flag}={value} is in no mounted volume", m.what));
        let secret = &volume["secret"];
        assert!(
            secret.is_object(),
            "{}: --{flag}={value}: a file from a Secret",
            m.what
        );
        let key = projected_key(secret, &file);
        launch.secrets.insert(
            value.clone(),
            (str_of(&secret["secretName"], "secretName").to_owned(), key),
        );
    }
    launch
}

// ---- tests: Kubernetes ---------------------------------------------------------------------------
// Each test runs over every set of manifests: deploy/k8s/ and the Helm chart rendered with its
// default values and with each values file of deploy/helm/ringcache/ci/.

/// The pods take their zone from a pod label through the downward API (deploy/k8s and the
/// chart by default: `topology.kubernetes.io/zone`) and spread evenly over zones; the chart
/// can name another label, or none.
#[test]
pub(super) fn k8s_pods_take_their_zone_from_a_pod_label_and_spread_over_zones() {
    for m in k8s_sets() {
        let what = m.what.as_str();
        let sts = statefulset(&m);
        let (_, fields) = container_env(&ringcached_container(&sts));
        let zone = fields.get("RINGCACHE_ZONE").map(String::as_str);
        let pod = &sts["spec"]["template"]["spec"];
        let pod_labels = labels(&sts["spec"]["template"]["metadata"]["labels"]);
        let spreads: Vec<&Value> = pod["topologySpreadConstraints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["topologyKey"] == "topology.kubernetes.io/zone")
            .collect();
        for spread in &spreads {
            assert!(
                selects(
                    &labels(&spread["labelSelector"]["matchLabels"]),
                    &pod_labels
                ),
                "{what}: the zone spread counts the ringcache pods"
            );
        }
        let when = |c: &&Value| c["whenUnsatisfiable"].as_str().map(str::to_owned);
        let expected: (Option<&str>, Option<&str>) = match what {
            "deploy/k8s" | "helm chart, default values" => (
                Some("metadata.labels['topology.kubernetes.io/zone']"),
                Some("ScheduleAnyway"),
            ),
            "helm chart, ci/grpc-probe-values.yaml" => (None, Some("DoNotSchedule")),
            "helm chart, ci/secure-values.yaml" => (
                Some("metadata.labels['example.com/failure-domain']"),
                Some("ScheduleAnyway"),
            ),
            other => panic!("{other}: say what zone settings it renders"),
        };
        assert_eq!(zone, expected.0, "{what}: RINGCACHE_ZONE");
        assert_eq!(spreads.len(), 1, "{what}: one spread over zones");
        assert_eq!(
            spreads.first().and_then(when).as_deref(),
            expected.1,
            "{what}: the zone spread"
        );
    }
}

#[test]
pub(super) fn k8s_objects_fit_together() {
    for m in k8s_sets() {
        check_objects_fit_together(&m);
    }
}

pub(super) fn check_objects_fit_together(m: &Manifests) {
    let what = &m.what;
    let sts = statefulset(m);
    assert_eq!(sts["apiVersion"], "apps/v1");
    let name = str_of(&sts["metadata"]["name"], "name");
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, m.expect.replicas, "{what}");
    assert_eq!(
        sts["spec"]["podManagementPolicy"], "OrderedReady",
        "{what}: one pod at a time"
    );
    let pod_labels = labels(&sts["spec"]["template"]["metadata"]["labels"]);
    assert!(
        selects(
            &labels(&sts["spec"]["selector"]["matchLabels"]),
            &pod_labels
        ),
        "{what}: the StatefulSet selects its own pods"
    );

    // The headless Service named by serviceName.
    let service_name = str_of(&sts["spec"]["serviceName"], "serviceName");
    let headless = m.one("Service", Some(service_name));
    assert_eq!(headless["apiVersion"], "v1");
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "{what}: serviceName is headless"
    );
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "{what}: seeds must resolve before the pods are ready"
    );
    let services: Vec<&Value> = m.of_kind("Service");
    assert_eq!(services.len(), 2, "{what}: a headless and a client Service");
    for service in &services {
        assert!(
            selects(&labels(&service["spec"]["selector"]), &pod_labels),
            "{what}: Service {} selects the pods",
            service["metadata"]["name"]
        );
    }
    let client = services
        .iter()
        .find(|s| s["metadata"]["name"] != service_name)
        .unwrap();
    assert_ne!(client["spec"]["clusterIP"], "None");
    // gRPC (clients fetch the topology there) and RESP (any node serves any key).
    let client_ports: Vec<&Value> = client["spec"]["ports"].as_array().unwrap().iter().collect();
    assert_eq!(
        client_ports[0]["port"], GRPC_PORT,
        "{what}: clients start at gRPC"
    );
    if m.expect.resp {
        assert_eq!(client_ports.len(), 2, "{what}");
        assert_eq!(client_ports[1]["port"], RESP_PORT, "{what}");
    } else {
        assert_eq!(client_ports.len(), 1, "{what}: no RESP port");
    }

    // PodDisruptionBudget, when there is one (the chart can turn it off).
    for pdb in m.of_kind("PodDisruptionBudget") {
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert_eq!(
            pdb["spec"]["maxUnavailable"], 1,
            "{what}: one pod at a time"
        );
        assert!(
            selects(
                &labels(&pdb["spec"]["selector"]["matchLabels"]),
                &pod_labels
            ),
            "{what}: the PDB selects the pods"
        );
    }

    // ServiceMonitor, if shipped: selects the headless Service only, by a port it has.
    for doc in m.of_kind("ServiceMonitor") {
        assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
        let selector = labels(&doc["spec"]["selector"]["matchLabels"]);
        let selected: Vec<&&Value> = services
            .iter()
            .filter(|s| selects(&selector, &labels(&s["metadata"]["labels"])))
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "{what}: the ServiceMonitor selects one Service"
        );
        assert_eq!(selected[0]["metadata"]["name"], service_name, "{what}");
        for endpoint in doc["spec"]["endpoints"].as_array().unwrap() {
            let port = &endpoint["port"];
            assert!(
                headless["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == *port && p["port"] == HTTP_PORT),
                "{what}: ServiceMonitor port {port} is not the headless Service's HTTP port"
            );
            assert_eq!(endpoint["path"], "/metrics");
        }
    }

    // NetworkPolicy, if any: selects the pods, lets the pods reach each other's gossip and
    // cluster ports, and names only ports the container has.
    for policy in m.of_kind("NetworkPolicy") {
        assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
        assert!(
            selects(
                &labels(&policy["spec"]["podSelector"]["matchLabels"]),
                &pod_labels
            ),
            "{what}: the NetworkPolicy applies to the pods"
        );
        let container = ringcached_container(&sts);
        let container_ports: Vec<(String, String)> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    str_of(&p["name"], "port name").to_owned(),
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                )
            })
            .collect();
        let mut opened = BTreeSet::new();
        for rule in policy["spec"]["ingress"].as_array().expect("ingress rules") {
            let ports: Vec<String> = rule["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .map(|p| {
                    let name = str_of(&p["port"], "port").to_owned();
                    let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
                    assert!(
                        container_ports.contains(&(name.clone(), protocol.clone())),
                        "{what}: the NetworkPolicy opens {name}/{protocol}, which the container does not have"
                    );
                    name
                })
                .collect();
            let peers = rule["from"].as_array();
            if ports.iter().any(|p| p == "gossip" || p == "cluster") {
                let peers = peers.expect("the cluster plane is open to the pods only");
                assert_eq!(peers.len(), 1, "{what}");
                assert!(
                    selects(
                        &labels(&peers[0]["podSelector"]["matchLabels"]),
                        &pod_labels
                    ),
                    "{what}: the cluster plane is open to the ringcache pods"
                );
            }
            opened.extend(ports);
        }
        let all: BTreeSet<String> = container_ports.into_iter().map(|(n, _)| n).collect();
        assert_eq!(opened, all, "{what}: every port is reachable by someone");
    }

    // The container: identity, addresses and seeds from the downward API and the headless names.
    let container = ringcached_container(&sts);
    let (values, fields) = container_env(&container);
    assert_eq!(
        fields.get("POD_NAME").map(String::as_str),
        Some("metadata.name")
    );
    assert_eq!(
        fields.get("POD_IP").map(String::as_str),
        Some("status.podIP")
    );
    let launch = k8s_launch(m);
    assert_eq!(
        launch.flag("node-id").as_deref(),
        Some("$(POD_NAME)"),
        "{what}: node id = pod name"
    );
    assert_eq!(launch.flag("advertise-addr").as_deref(), Some("$(POD_IP)"));
    assert_eq!(launch.setting("bind").as_deref(), Some("0.0.0.0"));
    for arg in &launch.args {
        let mut rest = arg.as_str();
        while let Some(at) = rest.find("$(") {
            let end = rest[at..].find(')').expect("closing )") + at;
            let var = &rest[at + 2..end];
            assert!(
                values.contains_key(var) || fields.contains_key(var),
                "{what}: {arg}: $({var}) is not in the container's env, so Kubernetes would not expand it"
            );
            rest = &rest[end + 1..];
        }
    }
    let namespace_var = fields
        .iter()
        .find(|(_, path)| *path == "metadata.namespace")
        .map(|(name, _)| format!("$({name})"));
    let seeds = launch.seeds();
    assert!(seeds.len() >= 2, "{what}: at least two seeds: {seeds:?}");
    let domain: Vec<&str> = m.expect.cluster_domain.split('.').collect();
    for (i, seed) in seeds.iter().enumerate() {
        let (host, port) = host_port(seed);
        assert_eq!(port, GOSSIP_PORT, "{seed}");
        let labels: Vec<&str> = host.split('.').collect();
        assert_eq!(
            labels.len(),
            4 + domain.len(),
            "{seed}: want POD.SERVICE.NAMESPACE.svc.{}",
            m.expect.cluster_domain
        );
        assert_eq!(
            labels[0],
            format!("{name}-{i}"),
            "{seed}: the first pods, in order"
        );
        assert!((i as u64) < replicas);
        assert_eq!(
            labels[1], service_name,
            "{seed}: a name of the headless Service"
        );
        if let Some(var) = &namespace_var {
            assert_eq!(labels[2], var, "{seed}: the pod's own namespace");
        }
        assert_eq!(labels[3], "svc", "{seed}");
        assert_eq!(&labels[4..], domain.as_slice(), "{seed}");
    }
    assert!(
        launch.config.is_some(),
        "{what}: the ConfigMap is mounted where --config points"
    );
    // The insecure switch is explicit (the image turns it on) and only on without every
    // protection.
    if let Some(insecure) = values.get("RINGCACHE_INSECURE") {
        let protected = ["tls-cert", "users-file", "cluster-ca", "gossip-keyring"]
            .iter()
            .all(|f| launch.flag(f).is_some());
        assert!(
            insecure == "true" || protected,
            "{what}: RINGCACHE_INSECURE={insecure} without every protection would not start"
        );
    }
}

#[test]
pub(super) fn k8s_ports_probes_and_scrape_annotations_name_the_right_ports() {
    for m in k8s_sets() {
        check_ports_probes_and_annotations(&m);
    }
}

pub(super) fn check_ports_probes_and_annotations(m: &Manifests) {
    let what = &m.what;
    let sts = statefulset(m);
    let container = ringcached_container(&sts);
    let ports: BTreeMap<String, (u64, String)> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name").to_owned(),
                (
                    p["containerPort"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                ),
            )
        })
        .collect();
    let mut want: BTreeMap<String, (u64, String)> = [
        ("grpc".to_owned(), (u64::from(GRPC_PORT), "TCP".to_owned())),
        (
            "gossip".to_owned(),
            (u64::from(GOSSIP_PORT), "UDP".to_owned()),
        ),
        ("http".to_owned(), (u64::from(HTTP_PORT), "TCP".to_owned())),
        ("cluster".to_owned(), (7382, "TCP".to_owned())),
    ]
    .into();
    if m.expect.resp {
        want.insert("resp".to_owned(), (u64::from(RESP_PORT), "TCP".to_owned()));
    } else {
        assert_eq!(
            k8s_launch(m).flag("resp-port").as_deref(),
            Some("0"),
            "{what}"
        );
    }
    assert_eq!(ports, want, "{what}");
    let resolve = |port: &Value| -> u64 {
        match port {
            Value::String(name) => {
                ports
                    .get(name)
                    .unwrap_or_else(|| panic!("{what}: no port {name}"))
                    .0
            }
            other => other.as_u64().expect("a port"),
        }
    };
    for (probe, path) in [
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
    ] {
        let probe_spec = &container[probe];
        if let Some(grpc) = probe_spec["grpc"].as_object() {
            // The gRPC health service answers readiness on the client port.
            assert_eq!(probe, "readinessProbe", "{what}: gRPC liveness");
            assert_eq!(
                grpc["port"], GRPC_PORT,
                "{what}: {probe} on the client port"
            );
            assert!(
                grpc.get("service").is_none_or(|s| s == ""),
                "{what}: {probe} asks for the whole node"
            );
            assert!(
                k8s_launch(m).flag("tls-cert").is_none(),
                "{what}: the kubelet's gRPC probe cannot speak TLS"
            );
            continue;
        }
        let get = &probe_spec["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe}");
        assert_eq!(
            resolve(&get["port"]),
            u64::from(HTTP_PORT),
            "{what}: {probe} port"
        );
    }
    // Readiness outlasts a routine ring change (ready_settle 2s; a suspect member, up to
    // suspicion_timeout 3s): failureThreshold x periodSeconds > 3s.
    let readiness = &container["readinessProbe"];
    let patience = readiness["failureThreshold"].as_u64().unwrap_or(3)
        * readiness["periodSeconds"].as_u64().unwrap_or(10);
    assert!(patience > 3, "{what}: readiness gives up after {patience}s");

    let annotations = labels(&sts["spec"]["template"]["metadata"]["annotations"]);
    if annotations.contains_key("prometheus.io/scrape") {
        assert_eq!(
            annotations.get("prometheus.io/scrape").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&HTTP_PORT.to_string())
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics")
        );
    } else {
        assert!(
            !m.of_kind("ServiceMonitor").is_empty(),
            "{what}: neither scrape annotations nor a ServiceMonitor"
        );
    }
    for service in m.of_kind("Service") {
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = resolve(&port["targetPort"]);
            assert_eq!(
                port["port"], target,
                "{what}: {}: port and targetPort",
                port["name"]
            );
            let (_, protocol) = ports
                .values()
                .find(|(p, _)| *p == target)
                .unwrap_or_else(|| panic!("{what}: targetPort {target} is no container port"));
            assert_eq!(
                port["protocol"].as_str().unwrap_or("TCP"),
                protocol,
                "{what}: {}: protocol",
                port["name"]
            );
        }
    }
}

#[test]
pub(super) fn k8s_grace_period_and_memory_follow_the_config() {
    for m in k8s_sets() {
        let what = &m.what;
        let sts = statefulset(&m);
        let launch = k8s_launch(&m);
        let pod = &sts["spec"]["template"]["spec"];
        let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
        assert!(
            grace >= launch.graceful_stop(),
            "{what}: terminationGracePeriodSeconds {grace:?} < graceful stop {:?}",
            launch.graceful_stop()
        );
        let container = ringcached_container(&sts);
        let resources = &container["resources"];
        let limit = binary_size(str_of(&resources["limits"]["memory"], "memory limit"));
        let request = binary_size(str_of(&resources["requests"]["memory"], "memory request"));
        let want = memory_limit_for(launch.max_memory());
        assert!(
            limit >= want && (limit - want < 8 << 20 || !m.expect.computed_memory),
            "{what}: memory limit {limit} for max_memory {}: want {want} rounded up",
            launch.max_memory()
        );
        assert_eq!(request, limit, "{what}: request = limit");
        assert!(resources["requests"]["cpu"].is_string(), "{what}");
        // Workers: set, or read from the CPU quota (a CPU limit), or the CPU request.
        let (values, _) = container_env(&container);
        if resources["limits"]["cpu"].is_null() {
            let workers = values
                .get("RINGCACHE_WORKERS")
                .unwrap_or_else(|| panic!("{what}: no CPU limit and no workers setting"));
            let workers: f64 = workers.parse().unwrap();
            assert!(
                workers >= cpu_cores(&resources["requests"]["cpu"]),
                "{what}: {workers} workers for a request of {}",
                resources["requests"]["cpu"]
            );
        }
    }
}

#[test]
pub(super) fn k8s_pods_keep_their_snapshot_on_a_volume_of_their_own_and_restart_warm() {
    for m in k8s_sets() {
        let what = &m.what;
        let sts = statefulset(&m);
        let launch = k8s_launch(&m);
        let container = ringcached_container(&sts);
        let pod = &sts["spec"]["template"]["spec"];
        let claims = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // Rolling restarts one pod at a time: each waits for the previous one to be ready again.
        assert_eq!(
            sts["spec"]["updateStrategy"]["type"], "RollingUpdate",
            "{what}"
        );
        let unavailable = &sts["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"];
        assert!(
            unavailable.is_null() || *unavailable == 1,
            "{what}: maxUnavailable {unavailable}: one pod at a time"
        );
        let Some(dir) = launch.setting("data_dir") else {
            assert!(!m.expect.persistence, "{what}: persistence but no data_dir");
            assert!(claims.is_empty(), "{what}: a volume claim no data_dir uses");
            assert_eq!(
                launch.setting("shutdown_mode").as_deref(),
                Some("handoff"),
                "{what}: without a data dir, SIGTERM hands off (and says so)"
            );
            continue;
        };
        assert!(
            m.expect.persistence,
            "{what}: a data_dir without persistence"
        );
        assert_eq!(dir, DATA_DIR, "{what}: data_dir");
        assert_eq!(
            launch.shutdown_mode(),
            "restart",
            "{what}: with a data volume, a rolling update keeps the pods warm"
        );
        // A writable mount at exactly data_dir, from a volume claim template (a pod volume such
        // as an emptyDir goes with the pod a rolling update replaces).
        let mount = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|mount| str_of(&mount["mountPath"], "mountPath").trim_end_matches('/') == dir)
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at data_dir {dir}"));
        assert_ne!(mount["readOnly"], true, "{what}: data_dir is read-only");
        assert!(mount["subPath"].is_null(), "{what}: the whole volume");
        let name = &mount["name"];
        assert!(
            pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|volume| volume["name"] != *name),
            "{what}: data_dir is on a pod volume {name}, not a claim of the pod's own"
        );
        let claim = claims
            .iter()
            .find(|claim| claim["metadata"]["name"] == *name)
            .unwrap_or_else(|| panic!("{what}: no volumeClaimTemplate {name}"));
        assert_eq!(
            claim["spec"]["accessModes"],
            serde_json::json!(["ReadWriteOnce"]),
            "{what}"
        );
        // Room for a new snapshot beside the previous one: each up to max_memory.
        let size = binary_size(str_of(
            &claim["spec"]["resources"]["requests"]["storage"],
            "storage request",
        ));
        assert!(
            size >= 2 * launch.max_memory(),
            "{what}: a {size}-byte volume for max_memory {}",
            launch.max_memory()
        );
        // The unprivileged user can write it.
        let security = &pod["securityContext"];
        assert!(security["fsGroup"].is_u64(), "{what}: no fsGroup");
        assert_eq!(
            security["fsGroup"], security["runAsGroup"],
            "{what}: the volume's group is the node's"
        );
        // The grace period covers the snapshot too (k8s_grace_period_and_memory_follow_the_config
        // checks the sum).
        assert!(
            launch.snapshot_write() > Duration::ZERO,
            "{what}: the stop writes a snapshot"
        );
        // The others keep a restarting pod's ranges long enough for it to be rescheduled.
        assert!(
            launch.duration("restart_grace", "60s") >= Duration::from_secs(60),
            "{what}: restart_grace"
        );
    }
}
