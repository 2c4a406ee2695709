//! Property tests: the parser never panics, whatever it is fed, and what the
//! encoder writes the parser reads back value for value.

use super::charset;
use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// Nested values with trailing empties removed at every level: the wire
/// format cannot tell `a^` from `a`, so neither should the comparison.
type Shape = Vec<Vec<Vec<String>>>;

fn trim_end<T>(mut items: Vec<T>, is_empty: impl Fn(&T) -> bool) -> Vec<T> {
    while items.last().is_some_and(&is_empty) {
        items.pop();
    }
    items
}

/// CR cannot survive a round trip as itself: it is written as `\.br\`.
fn line_breaks(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

fn shape(field: &Field) -> Shape {
    let reps = field.repetitions.iter().map(|r| {
        let comps = r.components.iter().map(|c| {
            let subs = c.subcomponents.iter().map(|s| line_breaks(s)).collect();
            trim_end(subs, String::is_empty)
        });
        trim_end(comps.collect(), Vec::is_empty)
    });
    trim_end(reps.collect(), Vec::is_empty)
}

/// Shapes of fields `from..` of a segment (1-based), trailing empties gone.
fn shapes(fields: &[Field], from: usize) -> Vec<Shape> {
    let rest = fields.get(from - 1..).unwrap_or_default();
    trim_end(rest.iter().map(shape).collect(), Vec::is_empty)
}

fn is_header(id: &str) -> bool {
    matches!(id, "MSH" | "BHS" | "FHS")
}

fn value() -> impl Strategy<Value = String> {
    // Separators, the escape character, line breaks, the v2.7 truncation
    // character, Latin-1, BMP and astral characters, and spaces.
    "[a-zA-Z0-9 |^~&\\\\\n#\u{e9}\u{20ac}\u{1F600}]{0,8}"
}

fn field() -> impl Strategy<Value = Field> {
    vec(vec(vec(value(), 1..3), 1..4), 0..3).prop_map(|reps| Field {
        repetitions: reps
            .into_iter()
            .map(|comps| Repetition {
                components: comps
                    .into_iter()
                    .map(|subs| Component {
                        subcomponents: subs.into(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn body_segment() -> impl Strategy<Value = (String, Vec<Field>)> {
    (
        select(&["PID", "PV1", "OBX", "NTE", "ZZ1", "AIS"][..]).prop_map(str::to_owned),
        vec(field(), 0..6),
    )
}

/// Bits of HL7 syntax, so that random input reaches the deeper code paths.
const TOKENS: &[&[u8]] = &[
    b"MSH",
    b"PID",
    b"BHS",
    b"zz1",
    b"|",
    b"|",
    b"^",
    b"~",
    b"&",
    b"\\",
    b"\\",
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"A",
    b"1",
    b"X",
    b"XE9",
    b"X41",
    b"XC3A9",
    b"X0D",
    b".br",
    b"H",
    b"N",
    b"F",
    b"S",
    b"T",
    b"R",
    b"E",
    b"P",
    b"#",
    b"\xe9",
    b"\xff",
    b"\x00",
    b"\xef\xbb\xbf",
    "\u{e9}".as_bytes(),
    b"UNICODE UTF-8",
    b"8859/1",
];

const PREFIXES: &[&[u8]] = &[
    b"",
    b"MSH|^~\\&|",
    b"MSH|^~\\&|||||||ADT^A01|1|",
    b"MSH|^~\\&#|||||||ADT|1\r",
];

fn token_soup(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(select(TOKENS), 0..max).prop_map(|tokens| tokens.concat())
}

/// Mostly well-formed segments with noisy contents, so that many inputs
/// parse and the decoding and re-encoding paths get exercised too.
fn noisy_segments() -> impl Strategy<Value = Vec<u8>> {
    let segment = (
        select(&["PID", "OBX", "ZZ1", "MSH", "BHS", "pid"][..]),
        token_soup(16),
    );
    let line_end = select(&["\r", "\n", "\r\n", "\r\r", "\n \n"][..]);
    (vec((segment, line_end), 0..6), token_soup(16)).prop_map(|(segments, header_rest)| {
        let mut out = b"MSH|^~\\&|||||||ADT^A01|1|".to_vec();
        out.extend_from_slice(
            &header_rest
                .iter()
                .copied()
                .filter(|b| !matches!(b, b'\r' | b'\n'))
                .collect::<Vec<_>>(),
        );
        for ((id, body), end) in segments {
            out.extend_from_slice(end.as_bytes());
            out.extend_from_slice(id.as_bytes());
            out.push(b'|');
            out.extend(body.iter().copied().filter(|b| !matches!(b, b'\r' | b'\n')));
        }
        out
    })
}

fn hl7_noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (select(PREFIXES), token_soup(80)).prop_map(|(prefix, soup)| [prefix, &soup].concat()),
        noisy_segments(),
    ]
}

/// Re-encode a parsed message with the builder.
fn reencode(m: &Message) -> Vec<u8> {
    let mut b = MessageBuilder::new();
    for seg in m.segments() {
        let mut s = SegmentBuilder::new(&seg.id);
        let first = if is_header(&seg.id) { 3 } else { 1 };
        for (i, f) in seg.fields.iter().enumerate().skip(first - 1) {
            s.set_field(i + 1, f.clone());
        }
        b.push(s);
    }
    b.build().unwrap()
}

fn same_values(a: &Message, b: &Message) {
    assert_eq!(a.segments().len(), b.segments().len());
    for (x, y) in a.segments().iter().zip(b.segments()) {
        assert_eq!(x.id, y.id);
        let from = if is_header(&x.id) { 3 } else { 1 };
        assert_eq!(shapes(&x.fields, from), shapes(&y.fields, from));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
        let _ = parse_header(&bytes);
        let _ = parse_with_limit(&bytes, 64);
    }

    #[test]
    fn parse_never_panics_after_an_msh_prefix(bytes in vec(any::<u8>(), 0..512)) {
        let mut input = b"MSH|^~\\&|".to_vec();
        input.extend_from_slice(&bytes);
        let _ = parse(&input);
        let _ = parse_header(&input);
    }

    /// HL7-shaped noise: whatever parses can be acknowledged and re-encoded.
    #[test]
    fn hl7_shaped_noise(input in hl7_noise()) {
        if let Ok(header) = parse_header(&input) {
            let err = AckError::new(207, "noise");
            let bytes = ack(&header, AckCode::Reject, Some(&err), jiff::Timestamp::UNIX_EPOCH, "A", "F", "1");
            // The reply mirrors the encoding the original was read in. A
            // Latin-1 reply can also be valid UTF-8 (Latin-1 "ï»¿" is the
            // UTF-8 BOM), so read it the way its Latin-1 sender will.
            let bytes = if header.encoding() == super::charset::Encoding::Latin1 {
                bytes.iter().map(|&b| char::from(b)).collect::<String>().into_bytes()
            } else {
                bytes
            };
            let a = parse(&bytes).unwrap();
            prop_assert_eq!(a.segment("MSA").and_then(|s| s.text(2)), header.control_id());
        }
        // Re-encoding writes UTF-8, so skip messages that declare Latin-1.
        if let Ok(m) = parse(&input) {
            if charset::declared(m.charset()) != charset::Declared::Latin1 {
                same_values(&m, &parse(&reencode(&m)).unwrap());
            }
        }
    }

    /// Values full of separators, backslashes and non-ASCII survive
    /// encode → parse unchanged.
    #[test]
    fn encode_then_parse_round_trips(
        header in vec(field(), 0..6),
        body in vec(body_segment(), 0..6),
    ) {
        let mut msh = SegmentBuilder::new("MSH");
        for (i, f) in header.iter().enumerate() {
            msh.set_field(i + 3, f.clone());
        }
        msh.set_component(9, 1, "ADT").set_component(9, 2, "A01").set(10, "ID^|~1");
        let mut b = MessageBuilder::new();
        b.push(msh);
        for (id, fields) in &body {
            let mut s = SegmentBuilder::new(id);
            for (i, f) in fields.iter().enumerate() {
                s.set_field(i + 1, f.clone());
            }
            b.push(s);
        }
        let m = parse(&b.build().unwrap()).unwrap();

        prop_assert_eq!(m.control_id(), Some("ID^|~1"));
        let msh = m.header().unwrap();
        // MSH-3..MSH-8 as generated; MSH-9 and MSH-10 follow, so nothing
        // inside this window is trimmed.
        let expected: Vec<Shape> = header.iter().map(shape).collect();
        let actual = shapes(&msh.fields, 3);
        prop_assert_eq!(actual.get(..expected.len()), Some(expected.as_slice()));
        prop_assert_eq!(m.segments().len(), body.len() + 1);
        for ((id, fields), seg) in body.iter().zip(m.segments().iter().skip(1)) {
            prop_assert_eq!(id, &seg.id);
            let expected: Vec<Shape> = trim_end(fields.iter().map(shape).collect(), Vec::is_empty);
            prop_assert_eq!(shapes(&seg.fields, 1), expected);
        }
    }
}
