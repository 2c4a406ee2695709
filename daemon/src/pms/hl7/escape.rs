//! HL7 escape sequences (`\F\`, `\S\`, `\X41\`, `\.br\` ...).
//!
//! Decoding works on bytes, after the value has been cut out by the
//! delimiters and before charset decoding, so that `\XC3A9\` in a UTF-8
//! message and `\XE9\` in a Latin-1 message both become `é`. Whatever we do
//! not understand is kept verbatim: senders get escaping wrong all the time
//! (bare backslashes in Windows paths), and losing their text would be worse
//! than showing it as sent.

use super::message::Separators;
use std::borrow::Cow;

/// Resolve the escape sequences in one raw value.
pub(super) fn unescape<'a>(raw: &'a [u8], seps: &Separators) -> Cow<'a, [u8]> {
    let Some(esc) = seps.escape else {
        return Cow::Borrowed(raw);
    };
    if !raw.contains(&esc) {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.iter().position(|&b| b == esc) {
        let Some((before, seq)) = rest.split_at_checked(start) else {
            break;
        };
        out.extend_from_slice(before);
        // `seq` starts with the opening escape character.
        let after_open = seq.get(1..).unwrap_or_default();
        let Some(body_len) = after_open.iter().position(|&b| b == esc) else {
            // Unterminated: keep the rest as sent.
            out.extend_from_slice(seq);
            rest = &[];
            break;
        };
        let body = after_open.get(..body_len).unwrap_or_default();
        let whole = body_len + 2;
        if !expand(body, seps, &mut out) {
            out.extend_from_slice(seq.get(..whole).unwrap_or_default());
        }
        rest = seq.get(whole..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Append the meaning of one escape body; `false` if we do not know it.
fn expand(body: &[u8], seps: &Separators, out: &mut Vec<u8>) -> bool {
    let delimiter = match body {
        b"F" => Some(seps.field),
        b"S" => seps.component,
        b"T" => seps.subcomponent,
        b"R" => seps.repetition,
        b"E" => seps.escape,
        b"P" => seps.truncation,
        // Highlighting on/off has no plain-text meaning.
        b"H" | b"N" => return true,
        b".br" => Some(b'\n'),
        [b'X', hex @ ..] => return hex_bytes(hex, out),
        _ => None,
    };
    match delimiter {
        Some(b) => {
            out.push(b);
            true
        }
        None => false,
    }
}

/// `\Xhhhh\`: pairs of hex digits, each one byte. Odd length or a non-hex
/// digit makes the whole sequence unknown (kept literally).
fn hex_bytes(hex: &[u8], out: &mut Vec<u8>) -> bool {
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    out.extend(
        hex.chunks_exact(2)
            .map(|pair| pair.iter().fold(0u8, |acc, &d| (acc << 4) | hex_value(d))),
    );
    true
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        b'A'..=b'F' => d - b'A' + 10,
        _ => 0,
    }
}

/// Append `value` escaped for the standard separators `|^~\&`. Line breaks
/// (LF, CR or CRLF) become `\.br\`: a raw CR would end the segment.
pub(super) fn escape_into(value: &str, out: &mut String) {
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\\' => out.push_str("\\E\\"),
            '\n' => out.push_str("\\.br\\"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\\.br\\");
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn un(raw: &str) -> String {
        String::from_utf8(unescape(raw.as_bytes(), &Separators::STANDARD).into_owned()).unwrap()
    }

    #[test]
    fn delimiter_escapes_become_delimiters() {
        assert_eq!(un("ZZTEST\\S\\JUNIOR"), "ZZTEST^JUNIOR");
        assert_eq!(un("A\\T\\B\\F\\C\\R\\D\\E\\E"), "A&B|C~D\\E");
    }

    #[test]
    fn hex_line_break_and_highlight() {
        assert_eq!(un("\\X41\\BC"), "ABC");
        assert_eq!(un("\\XC3A9\\"), "\u{e9}");
        assert_eq!(un("line1\\.br\\line2"), "line1\nline2");
        assert_eq!(un("\\H\\bold\\N\\ text"), "bold text");
    }

    #[test]
    fn unknown_and_broken_sequences_are_kept_literally() {
        assert_eq!(un("C:\\temp\\x"), "C:\\temp\\x");
        assert_eq!(un("trailing\\"), "trailing\\");
        assert_eq!(un("\\X4\\"), "\\X4\\");
        assert_eq!(un("\\XZZ\\"), "\\XZZ\\");
        assert_eq!(un("\\X\\"), "\\X\\");
        assert_eq!(un("\\\\"), "\\\\");
        assert_eq!(un("\\.sp\\"), "\\.sp\\");
        assert_eq!(un("\\P\\"), "\\P\\", "no truncation character declared");
    }

    #[test]
    fn missing_delimiters_leave_their_escapes_alone() {
        let seps = Separators {
            subcomponent: None,
            ..Separators::STANDARD
        };
        assert_eq!(&*unescape(b"a\\T\\b", &seps), b"a\\T\\b");
        let none = Separators {
            escape: None,
            ..Separators::STANDARD
        };
        assert_eq!(&*unescape(b"a\\S\\b", &none), b"a\\S\\b");
    }

    #[test]
    fn escaping_covers_every_delimiter_and_line_breaks() {
        let mut out = String::new();
        escape_into("a|b^c&d~e\\f\ng\r\nh\ri", &mut out);
        assert_eq!(
            out,
            "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g\\.br\\h\\.br\\i"
        );
        assert_eq!(un(&out), "a|b^c&d~e\\f\ng\nh\ni");
    }
}
