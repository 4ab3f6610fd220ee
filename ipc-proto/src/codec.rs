//! Message encoding: bincode 1.3.3 (upstream's final, maintained line) behind
//! one small module so the rest of the crate never names bincode.
//!
//! Decoding is bounded by [`MAX_MESSAGE`] (bincode refuses to allocate past
//! the limit, so a peer cannot make us allocate by lying in a length field)
//! and rejects trailing bytes.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest encoded message, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Errors of encoding or decoding a message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message could not be encoded (or exceeds [`MAX_MESSAGE`]).
    #[error("cannot encode message")]
    Encode(#[source] bincode::Error),
    /// The bytes are not a valid message of the expected type.
    #[error("cannot decode message")]
    Decode(#[source] bincode::Error),
}

/// Result of codec operations.
pub type Result<T> = std::result::Result<T, CodecError>;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_MESSAGE as u64)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// Encodes `msg`; fails if it would exceed [`MAX_MESSAGE`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    options().serialize(msg).map_err(CodecError::Encode)
}

/// Decodes exactly one `T` from `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    options().deserialize(bytes).map_err(CodecError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Sample {
        A(u32),
        B { name: String, data: Vec<u8> },
    }

    #[test]
    fn round_trip_preserves_message() {
        let msg = Sample::B {
            name: "x".into(),
            data: vec![1, 2, 3],
        };
        let back: Sample = decode(&encode(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Sample::A(7)).unwrap();
        bytes.push(0);
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn truncated_message_is_rejected() {
        let bytes = encode(&Sample::B {
            name: "abc".into(),
            data: vec![9; 10],
        })
        .unwrap();
        assert!(decode::<Sample>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // Variant B, name length claiming 2^62 bytes.
        let bytes = [1u8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn unknown_variant_is_rejected() {
        assert!(decode::<Sample>(&[9u8]).is_err());
    }
}
