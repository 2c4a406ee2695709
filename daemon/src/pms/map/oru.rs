//! ORU^R01 and MDM^T01–T11: result documents. What we deliver to patients
//! is a PDF: an `ED` (or `RP`) observation that is a PDF, or a CDA level-1
//! document that wraps one. Other observations (numbers, text, CDA without a
//! PDF, e-mail bodies, metadata) are acknowledged and left alone.
//!
//! A result that the sender cancels or deletes is **withdrawn**: the stored
//! record keeps its identity (order number), loses its PDF and is marked so
//! that it is never delivered afterwards.

use super::cda::{self, Decode};
use super::fields::{self, clean, parse_dtm};
use super::{MapContext, Rejection};
use crate::commands::Command;
use crate::model::{LabResult, Patient, ResultStatus};
use crate::pms::hl7::{AckError, Message, Repetition, Segment};
use tracing::info;

/// MDM triggers. T01/T03/T05/T07/T09 notify without content (nothing to
/// store unless they carry a PDF after all); T02/T04/T06/T08/T10 carry the
/// document; T11 cancels it.
pub const MDM_TRIGGERS: &[&str] = &[
    "T01", "T02", "T03", "T04", "T05", "T06", "T07", "T08", "T09", "T10", "T11",
];

/// ORC-1 order control codes (table 0119) that cancel the order: CA cancel
/// request, OC order cancelled, CR cancelled as requested.
const CANCELLING_ORDER_CONTROL: &[&str] = &["CA", "OC", "CR"];

/// OBX-11 / OBR-25 status codes (tables 0085/0123) that take a result back:
/// D deleted, W wrong (e.g. sent for the wrong patient), X cancelled or
/// cannot be obtained.
const WITHDRAWING_STATUS: &[&str] = &["D", "W", "X"];

pub fn document(
    msg: &Message,
    trigger: &str,
    ctx: &MapContext<'_>,
) -> Result<Vec<Command>, Rejection> {
    let pid = msg
        .segment("PID")
        .ok_or_else(|| Rejection::missing("PID", 3))?;
    let observations: Vec<(usize, &Segment)> = msg
        .segments_named("OBX")
        .enumerate()
        .map(|(i, obx)| (i + 1, obx))
        .filter(|(_, obx)| {
            clean(obx.text(2))
                .is_some_and(|t| t.eq_ignore_ascii_case("ED") || t.eq_ignore_ascii_case("RP"))
        })
        .collect();
    let status_code = observations
        .iter()
        .find_map(|(_, obx)| clean(obx.text(11)))
        .or_else(|| msg.segment("OBR").and_then(|obr| clean(obr.text(25))))
        .unwrap_or("F")
        .to_ascii_uppercase();

    if let Some(why) = withdrawal(msg, trigger, &status_code) {
        let (order_number, _) = order_number(msg).ok_or_else(|| Rejection::missing("OBR", 3))?;
        let patient = fields::patient_from_pid(pid, ctx)?;
        info!(
            message_type = trigger,
            reason = why,
            "result document withdrawn by the sender; it will not be delivered"
        );
        let result = withdrawn(order_number, &patient, &status_code, ctx);
        return Ok(vec![
            Command::UpdatePatientFromContext(Box::new(patient)),
            Command::UpsertResult(Box::new(result)),
        ]);
    }

    // An MDM^T10 that gives the replaced document its own number (TXA-13,
    // parent document) takes that one back, whatever else it carries.
    let replaced = (trigger == "T10").then(|| replaced_parent(msg)).flatten();

    let mut commands = Vec::new();
    if !observations.is_empty() {
        let (order_number, _) = order_number(msg).ok_or_else(|| Rejection::missing("OBR", 3))?;
        let deliverable = ctx
            .config
            .deliverable_statuses
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&status_code));
        // Not deliverable (e.g. preliminary): the final one will follow.
        if deliverable {
            if let Some(pdf) = find_pdf(&observations, ctx.config.max_pdf_bytes)? {
                let patient = fields::patient_from_pid(pid, ctx)?;
                let observed_at = observations
                    .iter()
                    .find_map(|(_, obx)| clean(obx.component(14, 1)))
                    .or_else(|| {
                        msg.segment("OBR")
                            .and_then(|obr| clean(obr.component(7, 1)))
                    })
                    .and_then(|v| parse_dtm(v, &ctx.config.time_zone));
                let result = LabResult {
                    order_number,
                    patient: patient.id,
                    status: ResultStatus::from_hl7(&status_code),
                    observed_at,
                    received_at: ctx.now,
                    version: 1,
                    pdf,
                    delivered: false,
                    withdrawn: false,
                    release_code: release_code(msg),
                };
                commands.push(Command::UpdatePatientFromContext(Box::new(patient)));
                commands.push(Command::UpsertResult(Box::new(result)));
            }
        }
    }
    if let Some(parent) = replaced {
        let patient = fields::patient_from_pid(pid, ctx)?;
        info!(
            message_type = trigger,
            "replaced document (TXA-13) withdrawn; it will not be delivered"
        );
        let result = withdrawn(parent, &patient, &status_code, ctx);
        if commands.is_empty() {
            commands.push(Command::UpdatePatientFromContext(Box::new(patient)));
        }
        commands.push(Command::UpsertResult(Box::new(result)));
    }
    Ok(commands)
}

/// Why the message takes a result back, as a position (never a value).
fn withdrawal(msg: &Message, trigger: &str, status: &str) -> Option<&'static str> {
    if trigger == "T11" {
        return Some("MDM^T11");
    }
    let order_control = msg
        .segment("ORC")
        .and_then(|orc| clean(orc.text(1)))
        .map(str::to_ascii_uppercase);
    if order_control.is_some_and(|c| CANCELLING_ORDER_CONTROL.contains(&c.as_str())) {
        return Some("ORC-1");
    }
    WITHDRAWING_STATUS
        .contains(&status)
        .then_some("OBX-11/OBR-25")
}

/// The stored form of a withdrawal: same identity, no content.
fn withdrawn(
    order_number: String,
    patient: &Patient,
    status_code: &str,
    ctx: &MapContext<'_>,
) -> LabResult {
    LabResult {
        order_number,
        patient: patient.id,
        status: ResultStatus::from_hl7(status_code),
        observed_at: None,
        received_at: ctx.now,
        version: 1,
        pdf: Vec::new(),
        delivered: false,
        withdrawn: true,
        release_code: None,
    }
}

/// The observation identifier (OBX-3.1) of the one-time code a patient
/// proves their identity with (`results.proof = "code"`), the code in
/// OBX-5: a local code, since LOINC has none for it.
pub const RELEASE_CODE_ID: &str = "ZRC";

/// The one-time release code the sender put on the result, if any (at most
/// 64 characters; it is sealed with the result and never logged).
fn release_code(msg: &Message) -> Option<String> {
    msg.segments_named("OBX")
        .filter(|obx| {
            clean(obx.component(3, 1)).is_some_and(|id| id.eq_ignore_ascii_case(RELEASE_CODE_ID))
        })
        .find_map(|obx| clean(obx.text(5)))
        .filter(|c| c.len() <= 64)
        .map(str::to_owned)
}

/// The filler order number (ORC-3/OBR-3), else the placer's (ORC-2/OBR-2);
/// for MDM the unique document number (TXA-12). The flag says whether it is
/// the document number.
fn order_number(msg: &Message) -> Option<(String, bool)> {
    let from =
        |seg: &str, field: usize| msg.segment(seg).and_then(|s| clean(s.component(field, 1)));
    from("ORC", 3)
        .or_else(|| from("OBR", 3))
        .or_else(|| from("ORC", 2))
        .or_else(|| from("OBR", 2))
        .map(|n| (n.to_owned(), false))
        .or_else(|| from("TXA", 12).map(|n| (n.to_owned(), true)))
}

/// TXA-13 (parent document number) of a replacement that is keyed by its own
/// TXA-12, when the two differ.
fn replaced_parent(msg: &Message) -> Option<String> {
    let (own, is_document_number) = order_number(msg)?;
    if !is_document_number {
        return None;
    }
    let parent = msg.segment("TXA").and_then(|t| clean(t.component(13, 1)))?;
    (parent != own).then(|| parent.to_owned())
}

/// What an observation says it holds (ED-2/ED-3, or RP-3/RP-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    Pdf,
    /// No type and subtype: older senders; treated as a PDF as before.
    Nothing,
    /// Anything else: XML/CDA, text, HTML, images, mail bodies.
    Other,
}

/// One ED/RP observation: its position (the n-th OBX), what it declares,
/// its data (every repetition, in order), and whether the data is base64.
struct Part {
    position: usize,
    declared: Declared,
    data: String,
    base64: bool,
}

fn part(position: usize, obx: &Segment) -> Part {
    let is_rp = clean(obx.text(2)).is_some_and(|t| t.eq_ignore_ascii_case("RP"));
    // ED: source^type^subtype^encoding^data. RP: pointer^application^type^subtype.
    let (type_at, subtype_at, data_at) = if is_rp { (3, 4, 1) } else { (2, 3, 5) };
    let first: Option<&Repetition> = obx.repetitions(5).next();
    let type_ = first.and_then(|r| clean(r.component(type_at)));
    let subtype = first.and_then(|r| clean(r.component(subtype_at)));
    let declared = match (type_, subtype) {
        (None, None) => Declared::Nothing,
        (_, Some(s)) if s.eq_ignore_ascii_case("PDF") => Declared::Pdf,
        (Some(t), _) if t.eq_ignore_ascii_case("application/pdf") => Declared::Pdf,
        _ => Declared::Other,
    };
    let encoding = (!is_rp)
        .then(|| first.and_then(|r| clean(r.component(4))))
        .flatten();
    let base64 = encoding.is_none_or(|e| e.eq_ignore_ascii_case("Base64"));
    let mut data = String::new();
    for rep in obx.repetitions(5) {
        // Continuation repetitions often carry only the data.
        let chunk = rep
            .component(data_at)
            .or_else(|| rep.component(1))
            .unwrap_or_default();
        data.push_str(chunk);
    }
    Part {
        position,
        declared,
        data,
        base64,
    }
}

fn too_large(max_bytes: usize) -> Rejection {
    Rejection::content(
        AckError::new(
            102,
            format!("OBX-5: document larger than the limit of {max_bytes} bytes"),
        )
        .at("OBX", 5),
    )
}

fn decode_error(e: Decode, max_bytes: usize) -> Rejection {
    match e {
        Decode::NotBase64 => Rejection::invalid("OBX", 5, "the ED data is not valid base64"),
        Decode::TooLarge => too_large(max_bytes),
    }
}

/// The message's document. PDF observations come first: consecutive ones
/// are one PDF split over several OBX (a part that starts a new PDF, base64
/// `JVBERi0` = `%PDF-`, begins the next). The first PDF wins; later PDFs
/// and observations that are not PDFs are ignored with a log line. Failing
/// that, a CDA that wraps a PDF. No document and a PDF observation that is
/// broken: the first error (AE). No document and nothing claimed to be
/// one: `None` (AA, nothing stored).
fn find_pdf(
    observations: &[(usize, &Segment)],
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, Rejection> {
    let parts: Vec<Part> = observations
        .iter()
        .map(|(position, obx)| part(*position, obx))
        .collect();
    let b64_limit = max_bytes.saturating_mul(4) / 3 + 4;

    // PDF observations, grouped into documents.
    let mut groups: Vec<(usize, String)> = Vec::new();
    for p in parts.iter().filter(|p| p.declared != Declared::Other) {
        let text: String = p.data.chars().filter(|c| !c.is_whitespace()).collect();
        match groups.last_mut() {
            Some((_, open)) if !text.starts_with("JVBERi0") => open.push_str(&text),
            _ => groups.push((p.position, text)),
        }
        if groups.last().is_some_and(|(_, g)| g.len() > b64_limit) {
            return Err(too_large(max_bytes));
        }
    }
    let mut first_error: Option<Rejection> = None;
    let mut found: Option<Vec<u8>> = None;
    for (position, text) in &groups {
        let decoded = cda::base64(text.as_bytes(), max_bytes)
            .map_err(|e| decode_error(e, max_bytes))
            .and_then(|bytes| {
                if bytes.starts_with(b"%PDF-") {
                    Ok(bytes)
                } else {
                    Err(Rejection::invalid("OBX", 5, "the ED data is not a PDF"))
                }
            });
        match (decoded, &found) {
            (Ok(pdf), None) => found = Some(pdf),
            (Ok(_), Some(_)) => {
                info!(obx = position, "a further PDF in the same message ignored");
            }
            (Err(e), _) => {
                info!(obx = position, reason = %crate::logging::clean(&e.error.text), "ED observation that is not a usable PDF ignored");
                first_error.get_or_insert(e);
            }
        }
    }
    if found.is_some() {
        return Ok(found);
    }

    // Other observations: a CDA level-1 document may wrap the PDF.
    for p in parts.iter().filter(|p| p.declared == Declared::Other) {
        let bytes = if p.base64 {
            match cda::base64(p.data.as_bytes(), max_bytes.saturating_mul(2)) {
                Ok(b) => b,
                Err(_) => {
                    info!(
                        obx = p.position,
                        "ED observation that is not a PDF ignored (not base64)"
                    );
                    continue;
                }
            }
        } else {
            p.data.as_bytes().to_vec()
        };
        if bytes.starts_with(b"%PDF-") && bytes.len() <= max_bytes {
            // Declared as something else, but it is a PDF.
            return Ok(Some(bytes));
        }
        match cda::pdf_in_cda(&bytes, max_bytes) {
            Some(Ok(pdf)) => return Ok(Some(pdf)),
            Some(Err(e)) => {
                let e = decode_error(e, max_bytes);
                info!(obx = p.position, reason = %crate::logging::clean(&e.error.text), "PDF inside a CDA document not usable");
                first_error.get_or_insert(e);
            }
            None => {
                info!(
                    obx = p.position,
                    "ED observation that is not a PDF (and wraps none) ignored"
                );
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pms::hl7::parse;
    use base64::Engine as _;

    const PDF: &[u8] = b"%PDF-1.4\n% synthetic ZZTEST document\n%%EOF\n";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn obx_segments(lines: &[String]) -> Message {
        let mut all = vec![
            "MSH|^~\\&|ZZLAB|ZZCLINIC|||20261125093000||ORU^R01|T1|P|2.5.1".to_owned(),
            "PID|1||000123^^^ZZHOSP^MR||ZZTEST^ANN".to_owned(),
        ];
        all.extend(lines.iter().cloned());
        parse(all.join("\r").as_bytes()).unwrap()
    }

    fn pdf_of(msg: &Message, max: usize) -> Result<Option<Vec<u8>>, Rejection> {
        let obs: Vec<(usize, &Segment)> = msg
            .segments_named("OBX")
            .enumerate()
            .map(|(i, s)| (i + 1, s))
            .collect();
        find_pdf(&obs, max)
    }

    fn cda(pdf: &[u8]) -> String {
        format!(
            "<ClinicalDocument xmlns=\"urn:hl7-org:v3\"><title>ZZTEST</title><component><nonXMLBody>\
             <text mediaType=\"application/pdf\" representation=\"B64\">{}</text></nonXMLBody></component></ClinicalDocument>",
            b64(pdf)
        )
    }

    #[test]
    fn a_pdf_next_to_cda_xml_without_one_is_the_document() {
        let xml = "<ClinicalDocument><structuredBody>ZZTEST</structuredBody></ClinicalDocument>";
        let m = obx_segments(&[
            format!(
                "OBX|1|ED|CDA||^TEXT^XML^Base64^{}||||||F",
                b64(xml.as_bytes())
            ),
            format!("OBX|2|ED|PDF||^AP^PDF^Base64^{}||||||F", b64(PDF)),
            "OBX|3|ED|MAIL||^TEXT^PLAIN^A^ZZTEST mail body||||||F".to_owned(),
        ]);
        assert_eq!(pdf_of(&m, 1 << 20).unwrap(), Some(PDF.to_vec()));
    }

    #[test]
    fn a_cda_that_wraps_a_pdf_yields_it() {
        let m = obx_segments(&[format!(
            "OBX|1|ED|CDA||^TEXT^XML^Base64^{}||||||F",
            b64(cda(PDF).as_bytes())
        )]);
        assert_eq!(pdf_of(&m, 1 << 20).unwrap(), Some(PDF.to_vec()));
        // RP with the data in RP-1 and the type in RP-3/RP-4.
        let m = obx_segments(&[format!(
            "OBX|1|RP|CDA||{}^^application^x-hl7-cda-level-one+xml||||||F",
            b64(cda(PDF).as_bytes())
        )]);
        assert_eq!(pdf_of(&m, 1 << 20).unwrap(), Some(PDF.to_vec()));
    }

    #[test]
    fn only_non_pdf_observations_store_nothing_and_are_not_an_error() {
        let m = obx_segments(&[
            "OBX|1|ED|MAIL||^TEXT^PLAIN^A^ZZTEST mail body||||||F".to_owned(),
            format!("OBX|2|ED|CDA||^TEXT^XML^Base64^{}||||||F", b64(b"<x/>")),
        ]);
        assert_eq!(pdf_of(&m, 1 << 20).unwrap(), None);
    }

    #[test]
    fn a_broken_pdf_alone_is_still_ae_but_not_next_to_a_good_one() {
        let bad = "OBX|1|ED|PDF||^AP^PDF^Base64^aGVsbG8gd29ybGQ=||||||F".to_owned();
        let m = obx_segments(std::slice::from_ref(&bad));
        let e = pdf_of(&m, 1 << 20).unwrap_err();
        assert_eq!(e.error.text, "OBX-5: the ED data is not a PDF");
        let m = obx_segments(&[
            bad,
            format!("OBX|2|ED|PDF||^application^pdf^Base64^{}||||||F", b64(PDF)),
        ]);
        assert_eq!(pdf_of(&m, 1 << 20).unwrap(), Some(PDF.to_vec()));
        // Two PDFs: the first one wins.
        let other = b"%PDF-1.7\n% second ZZTEST\n%%EOF\n";
        let m = obx_segments(&[
            format!("OBX|1|ED|PDF||^AP^PDF^Base64^{}||||||F", b64(PDF)),
            format!("OBX|2|ED|PDF||^AP^PDF^Base64^{}||||||F", b64(other)),
        ]);
        assert_eq!(pdf_of(&m, 1 << 20).unwrap(), Some(PDF.to_vec()));
        // A PDF larger than the limit.
        let m = obx_segments(&[format!("OBX|1|ED|PDF||^AP^PDF^Base64^{}||||||F", b64(PDF))]);
        assert_eq!(pdf_of(&m, 10).unwrap_err().error.code, 102);
    }

    #[test]
    fn withdrawal_codes() {
        let m = obx_segments(&["ORC|CA|PL-1|FILL-1".to_owned()]);
        assert_eq!(withdrawal(&m, "R01", "F"), Some("ORC-1"));
        let m = obx_segments(&["ORC|RE|PL-1|FILL-1".to_owned()]);
        assert_eq!(withdrawal(&m, "R01", "F"), None);
        assert_eq!(withdrawal(&m, "R01", "D"), Some("OBX-11/OBR-25"));
        assert_eq!(withdrawal(&m, "R01", "W"), Some("OBX-11/OBR-25"));
        assert_eq!(withdrawal(&m, "T11", "F"), Some("MDM^T11"));
        assert_eq!(withdrawal(&m, "T10", "C"), None);
    }
}
