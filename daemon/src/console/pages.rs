//! The console's pages, rendered on the server: plain HTML, no inline
//! script or style (the CSP forbids both), in English or German by the
//! browser's `Accept-Language`. Every value from the store is escaped.

use super::http::esc;
use super::words::t;
use crate::api::conversations::Delivery;
use crate::care::conversation::store::{Author, ConvId, Entry};
use crate::care::conversation::{Conversation, Phase};
use crate::webhook::media::{InboundMedia, MediaState};
use jiff::Timestamp;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    De,
}

impl Lang {
    /// The first of the browser's languages (by weight) that we have.
    pub fn from_header(header: Option<&str>) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for part in header.unwrap_or_default().split(',') {
            let mut bits = part.split(';');
            let tag = bits.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = bits
                .find_map(|b| b.trim().strip_prefix("q=")?.parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = match tag.split('-').next() {
                Some("de") => Lang::De,
                Some("en") => Lang::En,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
        }
    }
}

/// Who is looking at a page: the bar shows the name and the links the role
/// may follow, and every form carries the session's CSRF token.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub name: &'a str,
    pub csrf: &'a str,
    pub admin: bool,
}

pub fn layout(lang: Lang, title: &str, user: Option<Viewer<'_>>, body: &str) -> String {
    let bar = match user {
        Some(v) => {
            let dashboard = if v.admin {
                format!("<a href=\"/admin\">{}</a>", t(lang, "dashboard"))
            } else {
                String::new()
            };
            format!(
                "<header><nav aria-label=\"{menu}\"><a href=\"/\">{inbox}</a> <a href=\"/p\">{lookup}</a> {dashboard} \
                 <span class=\"who\">{name}</span> \
                 <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\">{logout}</button></form></nav></header>",
                menu = t(lang, "menu"),
                inbox = t(lang, "inbox"),
                lookup = t(lang, "lookup"),
                name = esc(v.name),
                csrf = esc(v.csrf),
                logout = t(lang, "logout"),
            )
        }
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · {app}</title><link rel=\"stylesheet\" href=\"/static/console.css\">\
         <script src=\"/static/console.js\" defer></script></head>\
         <body>{bar}<main>{body}</main></body></html>\n",
        code = lang.code(),
        title = esc(title),
        app = t(lang, "title"),
    )
}

/// The sign-in form; `problem` is a key of [`t`] ("wrong", "locked", …).
pub fn login(lang: Lang, csrf: &str, problem: Option<&str>) -> String {
    let alert = problem
        .map(|p| format!("<p class=\"alert\" role=\"alert\">{}</p>", t(lang, p)))
        .unwrap_or_default();
    let body = format!(
        "<h1>{login}</h1>{alert}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"name\">{name}</label><input id=\"name\" name=\"name\" autocomplete=\"username\" required maxlength=\"32\">\
         <label for=\"password\">{password}</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required maxlength=\"256\">\
         <label for=\"code\">{code}</label><input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required pattern=\"[0-9]{{6}}\" maxlength=\"6\">\
         <button type=\"submit\">{login}</button></form>",
        login = t(lang, "login"),
        csrf = esc(csrf),
        name = t(lang, "name"),
        password = t(lang, "password"),
        code = t(lang, "code"),
    );
    layout(lang, t(lang, "login"), None, &body)
}

/// "3 min", "2 h 05 min", "1 d 4 h".
pub(super) fn waited(secs: i64) -> String {
    let m = secs.max(0) / 60;
    match m {
        0..60 => format!("{m} min"),
        60..1440 => format!("{} h {:02} min", m / 60, m % 60),
        _ => format!("{} d {} h", m / 1440, (m % 1440) / 60),
    }
}

pub fn inbox(
    lang: Lang,
    user: Viewer<'_>,
    waiting: &[(ConvId, Conversation)],
    now: Timestamp,
) -> String {
    let mut rows = String::new();
    for (id, c) in waiting {
        let since = crate::api::conversations::since(c);
        let reason = match &c.phase {
            Phase::WaitingForStaff { reason, .. } => t(lang, reason.as_str()),
            _ => "",
        };
        let window = if c.window_open(now) { "yes" } else { "no" };
        rows.push_str(&format!(
            "<tr><td>{waited}</td><td>{reason}</td><td>{lang_}</td><td>{window}</td>\
             <td><a href=\"/c/{id}\">{open}</a></td></tr>",
            waited = waited(now.duration_since(since).as_secs()),
            lang_ = esc(c.language.as_deref().unwrap_or("–")),
            window = t(lang, window),
            id = hex::encode(id),
            open = t(lang, "open"),
        ));
    }
    let table = if waiting.is_empty() {
        format!("<p>{}</p>", t(lang, "none"))
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">{since}</th><th scope=\"col\">{reason}</th>\
             <th scope=\"col\">Lang</th><th scope=\"col\">{window}</th><th scope=\"col\"></th></tr></thead>\
             <tbody>{rows}</tbody></table>",
            since = t(lang, "since"),
            reason = t(lang, "reason"),
            window = t(lang, "window"),
        )
    };
    // `id="inbox"`: the script reloads this page when the inbox changes.
    let body = format!(
        "<section id=\"inbox\"><h1>{}</h1>{table}</section>",
        t(lang, "waiting")
    );
    layout(lang, t(lang, "inbox"), Some(user), &body)
}

/// What the conversation page shows: the conversation, its log with
/// delivery states, and the records of the patient's media by entry.
pub(crate) struct ConversationView<'a> {
    pub id: &'a ConvId,
    pub conversation: &'a Conversation,
    pub log: &'a [(u64, Entry, Option<Delivery>)],
    pub media: &'a HashMap<u64, InboundMedia>,
}

pub(crate) fn conversation(
    lang: Lang,
    user: Viewer<'_>,
    v: &ConversationView<'_>,
    now: Timestamp,
    tz: &jiff::tz::TimeZone,
) -> String {
    let ConversationView {
        id,
        conversation: c,
        log,
        media,
    } = *v;
    let hex_id = hex::encode(id);
    let mut items = String::new();
    for (n, e, delivery) in log {
        let who = match e.from {
            Author::Patient => "patient",
            Author::Bot => "bot",
            Author::Staff => "staff",
        };
        let words = e
            .text
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| format!("[{}]", esc(&e.kind)));
        let state = delivery
            .as_ref()
            .map(|d| {
                let why = match (d.state, d.error.as_deref()) {
                    ("failed", code) => format!(": {}", failure(lang, code)),
                    _ => String::new(),
                };
                format!("<span class=\"state\">{}{why}</span>", t(lang, d.state))
            })
            .unwrap_or_default();
        let attached = media
            .get(n)
            .map(|m| attachment(lang, &hex_id, *n, m))
            .unwrap_or_default();
        items.push_str(&format!(
            "<li class=\"{who}\"><span class=\"from\">{from}</span> <time datetime=\"{at}\">{short}</time>\
             <p>{words}</p>{attached}{state}</li>",
            from = t(lang, who),
            at = e.at,
            short = esc(&e.at.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M %Z").to_string()),
        ));
    }
    let open = c.window_open(now);
    let csrf = esc(user.csrf);
    let actions = if matches!(
        c.phase,
        Phase::WaitingForStaff { .. } | Phase::WithStaff { .. }
    ) {
        format!(
            "<form method=\"post\" action=\"/c/{hex_id}/reply\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"once\" value=\"{once}\">\
             <label for=\"text\">{reply}</label><p class=\"hint\">{hint}</p>\
             <textarea id=\"text\" name=\"text\" rows=\"4\" maxlength=\"4096\" required></textarea>\
             <button type=\"submit\">{reply}</button></form>\
             <form method=\"post\" action=\"/c/{hex_id}/close\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" class=\"secondary\">{close}</button></form>",
            reply = t(lang, "reply"),
            once = super::session::token().unwrap_or_default(),
            hint = t(lang, if open { "reply_open" } else { "reply_closed" }),
            close = t(lang, "close"),
        )
    } else {
        String::new()
    };
    let body = format!(
        "<p><a href=\"/\">{back}</a></p><h1>{title}</h1><p>{state_l}: {state}</p>\
         <ol class=\"log\">{items}</ol>{actions}",
        back = t(lang, "back"),
        title = t(lang, "conversation"),
        state_l = t(lang, "state"),
        state = esc(c.phase.name()),
    );
    layout(lang, t(lang, "conversation"), Some(user), &body)
}

/// Why a message was not delivered, in words: Meta's error codes that a
/// clinic meets (the Cloud API's error reference), and our own reasons for
/// not sending; anything else by its number.
fn failure(lang: Lang, code: Option<&str>) -> String {
    let key = match code {
        Some("131047" | "outside-window") => "why_window",
        Some("131026") => "why_unreachable",
        Some("131050") => "why_stopped",
        Some("131049") => "why_meta_held",
        Some("131000" | "131016" | "130429" | "131056" | "131057") => "why_meta_trouble",
        Some("190") => "why_token",
        Some("368" | "131031") => "why_account",
        Some(c) if c.starts_with("132") || c == "template-not-approved" => "why_template",
        Some("no-recipient") => "why_no_number",
        Some(c) if c.bytes().all(|b| b.is_ascii_digit()) => {
            return format!("{} {}", t(lang, "why_code"), esc(c));
        }
        _ => "why_unknown",
    };
    t(lang, key).to_owned()
}

/// Raster images a browser shows in an `<img>` (nothing scriptable: an
/// SVG from outside is a document, not a picture).
fn shown_inline(mime: &str) -> bool {
    matches!(
        mime,
        "image/jpeg" | "image/png" | "image/webp" | "image/gif"
    )
}

/// What a patient's photo or document looks like in the log: the picture,
/// a download link, or why there is none.
fn attachment(lang: Lang, conv: &str, n: u64, m: &InboundMedia) -> String {
    let MediaState::Fetched { size, .. } = &m.state else {
        let why = match m.state {
            MediaState::Pending => "media_pending",
            MediaState::DryRun => "media_dry_run",
            MediaState::Refused { .. } => "media_refused",
            _ => "media_purged",
        };
        return format!("<p class=\"media-note\">{}</p>", t(lang, why));
    };
    let mime = m
        .mime_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or(t).trim())
        .unwrap_or("application/octet-stream");
    let href = format!("/c/{conv}/m/{n}");
    let kib = size.div_ceil(1024);
    let link = format!(
        "<a href=\"{href}\" download>{download}</a> <span class=\"hint\">({mime}, {kib} KiB)</span>",
        download = t(lang, "media_download"),
        mime = esc(mime),
    );
    if m.kind == "image" && shown_inline(mime) {
        format!(
            "<figure><img src=\"{href}\" alt=\"{alt}\" loading=\"lazy\"><figcaption>{link}</figcaption></figure>",
            alt = t(lang, "media_photo"),
        )
    } else {
        format!("<p>{link}</p>")
    }
}

/// A short error page (`what`: a key of [`t`]).
pub fn error(lang: Lang, what: &str, detail: &str) -> String {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><a href=\"/\">{}</a></p>",
        t(lang, what),
        esc(detail),
        t(lang, "back")
    );
    layout(lang, t(lang, what), None, &body)
}

/// The console's one stylesheet (served from the binary, no CDN).
pub const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#111;background:#fff;font-size:1.05rem}\
main{max-width:56rem;margin:0 auto;padding:1rem}\
header nav{display:flex;gap:1rem;align-items:center;padding:.5rem 1rem;background:#0b3d62;color:#fff}\
header a{color:#fff}header form{margin-left:auto}\
label{display:block;margin-top:.75rem;font-weight:600}\
input,textarea{display:block;box-sizing:border-box;width:100%;max-width:30rem;padding:.5rem;font-size:1rem;border:1px solid #555}\
button{margin-top:.75rem;padding:.6rem 1.2rem;font-size:1rem;background:#0b3d62;color:#fff;border:0;cursor:pointer}\
button.secondary{background:#555}button:focus,a:focus,input:focus,textarea:focus{outline:3px solid #f4b400}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.5rem;border-bottom:1px solid #ccc}\
.alert{background:#fde8e8;border-left:4px solid #b00020;padding:.5rem}\
ol.log{list-style:none;padding:0}ol.log li{margin:.5rem 0;padding:.5rem;border-radius:6px;background:#f2f2f2}\
ol.log li.staff{background:#e3f0fb}ol.log li.bot{background:#f7f7e8}\
figure{margin:.5rem 0}figure img{max-width:100%;max-height:24rem;height:auto;border:1px solid #999}\
.media-note{font-style:italic}.state{font-size:.9rem;color:#333}.from{font-weight:600}.hint{font-size:.9rem;color:#333}\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browsers_language_by_weight() {
        assert_eq!(Lang::from_header(None), Lang::En);
        assert_eq!(Lang::from_header(Some("de-DE,de;q=0.9,en;q=0.8")), Lang::De);
        assert_eq!(Lang::from_header(Some("fr, de;q=0.5, en;q=0.7")), Lang::En);
        assert_eq!(Lang::from_header(Some("de;q=0, en")), Lang::En);
        assert_eq!(Lang::from_header(Some("fr")), Lang::En);
        assert_eq!(waited(59), "0 min");
        assert_eq!(waited(3 * 3600 + 300), "3 h 05 min");
        assert_eq!(waited(26 * 3600), "1 d 2 h");
    }
}
