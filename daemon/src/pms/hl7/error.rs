//! Errors of the codec. Messages name positions only, never values: the
//! values may be patient data and errors end up in logs and ACKs.

/// Why bytes could not be read as an HL7 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("not an HL7 v2 message: it does not start with an MSH segment")]
    NotHl7,
    /// `field` is 1 (MSH-1) or 2 (MSH-2).
    #[error("MSH-{field} does not declare usable separators: {reason}")]
    BadSeparators { field: u32, reason: &'static str },
    /// `index` is the 1-based position of the segment in the message
    /// (MSH is 1; blank lines are not counted).
    #[error("segment {index} has an invalid segment id (expected 3 characters A-Z or 0-9)")]
    BadSegmentId { index: usize },
    #[error("required field {segment}-{field} is missing or empty")]
    MissingField { segment: &'static str, field: u32 },
    #[error("message has more than {limit} delimiters (fields, components, repetitions, subcomponents and segments); refused unread")]
    TooManyDelimiters { limit: usize },
}

/// A programming error in a [`super::MessageBuilder`] call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a message must start with an MSH segment")]
    MissingMsh,
    /// `index` is the 1-based position of the segment in the builder.
    #[error("segment {index} has an invalid segment id (expected 3 characters A-Z or 0-9)")]
    BadSegmentId { index: usize },
    #[error("segment {index}: positions are 1-based (repetitions 0-based) and at most 65535")]
    BadPosition { index: usize },
    #[error("MSH-1 and MSH-2 are written by the encoder and cannot be set")]
    ReservedMshField,
}

/// Segment ids are three characters `[A-Z0-9]` (`PID`, `ZPI`, `IN1`).
pub(super) fn valid_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}
