//! The console's routes. Pages that show patient data need a live session
//! and write their audit entry (actor `staff:NAME`) before they are sent;
//! every POST needs the session's CSRF token (the login form: the token of
//! its own cookie), else 403.

use super::http::{self, add_cookie, cookie, form, redirect, secure, BodyError, Resp};
use super::pages::{self, Lang};
use super::session::Session;
use super::staff::{self, Login};
use super::ConsoleState;
use crate::api::conversations as inbox;
use crate::api::conversations::Delivery;
use crate::api::routes::audit_read;
use crate::api::Problem;
use crate::care::conversation::store::{Author, Entry};
use crate::commands::Origin;
use crate::webhook::media::InboundMedia;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

const LOGIN_COOKIE: &str = "login";

/// The stylesheet, one piece per page family, served as one file.
const STYLES: &[&str] = &[pages::CSS, super::dashboard::CSS, super::lookup::CSS];

fn session_cookie(state: &ConsoleState) -> &'static str {
    // `__Host-` needs `Secure`, which only TLS has.
    if state.tls {
        "__Host-session"
    } else {
        "session"
    }
}

fn login_cookie(state: &ConsoleState) -> &'static str {
    if state.tls {
        "__Host-login"
    } else {
        LOGIN_COOKIE
    }
}

fn cookie_attrs(state: &ConsoleState) -> &'static str {
    if state.tls {
        "; Secure; HttpOnly; SameSite=Strict; Path=/"
    } else {
        "; HttpOnly; SameSite=Strict; Path=/"
    }
}

pub(super) fn eq(a: &str, b: &str) -> bool {
    staff::same(a.as_bytes(), b.as_bytes())
}

pub async fn handle(state: &Arc<ConsoleState>, req: Request<Incoming>, peer: IpAddr) -> Resp {
    let lang = Lang::from_header(
        req.headers()
            .get(hyper::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match (&method, segments.as_slice()) {
        (&Method::GET, ["static", "console.css"]) => {
            let mut r = http::html(StatusCode::OK, STYLES.concat());
            if let Ok(v) = hyper::header::HeaderValue::from_str("text/css; charset=utf-8") {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            return secure(r, state.tls, false);
        }
        (&Method::GET, ["static", "console.js"]) => {
            let mut r = http::html(StatusCode::OK, super::live::SCRIPT.to_owned());
            if let Ok(v) = hyper::header::HeaderValue::from_str("text/javascript; charset=utf-8") {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            return secure(r, state.tls, false);
        }
        (&Method::GET, ["events"]) => match session(state, &req) {
            Some((id, _)) => http::event_stream(super::live::start(state, id)),
            None => http::text(StatusCode::UNAUTHORIZED, "signed out\n"),
        },
        (&Method::GET, ["login"]) => login_page(state, lang, None, StatusCode::OK),
        (&Method::POST, ["login"]) => login(state, req, lang, peer).await,
        (&Method::POST, ["logout"]) => logout(state, req).await,
        (&Method::GET, [""]) => {
            with_session(state, &req, lang, |s| inbox_page(state, lang, s)).await
        }
        (&Method::GET, ["c", id]) => {
            let id = (*id).to_owned();
            with_session(state, &req, lang, |s| conversation_page(state, lang, s, id)).await
        }
        (&Method::GET, ["c", id, "m", n]) => {
            let (id, n) = ((*id).to_owned(), (*n).to_owned());
            with_session(state, &req, lang, |s| async move {
                // The inbox API's own call: the read is audited there.
                match inbox::media(&state.api, &id, &n, &actor(&s)).await {
                    Ok(r) => r,
                    Err(p) => problem_page(lang, &p),
                }
            })
            .await
        }
        (&Method::POST, ["c", id, action @ ("reply" | "close")]) => {
            let (id, action) = ((*id).to_owned(), *action);
            conversation_post(state, req, lang, id, action).await
        }
        (&Method::GET, ["admin"]) => {
            with_session(state, &req, lang, |s| {
                super::dashboard::page(state, lang, s)
            })
            .await
        }
        (&Method::POST, ["admin", "dead", queue, id, "retry"]) => {
            let (queue, id) = ((*queue).to_owned(), (*id).to_owned());
            super::dashboard::retry(state, req, lang, queue, id).await
        }
        (&Method::GET, ["p"]) => {
            with_session(state, &req, lang, |s| super::lookup::search_form(lang, s)).await
        }
        (&Method::POST, ["p"]) => super::lookup::search(state, req, lang).await,
        (&Method::GET, ["p", id]) => {
            let id = (*id).to_owned();
            with_session(state, &req, lang, |s| {
                super::lookup::patient_page(state, lang, s, id)
            })
            .await
        }
        (&Method::POST, ["p", id, "consent"]) => {
            let id = (*id).to_owned();
            super::lookup::consent_post(state, req, lang, id).await
        }
        (&Method::GET | &Method::POST, _) => {
            http::html(StatusCode::NOT_FOUND, pages::error(lang, "notfound", ""))
        }
        _ => http::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    };
    secure(resp, state.tls, true)
}

/// The live session of this request, if the account may still sign in.
pub(super) fn session(state: &ConsoleState, req: &Request<Incoming>) -> Option<(String, Session)> {
    let id = cookie(req, session_cookie(state))?;
    let s = state.sessions.touch(&id, state.api.clock.now())?;
    // Disabled or locked meanwhile: every session of the account ends.
    match staff::load(&state.api.vault, &s.name) {
        Ok(Some(a)) if !a.disabled && !a.locked => Some((id, s)),
        _ => {
            state.sessions.remove_staff(&s.name);
            None
        }
    }
}

pub(super) async fn with_session<F, Fut>(
    state: &ConsoleState,
    req: &Request<Incoming>,
    _lang: Lang,
    page: F,
) -> Resp
where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    match session(state, req) {
        Some((_, s)) => page(s).await,
        None => redirect("/login"),
    }
}

fn login_page(state: &ConsoleState, lang: Lang, problem: Option<&str>, status: StatusCode) -> Resp {
    let Some(token) = super::session::token() else {
        return http::text(StatusCode::SERVICE_UNAVAILABLE, "no random numbers\n");
    };
    let mut r = http::html(status, pages::login(lang, &token, problem));
    add_cookie(
        &mut r,
        &format!("{}={token}{}", login_cookie(state), cookie_attrs(state)),
    );
    r
}

/// A POSTed form of a live session with the session's CSRF token: the
/// session's id, the session and the fields; else the answer to send
/// (signed out → the sign-in page, a bad form → 4xx, a missing or wrong
/// token → 403). The body is read first so that a refusal never leaves it
/// unread on a kept-alive connection.
pub(super) async fn signed_form(
    state: &ConsoleState,
    req: Request<Incoming>,
) -> Result<(String, Session, HashMap<String, String>), Resp> {
    let found = session(state, &req);
    let fields = form(req).await.map_err(|e| body_refused(&e))?;
    let Some((id, s)) = found else {
        return Err(redirect("/login"));
    };
    if !eq(&s.csrf, field(&fields, "csrf")) {
        return Err(http::text(
            StatusCode::FORBIDDEN,
            "missing or wrong form token\n",
        ));
    }
    Ok((id, s, fields))
}

pub(super) fn body_refused(e: &BodyError) -> Resp {
    match e {
        BodyError::TooLarge => http::text(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n"),
        BodyError::NotAForm | BodyError::Read => {
            http::text(StatusCode::BAD_REQUEST, "not a form\n")
        }
    }
}

pub(super) fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> &'a str {
    f.get(name).map_or("", String::as_str)
}

async fn login(state: &ConsoleState, req: Request<Incoming>, lang: Lang, peer: IpAddr) -> Resp {
    let expected = cookie(&req, login_cookie(state));
    let fields = match form(req).await {
        Ok(f) => f,
        Err(e) => return body_refused(&e),
    };
    match expected {
        Some(t) if eq(&t, field(&fields, "csrf")) => {}
        _ => return http::text(StatusCode::FORBIDDEN, "missing or wrong form token\n"),
    }
    let now = state.api.clock.now();
    if !state.throttle.allow(peer, now) {
        return login_page(
            state,
            lang,
            Some("throttled"),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let name = field(&fields, "name").trim().to_owned();
    if staff::check_name(&name).is_err() || field(&fields, "password").len() > 256 {
        state.throttle.failed(peer, now);
        return login_page(state, lang, Some("wrong"), StatusCode::UNAUTHORIZED);
    }
    let account = match staff::load(&state.api.vault, &name) {
        Ok(a) => a,
        Err(e) => return failed(lang, &e.to_string()),
    };
    let (password, code) = (
        zeroize::Zeroizing::new(field(&fields, "password").to_owned()),
        field(&fields, "code").to_owned(),
    );
    // Argon2 takes tens of milliseconds: off the runtime's threads.
    let checked =
        tokio::task::spawn_blocking(move || staff::check(account.as_ref(), &password, &code, now))
            .await;
    let Ok(checked) = checked else {
        return failed(lang, "the login check did not finish");
    };
    match staff::record(&state.api.vault, &name, checked, now).await {
        Ok(Login::Ok(role)) => {
            let id = match state.sessions.create(&name, role, now).await {
                Ok(Some(id)) => id,
                Ok(None) => return failed(lang, "no random numbers"),
                Err(e) => return failed(lang, &e.to_string()),
            };
            let mut r = redirect("/");
            add_cookie(
                &mut r,
                &format!("{}={id}{}", session_cookie(state), cookie_attrs(state)),
            );
            add_cookie(
                &mut r,
                &format!("{}=; Max-Age=0{}", login_cookie(state), cookie_attrs(state)),
            );
            r
        }
        Ok(Login::Wrong) => {
            state.throttle.failed(peer, now);
            login_page(state, lang, Some("wrong"), StatusCode::UNAUTHORIZED)
        }
        Ok(Login::Locked) => {
            state.throttle.failed(peer, now);
            state.sessions.remove_staff(&name);
            login_page(state, lang, Some("locked"), StatusCode::FORBIDDEN)
        }
        Err(e) => failed(lang, &e.to_string()),
    }
}

async fn logout(state: &ConsoleState, req: Request<Incoming>) -> Resp {
    let (id, _, _) = match signed_form(state, req).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    if let Err(e) = state.sessions.end(&id, state.api.clock.now()).await {
        // Signed out in memory already; the record ends at its idle time.
        tracing::warn!(error = %e, "a console sign-out was not stored");
    }
    let mut r = redirect("/login");
    add_cookie(
        &mut r,
        &format!(
            "{}=; Max-Age=0{}",
            session_cookie(state),
            cookie_attrs(state)
        ),
    );
    r
}

pub(super) fn failed(lang: Lang, detail: &str) -> Resp {
    http::html(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::error(lang, "error", detail),
    )
}

pub(super) fn problem_page(lang: Lang, p: &Problem) -> Resp {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let what = if status == StatusCode::NOT_FOUND {
        "notfound"
    } else {
        "error"
    };
    http::html(status, pages::error(lang, what, &p.detail))
}

/// The clinic's time zone (`[care] time_zone`; UTC without care config):
/// every time on a page is the clinic's wall-clock time.
pub(super) fn clinic_tz(state: &ConsoleState) -> jiff::tz::TimeZone {
    state
        .api
        .vault
        .care()
        .map_or(jiff::tz::TimeZone::UTC, |c| c.time_zone.clone())
}

pub(super) fn viewer(s: &Session) -> pages::Viewer<'_> {
    pages::Viewer {
        name: &s.name,
        csrf: &s.csrf,
        admin: s.role == staff::Role::Admin,
    }
}

pub(super) fn actor(s: &Session) -> String {
    format!("staff:{}", s.name)
}

async fn inbox_page(state: &ConsoleState, lang: Lang, s: Session) -> Resp {
    let waiting = match inbox::find(&state.api, Some("waiting")) {
        Ok(w) => w,
        Err(p) => return problem_page(lang, &p),
    };
    if let Err(p) = audit_read(&state.api, &actor(&s), "conversation.list", None).await {
        return problem_page(lang, &p);
    }
    let now = state.api.clock.now();
    http::html(
        StatusCode::OK,
        pages::inbox(lang, viewer(&s), &waiting, now),
    )
}

async fn conversation_page(state: &ConsoleState, lang: Lang, s: Session, id: String) -> Resp {
    let conv = match inbox::conv_id(&id) {
        Ok(c) => c,
        Err(p) => return problem_page(lang, &p),
    };
    let (c, log) = match inbox::view(&state.api, &conv) {
        Ok(v) => v,
        Err(p) => return problem_page(lang, &p),
    };
    // Audited before anything is sent; a read that cannot be audited is
    // not shown.
    if let Err(p) = audit_read(&state.api, &actor(&s), "conversation.read", c.patient()).await {
        return problem_page(lang, &p);
    }
    let media = match media_of(state, &log) {
        Ok(m) => m,
        Err(p) => return problem_page(lang, &p),
    };
    let now = state.api.clock.now();
    http::html(
        StatusCode::OK,
        pages::conversation(
            lang,
            viewer(&s),
            &pages::ConversationView {
                id: &conv,
                conversation: &c,
                log: &log,
                media: &media,
            },
            now,
            &clinic_tz(state),
        ),
    )
}

/// The media records of the patient's messages in `log`, by entry number
/// (records only: the bytes are opened when the browser asks for them).
fn media_of(
    state: &ConsoleState,
    log: &[(u64, Entry, Option<Delivery>)],
) -> Result<HashMap<u64, InboundMedia>, Problem> {
    let mut found = HashMap::new();
    for (n, e, _) in log {
        if let (Author::Patient, Some(r)) = (&e.from, &e.message_ref) {
            if let Some(m) = state
                .api
                .vault
                .wa_inbound_media_record_by_ref(r)
                .map_err(|e| Problem::internal(e.to_string()))?
            {
                found.insert(*n, m);
            }
        }
    }
    Ok(found)
}

async fn conversation_post(
    state: &ConsoleState,
    req: Request<Incoming>,
    lang: Lang,
    id: String,
    action: &str,
) -> Resp {
    let (_, s, fields) = match signed_form(state, req).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    let conv = match inbox::conv_id(&id) {
        Ok(c) => c,
        Err(p) => return problem_page(lang, &p),
    };
    // The form's one-time token makes a second submit of the same form
    // (a double click, a reload after a slow answer) a repeat of the
    // first, answered without a second message; the same token with
    // another text is refused.
    let once = field(&fields, "once");
    let idempotency_key = (!once.is_empty() && once.len() <= 64).then(|| {
        let scope = format!("{}\u{1f}{id}\u{1f}{action}\u{1f}{once}", s.name);
        state.api.vault.blind_index("console-form", &scope).to_vec()
    });
    let origin = Origin {
        key_retention: state.api.key_retention,
        idempotency_key,
        ..Origin::new(actor(&s))
    };
    let done = if action == "reply" {
        inbox::send_reply(&state.api, conv, field(&fields, "text"), &origin)
            .await
            .map(|_| format!("/c/{id}"))
    } else {
        inbox::close_conversation(&state.api, conv, &origin)
            .await
            .map(|_| "/".to_owned())
    };
    match done {
        Ok(to) => redirect(&to),
        Err(p) if p.detail == crate::api::routes::KEY_CONFLICT => http::html(
            StatusCode::CONFLICT,
            pages::error(lang, "error", super::words::t(lang, "form_reused")),
        ),
        Err(p) => problem_page(lang, &p),
    }
}
