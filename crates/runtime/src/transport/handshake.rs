//! The handshake rules: what each side checks in the other's `Hello`.
//!
//! The checks are pure functions of the `Hello` and the local configuration, so that the
//! tests and the fuzz target can drive them without a socket.

use super::frame::{
    decode_frame, Frame, FrameError, Hello, RejectCode, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION,
};
use std::collections::BTreeMap;
use synod_core::NodeId;
use thiserror::Error;

/// Why a handshake failed. Each variant maps to the [`RejectCode`] sent to the peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The first frame could not be decoded.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The first frame decoded but was not a `Hello`.
    #[error("expected a Hello frame first, got {0}")]
    UnexpectedFrame(&'static str),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: this node speaks v{ours}, the peer speaks v{theirs}")]
    Version {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer belongs to another cluster.
    #[error("cluster id mismatch: this node is in cluster {ours:?}, the peer is in {theirs:?}")]
    Cluster {
        /// Our cluster id.
        ours: String,
        /// The peer's cluster id.
        theirs: String,
    },
    /// The peer meant to reach another node.
    #[error("the peer addressed node {addressed}, but this is node {me}")]
    WrongNode {
        /// The node the peer's `Hello` named.
        addressed: NodeId,
        /// This node.
        me: NodeId,
    },
    /// We dialed one node and another answered.
    #[error("dialed node {expected}, but the peer says it is node {actual}")]
    UnexpectedPeer {
        /// The node we dialed.
        expected: NodeId,
        /// The node that answered.
        actual: NodeId,
    },
    /// The peer is not in our configuration.
    #[error("node {0} is not a configured peer of this node")]
    UnknownPeer(NodeId),
    /// The peer dialed although the connection rule says we dial it.
    #[error("node {from} dialed node {to}, but the lower id dials: {to} dials {from}")]
    WrongDirection {
        /// The dialer.
        from: NodeId,
        /// The node it dialed (us).
        to: NodeId,
    },
    /// The peer's certificate does not name the node id it claims.
    #[error(
        "the peer's TLS certificate does not name node {claimed} of cluster {cluster:?}: {detail}"
    )]
    Identity {
        /// The node id the peer claimed.
        claimed: NodeId,
        /// Our cluster id.
        cluster: String,
        /// What the certificate check said.
        detail: String,
    },
    /// The peer sent a `Reject` frame.
    #[error("the peer rejected the handshake ({code}): {message}")]
    Rejected {
        /// The peer's reason code.
        code: RejectCode,
        /// The peer's explanation.
        message: String,
    },
}

impl HandshakeError {
    /// The code to put in the `Reject` frame sent for this error.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            HandshakeError::Malformed(_) | HandshakeError::UnexpectedFrame(_) => {
                RejectCode::BadHandshake
            }
            HandshakeError::Version { .. } => RejectCode::Version,
            HandshakeError::Cluster { .. } => RejectCode::Cluster,
            HandshakeError::WrongNode { .. } | HandshakeError::UnexpectedPeer { .. } => {
                RejectCode::WrongNode
            }
            HandshakeError::UnknownPeer(_) => RejectCode::UnknownNode,
            HandshakeError::WrongDirection { .. } => RejectCode::WrongDirection,
            HandshakeError::Identity { .. } => RejectCode::Identity,
            HandshakeError::Rejected { code, .. } => *code,
        }
    }
}

impl From<FrameError> for HandshakeError {
    fn from(e: FrameError) -> Self {
        HandshakeError::Malformed(e.to_string())
    }
}

/// Turn the first frame of a connection into the peer's `Hello`.
pub(crate) fn hello_from_frame(frame: Frame) -> Result<Hello, HandshakeError> {
    match frame {
        Frame::Hello(hello) => Ok(hello),
        Frame::Reject { code, message } => Err(HandshakeError::Rejected { code, message }),
        other => Err(HandshakeError::UnexpectedFrame(other.kind_name())),
    }
}

/// Decode the handshake at the start of `buf`, with the handshake's small frame bound.
///
/// `Ok(None)` means more bytes are needed; `Ok(Some((hello, n)))` means the `Hello` took
/// the first `n` bytes. A `Reject` decodes as [`HandshakeError::Rejected`]. The transport
/// runs the same rules on its sockets; this pure form is for the fuzz target and tests.
pub fn decode_handshake(buf: &[u8]) -> Result<Option<(Hello, usize)>, HandshakeError> {
    match decode_frame(buf, HANDSHAKE_MAX_FRAME)? {
        None => Ok(None),
        Some((frame, used)) => Ok(Some((hello_from_frame(frame)?, used))),
    }
}

fn check_common(hello: &Hello, cluster_id: &str, me: NodeId) -> Result<(), HandshakeError> {
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        });
    }
    if hello.cluster_id != cluster_id {
        return Err(HandshakeError::Cluster {
            ours: cluster_id.to_owned(),
            theirs: hello.cluster_id.clone(),
        });
    }
    if hello.to != me {
        return Err(HandshakeError::WrongNode {
            addressed: hello.to,
            me,
        });
    }
    Ok(())
}

/// What the accepting side checks: same version and cluster, addressed to us, from a
/// configured peer whose id is lower than ours (the lower id dials).
pub(crate) fn check_as_acceptor<V>(
    hello: &Hello,
    cluster_id: &str,
    me: NodeId,
    peers: &BTreeMap<NodeId, V>,
) -> Result<(), HandshakeError> {
    check_common(hello, cluster_id, me)?;
    if hello.from == me || !peers.contains_key(&hello.from) {
        return Err(HandshakeError::UnknownPeer(hello.from));
    }
    if !dials(hello.from, me) {
        return Err(HandshakeError::WrongDirection {
            from: hello.from,
            to: me,
        });
    }
    Ok(())
}

/// What the dialing side checks: same version and cluster, addressed to us, and from the
/// node we dialed.
pub(crate) fn check_as_dialer(
    hello: &Hello,
    cluster_id: &str,
    me: NodeId,
    dialed: NodeId,
) -> Result<(), HandshakeError> {
    check_common(hello, cluster_id, me)?;
    if hello.from != dialed {
        return Err(HandshakeError::UnexpectedPeer {
            expected: dialed,
            actual: hello.from,
        });
    }
    Ok(())
}

/// The connection rule: of each pair of nodes, the one with the lower id dials.
pub(crate) fn dials(me: NodeId, peer: NodeId) -> bool {
    me < peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{encode_frame, DEFAULT_MAX_FRAME};
    use bytes::BytesMut;

    fn hello(from: u32, to: u32) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            cluster_id: "alpha".into(),
            from: NodeId(from),
            to: NodeId(to),
        }
    }

    fn peers(ids: &[u32]) -> BTreeMap<NodeId, ()> {
        ids.iter().map(|&id| (NodeId(id), ())).collect()
    }

    #[test]
    fn acceptor_takes_a_lower_configured_peer_addressing_it() {
        assert_eq!(
            check_as_acceptor(&hello(1, 2), "alpha", NodeId(2), &peers(&[1, 3])),
            Ok(())
        );
    }

    #[test]
    fn acceptor_refuses_each_mismatch_with_its_own_code() {
        let me = NodeId(2);
        let known = peers(&[1, 3]);
        let mut wrong_version = hello(1, 2);
        wrong_version.version = PROTOCOL_VERSION + 1;
        let mut wrong_cluster = hello(1, 2);
        wrong_cluster.cluster_id = "beta".into();
        let cases = [
            (wrong_version, RejectCode::Version, "v1, the peer speaks v2"),
            (
                wrong_cluster,
                RejectCode::Cluster,
                "\"alpha\", the peer is in \"beta\"",
            ),
            (hello(1, 5), RejectCode::WrongNode, "addressed node n5"),
            (
                hello(4, 2),
                RejectCode::UnknownNode,
                "n4 is not a configured peer",
            ),
            (
                hello(2, 2),
                RejectCode::UnknownNode,
                "n2 is not a configured peer",
            ),
            (
                hello(3, 2),
                RejectCode::WrongDirection,
                "the lower id dials",
            ),
        ];
        for (hello, code, text) in cases {
            let err = check_as_acceptor(&hello, "alpha", me, &known).expect_err("mismatch");
            assert_eq!(err.reject_code(), code, "{err}");
            assert!(err.to_string().contains(text), "{err}");
        }
    }

    #[test]
    fn dialer_refuses_an_answer_from_another_node() {
        assert_eq!(
            check_as_dialer(&hello(2, 1), "alpha", NodeId(1), NodeId(2)),
            Ok(())
        );
        let err = check_as_dialer(&hello(3, 1), "alpha", NodeId(1), NodeId(2)).unwrap_err();
        assert_eq!(err.reject_code(), RejectCode::WrongNode);
        let err = check_as_dialer(&hello(2, 9), "alpha", NodeId(1), NodeId(2)).unwrap_err();
        assert!(matches!(err, HandshakeError::WrongNode { .. }));
        let err = check_as_dialer(&hello(2, 1), "beta", NodeId(1), NodeId(2)).unwrap_err();
        assert!(matches!(err, HandshakeError::Cluster { .. }));
    }

    #[test]
    fn handshake_decoder_reports_rejects_and_stray_frames() {
        let mut buf = BytesMut::new();
        let reject = Frame::Reject {
            code: RejectCode::Cluster,
            message: "go away".into(),
        };
        encode_frame(&reject, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(
            decode_handshake(&buf),
            Err(HandshakeError::Rejected {
                code: RejectCode::Cluster,
                message: "go away".into()
            })
        );
        buf.clear();
        encode_frame(&Frame::Keepalive, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(
            decode_handshake(&buf),
            Err(HandshakeError::UnexpectedFrame("Keepalive"))
        );
        buf.clear();
        encode_frame(&Frame::Hello(hello(1, 2)), DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(decode_handshake(&buf), Ok(Some((hello(1, 2), buf.len()))));
        assert_eq!(decode_handshake(&buf[..buf.len() - 1]), Ok(None));
        // An HTTP request is refused on its first four bytes, with no allocation.
        let err = decode_handshake(b"GET / HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn lower_id_dials() {
        assert!(dials(NodeId(1), NodeId(2)));
        assert!(!dials(NodeId(2), NodeId(1)));
    }
}
