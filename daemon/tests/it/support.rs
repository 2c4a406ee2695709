//! Shared test helpers: data directories, synthetic patients with marker
//! values, a byte scanner for markers, and running the real binary.

#![allow(dead_code)]

use clinic_relay::keys::MasterKey;
use clinic_relay::model::{Patient, PatientId};
use clinic_relay::vault::Vault;
use jiff::Timestamp;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_clinic-relay");

pub fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub fn key(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 32])
}

pub fn open(dir: &Path, mk: &MasterKey) -> Vault {
    Vault::open(dir, mk).unwrap()
}

/// The assigning authority of [`marker_patient`]s' MRNs.
pub const TEST_AUTHORITY: &str = "TESTHOSP";

/// A synthetic patient whose every PHI field carries `tag`, so a scan can
/// look for each of them. Obviously fake: ZZMARK names, a 1901 birth date.
pub fn marker_patient(vault: &Vault, tag: &str) -> Patient {
    let mrn = format!("ZZMARKMRN{tag}");
    Patient {
        id: vault.patient_id_for_mrn(TEST_AUTHORITY, &mrn),
        mrn,
        family_name: format!("ZZMARKFAMILY{tag}"),
        given_name: format!("ZZMARKGIVEN{tag}"),
        birth_date: Some(jiff::civil::date(1901, 2, 3)),
        phone: Some(format!("+49155501{tag:0>5}")),
        language: Some("de".to_owned()),
        deceased: false,
        protected: false,
    }
}

/// The strings a scan looks for for a patient: every PHI field.
pub fn markers(p: &Patient) -> Vec<String> {
    vec![
        p.mrn.clone(),
        p.family_name.clone(),
        p.given_name.clone(),
        p.phone.clone().unwrap(),
        "1901-02-03".to_owned(),
    ]
}

/// Every encoding of `marker` a careless implementation might leave behind.
fn encodings(marker: &str) -> Vec<Vec<u8>> {
    let utf16le: Vec<u8> = marker
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let utf16be: Vec<u8> = marker
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    vec![
        marker.as_bytes().to_vec(),
        utf16le,
        utf16be,
        hex::encode(marker).into_bytes(),
        hex::encode_upper(marker).into_bytes(),
    ]
}

/// Searches `haystack` for every encoding of every marker; returns the hits.
pub fn find_markers(haystack: &[u8], markers: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    for m in markers {
        for enc in encodings(m) {
            if haystack.windows(enc.len()).any(|w| w == enc.as_slice()) {
                hits.push(format!("{m} ({} bytes form)", enc.len()));
            }
        }
    }
    hits
}

/// Every regular file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Scans every byte of every file below `dir`; returns "file: marker" hits.
pub fn scan_dir(dir: &Path, markers: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in files_below(dir) {
        let bytes = std::fs::read(&file).unwrap();
        for h in find_markers(&bytes, markers) {
            hits.push(format!("{}: {h}", file.display()));
        }
    }
    hits
}

/// Copies a directory tree. Tests also copy a live data dir (the disk as a
/// kill would leave it): a file that vanishes during the copy (a temp file
/// renamed into place) is skipped, as it would be absent at that moment.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if let Err(e) = std::fs::copy(entry.path(), &target) {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        }
    }
}

/// Writes `value` (and a newline, as editors do) to `dir/name`, mode 0600.
pub fn write_secret(dir: &Path, name: &str, value: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes a config for a test data directory and a 0600 key file.
pub struct TestInstall {
    pub tmp: tempfile::TempDir,
    pub config: PathBuf,
    pub data: PathBuf,
    pub key_file: PathBuf,
}

impl TestInstall {
    pub fn new(extra: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let key_file = tmp.path().join("master.key");
        MasterKey::generate()
            .unwrap()
            .write_new_file(&key_file)
            .unwrap();
        let config = tmp.path().join("config.toml");
        // Tests never use fixed ports: port 0 lets the kernel pick one.
        let pms = if extra.contains("[pms]") {
            ""
        } else {
            "[pms]\nmllp_listen = \"127.0.0.1:0\"\n\n"
        };
        std::fs::write(
            &config,
            format!(
                "[service]\ndata_dir = \"data\"\ntime_zone = \"Europe/Berlin\"\n\n\
                 [keys]\nmaster_key_file = \"master.key\"\n\n\
                 [log]\nformat = \"text\"\nlevel = \"debug\"\n\n\
                 [api]\nsocket = \"api.sock\"\n\n{pms}{extra}"
            ),
        )
        .unwrap();
        Self {
            tmp,
            config,
            data,
            key_file,
        }
    }

    /// Writes a secret file (token, app secret, verify token, key) into the
    /// install's directory, mode 0600: the daemon refuses secrets others can read.
    pub fn secret(&self, name: &str, value: &str) {
        write_secret(self.tmp.path(), name, value);
    }

    /// The WhatsApp token (`wa.token`), app secret (`app-secret`) and verify
    /// token (`verify-token`) that the tests' `[whatsapp]`/`[webhook]` configs name.
    pub fn wa_secrets(&self, app_secret: &str) {
        for (name, value) in [
            ("wa.token", "tok"),
            ("app-secret", app_secret),
            ("verify-token", "t"),
        ] {
            self.secret(name, value);
        }
    }

    pub fn master_key(&self) -> MasterKey {
        MasterKey::load_file(&self.key_file).unwrap()
    }

    pub fn open(&self) -> Vault {
        Vault::open(&self.data, &self.master_key()).unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_cli(&self.config, args)
    }
}

/// Runs the real binary with `--config config`.
pub fn run_cli(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

/// [`run_cli`] from async code, without blocking the runtime's workers
/// (the binary may be talking to a daemon running in this process).
pub async fn run_cli_async(config: &Path, args: &[&str]) -> Output {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&config, &args)
    })
    .await
    .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn pid(n: u64) -> PatientId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    PatientId(b)
}

/// The real binary running `serve` on `install`, and the addresses it
/// logged (for tests that kill it; in-process tests use `Daemon`).
pub struct Served {
    pub child: std::process::Child,
    pub mllp: std::net::SocketAddr,
    /// Set when the config has a `[webhook]` section.
    pub webhook: Option<std::net::SocketAddr>,
    /// Every stderr line after the listening lines.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts `serve` with its output discarded and returns at once, for crash
/// tests that kill it at random moments and judge by the data it left.
pub fn spawn_quiet(install: &TestInstall) -> std::process::Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&install.config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts `serve` and waits for its listening lines.
pub fn spawn_serve(install: &TestInstall) -> Served {
    spawn_serve_with(install, Command::new(BIN))
}

/// [`spawn_serve`] through `cmd` (the binary itself, or a wrapper such as
/// `prlimit … BIN` that execs it). Its stderr keeps being drained into
/// `log`, so the daemon never blocks on a full pipe.
pub fn spawn_serve_with(install: &TestInstall, mut cmd: Command) -> Served {
    use std::io::BufRead;
    let wants_webhook = std::fs::read_to_string(&install.config)
        .unwrap()
        .contains("[webhook]");
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(&install.config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = |line: &str, key: &str| -> Option<std::net::SocketAddr> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (mut mllp, mut webhook) = (None, None);
    while mllp.is_none() || (wants_webhook && webhook.is_none()) {
        let line = lines
            .next()
            .expect("daemon exited before listening")
            .unwrap();
        mllp = mllp.or_else(|| addr(&line, "mllp="));
        webhook = webhook.or_else(|| addr(&line, "webhook="));
    }
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Served {
        child,
        mllp: mllp.unwrap(),
        webhook,
        log,
    }
}

/// Values that stand in forbidden fields of test patients and visits (MRN,
/// full name, date of birth, service, diagnosis): the minimal-payload
/// policy must never let one reach WhatsApp (issue 10).
pub const FORBIDDEN_MARKERS: &[&str] = &[
    "CARE001",
    "ZZFAMILY",
    "19010203",
    "1901-02-03",
    "03.02.1901",
    "ZZSVCMARKER",
    "ZZDXMARKER",
];

/// Asserts that nothing the Graph API simulator received (every request,
/// path and body, in every encoding [`find_markers`] knows) contains one
/// of `markers`. Every WhatsApp test can end with it.
pub fn assert_sim_saw_none(sim: &graph_sim::Sim, markers: &[&str]) {
    let markers: Vec<String> = markers.iter().map(|m| (*m).to_owned()).collect();
    for r in sim.requests() {
        let mut seen = r.path.clone().into_bytes();
        seen.extend_from_slice(&r.body);
        let hits = find_markers(&seen, &markers);
        assert!(
            hits.is_empty(),
            "the simulator received {hits:?} at {}",
            r.path
        );
    }
}

/// Polls `f` (short waits, 20 s at most) until it yields a value: for what a
/// daemon does in the background (a worker's send, a durable event).
pub async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The audit entries of a closed data dir as someone with the disk (not the
/// keys) can edit them: `store/audit.log` read into a map, edited, and
/// written back in seq order with valid record checks. The record format
/// (vault/audit_log.rs): `u32` LE body length, `u32` LE CRC-32 of the body,
/// body = seq (`u64` BE) ‖ sealed value.
pub struct AuditEntries(std::collections::BTreeMap<u64, Vec<u8>>);

impl AuditEntries {
    pub fn get(&self, seq: [u8; 8]) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.get(&u64::from_be_bytes(seq)).cloned())
    }

    pub fn insert(&mut self, seq: [u8; 8], value: Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.insert(u64::from_be_bytes(seq), value))
    }

    pub fn remove(&mut self, seq: [u8; 8]) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.remove(&u64::from_be_bytes(seq)))
    }
}

pub fn edit_audit_entries(data: &Path, f: impl FnOnce(&mut AuditEntries)) {
    let path = clinic_relay::vault::store_path(data).join("audit.log");
    let bytes = std::fs::read(&path).unwrap();
    let mut entries = AuditEntries(Default::default());
    let mut rest = bytes.as_slice();
    while rest.len() >= 8 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let body = &rest[8..8 + len];
        let seq = u64::from_be_bytes(body[..8].try_into().unwrap());
        entries.0.insert(seq, body[8..].to_vec());
        rest = &rest[8 + len..];
    }
    assert!(rest.is_empty(), "a torn audit log before the edit");
    f(&mut entries);
    let mut out = Vec::new();
    for (seq, value) in &entries.0 {
        let mut body = seq.to_be_bytes().to_vec();
        body.extend_from_slice(value);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
    }
    std::fs::write(&path, out).unwrap();
}
