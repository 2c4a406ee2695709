//! Console sessions outlive a restart of the daemon (sealed in the vault,
//! neither the cookie nor the CSRF token in the clear on disk), with their
//! idle clock stored at most a minute behind; an offline `staff disable`
//! ends them; signing out is audited.

use super::client::*;
use crate::pms_support::*;
use crate::support::*;
use graph_sim::Sim;
use jiff::SignedDuration;

fn at(mins: i64, secs: i64) -> jiff::Timestamp {
    t0() + SignedDuration::from_mins(mins) + SignedDuration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_a_restart_but_not_its_idle_time_or_a_disabled_account() {
    let sim = Sim::start().await.unwrap();
    let (d, secret) = setup(&sim).await;
    let mut b = Browser::new(&d);
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    let first = b.get("/").await;
    assert_eq!(first.status, 200);
    let (cookie, csrf) = (b.cookie("__Host-session").unwrap(), first.csrf());

    // Activity at 10 min is stored (over a minute since sign-in); the one
    // at 10 min 30 s is not yet.
    d.clock.set(at(10, 0));
    assert_eq!(b.get("/").await.status, 200);
    d.clock.set(at(10, 30));
    assert_eq!(b.get("/").await.status, 200);

    let install = d.stop().await;
    let hits = scan_dir(&install.data, &[cookie.clone(), csrf.clone()]);
    assert!(hits.is_empty(), "a session secret in the clear: {hits:?}");

    // After the restart: the same cookie opens the inbox, with the same
    // form token.
    let d = Daemon::start_in(install).await;
    d.clock.set(at(24, 0));
    b.moved_to(&d);
    let again = b.get("/").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.csrf(), csrf);
    // Idle from 24 min: 15 min later it has ended.
    d.clock.set(at(39, 1));
    let r = b.get("/").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));

    // Signed in again, then disabled by IT with the daemon stopped.
    assert_eq!(b.sign_in(&d, &secret, None).await.status, 303);
    d.clock.set(at(40, 0));
    let mut other = Browser::new(&d);
    assert_eq!(other.sign_in(&d, &secret, None).await.status, 303);
    let page = other.get("/").await;
    let out = other.post("/logout", &[("csrf", &page.csrf())]).await;
    assert_eq!(out.status, 303);
    let install = d.stop().await;
    let vault = install.open();
    let outs: Vec<_> = vault
        .audit_entries(1)
        .map(|(_, e)| e.unwrap())
        .filter(|e| e.action == "staff.logout")
        .collect();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].actor, "staff:zz-desk");
    vault.close().unwrap();
    let disabled = install.run(&["staff", "disable", "zz-desk"]);
    assert_eq!(disabled.status.code(), Some(0), "{}", stderr(&disabled));
    let d = Daemon::start_in(install).await;
    d.clock.set(at(41, 0));
    b.moved_to(&d);
    let r = b.get("/").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    d.stop().await;
}
