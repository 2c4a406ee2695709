//! A WhatsApp webhook POST: body + `X-Hub-Signature-256`. The receiver's
//! check accepts exactly the right signature (the fuzzer cannot forge one;
//! with `sign` it is computed the way Meta does), and a signed body of any
//! bytes either fails to parse or is staged and committed through the one
//! apply path without a panic or a storage error.
#![no_main]

use clinic_relay::clock::ManualClock;
use clinic_relay::keys::MasterKey;
use clinic_relay::vault::{Txn, Vault};
use clinic_relay::webhook::apply::{self, Batch};
use clinic_relay::webhook::config::{Secret, Secrets, WebhookConfig};
use clinic_relay::webhook::payload::Notification;
use clinic_relay::webhook::server::Receiver;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const APP_SECRET: &[u8] = b"fuzz-app-secret-not-a-real-one";

/// The input: one byte (bit 0: sign the body correctly), then either the
/// body (signed), or a header line, `\n`, and the body.
struct Post {
    sign: bool,
    header: Vec<u8>,
    body: Vec<u8>,
}

impl Post {
    fn from_bytes(bytes: &[u8]) -> Option<Post> {
        let (&mode, rest) = bytes.split_first()?;
        if mode & 1 == 1 {
            return Some(Post {
                sign: true,
                header: Vec::new(),
                body: rest.to_vec(),
            });
        }
        let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, body) = rest.split_at(cut);
        Some(Post {
            sign: false,
            header: header.to_vec(),
            body: body.get(1..).unwrap_or_default().to_vec(),
        })
    }
}

struct Fixture {
    _rt: tokio::runtime::Runtime,
    vault: Vault,
    receiver: Receiver,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("clinic-relay-fuzz-webhook-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let vault =
            Vault::open(&dir.join("data"), &MasterKey::from_bytes([9; 32])).expect("a vault");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let cfg = WebhookConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            path: "/webhook".to_owned(),
            app_secret_file: dir.join("app-secret"),
            previous_app_secret_file: None,
            verify_token_file: dir.join("verify-token"),
            generate_dev_secrets: false,
            max_body_bytes: 3 * 1024 * 1024,
            max_connections: 4,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(10),
            tls: None,
        };
        let secrets = Secrets {
            app_secrets: vec![Secret::from_bytes(APP_SECRET)],
            verify_token: Secret::from_bytes(b"fuzz-verify-token"),
        };
        let clock = ManualClock::new(jiff::Timestamp::from_second(1_800_000_000).expect("a time"));
        let receiver = {
            let _guard = rt.enter();
            Receiver::new(&cfg, &secrets, vault.clone(), Arc::new(clock)).expect("a receiver")
        };
        Fixture {
            _rt: rt,
            vault,
            receiver,
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Some(post) = Post::from_bytes(bytes) else {
        return;
    };
    let f = fixture();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, APP_SECRET);
    let right = format!("sha256={}", hex::encode(ring::hmac::sign(&key, &post.body)));
    let header = if post.sign {
        right.clone().into_bytes()
    } else {
        post.header.clone()
    };
    let ok = f.receiver.signature_ok(Some(&header), &post.body);
    let expected = header.strip_prefix(b"sha256=").is_some_and(|h| {
        h.trim_ascii()
            .eq_ignore_ascii_case(right.as_bytes().get(7..).unwrap_or_default())
    });
    assert_eq!(ok, expected, "signature check disagrees for {header:?}");
    if !ok {
        return;
    }
    let Ok(notification) = serde_json::from_slice::<Notification>(&post.body) else {
        return;
    };
    let batch = Batch::from_notification(notification);
    if batch.is_empty() {
        return;
    }
    let now = jiff::Timestamp::from_second(1_800_000_000).expect("a time");
    let staged = f.vault.write_blocking(move |v| {
        let mut txn = Txn::new(now);
        apply::stage(v, &mut txn, &batch, now)?;
        Ok::<_, clinic_relay::vault::VaultError>((txn, ()))
    });
    assert!(
        staged.is_ok(),
        "a signed webhook failed to apply: {:?}",
        staged.err()
    );
});
