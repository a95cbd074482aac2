//! Frames on the wire: the size limit, the ALPN names, and QUIC's framing (a 4-byte
//! big-endian length, then the JSON bytes, on one bidirectional stream).

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::LengthDelimitedCodec;

/// Frames over this many bytes are refused (either direction).
pub const MAX_FRAME: usize = 64 * 1024;

/// ALPN of client connections over QUIC.
pub const ALPN: &[u8] = b"presence/1";

/// A 4-byte big-endian length, then the bytes, as a tokio-util codec that refuses frames over
/// `max` (a longer length prefix is an error before anything is buffered). The framing of
/// QUIC clients ([`quic_codec`]) and of the nodes' peer links, each with its own limit.
pub fn length_prefixed(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max)
        .new_codec()
}

/// The 4-byte prefix of a frame of `len` bytes (`None` over `max`).
pub fn length_prefix(len: usize, max: usize) -> Option<[u8; 4]> {
    (len <= max)
        .then(|| u32::try_from(len).ok())
        .flatten()
        .map(u32::to_be_bytes)
}

/// The QUIC framing as a tokio-util codec: decodes frames of at most [`MAX_FRAME`] bytes and
/// encodes with the prefix.
pub fn quic_codec() -> LengthDelimitedCodec {
    length_prefixed(MAX_FRAME)
}

/// The 4-byte prefix of a frame of `len` bytes (`None` over [`MAX_FRAME`]).
pub fn quic_prefix(len: usize) -> Option<[u8; 4]> {
    length_prefix(len, MAX_FRAME)
}

/// One frame with its prefix, in one buffer (`None` over [`MAX_FRAME`]).
pub fn quic_frame(payload: &[u8]) -> Option<Bytes> {
    let prefix = quic_prefix(payload.len())?;
    let mut b = BytesMut::with_capacity(4 + payload.len());
    b.put_slice(&prefix);
    b.put_slice(payload);
    Some(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn frames_round_trip_through_the_codec_and_oversize_is_refused() {
        let mut codec = quic_codec();
        let mut buf = BytesMut::new();
        for p in [&b""[..], b"{}", &[b'x'; MAX_FRAME]] {
            buf.extend_from_slice(&quic_frame(p).expect("fits"));
        }
        assert_eq!(
            codec.decode(&mut buf).ok().flatten().as_deref(),
            Some(&b""[..])
        );
        assert_eq!(
            codec.decode(&mut buf).ok().flatten().as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(
            codec.decode(&mut buf).ok().flatten().map(|b| b.len()),
            Some(MAX_FRAME)
        );
        assert!(quic_frame(&[0; MAX_FRAME + 1]).is_none());
        let mut over = BytesMut::from(&((MAX_FRAME + 1) as u32).to_be_bytes()[..]);
        assert!(codec.decode(&mut over).is_err());
    }
}
