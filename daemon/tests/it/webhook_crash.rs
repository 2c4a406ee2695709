//! Kill -9 while webhooks are posted: four connections post signed status
//! batches to the real daemon, which is SIGKILLed after a varying number of
//! 200s with requests in flight, 20 times. After each kill every webhook
//! answered 200 is in the vault. Spawns the real binary because it kills it.

use crate::support::*;
use crate::webhook::{sign, statuses_body};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const ROUNDS: u64 = 20;
const SECRET: &str = "crash-test-app-secret";
const POSTERS: usize = 4;

/// Posts `body` on a kept-alive connection; None once the daemon is gone.
async fn try_post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>,
    body: Vec<u8>,
) -> Option<u16> {
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/webhook")
        .header("host", "localhost")
        .header("x-hub-signature-256", sign(SECRET, &body))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_webhooks_are_posted_loses_no_acknowledged_one() {
    let install = TestInstall::new(
        "[webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_file = \"app-secret\"\n\
         verify_token_file = \"verify-token\"\n",
    );
    install.secret("app-secret", SECRET);
    install.secret("verify-token", "t");
    let mut acked: Vec<String> = Vec::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1 + (seed % 40) as usize;
        let Served {
            mut child, webhook, ..
        } = spawn_serve(&install);
        let addr = webhook.expect("the webhook receiver listens");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut posters = Vec::new();
        for task in 0..POSTERS {
            let tx = tx.clone();
            posters.push(tokio::spawn(async move {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    return;
                };
                tokio::spawn(conn);
                for i in 0.. {
                    let wamid = format!("wamid.K{round}-{task}-{i}");
                    let state = ["sent", "delivered", "read"][i % 3];
                    let body = statuses_body(&wamid, state);
                    match try_post(&mut sender, body).await {
                        Some(200) => {
                            if tx.send(wamid).is_err() {
                                return;
                            }
                        }
                        Some(other) => panic!("unexpected status {other}"),
                        None => return,
                    }
                }
            }));
        }
        drop(tx);
        let mut this_round = 0;
        while let Some(wamid) = rx.recv().await {
            acked.push(wamid);
            this_round += 1;
            if this_round == kill_after {
                // Requests of the other connections are in flight now.
                child.kill().unwrap();
                break;
            }
        }
        child.wait().unwrap();
        // 200s that raced the kill still count.
        while let Some(wamid) = rx.recv().await {
            acked.push(wamid);
        }
        for p in posters {
            p.await.unwrap();
        }
        let vault = install.open();
        for wamid in &acked {
            assert!(
                vault.wa_status(wamid).unwrap().is_some(),
                "round {round}: the 200'd {wamid} was lost"
            );
        }
        assert_eq!(vault.audit_damage(), None);
        vault.close().unwrap();
    }
    assert!(acked.len() as u64 >= ROUNDS);
}
