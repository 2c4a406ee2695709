//! The Cloud API client through an HTTP CONNECT proxy: a tiny proxy on
//! loopback (counts CONNECTs, copies bytes both ways) in front of the
//! Graph API simulator.

use crate::wa_client::config_for;
use clinic_relay::whatsapp::client::{ApiError, GraphClient, Token};
use clinic_relay::whatsapp::proxy::parse_setting;
use graph_sim::Sim;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the test proxy answers a CONNECT.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, then a tunnel.
    Tunnel,
    /// Accepts the connection and never answers.
    Silent,
    /// 403 to every CONNECT (a proxy that blocks the destination).
    Forbid,
    /// 200, then a tunnel to this address whatever the target (stands in
    /// for the internet: graph.facebook.com:443 lands on a local server).
    Redirect(SocketAddr),
}

/// A CONNECT proxy on loopback.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// Every CONNECT target (`host:port`), in order.
    pub connects: Arc<Mutex<Vec<String>>>,
    /// Every `Proxy-Authorization` value received.
    pub auths: Arc<Mutex<Vec<String>>>,
}

impl TestProxy {
    /// `require`: the `Proxy-Authorization` value without which it answers 407.
    pub async fn start(mode: Mode, require: Option<&str>) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let auths = Arc::new(Mutex::new(Vec::new()));
        let require = require.map(str::to_owned);
        let (c, a) = (connects.clone(), auths.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, mode, require.clone(), c.clone(), a.clone()));
            }
        });
        TestProxy {
            addr,
            connects,
            auths,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connects(&self) -> Vec<String> {
        self.connects.lock().unwrap().clone()
    }
}

async fn serve(
    mut client: TcpStream,
    mode: Mode,
    require: Option<String>,
    connects: Arc<Mutex<Vec<String>>>,
    auths: Arc<Mutex<Vec<String>>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte up to the blank line: nothing of the tunnel is read.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let first: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    if first.first() != Some(&"CONNECT") || first.len() < 2 {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    }
    let target = first[1].to_owned();
    connects.lock().unwrap().push(target.clone());
    let auth = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    if let Some(a) = &auth {
        auths.lock().unwrap().push(a.clone());
    }
    if mode == Mode::Silent {
        let mut sink = [0u8; 64];
        while client.read(&mut sink).await.unwrap_or(0) > 0 {}
        return;
    }
    if mode == Mode::Forbid {
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    if require.is_some() && auth != require {
        let _ = client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"clinic\"\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    let to = match mode {
        Mode::Redirect(addr) => addr.to_string(),
        _ => target,
    };
    let Ok(mut upstream) = TcpStream::connect(&to).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

fn text(to: &str) -> serde_json::Value {
    json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hello"}})
}

#[tokio::test]
async fn messages_reach_the_simulator_through_the_connect_proxy() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-p"));
    let proxy = TestProxy::start(Mode::Tunnel, None).await;
    let mut cfg = config_for(&sim);
    cfg.proxy = parse_setting(&proxy.url()).unwrap();
    let client = GraphClient::new(&cfg, Some(Token::new("tok-p"))).unwrap();
    assert_eq!(
        client.route(),
        format!("through the proxy {} (whatsapp.proxy)", proxy.addr)
    );
    for n in 0..3 {
        let sent = client.send(&text(&format!("+491555000{n}"))).await.unwrap();
        assert!(sent.wamid.starts_with("wamid."));
    }
    assert_eq!(sim.sent_messages().len(), 3);
    // One tunnel, to the simulator, reused by the pooled connection.
    assert_eq!(proxy.connects(), vec![sim.addr().to_string()]);
    assert!(proxy.auths.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_proxy_asking_for_credentials_names_the_setting_and_the_auth_file_answers_it() {
    let sim = Sim::start().await.unwrap();
    // base64("clinic:s3cret")
    let proxy = TestProxy::start(Mode::Tunnel, Some("Basic Y2xpbmljOnMzY3JldA==")).await;
    let mut cfg = config_for(&sim);
    cfg.proxy = parse_setting(&proxy.url()).unwrap();
    let client = GraphClient::new(&cfg, None).unwrap();
    let e = client.send(&text("+4915550001")).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ApiError::Connect(_)) && e.retryable(), "{e:?}");
    assert!(
        msg.contains("whatsapp.proxy") && msg.contains("407") && msg.contains("proxy_auth_file"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("proxy-auth");
    std::fs::write(&auth_file, "clinic:s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    cfg.proxy_auth_file = Some(auth_file);
    let client = GraphClient::new(&cfg, None).unwrap();
    client.send(&text("+4915550001")).await.unwrap();
    assert_eq!(sim.sent_messages().len(), 1);
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[tokio::test]
async fn a_refused_or_silent_proxy_is_a_clear_bounded_error() {
    let sim = Sim::start().await.unwrap();
    // A port nothing listens on: bind, note it, close it.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let mut cfg = config_for(&sim);
    cfg.proxy = parse_setting(&format!("http://{closed_addr}")).unwrap();
    let client = GraphClient::new(&cfg, None).unwrap();
    let msg = client.send(&text("+1")).await.unwrap_err().to_string();
    assert!(
        msg.contains("whatsapp.proxy") && msg.contains("cannot connect to the proxy"),
        "{msg}"
    );

    // A proxy that never answers the CONNECT: the connect timeout applies
    // to the proxy leg too (well before the request timeout).
    let silent = TestProxy::start(Mode::Silent, None).await;
    cfg.proxy = parse_setting(&silent.url()).unwrap();
    cfg.connect_timeout = Duration::from_millis(100);
    cfg.request_timeout = Duration::from_secs(30);
    let client = GraphClient::new(&cfg, None).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), client.send(&text("+1")))
        .await
        .expect("bounded by the connect timeout")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("whatsapp.proxy") && msg.contains("connect_timeout"),
        "{msg}"
    );
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn a_bsp_header_carries_the_token_and_no_authorization_is_sent() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("bsp-key-1"));
    sim.token_header(Some("D360-API-KEY"));
    let mut cfg = config_for(&sim);
    cfg.auth_header = Some(hyper::header::HeaderName::from_static("d360-api-key"));
    let client = GraphClient::new(&cfg, Some(Token::new("bsp-key-1\n"))).unwrap();
    client.send(&text("+4915550001")).await.unwrap();
    let req = &sim.requests()[0];
    assert_eq!(req.status, 200);
    assert_eq!(req.header("d360-api-key"), Some("bsp-key-1"));
    assert_eq!(req.authorization, None);

    // The simulator refuses a bearer token when it expects the header.
    let bearer = GraphClient::new(&config_for(&sim), Some(Token::new("bsp-key-1"))).unwrap();
    assert!(bearer.send(&text("+1")).await.unwrap_err().is_auth());
}

/// A TLS server for `name` (certificate from a throwaway CA) that hands the
/// plaintext to `backend`; returns its address and the CA's PEM.
async fn tls_front(name: &str, backend: SocketAddr) -> (SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, ca.pem())
}

#[tokio::test]
async fn tls_to_graph_facebook_com_runs_end_to_end_inside_the_tunnel() {
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-tls"));
    let (front, ca_pem) = tls_front("graph.facebook.com", sim.addr()).await;
    let proxy = TestProxy::start(Mode::Redirect(front), None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut cfg = config_for(&sim);
    cfg.api_base_url = "https://graph.facebook.com".to_owned();
    cfg.extra_ca_file = Some(ca_file);
    cfg.proxy = parse_setting(&proxy.url()).unwrap();
    let client = GraphClient::new(&cfg, Some(Token::new("tok-tls"))).unwrap();
    let sent = client.send(&text("+4915550001")).await.unwrap();
    assert!(sent.wamid.starts_with("wamid."));
    // The client never resolved or dialled Meta itself: it asked the proxy.
    assert_eq!(proxy.connects(), vec!["graph.facebook.com:443".to_owned()]);
    assert_eq!(
        sim.requests()[0].authorization.as_deref(),
        Some("Bearer tok-tls")
    );

    // A proxy that blocks Meta says which, and what to ask for.
    let blocking = TestProxy::start(Mode::Forbid, None).await;
    cfg.proxy = parse_setting(&blocking.url()).unwrap();
    let client = GraphClient::new(&cfg, None).unwrap();
    let msg = client.send(&text("+1")).await.unwrap_err().to_string();
    assert!(
        msg.contains("whatsapp.proxy")
            && msg.contains("refused the tunnel to graph.facebook.com:443"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_outbox_sends_through_the_proxy_in_the_config() {
    use crate::pms_support::Daemon;
    use crate::support::{t0, TestInstall};
    use clinic_relay::whatsapp::message::{self, Recipient};
    use clinic_relay::whatsapp::outbox::{self, WaItem};
    let sim = Sim::start().await.unwrap();
    sim.require_token(Some("tok-d"));
    let proxy = TestProxy::start(Mode::Tunnel, None).await;
    let install = TestInstall::new(&format!(
        "[whatsapp]\napi_base_url = \"{}\"\nphone_number_id = \"106540352242922\"\n\
         token_file = \"wa.token\"\nrate_per_second = 1000\nproxy = \"{}\"\n",
        sim.base_url(),
        proxy.url()
    ));
    std::fs::write(install.tmp.path().join("wa.token"), "tok-d\n").unwrap();
    let d = Daemon::start_in(install).await;
    for to in ["+4915550041", "+4915550042", "+4915550041"] {
        let item = WaItem {
            patient: None,
            recipient: Some(Recipient::phone(to).unwrap()),
            message: message::text("ZZ through the proxy").unwrap(),
            reference: None,
        };
        outbox::enqueue(&d.running.vault, item, t0(), None)
            .await
            .unwrap();
    }
    let handle = d.running.whatsapp.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.processed_at_least(3))
        .await
        .expect("the outbox drains");
    assert_eq!(sim.sent_messages().len(), 3);
    let connects = proxy.connects();
    assert!(!connects.is_empty(), "the daemon went through the proxy");
    assert!(
        connects.iter().all(|c| *c == sim.addr().to_string()),
        "{connects:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_is_used_for_meta_and_named_in_errors() {
    use crate::support::{stdout, TestInstall, BIN};
    let proxy = TestProxy::start(Mode::Forbid, None).await;
    let install = TestInstall::new(
        "[whatsapp]\nphone_number_id = \"106540352242922\"\ntoken_file = \"wa.token\"\n",
    );
    let token = install.tmp.path().join("wa.token");
    std::fs::write(&token, "tok-e\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = install.config.clone();
    let url = proxy.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["whatsapp", "check", "--config"])
            .arg(&config)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("HTTPS_PROXY")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("https_proxy", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&format!("through the proxy {} (HTTPS_PROXY)", proxy.addr)),
        "{printed}"
    );
    assert!(
        printed.contains("refused the tunnel to graph.facebook.com:443"),
        "{printed}"
    );
    assert_eq!(proxy.connects(), vec!["graph.facebook.com:443".to_owned()]);
}
