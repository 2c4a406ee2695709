//! Helpers for PMS-link tests: a daemon started in-process on port 0, an
//! MLLP client, synthetic HL7 messages, and a client for the API socket.

#![allow(dead_code)]

use crate::support::*;
use clinic_relay::clock::ManualClock;
use clinic_relay::config::Config;
use clinic_relay::pms::hl7;
use clinic_relay::pms::mllp;
use clinic_relay::service::{self, Running};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::BufReader;
use tokio::net::TcpStream;

pub struct Daemon {
    pub install: TestInstall,
    pub running: Running,
    pub clock: ManualClock,
}

impl Daemon {
    pub async fn start(extra: &str) -> Daemon {
        let install = TestInstall::new(extra);
        Self::start_in(install).await
    }

    pub async fn start_in(install: TestInstall) -> Daemon {
        let config = Config::load(&install.config).unwrap();
        let clock = ManualClock::new(t0());
        let running = service::start(config, Arc::new(clock.clone()))
            .await
            .unwrap();
        Daemon {
            install,
            running,
            clock,
        }
    }

    pub async fn mllp(&self) -> Mllp {
        Mllp::connect(self.running.mllp_addr).await
    }

    /// Stops the daemon after checking the store's invariants (every test
    /// that runs a daemon checks them for free).
    pub async fn stop(self) -> TestInstall {
        let vault = self.running.vault.clone();
        let report = tokio::task::spawn_blocking(move || vault.verify())
            .await
            .unwrap()
            .unwrap();
        assert!(report.is_ok(), "store invariants: {:#?}", report.problems);
        self.running.shutdown().await.unwrap();
        self.install
    }

    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        api_call(
            &self.running.api_socket,
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            &[],
        )
        .await
    }
}

pub struct Mllp {
    reader: BufReader<tokio::io::ReadHalf<TcpStream>>,
    writer: tokio::io::WriteHalf<TcpStream>,
}

impl Mllp {
    pub async fn connect(addr: std::net::SocketAddr) -> Mllp {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = tokio::io::split(stream);
        Mllp {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send_raw(&mut self, payload: &[u8]) -> hl7::Message {
        mllp::write_frame(&mut self.writer, payload).await.unwrap();
        self.read_ack().await
    }

    /// Sends without waiting for the ACK.
    pub async fn send_frame(&mut self, message: &str) {
        mllp::write_frame(&mut self.writer, message.as_bytes())
            .await
            .unwrap();
    }

    pub async fn read_ack(&mut self) -> hl7::Message {
        match mllp::read_frame(&mut self.reader, 1 << 20).await.unwrap() {
            Some(mllp::Incoming::Message(bytes)) => hl7::parse(&bytes).unwrap(),
            other => panic!("no ACK: {other:?}"),
        }
    }

    pub async fn send(&mut self, message: &str) -> hl7::Message {
        self.send_raw(message.as_bytes()).await
    }
}

/// MSA-1 and MSA-2 of an ACK.
pub fn msa(ack: &hl7::Message) -> (String, String) {
    let msa = ack.segment("MSA").expect("ACK without MSA");
    (
        msa.text(1).unwrap_or_default().to_owned(),
        msa.text(2).unwrap_or_default().to_owned(),
    )
}

/// ERR-3.1 (table 0357 code) and the ERR-2 location, if any.
pub fn err(ack: &hl7::Message) -> Option<(String, String)> {
    let e = ack.segment("ERR")?;
    Some((
        e.component(3, 1).unwrap_or_default().to_owned(),
        format!(
            "{}-{}",
            e.component(2, 1).unwrap_or_default(),
            e.component(2, 3).unwrap_or_default()
        ),
    ))
}

pub fn msh(kind: &str, control_id: &str, version: &str) -> String {
    format!("MSH|^~\\&|ZZPMS|ZZCLINIC|CLINIC-RELAY|ZZCLINIC|20261125093000||{kind}|{control_id}|P|{version}")
}

/// A synthetic patient registration. `phone` is as the PMS writes it.
pub fn adt_a04(control_id: &str, mrn: &str, family: &str, phone: &str) -> String {
    [
        msh("ADT^A04^ADT_A01", control_id, "2.5.1"),
        "EVN|A04|20261125093000".to_owned(),
        format!("PID|1||{mrn}^^^ZZHOSP^MR||{family}^ZZGIVEN^^^^^L||19010203|F|||1 Test Street^^Testtown||{phone}^PRN^PH~^PRN^CP^^49^151^55501234|||||||||||||||||N"),
        "PD1||||||||||||N".to_owned(),
    ]
    .join("\r")
}

pub fn siu_s12_v25(control_id: &str, appt: &str, mrn: &str, start: &str) -> String {
    [
        msh("SIU^S12^SIU_S12", control_id, "2.5.1"),
        format!("SCH|{appt}^ZZPMS|{appt}^ZZPMS|||||CHECKUP||||^^30^{start}^||||||||||||||Booked"),
        format!("PID|1||{mrn}^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN||19010203|F|||||0151 5550 1234"),
        "RGS|1|A".to_owned(),
        format!("AIS|1|A|CHECKUP|{start}|0|MIN|30|MIN"),
        "AIP|1|A|D123^ZZDOC^ADA^^^Dr.|".to_owned(),
        "AIL|1|A|ROOM1^2^^ZZCLINIC^^^^^Room 2".to_owned(),
    ]
    .join("\r")
}

/// HTTP over the API's Unix socket, through hyper's client.
pub async fn api_call(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "not JSON ({content_type:?}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    if status >= 400 {
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "errors are problem+json"
        );
    }
    (status, json)
}
