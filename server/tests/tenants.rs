//! Container names are per storage group: two tenants may both have
//! `nightly`, neither learns of the other's, and a user who sees both groups
//! names the one meant as `GROUP/NAME`.

use std::io::Write;

use tern_agent::{Client, ContainerSettings};
use tern_core::wire::ErrorKind;
use tern_test_support::*;

fn tenant(server: &TestServer, name: &str) -> Client {
    let mut o = server.options();
    o.user = name.into();
    o.password = format!("{name}-pw");
    Client::connect(&o).unwrap()
}

fn in_group(group: &str) -> ContainerSettings {
    ContainerSettings {
        group: Some(tern_core::names::GroupName::new(group).unwrap()),
        ..Default::default()
    }
}

#[test]
fn two_tenants_each_have_their_own_nightly() {
    let server = TestServer::start();
    let admin = server.client();
    for t in ["acme", "globex"] {
        admin.user_add(t, &format!("{t}-pw"), false).unwrap();
        admin.user_set(t, Some(&[t]), None).unwrap();
        // Groups come into being with their first container (an admin's).
        admin
            .container_create(&format!("{t}-seed"), in_group(t))
            .unwrap();
    }
    let acme = tenant(&server, "acme");
    let globex = tenant(&server, "globex");

    acme.container_create("nightly", ContainerSettings::default())
        .expect_err("acme is not in the default group");
    acme.container_create("nightly", in_group("acme")).unwrap();
    // A name taken in a group globex cannot see is as free as any other.
    globex
        .container_create("nightly", in_group("globex"))
        .unwrap();
    for (client, data) in [(&acme, b"acme data".as_slice()), (&globex, b"globex data")] {
        let mut w = client.create_image("nightly", "monday", b"").unwrap();
        w.write_all(data).unwrap();
        w.commit().unwrap();
    }
    let read = |client: &Client, container: &str| {
        let mut out = Vec::new();
        client
            .open_image(container, "monday")
            .unwrap()
            .copy_to(&mut out)
            .unwrap();
        out
    };
    assert_eq!(read(&acme, "nightly"), b"acme data");
    assert_eq!(read(&globex, "nightly"), b"globex data");
    let names = |client: &Client| -> Vec<String> {
        let mut v: Vec<String> = client
            .container_list()
            .unwrap()
            .iter()
            .map(|c| format!("{}/{}", c.group, c.name))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&acme), ["acme/acme-seed", "acme/nightly"]);
    // Asking for the other tenant's container by its group is a plain "not found".
    let err = acme.image_list("globex/nightly", "").unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::NotFound), "{err}");

    // The admin sees both: a bare name is ambiguous, a qualified one is not.
    let err = admin.image_list("nightly", "").unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Invalid), "{err}");
    assert!(err.to_string().contains("GROUP/nightly"), "{err}");
    assert_eq!(read(&admin, "globex/nightly"), b"globex data");
    let mut w = admin.create_image("acme/nightly", "tuesday", b"").unwrap();
    w.write_all(b"more").unwrap();
    w.commit().unwrap();
    assert_eq!(acme.image_list("nightly", "").unwrap().len(), 2);
    assert_eq!(globex.image_list("nightly", "").unwrap().len(), 1);
    // A qualified name must agree with the group it is created in.
    let err = admin
        .container_create("acme/weekly", in_group("globex"))
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Invalid), "{err}");
}
