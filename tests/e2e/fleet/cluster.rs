//! Redis Cluster: three primaries (real `redis-server` processes on loopback, `redis-cli --cluster
//! create`); replicas (one in-process, one real process) given only a node that does not serve
//! the fleet's slot. Every key of the fleet is hash-tagged with its prefix, so one node holds them
//! all; changes reach every replica; when the slot migrates to another node the replicas follow
//! (`MOVED`) without a restart, and nothing is lost.

use cae_proxy::dev::transmitter::TransmitterOptions;
use http::StatusCode;

use super::*;
use crate::common::redis_server::create_cluster;

/// Which of `nodes` answers for `key` (the others answer `MOVED`).
fn owner_of(nodes: &[&Redis], key: &str) -> usize {
    nodes
        .iter()
        .position(|n| {
            redis::cmd("EXISTS")
                .arg(key)
                .query::<i64>(&mut n.conn())
                .is_ok()
        })
        .expect("a node serves the key's slot")
}

/// Moves `slot` from `from` to `to` with its keys (the steps `redis-cli --cluster reshard`
/// takes), and tells every node.
fn migrate_slot(nodes: &[&Redis], slot: i64, from: &Redis, to: &Redis) {
    let (from_id, to_id) = (from.node_id(), to.node_id());
    let setslot = |n: &Redis, how: &str, id: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(how)
            .arg(id)
            .query(&mut n.conn())
            .unwrap();
    };
    setslot(to, "IMPORTING", &from_id);
    setslot(from, "MIGRATING", &to_id);
    let mut c = from.conn();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut c)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port())
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut c)
            .unwrap();
    }
    setslot(to, "NODE", &to_id);
    for n in nodes {
        setslot(n, "NODE", &to_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_lives_in_one_slot_and_follows_it_when_it_migrates() {
    let first = Redis::start_cluster_node();
    let others = [Redis::start_cluster_node(), Redis::start_cluster_node()];
    create_cluster(&[&first, &others[0], &others[1]]);
    let w = world(first, TransmitterOptions::default()).await;
    let nodes = [&w.redis, &others[0], &others[1]];
    let stream = format!("{{{}}}changes", w.prefix);
    let owner = owner_of(&nodes, &stream);
    let seed = (owner + 1) % 3;
    let target = (owner + 2) % 3;
    let store = format!(
        "redis_cluster_nodes = [\"127.0.0.1:{}\"]\n",
        nodes[seed].port()
    );
    let a = Replica::in_process(&w, "a", Delivery::Push, &store).await;
    let b = Replica::process_with(&w, "b", Delivery::Push, &store);
    for r in [&a, &b] {
        r.wait_ready().await;
        eventually(PROMPT, "the replica to be writable", || async {
            r.write_readyz().await.status == StatusCode::OK
        })
        .await;
    }
    let v = a.fleet_view().await;
    assert_eq!(v["mode"], "cluster", "{v}");
    assert_eq!(
        v["primary"],
        format!("127.0.0.1:{}", nodes[owner].port()),
        "found through a node that does not serve the slot: {v}"
    );

    // Changes reach every replica, both ways.
    let r = a.push(&revoke_set(&w, "alice")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused_within(&b, &token(&w, "alice"), PROMPT, "B: alice").await;
    let r = b
        .admin_post("/admin/block", json!({"key": subject(&w, "bob")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    refused_within(&a, &token(&w, "bob"), PROMPT, "A: bob").await;

    // Every key of the fleet is on the slot's node, under the hash-tagged prefix.
    let tag = format!("{{{}}}", w.prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut nodes[owner].conn())
        .unwrap();
    for k in ["changes", "replicas", "replicas:seen"] {
        assert!(keys.contains(&format!("{tag}{k}")), "{keys:?}");
    }
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("{tag}set:"))),
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| k.starts_with(&tag)), "{keys:?}");
    for n in [seed, target] {
        let size: i64 = redis::cmd("DBSIZE").query(&mut nodes[n].conn()).unwrap();
        assert_eq!(size, 0, "node {n} holds none of the fleet's keys");
    }

    // The slot migrates to the third node: the replicas follow (MOVED) without a restart.
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&stream)
        .query(&mut nodes[owner].conn())
        .unwrap();
    migrate_slot(&nodes, slot, nodes[owner], nodes[target]);
    let r = b.push(&revoke_set(&w, "carol")).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "the first change after the migration: {}",
        r.text()
    );
    refused_within(&a, &token(&w, "carol"), RECONNECT, "A: carol").await;
    let r = a
        .admin_post("/admin/revoke", json!({"key": subject(&w, "dave")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    refused_within(&b, &token(&w, "dave"), RECONNECT, "B: dave").await;
    for sub in ["alice", "bob"] {
        assert_refused(&a, &token(&w, sub), sub).await;
        assert_refused(&b, &token(&w, sub), sub).await;
    }
    let v = wait_for(RECONNECT, "A's view of the new node", || async {
        let v = a.fleet_view().await;
        (v["primary"] == format!("127.0.0.1:{}", nodes[target].port())).then_some(v)
    })
    .await;
    assert_eq!(v["redis_reachable"], true, "{v}");
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query(&mut nodes[target].conn())
        .unwrap();
    assert!(len >= 4, "the log moved with the slot: {len} entries");
    // And a replica started now learns everything from the new node.
    let c = Replica::in_process(&w, "c", Delivery::Push, &store).await;
    c.wait_ready().await;
    for sub in ["alice", "bob", "carol", "dave"] {
        assert_refused(&c, &token(&w, sub), &format!("C: {sub}")).await;
    }
}
