//! `Client::connect` checks its settings with a handshake before returning; a call to an
//! unreachable node names why it is unreachable; error chains print each cause once.

use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::builtin::{Add, Counter};
use quark::{CallError, Client, ClientError, ClusterSecret, ErrorChain, Node, NodeConfig};

const SECRET: &str = "0123456789abcdef-node";
const OTHER: &str = "0123456789abcdef-other";

fn node(addr: std::net::SocketAddr, cluster: &str, secret: Option<&str>) -> Node {
    let secret = secret
        .map(|s| format!("secret = \"{s}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
         [cluster]\ncluster_id = \"{cluster}\"\nnode_id = 1\n{secret}\
         [[cluster.nodes]]\nid = 1\naddr = \"{addr}\"\n"
    );
    let config = NodeConfig::from_toml(&text, "connect.toml").unwrap();
    quark::builtin::register_builtin(Node::builder().config(config))
        .start()
        .unwrap()
}

fn secret(s: &str) -> Option<ClusterSecret> {
    Some(ClusterSecret::new(s.as_bytes().to_vec(), "test").unwrap())
}

fn client(cluster: &str, secret: Option<ClusterSecret>) -> quark::ClientBuilder {
    quark::builtin::builtin_messages(Client::builder().cluster_id(cluster).secret(secret))
}

#[test]
fn connect_refuses_a_node_whose_secret_or_cluster_id_differs() {
    let addr = free_addrs(1)[0];
    let n = node(addr, "blue", Some(SECRET));
    // Listed with its id: before, connect returned Ok and every call failed in microseconds
    // with a bare NodeUnavailable.
    let cases = [
        ("blue", secret(OTHER), "secrets differ"),
        ("green", secret(SECRET), "cluster id mismatch"),
        ("blue", None, ""),
    ];
    for (cluster, s, cause) in cases {
        let e = match client(cluster, s).node(1, addr).connect() {
            Ok(c) => {
                c.shutdown();
                panic!("connect succeeded against a node with other settings ({cluster})");
            }
            Err(e) => e,
        };
        assert!(matches!(e, ClientError::Handshake { .. }), "{e:?}");
        let chain = ErrorChain(&e).to_string();
        assert!(chain.contains(&addr.to_string()), "names the node: {chain}");
        assert!(chain.contains(cause), "names the cause: {chain}");
    }
    // The right settings connect, and calls work.
    let c = client("blue", secret(SECRET))
        .node(1, addr)
        .connect()
        .unwrap();
    let r = c.actor_ref::<Counter>(7u64);
    assert_eq!(quark::block_on(r.ask(Add(2))).unwrap(), 2);
    c.shutdown();
    n.shutdown();
}

#[test]
fn connect_with_a_wrong_node_id_is_refused() {
    let addr = free_addrs(1)[0];
    let n = node(addr, "blue", None);
    let e = client("blue", None)
        .node(5, addr)
        .connect()
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            ClientError::WrongNode {
                expected: 5,
                found: 1,
                ..
            }
        ),
        "{e:?}"
    );
    n.shutdown();
}

#[test]
fn a_secret_variable_that_is_not_set_is_an_error() {
    let addr = free_addrs(1)[0];
    let e = client("blue", None)
        .secret_env("QUARK_TEST_CLIENT_SECRET_NEVER_SET")
        .node(1, addr)
        .connect()
        .err()
        .expect("an unset secret variable is refused");
    assert!(
        matches!(&e, ClientError::Secret(quark::SecretError::EnvUnset { var }) if var == "QUARK_TEST_CLIENT_SECRET_NEVER_SET"),
        "{e:?}"
    );
}

#[test]
fn an_unreachable_node_is_tolerated_and_its_calls_say_why() {
    let addrs = free_addrs(2);
    let up = node(addrs[0], "blue", None);
    // Node 2 is listed but nothing listens there. It must be listed in the node's membership
    // too for placement to agree; the client alone is enough here.
    let strict = client("blue", None)
        .node(1, addrs[0])
        .node(2, addrs[1])
        .require_all_nodes(true)
        .connect()
        .err()
        .expect("require_all_nodes refuses an unreachable node");
    assert!(
        matches!(strict, ClientError::Connect { addr, .. } if addr == addrs[1]),
        "{strict:?}"
    );

    let c = client("blue", None)
        .node(1, addrs[0])
        .node(2, addrs[1])
        .connect()
        .expect("one node reached is enough by default");
    let k = (0..10_000u64)
        .find(|k| c.actor_ref::<Counter>(*k).remote_node() == Some(2))
        .expect("a key on node 2");
    let r = c.actor_ref::<Counter>(k);
    let end = Instant::now() + Duration::from_secs(10);
    let e = loop {
        match quark::block_on(r.ask(Add(1))) {
            Err(e @ CallError::NodeUnavailable { cause: Some(_), .. }) => break e,
            other => {
                assert!(
                    Instant::now() < end,
                    "no NodeUnavailable with a cause: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let source = std::error::Error::source(&e).expect("NodeUnavailable has a source");
    let chain = ErrorChain(&e).to_string();
    assert!(
        source.to_string().contains(&addrs[1].to_string()),
        "{chain}"
    );
    assert!(chain.contains("refused"), "the OS cause: {chain}");
    c.shutdown();
    up.shutdown();
}

#[test]
fn a_bind_failure_prints_its_os_cause_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = format!(
        "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
         [cluster]\ncluster_id = \"bind\"\nnode_id = 1\n\
         [[cluster.nodes]]\nid = 1\naddr = \"{addr}\"\n"
    );
    let config = NodeConfig::from_toml(&text, "bind.toml").unwrap();
    let e = match Node::builder().config(config).start() {
        Ok(n) => {
            n.shutdown();
            panic!("a node started on a port already taken");
        }
        Err(e) => e,
    };
    assert!(matches!(e, quark::NodeError::Bind { .. }), "{e:?}");
    let os = std::error::Error::source(&e)
        .expect("the bind error has the OS error as its source")
        .to_string();
    assert!(!os.is_empty());
    // As the logs print it (ErrorChain) and as `quark serve` prints it (anyhow's `{:#}`).
    let printed = [
        ErrorChain(&e).to_string(),
        format!("{:#}", anyhow::Error::new(e)),
    ];
    for p in printed {
        assert_eq!(
            p.matches(&os).count(),
            1,
            "the OS cause {os:?} once in {p:?}"
        );
        assert!(p.contains(&addr.to_string()), "{p}");
    }
    drop(taken);
}

#[test]
fn out_stall_timeout_is_read_from_the_cluster_table() {
    let text = |extra: &str| {
        format!(
            "[cluster]\ncluster_id = \"c\"\nnode_id = 1\n{extra}\
             [[cluster.nodes]]\nid = 1\naddr = \"127.0.0.1:7999\"\n"
        )
    };
    let c = NodeConfig::from_toml(&text(""), "a.toml").unwrap();
    assert_eq!(
        c.cluster.unwrap().net.out_stall_timeout,
        Duration::from_secs(5)
    );
    let c = NodeConfig::from_toml(&text("out_stall_timeout_ms = 250\n"), "b.toml").unwrap();
    assert_eq!(
        c.cluster.unwrap().net.out_stall_timeout,
        Duration::from_millis(250)
    );
    let e = NodeConfig::from_toml(&text("out_stall_timeout_ms = 0\n"), "c.toml").unwrap_err();
    assert!(e.to_string().contains("out_stall_timeout_ms"), "{e}");
}
