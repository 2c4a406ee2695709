//! Original-mode acknowledgements (ACK with MSA and, on errors, ERR).
//!
//! The ACK is written to suit both old and new receivers: MSA-3 carries the
//! error text for v2.3 systems, ERR-1 the v2.3/2.4 location-and-code, and
//! ERR-2..ERR-8 the v2.5+ fields. Receivers ignore the fields they do not
//! know. The timestamp is a parameter: this module never reads the clock.

use super::charset::{self, Declared, Encoding};
use super::encode::{MessageBuilder, SegmentBuilder};
use super::error::ParseError;
use super::message::{Field, Message};
use jiff::Timestamp;

/// Version written when the original does not say (or could not be read).
pub const DEFAULT_VERSION: &str = "2.5.1";

/// MSA-1 in original acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// `AA`: accepted (and, for us, durably stored).
    Accept,
    /// `AE`: the message was understood but could not be applied.
    Error,
    /// `AR`: rejected: unreadable, unsupported type or version.
    Reject,
}

impl AckCode {
    /// The MSA-1 value: `AA`, `AE` or `AR`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

impl std::fmt::Display for AckCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, for the ERR segment and MSA-3.
///
/// `text` is sent to the PMS and may be logged: like every error in this
/// crate it must name positions and reasons, never patient values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// HL7 table 0357 code, e.g. 101 required field missing.
    pub code: u16,
    pub text: String,
    /// Segment id of the error location, e.g. `PID`.
    pub segment: Option<String>,
    /// 1-based field position within `segment`.
    pub field: Option<u32>,
}

impl AckError {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            segment: None,
            field: None,
        }
    }

    /// Locate the error at `segment`-`field`.
    pub fn at(mut self, segment: &str, field: u32) -> Self {
        self.segment = Some(segment.to_owned());
        self.field = Some(field);
        self
    }

    /// 101 at `segment`-`field`.
    pub fn required_field_missing(segment: &str, field: u32) -> Self {
        Self::new(101, format!("required field {segment}-{field} is missing")).at(segment, field)
    }
}

/// The standard text of an HL7 table 0357 code, `None` for local codes.
pub fn error_code_text(code: u16) -> Option<&'static str> {
    Some(match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        104 => "Value too long",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        207 => "Application internal error",
        _ => return None,
    })
}

impl From<&ParseError> for AckError {
    /// How a parse failure is reported back; pair it with [`AckCode::Reject`].
    fn from(err: &ParseError) -> Self {
        let text = err.to_string();
        match err {
            ParseError::TooLarge { .. } => AckError::new(104, text),
            ParseError::TooManyDelimiters { .. } => AckError::new(102, text),
            ParseError::NotHl7 | ParseError::BadSegmentId { .. } => AckError::new(100, text),
            ParseError::BadSeparators { field, .. } => AckError::new(102, text).at("MSH", *field),
            ParseError::MissingField { segment, field } => {
                AckError::new(101, text).at(segment, *field)
            }
        }
    }
}

/// Everything the ACK header takes from the original message.
struct Reply<'a> {
    receiving_application: Option<&'a Field>,
    receiving_facility: Option<&'a Field>,
    trigger: String,
    processing_id: &'a str,
    version: &'a str,
    charset: Option<&'a str>,
    encoding: Encoding,
    original_control_id: &'a str,
}

/// Who we are and when we answer.
struct Us<'a> {
    application: &'a str,
    facility: &'a str,
    control_id: &'a str,
    now: Timestamp,
}

/// Acknowledge `original`.
///
/// The reply goes back to the original's sender (MSH-5/6 copy its MSH-3/4),
/// echoes its MSH-10 in MSA-2, its processing id (default `P`) and version
/// (default 2.5.1), and is written in its charset: a declared UTF-8 or
/// Latin-1 is copied to MSH-18 and used; ASCII is copied; an unknown charset
/// is not claimed, and the reply mirrors the encoding the original was read
/// in. `error` adds an ERR segment (severity E, or W with `Accept`).
pub fn ack(
    original: &Message,
    code: AckCode,
    error: Option<&AckError>,
    now: Timestamp,
    our_app: &str,
    our_facility: &str,
    control_id: &str,
) -> Vec<u8> {
    let header = original.header();
    let (encoding, charset) = reply_charset(original);
    let reply = Reply {
        receiving_application: header.and_then(|h| h.field(3)),
        receiving_facility: header.and_then(|h| h.field(4)),
        trigger: original
            .message_type()
            .map(|t| t.trigger)
            .unwrap_or_default(),
        processing_id: original.processing_id().unwrap_or("P"),
        version: original.version().unwrap_or(DEFAULT_VERSION),
        charset,
        encoding,
        original_control_id: original.control_id().unwrap_or_default(),
    };
    let us = Us {
        application: our_app,
        facility: our_facility,
        control_id,
        now,
    };
    ack_builder(&reply, &us, code, error).write()
}

/// Reject a message whose header could not be read at all: `AR`, MSA-2
/// empty, no receiver. When only the body is broken, prefer
/// [`super::parse_header`] + [`ack`] so that MSA-2 echoes the control id.
pub fn ack_unparsed(
    error: &AckError,
    now: Timestamp,
    our_app: &str,
    our_facility: &str,
    control_id: &str,
) -> Vec<u8> {
    let reply = Reply {
        receiving_application: None,
        receiving_facility: None,
        trigger: String::new(),
        processing_id: "P",
        version: DEFAULT_VERSION,
        charset: None,
        encoding: Encoding::Utf8,
        original_control_id: "",
    };
    let us = Us {
        application: our_app,
        facility: our_facility,
        control_id,
        now,
    };
    ack_builder(&reply, &us, AckCode::Reject, Some(error)).write()
}

fn reply_charset(original: &Message) -> (Encoding, Option<&str>) {
    let name = original.charset();
    match charset::declared(name) {
        Declared::Utf8 => (Encoding::Utf8, name),
        Declared::Latin1 => (Encoding::Latin1, name),
        Declared::Unsure => {
            let ascii = name.filter(|n| n.trim().eq_ignore_ascii_case("ASCII"));
            (original.encoding(), ascii)
        }
    }
}

/// `YYYYMMDDHHMMSS+0000`, formatted by hand so that nothing can fail.
fn hl7_timestamp(now: Timestamp) -> String {
    let t = now.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn ack_builder(
    reply: &Reply<'_>,
    us: &Us<'_>,
    code: AckCode,
    error: Option<&AckError>,
) -> MessageBuilder {
    let mut msh = SegmentBuilder::new("MSH");
    msh.set(3, us.application).set(4, us.facility);
    if let Some(f) = reply.receiving_application {
        msh.set_field(5, f.clone());
    }
    if let Some(f) = reply.receiving_facility {
        msh.set_field(6, f.clone());
    }
    msh.set(7, hl7_timestamp(us.now))
        .set_component(9, 1, "ACK")
        .set_component(9, 2, reply.trigger.as_str())
        .set_component(9, 3, "ACK")
        .set(10, us.control_id)
        .set(11, reply.processing_id)
        .set(12, reply.version);
    if let Some(charset) = reply.charset {
        msh.set(18, charset);
    }

    let mut msa = SegmentBuilder::new("MSA");
    msa.set(1, code.as_str()).set(2, reply.original_control_id);
    if let Some(e) = error {
        msa.set(3, e.text.as_str());
    }

    let mut msg = MessageBuilder::new();
    msg.encoding(reply.encoding).push(msh).push(msa);
    if let Some(e) = error {
        msg.push(err_segment(e, code));
    }
    msg
}

fn err_segment(e: &AckError, code: AckCode) -> SegmentBuilder {
    let standard = error_code_text(e.code).unwrap_or_default();
    let number = e.code.to_string();
    let segment = e.segment.as_deref().unwrap_or_default();
    let field = e.field.map(|f| f.to_string()).unwrap_or_default();
    // The segment's occurrence is unknown to AckError; report the first.
    let sequence = if segment.is_empty() { "" } else { "1" };

    let mut err = SegmentBuilder::new("ERR");
    // ERR-1 (v2.3/2.4 ELD): segment ^ sequence ^ field ^ code&text&table.
    err.set_value(1, 0, 1, 1, segment)
        .set_value(1, 0, 2, 1, sequence)
        .set_value(1, 0, 3, 1, field.as_str())
        .set_value(1, 0, 4, 1, number.as_str())
        .set_value(1, 0, 4, 2, standard)
        .set_value(1, 0, 4, 3, "HL70357");
    // ERR-2 (v2.5+ ERL): segment ^ sequence ^ field.
    if !segment.is_empty() {
        err.set_component(2, 1, segment)
            .set_component(2, 2, sequence)
            .set_component(2, 3, field.as_str());
    }
    err.set_component(3, 1, number.as_str())
        .set_component(3, 2, standard)
        .set_component(3, 3, "HL70357")
        .set(4, if code == AckCode::Accept { "W" } else { "E" })
        .set(8, e.text.as_str());
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_utc_with_offset() {
        let t: Timestamp = "2025-03-04T05:06:07.89+01:00".parse().unwrap();
        assert_eq!(hl7_timestamp(t), "20250304040607+0000");
    }

    #[test]
    fn every_parse_error_maps_to_a_table_0357_code() {
        let errors = [
            ParseError::TooLarge { len: 2, limit: 1 },
            ParseError::NotHl7,
            ParseError::BadSeparators {
                field: 1,
                reason: "x",
            },
            ParseError::BadSegmentId { index: 3 },
            ParseError::MissingField {
                segment: "MSH",
                field: 10,
            },
            ParseError::TooManyDelimiters { limit: 1 },
        ];
        for e in &errors {
            let a = AckError::from(e);
            assert!(error_code_text(a.code).is_some(), "{e:?}");
            assert_eq!(a.text, e.to_string());
        }
    }

    #[test]
    fn builders_pass_validation() {
        let us = Us {
            application: "CLINIC-RELAY",
            facility: "ZZCLINIC",
            control_id: "1",
            now: Timestamp::UNIX_EPOCH,
        };
        let reply = Reply {
            receiving_application: None,
            receiving_facility: None,
            trigger: String::new(),
            processing_id: "P",
            version: DEFAULT_VERSION,
            charset: Some("UNICODE UTF-8"),
            encoding: Encoding::Utf8,
            original_control_id: "",
        };
        let err = AckError::new(999, "local").at("ZZZ", 1);
        for code in [AckCode::Accept, AckCode::Error, AckCode::Reject] {
            for e in [None, Some(&err)] {
                assert_eq!(ack_builder(&reply, &us, code, e).validate(), Ok(()));
            }
        }
    }
}
