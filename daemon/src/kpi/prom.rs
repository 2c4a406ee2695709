//! `GET /metrics`: the KPIs since the vault began, in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! Written by hand: every metric name, help text and label value here is a
//! constant of this file (nothing from input, nothing per patient), so the
//! format's escaping rules only ever meet these strings; [`escape_help`]
//! and [`escape_label`] still apply them, so a later edit cannot break the
//! format. A client library would add a registry for figures that are
//! read from the vault at scrape time anyway.

use super::read::{Summary, DELAY_BUCKETS};
use super::Kpi;
use std::fmt::Write as _;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Figures of the process besides the KPIs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub wa_outbox_depth: usize,
    pub pms_outbox_depth: usize,
    pub wa_dead_letters: usize,
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A float as the format writes it (`NaN` for an undefined ratio).
fn float(v: Option<f64>) -> String {
    v.map_or_else(|| "NaN".to_owned(), |v| format!("{v}"))
}

const COUNTERS: [(&str, Kpi, &str); 7] = [
    (
        "clinic_relay_reminders_sent_total",
        Kpi::Sent,
        "Appointment reminders accepted by the WhatsApp Cloud API.",
    ),
    (
        "clinic_relay_reminders_delivered_total",
        Kpi::Delivered,
        "Appointment reminders reported delivered (or read) by WhatsApp.",
    ),
    (
        "clinic_relay_reminders_read_total",
        Kpi::Read,
        "Appointment reminders reported read by WhatsApp.",
    ),
    (
        "clinic_relay_reminders_confirmed_total",
        Kpi::Confirmed,
        "Appointments confirmed with a reminder's button.",
    ),
    (
        "clinic_relay_reminders_cancelled_total",
        Kpi::Cancelled,
        "Appointments cancelled with a reminder's button.",
    ),
    (
        "clinic_relay_reminders_rescheduled_total",
        Kpi::Rescheduled,
        "Appointments rescheduled from a reminder.",
    ),
    (
        "clinic_relay_opt_outs_total",
        Kpi::OptOut,
        "Patients who opted out of messages by keyword.",
    ),
];

/// A histogram of sorted seconds over [`DELAY_BUCKETS`].
fn histogram(out: &mut String, name: &str, help: &str, sorted: &[u32]) {
    header(out, name, "histogram", help);
    for le in DELAY_BUCKETS {
        let n = sorted.partition_point(|d| *d <= le);
        let _ = writeln!(
            out,
            "{name}_bucket{} {n}",
            labels(&[("le", &le.to_string())])
        );
    }
    let count = sorted.len();
    let sum: u64 = sorted.iter().map(|d| u64::from(*d)).sum();
    let _ = writeln!(out, "{name}_bucket{} {count}", labels(&[("le", "+Inf")]));
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// The whole exposition.
pub fn encode(s: &Summary, g: Gauges) -> String {
    let mut out = String::new();
    for (name, kpi, help) in COUNTERS {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", s.get(kpi));
    }

    let visits = "clinic_relay_visits_total";
    header(
        &mut out,
        visits,
        "counter",
        "Visits that ended, by outcome and by whether the patient confirmed a reminder for them.",
    );
    for (outcome, confirmed, kpi) in [
        ("no_show", "true", Kpi::NoShowConfirmed),
        ("no_show", "false", Kpi::NoShowUnconfirmed),
        ("fulfilled", "true", Kpi::FulfilledConfirmed),
        ("fulfilled", "false", Kpi::FulfilledUnconfirmed),
    ] {
        let l = labels(&[("outcome", outcome), ("confirmed_reminder", confirmed)]);
        let _ = writeln!(out, "{visits}{l} {}", s.get(kpi));
    }

    let rate = "clinic_relay_no_show_ratio";
    header(
        &mut out,
        rate,
        "gauge",
        "No-shows over ended visits (NaN before the first), by whether the patient confirmed a reminder.",
    );
    for confirmed in [true, false] {
        let l = labels(&[(
            "confirmed_reminder",
            if confirmed { "true" } else { "false" },
        )]);
        let _ = writeln!(out, "{rate}{l} {}", float(s.no_show_rate(confirmed)));
    }

    histogram(
        &mut out,
        "clinic_relay_reminder_answer_delay_seconds",
        "Time from a reminder accepted by WhatsApp to the patient's answer.",
        &s.delays,
    );
    histogram(
        &mut out,
        "clinic_relay_staff_response_seconds",
        "Time from a hand-off to staff to the first staff reply.",
        &s.staff_response,
    );

    for (name, help, v) in [
        (
            "clinic_relay_whatsapp_outbox_depth",
            "WhatsApp messages waiting to be sent.",
            g.wa_outbox_depth,
        ),
        (
            "clinic_relay_whatsapp_dead_letters",
            "WhatsApp messages refused for good or out of attempts.",
            g.wa_dead_letters,
        ),
        (
            "clinic_relay_pms_outbox_depth",
            "Messages waiting to go to the PMS.",
            g.pms_outbox_depth,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
    out
}
