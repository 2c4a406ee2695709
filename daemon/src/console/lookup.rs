//! Patient lookup (issue 12, item 3): staff find ONE patient by MRN or
//! phone number, exact match only (blind indexes: no partial search, no
//! list of patients), and see the upcoming appointments, the reminders
//! sent, the consent and its history; two buttons record an opt-in or
//! opt-out the patient asked for in person (source = staff).
//!
//! The search is a POST so that the MRN or number never appears in a URL,
//! the browser's history or an access log; it answers with a redirect to
//! the patient's opaque id. The data path is the API's (`api::patients`):
//! the same reads, the same `commands::apply` for consent, the actor
//! `staff:NAME`. The page view is audited (`patient.read`,
//! `appointment.read`, `consent.read`, naming the patient) before it is sent.

use super::http::{self, esc, redirect, Resp};
use super::pages::{layout, Lang, Viewer};
use super::routes::{actor, field, problem_page, signed_form, viewer};
use super::session::Session;
use super::words::{t, Words};
use super::ConsoleState;
use crate::api::patients::{self, ReminderSent};
use crate::api::routes::{audit_reads, read_draft};
use crate::commands::Origin;
use crate::model::{Appointment, AppointmentStatus, ConsentSource, ConsentState, Patient};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Longer than any MRN or phone number: not looked up at all.
const MAX_QUERY: usize = 64;

/// `GET /p`: the search form.
pub async fn search_form(lang: Lang, s: Session) -> Resp {
    http::html(StatusCode::OK, form_page(lang, viewer(&s), None))
}

fn form_page(lang: Lang, user: Viewer<'_>, problem: Option<&str>) -> String {
    let alert = problem
        .map(|p| format!("<p class=\"alert\" role=\"alert\">{}</p>", t(lang, p)))
        .unwrap_or_default();
    let body = format!(
        "<h1>{title}</h1>{alert}<form method=\"post\" action=\"/p\" class=\"lookup\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"q\">{label}</label><p class=\"hint\" id=\"q-hint\">{hint}</p>\
         <input id=\"q\" name=\"q\" required maxlength=\"{MAX_QUERY}\" autocomplete=\"off\" \
         spellcheck=\"false\" aria-describedby=\"q-hint\">\
         <button type=\"submit\">{find}</button></form>",
        title = t(lang, "lookup"),
        csrf = esc(user.csrf),
        label = t(lang, "lk_query"),
        hint = t(lang, "lk_query_hint"),
        find = t(lang, "lk_find"),
    );
    layout(lang, t(lang, "lookup"), Some(user), &body)
}

/// What a search found.
enum Found {
    One(Patient),
    None,
    /// Several patients share the number (or the MRN, from two assigning
    /// authorities): none is shown.
    Several,
}

fn one_of(found: Vec<Patient>) -> Found {
    let mut found = found.into_iter();
    match (found.next(), found.next()) {
        (Some(p), None) => Found::One(p),
        (None, _) => Found::None,
        (Some(_), Some(_)) => Found::Several,
    }
}

/// An exact MRN first; else the same text as a phone number (any way the
/// clinic's numbering plan reads it).
fn find(state: &ConsoleState, q: &str) -> Result<Found, crate::api::Problem> {
    if q.is_empty() || q.len() > MAX_QUERY {
        return Ok(Found::None);
    }
    match one_of(patients::find_by_mrn(&state.api, q)?) {
        Found::None => {}
        found => return Ok(found),
    }
    // Letters are never part of a phone number: an MRN that was not found.
    if q.chars().any(char::is_alphabetic) {
        return Ok(Found::None);
    }
    Ok(one_of(patients::find_by_phone(&state.api, q)?))
}

/// `POST /p`: the search; found → 303 to the patient's page.
pub async fn search(state: &ConsoleState, req: Request<Incoming>, lang: Lang) -> Resp {
    let (_, s, fields) = match signed_form(state, req).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    let problem = match find(state, field(&fields, "q").trim()) {
        Ok(Found::One(p)) => return redirect(&format!("/p/{}", p.id.to_hex())),
        Ok(Found::None) => "lk_not_found",
        Ok(Found::Several) => "lk_several",
        Err(p) => return problem_page(lang, &p),
    };
    http::html(StatusCode::OK, form_page(lang, viewer(&s), Some(problem)))
}

/// Everything the patient page shows.
struct View {
    patient: Patient,
    upcoming: Vec<(Appointment, bool, usize)>,
    reminders: Vec<ReminderSent>,
    consent: Option<crate::model::Consent>,
    history: Vec<crate::care::ledger::Entry>,
}

fn load(state: &ConsoleState, id: crate::model::PatientId) -> Result<View, crate::api::Problem> {
    let api = &state.api;
    let patient = patients::patient(api, id)?;
    let all = patients::appointments(api, id)?;
    let reminders = patients::reminders(api, id, &all)?;
    let now = api.clock.now();
    let mut upcoming = Vec::new();
    for a in all.into_iter().filter(|a| a.start >= now) {
        let confirmed = patients::confirmed(api, &a)?;
        let sent = reminders
            .iter()
            .filter(|r| !r.follow_up && r.appointment.as_ref().is_some_and(|(i, _)| *i == a.id))
            .count();
        upcoming.push((a, confirmed, sent));
    }
    Ok(View {
        patient,
        upcoming,
        reminders,
        consent: patients::consent(api, id)?,
        history: patients::consent_history(api, id)?,
    })
}

/// `GET /p/{id}`: audited before it is sent; a view whose audit cannot be
/// written is not shown.
pub async fn patient_page(state: &ConsoleState, lang: Lang, s: Session, id: String) -> Resp {
    let id = match patients::patient_id(&id) {
        Ok(id) => id,
        Err(p) => return problem_page(lang, &p),
    };
    let view = match load(state, id) {
        Ok(v) => v,
        Err(p) => return problem_page(lang, &p),
    };
    let who = actor(&s);
    let drafts = ["patient.read", "appointment.read", "consent.read"]
        .into_iter()
        .map(|action| read_draft(&who, action, Some(id)))
        .collect();
    if let Err(p) = audit_reads(&state.api, drafts).await {
        return problem_page(lang, &p);
    }
    let tz = super::routes::clinic_tz(state);
    http::html(StatusCode::OK, render(lang, viewer(&s), &view, &tz))
}

/// `POST /p/{id}/consent` with `consent=in|out`: the patient asked in
/// person; recorded through `commands::apply` with source = staff and the
/// staff member as actor.
pub async fn consent_post(
    state: &ConsoleState,
    req: Request<Incoming>,
    lang: Lang,
    id: String,
) -> Resp {
    let (_, s, fields) = match signed_form(state, req).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    let wanted = match field(&fields, "consent") {
        "in" => ConsentState::OptedIn,
        "out" => ConsentState::OptedOut,
        _ => return http::text(StatusCode::BAD_REQUEST, "consent: in or out\n"),
    };
    let patient = match patients::patient_id(&id) {
        Ok(p) => p,
        Err(p) => return problem_page(lang, &p),
    };
    let origin = Origin {
        key_retention: state.api.key_retention,
        ..Origin::new(actor(&s))
    };
    match patients::set_consent(&state.api, patient, wanted, &origin).await {
        Ok(_) => redirect(&format!("/p/{}", patient.to_hex())),
        Err(p) => problem_page(lang, &p),
    }
}

fn when(at: Timestamp, tz: &TimeZone) -> String {
    esc(&at
        .to_zoned(tz.clone())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string())
}

fn status(lang: Lang, s: AppointmentStatus) -> &'static str {
    match s {
        AppointmentStatus::Proposed | AppointmentStatus::Pending => t(lang, "lk_st_pending"),
        AppointmentStatus::Booked => t(lang, "lk_st_booked"),
        AppointmentStatus::Arrived | AppointmentStatus::CheckedIn => t(lang, "lk_st_arrived"),
        AppointmentStatus::Fulfilled => t(lang, "lk_st_fulfilled"),
        AppointmentStatus::Cancelled | AppointmentStatus::EnteredInError => {
            t(lang, "lk_st_cancelled")
        }
        AppointmentStatus::Noshow => t(lang, "lk_st_noshow"),
        AppointmentStatus::Waitlist => t(lang, "lk_st_waitlist"),
    }
}

fn delivery(lang: Lang, state: &str) -> &'static str {
    match state {
        "delivered" => t(lang, "delivered"),
        "read" | "played" => t(lang, "read"),
        "failed" => t(lang, "failed"),
        _ => t(lang, "sent"),
    }
}

fn consent_words(lang: Lang, state: ConsentState) -> &'static str {
    match state {
        ConsentState::OptedIn => t(lang, "lk_opted_in"),
        ConsentState::OptedOut => t(lang, "lk_opted_out"),
    }
}

fn source_words(lang: Lang, source: ConsentSource) -> &'static str {
    match source {
        ConsentSource::Pms => t(lang, "lk_src_pms"),
        ConsentSource::Chat => t(lang, "lk_src_chat"),
        ConsentSource::Staff => t(lang, "lk_src_staff"),
    }
}

/// A table with a header row, or a line saying there is nothing.
fn table(head: &[&str], rows: &str, empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p>{empty}</p>");
    }
    let head: String = head
        .iter()
        .map(|h| format!("<th scope=\"col\">{h}</th>"))
        .collect();
    format!("<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
}

fn render(lang: Lang, user: Viewer<'_>, v: &View, tz: &TimeZone) -> String {
    let p = &v.patient;
    let name = format!("{} {}", p.given_name, p.family_name);
    let born = p
        .birth_date
        .map_or_else(|| "–".to_owned(), |d| d.to_string());
    let mut flags = String::new();
    if p.deceased {
        flags.push_str(&format!(
            "<p class=\"alert\">{}</p>",
            t(lang, "lk_deceased")
        ));
    }
    if p.protected {
        flags.push_str(&format!(
            "<p class=\"alert\">{}</p>",
            t(lang, "lk_protected")
        ));
    }

    let mut rows = String::new();
    for (a, confirmed, sent) in &v.upcoming {
        rows.push_str(&format!(
            "<tr><th scope=\"row\">{at}</th><td>{status}</td><td>{sent}</td><td>{answer}</td></tr>",
            at = when(a.start, tz),
            status = status(lang, a.status),
            answer = t(
                lang,
                if *confirmed {
                    "lk_confirmed"
                } else {
                    "lk_no_answer"
                }
            ),
        ));
    }
    let appointments = table(
        &[
            t(lang, "lk_when"),
            t(lang, "state"),
            t(lang, "lk_reminders_sent"),
            t(lang, "lk_answer"),
        ],
        &rows,
        t(lang, "lk_no_appointments"),
    );

    let mut rows = String::new();
    for r in &v.reminders {
        let kind = t(
            lang,
            if r.follow_up {
                "lk_follow_up"
            } else {
                "lk_reminder"
            },
        );
        let dry = if r.dry_run {
            format!(" ({})", t(lang, "lk_dry_run"))
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><th scope=\"row\">{at}</th><td>{appt}</td><td>{kind}</td><td>{state}{dry}</td></tr>",
            at = when(r.sent_at, tz),
            appt = r.appointment.as_ref().map_or_else(|| "–".to_owned(), |(_, s)| when(*s, tz)),
            state = delivery(lang, r.delivery),
        ));
    }
    let reminders = table(
        &[
            t(lang, "lk_sent_at"),
            t(lang, "lk_for_appointment"),
            t(lang, "lk_kind"),
            t(lang, "lk_delivery"),
        ],
        &rows,
        t(lang, "lk_no_reminders"),
    );

    let now_state = match &v.consent {
        Some(c) => format!(
            "{} ({}, {})",
            consent_words(lang, c.state),
            source_words(lang, c.source),
            when(c.at, tz)
        ),
        None => t(lang, "lk_no_consent").to_owned(),
    };
    let mut rows = String::new();
    for e in v.history.iter().rev() {
        rows.push_str(&format!(
            "<tr><th scope=\"row\">{at}</th><td>{state}</td><td>{source}</td><td>{by}</td></tr>",
            at = when(e.at, tz),
            state = consent_words(lang, e.state),
            source = source_words(lang, e.source),
            by = esc(&e.actor),
        ));
    }
    let history = table(
        &[
            t(lang, "lk_when"),
            t(lang, "state"),
            t(lang, "lk_source"),
            t(lang, "lk_by"),
        ],
        &rows,
        t(lang, "lk_no_history"),
    );
    let hex = p.id.to_hex();
    let body = format!(
        "<p><a href=\"/p\">{again}</a></p><h1>{name}</h1>\
         <dl class=\"facts\"><dt>{born_l}</dt><dd>{born}</dd></dl>{flags}\
         <section aria-labelledby=\"h-appts\"><h2 id=\"h-appts\">{appts_h}</h2>{appointments}</section>\
         <section aria-labelledby=\"h-rem\"><h2 id=\"h-rem\">{rem_h}</h2>{reminders}</section>\
         <section aria-labelledby=\"h-consent\"><h2 id=\"h-consent\">{consent_h}</h2>\
         <p id=\"consent-now\">{now_l}: <strong>{now_state}</strong></p>\
         <form method=\"post\" action=\"/p/{hex}/consent\" class=\"consent\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p class=\"hint\">{verbal}</p>\
         <button type=\"submit\" name=\"consent\" value=\"in\">{opt_in}</button> \
         <button type=\"submit\" name=\"consent\" value=\"out\" class=\"secondary\">{opt_out}</button></form>\
         <h3>{history_h}</h3>{history}</section>",
        again = t(lang, "lk_again"),
        name = esc(&name),
        born_l = t(lang, "lk_born"),
        born = esc(&born),
        appts_h = t(lang, "lk_upcoming"),
        rem_h = t(lang, "lk_reminders"),
        consent_h = t(lang, "lk_consent"),
        now_l = t(lang, "lk_consent_now"),
        csrf = esc(user.csrf),
        verbal = t(lang, "lk_verbal"),
        opt_in = t(lang, "lk_record_in"),
        opt_out = t(lang, "lk_record_out"),
        history_h = t(lang, "lk_history"),
    );
    layout(lang, t(lang, "lk_patient"), Some(user), &body)
}

/// The lookup's styles (added to the console's one stylesheet).
pub const CSS: &str =
    "dl.facts{display:grid;grid-template-columns:max-content auto;gap:.25rem 1rem}\
dl.facts dt{font-weight:600}dl.facts dd{margin:0}\
form.consent button{margin-right:.5rem}section{margin-top:1.5rem}\
tbody th{font-weight:400}\n";

/// The lookup's words (key, English, German).
pub const WORDS: Words = &[
    ("lk_query", "MRN or phone number", "Patientennummer (MRN) oder Telefonnummer"),
    ("lk_query_hint", "Exact match only: the whole MRN, or the phone number in any usual format.", "Nur genaue Treffer: die ganze Patientennummer oder die Telefonnummer in üblicher Schreibweise."),
    ("lk_find", "Find", "Suchen"),
    ("lk_not_found", "No patient with this MRN or number.", "Keine Patientin und kein Patient mit dieser Nummer."),
    ("lk_several", "More than one patient matches, so none is shown. Please search by the MRN, or check the PMS.", "Mehrere Personen passen, daher wird keine angezeigt. Bitte mit der Patientennummer suchen oder im Praxissystem nachsehen."),
    ("lk_patient", "Patient", "Patient/in"),
    ("lk_again", "Find another patient", "Andere Person suchen"),
    ("lk_born", "Date of birth", "Geburtsdatum"),
    ("lk_deceased", "Recorded as deceased: no messages are sent.", "Als verstorben vermerkt: es werden keine Nachrichten gesendet."),
    ("lk_protected", "The patient asked not to be contacted (PMS): no messages are sent.", "Die Person möchte nicht kontaktiert werden (Praxissystem): es werden keine Nachrichten gesendet."),
    ("lk_upcoming", "Upcoming appointments", "Kommende Termine"),
    ("lk_when", "Date and time", "Datum und Uhrzeit"),
    ("lk_reminders_sent", "Reminders sent", "Erinnerungen gesendet"),
    ("lk_answer", "Patient's answer", "Antwort der Person"),
    ("lk_confirmed", "confirmed", "bestätigt"),
    ("lk_no_answer", "no answer", "keine Antwort"),
    ("lk_no_appointments", "No upcoming appointments.", "Keine kommenden Termine."),
    ("lk_reminders", "Reminder history (newest first)", "Verlauf der Erinnerungen (neueste zuerst)"),
    ("lk_sent_at", "Sent", "Gesendet"),
    ("lk_for_appointment", "For the appointment on", "Für den Termin am"),
    ("lk_kind", "Kind", "Art"),
    ("lk_delivery", "Delivery", "Zustellung"),
    ("lk_reminder", "reminder", "Erinnerung"),
    ("lk_follow_up", "follow-up after the visit", "Nachfrage nach dem Besuch"),
    ("lk_dry_run", "dry run: not sent to WhatsApp", "Probelauf: nicht an WhatsApp gesendet"),
    ("lk_no_reminders", "No reminders were sent.", "Es wurden keine Erinnerungen gesendet."),
    ("lk_consent", "WhatsApp consent", "Einwilligung für WhatsApp"),
    ("lk_consent_now", "Now", "Aktuell"),
    ("lk_no_consent", "not recorded (no messages are sent)", "nicht erfasst (es werden keine Nachrichten gesendet)"),
    ("lk_verbal", "Only on the patient's own request, made to you in person or on the phone.", "Nur auf eigenen Wunsch der Person, persönlich oder am Telefon geäußert."),
    ("lk_record_in", "Record opt-in", "Einwilligung erfassen"),
    ("lk_record_out", "Record opt-out", "Widerruf erfassen"),
    ("lk_history", "Consent history (newest first)", "Verlauf der Einwilligung (neueste zuerst)"),
    ("lk_no_history", "No changes recorded.", "Keine Änderungen erfasst."),
    ("lk_source", "Source", "Quelle"),
    ("lk_by", "By", "Durch"),
    ("lk_opted_in", "opted in", "eingewilligt"),
    ("lk_opted_out", "opted out", "widerrufen"),
    ("lk_src_pms", "the practice system", "Praxissystem"),
    ("lk_src_chat", "the patient in the chat", "die Person im Chat"),
    ("lk_src_staff", "staff, at the patient's request", "Praxis, auf Wunsch der Person"),
    ("lk_st_pending", "pending", "vorgemerkt"),
    ("lk_st_booked", "booked", "gebucht"),
    ("lk_st_arrived", "arrived", "angekommen"),
    ("lk_st_fulfilled", "done", "erledigt"),
    ("lk_st_cancelled", "cancelled", "abgesagt"),
    ("lk_st_noshow", "not attended", "nicht erschienen"),
    ("lk_st_waitlist", "waiting list", "Warteliste"),
];
