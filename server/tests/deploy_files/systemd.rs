//! The systemd unit: hardened, waits for the leave, and accepted by `systemd-analyze verify`.

use super::*;

// ---- systemd -------------------------------------------------------------------------------------

/// `(section, key, value)` of a unit file, in order.
pub(super) fn unit(rel: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: not key=value: {line}"));
        out.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    out
}

pub(super) fn service_values(key: &str) -> Vec<String> {
    unit("systemd/ringcached.service")
        .into_iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

pub(super) fn service_value(key: &str) -> String {
    let values = service_values(key);
    assert_eq!(values.len(), 1, "ringcached.service: want one {key}=");
    values.into_iter().next().unwrap()
}

pub(super) fn systemd_launch() -> Launch {
    let exec = service_value("ExecStart");
    let mut words = exec.split_whitespace().map(str::to_owned);
    let bin = words.next().unwrap();
    assert!(bin.starts_with('/'), "ExecStart needs an absolute path");
    assert!(bin.ends_with("/ringcached"), "ExecStart runs ringcached");
    let mut env = BTreeMap::new();
    for line in service_values("Environment") {
        for pair in line.split_whitespace() {
            let (k, v) = pair.trim_matches('"').split_once('=').unwrap();
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    let mut launch = Launch {
        what: "systemd/ringcached.service".into(),
        args: words.collect(),
        env: ringcache_env(&env),
        config: None,
        secrets: BTreeMap::new(),
    };
    let path = launch.setting("config").expect("the unit passes --config");
    assert_eq!(
        path, "/etc/ringcache/ringcache.toml",
        "the unit reads the sample's documented path"
    );
    launch.config = Some(read("systemd/ringcache.toml"));
    launch
}

pub(super) fn all_launches() -> Vec<Launch> {
    let mut out = vec![docker_launch(), systemd_launch()];
    out.extend(k8s_sets().iter().map(k8s_launch));
    out.extend(compose_launches().into_iter().map(|(l, _)| l));
    out
}

// ---- tests: systemd ------------------------------------------------------------------------------

#[test]
pub(super) fn systemd_unit_is_hardened_and_waits_for_the_leave() {
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(service_value(key), value, "{key}");
    }
    let launch = systemd_launch();
    let stop = service_value("TimeoutStopSec");
    let stop = match stop.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(&stop).unwrap(),
    };
    assert!(
        stop >= launch.graceful_stop(),
        "TimeoutStopSec {stop:?} < graceful stop {:?}",
        launch.graceful_stop()
    );
    let limit = binary_size(&service_value("MemoryMax"));
    let want = memory_limit_for(launch.max_memory());
    assert!(
        limit >= want && limit - want < 8 << 20,
        "MemoryMax {limit} for max_memory {}: want {want} rounded up",
        launch.max_memory()
    );
    let files: u64 = service_value("LimitNOFILE").parse().unwrap();
    assert!(files >= 4096);

    // Warm restarts: the snapshot goes to the unit's state directory, the one place it may
    // write (DynamicUser implies ProtectSystem=strict; StateDirectory is writable under it).
    let state = service_value("StateDirectory");
    assert_eq!(
        launch.setting("data_dir").as_deref(),
        Some(format!("/var/lib/{state}").as_str()),
        "data_dir is the unit's StateDirectory"
    );
    assert_eq!(launch.setting("data_dir").as_deref(), Some(DATA_DIR));
    assert_eq!(
        launch.shutdown_mode(),
        "restart",
        "`systemctl restart` is a warm restart"
    );
    assert!(launch.snapshot_write() > Duration::ZERO);
    for (key, value) in service_values("ReadWritePaths")
        .iter()
        .map(|v| ("ReadWritePaths", v))
        .chain(
            service_values("ReadOnlyPaths")
                .iter()
                .map(|v| ("ReadOnlyPaths", v)),
        )
    {
        assert!(
            !value.contains(DATA_DIR),
            "{key}={value}: the state directory is writable as it is"
        );
    }

    // The sample config names a reachable address (not a wildcard without advertise_addr).
    let bind: std::net::IpAddr = launch.setting("bind").unwrap().parse().unwrap();
    assert!(
        !bind.is_loopback(),
        "a cluster node binds an address others reach"
    );
}

#[test]
pub(super) fn systemd_analyze_verify_accepts_the_unit() {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect(
            "systemd-analyze is needed to check the unit: apt-get install systemd (scripts/test-deps does)",
        );
    assert!(out.status.success());
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("ringcache-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = read("systemd/ringcached.service").replace("/usr/local/bin/ringcached", BIN);
    let path = dir.join("ringcached.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 even for unknown keys or bad values; it says so on stderr.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
