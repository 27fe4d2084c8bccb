//! A server started in-process through the library's `Server`, the way a
//! test may run one where a separate process is not the point.

use std::io::Write;

use tern_agent::{Client, ClientOptions, ContainerSettings};
use tern_server::certs::CertPaths;
use tern_server::config::Config;
use tern_server::server::{Server, ServerOptions};

#[test]
fn an_in_process_server_takes_a_backup_and_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let opts = ServerOptions {
        data: dir.path().to_path_buf(),
        certs: CertPaths {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
        },
        config,
        protocol_max: tern_core::wire::PROTOCOL_MAX,
        shaping_clock: None,
        admin_password: Some("in-process".into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(Server::start(opts)).unwrap();
    assert_eq!(server.admin_created.as_deref(), Some(""));
    let (addr, fingerprint) = (server.tls_addr, server.fingerprint);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.serve_until(async {
        let _ = stopped.await;
    }));

    let mut opts = ClientOptions::new(&addr.to_string(), "admin", "in-process");
    opts.fingerprint = Some(fingerprint);
    opts.remember_servers = false;
    let client = Client::connect(&opts).unwrap();
    client
        .container_create("c", ContainerSettings::default())
        .unwrap();
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut w = client.create_image("c", "one", b"props").unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    let mut back = Vec::new();
    client
        .open_image("c", "one")
        .unwrap()
        .copy_to(&mut back)
        .unwrap();
    assert!(back == data, "the restore differs from the backup");
    drop(client);

    stop.send(()).unwrap();
    rt.block_on(serving).unwrap().unwrap();
}
