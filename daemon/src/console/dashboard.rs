//! The admin dashboard (`GET /admin`, admins only): the last 30 days of
//! KPIs as charts and a table, the queues, the dead letters with a retry
//! button, the WhatsApp mode and token, and the warnings of `status`.
//!
//! One data path: the KPIs from `kpi::read` (as `/v1/kpis`), the health
//! from `api::health` (as `/v1/status`), a retry through
//! `api::dead_letters::retry` (as the local API's). Nothing here names a
//! patient: dead letters show their kind, time, reason and attempts, never
//! the message or its recipient. The view is still audited
//! (`dashboard.read`, actor `staff:NAME`): who looked at the operation's
//! state, and when, is cheap to keep.

use super::charts::{self, Series};
use super::http::{self, esc, redirect, Resp};
use super::pages::{self, Lang};
use super::routes::{actor, problem_page, signed_form, viewer};
use super::session::Session;
use super::staff::Role;
use super::words::{t, Words};
use super::ConsoleState;
use crate::api::dead_letters;
use crate::api::health::{self, Health, TokenState};
use crate::api::routes::audit_read;
use crate::commands::{DeadQueue, Origin};
use crate::kpi::read::{self, Summary};
use crate::kpi::{self, Kpi};
use crate::queue::dead::{self, DeadView};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use jiff::civil::Date;
use jiff::Timestamp;
use std::fmt::Write as _;

/// The days the charts cover, today included (clinic time).
const DAYS: i32 = 30;
/// Dead letters listed per queue (the count says how many there are).
const DEAD_SHOWN: usize = 50;

/// What the page shows.
struct Data {
    days: Vec<(Date, Summary)>,
    total: Summary,
    health: Health,
    pms_dead: Vec<DeadView>,
    wa_dead: Vec<DeadView>,
}

fn gather(state: &ConsoleState) -> Result<Data, String> {
    let api = &state.api;
    let vault = &api.vault;
    let now = api.clock.now();
    let to = crate::api::kpis::today(vault, now);
    let from = to
        .checked_sub(jiff::Span::new().days(DAYS - 1))
        .unwrap_or(to);
    let (a, b) = (kpi::day_number(from), kpi::day_number(to));
    let read_failed = |e: crate::vault::VaultError| format!("the KPIs could not be read: {e}");
    let mut daily = read::daily(vault, a, b).map_err(read_failed)?;
    let mut total = Summary::default();
    let mut days = Vec::new();
    let mut d = from;
    while d <= to {
        let day = daily.remove(&kpi::day_number(d)).unwrap_or_default();
        total.merge(&day);
        days.push((d, day));
        match d.tomorrow() {
            Ok(next) => d = next,
            Err(_) => break,
        }
    }
    let listed = |e: crate::vault::VaultError| format!("the dead letters could not be read: {e}");
    let pms_dead = dead::list::<crate::pms::outbound::Outgoing>(
        vault,
        &crate::queue::PMS_OUTBOX,
        DEAD_SHOWN,
        now,
    )
    .map_err(listed)?;
    let wa_dead = dead::list::<crate::whatsapp::outbox::WaItem>(
        vault,
        &crate::whatsapp::outbox::WA_OUTBOX,
        DEAD_SHOWN,
        now,
    )
    .map_err(listed)?;
    Ok(Data {
        days,
        total,
        health: health::check(api),
        pms_dead,
        wa_dead,
    })
}

fn forbidden(lang: Lang) -> Resp {
    http::html(StatusCode::FORBIDDEN, pages::error(lang, "d_forbidden", ""))
}

/// `GET /admin`.
pub async fn page(state: &ConsoleState, lang: Lang, s: Session) -> Resp {
    if s.role != Role::Admin {
        return forbidden(lang);
    }
    let data = match gather(state) {
        Ok(d) => d,
        Err(detail) => return super::routes::failed(lang, &detail),
    };
    if let Err(p) = audit_read(&state.api, &actor(&s), "dashboard.read", None).await {
        return problem_page(lang, &p);
    }
    http::html(StatusCode::OK, render(lang, &s, &data))
}

/// `POST /admin/dead/{queue}/{id}/retry`: the dead letter goes back to its
/// queue as a command (actor `staff:NAME`); the commit wakes its worker.
pub async fn retry(
    state: &ConsoleState,
    req: Request<Incoming>,
    lang: Lang,
    queue: String,
    id: String,
) -> Resp {
    let (_, s, _) = match signed_form(state, req).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    if s.role != Role::Admin {
        return forbidden(lang);
    }
    let (queue, id) = match dead_letters::target(&queue, &id) {
        Ok(t) => t,
        Err(p) => return problem_page(lang, &p),
    };
    let origin = Origin {
        key_retention: state.api.key_retention,
        ..Origin::new(actor(&s))
    };
    match dead_letters::retry(&state.api, queue, id, &origin).await {
        Ok(()) => redirect("/admin"),
        Err(p) => problem_page(lang, &p),
    }
}

fn render(lang: Lang, s: &Session, data: &Data) -> String {
    let mut body = format!("<h1>{}</h1>", t(lang, "dashboard"));
    warnings(&mut body, lang, &data.health);
    whatsapp(&mut body, lang, &data.health);
    queues(&mut body, lang, &data.health);
    dead_letters_section(&mut body, lang, s, data);
    kpis(&mut body, lang, data);
    pages::layout(lang, t(lang, "dashboard"), Some(viewer(s)), &body)
}

fn warnings(body: &mut String, lang: Lang, h: &Health) {
    let _ = write!(body, "<section><h2>{}</h2>", t(lang, "d_warnings"));
    if h.warnings.is_empty() {
        let _ = write!(body, "<p>{}</p>", t(lang, "d_no_warnings"));
    } else {
        // The warnings are the operator's English of `status` (one source
        // for both); the heading and the rest of the page follow the
        // browser's language.
        body.push_str("<ul class=\"warn\" lang=\"en\">");
        for w in &h.warnings {
            let _ = write!(body, "<li>{}</li>", esc(w));
        }
        body.push_str("</ul>");
    }
    body.push_str("</section>");
}

fn whatsapp(body: &mut String, lang: Lang, h: &Health) {
    let mode = if h.whatsapp_mode == "live" {
        "d_live"
    } else {
        "d_dry_run"
    };
    let token = match h.token {
        TokenState::None => "d_token_none",
        TokenState::Ok => "d_token_ok",
        TokenState::Missing => "d_token_missing",
        TokenState::Rejected => "d_token_rejected",
        TokenState::Unknown => "d_token_unknown",
    };
    let _ = write!(
        body,
        "<section><h2>WhatsApp</h2><dl class=\"facts\">\
         <dt>{mode_l}</dt><dd>{mode}</dd><dt>{host_l}</dt><dd>{host}</dd>\
         <dt>{token_l}</dt><dd>{token}</dd></dl></section>",
        mode_l = t(lang, "d_mode"),
        mode = t(lang, mode),
        host_l = t(lang, "d_host"),
        host = esc(&h.whatsapp_host),
        token_l = t(lang, "d_token"),
        token = t(lang, token),
    );
}

/// "12 min" since `at`, or "–" when nothing waits.
fn age(now: Timestamp, at: Option<Timestamp>) -> String {
    at.map_or_else(
        || "–".to_owned(),
        |at| pages::waited(now.duration_since(at).as_secs()),
    )
}

fn queues(body: &mut String, lang: Lang, h: &Health) {
    let _ = write!(
        body,
        "<section><h2>{title}</h2><div class=\"scroll\"><table>\
         <thead><tr><th scope=\"col\">{queue}</th><th scope=\"col\">{waiting}</th>\
         <th scope=\"col\">{oldest}</th><th scope=\"col\">{dead}</th></tr></thead><tbody>\
         <tr><th scope=\"row\">{pms}</th><td>{pd}</td><td>{po}</td><td>{px}</td></tr>\
         <tr><th scope=\"row\">{wa}</th><td>{wd}</td><td>{wo}</td><td>{wx}</td></tr>\
         </tbody></table></div></section>",
        title = t(lang, "d_queues"),
        queue = t(lang, "d_queue"),
        waiting = t(lang, "d_depth"),
        oldest = t(lang, "d_oldest"),
        dead = t(lang, "d_dead"),
        pms = t(lang, "d_pms_out"),
        pd = h.pms_outbox_depth,
        po = age(h.now, h.pms_outbox_oldest),
        px = h.pms_dead_letters,
        wa = t(lang, "d_wa_out"),
        wd = h.wa_outbox_depth,
        wo = age(h.now, h.wa_outbox_oldest),
        wx = h.wa_dead_letters,
    );
}

/// The queue's reason in plain words.
fn reason(lang: Lang, r: &str) -> String {
    if let Some(code) = r.strip_prefix("refused:") {
        return format!("{} ({})", t(lang, "d_r_refused"), esc(code));
    }
    let key = match r {
        "refused" => "d_r_refused",
        "out of attempts" => "d_r_attempts",
        "erased" => "d_r_erased",
        r if r.starts_with("damaged") => "d_r_damaged",
        _ => "d_r_other",
    };
    t(lang, key).to_owned()
}

fn dead_letters_section(body: &mut String, lang: Lang, s: &Session, data: &Data) {
    let _ = write!(body, "<section><h2>{}</h2>", t(lang, "d_dead_title"));
    let lists = [
        (
            DeadQueue::Pms,
            "d_pms_out",
            &data.pms_dead,
            data.health.pms_dead_letters,
        ),
        (
            DeadQueue::Whatsapp,
            "d_wa_out",
            &data.wa_dead,
            data.health.wa_dead_letters,
        ),
    ];
    if lists.iter().all(|(_, _, l, _)| l.is_empty()) {
        let _ = write!(body, "<p>{}</p></section>", t(lang, "d_no_dead"));
        return;
    }
    let _ = write!(
        body,
        "<div class=\"scroll\"><table><thead><tr><th scope=\"col\">{queue}</th>\
         <th scope=\"col\">{kind}</th><th scope=\"col\">{when}</th><th scope=\"col\">{reason}</th>\
         <th scope=\"col\">{attempts}</th><th scope=\"col\">{action}</th></tr></thead><tbody>",
        queue = t(lang, "d_queue"),
        kind = t(lang, "d_kind"),
        when = t(lang, "d_when"),
        reason = t(lang, "reason"),
        attempts = t(lang, "d_attempts"),
        action = t(lang, "d_action"),
    );
    let csrf = esc(&s.csrf);
    for (queue, name, list, _) in &lists {
        for d in list.iter() {
            let when =
                d.at.map(|a| a.strftime("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_else(|| "–".to_owned());
            let action = if d.retryable {
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"/admin/dead/{q}/{id}/retry\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button type=\"submit\" aria-label=\"{label} {id}\">{retry}</button></form>",
                    q = queue.as_str(),
                    id = d.id,
                    label = t(lang, "d_retry_label"),
                    retry = t(lang, "d_retry"),
                )
            } else {
                "–".to_owned()
            };
            let _ = write!(
                body,
                "<tr><td>{q}</td><td>{kind}</td><td>{when}</td><td>{reason}</td>\
                 <td>{attempts}</td><td>{action}</td></tr>",
                q = t(lang, name),
                kind = esc(d.kind.as_deref().unwrap_or("–")),
                reason = reason(lang, &d.reason),
                attempts = d.attempts,
            );
        }
    }
    body.push_str("</tbody></table></div>");
    for (_, name, list, count) in &lists {
        if *count > list.len() {
            let _ = write!(
                body,
                "<p>{}: {} {} {count}.</p>",
                t(lang, name),
                list.len(),
                t(lang, "d_of"),
            );
        }
    }
    body.push_str("</section>");
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn count(s: &Summary, k: Kpi) -> f64 {
    s.get(k) as f64
}

fn minutes(secs: Option<f64>) -> Option<f64> {
    secs.map(|s| (s / 60.0 * 10.0).round() / 10.0)
}

fn rate_text(r: Option<f64>, lang: Lang) -> String {
    r.map_or_else(
        || t(lang, "d_none_ended").to_owned(),
        |r| format!("{:.1} %", r * 100.0),
    )
}

fn kpis(body: &mut String, lang: Lang, data: &Data) {
    let total = &data.total;
    let labels: Vec<String> = data
        .days
        .iter()
        .map(|(d, _)| d.strftime("%m-%d").to_string())
        .collect();
    let per_day =
        |f: &dyn Fn(&Summary) -> f64| -> Vec<f64> { data.days.iter().map(|(_, s)| f(s)).collect() };
    let median = minutes(total.median_staff_response())
        .map_or_else(|| "–".to_owned(), |m| format!("{m} min"));
    let _ = write!(
        body,
        "<section><h2>{title}</h2><dl class=\"facts\">\
         <dt>{sent_l}</dt><dd>{sent}</dd><dt>{conf_l}</dt><dd>{conf}</dd>\
         <dt>{opt_l}</dt><dd>{opt}</dd>\
         <dt>{ns_with_l}</dt><dd>{ns_with}</dd><dt>{ns_without_l}</dt><dd>{ns_without}</dd>\
         <dt>{resp_l}</dt><dd>{median} ({replies_l}: {replies})</dd></dl>",
        title = t(lang, "d_last_30"),
        sent_l = t(lang, "d_sent"),
        sent = total.get(Kpi::Sent),
        conf_l = t(lang, "d_confirmed"),
        conf = total.get(Kpi::Confirmed),
        opt_l = t(lang, "d_opt_outs"),
        opt = total.get(Kpi::OptOut),
        ns_with_l = t(lang, "d_ns_with"),
        ns_with = rate_text(total.no_show_rate(true), lang),
        ns_without_l = t(lang, "d_ns_without"),
        ns_without = rate_text(total.no_show_rate(false), lang),
        resp_l = t(lang, "d_response"),
        replies = total.staff_response.len(),
        replies_l = t(lang, "d_replies"),
    );
    let every = 5;
    let _ = write!(
        body,
        "<h3>{}</h3>{}",
        t(lang, "d_chart_reminders"),
        charts::bars(
            t(lang, "d_chart_reminders"),
            &labels,
            &[
                Series {
                    name: t(lang, "d_sent"),
                    class: "s1",
                    values: per_day(&|s| count(s, Kpi::Sent)),
                },
                Series {
                    name: t(lang, "d_confirmed"),
                    class: "s2",
                    values: per_day(&|s| count(s, Kpi::Confirmed)),
                },
            ],
            every,
        )
    );
    let rates = [total.no_show_rate(true), total.no_show_rate(false)];
    let _ = write!(
        body,
        "<h3>{}</h3>{}",
        t(lang, "d_chart_no_show"),
        charts::bars(
            t(lang, "d_chart_no_show"),
            &[
                t(lang, "d_ns_with").to_owned(),
                t(lang, "d_ns_without").to_owned()
            ],
            &[Series {
                name: "%",
                class: "s1",
                values: rates.iter().map(|r| r.unwrap_or(0.0) * 100.0).collect(),
            }],
            1,
        )
    );
    let _ = write!(
        body,
        "<h3>{}</h3>{}",
        t(lang, "d_chart_opt_outs"),
        charts::bars(
            t(lang, "d_chart_opt_outs"),
            &labels,
            &[Series {
                name: t(lang, "d_opt_outs"),
                class: "s2",
                values: per_day(&|s| count(s, Kpi::OptOut)),
            }],
            every,
        )
    );
    let _ = write!(
        body,
        "<h3>{}</h3>{}",
        t(lang, "d_chart_response"),
        charts::bars(
            t(lang, "d_chart_response"),
            &labels,
            &[Series {
                name: "min",
                class: "s1",
                values: per_day(&|s| minutes(s.median_staff_response()).unwrap_or(0.0)),
            }],
            every,
        )
    );
    figures_table(body, lang, data);
    body.push_str("</section>");
}

/// The charts' numbers, one row per day, for screen readers and for
/// copying.
fn figures_table(body: &mut String, lang: Lang, data: &Data) {
    let _ = write!(
        body,
        "<h3 id=\"figures\">{title}</h3><div class=\"scroll\" role=\"region\" aria-labelledby=\"figures\" tabindex=\"0\">\
         <table class=\"figures\"><thead><tr><th scope=\"col\">{day}</th><th scope=\"col\">{sent}</th>\
         <th scope=\"col\">{conf}</th><th scope=\"col\">{opt}</th><th scope=\"col\">{nsw}</th>\
         <th scope=\"col\">{nswo}</th><th scope=\"col\">{replies}</th><th scope=\"col\">{resp}</th></tr></thead><tbody>",
        title = t(lang, "d_figures"),
        day = t(lang, "d_day"),
        sent = t(lang, "d_sent"),
        conf = t(lang, "d_confirmed"),
        opt = t(lang, "d_opt_outs"),
        nsw = t(lang, "d_ns_with_n"),
        nswo = t(lang, "d_ns_without_n"),
        replies = t(lang, "d_replies_n"),
        resp = t(lang, "d_response_min"),
    );
    for (d, s) in data.days.iter().rev() {
        let _ = write!(
            body,
            "<tr><th scope=\"row\">{d}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            s.get(Kpi::Sent),
            s.get(Kpi::Confirmed),
            s.get(Kpi::OptOut),
            s.get(Kpi::NoShowConfirmed),
            s.get(Kpi::NoShowUnconfirmed),
            s.staff_response.len(),
            minutes(s.median_staff_response()).map_or_else(|| "–".to_owned(), |m| m.to_string()),
        );
    }
    body.push_str("</tbody></table></div>");
}

/// The dashboard's words (one line per word: a table reads best as one).
#[rustfmt::skip]
pub const WORDS: Words = &[
    ("d_forbidden", "Only administrators may open the dashboard.", "Nur Administratorinnen und Administratoren dürfen die Übersicht öffnen."),
    ("d_warnings", "Warnings", "Warnungen"),
    ("d_no_warnings", "No warnings: everything looks healthy.", "Keine Warnungen: alles in Ordnung."),
    ("d_mode", "Mode", "Modus"),
    ("d_live", "live (messages are sent)", "live (Nachrichten werden gesendet)"),
    ("d_dry_run", "dry-run (nothing is sent)", "Probebetrieb (nichts wird gesendet)"),
    ("d_host", "API host", "API-Host"),
    ("d_token", "Access token", "Zugangstoken"),
    ("d_token_none", "none configured", "keines eingerichtet"),
    ("d_token_ok", "in use", "in Gebrauch"),
    ("d_token_missing", "missing: the token file cannot be read (sending paused)", "fehlt: die Token-Datei ist nicht lesbar (Versand angehalten)"),
    ("d_token_rejected", "rejected by Meta (error 190): sending paused until it is replaced", "von Meta abgelehnt (Fehler 190): Versand angehalten, bis es ersetzt ist"),
    ("d_token_unknown", "unknown: the WhatsApp outbox is not running", "unbekannt: der WhatsApp-Postausgang läuft nicht"),
    ("d_queues", "Queues", "Warteschlangen"),
    ("d_queue", "Queue", "Warteschlange"),
    ("d_depth", "Waiting", "Wartend"),
    ("d_oldest", "Oldest waits for", "Älteste wartet seit"),
    ("d_dead", "Dead letters", "Unzustellbare"),
    ("d_pms_out", "To the PMS", "An das PVS"),
    ("d_wa_out", "To WhatsApp", "An WhatsApp"),
    ("d_dead_title", "Dead letters (messages that were not delivered)", "Unzustellbare Nachrichten"),
    ("d_no_dead", "None.", "Keine."),
    ("d_kind", "Kind", "Art"),
    ("d_when", "When", "Wann"),
    ("d_attempts", "Attempts", "Versuche"),
    ("d_action", "Action", "Aktion"),
    ("d_retry", "Retry", "Erneut senden"),
    ("d_retry_label", "Retry dead letter", "Erneut senden: Nachricht"),
    ("d_of", "shown of", "angezeigt von"),
    ("d_r_refused", "refused by the receiver", "vom Empfänger abgelehnt"),
    ("d_r_attempts", "gave up after repeated failures", "nach wiederholten Fehlversuchen aufgegeben"),
    ("d_r_erased", "the patient's data was erased", "die Daten der Person wurden gelöscht"),
    ("d_r_damaged", "damaged, cannot be read", "beschädigt, nicht lesbar"),
    ("d_r_other", "other", "anderes"),
    ("d_last_30", "The last 30 days", "Die letzten 30 Tage"),
    ("d_sent", "Reminders sent", "Erinnerungen gesendet"),
    ("d_confirmed", "Reminders confirmed", "Erinnerungen bestätigt"),
    ("d_opt_outs", "Opt-outs", "Abmeldungen"),
    ("d_ns_with", "No-show rate with a confirmed reminder", "Nichterscheinen mit bestätigter Erinnerung"),
    ("d_ns_without", "No-show rate without a confirmed reminder", "Nichterscheinen ohne bestätigte Erinnerung"),
    ("d_none_ended", "no visits ended", "keine Termine beendet"),
    ("d_response", "Median staff response time", "Mittlere Antwortzeit der Praxis (Median)"),
    ("d_replies", "first replies", "erste Antworten"),
    ("d_chart_reminders", "Reminders sent and confirmed per day", "Erinnerungen pro Tag: gesendet und bestätigt"),
    ("d_chart_no_show", "No-show rate, with and without a confirmed reminder (percent)", "Nichterscheinen mit und ohne bestätigte Erinnerung (Prozent)"),
    ("d_chart_opt_outs", "Opt-outs per day", "Abmeldungen pro Tag"),
    ("d_chart_response", "Median staff response time per day (minutes)", "Mittlere Antwortzeit pro Tag (Minuten)"),
    ("d_figures", "Figures per day", "Zahlen pro Tag"),
    ("d_day", "Day", "Tag"),
    ("d_ns_with_n", "No-shows, confirmed reminder", "Nicht erschienen, bestätigt"),
    ("d_ns_without_n", "No-shows, no confirmed reminder", "Nicht erschienen, unbestätigt"),
    ("d_replies_n", "First staff replies", "Erste Antworten"),
    ("d_response_min", "Median response (min)", "Antwortzeit Median (min)"),
];

/// The dashboard's styles: colours as classes (the CSP forbids inline
/// `style`); the bars' colours are ≥ 3:1 against white (graphics), the text
/// ≥ 4.5:1.
pub const CSS: &str = ".chart{display:block;width:100%;max-width:48rem;height:auto}\
.chart .s1,.key.s1{fill:#0b3d62;background:#0b3d62}.chart .s2,.key.s2{fill:#a34f00;background:#a34f00}\
.chart .grid{stroke:#bbb;stroke-width:1}.chart .axis{fill:#333;font-size:11px}\
.legend{list-style:none;padding:0;margin:.25rem 0 1rem;display:flex;flex-wrap:wrap;gap:1rem}\
.legend .key{display:inline-block;width:.9rem;height:.9rem;margin-right:.4rem;vertical-align:middle}\
.scroll{overflow-x:auto;max-width:100%}table.figures th,table.figures td{white-space:nowrap}\
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.25rem 1rem}dl.facts dt{font-weight:600}dl.facts dd{margin:0}\
ul.warn li{background:#fff4e5;border-left:4px solid #a34f00;padding:.4rem;margin:.3rem 0;list-style:none}ul.warn{padding:0}\
form.inline{display:inline;margin:0}form.inline button{margin-top:0;padding:.35rem .8rem}\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_in_plain_words() {
        assert_eq!(reason(Lang::En, "refused"), "refused by the receiver");
        assert_eq!(
            reason(Lang::En, "refused:131026"),
            "refused by the receiver (131026)"
        );
        assert_eq!(
            reason(Lang::De, "out of attempts"),
            "nach wiederholten Fehlversuchen aufgegeben"
        );
        assert_eq!(
            reason(Lang::En, "damaged: does not decode"),
            "damaged, cannot be read"
        );
        assert_eq!(minutes(Some(90.0)), Some(1.5));
    }
}
