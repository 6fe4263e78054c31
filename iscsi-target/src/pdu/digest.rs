//! CRC32C header and data digests (RFC 7143 §13.1, Appendix B).
//!
//! The digest is CRC32C (Castagnoli) over the bytes it covers, sent
//! little-endian on the wire, as the RFC's worked examples show.

/// The CRC32C of `bytes`, as RFC 7143 §13.1 defines the digest.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues a CRC32C over more bytes (for a data segment and its padding).
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// The 4 wire bytes of a digest value.
pub fn to_wire(digest: u32) -> [u8; 4] {
    digest.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7143 Appendix B.4 test vectors for CRC32C.
    #[test]
    fn rfc_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113f_db5c);
    }

    #[test]
    fn append_matches_whole() {
        let data: Vec<u8> = (0..100u8).collect();
        assert_eq!(
            crc32c_append(crc32c(&data[..40]), &data[40..]),
            crc32c(&data)
        );
    }
}
