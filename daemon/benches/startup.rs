//! `scripts/bench startup`: time from `clinic-relay serve` being started to
//! systemd's READY=1, with 100,000 stored patients (the appliance target is
//! under one second). The real release binary is spawned under a fake
//! NOTIFY_SOCKET, five times; the data is built once.
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clinic_relay::keys::MasterKey;
use clinic_relay::model::Patient;
use clinic_relay::vault::Vault;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PATIENTS: u64 = 100_000;
const RUNS: usize = 5;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("mk");
    MasterKey::generate().unwrap().write_new_file(&key).unwrap();
    let data = tmp.path().join("data");
    let t = Instant::now();
    {
        let vault = Vault::open(&data, &MasterKey::load_file(&key).unwrap()).unwrap();
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        for i in 0..PATIENTS {
            let mrn = format!("S{i:07}");
            let p = Patient {
                id: vault.patient_id_for_mrn("", &mrn),
                mrn,
                family_name: "ZZSTART".into(),
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
    println!(
        "startup benchmark: {PATIENTS} patients stored in {:.1?}",
        t.elapsed()
    );
    std::fs::write(
        tmp.path().join("config.toml"),
        "[service]\ndata_dir = \"data\"\ntime_zone = \"Europe/Berlin\"\n[keys]\nmaster_key_file = \"mk\"\n[log]\nlevel = \"warn\"\nformat = \"text\"\n[pms]\nmllp_listen = \"127.0.0.1:0\"\n[api]\nsocket = \"api.sock\"\n",
    )
    .unwrap();
    let mut times = Vec::new();
    for run in 0..RUNS {
        let sock_path = tmp.path().join(format!("notify{run}.sock"));
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_clinic-relay"))
            .args(["serve", "--config"])
            .arg(tmp.path().join("config.toml"))
            .env("NOTIFY_SOCKET", &sock_path)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            let n = sock.recv(&mut buf).expect("no READY within 60 s");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break;
            }
        }
        times.push(start.elapsed());
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
    }
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "spawn → READY=1 with {PATIENTS} patients: median {median:.1?}, min {:.1?}, max {:.1?}",
        times[0],
        times[RUNS - 1]
    );
    println!(
        "target: READY < 1 s with 100,000 patients       {:>8.1?}  {}",
        median,
        if median < Duration::from_secs(1) {
            "PASS"
        } else {
            "MISS"
        }
    );
}
