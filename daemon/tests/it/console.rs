//! The staff console (issue 12, first slice) over real TLS sockets, with
//! the self-signed certificate made at start as the client's only root and
//! a manual clock: sign-in with password + TOTP computed here, a waiting
//! conversation (from a signed "I need to talk to someone" webhook) in the
//! inbox, a reply that reaches the simulator, a POST without the CSRF token
//! refused, five wrong TOTP codes locking the account, the idle timeout,
//! no other patient's marker on a conversation page, and the audit naming
//! the staff member.

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::text_message;
use clinic_relay::clock::Clock;
use clinic_relay::console::staff::{self, Role};
use clinic_relay::model::EventKind;
use clinic_relay::vault::Tree;
use graph_sim::{Sim, Template};
use jiff::SignedDuration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONSOLE: &str = "\n[conversations]\nenabled = true\n\n[console]\nlisten = \"127.0.0.1:0\"\n";
const PASSWORD: &str = "zz-correct-horse-battery";
const OTHER_WA_ID: &str = "4915155509999";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `name=value` of each Set-Cookie.
    fn cookies(&self) -> HashMap<String, String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| {
                let (kv, _) = v.split_once(';').unwrap_or((v, ""));
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect()
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        self.body[at..at + 64].to_owned()
    }
}

/// A TLS client that trusts only the console's certificate.
struct Browser {
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    cookies: HashMap<String, String>,
    lang: &'static str,
}

impl Browser {
    fn new(d: &Daemon) -> Browser {
        Browser::at(
            d.running.console_addr.unwrap(),
            &d.install.data.join("console-cert.pem"),
        )
    }

    fn at(addr: std::net::SocketAddr, pem: &std::path::Path) -> Browser {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(pem).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Browser {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            cookies: HashMap::new(),
            lang: "en-GB,en;q=0.9",
        }
    }

    async fn send(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = self.connector.connect(name, tcp).await.unwrap();
        let body = form
            .map(|f| {
                f.iter()
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            })
            .unwrap_or_default();
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\
             accept-language: {}\r\ncontent-length: {}\r\n",
            self.lang,
            body.len()
        );
        if form.is_some() {
            req.push_str("content-type: application/x-www-form-urlencoded\r\n");
        }
        if !cookie.is_empty() {
            req.push_str(&format!("cookie: {cookie}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let reply = Reply {
            status,
            headers,
            body: body.to_owned(),
        };
        for (k, v) in reply.cookies() {
            if v.is_empty() {
                self.cookies.remove(&k);
            } else {
                self.cookies.insert(k, v);
            }
        }
        reply
    }

    /// Opens `/events` and returns the open connection (headers unread).
    async fn events(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = self.connector.connect(name, tcp).await.unwrap();
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = format!("GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: {cookie}\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        tls
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.send("POST", path, Some(form)).await
    }

    /// Signs in with the TOTP code of the clock's present.
    async fn sign_in(&mut self, d: &Daemon, secret: &[u8], code: Option<&str>) -> Reply {
        let page = self.get("/login").await;
        assert_eq!(page.status, 200);
        let now_code = staff::code_at(secret, d.clock.now()).unwrap();
        let csrf = page.csrf();
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("name", "zz-desk"),
                ("password", PASSWORD),
                ("code", code.unwrap_or(&now_code)),
            ],
        )
        .await
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The daemon with conversations and the console on, two known patients
/// (CARE001 at `WA_ID`, CARE002 at `OTHER_WA_ID`) and staff member
/// `zz-desk`; returns the TOTP secret.
async fn setup(sim: &Sim) -> (Daemon, Vec<u8>) {
    let (pms, _received) = pms_peer().await;
    let d = daemon_with(sim, pms, "", CONSOLE).await;
    let mut c = d.mllp().await;
    let ack = c
        .send(&siu("SIU^S12^SIU_S12", "K1", "APPT-K1", "202701201000"))
        .await;
    assert_eq!(msa(&ack).0, "AA");
    let other = siu_s12_v25("K2", "APPT-K2", "CARE002", "202701201100")
        .replace("0151 5550 1234", "0151 5550 9999")
        .replace("ZZFAMILY", "ZZOTHERFAMILY");
    assert_eq!(msa(&c.send(&other).await).0, "AA");
    let vault = d.running.vault.clone();
    let enrolment = tokio::task::spawn_blocking(move || {
        staff::add(
            &vault,
            "zz-desk",
            Role::Desk,
            Some(PASSWORD.to_owned().into()),
            "test",
            t0(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    let secret = staff::secret_from_uri(&enrolment.otpauth).unwrap();
    (d, secret)
}

async fn drain(d: &Daemon) {
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the outbox empty", || {
        (d.running.vault.count(Tree::WaOutbox) == 0).then_some(())
    })
    .await;
}

async fn hand_off(d: &Daemon, wamid: &str, from: &str) -> String {
    let before = crate::webhook::events(d, EventKind::StaffRequested).len();
    let hi = text_message(wamid, from, "ZZ", "I need to talk to someone");
    assert_eq!(post_signed(d, hi).await, 200);
    drain(d).await;
    let events = crate::webhook::events(d, EventKind::StaffRequested);
    assert_eq!(events.len(), before + 1);
    events[before].details["conversation"].clone()
}

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

    // The reply goes out (inside the window: as text).
    let csrf = page.csrf();
    let r = b
        .post(
            &path,
            &[("csrf", &csrf), ("text", "ZZ staff: we call you at noon")],
        )
        .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some(path.trim_end_matches("/reply"))),
        "{}",
        r.body
    );
    drain(&d).await;
    until("the staff text at the simulator", || {
        sim.sent_messages()
            .iter()
            .any(|m| m["text"]["body"] == "ZZ staff: we call you at noon")
            .then_some(())
    })
    .await;
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

/// The inbox page's server time with 500 waiting conversations (unknown
/// senders, so no patient records are needed). A figure, not a gate:
/// `cargo test --release --test it console::inbox_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
#[allow(clippy::disallowed_methods)] // wall time is what is measured here
async fn inbox_time_with_500_waiting() {
    let sim = Sim::start().await.unwrap();
    let (d, secret) = setup(&sim).await;
    for n in 0..500u32 {
        let from = format!("4930555{n:05}");
        let hi = text_message(
            &format!("wamid.P{n}"),
            &from,
            "ZZ",
            "I need to talk to someone",
        );
        assert_eq!(post_signed(&d, hi).await, 200);
    }
    drain(&d).await;
    let mut b = Browser::new(&d);
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let r = b.get("/").await;
        times.push(started.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.body.matches("<tr><td>").count(), 500);
    }
    times.sort();
    println!(
        "inbox page with 500 waiting, request over TLS (new connection each): median {:?}, max {:?}",
        times[10], times[19]
    );
    // A new hand-off reaches an open inbox's stream: from the webhook's
    // POST to the event at the browser.
    let mut lags = Vec::new();
    for n in 0..10u32 {
        let mut live = b.events().await;
        read_until(&mut live, "retry: 3000").await;
        let started = std::time::Instant::now();
        let hi = text_message(
            &format!("wamid.L{n}"),
            &format!("4930666{n:05}"),
            "ZZ",
            "I need to talk to someone",
        );
        assert_eq!(post_signed(&d, hi).await, 200);
        read_until(&mut live, "event: inbox").await;
        lags.push(started.elapsed());
    }
    lags.sort();
    println!(
        "new hand-off to the open inbox's event stream: median {:?}, max {:?}",
        lags[5], lags[9]
    );
    d.stop().await;
}

/// Reads from an open stream until `needle` has come (or 10 s passed).
async fn read_until(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    needle: &str,
) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {}", String::from_utf8_lossy(&seen)));
    String::from_utf8(seen).unwrap()
}

/// The console in Debian's Chromium, driven by npm `playwright-core`
/// (`tests/console-browser/run.mjs`), with an axe-core scan of each page
/// and screenshots in `target/console-screenshots/`. Needs `chromium` and
/// `npm ci` in `tests/console-browser`: run by `scripts/console-browser`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn browser() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let sim = Sim::start().await.unwrap();
    sim.add_template(Template::approved("conversation_reopen", "en"));
    let (d, secret) = setup(&sim).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = tokio::process::Command::new("node")
        .arg(root.join("tests/console-browser/run.mjs"))
        .env(
            "CONSOLE_URL",
            format!("https://{}", d.running.console_addr.unwrap()),
        )
        .env("STAFF", "zz-desk")
        .env("PASSWORD", PASSWORD)
        .env("TOTP_HEX", hex::encode(&secret))
        .env("SHOTS", &shots)
        .env("NOW", d.clock.now().as_second().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("browser: {line}");
            if line == "handoff" {
                hand_off(&d, "wamid.B1", WA_ID).await;
            } else if let Some(secs) = line.strip_prefix("clock ") {
                d.clock
                    .advance(SignedDuration::from_secs(secs.parse().unwrap()));
            } else {
                log.push(line);
                continue;
            }
            let answer = format!("ok {}\n", d.clock.now().as_second());
            stdin.write_all(answer.as_bytes()).await.unwrap();
        }
        node.wait().await.unwrap()
    };
    let status = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the browser test finished in time");
    assert!(status.success(), "browser test failed:\n{}", log.join("\n"));
    assert!(log.iter().any(|l| l == "browser test: all passed"));
    drain(&d).await;
    until("the browser's reply at the simulator", || {
        sim.sent_messages()
            .iter()
            .any(|m| m["text"]["body"] == "ZZ staff: a reply from the browser")
            .then_some(())
    })
    .await;
    assert!(!sim
        .sent_messages()
        .iter()
        .any(|m| m["text"]["body"] == "ZZ forged"));
    d.stop().await;
}

/// The daemon's resident memory (kB) from /proc.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The real binary's RSS without the console, with it, and with 20 staff
/// sessions open (each has loaded the inbox once). A figure, not a gate:
/// `cargo test --test it console::rss -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
#[allow(clippy::disallowed_methods)] // the real daemon's TOTP runs on the wall clock
async fn rss_with_20_sessions() {
    let install = TestInstall::new("");
    let mut off = spawn_serve(&install);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let rss_off = rss_kb(off.child.id());
    off.child.kill().unwrap();
    off.child.wait().unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = std::fs::read_to_string(&install.config).unwrap();
    config.push_str(&format!("\n[console]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&install.config, config).unwrap();
    let mut accounts = Vec::new();
    for n in 0..20 {
        let name = format!("zz-desk{n}");
        let out = install.run(&["staff", "add", &name]);
        let text = stdout(&out);
        let password = text
            .lines()
            .find_map(|l| l.split_once("(shown once): ").map(|(_, p)| p.to_owned()))
            .unwrap();
        let uri = text.lines().find(|l| l.starts_with("otpauth://")).unwrap();
        accounts.push((name, password, staff::secret_from_uri(uri).unwrap()));
    }
    let mut on = spawn_serve(&install);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pem = install.data.join("console-cert.pem");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let rss_on = rss_kb(on.child.id());
    let mut open = Vec::new();
    for (name, password, secret) in &accounts {
        let mut b = Browser::at(addr, &pem);
        let page = b.get("/login").await;
        let code = staff::code_at(secret, jiff::Timestamp::now()).unwrap();
        let r = b
            .post(
                "/login",
                &[
                    ("csrf", &page.csrf()),
                    ("name", name),
                    ("password", password),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(b.get("/").await.status, 200);
        open.push(b);
    }
    let rss_sessions = rss_kb(on.child.id());
    println!(
        "RSS: console off {rss_off} kB; console on {rss_on} kB; with 20 sessions {rss_sessions} kB \
         (console + sessions add {} kB)",
        rss_sessions.saturating_sub(rss_off)
    );
    on.child.kill().unwrap();
    on.child.wait().unwrap();
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
