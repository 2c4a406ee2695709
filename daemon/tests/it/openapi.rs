//! `docs/openapi.yaml` against the router: every route the code serves is
//! documented with its methods, nothing documented is missing from the code,
//! and the running daemon's 405/`Allow` answers agree with the document.
//! (Schemathesis checks the bodies against the schemas: `scripts/contract`.)

use crate::pms_support::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn repo_file(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `/v1/patients/{id}/consent` → `/v1/patients/{}/consent`.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Paths and methods of the OpenAPI document (its `paths:` block is indented
/// two spaces per path and four per operation; a tiny reader is enough and
/// keeps a YAML parser out of the dependencies).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = repo_file("docs/openapi.yaml");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_paths = false;
    for line in doc.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            let p = shape(&format!("/{p}"));
            out.entry(p.clone()).or_default();
            current = Some(p);
        } else if let (Some(p), Some(m)) = (
            &current,
            line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
        ) {
            let m = m.to_ascii_uppercase();
            if METHODS.contains(&m.as_str()) {
                out.entry(p.clone()).or_default().insert(m);
            }
        }
    }
    out
}

/// Routes of the router, read from its match arms
/// (`(Method::GET, ["v1", "patients", id]) =>`).
fn routed() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo_file("daemon/src/api/routes.rs");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("(Method::") else {
            continue;
        };
        let Some((method, rest)) = rest.split_once(", [") else {
            continue;
        };
        let Some((segments, _)) = rest.split_once("])") else {
            continue;
        };
        let path: String = segments
            .split(", ")
            .map(
                |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(lit) => lit.to_owned(),
                    None => "{}".to_owned(),
                },
            )
            .fold(String::new(), |acc, s| acc + "/" + &s);
        out.entry(path).or_default().insert(method.to_owned());
    }
    out
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = documented();
    let code = routed();
    assert!(code.len() >= 10, "the route reader found {code:?}");
    assert_eq!(
        doc, code,
        "docs/openapi.yaml and daemon/src/api/routes.rs disagree (left: document, right: code)"
    );
}

/// A concrete request path for a documented path shape.
fn concrete(shape: &str) -> String {
    shape.replace("{}", "c0ffee00c0ffee00c0ffee00c0ffee00")
}

async fn method_and_allow(
    socket: &std::path::Path,
    method: &str,
    path: &str,
) -> (u16, Option<String>, String) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = resp.into_body().collect().await;
    (status, allow, ct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undocumented_methods_get_405_with_the_documented_allow_list() {
    let d = Daemon::start("").await;
    for (path, methods) in documented() {
        let path = concrete(&path);
        let expected: BTreeSet<String> = methods.iter().cloned().collect();
        for m in METHODS.iter().filter(|m| !methods.contains(**m)) {
            let (status, allow, ct) = method_and_allow(&d.running.api_socket, m, &path).await;
            assert_eq!(status, 405, "{m} {path}");
            assert_eq!(ct, "application/problem+json", "{m} {path}");
            let allow: BTreeSet<String> = allow
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            assert_eq!(allow, expected, "Allow of {path} against the document");
        }
    }
    d.stop().await;
}

/// Found by the contract run: a consent `PUT` repeated with its
/// `Idempotency-Key` after the patient was erased answered `200` with the
/// body `null`, which matches no schema; the document says 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_consent_put_after_erasure_is_404_not_null() {
    let d = Daemon::start("").await;
    let (status, p) = d
        .api(
            "POST",
            "/v1/patients",
            Some(json!({"identifier": [{"value": "OA-1"}], "name": [{"family": "ZZOPENAPI"}]})),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/patients/{id}/consent");
    let body = br#"{"state":"opted-in"}"#.to_vec();
    let key = [("idempotency-key", "oa-consent-1")];
    let (status, first) = api_call(
        &d.running.api_socket,
        "PUT",
        &path,
        Some(body.clone()),
        &key,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["state"], "opted-in");
    let (status, _) = d.api("DELETE", &format!("/v1/patients/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, again) = api_call(&d.running.api_socket, "PUT", &path, Some(body), &key).await;
    assert_eq!(status, 404, "{again}");
    assert_eq!(again["status"], 404);
    d.stop().await;
}
