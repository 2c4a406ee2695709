//! Bytes → [`Message`].
//!
//! Three passes, each linear: find the separators in MSH, cut the input
//! into segment lines (CR, LF and CRLF all end a segment, blank lines are
//! skipped) and check their ids, then split every line into fields, and
//! each field into repetitions, components and subcomponents in one pass
//! (a table gives each byte's role), unescaping and decoding each value.
//! Delimiters are ASCII, so cutting on raw bytes is safe for both UTF-8 and
//! Latin-1 before anything is decoded.

use super::charset::{self, Encoding};
use super::error::{valid_segment_id, ParseError};
use super::escape::unescape;
use super::message::{Component, Field, Message, Repetition, Segment, Separators};
use super::MAX_MESSAGE_BYTES;
use smallvec::SmallVec;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The most delimiters (field, component, repetition and subcomponent
/// separators, and segment ends) one message may hold. Each becomes a node
/// of the parsed tree (100–250 bytes), so without a bound 1 MB of `~` took
/// 240 MB (issue 8). 262,144 still admits 200,000 repetitions in a field
/// (measured: +53 MiB peak for those, against +16 MiB for refusing 1 MB and
/// 15 MB of `~`; `tests/it/hostile.rs`).
pub const MAX_DELIMITERS: usize = 262_144;

/// Parse one message with the default size limit ([`MAX_MESSAGE_BYTES`]).
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    parse_with_limit(bytes, MAX_MESSAGE_BYTES)
}

/// Parse one message, refusing inputs longer than `max_bytes`.
///
/// Besides structure, this requires MSH-9.1 (message code) and MSH-10
/// (control id): without them we can neither route nor deduplicate.
pub fn parse_with_limit(bytes: &[u8], max_bytes: usize) -> Result<Message, ParseError> {
    if bytes.len() > max_bytes {
        return Err(ParseError::TooLarge {
            len: bytes.len(),
            limit: max_bytes,
        });
    }
    let input = trim_start(bytes);
    let separators = read_separators(input)?;
    check_delimiters(input, &separators)?;
    let lines = segment_lines(input)?;
    let msg = build(&lines, input, separators);
    if msg.message_type().is_none() {
        return Err(ParseError::MissingField {
            segment: "MSH",
            field: 9,
        });
    }
    if msg.control_id().is_none() {
        return Err(ParseError::MissingField {
            segment: "MSH",
            field: 10,
        });
    }
    Ok(msg)
}

/// Parse only the MSH segment, without requiring any field.
///
/// For the rejection path: when [`parse`] fails further down the message,
/// the header usually still yields MSH-10 and the sender's identity, so the
/// AR acknowledgement can echo them. No size limit applies beyond the first
/// line's own length; the MLLP reader bounds frames anyway.
pub fn parse_header(bytes: &[u8]) -> Result<Message, ParseError> {
    let input = trim_start(bytes);
    let separators = read_separators(input)?;
    let first = input
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    if !valid_segment_id(segment_id(first, separators.field)) {
        return Err(ParseError::BadSegmentId { index: 1 });
    }
    check_delimiters(first, &separators)?;
    Ok(build(&[first], first, separators))
}

/// One linear pass that refuses a message before any of it is split, so
/// the work and memory of parsing stay proportional to a sane message.
fn check_delimiters(input: &[u8], seps: &Separators) -> Result<(), ParseError> {
    let mut table = [false; 256];
    for d in [
        Some(seps.field),
        seps.component,
        seps.repetition,
        seps.subcomponent,
        Some(b'\r'),
        Some(b'\n'),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(slot) = table.get_mut(usize::from(d)) {
            *slot = true;
        }
    }
    let count = input
        .iter()
        .filter(|&&b| table.get(usize::from(b)).copied().unwrap_or(false))
        .count();
    if count > MAX_DELIMITERS {
        return Err(ParseError::TooManyDelimiters {
            limit: MAX_DELIMITERS,
        });
    }
    Ok(())
}

/// Skip a UTF-8 byte-order mark and leading blank lines or spaces.
fn trim_start(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// Separators must be visible ASCII that cannot occur in a segment id.
fn usable_separator(b: u8) -> bool {
    b.is_ascii_punctuation()
}

/// MSH-1 is the byte after `MSH`; MSH-2 runs up to the next field separator.
fn read_separators(input: &[u8]) -> Result<Separators, ParseError> {
    if !input.starts_with(b"MSH") {
        return Err(ParseError::NotHl7);
    }
    let field = *input.get(3).ok_or(ParseError::BadSeparators {
        field: 1,
        reason: "the field separator is missing",
    })?;
    if !usable_separator(field) {
        return Err(ParseError::BadSeparators {
            field: 1,
            reason: "the field separator is not a punctuation character",
        });
    }
    let rest = input.get(4..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b == field || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let chars = rest.get(..end).unwrap_or_default();
    // Four characters, plus the v2.7 truncation character.
    if chars.len() > 5 {
        return Err(ParseError::BadSeparators {
            field: 2,
            reason: "longer than 5 characters",
        });
    }
    for (i, &c) in chars.iter().enumerate() {
        let repeated = c == field || chars.get(..i).is_some_and(|seen| seen.contains(&c));
        if !usable_separator(c) || repeated {
            return Err(ParseError::BadSeparators {
                field: 2,
                reason: "a separator is repeated or not a punctuation character",
            });
        }
    }
    let at = |i: usize| chars.get(i).copied();
    Ok(Separators {
        field,
        component: at(0),
        repetition: at(1),
        escape: at(2),
        subcomponent: at(3),
        truncation: at(4),
    })
}

/// The segment id is whatever precedes the first field separator.
fn segment_id(line: &[u8], field: u8) -> &[u8] {
    line.split(|&b| b == field).next().unwrap_or_default()
}

/// Cut the input into non-blank segment lines and check every id.
fn segment_lines(input: &[u8]) -> Result<Vec<&[u8]>, ParseError> {
    let field = input.get(3).copied().unwrap_or(b'|');
    let lines: Vec<&[u8]> = input
        .split(|&b| b == b'\r' || b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        if !valid_segment_id(segment_id(line, field)) {
            return Err(ParseError::BadSegmentId { index: i + 1 });
        }
    }
    Ok(lines)
}

/// MSH-18 straight from the raw MSH line: it decides how to decode the rest,
/// so it must be read before anything is decoded. Charset names are ASCII.
fn raw_charset(msh: &[u8], seps: &Separators) -> Option<String> {
    // Raw pieces: 0 = "MSH", 1 = MSH-2, so MSH-n is piece n - 1.
    let raw = msh.split(|&b| b == seps.field).nth(17)?;
    let first = split_on(raw, seps.repetition).next()?;
    let name = split_on(first, seps.component).next()?;
    let name = String::from_utf8_lossy(name).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

fn build(lines: &[&[u8]], whole: &[u8], separators: Separators) -> Message {
    let msh = lines.first().copied().unwrap_or_default();
    let declared = charset::declared(raw_charset(msh, &separators).as_deref());
    let encoding = Encoding::detect(declared, whole);
    let roles = roles(&separators);
    let segments = lines
        .iter()
        .map(|line| parse_segment(line, &roles, &separators, encoding))
        .collect();
    Message {
        segments,
        separators,
        encoding,
    }
}

/// Split on an optional delimiter; `None` yields the whole input once.
fn split_on(raw: &[u8], delimiter: Option<u8>) -> impl Iterator<Item = &[u8]> {
    raw.split(move |&b| Some(b) == delimiter)
}

fn parse_segment(line: &[u8], roles: &[Role; 256], seps: &Separators, enc: Encoding) -> Segment {
    let mut pieces = line.split(|&b| b == seps.field);
    let id = pieces.next().unwrap_or_default();
    // One allocation per segment: grown field by field, a long segment
    // (SCH, PID: 20-odd fields) was reallocated three or four times.
    let separators = line.iter().filter(|&&b| b == seps.field).count();
    let mut fields = Vec::with_capacity(separators + 1);
    // Header segments: field 1 is the separator itself and field 2 the
    // encoding characters; neither is split nor unescaped.
    if matches!(id, b"MSH" | b"BHS" | b"FHS") {
        fields.push(Field::from_text(char::from(seps.field)));
        let chars = pieces.next().unwrap_or_default();
        fields.push(if chars.is_empty() {
            Field::default()
        } else {
            Field::from_text(enc.decode(chars))
        });
    }
    fields.extend(pieces.map(|raw| parse_field(raw, roles, seps, enc)));
    Segment {
        id: String::from_utf8_lossy(id).into_owned(),
        fields,
    }
}

/// What a byte is inside a field: which delimiter, or the escape character.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Text,
    Subcomponent,
    Component,
    Repetition,
    Escape,
}

/// The role of every byte value under `seps` (one lookup a byte).
fn roles(seps: &Separators) -> [Role; 256] {
    let mut table = [Role::Text; 256];
    for (byte, role) in [
        (seps.subcomponent, Role::Subcomponent),
        (seps.component, Role::Component),
        (seps.repetition, Role::Repetition),
        (seps.escape, Role::Escape),
    ] {
        if let Some(slot) = byte.and_then(|b| table.get_mut(usize::from(b))) {
            *slot = role;
        }
    }
    table
}

/// Splits a field into repetitions, components and subcomponents in one
/// pass over its bytes (each value unescaped only if it holds the escape
/// character): the same tree as splitting on each delimiter in turn, which
/// took a pass a level and a scan a value for the escape character.
fn parse_field(raw: &[u8], roles: &[Role; 256], seps: &Separators, enc: Encoding) -> Field {
    if raw.is_empty() {
        return Field::default();
    }
    let leaf = |value: &[u8], escaped: bool| {
        if escaped {
            enc.decode(&unescape(value, seps))
        } else {
            enc.decode(value)
        }
    };
    // Sized from the delimiters, so that no vector grows as it fills (one
    // growth, 0 → 4 elements, cost more than the rest of a value's parse).
    let (mut repetitions, mut components) = (1, 1);
    for &b in raw {
        match roles.get(usize::from(b)) {
            Some(Role::Repetition) => repetitions += 1,
            Some(Role::Component) => components += 1,
            _ => {}
        }
    }
    // Only an unrepeated field is sized up front: each of a field's many
    // repetitions sized for all its components would be quadratic.
    if repetitions > 1 {
        components = 1;
    }
    let new_component = Component::default;
    let new_repetition = || Repetition {
        components: Vec::with_capacity(components),
    };
    let mut field = Field {
        repetitions: SmallVec::with_capacity(repetitions),
    };
    let mut rep = new_repetition();
    let mut comp = new_component();
    let (mut start, mut escaped) = (0, false);
    for (i, &b) in raw.iter().enumerate() {
        let role = roles.get(usize::from(b)).copied().unwrap_or(Role::Text);
        match role {
            Role::Text => continue,
            Role::Escape => {
                escaped = true;
                continue;
            }
            Role::Subcomponent | Role::Component | Role::Repetition => {}
        }
        comp.subcomponents
            .push(leaf(raw.get(start..i).unwrap_or_default(), escaped));
        (start, escaped) = (i + 1, false);
        if role == Role::Subcomponent {
            continue;
        }
        rep.components
            .push(std::mem::replace(&mut comp, new_component()));
        if role == Role::Repetition {
            field
                .repetitions
                .push(std::mem::replace(&mut rep, new_repetition()));
        }
    }
    comp.subcomponents
        .push(leaf(raw.get(start..).unwrap_or_default(), escaped));
    rep.components.push(comp);
    field.repetitions.push(rep);
    field
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The field splitter as it was: each delimiter in turn, every value
    /// unescaped. [`parse_field`] must build the same tree.
    fn split_in_turn(raw: &[u8], seps: &Separators, enc: Encoding) -> Field {
        if raw.is_empty() {
            return Field::default();
        }
        let leaf = |sub: &[u8]| enc.decode(&unescape(sub, seps));
        let component = |comp: &[u8]| Component {
            subcomponents: split_on(comp, seps.subcomponent).map(leaf).collect(),
        };
        let repetition = |rep: &[u8]| Repetition {
            components: split_on(rep, seps.component).map(component).collect(),
        };
        Field {
            repetitions: split_on(raw, seps.repetition).map(repetition).collect(),
        }
    }

    proptest! {
        #[test]
        fn one_pass_splits_a_field_as_splitting_in_turn_did(
            raw in "[a-c |^~&\\\\#E.XH0-9\u{e9}]{0,24}",
            short in 0usize..6,
            latin1 in any::<bool>(),
        ) {
            // Every delimiter set a message may declare: all four, or MSH-2 cut short.
            let full = Separators::STANDARD;
            let seps = Separators {
                component: full.component.filter(|_| short > 0),
                repetition: full.repetition.filter(|_| short > 1),
                escape: full.escape.filter(|_| short > 2),
                subcomponent: full.subcomponent.filter(|_| short > 3),
                ..full
            };
            let enc = if latin1 { Encoding::Latin1 } else { Encoding::Utf8 };
            let bytes = raw.as_bytes();
            prop_assert_eq!(
                parse_field(bytes, &roles(&seps), &seps, enc),
                split_in_turn(bytes, &seps, enc)
            );
        }
    }

    #[test]
    fn separators_are_read_from_msh() {
        let s = read_separators(b"MSH|^~\\&#|APP").unwrap();
        assert_eq!(s.truncation, Some(b'#'));
        let s = read_separators(b"MSH*$!@%*APP").unwrap();
        assert_eq!(
            (s.field, s.component, s.subcomponent),
            (b'*', Some(b'$'), Some(b'%'))
        );
    }

    #[test]
    fn short_msh2_leaves_delimiters_undefined() {
        let s = read_separators(b"MSH|^~|APP").unwrap();
        assert_eq!((s.escape, s.subcomponent), (None, None));
        let s = read_separators(b"MSH||APP").unwrap();
        assert_eq!(s.component, None);
        let s = read_separators(b"MSH|").unwrap();
        assert_eq!(s.repetition, None);
    }

    #[test]
    fn bad_separators_are_rejected() {
        for input in [
            &b"MSH"[..],
            b"MSHA^~\\&",
            b"MSH ^~\\&",
            b"MSH\r",
            b"MSH|^~\\&#!|",
            b"MSH|^^\\&|",
            b"MSH|^ \\&|",
            b"MSH|^A\\&|",
        ] {
            assert!(
                matches!(
                    read_separators(input),
                    Err(ParseError::BadSeparators { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn delimiters_are_bounded() {
        let mut msg = b"MSH|^~\\&|APP||||||ADT^A04|1|P|2.5\rPID|1||".to_vec();
        let base = msg.iter().filter(|b| b"|^~&\r".contains(b)).count();
        msg.extend(std::iter::repeat_n(b'~', MAX_DELIMITERS - base));
        assert!(parse(&msg).is_ok());
        msg.push(b'~');
        assert_eq!(
            parse(&msg),
            Err(ParseError::TooManyDelimiters {
                limit: MAX_DELIMITERS
            })
        );
        let mut header = b"MSH|^~\\&|APP|".to_vec();
        header.extend(std::iter::repeat_n(b'^', MAX_DELIMITERS + 1));
        assert!(matches!(
            parse_header(&header),
            Err(ParseError::TooManyDelimiters { .. })
        ));
    }

    #[test]
    fn header_only_parse_is_lenient() {
        let msg = parse_header(b"MSH|^~\\&|APP||||||||2.5\rPID|1\r\x01\x02").unwrap();
        assert_eq!(msg.segments().len(), 1);
        assert_eq!(msg.sending_application(), Some("APP"));
        assert_eq!(msg.control_id(), None);
        assert!(matches!(
            parse_header(b"MSHX"),
            Err(ParseError::BadSeparators { .. })
        ));
        assert_eq!(parse_header(b"PID|1"), Err(ParseError::NotHl7));
    }
}
