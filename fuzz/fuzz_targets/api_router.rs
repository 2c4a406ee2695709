//! The local API in-process: a real daemon (service::start on a temp data
//! dir) and arbitrary requests (method, path, headers, body) sent through its
//! Unix socket. Never a panic (libFuzzer aborts on one, even in a tokio task),
//! never a 5xx other than 503 (busy): a 500 means a storage failure, and
//! there is none here. Errors are problem+json.
#![no_main]

use arbitrary::Arbitrary;
use clinic_relay::clock::ManualClock;
use clinic_relay::config::Config;
use clinic_relay::service::{self, Running};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];
/// Path shapes of the router; the fuzzer fills in ids and may append.
const PATHS: [&str; 12] = [
    "/v1/status",
    "/v1/patients",
    "/v1/patients?identifier=",
    "/v1/patients/",
    "/v1/patients/c0ffee00c0ffee00c0ffee00c0ffee00",
    "/v1/patients/c0ffee00c0ffee00c0ffee00c0ffee00/consent",
    "/v1/patients/c0ffee00c0ffee00c0ffee00c0ffee00/appointments",
    "/v1/appointments/",
    "/v1/slots",
    "/v1/results/",
    "/v1/events?after=",
    "/v1/admin/backup",
];

#[derive(Arbitrary, Debug)]
struct Request {
    method: u8,
    path: u8,
    suffix: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Daemon {
    rt: tokio::runtime::Runtime,
    running: Running,
}

fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("clinic-relay-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let config_path = dir.join("config.toml");
        let text = "[service]\ndata_dir = \"data\"\ntime_zone = \"Europe/Berlin\"\n\
            [keys]\nmaster_key_file = \"dev.key\"\ngenerate_dev_key = true\n\
            [pms]\nmllp_listen = \"127.0.0.1:0\"\n\
            [api]\nsocket = \"api.sock\"\nmax_long_poll = \"1s\"\nmax_body_bytes = 65536\n";
        std::fs::write(&config_path, text).expect("the config");
        let config = Config::load(&config_path).expect("a valid config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let clock = ManualClock::new(jiff::Timestamp::from_second(1_800_000_000).expect("a time"));
        let running = rt
            .block_on(service::start(config, Arc::new(clock)))
            .expect("the daemon starts");
        Daemon { rt, running }
    })
}

/// Sends one request; `None` when the client refused to build it (an invalid
/// header name or URI: hyper would never send those bytes either).
async fn send(socket: &std::path::Path, r: &Request) -> Option<(u16, String)> {
    let method = METHODS[usize::from(r.method) % METHODS.len()];
    let uri = format!("{}{}", PATHS[usize::from(r.path) % PATHS.len()], r.suffix);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost");
    for (k, v) in r.headers.iter().take(16) {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = builder
        .body(Full::new(bytes::Bytes::from(r.body.clone())))
        .ok()?;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("the API socket answers");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = resp.into_body().collect().await;
    Some((status, ct))
}

fuzz_target!(|r: Request| {
    let d = daemon();
    let socket = d.running.api_socket.clone();
    let outcome = d.rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), send(&socket, &r)).await
    });
    let Ok(Some((status, content_type))) = outcome else {
        return;
    };
    assert!(status < 500 || status == 503, "{status} for {r:?}");
    if status >= 400 && r.method % 6 != 5 {
        assert_eq!(
            content_type, "application/problem+json",
            "{status} for {r:?}"
        );
    }
});
