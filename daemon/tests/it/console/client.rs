//! The console tests' client: a TLS "browser" that trusts only the
//! console's certificate, keeps cookies and reads forms' CSRF tokens; the
//! daemon with two known patients and a staff member.

use crate::care_reminders::*;
use crate::pms_support::*;
use crate::support::*;
use crate::webhook::text_message;
use clinic_relay::clock::Clock;
use clinic_relay::console::staff::{self, Role};
use clinic_relay::model::EventKind;
use clinic_relay::vault::Tree;
use graph_sim::Sim;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const CONSOLE: &str =
    "\n[conversations]\nenabled = true\n\n[console]\nlisten = \"127.0.0.1:0\"\n";
pub(crate) const PASSWORD: &str = "zz-correct-horse-battery";
pub(crate) const OTHER_WA_ID: &str = "4915155509999";

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `name=value` of each Set-Cookie.
    pub(crate) fn cookies(&self) -> HashMap<String, String> {
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

    /// The value of the first field named `name`.
    pub(crate) fn field(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        let at = self.body.find(&needle).expect("the field") + needle.len();
        let rest = &self.body[at..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// The value of the first hidden `csrf` field.
    pub(crate) fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        self.body[at..at + 64].to_owned()
    }
}

/// A TLS client that trusts only the console's certificate.
pub(crate) struct Browser {
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    cookies: HashMap<String, String>,
    pub(crate) lang: &'static str,
}

impl Browser {
    pub(crate) fn new(d: &Daemon) -> Browser {
        Browser::at(
            d.running.console_addr.unwrap(),
            &d.install.data.join("console-cert.pem"),
        )
    }

    /// The value of a cookie this browser holds.
    pub(crate) fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.get(name).cloned()
    }

    /// The same browser (its cookies) at a restarted daemon's new port.
    pub(crate) fn moved_to(&mut self, d: &Daemon) {
        self.addr = d.running.console_addr.unwrap();
    }

    pub(crate) fn at(addr: std::net::SocketAddr, pem: &std::path::Path) -> Browser {
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

    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Reply {
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
    pub(crate) async fn events(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
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

    pub(crate) async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    pub(crate) async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.send("POST", path, Some(form)).await
    }

    /// Signs in with the TOTP code of the clock's present.
    pub(crate) async fn sign_in(&mut self, d: &Daemon, secret: &[u8], code: Option<&str>) -> Reply {
        self.sign_in_as(d, "zz-desk", secret, code).await
    }

    /// [`Browser::sign_in`] as staff member `name`.
    pub(crate) async fn sign_in_as(
        &mut self,
        d: &Daemon,
        name: &str,
        secret: &[u8],
        code: Option<&str>,
    ) -> Reply {
        let page = self.get("/login").await;
        assert_eq!(page.status, 200);
        let now_code = staff::code_at(secret, d.clock.now()).unwrap();
        let csrf = page.csrf();
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("name", name),
                ("password", PASSWORD),
                ("code", code.unwrap_or(&now_code)),
            ],
        )
        .await
    }
}

pub(crate) fn encode(s: &str) -> String {
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
pub(crate) async fn setup(sim: &Sim) -> (Daemon, Vec<u8>) {
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

pub(crate) async fn drain(d: &Daemon) {
    d.running.whatsapp.as_ref().unwrap().kick();
    until("the outbox empty", || {
        (d.running.vault.count(Tree::WaOutbox) == 0).then_some(())
    })
    .await;
}

pub(crate) async fn hand_off(d: &Daemon, wamid: &str, from: &str) -> String {
    let before = crate::webhook::events(d, EventKind::StaffRequested).len();
    let hi = text_message(wamid, from, "ZZ", "I need to talk to someone");
    assert_eq!(post_signed(d, hi).await, 200);
    drain(d).await;
    let events = crate::webhook::events(d, EventKind::StaffRequested);
    assert_eq!(events.len(), before + 1);
    events[before].details["conversation"].clone()
}

/// Reads from an open stream until `needle` has come (or 10 s passed).
pub(crate) async fn read_until(
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

/// The daemon's resident memory (kB) from /proc.
pub(crate) fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
