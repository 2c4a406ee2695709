//! The peers `scripts/demo` puts around clinic-relay, all on loopback: what
//! Meta and the clinic's PMS would be in a real installation.
//!
//! ```text
//! demo_peers peers DIR TOKEN_FILE
//!     A Graph API simulator (graph-sim, the template `appointment_reminder`
//!     approved, the token in TOKEN_FILE required) and a PMS peer that
//!     answers every HL7 message AA. Writes DIR/peers.env (GRAPH_URL,
//!     PMS_ADDR) once both listen, narrates every request on stdout, and
//!     keeps each message the simulator accepted as DIR/graph-N.json and
//!     each HL7 message the PMS got as DIR/pms-N.hl7. Runs until killed.
//! demo_peers send ADDR FILE
//!     Sends the HL7 message in FILE (segments on lines) over MLLP to ADDR
//!     and prints the ACK; exit 1 unless it is AA.
//! demo_peers status URL SECRET_FILE WAMID WA_ID STATE...
//!     Meta's status webhooks (e.g. `sent delivered read`) for the message
//!     WAMID, one call each, signed; exit 1 unless each is answered 200.
//! demo_peers tap URL SECRET_FILE MESSAGE_JSON INDEX TEXT
//!     The patient taps quick-reply button INDEX of the template message
//!     MESSAGE_JSON: POSTs the button webhook Meta would send to URL,
//!     signed with the app secret (`X-Hub-Signature-256`); exit 1 unless
//!     the receiver answers 200.
//! ```
//!
//! Everything here is synthetic demo data; nothing leaves the machine.

use clinic_relay::pms::hl7::{self, AckCode};
use clinic_relay::pms::mllp;
use graph_sim::webhooks::{self, Delivery};
use graph_sim::{Recorded, Sim, Template};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Larger frames are refused (the demo's messages are a few hundred bytes).
const MAX_FRAME: usize = 1 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match argv.as_slice() {
        ["peers", dir, token_file] => peers(Path::new(dir), Path::new(token_file)).await,
        ["send", addr, file] => send(addr, Path::new(file)).await,
        ["status", url, secret_file, wamid, wa_id, states @ ..] if !states.is_empty() => {
            status(url, Path::new(secret_file), wamid, wa_id, states).await
        }
        ["tap", url, secret_file, message, index, text] => {
            tap(url, Path::new(secret_file), Path::new(message), index, text).await
        }
        _ => Err("usage: demo_peers peers DIR TOKEN_FILE | send ADDR FILE | \
                  status URL SECRET_FILE WAMID WA_ID STATE... | \
                  tap URL SECRET_FILE MESSAGE_JSON INDEX TEXT"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo_peers: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_trimmed(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// script polling for `path` never reads half of it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn peers(dir: &Path, token_file: &Path) -> Result<(), Error> {
    let sim = Sim::start().await?;
    sim.require_token(Some(&read_trimmed(token_file)?));
    sim.add_template(Template::approved("appointment_reminder", "en"));
    let pms = TcpListener::bind("127.0.0.1:0").await?;
    let pms_addr = pms.local_addr()?;
    tokio::spawn(pms_peer(pms, dir.to_owned()));
    write_atomic(
        &dir.join("peers.env"),
        format!("GRAPH_URL={}\nPMS_ADDR={pms_addr}\n", sim.base_url()).as_bytes(),
    )?;
    println!(
        "peers: Graph API simulator on {}, PMS peer on {pms_addr}",
        sim.base_url()
    );
    let mut seen = 0;
    let mut kept = 0;
    loop {
        sim.wait_for(Duration::from_secs(3600), |r| r.len() > seen)
            .await;
        let all = sim.requests();
        for r in all.get(seen..).unwrap_or_default() {
            println!("{}", narrate(r));
            if r.status == 200 && r.method == "POST" && r.path.ends_with("/messages") {
                kept += 1;
                write_atomic(&dir.join(format!("graph-{kept}.json")), &r.body)?;
            }
        }
        seen = all.len();
    }
}

/// One line about a request the simulator got.
fn narrate(r: &Recorded) -> String {
    let path = r.path.split('?').next().unwrap_or_default();
    let m = r.json();
    if r.method == "GET" && path.ends_with("/message_templates") {
        return format!(
            "Graph API ← the daemon lists the account's templates → {}",
            r.status
        );
    }
    if r.method != "POST" || !path.ends_with("/messages") {
        return format!("Graph API ← {} {path} → {}", r.method, r.status);
    }
    let to = m["to"].as_str().unwrap_or("?");
    match m["type"].as_str() {
        Some("template") => {
            let components = m["template"]["components"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let body: Vec<&str> = components
                .iter()
                .filter(|c| c["type"] == "body")
                .flat_map(|c| c["parameters"].as_array().into_iter().flatten())
                .filter_map(|p| p["text"].as_str())
                .collect();
            let buttons = components
                .iter()
                .filter(|c| c["sub_type"] == "quick_reply")
                .count();
            format!(
                "Graph API ← template {} ({}) to {to}, parameters {body:?}, {buttons} quick-reply buttons → {}",
                m["template"]["name"].as_str().unwrap_or("?"),
                m["template"]["language"]["code"].as_str().unwrap_or("?"),
                r.status
            )
        }
        Some("text") => format!(
            "Graph API ← text to {to}: {:?} → {}",
            m["text"]["body"].as_str().unwrap_or_default(),
            r.status
        ),
        other => format!(
            "Graph API ← {} message to {to} → {}",
            other.unwrap_or("?"),
            r.status
        ),
    }
}

/// The clinic's PMS: prints what it gets and answers AA.
async fn pms_peer(listener: TcpListener, dir: PathBuf) {
    let count = Arc::new(AtomicUsize::new(0));
    while let Ok((stream, _)) = listener.accept().await {
        let (dir, count) = (dir.clone(), count.clone());
        tokio::spawn(async move {
            if let Err(e) = pms_connection(stream, &dir, &count).await {
                println!("PMS peer: connection ended: {e}");
            }
        });
    }
}

async fn pms_connection(stream: TcpStream, dir: &Path, count: &AtomicUsize) -> Result<(), Error> {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    while let Some(frame) = mllp::read_frame(&mut r, MAX_FRAME).await? {
        let mllp::Incoming::Message(bytes) = frame else {
            return Err("oversized frame".into());
        };
        let msg = hl7::parse(&bytes).map_err(|e| format!("unparsable HL7: {e}"))?;
        let kind = msg
            .message_type()
            .map(|t| format!("{}^{}", t.code, t.trigger))
            .unwrap_or_else(|| "?".to_owned());
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        write_atomic(&dir.join(format!("pms-{n}.hl7")), &bytes)?;
        println!("PMS peer ← {kind}, answered AA:");
        for segment in String::from_utf8_lossy(&bytes).split(['\r', '\n']) {
            if !segment.is_empty() {
                println!("    {segment}");
            }
        }
        let ack = hl7::ack(
            &msg,
            AckCode::Accept,
            None,
            now(),
            "DEMOPMS",
            "DEMOCLINIC",
            &format!("PMSACK{n}"),
        );
        mllp::write_frame(&mut w, &ack).await?;
    }
    Ok(())
}

/// The wall clock: these peers stand in for systems outside the daemon,
/// where the product's injected clock does not reach.
#[allow(clippy::disallowed_methods)]
fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

async fn send(addr: &str, file: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(file)?;
    let message = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\r");
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (r, mut w) = tokio::io::split(stream);
    mllp::write_frame(&mut w, message.as_bytes()).await?;
    let mut r = BufReader::new(r);
    let reply = tokio::time::timeout(Duration::from_secs(10), mllp::read_frame(&mut r, MAX_FRAME))
        .await
        .map_err(|_| "no ACK within 10 s")??;
    let Some(mllp::Incoming::Message(ack)) = reply else {
        return Err("the connection closed without an ACK".into());
    };
    let ack = String::from_utf8_lossy(&ack).into_owned();
    let msa = ack
        .split(['\r', '\n'])
        .find(|s| s.starts_with("MSA|"))
        .unwrap_or_default()
        .to_owned();
    println!("    ACK: {msa}");
    if !msa.starts_with("MSA|AA|") {
        for segment in ack.split(['\r', '\n']).filter(|s| s.starts_with("ERR|")) {
            println!("    {segment}");
        }
        return Err("the daemon did not accept the message (no AA)".into());
    }
    Ok(())
}

/// Delivers `updates` to `url` signed with the secret in `secret_file`,
/// as Meta does; every call must be answered 200.
async fn deliver(url: &str, secret_file: &Path, updates: &[webhooks::Update]) -> Result<(), Error> {
    let delivery = Delivery {
        url: url.to_owned(),
        app_secret: read_trimmed(secret_file)?,
        shuffle: None,
        duplicate: false,
        per_call: 1,
    };
    let statuses = webhooks::deliver(updates, &delivery).await?;
    println!("    POST {url} (X-Hub-Signature-256 over the body) → {statuses:?}");
    if statuses.iter().any(|s| *s != 200) {
        return Err("the webhook receiver did not answer 200".into());
    }
    Ok(())
}

async fn status(
    url: &str,
    secret_file: &Path,
    wamid: &str,
    wa_id: &str,
    states: &[&str],
) -> Result<(), Error> {
    let at = now().as_second().unsigned_abs();
    let updates: Vec<_> = states
        .iter()
        .map(|state| webhooks::status(wamid, state, wa_id, at))
        .collect();
    deliver(url, secret_file, &updates).await
}

async fn tap(
    url: &str,
    secret_file: &Path,
    message: &Path,
    index: &str,
    text: &str,
) -> Result<(), Error> {
    let sent: Value = serde_json::from_slice(&std::fs::read(message)?)?;
    let payload = sent["template"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        // Meta's `index` is a string: "0".
        .find(|c| c["sub_type"] == "quick_reply" && c["index"] == index)
        .and_then(|c| c["parameters"][0]["payload"].as_str())
        .ok_or("the message has no quick-reply button with that index")?
        .to_owned();
    // Meta names the sender by wa_id: the number's digits.
    let wa_id: String = sent["to"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let at = now().as_second().unsigned_abs();
    let update = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "ZZ Demo"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": format!("wamid.DEMOTAP{at}"), "timestamp": at.to_string(),
                      "type": "button", "button": {"payload": payload, "text": text}}]
    });
    deliver(url, secret_file, &[update]).await
}
