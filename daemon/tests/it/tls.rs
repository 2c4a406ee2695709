//! TLS on the LAN doors: MLLP over TLS, and the API's TCP door that only
//! admits clients with a certificate from the configured CA. Certificates are
//! made here with rcgen (a throwaway CA, valid for 127.0.0.1).

use crate::pms_support::*;
use crate::support::*;
use clinic_relay::pms::{hl7, mllp};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::BufReader;

struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// A leaf certificate for 127.0.0.1: (cert PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client_config(&self, client: Option<(&str, &str)>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        }
    }
}

use rustls::pki_types::pem::PemObject;

fn install_with_tls(pki: &Pki) -> TestInstall {
    let install = TestInstall::new("");
    let dir = install.tmp.path();
    let (cert, key) = pki.leaf();
    std::fs::write(dir.join("server.pem"), &cert).unwrap();
    write_private(&dir.join("server.key"), &key);
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    let text = std::fs::read_to_string(&install.config).unwrap().replace(
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\n",
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n",
    );
    let text = text.replace(
        "[api]\nsocket = \"api.sock\"\n",
        "[api]\nsocket = \"api.sock\"\ntcp_listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nclient_ca = \"ca.pem\"\n",
    );
    std::fs::write(&install.config, text).unwrap();
    install
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls() {
    let pki = Pki::new();
    let d = Daemon::start_in(install_with_tls(&pki)).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(None)));
    let tcp = tokio::net::TcpStream::connect(d.running.mllp_addr)
        .await
        .unwrap();
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::new(r);
    mllp::write_frame(&mut w, adt_a04("TLS1", "004000", "ZZTLS", "").as_bytes())
        .await
        .unwrap();
    let Some(mllp::Incoming::Message(ack)) = mllp::read_frame(&mut r, 1 << 20).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(msa(&hl7::parse(&ack).unwrap()).0, "AA");
    // A plain-TCP client gets nothing useful from the TLS port.
    let mut plain = Mllp::connect(d.running.mllp_addr).await;
    plain
        .send_frame(&adt_a04("TLS2", "004001", "ZZTLS", ""))
        .await;
    d.stop().await;
}

async fn https_status(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<u16, String> {
    https_request(addr, config, "GET", "/v1/status").await
}

async fn https_request(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
    method: &str,
    path: &str,
) -> Result<u16, String> {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "x")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_tcp_door_requires_a_client_certificate() {
    let pki = Pki::new();
    let d = Daemon::start_in(install_with_tls(&pki)).await;
    let addr = d.running.api_tcp_addr.unwrap();
    assert!(
        https_status(addr, pki.client_config(None)).await.is_err(),
        "no client certificate, no API"
    );
    let (cert, key) = pki.leaf();
    assert_eq!(
        https_status(addr, pki.client_config(Some((&cert, &key)))).await,
        Ok(200)
    );
    // A certificate from another CA is refused too.
    let other = Pki::new();
    let (cert, key) = other.leaf();
    assert!(https_status(addr, pki.client_config(Some((&cert, &key))))
        .await
        .is_err());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_refused_on_the_tcp_door_whatever_the_method() {
    let pki = Pki::new();
    let d = Daemon::start_in(install_with_tls(&pki)).await;
    let addr = d.running.api_tcp_addr.unwrap();
    let (cert, key) = pki.leaf();
    for (method, path) in [
        ("GET", "/v1/admin/backup"),
        ("POST", "/v1/admin/backup"),
        ("GET", "/v1/admin/other"),
        ("POST", "/v1/admin/dead-letters/pms/1/retry"),
    ] {
        let status =
            https_request(addr, pki.client_config(Some((&cert, &key))), method, path).await;
        assert_eq!(status, Ok(403), "{method} {path}");
    }
    d.stop().await;
}

#[test]
fn tls_config_errors_name_the_key() {
    let install =
        TestInstall::new("[pms]\nmllp_listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\n");
    let out = install.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pms.tls_cert and pms.tls_key go together"),
        "{}",
        stderr(&out)
    );
    let pki = Pki::new();
    let install = install_with_tls(&pki);
    std::fs::set_permissions(
        install.tmp.path().join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = install.run(&["serve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pms.tls_key") && stderr(&out).contains("chmod 600"),
        "{}",
        stderr(&out)
    );
}

/// Issue 8: 1,000 sockets that never start a handshake do not keep a
/// client with a certificate out; the door holds at most
/// `api.max_connections` of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_lock_the_tcp_door() {
    let pki = Pki::new();
    let d = Daemon::start_in(install_with_tls(&pki)).await;
    let addr = d.running.api_tcp_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let (cert, key) = pki.leaf();
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        https_status(addr, pki.client_config(Some((&cert, &key)))),
    )
    .await
    .expect("served within 1 s");
    assert_eq!(status, Ok(200));
    let mut closed = 0;
    for _ in 0..200 {
        let mut buf = [0u8; 1];
        // EOF or a reset: closed by the daemon.
        closed = held
            .iter()
            .filter(|c| match c.try_read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            })
            .count();
        if closed >= 1000 - 64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(closed >= 1000 - 64, "only {closed} closed");
    drop(held);
    d.stop().await;
}
