//! Frame codec: round trips, splits at every byte boundary, rejection of bad headers, and the
//! decoder's memory bound under arbitrary input.

use proptest::prelude::*;
use quark_net::*;

const MAX: u32 = 4096;

fn head(kind: FrameKind, src: u16, dst: u16, corr: u64) -> FrameHead {
    FrameHead {
        kind,
        flags: 0,
        source_shard: src,
        target_shard: dst,
        correlation: corr,
    }
}

/// Encodes a frame with raw meta and body bytes.
fn push_raw(out: &mut OutBuf, h: FrameHead, meta: &[u8], body: Option<&[u8]>) -> u32 {
    let mut f = out.begin_frame(h).unwrap();
    f.extend_from_slice(meta);
    if let Some(body) = body {
        f.end_meta();
        f.extend_from_slice(body);
    }
    f.finish(u32::MAX).unwrap()
}

/// A decoded frame: header, meta bytes, body bytes.
type Decoded = (FrameHeader, Vec<u8>, Vec<u8>);

/// Feeds `bytes` in chunks, draining frames after each; returns (header, meta, body) triples.
fn decode_all(
    dec: &mut FrameDecoder,
    bytes: &[u8],
    chunks: &[usize],
) -> Result<Vec<Decoded>, FrameError> {
    let mut got = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let chunk = chunks
            .get(i)
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        i += 1;
        let mut piece = &rest[..chunk];
        rest = &rest[chunk..];
        loop {
            let n = dec.feed(piece)?;
            piece = &piece[n..];
            while let Some(f) = dec.next_frame() {
                assert_eq!(f.payload.as_ptr() as usize % 16, 0, "payload aligned");
                assert_eq!(f.body().as_ptr() as usize % 16, 0, "body aligned");
                got.push((f.header, f.meta().to_vec(), f.body().to_vec()));
            }
            if piece.is_empty() {
                break;
            }
            assert!(n > 0, "decoder took nothing with no frame ready");
        }
    }
    Ok(got)
}

#[test]
fn header_layout_is_as_documented() {
    let mut out = OutBuf::new();
    let h = FrameHead {
        kind: FrameKind::Request,
        flags: 0,
        source_shard: 0x0102,
        target_shard: 0x0304,
        correlation: 0x1122_3344_5566_7788,
    };
    push_raw(&mut out, h, b"abc", Some(b"hello"));
    let b = out.pending();
    // payload = meta(3) + pad to 16 + body(5) = 21; frame = align16(32 + 21) = 64.
    assert_eq!(b.len(), 64);
    assert_eq!(&b[0..2], b"QK");
    assert_eq!(b[2], 1, "format version");
    assert_eq!(b[3], 16, "kind Request");
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 64);
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 21);
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 3);
    assert_eq!(b[16], 0);
    assert_eq!(b[17], 0);
    assert_eq!(&b[18..20], &[0x02, 0x01]);
    assert_eq!(&b[20..22], &[0x04, 0x03]);
    assert_eq!(&b[22..24], &[0, 0]);
    assert_eq!(&b[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&b[32..35], b"abc");
    assert!(b[35..48].iter().all(|&x| x == 0), "meta padding is zero");
    assert_eq!(&b[48..53], b"hello");
    assert!(b[53..64].iter().all(|&x| x == 0), "frame padding is zero");
}

#[test]
fn every_frame_kind_round_trips() {
    let mut out = OutBuf::new();
    for (i, k) in FrameKind::ALL.iter().enumerate() {
        push_raw(
            &mut out,
            head(*k, i as u16, 7, i as u64),
            &[i as u8; 5],
            None,
        );
    }
    let mut dec = FrameDecoder::new(MAX);
    let got = decode_all(&mut dec, out.pending(), &[]).unwrap();
    let kinds: Vec<_> = got.iter().map(|g| g.0.head.kind).collect();
    assert_eq!(kinds, FrameKind::ALL.to_vec());
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.0.head.correlation, i as u64);
        assert_eq!(g.1, vec![i as u8; 5]);
        assert!(g.2.is_empty());
    }
}

#[test]
fn split_at_every_byte_boundary() {
    let mut out = OutBuf::new();
    push_raw(
        &mut out,
        head(FrameKind::Request, 1, 2, 3),
        b"meta!",
        Some(&[9u8; 40]),
    );
    push_raw(&mut out, head(FrameKind::Heartbeat, 1, 2, 4), b"", None);
    push_raw(
        &mut out,
        head(FrameKind::OneWay, 5, 6, 7),
        &[1u8; 17],
        Some(b""),
    );
    let bytes = out.pending().to_vec();
    let mut want = decode_all(&mut FrameDecoder::new(MAX), &bytes, &[]).unwrap();
    assert_eq!(want.len(), 3);
    for cut in 0..=bytes.len() {
        let mut dec = FrameDecoder::new(MAX);
        let got = decode_all(&mut dec, &bytes, &[cut, bytes.len()]).unwrap();
        assert_eq!(got, want, "split at {cut}");
        assert_eq!(dec.finish(), Ok(()));
    }
    want.clear();
}

#[test]
fn stream_ending_mid_frame_is_truncated() {
    let mut out = OutBuf::new();
    push_raw(
        &mut out,
        head(FrameKind::Request, 0, 0, 1),
        &[3u8; 20],
        None,
    );
    let bytes = out.pending();
    for cut in 1..bytes.len() {
        let mut dec = FrameDecoder::new(MAX);
        dec.feed(&bytes[..cut]).unwrap();
        assert!(dec.next_frame().is_none());
        let need = if cut < HEADER_BYTES {
            HEADER_BYTES
        } else {
            bytes.len()
        };
        assert_eq!(dec.finish(), Err(FrameError::Truncated { have: cut, need }));
    }
    // A contiguous slice that is too short.
    let copy = aligned_copy(&bytes[..40]);
    assert_eq!(
        decode_frame(copy.as_slice(), MAX).err(),
        Some(FrameError::Truncated { have: 40, need: 64 })
    );
}

fn aligned_copy(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut v = rkyv::util::AlignedVec::<16>::new();
    v.extend_from_slice(bytes);
    v
}

fn valid_header() -> Vec<u8> {
    let mut out = OutBuf::new();
    push_raw(
        &mut out,
        head(FrameKind::Request, 0, 0, 1),
        &[0u8; 32],
        None,
    );
    out.pending().to_vec()
}

fn expect_err(bytes: &[u8]) -> FrameError {
    let mut dec = FrameDecoder::new(MAX);
    let err = dec.feed(bytes).unwrap_err();
    assert_eq!(dec.error(), Some(&err));
    // The decoder stays failed.
    assert_eq!(dec.feed(&valid_header()).unwrap_err(), err);
    assert!(dec.next_frame().is_none());
    err
}

#[test]
fn bad_headers_are_rejected_with_the_right_error() {
    let good = valid_header();
    assert_eq!(
        decode_all(&mut FrameDecoder::new(MAX), &good, &[])
            .unwrap()
            .len(),
        1
    );

    let mut b = good.clone();
    b[0] = b'H';
    b[1] = b'T';
    assert_eq!(expect_err(&b), FrameError::BadMagic { found: *b"HT" });

    let mut b = good.clone();
    b[2] = 2;
    assert_eq!(expect_err(&b), FrameError::UnsupportedVersion { found: 2 });

    let mut b = good.clone();
    b[3] = 99;
    assert_eq!(expect_err(&b), FrameError::UnknownKind(99));

    let mut b = good.clone();
    b[4..8].copy_from_slice(&(MAX + 16).to_le_bytes());
    assert_eq!(
        expect_err(&b),
        FrameError::Oversized {
            len: u64::from(MAX + 16),
            max: MAX
        }
    );

    let mut b = good.clone();
    b[4..8].copy_from_slice(&72u32.to_le_bytes());
    assert_eq!(
        expect_err(&b),
        FrameError::Misaligned {
            what: "frame_len",
            value: 72
        }
    );

    let mut b = good.clone();
    b[8..12].copy_from_slice(&33u32.to_le_bytes()); // align16(32+33) = 80 != 64
    assert!(matches!(
        expect_err(&b),
        FrameError::BadLength {
            payload_len: 33,
            ..
        }
    ));

    let mut b = good.clone();
    b[12..16].copy_from_slice(&40u32.to_le_bytes()); // meta_len > payload_len
    assert!(matches!(
        expect_err(&b),
        FrameError::BadLength { meta_len: 40, .. }
    ));

    let mut b = good.clone();
    b[12..16].copy_from_slice(&20u32.to_le_bytes()); // body would start at 32 = payload_len: ok
    assert!(FrameDecoder::new(MAX).feed(&b).is_ok());
    b[8..12].copy_from_slice(&25u32.to_le_bytes()); // payload 25, meta 20 → body at 32 > 25
    b[4..8].copy_from_slice(&64u32.to_le_bytes());
    assert!(matches!(expect_err(&b), FrameError::BadLength { .. }));

    let mut b = good.clone();
    b[16] = 0x80;
    assert_eq!(expect_err(&b), FrameError::UnknownFlags { found: 0x80 });

    for offset in [17usize, 22, 23] {
        let mut b = good.clone();
        b[offset] = 1;
        assert_eq!(
            expect_err(&b),
            FrameError::ReservedNonZero { offset, value: 1 }
        );
    }
}

#[test]
fn oversized_header_is_refused_before_the_body_is_buffered() {
    let mut b = valid_header();
    b[4..8].copy_from_slice(&(1u32 << 29).to_le_bytes());
    let mut stream = b[..HEADER_BYTES].to_vec();
    stream.extend(std::iter::repeat_n(0xAB, 100_000));
    let mut dec = FrameDecoder::new(MAX);
    assert!(matches!(
        dec.feed(&stream),
        Err(FrameError::Oversized { .. })
    ));
    assert!(dec.capacity_bytes() <= MAX as usize);
    assert_eq!(dec.buffered_bytes(), HEADER_BYTES);
}

#[test]
fn misaligned_slice_is_refused() {
    let good = valid_header();
    let mut v = rkyv::util::AlignedVec::<16>::new();
    v.push(0);
    v.extend_from_slice(&good);
    assert!(matches!(
        decode_frame(&v[1..], MAX),
        Err(FrameError::Misaligned {
            what: "frame address",
            ..
        })
    ));
    let ok = aligned_copy(&good);
    let (f, len) = decode_frame(ok.as_slice(), MAX).unwrap();
    assert_eq!(len, good.len());
    assert_eq!(f.header.head.correlation, 1);
}

#[test]
fn unfilled_filled_reads_in_place() {
    let mut out = OutBuf::new();
    for i in 0..50u64 {
        push_raw(
            &mut out,
            head(FrameKind::OneWay, 0, 1, i),
            &i.to_le_bytes(),
            None,
        );
    }
    let bytes = out.pending().to_vec();
    let mut dec = FrameDecoder::new(MAX);
    let mut src = &bytes[..];
    let mut seen = Vec::new();
    while !src.is_empty() {
        let dst = dec.unfilled();
        assert!(!dst.is_empty());
        let n = dst.len().min(src.len()).min(77); // odd read sizes
        dst[..n].copy_from_slice(&src[..n]);
        src = &src[n..];
        dec.filled(n).unwrap();
        while let Some(f) = dec.next_frame() {
            seen.push(u64::from_le_bytes(f.meta().try_into().unwrap()));
        }
        assert!(dec.capacity_bytes() <= MAX as usize);
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

#[test]
fn encoder_refuses_frames_over_the_bound_and_leaves_the_buffer_intact() {
    let mut out = OutBuf::new();
    push_raw(&mut out, head(FrameKind::Heartbeat, 0, 0, 1), b"", None);
    let before = out.pending().to_vec();
    let mut f = out.begin_frame(head(FrameKind::OneWay, 0, 0, 2)).unwrap();
    f.extend_from_slice(&[0u8; 100]);
    assert!(matches!(
        f.finish(64),
        Err(EncodeError::TooLarge { len: 144, max: 64 })
    ));
    assert_eq!(out.pending(), &before[..]);
    // Abandoned builder: the partial frame is removed too.
    {
        let mut f = out.begin_frame(head(FrameKind::OneWay, 0, 0, 3)).unwrap();
        f.extend_from_slice(b"partial");
    }
    assert_eq!(out.pending(), &before[..]);
    let bad = FrameHead {
        flags: 1,
        ..head(FrameKind::OneWay, 0, 0, 3)
    };
    assert!(matches!(
        out.begin_frame(bad),
        Err(EncodeError::UnknownFlags { flags: 1 })
    ));
}

#[test]
fn outbuf_partial_writes_keep_frames_aligned() {
    let mut out = OutBuf::new();
    let mut wire = Vec::new();
    for i in 0..40u64 {
        push_raw(
            &mut out,
            head(FrameKind::OneWay, 0, 0, i),
            &[i as u8; 9],
            Some(&[1, 2, 3]),
        );
        // "Write" an odd number of bytes each time, as a short write would.
        let n = out.len().min(37);
        wire.extend_from_slice(&out.pending()[..n]);
        out.consume(n);
    }
    wire.extend_from_slice(out.pending());
    out.consume(out.len());
    assert!(out.is_empty());
    let got = decode_all(&mut FrameDecoder::new(MAX), &wire, &[]).unwrap();
    assert_eq!(got.len(), 40);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.0.head.correlation, i as u64);
        assert_eq!(g.1, vec![i as u8; 9]);
        assert_eq!(g.2, vec![1, 2, 3]);
    }
}

fn any_kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(FrameKind::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_round_trip(
        frames in prop::collection::vec(
            (any_kind(), any::<u16>(), any::<u16>(), any::<u64>(),
             prop::collection::vec(any::<u8>(), 0..200),
             prop::option::of(prop::collection::vec(any::<u8>(), 0..300))),
            1..8),
        chunks in prop::collection::vec(1usize..97, 0..40),
    ) {
        let mut out = OutBuf::new();
        for (k, s, t, c, meta, body) in &frames {
            push_raw(&mut out, head(*k, *s, *t, *c), meta, body.as_deref());
        }
        let mut dec = FrameDecoder::new(MAX);
        let got = decode_all(&mut dec, out.pending(), &chunks).unwrap();
        prop_assert_eq!(got.len(), frames.len());
        for ((h, meta, body), (k, s, t, c, m, b)) in got.iter().zip(&frames) {
            prop_assert_eq!(h.head, head(*k, *s, *t, *c));
            prop_assert_eq!(h.frame_len as usize % 16, 0);
            prop_assert_eq!(meta, m);
            prop_assert_eq!(body, &b.clone().unwrap_or_default());
        }
        prop_assert_eq!(dec.finish(), Ok(()));
    }

    /// Arbitrary bytes in arbitrary chunks: never panics, never holds or allocates more than
    /// the frame bound, and once failed stays failed.
    #[test]
    fn prop_arbitrary_bytes_never_panic_and_stay_bounded(
        data in prop::collection::vec(any::<u8>(), 0..20_000),
        prefix_valid in any::<bool>(),
        chunks in prop::collection::vec(1usize..5000, 1..20),
        max in 32u32..8192,
    ) {
        let mut stream = Vec::new();
        if prefix_valid {
            // Start with a plausible header so the body path is exercised too.
            let mut out = OutBuf::new();
            push_raw(&mut out, head(FrameKind::OneWay, 0, 0, 0), &[0u8; 16], None);
            stream.extend_from_slice(&out.pending()[..HEADER_BYTES]);
        }
        stream.extend_from_slice(&data);
        let mut dec = FrameDecoder::new(max);
        let bound = dec.frame_bytes_max() as usize;
        prop_assert!(bound <= max as usize);
        let mut rest = &stream[..];
        let mut ci = 0;
        let mut failed = None;
        while !rest.is_empty() && failed.is_none() {
            let c = chunks[ci % chunks.len()].min(rest.len());
            ci += 1;
            let mut piece = &rest[..c];
            rest = &rest[c..];
            while !piece.is_empty() {
                match dec.feed(piece) {
                    Ok(n) => {
                        piece = &piece[n..];
                        let mut drained = 0;
                        while let Some(f) = dec.next_frame() {
                            prop_assert!(f.raw.len() <= bound);
                            drained += 1;
                        }
                        prop_assert!(n > 0 || drained > 0, "no progress");
                    }
                    Err(e) => { failed = Some(e); break; }
                }
                prop_assert!(dec.buffered_bytes() <= bound);
                prop_assert!(dec.capacity_bytes() <= bound);
            }
        }
        if let Some(e) = failed {
            prop_assert_eq!(dec.feed(&[0u8; 64]), Err(e));
        }
    }

    /// The same through the read-in-place path.
    #[test]
    fn prop_arbitrary_bytes_in_place_bounded(
        data in prop::collection::vec(any::<u8>(), 0..20_000),
        max in 32u32..70_000,
    ) {
        let mut dec = FrameDecoder::new(max);
        let bound = dec.frame_bytes_max() as usize;
        let mut rest = &data[..];
        while !rest.is_empty() {
            let dst = dec.unfilled();
            if dst.is_empty() { break; } // failed
            let n = dst.len().min(rest.len());
            dst[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            if dec.filled(n).is_err() { break; }
            while dec.next_frame().is_some() {}
            prop_assert!(dec.capacity_bytes() <= bound);
        }
        prop_assert!(dec.capacity_bytes() <= bound);
    }

    /// As the transport uses it: the handshake bound first, raised to the connection's bound
    /// part way (after Welcome). Never panics; never holds or allocates more than the bound in
    /// force; frames accepted under the first bound stay readable.
    #[test]
    fn prop_raised_bound_stays_bounded(
        data in prop::collection::vec(any::<u8>(), 0..20_000),
        split in 0usize..20_000,
        first in 32u32..4096,
        second in 32u32..70_000,
    ) {
        let mut dec = FrameDecoder::new(first);
        let split = split.min(data.len());
        let mut bound = dec.frame_bytes_max() as usize;
        for (i, part) in [&data[..split], &data[split..]].into_iter().enumerate() {
            if i == 1 {
                dec.raise_frame_bytes_max(second);
                prop_assert!(dec.frame_bytes_max() as usize >= bound);
                bound = dec.frame_bytes_max() as usize;
            }
            let mut piece = part;
            while !piece.is_empty() {
                match dec.feed(piece) {
                    Ok(n) => {
                        piece = &piece[n..];
                        let mut drained = 0;
                        while let Some(f) = dec.next_frame() {
                            prop_assert!(f.raw.len() <= bound);
                            drained += 1;
                        }
                        prop_assert!(n > 0 || drained > 0, "no progress");
                    }
                    Err(_) => break,
                }
                prop_assert!(dec.capacity_bytes() <= bound);
            }
            if dec.error().is_some() {
                break;
            }
        }
        prop_assert!(dec.capacity_bytes() <= bound);
    }
}
