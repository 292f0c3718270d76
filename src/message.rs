//! The one type every layer shares: what kind of data message a client sent. The relay, the
//! Redis envelope and the frame encoder all speak it, so it lives here rather than in any one
//! of them.

/// A WebSocket data message's type. Relayed as it came: text stays text, binary stays binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    /// The RFC 6455 opcode of an unfragmented frame of this kind.
    pub fn opcode(self) -> u8 {
        match self {
            MessageKind::Text => 0x1,
            MessageKind::Binary => 0x2,
        }
    }
}
