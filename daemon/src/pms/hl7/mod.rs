//! HL7 v2.x codec: parsing, escaping, encoding and acknowledgements.
//!
//! Pure code, no I/O: the MLLP listener hands us the bytes between the frame
//! markers and sends back what [`ack`] returns. Values in a parsed [`Message`]
//! are stored *unescaped* (`\S\` is already `^`) and decoded to Rust strings
//! from the message's charset (MSH-18), so mappers never see wire syntax.
//!
//! Positions follow the HL7 books: fields, components and subcomponents are
//! 1-based (`PID-5.1` is `seg.component(5, 1)`); repetitions are 0-based
//! indexes into a Rust list. For MSH, field 1 is the field separator itself
//! and field 2 the encoding characters, so `MSH-9` is `msh.field(9)`.
//!
//! Bad input never panics: every failure is a [`ParseError`] whose message
//! names positions only, never field contents (they may be patient data).

mod ack;
mod charset;
mod encode;
mod error;
mod escape;
mod message;
mod parse;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod samples;

pub use ack::{ack, ack_unparsed, error_code_text, AckCode, AckError, DEFAULT_VERSION};
pub use charset::Encoding;
pub use encode::{MessageBuilder, SegmentBuilder, MAX_POSITION};
pub use error::{EncodeError, ParseError};
pub use message::{Component, Field, Message, MessageType, Repetition, Segment, Separators};
pub use parse::{parse, parse_header, parse_with_limit, MAX_DELIMITERS};

/// Default size limit for one message. Large because ORU^R01 results carry
/// base64 PDFs in OBX-5; the MLLP reader should enforce the same bound before
/// it buffers a frame.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
