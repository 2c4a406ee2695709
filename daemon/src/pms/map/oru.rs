//! ORU^R01 and MDM^T02: result documents. Only an OBX of type ED holding a
//! PDF is of interest; other results are acknowledged and left alone.

use super::fields::{self, clean, parse_dtm};
use super::{MapContext, Rejection};
use crate::commands::Command;
use crate::model::{LabResult, ResultStatus};
use crate::pms::hl7::{AckError, Message, Segment};
use base64::Engine as _;

pub fn document(msg: &Message, ctx: &MapContext<'_>) -> Result<Vec<Command>, Rejection> {
    let pid = msg
        .segment("PID")
        .ok_or_else(|| Rejection::missing("PID", 3))?;
    let ed: Vec<&Segment> = msg
        .segments_named("OBX")
        .filter(|obx| clean(obx.text(2)).is_some_and(|t| t.eq_ignore_ascii_case("ED")))
        .collect();
    if ed.is_empty() {
        // Not a document for patients (numeric values, notes): nothing to do.
        return Ok(Vec::new());
    }
    let order_number = order_number(msg).ok_or_else(|| Rejection::missing("OBR", 3))?;
    let status_code = ed
        .iter()
        .find_map(|obx| clean(obx.text(11)))
        .or_else(|| msg.segment("OBR").and_then(|obr| clean(obr.text(25))))
        .unwrap_or("F")
        .to_ascii_uppercase();
    if !ctx
        .config
        .deliverable_statuses
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&status_code))
    {
        // A preliminary result: the final one will follow.
        return Ok(Vec::new());
    }
    let pdf = pdf_bytes(&ed, ctx.config.max_pdf_bytes)?;
    let patient = fields::patient_from_pid(pid, ctx)?;
    let observed_at = ed
        .iter()
        .find_map(|obx| clean(obx.component(14, 1)))
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
    };
    Ok(vec![
        Command::UpdatePatientFromContext(Box::new(patient)),
        Command::UpsertResult(Box::new(result)),
    ])
}

/// The filler order number (ORC-3/OBR-3), else the placer's (ORC-2/OBR-2);
/// for MDM the unique document number (TXA-12).
fn order_number(msg: &Message) -> Option<String> {
    let from =
        |seg: &str, field: usize| msg.segment(seg).and_then(|s| clean(s.component(field, 1)));
    from("ORC", 3)
        .or_else(|| from("OBR", 3))
        .or_else(|| from("ORC", 2))
        .or_else(|| from("OBR", 2))
        .or_else(|| from("TXA", 12))
        .map(str::to_owned)
}

/// Concatenates the base64 data of every ED OBX (sub-ids in message order)
/// and every repetition of OBX-5, decodes it and checks it is a PDF.
fn pdf_bytes(ed: &[&Segment], max_bytes: usize) -> Result<Vec<u8>, Rejection> {
    let mut text = String::new();
    for obx in ed {
        for rep in obx.repetitions(5) {
            // A full ED is source^type^subtype^encoding^data; continuation
            // repetitions often carry only the data.
            let data = rep
                .component(5)
                .or_else(|| rep.component(1))
                .unwrap_or_default();
            text.extend(data.chars().filter(|c| !c.is_whitespace()));
        }
        if text.len() > max_bytes.saturating_mul(4) / 3 + 4 {
            return Err(Rejection::content(
                AckError::new(
                    102,
                    format!("OBX-5: document larger than the limit of {max_bytes} bytes"),
                )
                .at("OBX", 5),
            ));
        }
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| Rejection::invalid("OBX", 5, "the ED data is not valid base64"))?;
    if bytes.len() > max_bytes {
        return Err(Rejection::content(
            AckError::new(
                102,
                format!("OBX-5: document larger than the limit of {max_bytes} bytes"),
            )
            .at("OBX", 5),
        ));
    }
    if !bytes.starts_with(b"%PDF-") {
        return Err(Rejection::invalid("OBX", 5, "the ED data is not a PDF"));
    }
    Ok(bytes)
}
