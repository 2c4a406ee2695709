//! The staff console (issue 12, first slice) over real TLS sockets, with
//! the self-signed certificate made at start as the client's only root and
//! a manual clock: sign-in with password + TOTP computed here, a waiting
//! conversation (from a signed "I need to talk to someone" webhook) in the
//! inbox, a reply that reaches the simulator, a POST without the CSRF token
//! refused, five wrong TOTP codes locking the account, the idle timeout,
//! no other patient's marker on a conversation page, and the audit naming
//! the staff member.

mod client;
mod dashboard;
mod delivery;
mod figures;
mod lookup;
mod media;
mod sessions;

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use client::*;
use clinic_relay::clock::Clock;
use clinic_relay::console::staff;
use clinic_relay::model::EventKind;
use graph_sim::{Sim, Template};
use jiff::SignedDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_sign_in_see_the_waiting_patient_answer_and_sign_out() {
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("conversation_reopen", "en"));
    let (d, secret) = setup(&sim).await;
    let mine = hand_off(&d, "wamid.K1", WA_ID).await;
    d.clock.set(t0() + SignedDuration::from_secs(60));
    let theirs = hand_off(&d, "wamid.K2", OTHER_WA_ID).await;
    d.clock.set(t0() + SignedDuration::from_secs(180));

    let mut b = Browser::new(&d);
    // Without a session every page sends the browser to the sign-in form.
    let r = b.get("/").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    let r = b.get("/login").await;
    for (h, v) in [
        ("strict-transport-security", "max-age=31536000"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(r.header(h), Some(v), "{h}");
    }
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    // No inline script: each script is a file of ours.
    assert_eq!(
        r.body.matches("<script").count(),
        r.body.matches("<script src=\"/static/").count()
    );

    let r = b.sign_in(&d, &secret, None).await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/")),
        "{}",
        r.body
    );
    let set = r
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("__Host-session="))
        .map(|(_, v)| v.clone())
        .unwrap();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    // The same code a second time (a replay) is refused.
    let mut replay = Browser::new(&d);
    let now_code = staff::code_at(&secret, d.clock.now()).unwrap();
    let r = replay.sign_in(&d, &secret, Some(&now_code)).await;
    assert_eq!(r.status, 401);

    // The inbox: both waiting, oldest first, with their waiting time.
    let inbox = b.get("/").await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert_eq!(inbox.header("cache-control"), Some("no-store"));
    let (a, o) = (
        inbox.body.find(&mine).unwrap(),
        inbox.body.find(&theirs).unwrap(),
    );
    assert!(a < o, "oldest first");
    assert!(inbox.body.contains("3 min") && inbox.body.contains("2 min"));
    assert!(inbox.body.contains("asked for a person"));

    // The open inbox hears of a new hand-off (the page reloads itself).
    assert!(inbox
        .body
        .contains("<script src=\"/static/console.js\" defer></script>"));
    let script = b.get("/static/console.js").await;
    assert!(
        script.body.contains("EventSource")
            && script
                .header("content-type")
                .unwrap()
                .contains("javascript")
    );
    let mut live = b.events().await;
    let head = read_until(&mut live, "retry: 3000").await;
    assert!(head.contains("text/event-stream"), "{head}");
    hand_off(&d, "wamid.K3", "4930555000001").await;
    let said = read_until(&mut live, "event: inbox").await;
    assert!(!said.contains(&mine) && !said.contains("4930555000001"));
    drop(live);
    let mut anonymous = Browser::new(&d);
    assert_eq!(anonymous.get("/events").await.status, 401);

    // The conversation: its messages, nothing of the other patient, none
    // of the record's markers.
    let page = b.get(&format!("/c/{mine}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("I need to talk to someone"));
    assert!(page.body.contains("The window is open"));
    for marker in [
        theirs.as_str(),
        OTHER_WA_ID,
        "ZZOTHERFAMILY",
        "CARE002",
        WA_ID,
    ]
    .iter()
    .chain(FORBIDDEN_MARKERS)
    {
        assert!(!page.body.contains(marker), "{marker} on the page");
    }

    // A form without the CSRF token is refused and changes nothing.
    let path = format!("/c/{mine}/reply");
    let r = b.post(&path, &[("text", "ZZ staff: forged")]).await;
    assert_eq!(r.status, 403);
    let r = b
        .post(
            &path,
            &[("csrf", &"0".repeat(64)), ("text", "ZZ staff: forged")],
        )
        .await;
    assert_eq!(r.status, 403);

    // The reply goes out (inside the window: as text), once even if the
    // form is sent twice (a double click); the same form with another
    // text is refused.
    let csrf = page.csrf();
    let once = page.field("once");
    assert_eq!(once.len(), 64);
    for _ in 0..2 {
        let r = b
            .post(
                &path,
                &[
                    ("csrf", &csrf),
                    ("once", &once),
                    ("text", "ZZ staff: we call you at noon"),
                ],
            )
            .await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some(path.trim_end_matches("/reply"))),
            "{}",
            r.body
        );
    }
    let r = b
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("once", &once),
                ("text", "ZZ staff: other"),
            ],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    drain(&d).await;
    until("the staff text at the simulator", || {
        sim.sent_messages()
            .iter()
            .any(|m| m["text"]["body"] == "ZZ staff: we call you at noon")
            .then_some(())
    })
    .await;
    let staff_texts = |sim: &Sim| {
        sim.sent_messages()
            .iter()
            .filter(|m| {
                m["text"]["body"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("ZZ staff"))
            })
            .count()
    };
    assert_eq!(staff_texts(&sim), 1, "one message for two submits");
    assert!(!sim
        .sent_messages()
        .iter()
        .any(|m| m["text"]["body"] == "ZZ staff: forged"));
    let page = b.get(&format!("/c/{mine}")).await;
    assert!(page.body.contains("ZZ staff: we call you at noon"));
    assert!(page.body.contains("sent") || page.body.contains("delivered"));

    // German for a browser that asks for it.
    let mut german = Browser::new(&d);
    german.lang = "de-DE,de;q=0.9,en;q=0.5";
    let r = german.get("/login").await;
    assert!(r.body.contains("lang=\"de\"") && r.body.contains("Anmelden"));

    // Close, and sign out.
    let r = b
        .post(&format!("/c/{mine}/close"), &[("csrf", &csrf)])
        .await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    let inbox = b.get("/").await;
    assert!(!inbox.body.contains(&mine) && inbox.body.contains(&theirs));
    let r = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert_eq!(b.get("/").await.status, 303);
    assert_sim_saw_none(&sim, FORBIDDEN_MARKERS);

    // The audit names the staff member for every view and the reply.
    let patient = crate::webhook::events(&d, EventKind::StaffRequested)[0]
        .patient
        .map(|p| p.to_string());
    let install = d.stop().await;
    let vault = install.open();
    let entries: Vec<_> = vault.audit_entries(1).map(|(_, e)| e.unwrap()).collect();
    let by = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.actor == "staff:zz-desk")
            .collect::<Vec<_>>()
    };
    assert_eq!(by("conversation.read").len(), 2);
    assert!(by("conversation.read").iter().all(|e| e.subject == patient));
    assert_eq!(by("conversation.list").len(), 2);
    assert_eq!(by("conversation.reply").len(), 1);
    assert_eq!(by("conversation.close").len(), 1);
    assert_eq!(by("staff.login").len(), 1);
    assert_eq!(by("staff.login-failed").len(), 1);
    vault.verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_and_an_idle_session_ends() {
    let sim = Sim::start().await.unwrap();
    let (d, secret) = setup(&sim).await;

    // Signed in, then 16 idle minutes: signed out.
    let mut b = Browser::new(&d);
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    assert_eq!(b.get("/").await.status, 200);
    d.clock.advance(SignedDuration::from_mins(14));
    assert_eq!(
        b.get("/").await.status,
        200,
        "14 minutes idle is still fine"
    );
    d.clock.advance(SignedDuration::from_mins(16));
    let r = b.get("/").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert_eq!(d.running.console_sessions.as_ref().unwrap().len(), 0);

    // Five wrong codes lock the account: the right one no longer opens it.
    for n in 0..5 {
        let mut wrong = Browser::new(&d);
        let r = wrong.sign_in(&d, &secret, Some("000000")).await;
        let expect = if n < 4 { 401 } else { 403 };
        assert_eq!(r.status, expect, "attempt {n}: {}", r.body);
    }
    d.clock.advance(SignedDuration::from_mins(2));
    let mut late = Browser::new(&d);
    let r = late.sign_in(&d, &secret, None).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("locked"));
    let vault = d.running.vault.clone();
    let a = staff::load(&vault, "zz-desk").unwrap().unwrap();
    assert!(a.locked && a.failures == 5);

    // More failures from this address (the one above was the first of
    // this minute): after ten in a minute, 429.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let mut b = Browser::new(&d);
        statuses.push(b.sign_in(&d, &secret, Some("000000")).await.status);
    }
    assert_eq!(statuses, [403, 403, 403, 403, 403, 403, 403, 403, 403, 429]);
    d.clock.advance(SignedDuration::from_mins(1));

    // A login form without its token is refused before any check.
    let mut bare = Browser::new(&d);
    let r = bare
        .post(
            "/login",
            &[
                ("name", "zz-desk"),
                ("password", PASSWORD),
                ("code", "000000"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);

    // An admin's reset unlocks it with a new secret.
    let vault = d.running.vault.clone();
    let enrolment = tokio::task::spawn_blocking(move || {
        staff::reset(
            &vault,
            "zz-desk",
            None,
            Some(PASSWORD.to_owned().into()),
            "test",
            t0(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    let secret = staff::secret_from_uri(&enrolment.otpauth).unwrap();
    d.clock.advance(SignedDuration::from_mins(1));
    let mut again = Browser::new(&d);
    assert_eq!(again.sign_in(&d, &secret, None).await.status, 303);

    // Bad input is a 4xx, never a crash: an oversized form, a bad path.
    let csrf = again.get("/").await.csrf();
    let big = "x".repeat(70 * 1024);
    let r = again
        .post("/c/00/reply", &[("csrf", &csrf), ("text", &big)])
        .await;
    assert_eq!(r.status, 413);
    let r = again.get(&format!("/c/{}", "zz".repeat(16))).await;
    assert_eq!(r.status, 404);
    d.stop().await;
}

/// The QR code of text blocks that `staff add` prints, read back the way a
/// phone would: a filled half block is a light module (the code is drawn
/// for light-on-dark terminals), each module 4×4 pixels.
fn scan(text: &str) -> Option<String> {
    let rows: Vec<Vec<char>> = text
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| " █▀▄".contains(c)))
        .map(|l| l.chars().collect())
        .collect();
    let width = rows.first()?.len();
    let light = |x: usize, y: usize| {
        let c = rows[y / 2][x];
        matches!((c, y % 2), ('█', _) | ('▀', 0) | ('▄', 1))
    };
    let (w, h) = (width * 4, rows.len() * 2 * 4);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        if light(x / 4, y / 4) {
            255
        } else {
            0
        }
    });
    let grids = img.detect_grids();
    let (_, content) = grids.first()?.decode().ok()?;
    Some(content)
}

#[test]
fn staff_commands_and_the_certificate_fingerprint() {
    use std::os::unix::fs::PermissionsExt;
    let install = TestInstall::new("[console]\nlisten = \"127.0.0.1:0\"\n");
    install.open().close().unwrap();

    let out = install.run(&["staff", "add", "zz-admin", "--role", "admin"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("password for zz-admin (shown once): "),
        "{text}"
    );
    let uri = text
        .lines()
        .find(|l| l.starts_with("otpauth://totp/"))
        .unwrap();
    assert!(uri.contains("issuer=clinic-relay") && staff::secret_from_uri(uri).is_some());
    assert_eq!(
        scan(&text).as_deref(),
        Some(uri),
        "the QR code scans to the URI"
    );
    let again = install.run(&["staff", "add", "zz-admin"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already"));
    let bad = install.run(&["staff", "add", "ZZ Admin"]);
    assert_eq!(bad.status.code(), Some(1));

    let list = stdout(&install.run(&["staff", "list"]));
    assert!(list.contains("zz-admin\tadmin\tactive"), "{list}");
    assert!(!list.contains("otpauth") && !list.contains("argon2"));
    assert_eq!(
        install.run(&["staff", "disable", "zz-admin"]).status.code(),
        Some(0)
    );
    assert!(stdout(&install.run(&["staff", "list"])).contains("zz-admin\tadmin\tdisabled"));
    let reset = install.run(&["staff", "reset", "zz-admin", "--role", "desk"]);
    assert_eq!(reset.status.code(), Some(0), "{}", stderr(&reset));
    assert!(stdout(&reset).contains("otpauth://totp/"));
    assert!(stdout(&install.run(&["staff", "list"])).contains("zz-admin\tdesk\tactive"));

    let out = install.run(&["console", "cert"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let fp = stdout(&out);
    let fp = fp
        .lines()
        .find_map(|l| l.strip_prefix("SHA-256 fingerprint: "))
        .unwrap();
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    let key = install.data.join("console-key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The same certificate the next time (made once).
    let second = stdout(&install.run(&["console", "cert"]));
    assert!(second.contains(fp));

    let vault = install.open();
    let actions: Vec<String> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.actor == "admin:cli")
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["staff.add", "staff.disable", "staff.reset"]);
}

#[test]
fn plain_http_only_on_loopback() {
    let lan = TestInstall::new("[console]\nlisten = \"0.0.0.0:0\"\nplain_http = true\n");
    let out = lan.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("console.plain_http"),
        "{}",
        stderr(&out)
    );
    let half = TestInstall::new("[console]\nlisten = \"127.0.0.1:0\"\ncert = \"c.pem\"\n");
    assert!(stderr(&half.run(&["config", "check"])).contains("console.cert"));
    let idle = TestInstall::new("[console]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"5h\"\n");
    assert!(stderr(&idle.run(&["config", "check"])).contains("console.idle_timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_loopback_has_no_secure_cookie() {
    let d = Daemon::start(
        "[console]\nlisten = \"127.0.0.1:0\"\nplain_http = true\nidle_timeout = \"1m\"\n",
    )
    .await;
    assert!(!d.install.data.join("console-cert.pem").exists());
    let mut tcp = tokio::net::TcpStream::connect(d.running.console_addr.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /login HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let cookie = raw
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: login="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && !cookie.contains("Secure"),
        "{cookie}"
    );
    assert!(!raw
        .to_ascii_lowercase()
        .contains("strict-transport-security"));
    // Oversized headers: 431, not a crash.
    let mut tcp = tokio::net::TcpStream::connect(d.running.console_addr.unwrap())
        .await
        .unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    tcp.write_all(big.as_bytes()).await.unwrap();
    let mut raw = String::new();
    let _ = tcp.read_to_string(&mut raw).await;
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");
    d.stop().await;
}
