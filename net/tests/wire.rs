//! Typed payloads: rkyv round trips in place, validation of corrupted bytes, envelopes and
//! the unknown-message-type error reply.

use proptest::prelude::*;
use quark_net::*;

#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Deposit {
    account: String,
    amount: u64,
    tags: Vec<u32>,
}
impl WireMessage for Deposit {
    const WIRE_NAME: &'static str = "test.Deposit";
}

#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Balance(u64);
impl WireMessage for Balance {
    const WIRE_NAME: &'static str = "test.Balance";
}

const MAX: u32 = DEFAULT_FRAME_BYTES_MAX;

fn one_frame(out: &OutBuf) -> FrameDecoder {
    let mut dec = FrameDecoder::new(MAX);
    assert_eq!(dec.feed(out.pending()).unwrap(), out.len());
    dec
}

#[test]
fn request_round_trip_in_place() {
    let mut out = OutBuf::new();
    let msg = Deposit {
        account: "alice".into(),
        amount: 250,
        tags: vec![1, 2, 3],
    };
    let env = RequestEnvelope::new(
        "bank.Account",
        WireKey::Str("alice".into()),
        Deposit::WIRE_NAME,
        900,
    );
    let head = FrameHead {
        correlation: 77,
        source_shard: 1,
        target_shard: 0,
        ..FrameHead::new(FrameKind::Request)
    };
    encode_request(&mut out, head, &env, &msg, MAX).unwrap();
    let mut dec = one_frame(&out);
    let f = dec.next_frame().unwrap();
    let req = decode_request(&f).unwrap();
    assert_eq!(req.head, head);
    assert_eq!(req.envelope.actor_type.as_str(), "bank.Account");
    assert!(matches!(&req.envelope.key, ArchivedWireKey::Str(s) if s.as_str() == "alice"));
    assert_eq!(req.envelope.deadline_ms.to_native(), 900);
    let d = decode_message::<Deposit>(req.body).unwrap();
    assert_eq!(d.account.as_str(), "alice");
    assert_eq!(d.amount.to_native(), 250);
    assert_eq!(
        d.tags.iter().map(|t| t.to_native()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Zero copy: the archive lives inside the receive buffer.
    let range = f.raw.as_ptr_range();
    assert!(range.contains(&(d as *const _ as *const u8)));
}

#[test]
fn response_and_error_reply_round_trip() {
    let req = FrameHead {
        correlation: 5,
        source_shard: 2,
        target_shard: 9,
        ..FrameHead::new(FrameKind::Request)
    };
    let mut out = OutBuf::new();
    encode_response(&mut out, &req, &Balance(1234), MAX).unwrap();
    encode_error_reply(&mut out, &req, &RemoteError::Timeout, MAX).unwrap();
    let mut dec = one_frame(&out);
    let f = dec.next_frame().unwrap();
    assert_eq!(f.header.head.correlation, 5);
    assert_eq!(
        (f.header.head.source_shard, f.header.head.target_shard),
        (9, 2)
    );
    match decode_response(&f).unwrap() {
        ResponseView::Reply(b) => {
            assert_eq!(decode_message::<Balance>(b).unwrap().0.to_native(), 1234)
        }
        ResponseView::Error(e) => panic!("unexpected error {e}"),
    }
    let f = dec.next_frame().unwrap();
    assert_eq!(f.header.head.kind, FrameKind::ErrorReply);
    assert!(matches!(
        decode_response(&f).unwrap(),
        ResponseView::Error(RemoteError::Timeout)
    ));
}

/// What a receiver does with a request naming a type it does not know: it answers with an
/// error reply built only from the envelope.
#[test]
fn unknown_message_type_gets_an_error_reply() {
    let mut out = OutBuf::new();
    let env = RequestEnvelope::new("bank.Account", WireKey::U64(1), "test.NoSuchType", 100);
    let head = FrameHead {
        correlation: 11,
        ..FrameHead::new(FrameKind::Request)
    };
    encode_request(&mut out, head, &env, &Balance(1), MAX).unwrap();
    let mut dec = one_frame(&out);
    let f = dec.next_frame().unwrap();
    let req = decode_request(&f).unwrap();
    let known = [Deposit::WIRE_NAME, Balance::WIRE_NAME];
    assert!(!known.contains(&req.envelope.message_type.as_str()));
    let err = RemoteError::UnknownMessageType {
        actor_type: req.envelope.actor_type.as_str().into(),
        message_type: req.envelope.message_type.as_str().into(),
    };
    let mut reply = OutBuf::new();
    encode_error_reply(&mut reply, &req.head, &err, MAX).unwrap();
    let mut dec2 = one_frame(&reply);
    let r = dec2.next_frame().unwrap();
    assert_eq!(r.header.head.correlation, 11);
    match decode_response(&r).unwrap() {
        ResponseView::Error(e) => {
            assert_eq!(e, err);
            assert!(e.to_string().contains("test.NoSuchType"));
        }
        ResponseView::Reply(_) => panic!("expected an error"),
    }
}

#[test]
fn wrong_kind_is_refused() {
    let mut out = OutBuf::new();
    out.push_empty(FrameHead::new(FrameKind::Heartbeat))
        .unwrap();
    let mut dec = one_frame(&out);
    let f = dec.next_frame().unwrap();
    assert!(matches!(
        decode_request(&f),
        Err(WireError::WrongKind {
            found: FrameKind::Heartbeat,
            ..
        })
    ));
    assert!(matches!(
        decode_response(&f),
        Err(WireError::WrongKind { .. })
    ));
}

#[test]
fn corrupted_string_length_is_rejected() {
    let mut out = OutBuf::new();
    let msg = Deposit {
        account: "a-long-enough-account-name-to-be-out-of-line".into(),
        amount: 1,
        tags: vec![],
    };
    encode_message(&mut out, FrameHead::new(FrameKind::OneWay), &msg, MAX).unwrap();
    let mut bytes = rkyv::util::AlignedVec::<16>::new();
    bytes.extend_from_slice(out.pending());
    let (f, _) = decode_frame(&bytes, MAX).unwrap();
    let meta_len = f.meta().len();
    assert!(decode_message::<Deposit>(f.meta()).is_ok());
    // Point the out-of-line string far outside the buffer: the root (at the end) starts with
    // the ArchivedString's { length u32 | relative offset i32 }.
    let root_off = HEADER_BYTES + meta_len - std::mem::size_of::<ArchivedDeposit>();
    bytes[root_off + 4..root_off + 8].copy_from_slice(&0x3FFF_0000i32.to_le_bytes());
    let (f, _) = decode_frame(&bytes, MAX).unwrap();
    assert!(matches!(
        decode_message::<Deposit>(f.meta()),
        Err(WireError::Invalid {
            wire_name: "test.Deposit",
            ..
        })
    ));
}

#[test]
fn misaligned_payload_is_rejected() {
    let mut out = OutBuf::new();
    encode_message(
        &mut out,
        FrameHead::new(FrameKind::OneWay),
        &Balance(3),
        MAX,
    )
    .unwrap();
    let mut v = rkyv::util::AlignedVec::<16>::new();
    v.push(0);
    v.extend_from_slice(&out.pending()[HEADER_BYTES..HEADER_BYTES + 8]);
    assert!(matches!(
        decode_message::<Balance>(&v[1..]),
        Err(WireError::Misaligned { .. })
    ));
}

/// The archive of `()` is empty, and an empty buffer's address is not aligned: it still
/// decodes (a remote ask with a `()` reply failed with `BadReply` before).
#[test]
fn an_empty_archive_decodes_wherever_it_lies() {
    let empty = rkyv::util::AlignedVec::<16>::new();
    assert_eq!(rkyv::to_bytes::<rkyv::rancor::Error>(&()).unwrap().len(), 0);
    <()>::from_wire(&empty).expect("() decodes from an empty buffer");
    <()>::from_wire(&[0u8; 0][..]).expect("() decodes from any empty slice");
}

#[test]
fn remote_errors_round_trip() {
    let all = [
        RemoteError::UnknownActorType {
            actor_type: "x".into(),
        },
        RemoteError::UnknownMessageType {
            actor_type: "x".into(),
            message_type: "y".into(),
        },
        RemoteError::BadPayload {
            message_type: "y".into(),
        },
        RemoteError::ActorPanicked,
        RemoteError::Timeout,
        RemoteError::ShuttingDown,
        RemoteError::Overloaded,
    ];
    let req = FrameHead::new(FrameKind::Request);
    let mut out = OutBuf::new();
    for e in &all {
        encode_error_reply(&mut out, &req, e, MAX).unwrap();
    }
    let mut dec = one_frame(&out);
    for e in &all {
        let f = dec.next_frame().unwrap();
        match decode_response(&f).unwrap() {
            ResponseView::Error(got) => assert_eq!(&got, e),
            ResponseView::Reply(_) => panic!("expected error"),
        }
    }
}

proptest! {
    /// Random byte flips in a payload: validation either rejects it or yields an archive that
    /// can be read without panicking; never UB, never a panic.
    #[test]
    fn prop_corrupted_payloads_never_panic(
        account in ".{0,40}",
        amount in any::<u64>(),
        tags in prop::collection::vec(any::<u32>(), 0..10),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut out = OutBuf::new();
        let msg = Deposit { account: account.clone(), amount, tags: tags.clone() };
        encode_message(&mut out, FrameHead::new(FrameKind::OneWay), &msg, MAX).unwrap();
        let mut bytes = rkyv::util::AlignedVec::<16>::new();
        bytes.extend_from_slice(out.pending());
        let meta_len = decode_frame(&bytes, MAX).unwrap().0.meta().len();
        {
            let (f, _) = decode_frame(&bytes, MAX).unwrap();
            let d = decode_message::<Deposit>(f.meta()).unwrap();
            prop_assert_eq!(d.account.as_str(), account.as_str());
            prop_assert_eq!(d.amount.to_native(), amount);
        }
        for (i, v) in &flips {
            let at = HEADER_BYTES + i.index(meta_len);
            bytes[at] ^= *v | 1;
        }
        let (f, _) = decode_frame(&bytes, MAX).unwrap();
        if let Ok(d) = decode_message::<Deposit>(f.meta()) {
            let _ = d.account.as_str().len() + d.tags.len();
        }
    }

    /// Arbitrary bytes as a payload of each type: validation never panics. A no-panic
    /// property only (it does not look at what validation accepts); that corrupted payloads are
    /// rejected or read safely is `prop_corrupted_payloads_never_panic`.
    #[test]
    fn prop_arbitrary_payloads_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(&data);
        let _ = decode_message::<Deposit>(&v);
        let _ = decode_message::<RemoteError>(&v);
        let _ = decode_message::<RequestEnvelope<'static>>(&v);
    }
}
