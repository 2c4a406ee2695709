//! `clinic-relay serve` under a fake systemd: the test binds the
//! NOTIFY_SOCKET datagram socket and watches READY=1, WATCHDOG=1 and, after
//! SIGTERM, STOPPING=1 and a clean exit. Spawns the real binary because it
//! sends the real signal.

use crate::support::*;
use rustix::process::{kill_process, Pid, Signal};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn next_message(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_speaks_sd_notify_and_stops_cleanly_on_sigterm() {
    let install = TestInstall::new("");
    let notify_path = install.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    // A bound on how long a broken daemon can hang the test, not a sleep.
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&install.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let first = next_message(&sock);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message: {first:?}"
    );
    let mut watchdog = false;
    for _ in 0..20 {
        if next_message(&sock).lines().any(|l| l == "WATCHDOG=1") {
            watchdog = true;
            break;
        }
    }
    assert!(watchdog, "no WATCHDOG=1");

    kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM).unwrap();
    let mut stopping = false;
    for _ in 0..20 {
        if next_message(&sock).lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "exit {:?}: {log}", out.status);
    assert!(
        log.contains("clinic-relay ready") && log.contains("clinic-relay stopped"),
        "{log}"
    );

    // The daemon audited its start and stop, and left a verifiable log.
    let vault = install.open();
    let actions: Vec<String> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap().action)
        .collect();
    assert_eq!(actions, ["service.start", "service.stop"]);
    vault.verify_audit().unwrap();
}

#[test]
fn dev_config_generates_a_key_with_a_loud_warning() {
    let install = TestInstall::new("");
    std::fs::remove_file(&install.key_file).unwrap();
    let text = std::fs::read_to_string(&install.config).unwrap().replace(
        "master_key_file = \"master.key\"",
        "master_key_file = \"dev/master.key\"\ngenerate_dev_key = true",
    );
    std::fs::write(&install.config, text).unwrap();
    let check = install.run(&["config", "check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stdout(&check).contains("will be generated"));

    let notify_path = install.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&install.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(next_message(&sock).contains("READY=1"));
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("DEVELOPMENT MASTER KEY GENERATED"),
        "{}",
        stderr(&out)
    );
    let key = install.tmp.path().join("dev/master.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
