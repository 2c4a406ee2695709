//! Character sets (MSH-18) we decode and encode.
//!
//! Only two encodings matter for the clinics we serve: UTF-8 and ISO 8859-1
//! (Latin-1). Latin-1 is trivial by hand: byte `b` is code point `U+00bb`.
//! Since both are ASCII supersets, the delimiters can be found on the raw
//! bytes before any decoding, and decoding happens per value after escapes
//! have been resolved (so `\XE9\` becomes the byte 0xE9 first).

/// How the bytes of a message are turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Latin1,
}

/// What MSH-18 told us, before looking at the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Declared {
    Utf8,
    Latin1,
    /// ASCII, absent, or a charset we do not know.
    Unsure,
}

/// Classify an MSH-18 value. `ASCII` counts as unsure on purpose: systems
/// that declare ASCII routinely send UTF-8 or Latin-1 anyway.
pub(super) fn declared(msh18: Option<&str>) -> Declared {
    let Some(name) = msh18 else {
        return Declared::Unsure;
    };
    let name = name.trim().to_ascii_uppercase();
    match name.as_str() {
        "UNICODE UTF-8" | "UTF-8" | "UTF8" => Declared::Utf8,
        "8859/1" | "ISO-8859-1" | "ISO8859-1" | "LATIN1" | "LATIN-1" => Declared::Latin1,
        _ => Declared::Unsure,
    }
}

impl Encoding {
    /// Pick the decoding for a whole message. A declared Latin-1 is obeyed.
    /// Otherwise UTF-8 if the bytes are valid UTF-8, else Latin-1: Latin-1
    /// never fails and keeps every byte, so a mislabelled message still
    /// parses and nothing is silently replaced by U+FFFD.
    pub(super) fn detect(declared: Declared, bytes: &[u8]) -> Encoding {
        match declared {
            Declared::Latin1 => Encoding::Latin1,
            Declared::Utf8 | Declared::Unsure => {
                if std::str::from_utf8(bytes).is_ok() {
                    Encoding::Utf8
                } else {
                    Encoding::Latin1
                }
            }
        }
    }

    /// Decode one value. In UTF-8 mode only a `\X..\` escape can produce
    /// invalid bytes; that one value then falls back to Latin-1.
    pub(super) fn decode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Utf8 => match std::str::from_utf8(bytes) {
                Ok(s) => s.to_owned(),
                Err(_) => latin1_decode(bytes),
            },
            Encoding::Latin1 => latin1_decode(bytes),
        }
    }

    /// Append `s` encoded. Characters outside Latin-1 become `?` in Latin-1
    /// mode: there is no way to carry them, and a wrong byte is worse.
    pub(super) fn encode_into(self, s: &str, out: &mut Vec<u8>) {
        match self {
            Encoding::Utf8 => out.extend_from_slice(s.as_bytes()),
            Encoding::Latin1 => out.extend(s.chars().map(|c| u8::try_from(c).unwrap_or(b'?'))),
        }
    }
}

fn latin1_decode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let s = Encoding::Latin1.decode(&all);
        assert_eq!(s.chars().count(), 256);
        let mut back = Vec::new();
        Encoding::Latin1.encode_into(&s, &mut back);
        assert_eq!(back, all);
    }

    #[test]
    fn detection_prefers_declared_latin1_then_valid_utf8() {
        let utf8 = "ZZTEST Ren\u{e9}".as_bytes();
        let latin1 = b"ZZTEST Ren\xe9";
        assert_eq!(
            Encoding::detect(declared(Some("8859/1")), utf8),
            Encoding::Latin1
        );
        assert_eq!(Encoding::detect(declared(None), utf8), Encoding::Utf8);
        assert_eq!(Encoding::detect(declared(None), latin1), Encoding::Latin1);
        assert_eq!(
            Encoding::detect(declared(Some("ASCII")), latin1),
            Encoding::Latin1
        );
        // Declared UTF-8 but not: keep the bytes rather than lose them.
        assert_eq!(
            Encoding::detect(declared(Some("UNICODE UTF-8")), latin1),
            Encoding::Latin1
        );
        assert_eq!(declared(Some(" unicode utf-8 ")), Declared::Utf8);
        assert_eq!(declared(Some("ISO IR87")), Declared::Unsure);
    }

    #[test]
    fn latin1_encoding_replaces_what_it_cannot_carry() {
        let mut out = Vec::new();
        Encoding::Latin1.encode_into("\u{e9}\u{20ac}", &mut out);
        assert_eq!(out, b"\xe9?");
    }
}
