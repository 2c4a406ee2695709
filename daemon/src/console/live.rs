//! Live updates of the open inbox (server-sent events). The browser's
//! `/static/console.js` (vendored, ours, a dozen lines) listens on
//! `/events` and reloads the inbox when something it shows has changed:
//! the stream names no patient and carries no data, only "changed". It
//! follows the vault's durable event feed, so a change is announced only
//! once it is on disk. The stream ends with the session (checked without
//! moving its idle clock: an open tab alone must not keep it alive) and at
//! the daemon's stop.

use super::ConsoleState;
use crate::model::EventKind;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A comment line this often keeps proxies and the browser from giving up.
const KEEP_ALIVE: Duration = Duration::from_secs(20);
/// How often the session is checked while nothing happens.
const SESSION_CHECK: Duration = Duration::from_secs(5);

/// Kinds that change what the inbox shows.
fn moves_the_inbox(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::StaffRequested | EventKind::MessageReceived | EventKind::MessageStatus
    )
}

type Tx = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Starts the stream of session `id`; the receiver is the response body.
pub fn start(
    state: &Arc<ConsoleState>,
    id: String,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(run(state.clone(), id, tx));
    rx
}

/// Sends `text`; false when the browser is gone or the daemon stops (a
/// client that does not read must not hold the stop up).
async fn send(tx: &Tx, stop: &mut tokio::sync::watch::Receiver<bool>, text: &'static str) -> bool {
    tokio::select! {
        sent = tx.send(Ok(Bytes::from_static(text.as_bytes()))) => sent.is_ok() && !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

async fn run(state: Arc<ConsoleState>, id: String, tx: Tx) {
    let vault = &state.api.vault;
    let mut feed = vault.events_watch();
    let mut cursor = *feed.borrow_and_update();
    let mut stop = state.stop.clone();
    if !send(&tx, &mut stop, "retry: 3000\n\n").await {
        return;
    }
    let mut quiet = Duration::ZERO;
    loop {
        let changed = tokio::select! {
            r = feed.changed() => r.is_ok(),
            () = tokio::time::sleep(SESSION_CHECK) => false,
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        if !state.sessions.alive(&id, state.api.clock.now()) {
            let _ = send(&tx, &mut stop, "event: logout\ndata: signed out\n\n").await;
            return;
        }
        if changed {
            let head = *feed.borrow_and_update();
            let moved = match vault.events_after(cursor, 10_000) {
                Ok(found) => found.iter().any(|(_, e)| moves_the_inbox(e.kind)),
                // Cannot tell: a reload shows what is there.
                Err(_) => true,
            };
            cursor = head;
            if moved {
                quiet = Duration::ZERO;
                if !send(&tx, &mut stop, "event: inbox\ndata: changed\n\n").await {
                    return;
                }
                continue;
            }
        }
        quiet += SESSION_CHECK;
        if quiet >= KEEP_ALIVE {
            quiet = Duration::ZERO;
            if !send(&tx, &mut stop, ": keep-alive\n\n").await {
                return;
            }
        }
    }
}

/// The inbox page's script (served as a file: the CSP allows no inline
/// script). A stream refused for good (the session ended before it
/// opened, or the daemon restarted) reloads the page after 5 s: the server
/// then sends the browser to the sign-in page if the session is gone.
pub const SCRIPT: &str = "\"use strict\";\n\
(function () {\n\
  if (!window.EventSource || !document.getElementById(\"inbox\")) { return; }\n\
  var es = new EventSource(\"/events\");\n\
  es.addEventListener(\"inbox\", function () { window.location.reload(); });\n\
  es.addEventListener(\"logout\", function () { es.close(); window.location.assign(\"/login\"); });\n\
  es.addEventListener(\"error\", function () {\n\
    if (es.readyState === EventSource.CLOSED) { window.setTimeout(function () { window.location.reload(); }, 5000); }\n\
  });\n\
})();\n";
