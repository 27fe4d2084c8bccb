//! The `tern` and `ternd` command lines, run as a user or script would.

use tern_test_support::*;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn cli_backs_up_stdin_restores_stdout_and_reports_json() {
    let server = TestServer::start();
    ok(&server.tern(&["container", "create", "c"], None));
    let data = test_data(6 << 20, 21);
    let out = ok(&server.tern(
        &["--json", "backup", "--container", "c", "--name", "n1", "-"],
        Some(&data),
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["logical_bytes"], data.len() as u64);
    assert!(v["dedup_ratio"].as_f64().unwrap() > 1.0);
    let restored = server.tern(&["restore", "--container", "c", "--name", "n1", "-"], None);
    assert!(restored.status.success());
    assert_eq!(restored.stdout, data);

    let ls: serde_json::Value = serde_json::from_str(&ok(
        &server.tern(&["--json", "ls", "--container", "c"], None)
    ))
    .unwrap();
    assert_eq!(ls[0]["name"], "n1");
    assert_eq!(ls[0]["size"], data.len() as u64);
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&server.tern(&["--json", "stats"], None))).unwrap();
    assert_eq!(stats["images"], 1);
    ok(&server.tern(&["rm", "--container", "c", "--name", "n1"], None));
    ok(&server.tern(&["container", "rm", "c"], None));
}

#[test]
fn cli_errors_are_one_line_and_fail_the_exit_status() {
    let server = TestServer::start();
    ok(&server.tern(&["container", "create", "c"], None));
    let out = server.tern(
        &["backup", "--container", "c", "--name", "a/b", "-"],
        Some(b"x"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("'/'"), "{err}");
    let out = server.tern(
        &["restore", "--container", "c", "--name", "absent", "-"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn user_add_creates_a_user_who_can_log_in() {
    let server = TestServer::start();
    let mut cmd = std::process::Command::new(tern_bin());
    let out = cmd
        .args([
            "--server",
            &server.address(),
            "--fingerprint",
            &server.fingerprint().to_string(),
        ])
        .args(["user", "add", "dma"])
        .env("TERN_PASSWORD", PASSWORD)
        .env("TERN_NEW_PASSWORD", "dma-secret")
        .output()
        .unwrap();
    ok(&out);
    let mut opts = server.options();
    opts.user = "dma".into();
    opts.password = "dma-secret".into();
    let client = tern_agent::Client::connect(&opts).unwrap();
    assert!(!client.is_admin());
    let err = client.user_add("x", "y", false).err().unwrap();
    assert_eq!(err.kind(), Some(tern_core::wire::ErrorKind::Denied));
}

#[test]
fn cli_takes_its_settings_from_client_toml_and_creates_a_client_identity() {
    let server = TestServer::start();
    let config = server.data().join("client-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("client.toml"),
        format!(
            "server = \"{}\"\nfingerprint = \"{}\"\nconnections = 2\n",
            server.address(),
            server.fingerprint()
        ),
    )
    .unwrap();
    let tern = |args: &[&str]| {
        let mut cmd = std::process::Command::new(tern_bin());
        cmd.args(args)
            .env("TERN_PASSWORD", PASSWORD)
            .env("TERN_CONFIG_DIR", &config)
            .env_remove("TERN_SERVER");
        run_with_stdin(cmd, None)
    };
    // No --server, no --fingerprint: both come from the file.
    ok(&tern(&["container", "create", "c"]));
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&tern(&["--json", "container", "ls"]))).unwrap();
    assert_eq!(ls[0]["name"], "c");
    // The first TLS connection created the client's identity for later ones.
    let cert = std::fs::read_to_string(config.join("client.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let key = config.join("client.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    ok(&tern(&["container", "ls"]));
    assert_eq!(
        std::fs::read_to_string(config.join("client.crt")).unwrap(),
        cert
    );

    // A flag overrides the file; a bad file is a clear error.
    let out = tern(&["--server", "127.0.0.1:1", "container", "ls"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
    std::fs::write(config.join("client.toml"), "conections = 2\n").unwrap();
    let out = tern(&["container", "ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client.toml") && err.contains("conections"),
        "{err}"
    );
}

#[test]
fn cli_bench_measures_every_stage_and_the_link() {
    let server = TestServer::start();
    let out = ok(&server.tern(&["--json", "bench", "--upload-mib", "8"], None));
    let stages: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names[0].starts_with("chunking") && names[5].starts_with("upload"));
    for s in &stages[..4] {
        assert!(s["mb_per_s"].as_f64().unwrap() > 0.0, "{s}");
    }
    // The sample compresses like system files, and the level is the one asked for.
    let compress = &stages[2];
    assert!(compress["stage"].as_str().unwrap().contains("-1"));
    let ratio = compress["ratio"].as_f64().unwrap();
    assert!((0.2..0.5).contains(&ratio), "{ratio}");
    assert_eq!(stages[5]["bytes"], 8 << 20);
    let bad = server.tern(&["bench", "--local", "--zstd-level", "40"], None);
    assert!(!bad.status.success());
}

#[test]
fn trust_on_first_use_remembers_and_refuses_a_changed_certificate() {
    let a = TestServer::start();
    let config = tempfile::tempdir().unwrap();
    // The CLI in a child process: the config directory comes from its
    // environment, not from this (multi-threaded) test process's.
    let tern = |server: &TestServer| {
        let mut cmd = std::process::Command::new(tern_bin());
        cmd.args(["--server", &server.address(), "container", "ls"])
            .env("TERN_PASSWORD", PASSWORD)
            .env("TERN_CONFIG_DIR", config.path());
        run_with_stdin(cmd, None)
    };
    ok(&tern(&a));
    let known = std::fs::read_to_string(config.path().join("known_servers")).unwrap();
    assert!(known.contains(&a.fingerprint().to_string()), "{known}");
    // Another server (another certificate) appears at the same address.
    let port = a.port;
    drop(a);
    let mut b = TestServer {
        dir: tempfile::tempdir().unwrap(),
        port,
        plain_port: 0,
        child: None,
        args: Vec::new(),
        metrics_url: None,
        env: Vec::new(),
    };
    b.spawn();
    let out = tern(&b);
    assert!(!out.status.success(), "a changed certificate was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match") && err.contains("--fingerprint"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains('\\') && !err.contains("  "), "{err:?}");
}

#[test]
fn adding_an_existing_user_changes_nothing_and_passwd_and_set_each_change_one_thing() {
    let mut server = TestServer::start();
    let admin = server.client();
    admin.user_add("tenant", "first-pw", false).unwrap();
    admin.user_set("tenant", Some(&["t1"]), None).unwrap();
    let tenant_with = |server: &TestServer, pw: &str| {
        let mut o = server.options();
        o.user = "tenant".into();
        o.password = pw.into();
        tern_agent::Client::connect(&o)
    };
    // In group t1 only: the default group is closed to the tenant.
    let in_t1_only = |c: &tern_agent::Client| {
        let denied = c.container_create("x", tern_agent::ContainerSettings::default());
        assert_eq!(
            denied.err().and_then(|e| e.kind()),
            Some(tern_core::wire::ErrorKind::Denied)
        );
    };
    let tern = |server: &TestServer, args: &[&str], new_pw: &str| {
        let mut cmd = std::process::Command::new(tern_bin());
        cmd.args(["--server", &server.address()])
            .args(["--fingerprint", &server.fingerprint().to_string()])
            .args(args)
            .env("TERN_PASSWORD", PASSWORD)
            .env("TERN_CONFIG_DIR", server.data().join("client-config"))
            .env("TERN_NEW_PASSWORD", new_pw);
        run_with_stdin(cmd, None)
    };

    // A second add is refused and leaves password, groups and rights alone.
    let out = tern(&server, &["user", "add", "tenant", "--admin"], "other-pw");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let t = tenant_with(&server, "first-pw").unwrap();
    assert!(!t.is_admin());
    in_t1_only(&t);
    assert!(tenant_with(&server, "other-pw").is_err());

    // passwd changes the password only.
    ok(&tern(&server, &["user", "passwd", "tenant"], "second-pw"));
    assert!(tenant_with(&server, "first-pw").is_err());
    let t = tenant_with(&server, "second-pw").unwrap();
    in_t1_only(&t);
    // A user may set their own password, not someone else's.
    t.user_passwd("tenant", "third-pw").unwrap();
    let err = t.user_passwd("admin", "stolen").err().unwrap();
    assert_eq!(err.kind(), Some(tern_core::wire::ErrorKind::Denied));
    assert!(t.user_set("tenant", None, Some(true)).is_err());

    // set changes rights; the last admin cannot be demoted.
    ok(&tern(
        &server,
        &["user", "set", "tenant", "--group", "default"],
        "",
    ));
    let t = tenant_with(&server, "third-pw").unwrap();
    t.container_create("mine", tern_agent::ContainerSettings::default())
        .unwrap();
    let out = tern(&server, &["user", "set", "admin", "--no-admin"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only admin"));

    // The same rules offline.
    drop((admin, t));
    server.kill();
    let mut add = std::process::Command::new(ternd_bin());
    add.args(["user", "add", "tenant", "--data"])
        .arg(server.data())
        .env("TERN_PASSWORD", "offline-pw");
    let out = run_with_stdin(add, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let mut passwd = std::process::Command::new(ternd_bin());
    passwd
        .args(["user", "passwd", "tenant", "--data"])
        .arg(server.data())
        .env("TERN_PASSWORD", "offline-pw");
    ok(&run_with_stdin(passwd, None));
    server.spawn();
    tenant_with(&server, "offline-pw").unwrap();
}
