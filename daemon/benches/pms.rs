//! `scripts/bench pms`: the PMS link measured through its real interfaces.
//!
//! The daemon runs in this process (service::start, as in the tests) and
//! the load comes over real sockets: MLLP on loopback TCP and HTTP on the
//! API's Unix socket. Client and server share the machine's cores, as they
//! would on a clinic's small server.
//!
//! Two more modes serve `scripts/bench-peers` and profiling:
//!
//! * `--seed DIR [--patients N]` writes a master key (`DIR/mk`) and a vault
//!   (`DIR/data`) holding N patients (default 100,000), the data the peer
//!   comparison starts the release daemon on.
//! * `--ingest N [--patients P] [--conns C]` feeds N SIU^S12 messages (the
//!   peer load generator's shape: a new patient each) straight into the
//!   ingest path (parse, map, commit, flush, ACK) from C concurrent callers,
//!   no sockets: a fixed amount of work for `valgrind --tool=callgrind`,
//!   `perf` or `strace -c`. Prints msg/s, CPU seconds per 10,000 messages
//!   and resident memory. `--data DIR` starts from a copy of a vault written
//!   by `--seed` instead of seeding P patients; `--cache-mb M` sets the
//!   store's cache.
//! * `--rss-probe DIR [--sled [--open-only] --cache-mb M]` prints this
//!   process's resident memory after opening the vault in DIR (with
//!   `--sled`: first after opening the bare sled store with an M MiB cache,
//!   then each tree's records, key and value bytes and the memory after
//!   scanning all of it; `--open-only` stops after the open, for heaptrack).
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clinic_relay::clock::SystemClock;
use clinic_relay::config::Config;
use clinic_relay::keys::MasterKey;
use clinic_relay::model::{Event, EventKind};
use clinic_relay::pms::{hl7, mllp};
use clinic_relay::vault::{Owner, Tree, Txn};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::TcpStream;

const CONNECTIONS: usize = 4;
const MESSAGES_PER_CONNECTION: usize = 1500;
const PACED_RATE: u64 = 500;
const PACED_SECONDS: u64 = 4;
const API_CONNECTIONS: usize = 4;
const API_REQUESTS_PER_CONNECTION: usize = 5000;
const FEED_ROUNDS: usize = 300;

fn siu(n: usize) -> String {
    let mrn = format!("B{:06}", n % 5000);
    [
        format!("MSH|^~\\&|ZZPMS|ZZCLINIC|CLINIC-RELAY|ZZCLINIC|20261125093000||SIU^S12^SIU_S12|BENCH{n}|P|2.5.1"),
        format!("SCH|A{n}^ZZPMS|A{n}^ZZPMS|||||CHECKUP||||^^30^202612011000|||||||||||||||Booked"),
        format!("PID|1||{mrn}^^^ZZHOSP^MR||ZZBENCH^PATIENT||19010203|F|||||0151 5550 {:04}", n % 10000),
        "RGS|1|A".to_owned(),
        "AIS|1|A|CHECKUP|202612011000|0|MIN|30|MIN".to_owned(),
        "AIP|1|A|D1^ZZDOC^ADA^^^Dr.".to_owned(),
        "AIL|1|A|ROOM1^2".to_owned(),
    ]
    .join("\r")
}

struct Client {
    reader: BufReader<tokio::io::ReadHalf<TcpStream>>,
    writer: tokio::io::WriteHalf<TcpStream>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, w) = tokio::io::split(s);
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, msg: &str) -> Duration {
        let t = Instant::now();
        mllp::write_frame(&mut self.writer, msg.as_bytes())
            .await
            .unwrap();
        let Some(mllp::Incoming::Message(ack)) =
            mllp::read_frame(&mut self.reader, 1 << 20).await.unwrap()
        else {
            panic!("no ack");
        };
        let elapsed = t.elapsed();
        let ack = hl7::parse(&ack).unwrap();
        assert_eq!(ack.segment("MSA").unwrap().text(1), Some("AA"));
        elapsed
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>,
    path: &str,
) -> (u16, bytes::Bytes) {
    sender.ready().await.unwrap();
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn api_client(
    socket: &std::path::Path,
) -> hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// The peer load generator's SIU^S12 (shared/peers/mllp_load.py): a new
/// patient and a new appointment per message.
fn siu_peer(n: usize) -> String {
    let ctl = format!("INGEST{n:010}");
    let n = format!("{n:09}");
    [
        format!("MSH|^~\\&|DENTALPMS|SMILECLINIC|CLINICRELAY|SMILECLINIC|20251125093000||SIU^S12^SIU_S12|{ctl}|P|2.5|||AL|NE||UNICODE UTF-8"),
        format!("SCH|{n}^DENTALPMS|{n}^DENTALPMS|||||FU^Follow-up^HL70276|ROUTINE^Routine^HL70277|30|MIN|^^30^20251126093000-0500^20251126100000-0500|1001^Smith^Anna^^^Dr^^^NPI|^WPN^PH^^1^217^5551234|||1001^Smith^Anna^^^Dr^^^NPI|^WPN^PH^^1^217^5551234|||||||Booked"),
        "TQ1|1||||||20251126093000-0500|20251126100000-0500".to_owned(),
        format!("PID|1||MRN{n}^^^SMILECLINIC^MR||Doe^Jane^Q^^^^L||19800101|F|||123 Main St^^Springfield^IL^62701^USA||^PRN^CP^^1^217^5550123~^NET^Internet^jane.doe{n}@example.com||en|S"),
        "PV1|1|O|SMILE^OP1^^SMILECLINIC||||1001^Smith^Anna^^^Dr^^^NPI".to_owned(),
        "RGS|1|A".to_owned(),
        "AIS|1|A|D0120^Periodic oral evaluation^CDT|20251126093000-0500|0|MIN|30|MIN".to_owned(),
        "AIL|1|A|SMILE^OP1^^SMILECLINIC|^Operatory 1||20251126093000-0500|0|MIN|30|MIN".to_owned(),
        "AIP|1|A|1001^Smith^Anna^^^Dr^^^NPI|D^Dentist^HL70443||20251126093000-0500|0|MIN|30|MIN".to_owned(),
    ]
    .join("\r")
        + "\r"
}

/// Stores `n` patients in the vault in `data` (as `scripts/bench startup` does).
fn seed(data: &std::path::Path, key: &std::path::Path, n: u64) {
    use clinic_relay::model::Patient;
    use clinic_relay::vault::Vault;
    let vault = Vault::open(data, &MasterKey::load_file(key).unwrap()).unwrap();
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    for i in 0..n {
        let mrn = format!("S{i:07}");
        let p = Patient {
            id: vault.patient_id_for_mrn("", &mrn),
            mrn,
            family_name: "ZZSEED".into(),
            given_name: "PATIENT".into(),
            birth_date: Some(jiff::civil::date(1901, 2, 3)),
            phone: Some(format!("+49155{i:08}")),
            language: Some("de".into()),
            deceased: false,
            protected: false,
        };
        let txn = vault.patient_upsert_txn(&p, "bench", now).unwrap();
        vault.commit_unflushed(txn).unwrap();
    }
    vault.flush().unwrap();
    vault.close().unwrap();
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(dir) = arg::<std::path::PathBuf>(&args, "--seed") {
        let patients = arg(&args, "--patients").unwrap_or(100_000);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("mk");
        if !key.exists() {
            MasterKey::generate().unwrap().write_new_file(&key).unwrap();
        }
        let t = Instant::now();
        seed(&dir.join("data"), &key, patients);
        println!(
            "seeded {patients} patients into {} in {:.1?}",
            dir.display(),
            t.elapsed()
        );
        return;
    }
    if let Some(dir) = arg::<std::path::PathBuf>(&args, "--rss-probe") {
        let rss = status_memory;
        println!("start: {}", rss());
        let cache: u64 = arg(&args, "--cache-mb").unwrap_or(256);
        if args.iter().any(|a| a == "--sled") {
            let db = sled::Config::new()
                .path(dir.join("data/store"))
                .cache_capacity(cache * 1024 * 1024)
                .flush_every_ms(None)
                .open()
                .unwrap();
            let trees: Vec<_> = db
                .tree_names()
                .into_iter()
                .map(|n| db.open_tree(n).unwrap())
                .collect();
            println!(
                "sled open ({} trees, cache {cache} MiB): {}",
                trees.len(),
                rss()
            );
            if args.iter().any(|a| a == "--open-only") {
                return;
            }
            let mut n = 0;
            for t in &trees {
                let (mut count, mut keys, mut values) = (0usize, 0usize, 0usize);
                for kv in t.iter() {
                    let (k, v) = kv.unwrap();
                    count += 1;
                    keys += k.len();
                    values += v.len();
                }
                n += count;
                println!(
                    "  tree {:<16} {count:>9} records, keys {keys:>11} B, values {values:>12} B",
                    String::from_utf8_lossy(&t.name())
                );
            }
            println!("sled full scan ({n} records): {}", rss());
        }
        println!("sled dropped: {}", rss());
        let v = clinic_relay::vault::Vault::open(
            &dir.join("data"),
            &MasterKey::load_file(&dir.join("mk")).unwrap(),
        )
        .unwrap();
        println!("vault open: {}", rss());
        v.close().unwrap();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(n) = arg::<usize>(&args, "--ingest") {
        let patients = arg(&args, "--patients").unwrap_or(0);
        let conns = arg(&args, "--conns").unwrap_or(CONNECTIONS);
        let cache_mb = arg(&args, "--cache-mb");
        rt.block_on(ingest_only(
            n,
            patients,
            conns,
            arg(&args, "--data"),
            cache_mb,
        ));
        return;
    }
    rt.block_on(run());
}

/// `--ingest`: N messages through [`Ingest::process`], C callers at a time.
async fn ingest_only(
    n: usize,
    patients: u64,
    conns: usize,
    from: Option<std::path::PathBuf>,
    cache_mb: Option<u64>,
) {
    use clinic_relay::pms::ingest::{Identity, Ingest};
    use clinic_relay::vault::Vault;
    let before = match &from {
        Some(dir) => format!("a copy of {}", dir.display()),
        None => format!("{patients} patients stored before"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("mk");
    MasterKey::generate().unwrap().write_new_file(&key).unwrap();
    let data = tmp.path().join("data");
    if let Some(from) = from {
        // A copy of a seeded vault (`--seed`): its key and its data.
        std::fs::remove_file(&key).unwrap();
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(from.join("mk"))
            .arg(from.join("data"))
            .arg(tmp.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot copy {}", from.display());
    } else if patients > 0 {
        let (data, key) = (data.clone(), key.clone());
        tokio::task::spawn_blocking(move || seed(&data, &key, patients))
            .await
            .unwrap();
    }
    let master = MasterKey::load_file(&key).unwrap();
    let vault = match cache_mb {
        Some(mb) => Vault::open_with_cache(&data, &master, mb * 1024 * 1024),
        None => Vault::open(&data, &master),
    }
    .unwrap();
    let ingest = Arc::new(Ingest::new(
        vault.clone(),
        Arc::new(SystemClock),
        Arc::new(clinic_relay::pms::map::MappingConfig::default()),
        Identity {
            application: "CLINIC-RELAY".into(),
            facility: "CLINIC".into(),
        },
        hl7::MAX_MESSAGE_BYTES,
    ));
    let per = n / conns.max(1);
    let (cpu0, t) = (cpu_seconds(), Instant::now());
    let mut handles = Vec::new();
    for c in 0..conns {
        let ingest = ingest.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                let msg = siu_peer(c * per + i);
                let ack = ingest.process(msg.as_bytes()).await;
                assert!(ack.windows(7).any(|w| w == b"\rMSA|AA"), "not AA");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let (cpu, secs) = (cpu_seconds() - cpu0, t.elapsed().as_secs_f64());
    let total = per * conns;
    println!(
        "in-process ingest: {total} SIU^S12 over {conns} callers, {before}: {:.0} msg/s, {:.2} CPU s per 10,000 messages",
        total as f64 / secs,
        cpu / total as f64 * 10_000.0
    );
    println!("  resident memory after the run: {}", status_memory());
    drop(ingest);
    vault.close().unwrap();
}

/// This process's VmRSS and VmHWM lines from /proc/self/status.
fn status_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run() {
    let tmp = tempfile::tempdir().unwrap();
    MasterKey::generate()
        .unwrap()
        .write_new_file(&tmp.path().join("mk"))
        .unwrap();
    let config_path = tmp.path().join("config.toml");
    std::fs::write(
        &config_path,
        "[service]\ndata_dir = \"data\"\ntime_zone = \"Europe/Berlin\"\n[keys]\nmaster_key_file = \"mk\"\n[log]\nlevel = \"warn\"\n[pms]\nmllp_listen = \"127.0.0.1:0\"\n[api]\nsocket = \"api.sock\"\n",
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let running = clinic_relay::service::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let addr = running.mllp_addr;
    println!(
        "clinic-relay PMS-link benchmark ({} cores; daemon and clients in one process)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1. Throughput: 4 connections, each sending as fast as ACKs come back.
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..CONNECTIONS {
        handles.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut lat = Vec::with_capacity(MESSAGES_PER_CONNECTION);
            for i in 0..MESSAGES_PER_CONNECTION {
                lat.push(client.send(&siu(c * MESSAGES_PER_CONNECTION + i)).await);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    let total = CONNECTIONS * MESSAGES_PER_CONNECTION;
    let throughput = total as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    println!();
    println!("MLLP ingest, SIU^S12, {CONNECTIONS} connections, durable ACK: {throughput:.0} msg/s ({total} messages)");
    println!(
        "  ACK latency under full load: p50 {:?}, p99 {:?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    // 2. Latency at a steady 500 msg/s (open loop, spread over 4 connections).
    let per_conn = PACED_RATE / CONNECTIONS as u64;
    let interval = Duration::from_micros(1_000_000 / per_conn);
    let base = total;
    let mut handles = Vec::new();
    for c in 0..CONNECTIONS {
        handles.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut lat = Vec::new();
            for i in 0..(per_conn * PACED_SECONDS) as usize {
                tick.tick().await;
                lat.push(client.send(&siu(base + c * 100_000 + i)).await);
            }
            lat
        }));
    }
    let mut paced = Vec::new();
    for h in handles {
        paced.extend(h.await.unwrap());
    }
    paced.sort();
    let p99_paced = pct(&paced, 0.99);
    println!(
        "MLLP ACK latency at {PACED_RATE} msg/s: p50 {:?}, p99 {:?}, max {:?}",
        pct(&paced, 0.5),
        p99_paced,
        pct(&paced, 1.0)
    );

    // 3. Local API: GET a patient over the Unix socket.
    let vault = running.vault.clone();
    let id = vault.find_patients_by_mrn("", "B000001").unwrap()[0].to_hex();
    let path = format!("/v1/patients/{id}");
    let socket = running.api_socket.clone();
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..API_CONNECTIONS {
        let (socket, path) = (socket.clone(), path.clone());
        handles.push(tokio::spawn(async move {
            let mut sender = api_client(&socket).await;
            for _ in 0..API_REQUESTS_PER_CONNECTION {
                let (status, body) = get(&mut sender, &path).await;
                assert_eq!(status, 200);
                assert!(!body.is_empty());
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let api_rate =
        (API_CONNECTIONS * API_REQUESTS_PER_CONNECTION) as f64 / start.elapsed().as_secs_f64();
    println!("local API GET /v1/patients/{{id}}, {API_CONNECTIONS} keep-alive connections: {api_rate:.0} req/s");

    // 4. Event feed: a waiting long-poll gets a new event.
    let mut feed_lat = Vec::new();
    let mut cursor = vault.last_seq(Tree::Events);
    let mut sender = api_client(&socket).await;
    for n in 0..FEED_ROUNDS {
        let poll_path = format!("/v1/events?after={cursor}&wait=10");
        let request = get(&mut sender, &poll_path);
        tokio::pin!(request);
        // Let the long-poll reach the server and start waiting.
        let pending = tokio::time::timeout(Duration::from_millis(2), &mut request).await;
        assert!(pending.is_err(), "the poll must be waiting");
        let v = vault.clone();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            let mut txn = Txn::new(jiff::Timestamp::from_second(1_800_000_000).unwrap());
            let e = Event {
                kind: EventKind::AppointmentConfirmed,
                time: txn.time(),
                patient: None,
                appointment: Some(format!("A{n}")),
                slot: None,
                details: Default::default(),
            };
            txn.append_json(Tree::Events, Owner::System, &e).unwrap();
            v.commit(txn).unwrap();
        })
        .await
        .unwrap();
        let (status, body) = request.await;
        feed_lat.push(t.elapsed());
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        cursor = json["cursor"].as_u64().unwrap();
    }
    feed_lat.sort();
    let feed_p99 = pct(&feed_lat, 0.99);
    println!(
        "event feed, commit → long-poll response: p50 {:?}, p99 {:?} ({FEED_ROUNDS} events)",
        pct(&feed_lat, 0.5),
        feed_p99
    );

    println!();
    let check = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!(
        "target: MLLP ingest (4 connections) >= 2,000 msg/s   {throughput:>8.0}  {}",
        check(throughput >= 2000.0)
    );
    println!(
        "target: p99 ACK latency at 500 msg/s < 20 ms         {:>8.2?}  {}",
        p99_paced,
        check(p99_paced < Duration::from_millis(20))
    );
    println!(
        "target: API GET patient >= 10,000 req/s              {api_rate:>8.0}  {}",
        check(api_rate >= 10_000.0)
    );
    println!(
        "target: event feed p99 < 10 ms                       {:>8.2?}  {}",
        feed_p99,
        check(feed_p99 < Duration::from_millis(10))
    );
    running.shutdown().await.unwrap();
}
