//! SIU: appointments booked (S12), rescheduled (S13), modified (S14),
//! cancelled (S15), discontinued (S16), deleted (S17), changed at the level
//! of a service or resource (S18–S25), no-show (S26).

use super::fields::{self, clean, minutes, parse_dtm};
use super::{MapContext, Rejection};
use crate::commands::Command;
use crate::model::{Appointment, AppointmentStatus};
use crate::pms::hl7::{Message, Segment};

/// Every SIU trigger we apply. S18–S25 (a service or resource added,
/// modified, cancelled, discontinued or deleted) still carry the whole SCH:
/// they update the appointment like S14.
pub const TRIGGERS: &[&str] = &[
    "S12", "S13", "S14", "S15", "S16", "S17", "S18", "S19", "S20", "S21", "S22", "S23", "S24",
    "S25", "S26",
];

pub fn schedule(
    msg: &Message,
    trigger: &str,
    ctx: &MapContext<'_>,
) -> Result<Vec<Command>, Rejection> {
    let sch = msg
        .segment("SCH")
        .ok_or_else(|| Rejection::missing("SCH", 1))?;
    // The filler's id (SCH-2) is the PMS's own; old senders only fill SCH-1.
    let id = clean(sch.component(2, 1))
        .or_else(|| clean(sch.component(1, 1)))
        .ok_or_else(|| Rejection::missing("SCH", 1))?
        .to_owned();
    let pid = msg
        .segment("PID")
        .ok_or_else(|| Rejection::missing("PID", 3))?;
    let patient = fields::patient_from_pid(pid, ctx)?;
    let start = start(msg, sch, ctx)?;
    let length = duration(msg, sch, start, &ctx.config.time_zone);
    // Bounded here so that no stored appointment can overflow when its end
    // is computed (issue 8).
    if let Some((m, segment, field)) = length {
        if !crate::bounds::duration_in_range(m) {
            return Err(Rejection::invalid(
                segment,
                field,
                "duration over 10,080 minutes (one week)",
            ));
        }
    }
    let appointment = Appointment {
        id,
        patient: patient.id,
        start,
        // A zero length from any source means "not given".
        duration_minutes: length
            .map(|(m, _, _)| m)
            .filter(|m| *m > 0)
            .unwrap_or(ctx.config.default_duration_minutes),
        status: status(sch, trigger, ctx),
        pms_status: clean(sch.component(25, 1)).map(str::to_owned),
        provider: provider(msg),
        location: location(msg),
        patient_confirmed: false,
    };
    Ok(vec![
        Command::UpdatePatientFromContext(Box::new(patient)),
        Command::UpsertAppointment(Box::new(appointment)),
    ])
}

/// TQ1-7, then SCH-11.4, then the first resource's start (AIS-4, AIL-6, AIP-6).
fn start(msg: &Message, sch: &Segment, ctx: &MapContext<'_>) -> Result<jiff::Timestamp, Rejection> {
    let tz = &ctx.config.time_zone;
    let candidates = [
        (
            "TQ1",
            msg.segment("TQ1").and_then(|s| clean(s.component(7, 1))),
            7,
        ),
        ("SCH", clean(sch.component(11, 4)), 11),
        (
            "AIS",
            msg.segment("AIS").and_then(|s| clean(s.component(4, 1))),
            4,
        ),
        (
            "AIL",
            msg.segment("AIL").and_then(|s| clean(s.component(6, 1))),
            6,
        ),
        (
            "AIP",
            msg.segment("AIP").and_then(|s| clean(s.component(6, 1))),
            6,
        ),
    ];
    let Some((segment, value, field)) = candidates
        .iter()
        .find_map(|(seg, v, f)| v.map(|v| (*seg, v, *f)))
    else {
        return Err(Rejection::content(
            crate::pms::hl7::AckError::new(
                101,
                "no appointment start: TQ1-7, SCH-11.4, AIS-4, AIL-6 and AIP-6 are all empty",
            )
            .at("TQ1", 7),
        ));
    };
    parse_dtm(value, tz).ok_or_else(|| {
        Rejection::invalid(
            segment,
            field,
            "not a date/time (YYYYMMDDHHMM[SS][+ZZZZ], years 1900 to 2199)",
        )
    })
}

/// TQ1-6 (service duration), then TQ1-8 − TQ1-7 (end − start), then
/// AIS-7 + AIS-8, then SCH-11.3 (v2.3 timing quantity), then SCH-9 + SCH-10;
/// with the field it came from.
fn duration(
    msg: &Message,
    sch: &Segment,
    start: jiff::Timestamp,
    tz: &jiff::tz::TimeZone,
) -> Option<(u32, &'static str, u32)> {
    if let Some(tq1) = msg.segment("TQ1") {
        let service =
            clean(tq1.component(6, 1)).and_then(|q| minutes(q, clean(tq1.component(6, 2))));
        if let Some(m) = service.filter(|m| *m > 0) {
            return Some((m, "TQ1", 6));
        }
        if let Some(end) = clean(tq1.component(8, 1)).and_then(|v| parse_dtm(v, tz)) {
            return u32::try_from(end.duration_since(start).as_secs() / 60)
                .ok()
                .filter(|m| *m > 0)
                .map(|m| (m, "TQ1", 8));
        }
    }
    if let Some(ais) = msg.segment("AIS") {
        if let Some(q) = clean(ais.component(7, 1)) {
            return minutes(q, clean(ais.component(8, 1))).map(|m| (m, "AIS", 7));
        }
    }
    if let Some(q) = clean(sch.component(11, 3)) {
        return minutes(q, None).map(|m| (m, "SCH", 11));
    }
    let q = clean(sch.component(9, 1))?;
    minutes(q, clean(sch.component(10, 1))).map(|m| (m, "SCH", 9))
}

/// SCH-25 through table 0278 and the clinic's own codes; the trigger
/// decides for cancellations, discontinuations, deletions and no-shows.
fn status(sch: &Segment, trigger: &str, ctx: &MapContext<'_>) -> AppointmentStatus {
    match trigger {
        "S15" => return AppointmentStatus::Cancelled,
        "S17" => return AppointmentStatus::EnteredInError,
        "S26" => return AppointmentStatus::Noshow,
        // Discontinued: an appointment already under way has ended; one that
        // has not begun will not take place.
        "S16" => {
            return match filler_status(sch, ctx) {
                AppointmentStatus::Arrived
                | AppointmentStatus::CheckedIn
                | AppointmentStatus::Fulfilled => AppointmentStatus::Fulfilled,
                _ => AppointmentStatus::Cancelled,
            }
        }
        _ => {}
    }
    filler_status(sch, ctx)
}

/// SCH-25 through the clinic's own codes, then table 0278.
fn filler_status(sch: &Segment, ctx: &MapContext<'_>) -> AppointmentStatus {
    let Some(code) = clean(sch.component(25, 1)).map(str::to_ascii_uppercase) else {
        return AppointmentStatus::Booked;
    };
    if let Some(s) = ctx.config.status_map.get(&code) {
        return *s;
    }
    match code.as_str() {
        "PENDING" => AppointmentStatus::Pending,
        "WAITLIST" => AppointmentStatus::Waitlist,
        "STARTED" => AppointmentStatus::Arrived,
        "COMPLETE" => AppointmentStatus::Fulfilled,
        "CANCELLED" | "DC" => AppointmentStatus::Cancelled,
        "DELETED" => AppointmentStatus::EnteredInError,
        "NOSHOW" => AppointmentStatus::Noshow,
        _ => AppointmentStatus::Booked,
    }
}

/// AIP-3 (XCN): "prefix given family", e.g. "Dr. Ada ZZTEST".
fn provider(msg: &Message) -> Option<String> {
    let aip = msg.segment("AIP")?;
    let parts = [
        aip.component(3, 6),
        aip.component(3, 3),
        aip.component(3, 2),
    ];
    let name: Vec<&str> = parts.iter().filter_map(|p| clean(*p)).collect();
    if name.is_empty() {
        clean(aip.component(3, 1)).map(str::to_owned)
    } else {
        Some(name.join(" "))
    }
}

/// AIL-3 (PL): the description (PL-9) if given, else point of care and room.
fn location(msg: &Message) -> Option<String> {
    let ail = msg.segment("AIL")?;
    if let Some(desc) = clean(ail.component(3, 9)) {
        return Some(desc.to_owned());
    }
    let parts: Vec<&str> = [ail.component(3, 1), ail.component(3, 2)]
        .iter()
        .filter_map(|p| clean(*p))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}
