//! The gossip wire format: framing of every datagram, foca's codec, and our own small messages.
//!
//! Every datagram starts with a 3-byte frame header, checked before anything else is decoded:
//!
//! ```text
//! +-------+---------+------+------------------------------------------+
//! | MAGIC | VERSION | kind | body                                     |
//! | 0xC7  | 1       | u8   | kind 0: a foca packet (postcard)         |
//! |       |         |      | kind 1: a metadata push (one record)     |
//! |       |         |      | kind 2: a suspicion notice               |
//! |       |         |      | kind 3: a metadata request (reply-to)    |
//! +-------+---------+------+------------------------------------------+
//! ```
//!
//! A datagram over `max_packet_size`, with another magic or version, an unknown kind, or a body
//! that does not decode is dropped and reported as a [`DropReason`]; nothing here panics on
//! input. A new kind or an incompatible body change needs a new `VERSION`.
//!
//! Version [`SEALED_WIRE_VERSION`] (2) is the same frame encrypted and authenticated under the
//! cluster key ring (`crypto.rs`): the driver opens it back into a version-1 frame before the
//! membership core sees it, so everything below only ever handles plaintext frames.
//!
//! foca's own packets use [`foca::PostcardCodec`], wrapped by `GossipCodec` to enforce what
//! foca cannot know: node ids are never empty, except as the destination of an announce to a
//! seed whose id we do not know yet (the *seed placeholder*), which the receiver resolves to its
//! own id so that foca accepts it.
//!
//! Must not: hold state beyond the local node id, or be used by anything but the cluster module.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::{Deserialize, Serialize};

use super::identity::{MAX_NODE_ID_BYTES, NodeId, NodeIdentity};
use super::meta::{ClusterSettings, MetaRecord, MetaState, NodeMeta};

/// First byte of every ringcache gossip datagram.
pub const MAGIC: u8 = 0xC7;
/// Second byte: the version of this wire format.
pub const WIRE_VERSION: u8 = 1;
/// Second byte of a datagram sealed with the gossip key ring (see `crypto.rs`).
pub const SEALED_WIRE_VERSION: u8 = 2;
/// Bytes of the frame header in front of every body.
pub(crate) const FRAME_HEADER_LEN: usize = 3;

/// What a datagram carries (third byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A foca packet.
    Swim = 0,
    /// One node's own metadata record, sent straight to a member that just came up.
    MetaPush = 1,
    /// "You are suspected at this incarnation": lets a suspected member refute even when it
    /// missed every gossiped copy of the suspicion.
    SuspectNotice = 2,
    /// "Push me your metadata at this gossip address": asked of an alive member whose metadata
    /// has not arrived after a probe period.
    MetaRequest = 3,
    /// "I suspect this member too": sent by a node whose own probe of a member failed to every
    /// other live member, so their suspicion timers shrink (Lifeguard's confirmations; see
    /// `membership.rs`). Nodes from before it drop it as malformed.
    Confirm = 4,
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Larger than `max_packet_size`. Nothing was decoded.
    #[error("datagram larger than max_packet_size")]
    Oversized,
    /// Not ringcache gossip (another magic byte). Nothing was decoded.
    #[error("datagram is not ringcache gossip")]
    WrongMagic,
    /// Gossip of another wire version. Nothing was decoded.
    #[error("unsupported gossip wire version {0}")]
    UnsupportedVersion(u8),
    /// Truncated, unknown kind, or a body that does not decode or breaks a rule. A foca packet
    /// may have been applied up to the faulty part.
    #[error("malformed gossip datagram")]
    Malformed,
    /// Sealed under a key id that is not in this node's key ring.
    #[error("sealed under a key not in the gossip key ring")]
    UnknownKey,
    /// Sealed under a known key id, but the tag does not verify: tampered, or sealed with
    /// another key that has the same id.
    #[error("authentication failed")]
    Unauthenticated,
    /// A sealed datagram already received, or older than the replay window of its sender.
    #[error("replayed or too old")]
    Replayed,
    /// A plaintext datagram at a node with a key ring.
    #[error("plaintext gossip at a node that requires encryption")]
    Plaintext,
    /// A sealed datagram at a node without a key ring.
    #[error("encrypted gossip at a node without a key ring")]
    Encrypted,
    /// Sent by, or claiming, a node id that is alive at another gossip address (see the
    /// impostor rule in `membership.rs`).
    #[error("node id claimed from a second gossip address")]
    Impostor,
}

impl DropReason {
    /// Every `reason` label value, in the order of [`DropReason::label`].
    pub const LABELS: [&'static str; 8] = [
        "malformed",
        "oversized",
        "unknown_key",
        "unauthenticated",
        "replayed",
        "plaintext",
        "encrypted",
        "impostor",
    ];

    /// The `reason` label of `ringcache_gossip_dropped_packets_total` (wrong magic and other
    /// versions count as malformed).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::WrongMagic | DropReason::UnsupportedVersion(_) | DropReason::Malformed => {
                "malformed"
            }
            DropReason::Oversized => "oversized",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replayed => "replayed",
            DropReason::Plaintext => "plaintext",
            DropReason::Encrypted => "encrypted",
            DropReason::Impostor => "impostor",
        }
    }
}

/// The frame header for `kind`.
pub(crate) fn frame_header(kind: FrameKind) -> [u8; FRAME_HEADER_LEN] {
    [MAGIC, WIRE_VERSION, kind as u8]
}

/// Checks the frame header and size; returns the kind and the body.
pub(crate) fn split_frame(
    datagram: &[u8],
    max_packet_size: usize,
) -> Result<(FrameKind, &[u8]), DropReason> {
    if datagram.len() > max_packet_size {
        return Err(DropReason::Oversized);
    }
    match datagram {
        [] => Err(DropReason::Malformed),
        [magic, ..] if *magic != MAGIC => Err(DropReason::WrongMagic),
        [_, version, ..] if *version != WIRE_VERSION => {
            Err(DropReason::UnsupportedVersion(*version))
        }
        [_, _, kind, body @ ..] => {
            let kind = match *kind {
                0 => FrameKind::Swim,
                1 => FrameKind::MetaPush,
                2 => FrameKind::SuspectNotice,
                3 => FrameKind::MetaRequest,
                4 => FrameKind::Confirm,
                _ => return Err(DropReason::Malformed),
            };
            Ok((kind, body))
        }
        _ => Err(DropReason::Malformed),
    }
}

/// A body that cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// postcard could not encode or decode it.
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
    /// An empty node id anywhere but as an announce destination.
    #[error("empty node id outside an announce destination")]
    EmptyNodeId,
    /// Bytes left after a complete record.
    #[error("trailing bytes after a record")]
    TrailingBytes,
    /// A metadata state this version does not know.
    #[error("unknown member state {0}")]
    UnknownState(u8),
    /// Metadata with weight 0.
    #[error("metadata weight is 0")]
    ZeroWeight,
    /// A zone that is not 1 to 64 bytes of `[A-Za-z0-9._-]`.
    #[error("invalid zone")]
    InvalidZone,
}

/// foca's postcard codec plus the node id rules (see the module docs).
#[derive(Debug)]
pub(crate) struct GossipCodec {
    local: NodeId,
}

impl GossipCodec {
    pub(crate) fn new(local: NodeId) -> Self {
        Self { local }
    }
}

fn require_id(identity: &NodeIdentity) -> Result<(), CodecError> {
    if identity.node_id().is_placeholder() {
        Err(CodecError::EmptyNodeId)
    } else {
        Ok(())
    }
}

impl Codec<NodeIdentity> for GossipCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        let mut header: Header<NodeIdentity> = PostcardCodec.decode_header(buf)?;
        require_id(&header.src)?;
        match &header.message {
            Message::PingReq { target: id, .. }
            | Message::IndirectPing { origin: id, .. }
            | Message::IndirectAck { target: id, .. }
            | Message::ForwardedAck { origin: id, .. } => require_id(id)?,
            Message::Ping(_)
            | Message::Ack(_)
            | Message::Announce
            | Message::Feed
            | Message::Gossip
            | Message::Broadcast
            | Message::TurnUndead => {}
        }
        if header.dst.node_id().is_placeholder() {
            if header.message != Message::Announce {
                return Err(CodecError::EmptyNodeId);
            }
            header.dst = header.dst.with_node_id(self.local.clone());
        }
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        let member: Member<NodeIdentity> = PostcardCodec.decode_member(buf)?;
        require_id(member.id())?;
        Ok(member)
    }
}

/// The wire form of a metadata record (a compatibility promise: append fields only with a new
/// wire version). A node's zone, when it has one, follows the record as a postcard string;
/// a record without a zone is exactly what builds before zones send, and those builds refuse
/// a zoned record (trailing bytes), so they never admit a zoned member.
#[derive(Serialize, Deserialize)]
struct WireMeta<S> {
    node_id: NodeId,
    incarnation: u64,
    meta_version: u64,
    grpc_addr: S,
    http_addr: S,
    cluster_addr: S,
    weight: u32,
    state: u8,
    resp_addr: S,
    replication_factor: u32,
    vnodes: u32,
    placement_version: u32,
}

fn state_to_wire(state: MetaState) -> u8 {
    match state {
        MetaState::Joining => 1,
        MetaState::Active => 2,
        MetaState::Leaving => 3,
        MetaState::Restarting => 4,
    }
}

fn state_from_wire(state: u8) -> Result<MetaState, CodecError> {
    match state {
        1 => Ok(MetaState::Joining),
        2 => Ok(MetaState::Active),
        3 => Ok(MetaState::Leaving),
        4 => Ok(MetaState::Restarting),
        other => Err(CodecError::UnknownState(other)),
    }
}

/// An upper bound of the encoded size of a record carrying `meta`, whatever the node id.
pub(crate) fn meta_record_len_bound(meta: &NodeMeta) -> usize {
    const VARINT_U64: usize = 10;
    const VARINT_U32: usize = 5;
    const VARINT_LEN: usize = 5;
    VARINT_LEN
        + MAX_NODE_ID_BYTES
        + 2 * VARINT_U64
        + VARINT_LEN
        + meta.grpc_addr.len()
        + VARINT_LEN
        + meta.http_addr.len()
        + VARINT_LEN
        + meta.cluster_addr.len()
        + VARINT_LEN
        + meta.resp_addr.len()
        + VARINT_U32
        + 1
        + 3 * VARINT_U32
        + meta.zone.as_ref().map_or(0, |zone| VARINT_LEN + zone.len())
}

/// Encodes a metadata record (the body of a broadcast or a push).
pub(crate) fn encode_meta_record(record: &MetaRecord) -> Result<Vec<u8>, CodecError> {
    let wire = WireMeta {
        node_id: record.node_id.clone(),
        incarnation: record.incarnation,
        meta_version: record.meta_version,
        grpc_addr: record.meta.grpc_addr.as_str(),
        http_addr: record.meta.http_addr.as_str(),
        cluster_addr: record.meta.cluster_addr.as_str(),
        resp_addr: record.meta.resp_addr.as_str(),
        weight: record.meta.weight,
        state: state_to_wire(record.meta.state),
        replication_factor: record.meta.settings.replication_factor,
        vnodes: record.meta.settings.vnodes,
        placement_version: record.meta.settings.placement_version,
    };
    let mut bytes = postcard::to_allocvec(&wire)?;
    if let Some(zone) = &record.meta.zone {
        bytes.extend(postcard::to_allocvec(zone.as_str())?);
    }
    Ok(bytes)
}

/// Decodes exactly one metadata record (with its zone, when one follows) and checks it.
pub(crate) fn decode_meta_record(data: &[u8]) -> Result<MetaRecord, CodecError> {
    let (wire, rest): (WireMeta<String>, _) = postcard::take_from_bytes(data)?;
    let zone = if rest.is_empty() {
        None
    } else {
        let (zone, rest): (String, _) = postcard::take_from_bytes(rest)?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes);
        }
        if ringcache_proto::topology::check_zone(&zone).is_err() {
            return Err(CodecError::InvalidZone);
        }
        Some(zone)
    };
    if wire.node_id.is_placeholder() {
        return Err(CodecError::EmptyNodeId);
    }
    if wire.weight == 0 {
        return Err(CodecError::ZeroWeight);
    }
    Ok(MetaRecord {
        node_id: wire.node_id,
        incarnation: wire.incarnation,
        meta_version: wire.meta_version,
        meta: NodeMeta {
            grpc_addr: wire.grpc_addr,
            http_addr: wire.http_addr,
            cluster_addr: wire.cluster_addr,
            resp_addr: wire.resp_addr,
            weight: wire.weight,
            state: state_from_wire(wire.state)?,
            settings: ClusterSettings {
                replication_factor: wire.replication_factor,
                vnodes: wire.vnodes,
                placement_version: wire.placement_version,
            },
            zone,
        },
    })
}

/// A whole datagram: frame header then `body`.
pub(crate) fn frame(kind: FrameKind, body: &[u8]) -> Bytes {
    let mut datagram = BytesMut::with_capacity(FRAME_HEADER_LEN + body.len());
    datagram.put_slice(&frame_header(kind));
    datagram.put_slice(body);
    datagram.freeze()
}

/// A suspicion notice: `node_id` at identity `incarnation` is suspected at foca's member
/// incarnation `suspected_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SuspectNotice {
    pub(crate) node_id: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) suspected_at: foca::Incarnation,
}

/// Encodes a suspicion notice body.
pub(crate) fn encode_suspect_notice(notice: &SuspectNotice) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_allocvec(notice)?)
}

/// Decodes exactly one suspicion notice body.
pub(crate) fn decode_suspect_notice(data: &[u8]) -> Result<SuspectNotice, CodecError> {
    let (notice, rest): (SuspectNotice, _) = postcard::take_from_bytes(data)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes);
    }
    if notice.node_id.is_placeholder() {
        return Err(CodecError::EmptyNodeId);
    }
    Ok(notice)
}

/// A suspicion confirmation: `accuser` suspects the member of `suspect` (its own probe of it
/// failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SuspicionConfirm {
    pub(crate) suspect: SuspectNotice,
    pub(crate) accuser: NodeId,
}

/// Encodes a suspicion confirmation body.
pub(crate) fn encode_confirm(confirm: &SuspicionConfirm) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_allocvec(confirm)?)
}

/// Decodes exactly one suspicion confirmation body.
pub(crate) fn decode_confirm(data: &[u8]) -> Result<SuspicionConfirm, CodecError> {
    let (confirm, rest): (SuspicionConfirm, _) = postcard::take_from_bytes(data)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes);
    }
    if confirm.suspect.node_id.is_placeholder() || confirm.accuser.is_placeholder() {
        return Err(CodecError::EmptyNodeId);
    }
    Ok(confirm)
}

/// Encodes a metadata request body: where to send the metadata.
pub(crate) fn encode_meta_request(reply_to: SocketAddr) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_allocvec(&reply_to)?)
}

/// Decodes exactly one metadata request body.
pub(crate) fn decode_meta_request(data: &[u8]) -> Result<SocketAddr, CodecError> {
    let (reply_to, rest): (SocketAddr, _) = postcard::take_from_bytes(data)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes);
    }
    Ok(reply_to)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn identity(node_id: &str, port: u16) -> NodeIdentity {
        NodeIdentity::new(node_id, SocketAddr::from(([127, 0, 0, 1], port)), 7).unwrap()
    }

    fn encode(header: &Header<NodeIdentity>) -> Vec<u8> {
        let mut buf = Vec::new();
        GossipCodec::new(NodeId::new("me").unwrap())
            .encode_header(header, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn frames_are_checked_before_decoding() {
        let max = 16;
        assert_eq!(split_frame(&[], max), Err(DropReason::Malformed));
        assert_eq!(split_frame(&[0x00, 1, 0], max), Err(DropReason::WrongMagic));
        assert_eq!(split_frame(&[0x00], max), Err(DropReason::WrongMagic));
        assert_eq!(split_frame(&[MAGIC], max), Err(DropReason::Malformed));
        assert_eq!(
            split_frame(&[MAGIC, 9, 0], max),
            Err(DropReason::UnsupportedVersion(9))
        );
        assert_eq!(
            split_frame(&[MAGIC, WIRE_VERSION], max),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            split_frame(&[MAGIC, WIRE_VERSION, 9], max),
            Err(DropReason::Malformed)
        );
        assert_eq!(split_frame(&[MAGIC; 17], max), Err(DropReason::Oversized));
        let datagram = frame(FrameKind::MetaPush, b"body");
        assert_eq!(
            split_frame(&datagram, max),
            Ok((FrameKind::MetaPush, &b"body"[..]))
        );
    }

    #[test]
    fn seed_placeholder_is_resolved_only_for_announces() {
        let me = NodeId::new("me").unwrap();
        let mut codec = GossipCodec::new(me.clone());
        let announce = Header {
            src: identity("joiner", 1),
            src_incarnation: 0,
            dst: NodeIdentity::seed_placeholder(SocketAddr::from(([127, 0, 0, 1], 2))),
            message: Message::Announce,
        };
        let decoded = codec.decode_header(&encode(&announce)[..]).unwrap();
        assert_eq!(decoded.dst.node_id(), &me);

        let ping = Header {
            message: Message::Ping(1),
            ..announce.clone()
        };
        assert!(matches!(
            codec.decode_header(&encode(&ping)[..]),
            Err(CodecError::EmptyNodeId)
        ));
        let from_nobody = Header {
            src: NodeIdentity::seed_placeholder(SocketAddr::from(([127, 0, 0, 1], 3))),
            dst: identity("me", 2),
            ..announce
        };
        assert!(matches!(
            codec.decode_header(&encode(&from_nobody)[..]),
            Err(CodecError::EmptyNodeId)
        ));
    }

    fn arb_meta() -> impl Strategy<Value = MetaRecord> {
        (
            "[a-z0-9-]{1,128}",
            any::<u64>(),
            any::<u64>(),
            (".{0,64}", ".{0,64}", ".{0,64}"),
            1..=u32::MAX,
            prop_oneof![
                Just(MetaState::Joining),
                Just(MetaState::Active),
                Just(MetaState::Leaving),
                Just(MetaState::Restarting)
            ],
            prop_oneof![Just(None), "[A-Za-z0-9._-]{1,64}".prop_map(Some)],
        )
            .prop_map(
                |(
                    node_id,
                    incarnation,
                    meta_version,
                    (grpc_addr, http_addr, cluster_addr),
                    weight,
                    state,
                    zone,
                )| {
                    MetaRecord {
                        node_id: NodeId::new(&node_id).unwrap(),
                        incarnation,
                        meta_version,
                        meta: NodeMeta {
                            grpc_addr,
                            http_addr,
                            cluster_addr,
                            resp_addr: String::new(),
                            weight,
                            state,
                            settings: ClusterSettings {
                                replication_factor: weight % 7,
                                vnodes: weight,
                                placement_version: u32::MAX - weight,
                            },
                            zone,
                        },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn meta_records_round_trip_within_the_bound(record in arb_meta()) {
            let bytes = encode_meta_record(&record).unwrap();
            prop_assert!(bytes.len() <= meta_record_len_bound(&record.meta));
            prop_assert_eq!(decode_meta_record(&bytes).unwrap(), record);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_meta_record(&body);
            let _ = decode_suspect_notice(&body);
            let _ = decode_meta_request(&body);
            let _ = decode_confirm(&body);
            let _ = GossipCodec::new(NodeId::new("me").unwrap()).decode_header(&body[..]);
            let _ = split_frame(&body, 128);
        }
    }

    fn plain_record() -> MetaRecord {
        MetaRecord {
            node_id: NodeId::new("n1").unwrap(),
            incarnation: 5,
            meta_version: 2,
            meta: NodeMeta {
                grpc_addr: "h:1".into(),
                http_addr: "h:2".into(),
                cluster_addr: "h:3".into(),
                resp_addr: String::new(),
                weight: 1,
                state: MetaState::Active,
                settings: ClusterSettings {
                    replication_factor: 3,
                    vnodes: 256,
                    placement_version: 2,
                },
                zone: None,
            },
        }
    }

    /// The record of a node without a zone, as builds before zones encode it.
    const PLAIN_RECORD: &[u8] = &[
        2, b'n', b'1', // node id
        5, 2, // incarnation, meta version
        3, b'h', b':', b'1', // grpc
        3, b'h', b':', b'2', // http
        3, b'h', b':', b'3', // cluster
        1, 2, // weight, state (active)
        0, // resp (none)
        3, 0x80, 0x02, 2, // R, vnodes (varint 256), placement version
    ];

    #[test]
    fn a_record_without_a_zone_is_byte_identical_to_before_zones() {
        let record = plain_record();
        assert_eq!(encode_meta_record(&record).unwrap(), PLAIN_RECORD);
        assert_eq!(decode_meta_record(PLAIN_RECORD).unwrap(), record);
    }

    #[test]
    fn a_zone_follows_the_record_and_nothing_else_may() {
        let mut record = plain_record();
        record.meta.zone = Some("az1".into());
        record.meta.settings.placement_version = 3;
        let bytes = encode_meta_record(&record).unwrap();
        let mut want = PLAIN_RECORD.to_vec();
        *want.last_mut().unwrap() = 3;
        want.extend([3, b'a', b'z', b'1']);
        assert_eq!(bytes, want);
        assert!(bytes.len() <= meta_record_len_bound(&record.meta));
        assert_eq!(decode_meta_record(&bytes).unwrap(), record);
        // Anything after the zone is still an error; so is a zone that is not valid, or a
        // truncated one.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_meta_record(&longer),
            Err(CodecError::TrailingBytes)
        ));
        let mut empty_zone = PLAIN_RECORD.to_vec();
        empty_zone.push(0);
        assert!(matches!(
            decode_meta_record(&empty_zone),
            Err(CodecError::InvalidZone)
        ));
        let mut bad_zone = PLAIN_RECORD.to_vec();
        bad_zone.extend([3, b'a', b' ', b'b']);
        assert!(matches!(
            decode_meta_record(&bad_zone),
            Err(CodecError::InvalidZone)
        ));
        assert!(decode_meta_record(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn suspect_notices_round_trip() {
        let notice = SuspectNotice {
            node_id: NodeId::new("n1").unwrap(),
            incarnation: 9,
            suspected_at: 3,
        };
        let bytes = encode_suspect_notice(&notice).unwrap();
        assert_eq!(decode_suspect_notice(&bytes).unwrap(), notice);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_suspect_notice(&longer).is_err());
        let confirm = SuspicionConfirm {
            suspect: notice,
            accuser: NodeId::new("n2").unwrap(),
        };
        let bytes = encode_confirm(&confirm).unwrap();
        assert_eq!(decode_confirm(&bytes).unwrap(), confirm);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_confirm(&longer).is_err());
        let addr = SocketAddr::from(([10, 0, 0, 1], 7380));
        let bytes = encode_meta_request(addr).unwrap();
        assert_eq!(decode_meta_request(&bytes).unwrap(), addr);
    }
}
