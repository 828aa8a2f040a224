//! Handshake: success, and every failure reported with the expected cause on both sides.

use quark_net::*;

fn secret(b: u8) -> Option<ClusterSecret> {
    Some(ClusterSecret::new(vec![b; 32], "test").unwrap())
}

/// Delivers every frame in `out` to `deliver`, stopping at the first non-Continue.
fn pump(
    out: &mut OutBuf,
    mut deliver: impl FnMut(&Frame<'_>, &mut OutBuf) -> Result<HandshakeStatus, HandshakeError>,
    reply: &mut OutBuf,
) -> Option<Result<HandshakeStatus, HandshakeError>> {
    let mut dec = FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX);
    assert_eq!(dec.feed(out.pending()).unwrap(), out.len());
    out.consume(out.len());
    let mut last = None;
    while let Some(f) = dec.next_frame() {
        let r = deliver(&f, reply);
        let stop = !matches!(r, Ok(HandshakeStatus::Continue));
        last = Some(r);
        if stop {
            break;
        }
    }
    last
}

struct Outcome {
    initiator: Result<HandshakeStatus, HandshakeError>,
    acceptor: Result<HandshakeStatus, HandshakeError>,
}

/// Runs a full exchange; returns each side's final result.
fn run(ic: HandshakeConfig, ac: HandshakeConfig, expected: Option<u64>) -> Outcome {
    let mut ini = Initiator::new(ic, [1u8; NONCE_BYTES], expected);
    let mut acc = Acceptor::new(ac, [2u8; NONCE_BYTES]);
    let mut to_acc = OutBuf::new();
    let mut to_ini = OutBuf::new();
    ini.start(&mut to_acc).unwrap();
    let mut ini_res = None;
    let mut acc_res = None;
    for _round in 0..8 {
        if acc_res.is_none() || !to_acc.is_empty() {
            if let Some(r) = pump(&mut to_acc, |f, o| acc.on_frame(f, o), &mut to_ini) {
                if !matches!(r, Ok(HandshakeStatus::Continue)) {
                    acc_res.get_or_insert(r);
                }
            }
        }
        if let Some(r) = pump(&mut to_ini, |f, o| ini.on_frame(f, o), &mut to_acc) {
            if !matches!(r, Ok(HandshakeStatus::Continue)) {
                ini_res.get_or_insert(r);
            }
        }
        if ini_res.is_some() && acc_res.is_some() && to_acc.is_empty() && to_ini.is_empty() {
            break;
        }
    }
    Outcome {
        initiator: ini_res.expect("initiator finished"),
        acceptor: acc_res.expect("acceptor finished"),
    }
}

fn cfg(cluster: &str, node: u64, s: Option<ClusterSecret>) -> HandshakeConfig {
    HandshakeConfig::member(cluster, node, s)
}

#[test]
fn success_with_secret() {
    let mut ic = cfg("prod", 1, secret(7));
    ic.shard = 3;
    ic.app_version = "2.1".into();
    let mut ac = cfg("prod", 2, secret(7));
    ac.shard = 1;
    ac.app_version = "2.0".into();
    let o = run(ic, ac, Some(2));
    // Each side learns the other's application version (version-aware placement).
    assert_eq!(
        o.initiator.unwrap(),
        HandshakeStatus::Established(PeerInfo {
            node_id: 2,
            role: PeerRole::Member,
            shard: 1,
            app_version: "2.0".into(),
        })
    );
    assert_eq!(
        o.acceptor.unwrap(),
        HandshakeStatus::Established(PeerInfo {
            node_id: 1,
            role: PeerRole::Member,
            shard: 3,
            app_version: "2.1".into(),
        })
    );
}

#[test]
fn success_without_secret_and_client_role() {
    let mut ic = cfg("dev", 900, None);
    ic.role = PeerRole::Client;
    let o = run(ic, cfg("dev", 2, None), None);
    assert!(matches!(
        o.initiator,
        Ok(HandshakeStatus::Established(PeerInfo { node_id: 2, .. }))
    ));
    assert!(matches!(
        o.acceptor,
        Ok(HandshakeStatus::Established(PeerInfo {
            node_id: 900,
            role: PeerRole::Client,
            ..
        }))
    ));
}

#[test]
fn wrong_secret_fails_on_both_sides() {
    let o = run(
        cfg("prod", 1, secret(7)),
        cfg("prod", 2, secret(8)),
        Some(2),
    );
    let ie = o.initiator.unwrap_err();
    assert!(
        matches!(&ie, HandshakeError::WrongProof { peer } if peer.node_id == 2),
        "{ie}"
    );
    assert!(
        ie.to_string().contains("wrong proof from peer node 2"),
        "{ie}"
    );
    let ae = o.acceptor.unwrap_err();
    assert!(
        matches!(&ae, HandshakeError::Rejected { reason: RejectReason::WrongProof, peer } if peer.node_id == 1),
        "{ae}"
    );
    assert!(ae.to_string().contains("secrets differ"), "{ae}");
}

#[test]
fn wrong_cluster_id_fails_on_both_sides() {
    let o = run(
        cfg("blue", 1, secret(7)),
        cfg("green", 2, secret(7)),
        Some(2),
    );
    let ae = o.acceptor.unwrap_err();
    assert!(
        matches!(&ae, HandshakeError::ClusterMismatch { ours, peer }
        if ours == "green" && peer.cluster_id == "blue" && peer.node_id == 1),
        "{ae}"
    );
    let msg = ae.to_string();
    assert!(
        msg.contains("\"green\"") && msg.contains("\"blue\""),
        "{msg}"
    );
    let ie = o.initiator.unwrap_err();
    assert!(
        matches!(&ie, HandshakeError::Rejected { reason: RejectReason::ClusterMismatch, peer }
        if peer.cluster_id == "green"),
        "{ie}"
    );
    assert!(ie.to_string().contains("cluster id mismatch"), "{ie}");
}

#[test]
fn wrong_protocol_version_fails_on_both_sides() {
    let mut ic = cfg("prod", 1, secret(7));
    ic.protocol_version = PROTOCOL_VERSION + 1;
    let o = run(ic, cfg("prod", 2, secret(7)), Some(2));
    let ae = o.acceptor.unwrap_err();
    assert!(
        matches!(&ae, HandshakeError::VersionMismatch { ours, peer }
        if *ours == PROTOCOL_VERSION && peer.protocol_version == PROTOCOL_VERSION + 1),
        "{ae}"
    );
    assert!(
        ae.to_string()
            .contains(&format!("speaks v{}", PROTOCOL_VERSION + 1)),
        "{ae}"
    );
    let ie = o.initiator.unwrap_err();
    assert!(
        matches!(&ie, HandshakeError::Rejected { reason: RejectReason::VersionMismatch, peer }
        if peer.protocol_version == PROTOCOL_VERSION),
        "{ie}"
    );
    assert!(ie.to_string().contains("protocol version mismatch"), "{ie}");
}

#[test]
fn secret_on_one_side_only_fails_on_both_sides() {
    let o = run(cfg("prod", 1, None), cfg("prod", 2, secret(7)), None);
    let ae = o.acceptor.unwrap_err();
    assert!(
        matches!(
            ae,
            HandshakeError::AuthModeMismatch {
                ours_has_secret: true,
                ..
            }
        ),
        "{ae}"
    );
    let ie = o.initiator.unwrap_err();
    assert!(
        matches!(
            ie,
            HandshakeError::Rejected {
                reason: RejectReason::AuthModeMismatch,
                ..
            }
        ),
        "{ie}"
    );
}

#[test]
fn unexpected_peer_fails_on_both_sides() {
    let o = run(
        cfg("prod", 1, secret(7)),
        cfg("prod", 5, secret(7)),
        Some(2),
    );
    let ie = o.initiator.unwrap_err();
    assert!(
        matches!(&ie, HandshakeError::UnexpectedPeer { expected: 2, peer } if peer.node_id == 5)
    );
    let ae = o.acceptor.unwrap_err();
    assert!(matches!(
        ae,
        HandshakeError::Rejected {
            reason: RejectReason::UnexpectedPeer,
            ..
        }
    ));
}

#[test]
fn unexpected_frame_is_rejected() {
    let mut acc = Acceptor::new(cfg("prod", 2, secret(7)), [2; NONCE_BYTES]);
    let mut inb = OutBuf::new();
    inb.push_empty(FrameHead::new(FrameKind::Request)).unwrap();
    let mut dec = FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX);
    dec.feed(inb.pending()).unwrap();
    let f = dec.next_frame().unwrap();
    let mut out = OutBuf::new();
    let e = acc.on_frame(&f, &mut out).unwrap_err();
    assert!(matches!(
        e,
        HandshakeError::UnexpectedFrame {
            kind: FrameKind::Request,
            state: "awaiting Hello"
        }
    ));
    // The Reject went out, and it says why.
    let mut dec2 = FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX);
    dec2.feed(out.pending()).unwrap();
    let r = dec2.next_frame().unwrap();
    assert_eq!(r.header.head.kind, FrameKind::Reject);
    // A finished machine refuses further use.
    assert!(matches!(
        acc.on_frame(&f, &mut out),
        Err(HandshakeError::Finished { state: "failed" })
    ));
}

#[test]
fn garbage_hello_payload_is_bad_payload() {
    let mut acc = Acceptor::new(cfg("prod", 2, secret(7)), [2; NONCE_BYTES]);
    let mut inb = OutBuf::new();
    let mut b = inb.begin_frame(FrameHead::new(FrameKind::Hello)).unwrap();
    b.extend_from_slice(&[0xFF; 48]);
    b.finish(4096).unwrap();
    let mut dec = FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX);
    dec.feed(inb.pending()).unwrap();
    let f = dec.next_frame().unwrap();
    let mut out = OutBuf::new();
    let e = acc.on_frame(&f, &mut out).unwrap_err();
    assert!(matches!(e, HandshakeError::BadPayload(_)), "{e}");
    assert_eq!(e.reject_reason(), Some(RejectReason::BadPayload));
    assert!(!out.is_empty(), "a Reject was written");
}

#[test]
fn timeout_sends_reject_and_peer_reports_it() {
    let mut ini = Initiator::new(cfg("prod", 1, secret(7)), [1; NONCE_BYTES], Some(2));
    let mut acc = Acceptor::new(cfg("prod", 2, secret(7)), [2; NONCE_BYTES]);
    let mut to_acc = OutBuf::new();
    let mut to_ini = OutBuf::new();
    ini.start(&mut to_acc).unwrap();
    // Acceptor receives the Hello, then its timer fires before the Proof arrives.
    let r = pump(&mut to_acc, |f, o| acc.on_frame(f, o), &mut to_ini).unwrap();
    assert_eq!(r.unwrap(), HandshakeStatus::Continue);
    to_ini.clear(); // the Challenge is lost
    let e = acc.on_timeout(&mut to_ini);
    assert!(
        matches!(&e, HandshakeError::Timeout { state: "awaiting Proof", peer: Some(p) } if p.node_id == 1),
        "{e}"
    );
    let ie = pump(&mut to_ini, |f, o| ini.on_frame(f, o), &mut to_acc)
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            ie,
            HandshakeError::Rejected {
                reason: RejectReason::Timeout,
                ..
            }
        ),
        "{ie}"
    );
}

#[test]
fn proofs_differ_with_nonces() {
    // Same configs, different initiator nonce: the Proof frame bytes must differ (no replay).
    let proof_bytes = |nonce: u8| {
        let mut ini = Initiator::new(cfg("p", 1, secret(7)), [nonce; NONCE_BYTES], None);
        let mut acc = Acceptor::new(cfg("p", 2, secret(7)), [2; NONCE_BYTES]);
        let mut a = OutBuf::new();
        let mut b = OutBuf::new();
        ini.start(&mut a).unwrap();
        pump(&mut a, |f, o| acc.on_frame(f, o), &mut b);
        pump(&mut b, |f, o| ini.on_frame(f, o), &mut a);
        a.pending().to_vec()
    };
    let p1 = proof_bytes(1);
    let p2 = proof_bytes(3);
    assert!(!p1.is_empty());
    assert_ne!(p1, p2);
}
