//! Whole-message tests on the shapes PMSs really send. Every sample is
//! synthetic: ZZTEST names, MRN 000123, fake addresses.

use super::*;
use jiff::Timestamp;

/// Join segments with CR, the standard terminator.
fn msg(segments: &[&str]) -> Vec<u8> {
    segments.join("\r").into_bytes()
}

fn ids(m: &Message) -> Vec<&str> {
    m.segments().iter().map(|s| s.id.as_str()).collect()
}

const SIU_V23: &[&str] = &[
    "MSH|^~\\&|ZZPMS|ZZCLINIC|CLINIC-RELAY|ZZCLINIC|20250101120000||SIU^S12|MSG0001|P|2.3",
    "SCH|APT0001||||||ROUTINE^Routine visit|NORMAL|30|MIN|^^30^20250115093000 ^20250115100000|||||ZZDOC^ZZTEST^DOC",
    "PID|1||000123^^^ZZCLINIC^MR||ZZTEST^PATIENT||19800101|F|||1 FAKE ST^^TESTVILLE^^00000||^PRN^CP^^^^^5550100",
    "RGS|1",
    "AIG|1||ZZDOC^ZZTEST^DOC",
    "AIL|1||ROOM1^^^ZZCLINIC",
];

#[test]
fn siu_v23_with_only_sch1_and_a_trailing_space() {
    let m = parse(&msg(SIU_V23)).unwrap();
    let t = m.message_type().unwrap();
    assert_eq!(
        (t.code.as_str(), t.trigger.as_str(), t.structure),
        ("SIU", "S12", None)
    );
    assert_eq!(m.version(), Some("2.3"));
    assert_eq!(m.control_id(), Some("MSG0001"));
    assert_eq!(m.sending_application(), Some("ZZPMS"));
    assert_eq!(m.sending_facility(), Some("ZZCLINIC"));
    assert_eq!(m.processing_id(), Some("P"));
    assert_eq!(m.charset(), None);

    let sch = m.segment("SCH").unwrap();
    assert_eq!(sch.text(1), Some("APT0001"));
    assert_eq!(sch.text(2), None);
    assert_eq!(sch.component(7, 2), Some("Routine visit"));
    // Raw value kept: trimming is the mapper's decision.
    assert_eq!(sch.component(11, 4), Some("20250115093000 "));
    assert_eq!(sch.component(11, 5), Some("20250115100000"));
    assert_eq!(sch.component(16, 2), Some("ZZTEST"));

    let pid = m.segment("PID").unwrap();
    assert_eq!(pid.text(3), Some("000123"));
    assert_eq!(pid.component(3, 5), Some("MR"));
    assert_eq!(pid.component(5, 1), Some("ZZTEST"));
    assert_eq!(pid.component(13, 8), Some("5550100"));
}

const SIU_V28: &[&str] = &[
    "MSH|^~\\&|ZZPMS|ZZCLINIC|CLINIC-RELAY|ZZCLINIC|20250101120000+0000||SIU^S12^SIU_S12|MSG0002|P|2.8|||AL|NE||UNICODE UTF-8",
    "SCH|APT0002^ZZPMS|FILL0002^ZZPMS|||||CHECKUP^Check-up^LOCAL||||||||||||||||||Booked^Booked^HL70278",
    "TQ1|1||||||20250115093000+0000|20250115100000+0000",
    "PID|1||000123^^^ZZCLINIC^MR||ZZTEST^PATIENT||19800101|F",
    "PV1|1|O",
    "RGS|1|A",
    "AIS|1|A|CONSULT^Consultation^LOCAL",
    "AIL|1|A|ROOM1^^^ZZCLINIC",
    "AIP|1|A|ZZDOC1^ZZTEST^DOCONE",
    "RGS|2|A",
    "AIS|1|A|XRAY^X-ray^LOCAL",
    "AIL|1|A|ROOM2^^^ZZCLINIC",
    "AIP|1|A|ZZDOC2^ZZTEST^DOCTWO",
    "RGS|3|A",
    "AIS|1|A|FOLLOWUP^Follow-up^LOCAL",
    "AIL|1|A|ROOM3^^^ZZCLINIC",
    "AIP|1|A|ZZDOC3^ZZTEST^DOCTHREE",
];

#[test]
fn siu_v28_with_tq1_and_three_resource_groups() {
    let m = parse(&msg(SIU_V28)).unwrap();
    assert_eq!(
        m.message_type().unwrap().structure.as_deref(),
        Some("SIU_S12")
    );
    assert_eq!(m.charset(), Some("UNICODE UTF-8"));
    assert_eq!(m.encoding(), Encoding::Utf8);
    assert_eq!(
        ids(&m),
        [
            "MSH", "SCH", "TQ1", "PID", "PV1", "RGS", "AIS", "AIL", "AIP", "RGS", "AIS", "AIL",
            "AIP", "RGS", "AIS", "AIL", "AIP"
        ]
    );
    assert_eq!(m.segment("SCH").unwrap().component(25, 1), Some("Booked"));
    assert_eq!(
        m.segment("TQ1").unwrap().text(7),
        Some("20250115093000+0000")
    );

    // Walking the groups in order: each RGS owns the AIS/AIL/AIP after it.
    let mut groups: Vec<Vec<(&str, &str)>> = Vec::new();
    for seg in m.segments() {
        match seg.id.as_str() {
            "RGS" => groups.push(Vec::new()),
            "AIS" | "AIL" | "AIP" => {
                let group = groups.last_mut().unwrap();
                group.push((seg.id.as_str(), seg.text(3).unwrap()));
            }
            _ => {}
        }
    }
    assert_eq!(
        groups,
        [
            vec![("AIS", "CONSULT"), ("AIL", "ROOM1"), ("AIP", "ZZDOC1")],
            vec![("AIS", "XRAY"), ("AIL", "ROOM2"), ("AIP", "ZZDOC2")],
            vec![("AIS", "FOLLOWUP"), ("AIL", "ROOM3"), ("AIP", "ZZDOC3")],
        ]
    );
}

#[test]
fn adt_a40_with_two_pid_mrg_pairs() {
    let m = parse(&msg(&[
        "MSH|^~\\&|ZZPMS|ZZCLINIC|CLINIC-RELAY|ZZCLINIC|20250101120000||ADT^A40^ADT_A39|MSG0003|P|2.5.1",
        "EVN|A40|20250101120000",
        "PID|1||000123^^^ZZCLINIC^MR||ZZTEST^SURVIVOR",
        "MRG|000999^^^ZZCLINIC^MR",
        "PID|1||000124^^^ZZCLINIC^MR||ZZTEST^SURVIVORTWO",
        "MRG|000998^^^ZZCLINIC^MR~OLD77^^^ZZOTHER^MR",
    ]))
    .unwrap();
    let pids: Vec<_> = m
        .segments_named("PID")
        .map(|s| s.text(3).unwrap())
        .collect();
    let mrgs: Vec<_> = m
        .segments_named("MRG")
        .map(|s| s.text(1).unwrap())
        .collect();
    assert_eq!(pids, ["000123", "000124"]);
    assert_eq!(mrgs, ["000999", "000998"]);
    let second = m.segments_named("MRG").nth(1).unwrap();
    let ids: Vec<_> = second
        .repetitions(1)
        .map(|r| (r.text(), r.component(4)))
        .collect();
    assert_eq!(
        ids,
        [
            (Some("000998"), Some("ZZCLINIC")),
            (Some("OLD77"), Some("ZZOTHER"))
        ]
    );
}

#[test]
fn lf_crlf_blank_lines_bom_and_leading_newlines_parse_like_cr() {
    let cr = parse(&msg(SIU_V23)).unwrap();
    let variants = [
        SIU_V23.join("\n"),
        SIU_V23.join("\r\n"),
        SIU_V23.join("\r\n") + "\r\n",
        SIU_V23.join("\r\r\n\n") + "\n  \n",
        format!("\u{feff}\r\n\r\n{}\r", SIU_V23.join("\r")),
    ];
    for v in &variants {
        assert_eq!(parse(v.as_bytes()).unwrap(), cr, "{v:?}");
    }
}

#[test]
fn escaped_delimiters_hex_and_line_breaks() {
    let m = parse(&msg(&[
        "MSH|^~\\&|ZZPMS|ZZCLINIC|||20250101120000||ADT^A08|MSG0004|P|2.5.1",
        "PID|1||000123||ZZTEST\\S\\JUNIOR^ANN\\T\\MARIE",
        "NTE|1||C:\\E\\notes\\E\\x \\X41\\BC line1\\.br\\line2 \\H\\bold\\N\\ \\Z99\\ \\F\\\\R\\",
    ]))
    .unwrap();
    let pid = m.segment("PID").unwrap();
    assert_eq!(pid.component(5, 1), Some("ZZTEST^JUNIOR"));
    assert_eq!(pid.component(5, 2), Some("ANN&MARIE"));
    assert_eq!(
        m.segment("NTE").unwrap().text(3),
        Some("C:\\notes\\x ABC line1\nline2 bold \\Z99\\ |~")
    );
}

/// A fake base64 "PDF": enough to check nothing in the alphabet is mangled.
const PDF_PART_1: &str = "JVBERi0xLjQKJcOkw7zDtsOfCjEgMCBvYmoKPDwvVHlwZS9DYXRhbG9nPj4K+/+/";
const PDF_PART_2: &str = "ZW5kb2JqCnRyYWlsZXIKPDwvUm9vdCAxIDAgUj4+CiUlRU9GCg==";

#[test]
fn oru_with_an_embedded_pdf_split_across_repetitions() {
    let obx5 = format!("^AP^PDF^Base64^{PDF_PART_1}~^AP^PDF^Base64^{PDF_PART_2}");
    let m = parse(&msg(&[
        "MSH|^~\\&|ZZLAB|ZZCLINIC|CLINIC-RELAY|ZZCLINIC|20250101120000||ORU^R01^ORU_R01|MSG0005|P|2.5.1",
        "PID|1||000123^^^ZZCLINIC^MR||ZZTEST^PATIENT",
        "OBR|1||LAB0001|CBC^Blood count^LOCAL|||20250101100000",
        "OBX|1|NM|HGB^Haemoglobin^LOCAL||13.5|g/dL|12-16|N|||F",
        &format!("OBX|2|ED|PDF^Report^LOCAL||{obx5}||||||F"),
    ]))
    .unwrap();
    let ed: Vec<_> = m
        .segments_named("OBX")
        .filter(|obx| obx.text(2) == Some("ED"))
        .collect();
    assert_eq!(ed.len(), 1);
    let pdf: String = ed[0]
        .repetitions(5)
        .filter_map(|r| r.component(5))
        .collect();
    assert_eq!(pdf, format!("{PDF_PART_1}{PDF_PART_2}"));
    assert_eq!(ed[0].component(5, 3), Some("PDF"));
    assert_eq!(ed[0].component(5, 4), Some("Base64"));
}

#[test]
fn oru_without_any_ed_observation() {
    let m = parse(&msg(&[
        "MSH|^~\\&|ZZLAB|ZZCLINIC|||20250101120000||ORU^R01|MSG0006|P|2.3",
        "PID|1||000123",
        "OBR|1||LAB0002|GLU^Glucose",
        "OBX|1|NM|GLU^Glucose||5.4|mmol/L|3.9-5.6|N|||F",
        "OBX|2|ST|COMMENT^Comment||Fasting sample||||||F",
    ]))
    .unwrap();
    assert_eq!(m.segments_named("OBX").count(), 2);
    assert!(m.segments_named("OBX").all(|o| o.text(2) != Some("ED")));
}

#[test]
fn a_multi_megabyte_result_parses_within_the_default_limit() {
    let chunk = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw==".repeat(1_000);
    let reps = vec![format!("^AP^PDF^Base64^{chunk}"); 60].join("~");
    let bytes = msg(&[
        "MSH|^~\\&|ZZLAB|ZZCLINIC|||20250101120000||ORU^R01|MSG0007|P|2.5.1",
        &format!("OBX|1|ED|PDF||{reps}"),
    ]);
    assert!(bytes.len() > 2_000_000);
    let m = parse(&bytes).unwrap();
    let total: usize = m
        .segment("OBX")
        .unwrap()
        .repetitions(5)
        .filter_map(|r| r.component(5))
        .map(str::len)
        .sum();
    assert_eq!(total, chunk.len() * 60);
}

#[test]
fn missing_msh_9_3_and_empty_trailing_fields() {
    let m = parse(b"MSH|^~\\&|ZZPMS|ZZCLINIC|||||ADT^A04|MSG0008|P|2.4||||||\rPID|1||000123||||||||   \rPV1||||\r").unwrap();
    let t = m.message_type().unwrap();
    assert_eq!(
        (t.code.as_str(), t.trigger.as_str(), t.structure),
        ("ADT", "A04", None)
    );
    assert_eq!(m.charset(), None);
    let pid = m.segment("PID").unwrap();
    assert_eq!(pid.text(3), Some("000123"));
    assert_eq!(pid.text(11), Some("   "));
    assert_eq!(pid.text(12), None);
    assert_eq!(m.segment("PV1").unwrap().text(1), None);
    // MSH-1 and MSH-2 are plain text, not split.
    let msh = m.header().unwrap();
    assert_eq!(msh.text(1), Some("|"));
    assert_eq!(msh.text(2), Some("^~\\&"));
    assert_eq!(msh.field(2).unwrap().repetitions.len(), 1);
}

#[test]
fn v27_truncation_character_is_part_of_msh2() {
    let m = parse(b"MSH|^~\\&#|ZZPMS|ZZCLINIC|||||ADT^A04|MSG0009|P|2.7\rNTE|1||a#b\\P\\").unwrap();
    assert_eq!(m.header().unwrap().text(2), Some("^~\\&#"));
    assert_eq!(m.separators().truncation, Some(b'#'));
    assert_eq!(m.segment("NTE").unwrap().text(3), Some("a#b#"));
}

#[test]
fn latin1_declared_in_msh18() {
    let mut bytes = b"MSH|^~\\&|ZZPMS|ZZCLINIC|||||ADT^A04|MSG0010|P|2.5||||||8859/1\rPID|1||000123||ZZTEST^REN".to_vec();
    bytes.extend_from_slice(b"\xe9E\\XE9\\");
    let m = parse(&bytes).unwrap();
    assert_eq!(m.charset(), Some("8859/1"));
    assert_eq!(m.encoding(), Encoding::Latin1);
    assert_eq!(
        m.segment("PID").unwrap().component(5, 2),
        Some("REN\u{e9}E\u{e9}")
    );
}

#[test]
fn utf8_declared_in_msh18() {
    let m = parse(
        "MSH|^~\\&|ZZPMS|ZZCLINIC|||||ADT^A04|MSG0011|P|2.5||||||UNICODE UTF-8\rPID|1||000123||ZZTEST^REN\u{e9}E\\XC3A9\\"
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(m.encoding(), Encoding::Utf8);
    assert_eq!(
        m.segment("PID").unwrap().component(5, 2),
        Some("REN\u{e9}E\u{e9}")
    );
}

#[test]
fn undeclared_charset_falls_back_from_utf8_to_latin1() {
    let utf8 = parse("MSH|^~\\&|||||||ADT^A04|1\rPID|1||||ZZTEST^REN\u{e9}E".as_bytes()).unwrap();
    assert_eq!(
        utf8.segment("PID").unwrap().component(5, 2),
        Some("REN\u{e9}E")
    );
    let latin1 = parse(b"MSH|^~\\&|||||||ADT^A04|1\rPID|1||||ZZTEST^REN\xe9E").unwrap();
    assert_eq!(latin1.encoding(), Encoding::Latin1);
    assert_eq!(
        latin1.segment("PID").unwrap().component(5, 2),
        Some("REN\u{e9}E")
    );
}

#[test]
fn errors_name_positions_and_never_values() {
    assert_eq!(parse(b""), Err(ParseError::NotHl7));
    assert_eq!(parse(b"PID|1||000123\rMSH|^~\\&"), Err(ParseError::NotHl7));
    assert_eq!(parse(b"\x0bMSH|^~\\&"), Err(ParseError::NotHl7));
    assert_eq!(
        parse_with_limit(&msg(SIU_V23), 100),
        Err(ParseError::TooLarge {
            len: msg(SIU_V23).len(),
            limit: 100
        })
    );
    let bad_id = msg(&["MSH|^~\\&|||||||ADT^A04|1", "PID|1", "pv1|ZZSECRET"]);
    let err = parse(&bad_id).unwrap_err();
    assert_eq!(err, ParseError::BadSegmentId { index: 3 });
    assert!(!err.to_string().contains("ZZSECRET"));
    assert!(!err.to_string().contains("pv1"));
    assert_eq!(
        parse(&msg(&["MSH|^~\\&|||||||ADT^A04|1", "PIDS|ZZSECRET"])),
        Err(ParseError::BadSegmentId { index: 2 })
    );
    assert_eq!(
        parse(b"MSH|^~\\&|ZZSECRET||||||^A04|1"),
        Err(ParseError::MissingField {
            segment: "MSH",
            field: 9
        })
    );
    assert_eq!(
        parse(b"MSH|^~\\&|ZZSECRET||||||ADT^A04"),
        Err(ParseError::MissingField {
            segment: "MSH",
            field: 10
        })
    );
    assert!(matches!(
        parse(b"MSH"),
        Err(ParseError::BadSeparators { field: 1, .. })
    ));
}

// --- acknowledgements ---------------------------------------------------

fn now() -> Timestamp {
    "2025-01-02T03:04:05Z".parse().unwrap()
}

fn ack_of(original: &Message, code: AckCode, error: Option<&AckError>) -> Message {
    let bytes = ack(
        original,
        code,
        error,
        now(),
        "CLINIC-RELAY",
        "ZZRELAY",
        "ACK0001",
    );
    assert!(bytes.ends_with(b"\r"));
    parse(&bytes).unwrap()
}

#[test]
fn ack_aa_structure() {
    let original = parse(&msg(SIU_V28)).unwrap();
    let a = ack_of(&original, AckCode::Accept, None);
    assert_eq!(ids(&a), ["MSH", "MSA"]);
    let msh = a.header().unwrap();
    assert_eq!(a.sending_application(), Some("CLINIC-RELAY"));
    assert_eq!(a.sending_facility(), Some("ZZRELAY"));
    assert_eq!(a.receiving_application(), Some("ZZPMS"));
    assert_eq!(a.receiving_facility(), Some("ZZCLINIC"));
    assert_eq!(msh.text(7), Some("20250102030405+0000"));
    let t = a.message_type().unwrap();
    assert_eq!(
        (t.code.as_str(), t.trigger.as_str(), t.structure.as_deref()),
        ("ACK", "S12", Some("ACK"))
    );
    assert_eq!(a.control_id(), Some("ACK0001"));
    assert_eq!(a.processing_id(), Some("P"));
    assert_eq!(a.version(), Some("2.8"));
    assert_eq!(a.charset(), Some("UNICODE UTF-8"));
    let msa = a.segment("MSA").unwrap();
    assert_eq!(msa.text(1), Some("AA"));
    assert_eq!(msa.text(2), Some("MSG0002"));
    assert_eq!(msa.text(3), None);
}

#[test]
fn ack_ae_carries_err_in_v23_and_v25_forms_with_escaped_text() {
    let original = parse(&msg(SIU_V23)).unwrap();
    let error = AckError::new(101, "PID-3 missing | see ^docs^ & retry ~ C:\\x").at("PID", 3);
    let a = ack_of(&original, AckCode::Error, Some(&error));
    assert_eq!(ids(&a), ["MSH", "MSA", "ERR"]);
    assert_eq!(a.version(), Some("2.3"));
    assert_eq!(a.charset(), None);
    let msa = a.segment("MSA").unwrap();
    assert_eq!(msa.text(1), Some("AE"));
    assert_eq!(msa.text(2), Some("MSG0001"));
    assert_eq!(msa.text(3), Some(error.text.as_str()));
    let err = a.segment("ERR").unwrap();
    // ERR-1, ELD: PID^1^3^101&Required field missing&HL70357
    assert_eq!(err.component(1, 1), Some("PID"));
    assert_eq!(err.component(1, 2), Some("1"));
    assert_eq!(err.component(1, 3), Some("3"));
    assert_eq!(err.value(1, 0, 4, 1), Some("101"));
    assert_eq!(err.value(1, 0, 4, 2), Some("Required field missing"));
    assert_eq!(err.value(1, 0, 4, 3), Some("HL70357"));
    // ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 user message.
    assert_eq!(err.component(2, 1), Some("PID"));
    assert_eq!(err.component(2, 2), Some("1"));
    assert_eq!(err.component(2, 3), Some("3"));
    assert_eq!(err.component(3, 1), Some("101"));
    assert_eq!(err.component(3, 2), Some("Required field missing"));
    assert_eq!(err.component(3, 3), Some("HL70357"));
    assert_eq!(err.text(4), Some("E"));
    assert_eq!(err.text(8), Some(error.text.as_str()));

    let raw = ack(
        &original,
        AckCode::Error,
        Some(&error),
        now(),
        "A",
        "F",
        "1",
    );
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.contains("PID-3 missing \\F\\ see \\S\\docs\\S\\ \\T\\ retry \\R\\ C:\\E\\x"));
}

#[test]
fn ack_ar_for_a_broken_body_still_echoes_the_header() {
    let bytes = msg(&[SIU_V23[0], "SCH|APT0001", "bad|ZZSECRET"]);
    let err = parse(&bytes).unwrap_err();
    let header = parse_header(&bytes).unwrap();
    let a = ack_of(&header, AckCode::Reject, Some(&AckError::from(&err)));
    let msa = a.segment("MSA").unwrap();
    assert_eq!(msa.text(1), Some("AR"));
    assert_eq!(msa.text(2), Some("MSG0001"));
    let e = a.segment("ERR").unwrap();
    assert_eq!(e.component(3, 1), Some("100"));
    assert_eq!(e.text(2), None, "no location for an unreadable segment id");
    assert!(!String::from_utf8_lossy(&ack(
        &header,
        AckCode::Reject,
        Some(&AckError::from(&err)),
        now(),
        "A",
        "F",
        "1"
    ))
    .contains("ZZSECRET"));
}

#[test]
fn ack_unparsed_has_an_empty_msa2() {
    let err = parse(b"garbage").unwrap_err();
    let bytes = ack_unparsed(
        &AckError::from(&err),
        now(),
        "CLINIC-RELAY",
        "ZZRELAY",
        "ACK0002",
    );
    let a = parse(&bytes).unwrap();
    assert_eq!(ids(&a), ["MSH", "MSA", "ERR"]);
    assert_eq!(a.receiving_application(), None);
    assert_eq!(a.version(), Some("2.5.1"));
    let msa = a.segment("MSA").unwrap();
    assert_eq!(msa.text(1), Some("AR"));
    assert_eq!(msa.text(2), None);
    assert_eq!(a.segment("ERR").unwrap().component(3, 1), Some("100"));
}

#[test]
fn ack_missing_field_error_has_a_location() {
    let bytes = b"MSH|^~\\&|ZZPMS|ZZCLINIC|||||ADT^A04||T|2.4";
    let err = parse(bytes).unwrap_err();
    let header = parse_header(bytes).unwrap();
    let a = ack_of(&header, AckCode::Reject, Some(&AckError::from(&err)));
    assert_eq!(a.processing_id(), Some("T"));
    assert_eq!(a.segment("MSA").unwrap().text(2), None);
    let e = a.segment("ERR").unwrap();
    assert_eq!(
        (e.component(2, 1), e.component(2, 3)),
        (Some("MSH"), Some("10"))
    );
    assert_eq!(e.component(3, 1), Some("101"));
}

#[test]
fn ack_to_a_latin1_sender_is_latin1() {
    let original =
        parse(b"MSH|^~\\&|ZZPMS\xe9|ZZCLINIC|||||ADT^A04|MSG0012|P|2.5||||||8859/1").unwrap();
    let bytes = ack(
        &original,
        AckCode::Accept,
        None,
        now(),
        "CLINIC-RELAY",
        "ZZRELAY",
        "ACK0003",
    );
    assert!(bytes.windows(13).any(|w| w == b"|ZZPMS\xe9|ZZCLI"));
    let a = parse(&bytes).unwrap();
    assert_eq!(a.charset(), Some("8859/1"));
    assert_eq!(a.receiving_application(), Some("ZZPMS\u{e9}"));
}

#[test]
fn ack_warning_with_accept() {
    let original = parse(&msg(SIU_V23)).unwrap();
    let warn = AckError::new(207, "stored, but the reminder could not be scheduled");
    let a = ack_of(&original, AckCode::Accept, Some(&warn));
    assert_eq!(a.segment("ERR").unwrap().text(4), Some("W"));
    assert_eq!(a.segment("MSA").unwrap().text(1), Some("AA"));
}
