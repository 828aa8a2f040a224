//! Streaming frame decoder over a 16-aligned receive buffer.

use rkyv::util::AlignedVec;

use crate::frame::{
    align16, parse_header, FrameError, FrameHeader, FRAME_ALIGN, FRAME_BYTES_MAX_LIMIT,
    HEADER_BYTES,
};

/// How many bytes [`FrameDecoder::unfilled`] offers at least (bounded by the frame bound), so
/// one `read` can take many small frames.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One complete frame, borrowed from the decoder's receive buffer.
///
/// Guarantee: `payload`, [`meta`](Frame::meta) and [`body`](Frame::body) start at 16-aligned
/// addresses, so an rkyv archive in them can be validated and read in place.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The validated header.
    pub header: FrameHeader,
    /// The payload (`header.payload_len` bytes, padding excluded).
    pub payload: &'a [u8],
    /// The whole frame as received (header, payload, padding), e.g. to forward it verbatim to
    /// another shard.
    pub raw: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The meta section: the first `meta_len` payload bytes.
    pub fn meta(&self) -> &'a [u8] {
        &self.payload[..self.header.meta_len as usize]
    }

    /// The body: the payload after the meta section and its padding to 16 (may be empty;
    /// even then the slice's address is 16-aligned).
    pub fn body(&self) -> &'a [u8] {
        // frame_len = align16(32 + payload_len) >= 32 + align16(meta_len) since
        // meta_len <= payload_len, so `from` is within `raw` (validated header).
        let from = HEADER_BYTES + align16(self.header.meta_len as usize);
        let to = (HEADER_BYTES + self.payload.len()).max(from);
        &self.raw[from..to]
    }
}

/// Decodes one frame from the start of `bytes` (which must be 16-aligned in memory).
/// Returns the frame and its length. For a contiguous slice (tests, forwarded frames); the
/// network path uses [`FrameDecoder`].
pub fn decode_frame(bytes: &[u8], frame_bytes_max: u32) -> Result<(Frame<'_>, usize), FrameError> {
    if bytes.as_ptr() as usize & (FRAME_ALIGN - 1) != 0 {
        return Err(FrameError::Misaligned {
            what: "frame address",
            value: bytes.as_ptr() as usize as u64,
        });
    }
    let Some(h) = bytes.first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Truncated {
            have: bytes.len(),
            need: HEADER_BYTES,
        });
    };
    let header = parse_header(h, frame_bytes_max.min(FRAME_BYTES_MAX_LIMIT))?;
    let len = header.frame_len as usize;
    if bytes.len() < len {
        return Err(FrameError::Truncated {
            have: bytes.len(),
            need: len,
        });
    }
    let frame = Frame {
        header,
        payload: &bytes[HEADER_BYTES..HEADER_BYTES + header.payload_len as usize],
        raw: &bytes[..len],
    };
    Ok((frame, len))
}

/// A streaming decoder for one connection's receive side.
///
/// Bytes go in through [`feed`](Self::feed) (copying) or [`unfilled`](Self::unfilled) +
/// [`filled`](Self::filled) (read straight into the buffer); complete frames come out of
/// [`next_frame`](Self::next_frame) as borrowed views.
///
/// Guarantees:
/// - The buffer never holds more than `frame_bytes_max` bytes and never allocates more than
///   that (rounded up to 16): a header is validated as soon as its 32 bytes are in, and
///   through `feed` no byte of a body is taken before its header has been validated.
/// - Frames come out in stream order; every one was validated by the header rules of
///   `docs/PROTOCOL.md`. Payload contents are *not* validated here (see
///   [`decode_message`](crate::decode_message)).
/// - After the first error the decoder stays failed and returns the same error: close the
///   connection.
/// - Never panics on any input.
pub struct FrameDecoder {
    /// Initialized storage; its length is the physical size (≤ `frame_bytes_max`).
    buf: AlignedVec<FRAME_ALIGN>,
    /// First unconsumed byte; always a frame start, hence 16-aligned.
    start: usize,
    /// End of the complete, validated frames that start at `start`.
    ready: usize,
    /// End of received bytes.
    end: usize,
    /// Header of the incomplete frame at `ready`, once its 32 bytes are in.
    partial: Option<FrameHeader>,
    frame_bytes_max: u32,
    failed: Option<FrameError>,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered_bytes", &self.buffered_bytes())
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("failed", &self.failed)
            .finish()
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `frame_bytes_max` (header and padding
    /// included). The bound is rounded down to a multiple of 16 and clamped to
    /// [`HEADER_BYTES`]..=[`FRAME_BYTES_MAX_LIMIT`].
    pub fn new(frame_bytes_max: u32) -> FrameDecoder {
        let max = frame_bytes_max.clamp(HEADER_BYTES as u32, FRAME_BYTES_MAX_LIMIT);
        FrameDecoder {
            buf: AlignedVec::new(),
            start: 0,
            ready: 0,
            end: 0,
            partial: None,
            frame_bytes_max: max - max % FRAME_ALIGN as u32,
            failed: None,
        }
    }

    /// The effective frame bound.
    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Bytes allocated for the receive buffer (never above `frame_bytes_max`).
    pub fn capacity_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// The error the decoder failed with, if any.
    pub fn error(&self) -> Option<&FrameError> {
        self.failed.as_ref()
    }

    fn room(&self) -> usize {
        self.frame_bytes_max as usize - (self.end - self.start)
    }

    /// Raises the frame bound to `frame_bytes_max` (e.g. from the handshake bound to the
    /// connection's bound once the peer is authenticated), keeping what is buffered. A lower
    /// value leaves the bound as it is: frames already accepted stay valid.
    pub fn raise_frame_bytes_max(&mut self, frame_bytes_max: u32) {
        let max = frame_bytes_max.clamp(HEADER_BYTES as u32, FRAME_BYTES_MAX_LIMIT);
        let max = max - max % FRAME_ALIGN as u32;
        if max > self.frame_bytes_max {
            self.frame_bytes_max = max;
        }
    }

    /// Bytes needed to complete the header or frame at `ready` (always > 0).
    fn want(&self) -> usize {
        let have = self.end - self.ready;
        match &self.partial {
            None => HEADER_BYTES - have,
            Some(h) => h.frame_len as usize - have,
        }
    }

    /// Makes `n` bytes of space after `end`; `n <= self.room()`.
    fn reserve(&mut self, n: usize) {
        debug_assert!(n <= self.room());
        if self.start == self.end {
            self.start = 0;
            self.ready = 0;
            self.end = 0;
        }
        if self.end + n <= self.buf.len() {
            return;
        }
        if self.start > 0 {
            // `start` is a frame start (a multiple of 16), so moving to 0 keeps alignment.
            self.buf.copy_within(self.start..self.end, 0);
            self.ready -= self.start;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end + n > self.buf.len() {
            let max = self.frame_bytes_max as usize;
            let target = (self.end + n).max(self.buf.len() * 2).min(max);
            debug_assert!(target >= self.end + n);
            self.buf.reserve_exact(target - self.buf.len());
            self.buf.resize(target, 0);
        }
    }

    /// Validates headers and advances `ready` over complete frames.
    fn scan(&mut self) -> Result<(), FrameError> {
        loop {
            let have = self.end - self.ready;
            match self.partial {
                None => {
                    let Some(h) = self.buf[self.ready..self.end].first_chunk::<HEADER_BYTES>()
                    else {
                        return Ok(());
                    };
                    match parse_header(h, self.frame_bytes_max) {
                        Ok(header) => self.partial = Some(header),
                        Err(e) => {
                            self.failed = Some(e.clone());
                            return Err(e);
                        }
                    }
                }
                Some(h) => {
                    if have < h.frame_len as usize {
                        return Ok(());
                    }
                    self.ready += h.frame_len as usize;
                    self.partial = None;
                }
            }
        }
    }

    fn check(&self) -> Result<(), FrameError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Copies bytes from `input` into the buffer and returns how many it took. It takes fewer
    /// than offered when the buffer is full: drain [`next_frame`](Self::next_frame) and feed
    /// the rest. Errors are final (close the connection).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        self.check()?;
        let mut taken = 0;
        while taken < input.len() {
            let n = self.want().min(self.room()).min(input.len() - taken);
            if n == 0 {
                break;
            }
            self.reserve(n);
            self.buf[self.end..self.end + n].copy_from_slice(&input[taken..taken + n]);
            self.end += n;
            taken += n;
            self.scan()?;
        }
        Ok(taken)
    }

    /// Space to `read` into directly: at least the rest of the current header/frame and up to
    /// [`READ_CHUNK_BYTES`], never past the frame bound. Empty only if the buffer is full of
    /// complete frames: drain [`next_frame`](Self::next_frame) first. Report what was read
    /// with [`filled`](Self::filled).
    pub fn unfilled(&mut self) -> &mut [u8] {
        if self.failed.is_some() {
            return &mut [];
        }
        let n = self.want().max(READ_CHUNK_BYTES).min(self.room());
        self.reserve(n);
        &mut self.buf[self.end..self.end + n]
    }

    /// Records that `n` bytes were written at the start of [`unfilled`](Self::unfilled) and
    /// validates what they complete.
    ///
    /// # Panics
    /// If `n` exceeds the length of the last `unfilled` slice (a caller bug).
    pub fn filled(&mut self, n: usize) -> Result<(), FrameError> {
        self.check()?;
        assert!(
            self.end + n <= self.buf.len(),
            "filled({n}) beyond unfilled()"
        );
        self.end += n;
        self.scan()
    }

    /// The next complete frame, if any. The view borrows the decoder until dropped.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        if self.start == self.ready {
            return None;
        }
        let bytes = &self.buf[self.start..self.ready];
        let (frame, len) = decode_frame(bytes, self.frame_bytes_max)
            .expect("frames before `ready` were validated when they were buffered");
        self.start += len;
        Some(frame)
    }

    /// Call when the peer closed its side: `Ok` if the stream ended on a frame boundary,
    /// [`FrameError::Truncated`] if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        self.check()?;
        let have = self.end - self.ready;
        if have == 0 {
            return Ok(());
        }
        let need = self.partial.map_or(HEADER_BYTES, |h| h.frame_len as usize);
        Err(FrameError::Truncated { have, need })
    }
}
