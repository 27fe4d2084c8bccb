//! Storage groups are apart on the replication surfaces too: a user of one
//! group sees none of another group's trail and cannot fill the trail with
//! refusals; a partner user allowed into one group can neither abort nor
//! ask about the replicas of another. Real ternd processes.

use std::time::Duration;

use tern_agent::{Client, ClientOptions, ContainerSettings, CopyId, ReplicaSpec, ReplicaStart};
use tern_core::wire::{ChunkRef, ImportState, ReplicaOrigin};
use tern_core::{ChunkId, ChunkParams, Codec, ContainerName, ImageName};
use tern_test_support::*;

#[path = "replication_common.rs"]
mod common;
use common::*;

const USER_PASSWORD: &str = "user-secret-1";

fn login(server: &TestServer, user: &str, password: &str) -> Client {
    let mut o: ClientOptions = server.options();
    o.user = user.into();
    o.password = password.into();
    Client::connect(&o).unwrap()
}

fn add_user(admin: &Client, name: &str, groups: &[&str]) {
    admin.user_add(name, USER_PASSWORD, false).unwrap();
    admin.user_set(name, Some(groups), None).unwrap();
}

#[test]
fn a_user_sees_only_their_groups_trail_and_cannot_flood_it() {
    let pair = Pair::new();
    pair.pair().unwrap();
    let admin = pair.source.client();
    admin
        .container_create("a/ca", ContainerSettings::default())
        .unwrap();
    admin
        .container_create("b/cb", ContainerSettings::default())
        .unwrap();
    add_user(&admin, "alice", &["a"]);
    add_user(&admin, "bob", &["b"]);
    backup(&admin, "a/ca", "secret-a", b"", &test_data(1 << 20, 5));
    let id = admin
        .copy_start("a/ca", "secret-a", &to_dr())
        .expect("copy of group a's image");
    wait_final(&admin, id);

    let alice = login(&pair.source, "alice", USER_PASSWORD);
    let bob = login(&pair.source, "bob", USER_PASSWORD);
    let mentions = |list: &[tern_agent::TrailEntry]| {
        list.iter().filter(|t| t.image.contains("secret-a")).count()
    };
    assert!(mentions(&admin.replication_history(1000).unwrap()) >= 1);
    assert!(mentions(&alice.replication_history(1000).unwrap()) >= 1);
    let bobs = bob.replication_history(1000).unwrap();
    assert_eq!(bobs, vec![], "bob sees another group's trail");

    // Bob asks for copies that cannot be, as fast as he can.
    let asked = 400;
    for i in 0..asked {
        let name = format!("nothing-{i}");
        assert!(bob.copy_start("b/cb", &name, &to_dr()).is_err());
    }
    let refused = |c: &Client| {
        let list = c.replication_history(10_000).unwrap();
        let rows = list
            .iter()
            .filter(|t| t.reason.contains("copy refused"))
            .count();
        let counted: u64 = list.iter().map(|t| t.repeats).sum();
        (rows, counted)
    };
    let (rows, _) = refused(&admin);
    eprintln!("{asked} refused copies: {rows} trail entries");
    assert!(rows <= 25, "{asked} refusals wrote {rows} trail entries");
    assert_eq!(refused(&bob).0, rows, "bob sees his own group's refusals");
    assert_eq!(refused(&alice).0, 0, "alice sees bob's refusals");
    // The rest are counted, not lost: the next one written carries them.
    std::thread::sleep(Duration::from_secs(4));
    assert!(bob.copy_start("b/cb", "one-more", &to_dr()).is_err());
    let (rows_after, counted) = refused(&admin);
    assert_eq!(rows_after, rows + 1);
    assert_eq!(counted as usize + rows, asked, "refusals counted");
}

fn origin(copy: u8) -> ReplicaOrigin {
    ReplicaOrigin {
        copy: CopyId([copy; 16]),
        server: "a-source".into(),
        container: ContainerName::new("c").unwrap(),
        image: ImageName::new("img").unwrap(),
        lock: None,
    }
}

/// Begins a replica as `partner` in `container`, with one chunk sent.
fn begin_replica(partner: &Client, container: &str, copy: u8) -> tern_agent::ReplicaWriter {
    let spec = ReplicaSpec {
        container: ContainerName::new(container).unwrap(),
        name: ImageName::new(format!("replica-{copy}")).unwrap(),
        props: Vec::new(),
        origin: origin(copy),
        chunking: ChunkParams::default(),
        zstd_level: 3,
    };
    let ReplicaStart::Write(w) = partner.replica_create(spec).unwrap() else {
        panic!("a new replica was found committed");
    };
    let data = test_data(64 << 10, u64::from(copy));
    let id = ChunkId::of(&data);
    let len = data.len() as u32;
    let need = w
        .announce(vec![ChunkRef { id, len }])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(need, vec![0]);
    w.send_chunk(id, Codec::Raw, len, data).unwrap();
    w
}

#[test]
fn a_partner_user_cannot_abort_or_query_another_groups_replicas() {
    let target = TestServer::start();
    let admin = target.client();
    let replica = ContainerSettings {
        replica: true,
        import: true,
        ..Default::default()
    };
    admin.container_create("ga/dra", replica.clone()).unwrap();
    admin.container_create("gb/drb", replica).unwrap();
    for (user, group) in [("pa", "ga"), ("pb", "gb")] {
        admin.user_add(user, USER_PASSWORD, false).unwrap();
        admin.user_set_replicate_into(user, &[group]).unwrap();
    }
    let pa = login(&target, "pa", USER_PASSWORD);
    let pb = login(&target, "pb", USER_PASSWORD);

    // pa aborting pb's open replica leaves it alone: it commits.
    let writer = begin_replica(&pb, "gb/drb", 7);
    pa.replica_abort(CopyId([7; 16])).unwrap();
    writer
        .commit()
        .expect("another group's partner aborted the replica");

    // The import is pb's to ask about, not pa's.
    let copy = [CopyId([7; 16])];
    assert_eq!(pb.import_states(&copy).unwrap(), vec![ImportState::Pending]);
    assert_eq!(pa.import_states(&copy).unwrap(), vec![ImportState::NoEvent]);

    // And pb may abort its own.
    let writer = begin_replica(&pb, "gb/drb", 8);
    pb.replica_abort(CopyId([8; 16])).unwrap();
    assert!(writer.commit().is_err(), "an aborted replica committed");
}
