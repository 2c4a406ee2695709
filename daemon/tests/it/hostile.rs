//! Regression tests for the findings of issue 8's hostile testing: each
//! test fails on the code before its fix.

use crate::pms_support::*;
use crate::support::*;
use serde_json::json;

fn siu(control_id: &str, appt: &str, sch11: &str, tq1: Option<&str>) -> String {
    let mut segs = vec![
        msh("SIU^S12^SIU_S12", control_id, "2.5.1"),
        format!("SCH|{appt}^ZZPMS|{appt}^ZZPMS|||||CHECKUP||||{sch11}||||||||||||||Booked"),
    ];
    if let Some(tq1) = tq1 {
        segs.push(tq1.to_owned());
    }
    segs.push("PID|1||ZZH-1^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN||19010203|F".to_owned());
    segs.push("RGS|1|A".to_owned());
    segs.join("\r")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_values_out_of_range_are_refused_and_never_crash_a_read() {
    let d = Daemon::start("").await;
    let mut m = d.mllp().await;
    let poisoned = [
        // SCH-11.3, a v2.3 duration of u32::MAX minutes.
        (
            "P1",
            siu("P1", "HX-1", "^^4294967295^20261201100000", None),
            "SCH-11",
        ),
        // TQ1-6, the service duration.
        (
            "P2",
            siu(
                "P2",
                "HX-2",
                "",
                Some("TQ1|1|||||4294967295^min|20261201100000"),
            ),
            "TQ1-6",
        ),
        // TQ1-8 − TQ1-7: a year long.
        (
            "P3",
            siu(
                "P3",
                "HX-3",
                "",
                Some("TQ1|1||||||20261201100000|20271201100000"),
            ),
            "TQ1-8",
        ),
        // Years 9999 and 0000.
        (
            "P4",
            siu("P4", "HX-4", "^^30^99991231235900", None),
            "SCH-11",
        ),
        (
            "P5",
            siu("P5", "HX-5", "^^30^00000101000000", None),
            "SCH-11",
        ),
        // An offset no zone has.
        (
            "P6",
            siu("P6", "HX-6", "^^30^202612011000+9900", None),
            "SCH-11",
        ),
    ];
    for (ctl, msg, at) in &poisoned {
        let ack = m.send(msg).await;
        assert_eq!(msa(&ack), ("AE".to_owned(), (*ctl).to_owned()), "{at}");
        assert_eq!(err(&ack), Some(("102".to_owned(), (*at).to_owned())));
    }
    // MSH-7 in year 0000.
    let msg =
        siu("P7", "HX-7", "^^30^20261201100000", None).replace("20261125093000", "00001125093000");
    let ack = m.send(&msg).await;
    assert_eq!(msa(&ack).0, "AE");
    assert_eq!(err(&ack), Some(("102".to_owned(), "MSH-7".to_owned())));

    // The longest accepted: one week, stored and read back.
    let ok = siu("OK1", "HX-OK", "^^10080^20261201100000", None);
    assert_eq!(msa(&m.send(&ok).await).0, "AA");
    let (status, a) = d.api("GET", "/v1/appointments/HX-OK", None).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["end"], "2026-12-08T09:00:00Z");
    let patient = a["participant"][0]["actor"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();
    for id in ["HX-1", "HX-2", "HX-3", "HX-4", "HX-5", "HX-6", "HX-7"] {
        let (status, _) = d.api("GET", &format!("/v1/appointments/{id}"), None).await;
        assert_eq!(status, 404, "{id}");
    }

    // The API: the same values get 422 and nothing is stored.
    let reference = json!([{"actor": {"reference": format!("Patient/{patient}")}}]);
    for body in [
        json!({"status": "booked", "start": "2026-12-01T09:00:00Z",
               "minutesDuration": 4_294_967_295u32, "participant": reference}),
        json!({"status": "booked", "start": "2026-12-01T09:00:00Z",
               "end": "2027-12-01T09:00:00Z", "participant": reference}),
        json!({"status": "booked", "start": "9999-01-01T00:00:00Z",
               "participant": reference}),
        json!({"status": "booked", "start": "0001-01-01T00:00:00Z",
               "participant": reference}),
    ] {
        let (status, problem) = d.api("PUT", "/v1/appointments/HX-API", Some(body)).await;
        assert_eq!(status, 422, "{problem}");
    }
    let (status, _) = d.api("GET", "/v1/appointments/HX-API", None).await;
    assert_eq!(status, 404);
    let slots =
        json!([{"id": "S-X", "start": "9999-01-01T00:00:00Z", "end": "9999-01-01T01:00:00Z"}]);
    assert_eq!(d.api("PUT", "/v1/slots", Some(slots)).await.0, 422);
    let slots =
        json!([{"id": "S-Y", "start": "2026-12-01T00:00:00Z", "end": "2027-12-31T23:00:00Z"}]);
    assert_eq!(d.api("PUT", "/v1/slots", Some(slots)).await.0, 422);

    let (status, list) = d
        .api("GET", &format!("/v1/patients/{patient}/appointments"), None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1);
    d.stop().await;
}

/// The real daemon in its own process, so its memory can be read from
/// `/proc`; killed when dropped.
struct Spawned {
    child: std::process::Child,
    mllp: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Spawned {
    fn start(install: &TestInstall) -> Spawned {
        Self::start_with(install, std::process::Command::new(BIN))
    }

    /// With at most `n` file descriptors (util-linux `prlimit` execs the
    /// daemon, so the child is the daemon itself).
    fn start_with_nofile(install: &TestInstall, n: u32) -> Spawned {
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg(format!("--nofile={n}:{n}")).arg(BIN);
        Self::start_with(install, cmd)
    }

    fn start_with(install: &TestInstall, cmd: std::process::Command) -> Spawned {
        let Served {
            child, mllp, log, ..
        } = spawn_serve_with(install, cmd);
        Spawned { child, mllp, log }
    }

    /// A `/proc/PID/status` figure in KiB (`VmHWM`, `VmRSS`).
    fn kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `len` repetition separators inside a well-formed ADT.
fn tilde_frame(control_id: &str, len: usize) -> Vec<u8> {
    let mut msg = format!(
        "{}\rPID|1||ZZAMP^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN|||||",
        msh("ADT^A04^ADT_A01", control_id, "2.5.1")
    )
    .into_bytes();
    msg.extend(std::iter::repeat_n(b'~', len));
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_repetition_separators_is_refused_in_bounded_memory() {
    let install = TestInstall::new("");
    let daemon = Spawned::start(&install);
    let mut m = Mllp::connect(daemon.mllp).await;
    let adt = |n: &str| adt_a04(n, &format!("ZZAMP{n}"), "ZZAMP", "");
    assert_eq!(msa(&m.send(&adt("W1")).await).0, "AA");
    let before = daemon.kib("VmHWM");

    let big = |ctl: &'static str, len: usize| {
        let addr = daemon.mllp;
        tokio::spawn(async move {
            let mut c = Mllp::connect(addr).await;
            c.send_raw(&tilde_frame(ctl, len)).await
        })
    };
    let one_mb = big("AMP1", 1 << 20);
    let fifteen_mb = big("AMP15", 15 << 20);
    // A normal ADT meanwhile: answered well within a second.
    let started = tokio::time::Instant::now();
    assert_eq!(msa(&m.send(&adt("W2")).await).0, "AA");
    let adt_ms = started.elapsed().as_millis();
    for (handle, ctl) in [(one_mb, "AMP1"), (fifteen_mb, "AMP15")] {
        let ack = handle.await.unwrap();
        assert_eq!(msa(&ack), ("AR".to_owned(), ctl.to_owned()));
        assert_eq!(err(&ack).unwrap().0, "102");
        let text = ack
            .segment("ERR")
            .unwrap()
            .component(8, 1)
            .unwrap_or_default()
            .to_owned();
        assert!(text.contains("262144 delimiters"), "{text}");
    }
    let started = tokio::time::Instant::now();
    assert_eq!(msa(&m.send(&adt("W3")).await).0, "AA");
    let after_ms = started.elapsed().as_millis();
    let growth_mib = (daemon.kib("VmHWM") - before) / 1024;
    eprintln!(
        "amplification: VmHWM +{growth_mib} MiB (1 MB and 15 MB frames of '~'), \
         ADT during {adt_ms} ms, after {after_ms} ms"
    );
    assert!(adt_ms < 1000 && after_ms < 1000, "{adt_ms} {after_ms}");
    // The two frames themselves are 16 MB; before the bound this was +3.7 GB.
    assert!(growth_mib < 96, "VmHWM grew by {growth_mib} MiB");
    let log = daemon.log_text();
    assert!(log.contains("HL7 message rejected (AR)"), "{log}");
    assert!(
        log.lines().all(|l| l.len() < 4096),
        "the input is not echoed"
    );
}

/// `n` connections that never send a byte; kept open by the caller.
async fn idle_unix(socket: &std::path::Path, n: usize) -> Vec<tokio::net::UnixStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(tokio::net::UnixStream::connect(socket).await.unwrap());
    }
    held
}

/// Polls (bounded) until the server has closed at least `n` of `conns`.
async fn wait_until_closed(conns: &[tokio::net::UnixStream], n: usize) {
    let mut closed = 0;
    for _ in 0..200 {
        let mut buf = [0u8; 1];
        closed = conns
            .iter()
            .filter(|c| matches!(c.try_read(&mut buf), Ok(0)))
            .count();
        if closed >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the server closed {closed} connections, expected {n}");
}

/// Waits (bounded) for the server to close `s`; returns what it sent.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!("the server kept the connection open"),
    }
}

/// A test install whose `[api]` section also has `lines`.
fn install_with_api(lines: &str) -> TestInstall {
    let install = TestInstall::new("");
    let text = std::fs::read_to_string(&install.config).unwrap().replace(
        "[api]\nsocket = \"api.sock\"\n",
        &format!("[api]\nsocket = \"api.sock\"\n{lines}\n"),
    );
    std::fs::write(&install.config, text).unwrap();
    install
}

const SHORT_TIMEOUTS: &str = "header_timeout = \"300ms\"\nbody_timeout = \"300ms\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_api_connections_do_not_lock_out_a_client() {
    let d = Daemon::start("").await;
    let socket = d.running.api_socket.clone();
    let held = idle_unix(&socket, 1000).await;
    // The daemon holds at most api.max_connections of them: the rest were
    // closed to make room.
    wait_until_closed(&held, 1000 - 64).await;
    let started = tokio::time::Instant::now();
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        api_call(&socket, "GET", "/v1/status", None, &[]),
    )
    .await
    .expect("/v1/status within 1 s")
    .0;
    assert_eq!(status, 200);
    eprintln!(
        "API: /v1/status in {} ms with 1,000 idle connections",
        started.elapsed().as_millis()
    );
    drop(held);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let install = install_with_api(SHORT_TIMEOUTS);
    let d = Daemon::start_in(install).await;
    let socket = d.running.api_socket.clone();

    // Slowloris: a request line and then nothing.
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        .await
        .unwrap();
    let answer = until_closed(&mut s).await;
    assert!(!answer.contains("200 OK"), "{answer}");

    // An idle connection is closed too.
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    until_closed(&mut s).await;

    // A chunked body that never ends.
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    s.write_all(
        b"POST /v1/patients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("api.body_timeout"), "{answer}");

    // A body shorter than its Content-Length.
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    s.write_all(
        b"POST /v1/patients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"resourceType\"",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Headers over 64 KiB: 431.
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let big = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // And the API still answers.
    assert_eq!(d.api("GET", "/v1/status", None).await.0, 200);
    d.stop().await;
}

#[test]
fn api_limits_are_configurable_and_checked() {
    let ok =
        install_with_api("max_connections = 8\nheader_timeout = \"5s\"\nbody_timeout = \"1m\"");
    let out = ok.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = clinic_relay::config::Config::load(&ok.config).unwrap();
    assert_eq!(c.api.limits.max_connections, 8);
    assert_eq!(
        c.api.limits.header_timeout,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(
        c.api.limits.body_timeout,
        std::time::Duration::from_secs(60)
    );
    for bad in [
        "max_connections = 0",
        "max_connections = 100000",
        "header_timeout = \"1h\"",
        "body_timeout = \"0s\"",
    ] {
        let install = install_with_api(bad);
        let out = install.run(&["config", "check"]);
        assert!(!out.status.success(), "{bad}");
    }
}

/// Polls (bounded) until the peer has closed at least `n` of `conns`
/// (EOF or a reset).
async fn wait_until_tcp_closed(conns: &[tokio::net::TcpStream], n: usize) -> usize {
    let mut closed = 0;
    for _ in 0..200 {
        let mut buf = [0u8; 1];
        closed = conns
            .iter()
            .filter(|c| match c.try_read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            })
            .count();
        if closed >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_mllp_connections_do_not_lock_out_the_pms() {
    let install = TestInstall::new("");
    let daemon = Spawned::start(&install);
    let mut held = Vec::with_capacity(1000);
    for _ in 0..1000 {
        held.push(tokio::net::TcpStream::connect(daemon.mllp).await.unwrap());
    }
    let started = tokio::time::Instant::now();
    // Locked out, the PMS would wait for an idle connection's first-frame
    // timeout (30 s). Answered, it takes milliseconds; 10 s leaves room for
    // a loaded CI machine (1 s once failed there while the suite ran).
    let ack = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut pms = Mllp::connect(daemon.mllp).await;
        pms.send(&adt_a04("LOCK1", "ZZLOCK1", "ZZLOCK", "")).await
    })
    .await
    .expect("the PMS is answered well before an idle connection times out");
    assert_eq!(msa(&ack).0, "AA");
    eprintln!(
        "MLLP: ADT ACKed in {} ms with 1,000 idle connections, VmHWM {} MiB",
        started.elapsed().as_millis(),
        daemon.kib("VmHWM") / 1024
    );
    let closed = wait_until_tcp_closed(&held, 1000 - 64).await;
    assert!(closed >= 1000 - 64, "only {closed} idle connections closed");
    let log = daemon.log_text();
    assert!(
        !log.contains("MLLP connection refused"),
        "fresh connections are evicted, not the newcomer refused: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_first_frame_timeout_and_one_warning_per_interval() {
    let install = TestInstall::new(
        "[pms]\nmllp_listen = \"127.0.0.1:0\"\nmax_connections = 2\nfirst_frame_timeout = \"300ms\"\n",
    );
    let daemon = Spawned::start(&install);
    // A connection that sends nothing is closed after the first-frame time.
    let silent = tokio::net::TcpStream::connect(daemon.mllp).await.unwrap();
    assert_eq!(
        wait_until_tcp_closed(std::slice::from_ref(&silent), 1).await,
        1
    );

    // Two PMS connections that have sent messages keep their slots; the
    // 200 that come after are refused, with one WARN line, not 200.
    let mut a = Mllp::connect(daemon.mllp).await;
    let mut b = Mllp::connect(daemon.mllp).await;
    assert_eq!(
        msa(&a.send(&adt_a04("FF1", "ZZFF1", "ZZFF", "")).await).0,
        "AA"
    );
    assert_eq!(
        msa(&b.send(&adt_a04("FF2", "ZZFF2", "ZZFF", "")).await).0,
        "AA"
    );
    let mut refused = Vec::new();
    for _ in 0..200 {
        refused.push(tokio::net::TcpStream::connect(daemon.mllp).await.unwrap());
    }
    assert_eq!(wait_until_tcp_closed(&refused, 200).await, 200);
    assert_eq!(
        msa(&a.send(&adt_a04("FF3", "ZZFF3", "ZZFF", "")).await).0,
        "AA"
    );
    let log = daemon.log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("MLLP connection refused"))
        .count();
    assert!((1..=2).contains(&warnings), "{warnings} lines: {log}");
}

#[test]
fn pms_first_frame_timeout_is_checked() {
    for (value, ok) in [("\"30s\"", true), ("\"2h\"", false), ("\"0s\"", false)] {
        let install = TestInstall::new(&format!(
            "[pms]\nmllp_listen = \"127.0.0.1:0\"\nfirst_frame_timeout = {value}\n"
        ));
        let out = install.run(&["config", "check"]);
        assert_eq!(out.status.success(), ok, "{value}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_values_cannot_forge_or_flood_log_lines() {
    let install = TestInstall::new("");
    let daemon = Spawned::start(&install);
    let mut m = Mllp::connect(daemon.mllp).await;
    let pid = "PID|1||ZZLOG1^^^ZZHOSP^MR||ZZFAMILY^ZZGIVEN";
    let forged = "1999-01-01T00:00:00.000000Z ERROR FORGED-LINE";
    for (ctl, kind) in [
        // An escaped line break (the parser unescapes it) and a raw one
        // would end the segment, so only the escape can reach a log.
        ("LOG1", format!("ADT^A99\\X0A\\{forged}")),
        ("LOG2", format!("SIU^S99\\X0A\\{forged}")),
        ("LOG3", "ADT^A04\u{1b}[2J\u{1b}[31m".to_owned()),
        ("LOG4", format!("ORM^{}", "Z".repeat(10_000))),
    ] {
        let msg = [
            msh(&kind, ctl, "2.5.1"),
            "EVN|A04|20261125093000".to_owned(),
            pid.to_owned(),
        ]
        .join("\r");
        let ack = m.send(&msg).await;
        assert_eq!(msa(&ack).1, ctl);
    }
    // One more message, so the log has certainly been written past them.
    assert_eq!(
        msa(&m.send(&adt_a04("LOG5", "ZZLOG5", "ZZLOG", "")).await).0,
        "AA"
    );
    let mut log = String::new();
    for _ in 0..200 {
        log = daemon.log_text();
        if log.contains("ORM^ZZZZ") && log.contains("S99") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        log.contains("FORGED-LINE"),
        "the values are logged, escaped: {log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with("1999-01-01"), "forged line: {line}");
        assert!(!line.contains('\u{1b}'), "raw ESC: {line:?}");
        assert!(line.len() < 1024, "a {} byte line", line.len());
    }
}

/// GET over the API socket: status, `Retry-After`, and the body's length
/// (read and dropped piece by piece, so the test holds no copies).
async fn get_len(socket: std::path::PathBuf, path: &'static str) -> (u16, Option<String>, usize) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len();
        }
    }
    (status, retry, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_result_downloads_are_bounded_in_number_and_memory() {
    use base64::Engine as _;
    let install = TestInstall::new("");
    let socket = install.tmp.path().join("api.sock");
    let daemon = Spawned::start(&install);
    // A 9 MB synthetic PDF.
    let mut pdf = b"%PDF-1.4\n% ZZTEST synthetic\n".to_vec();
    pdf.resize(9 << 20, b'x');
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pdf);
    let msg = [
        msh("ORU^R01", "BIG1", "2.5.1"),
        "PID|1||ZZBIG^^^ZZHOSP^MR||ZZBIG^ZZGIVEN||19010203".to_owned(),
        "OBR|1||ORDER-BIG".to_owned(),
        format!("OBX|1|ED|PDF||^AP^PDF^Base64^{b64}||||||F"),
    ]
    .join("\r");
    drop(b64);
    let mut m = Mllp::connect(daemon.mllp).await;
    assert_eq!(msa(&m.send(&msg).await).0, "AA");
    drop(msg);
    // One download first, so the baseline includes what any one costs.
    let (status, _, whole) = get_len(socket.clone(), "/v1/results/ORDER-BIG").await;
    assert_eq!(status, 200);
    assert!(whole > 12 << 20, "{whole}");
    let before = daemon.kib("VmHWM");

    let tasks: Vec<_> = (0..30)
        .map(|_| tokio::spawn(get_len(socket.clone(), "/v1/results/ORDER-BIG")))
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _, len) => {
                assert_eq!(len, whole);
                ok += 1;
            }
            (503, retry, _) => {
                assert_eq!(retry.as_deref(), Some("2"));
                busy += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let growth_mib = (daemon.kib("VmHWM") - before) / 1024;
    eprintln!(
        "downloads: 30 concurrent of a 9 MiB PDF: {ok} sent, {busy} told to retry; \
         VmHWM +{growth_mib} MiB over one download"
    );
    assert!(ok >= 4 && ok + busy == 30, "{ok} {busy}");
    assert!(busy > 0, "more than 4 at once were sent");
    assert!(growth_mib < 128, "VmHWM grew by {growth_mib} MiB");

    // Backups share the same slots.
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(get_len(socket.clone(), "/v1/admin/backup")))
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            (200, _, len) => assert!(len > 0),
            (503, retry, _) => assert_eq!(retry.as_deref(), Some("2")),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_the_daemon_creates_is_private_under_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    // The usual login umask, inherited by the child (the test process's
    // own umask is 022 on these machines; set it to be sure).
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let install = TestInstall::new("");
    let daemon = Spawned::start(&install);
    rustix::process::umask(old);
    let mut m = Mllp::connect(daemon.mllp).await;
    assert_eq!(
        msa(&m.send(&adt_a04("UM1", "ZZUMASK", "ZZUMASK", "")).await).0,
        "AA"
    );
    let mut checked = 0;
    for file in files_below(&install.data) {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue; // a temp file renamed away meanwhile
        };
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", file.display());
        checked += 1;
    }
    assert!(checked >= 3, "{checked} files");
    drop(daemon);
}

// What held up under the hostile tests of issue 8, kept as tests so that it
// keeps holding (the delimiter bound above must not refuse real messages).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_held_up_over_mllp_keeps_holding() {
    let install = TestInstall::new("");
    let daemon = Spawned::start(&install);
    let mut m = Mllp::connect(daemon.mllp).await;
    assert_eq!(
        msa(&m.send(&adt_a04("H0", "ZZHELD", "ZZHELD", "")).await).0,
        "AA"
    );
    let before = daemon.kib("VmHWM");

    // 200,000 repetitions in one field: under the delimiter bound, AA.
    let mut msg = adt_a04("H1", "ZZHELD", "ZZHELD", "").into_bytes();
    msg.extend_from_slice(b"\rZPI|1|");
    msg.extend_from_slice(&b"A~".repeat(200_000));
    let ack = m.send_raw(&msg).await;
    assert_eq!(msa(&ack).0, "AA", "{:?}", err(&ack));
    let repetitions_mib = (daemon.kib("VmHWM") - before) / 1024;

    // A 50 MB frame: AR 102 (over pms.max_message_bytes), read without
    // being kept, and the connection stays usable.
    let mut big = msh("ADT^A04^ADT_A01", "H2", "2.5.1").into_bytes();
    big.extend_from_slice(b"\rPID|1||");
    big.resize(50 << 20, b'x');
    let ack = m.send_raw(&big).await;
    drop(big);
    assert_eq!(msa(&ack), ("AR".to_owned(), "H2".to_owned()));
    assert_eq!(err(&ack).unwrap().0, "102");
    assert_eq!(
        msa(&m.send(&adt_a04("H3", "ZZHELD", "ZZHELD", "")).await).0,
        "AA"
    );
    let total_mib = (daemon.kib("VmHWM") - before) / 1024;

    // 2,000 frames written back to back before any ACK is read: every ACK
    // comes, in order.
    let repeat = adt_a04("H4", "ZZHELD", "ZZHELD", "");
    let (mut r, mut w) =
        tokio::io::split(tokio::net::TcpStream::connect(daemon.mllp).await.unwrap());
    let writer = tokio::spawn(async move {
        for i in 0..2000 {
            let msg = repeat.replace("|H4|", &format!("|P{i}|"));
            clinic_relay::pms::mllp::write_frame(&mut w, msg.as_bytes())
                .await
                .unwrap();
        }
        w
    });
    // Unread until the writer is done, or (if the daemon's writes block on
    // the full socket, which stops its reads: TCP back-pressure) 2 s.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while !writer.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut reader = tokio::io::BufReader::new(&mut r);
    for i in 0..2000 {
        let frame = clinic_relay::pms::mllp::read_frame(&mut reader, 1 << 20)
            .await
            .unwrap();
        let Some(clinic_relay::pms::mllp::Incoming::Message(bytes)) = frame else {
            panic!("no ACK {i}");
        };
        let ack = clinic_relay::pms::hl7::parse(&bytes).unwrap();
        assert_eq!(msa(&ack), ("AA".to_owned(), format!("P{i}")));
    }
    writer.await.unwrap();
    eprintln!(
        "held: 200,000 repetitions AA (VmHWM +{repetitions_mib} MiB); 50 MB frame AR \
         (VmHWM +{total_mib} MiB in all); 2,000 pipelined frames ACKed in order"
    );
    assert!(total_mib < 96, "VmHWM grew by {total_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_held_up_over_the_api_keeps_holding() {
    use tokio::io::AsyncWriteExt;
    let d = Daemon::start("").await;
    let socket = d.running.api_socket.clone();
    // A 2 GB Content-Length: 413 before any body is read.
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    s.write_all(
        b"POST /v1/patients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 2147483648\r\n\r\n{",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // 5,000 headers: 431.
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut req = "GET /v1/status HTTP/1.1\r\nHost: x\r\n".to_owned();
    for i in 0..5000 {
        req.push_str(&format!("X-{i}: y\r\n"));
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(d.api("GET", "/v1/status", None).await.0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_daemon_backs_off_quietly_and_recovers() {
    let install = install_with_api("header_timeout = \"500ms\"");
    // About 15 descriptors in use at rest: 40 leaves room for a few
    // connections, not for a flood.
    let daemon = Spawned::start_with_nofile(&install, 40);
    let socket = install.tmp.path().join("api.sock");
    let mut m = Mllp::connect(daemon.mllp).await;
    assert_eq!(
        msa(&m.send(&adt_a04("FD1", "ZZFD", "ZZFD", "")).await).0,
        "AA"
    );
    let mut held = Vec::new();
    for _ in 0..100 {
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(s) => held.push(s),
            Err(_) => break, // the listen backlog is full
        }
    }
    let failures = |log: &str| log.lines().filter(|l| l.contains("accept failed")).count();
    let mut log = String::new();
    for _ in 0..100 {
        log = daemon.log_text();
        if failures(&log) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(failures(&log) > 0, "the descriptors did not run out: {log}");
    // The accept loop must not spin while it waits: wait (bounded) until it
    // accepts again, once the header timeout has closed the idle
    // connections it holds, and count the failures meanwhile.
    let recovered = |log: &str| {
        log.lines()
            .skip_while(|l| !l.contains("accept failed"))
            .any(|l| l.contains("API connection"))
    };
    for _ in 0..250 {
        log = daemon.log_text();
        if recovered(&log) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(recovered(&log), "{log}");
    assert!(failures(&log) <= 2, "{} lines: {log}", failures(&log));
    assert!(log.len() < 64 * 1024, "{} bytes of log", log.len());
    drop(held);
    // Recovered: the open connection and a new one are served again.
    let ack = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        m.send(&adt_a04("FD2", "ZZFD", "ZZFD", "")),
    )
    .await
    .expect("ACK after the flood");
    assert_eq!(msa(&ack).0, "AA");
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        api_call(&socket, "GET", "/v1/status", None, &[]),
    )
    .await
    .expect("API after the flood")
    .0;
    assert_eq!(status, 200);
}

/// Every listener flooded at once, in one real daemon process: 1,000 idle
/// connections each on MLLP, the API socket and the webhook receiver, one in
/// ten of them a slow client stuck in the middle of its first request. A
/// normal ADT, a `/v1/status` and a signed webhook are each still answered
/// within a second, and the daemon's peak RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_flooded_at_once_still_serves_in_bounded_memory() {
    use tokio::io::AsyncWriteExt;
    const SECRET: &str = "flood-app-secret";
    // 3,000 client sockets here: raise the soft limit to the hard one.
    if let Ok(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .ok_or(())
    {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(limit),
                maximum: Some(limit),
            },
        );
    }
    let install = TestInstall::new(
        "[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n",
    );
    install.secret("app-secret", SECRET);
    install.secret("verify-token", "t");
    let Served {
        mut child,
        mllp,
        webhook,
        ..
    } = spawn_serve(&install);
    let webhook = webhook.unwrap();
    let socket = install.tmp.path().join("api.sock");
    let hwm = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let mut m = Mllp::connect(mllp).await;
    assert_eq!(
        msa(&m.send(&adt_a04("FL0", "ZZFL0", "ZZFLOOD", "")).await).0,
        "AA"
    );
    let before = hwm(child.id());

    let mut tcp_held = Vec::with_capacity(2000);
    let mut unix_held = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut a = tokio::net::TcpStream::connect(mllp).await.unwrap();
        let mut w = tokio::net::TcpStream::connect(webhook).await.unwrap();
        let mut u = tokio::net::UnixStream::connect(&socket).await.unwrap();
        if i % 10 == 0 {
            let _ = a.write_all(b"\x0bMSH|^~\\&|SLOW").await;
            let _ = w
                .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                .await;
            let _ = u
                .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                .await;
        }
        tcp_held.push(a);
        tcp_held.push(w);
        unix_held.push(u);
    }

    let started = tokio::time::Instant::now();
    let within = std::time::Duration::from_secs(1);
    let ack = tokio::time::timeout(within, async {
        let mut pms = Mllp::connect(mllp).await;
        pms.send(&adt_a04("FL1", "ZZFL1", "ZZFLOOD", "")).await
    })
    .await
    .expect("an ADT within 1 s");
    assert_eq!(msa(&ack).0, "AA");
    let adt_ms = started.elapsed().as_millis();
    let started = tokio::time::Instant::now();
    let (status, _) =
        tokio::time::timeout(within, api_call(&socket, "GET", "/v1/status", None, &[]))
            .await
            .expect("/v1/status within 1 s");
    assert_eq!(status, 200);
    let api_ms = started.elapsed().as_millis();
    let body = crate::webhook::statuses_body("wamid.FLOODALL", "delivered");
    let started = tokio::time::Instant::now();
    let (status, _) = tokio::time::timeout(
        within,
        crate::webhook::http(
            webhook,
            "POST",
            "/webhook",
            body.clone(),
            &[("x-hub-signature-256", crate::webhook::sign(SECRET, &body))],
        ),
    )
    .await
    .expect("a signed webhook within 1 s");
    assert_eq!(status, 200);
    let webhook_ms = started.elapsed().as_millis();
    let growth_mib = (hwm(child.id()).saturating_sub(before)) / 1024;
    eprintln!(
        "all listeners flooded (3 x 1,000 connections, 10 % slow): ADT {adt_ms} ms, \
         status {api_ms} ms, webhook {webhook_ms} ms, VmHWM +{growth_mib} MiB (total {} MiB)",
        hwm(child.id()) / 1024
    );
    assert!(growth_mib < 64, "VmHWM grew by {growth_mib} MiB");
    drop(tcp_held);
    drop(unix_held);
    child.kill().unwrap();
    child.wait().unwrap();
}
