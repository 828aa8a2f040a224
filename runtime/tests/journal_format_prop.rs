//! The journal record decoders take bytes from disk: arbitrary input never panics, and every
//! encoded record decodes back to itself.

use proptest::prelude::*;
use quark::journal::format::{
    decode_event, decode_snapshot, encode_event, encode_snapshot, parse_stream_key, stream_key,
    Stream,
};
use quark::ActorKey;

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_event(&bytes);
        let _ = decode_snapshot(&bytes);
        let _ = parse_stream_key(&bytes);
    }

    #[test]
    fn events_round_trip(
        schema in any::<u16>(),
        version in any::<u64>(),
        ts in any::<u64>(),
        name in "[A-Za-z]{0,40}",
        data in proptest::collection::vec(any::<u8>(), 0..300),
        prev in any::<[u8; 32]>(),
    ) {
        let mut p = Vec::new();
        encode_event(&mut p, schema, version, ts, &name, &data, &prev);
        let e = decode_event(&p).unwrap();
        prop_assert_eq!((e.schema_version, e.version, e.timestamp_ms), (schema, version, ts));
        prop_assert_eq!(e.event_type, name);
        prop_assert_eq!(e.data, data);
        prop_assert_eq!(e.prev_hash, prev);
    }

    #[test]
    fn snapshots_round_trip(
        version in any::<u64>(),
        data in proptest::collection::vec(any::<u8>(), 0..300),
        hash in any::<[u8; 32]>(),
    ) {
        let mut p = Vec::new();
        encode_snapshot(&mut p, 7, version, 9, &hash, &data);
        let s = decode_snapshot(&p).unwrap();
        prop_assert_eq!((s.version, s.chain_hash, s.data), (version, hash, data));
    }

    #[test]
    fn keys_round_trip(
        ty in "[a-z-]{1,30}",
        k in prop_oneof![
            any::<u64>().prop_map(ActorKey::U64),
            "[ -~]{0,40}".prop_map(ActorKey::from),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| ActorKey::from(&b[..])),
        ],
    ) {
        for stream in [Stream::Events, Stream::Snapshots] {
            let parsed = parse_stream_key(&stream_key(stream, &ty, &k)).unwrap();
            prop_assert_eq!(parsed.stream, stream);
            prop_assert_eq!(&parsed.type_name, &ty);
            prop_assert_eq!(&parsed.key, &k);
        }
    }
}
