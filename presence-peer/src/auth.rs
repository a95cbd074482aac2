//! Nodes prove to each other that they know the cluster secret, bound to the TLS session of
//! the connection they speak on, so a proof seen on one connection is worth nothing on
//! another. Peer links are never open to clients: a connection without a valid proof in its
//! first frame is closed.
//!
//! Both ends export the same keying material from their TLS session ([`EXPORTER_LABEL`],
//! RFC 5705/8446 exporters) and send `HMAC-SHA256(secret, "presence-peer/1" ‖ 0 ‖ node id ‖
//! 0 ‖ exported)` in their `Hello`.

use ring::hmac;

/// The label of the TLS exporter both ends use.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-presence-peer/1";

/// The shortest cluster secret accepted.
pub const MIN_SECRET: usize = 16;

fn message(node: &str, exported: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + node.len() + 1 + 32);
    m.extend_from_slice(b"presence-peer/1\0");
    m.extend_from_slice(node.as_bytes());
    m.push(0);
    m.extend_from_slice(exported);
    m
}

/// The proof `node` sends on a connection whose TLS exporter gave `exported`.
pub fn proof(secret: &[u8], node: &str, exported: &[u8; 32]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &message(node, exported));
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `proof` is `node`'s on this connection (compared in constant time).
pub fn verify(secret: &[u8], node: &str, exported: &[u8; 32], proof: &[u8; 32]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &message(node, exported), proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a cluster secret of some length";

    #[test]
    fn a_proof_holds_only_for_its_node_connection_and_secret() {
        let conn = [7u8; 32];
        let p = proof(SECRET, "n1", &conn);
        assert!(verify(SECRET, "n1", &conn, &p));
        assert!(!verify(SECRET, "n2", &conn, &p), "another node's name");
        assert!(
            !verify(SECRET, "n1", &[8u8; 32], &p),
            "replayed on another connection"
        );
        assert!(!verify(b"another secret, just as long", "n1", &conn, &p));
    }

    #[test]
    fn names_cannot_be_shifted_into_the_exported_bytes() {
        let conn = [0u8; 32];
        assert_ne!(proof(SECRET, "n", &conn), proof(SECRET, "n\0", &conn));
    }
}
