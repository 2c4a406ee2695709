//! The two large responses — a result with its PDF and a backup — stream
//! through a small channel, and at most [`MAX_DOWNLOADS`] run at once
//! (beyond: `503` with `Retry-After`). Issue 8: 30 concurrent downloads of a
//! 9 MB PDF peaked at 594 MB, each holding the document, its base64, the
//! JSON tree and the serialised body at the same time.

use super::fhir;
use super::problem::Problem;
use super::routes::ApiBody;
use crate::model::LabResult;
use base64::Engine as _;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Large responses in flight at once (results and backups together).
pub const MAX_DOWNLOADS: usize = 4;
/// What a client refused for that is told to wait, in seconds.
pub const RETRY_AFTER_SECS: u32 = 2;
/// Pieces buffered per stream.
const PIECES_IN_FLIGHT: usize = 4;
/// PDF bytes per piece: a multiple of 3, so that each piece's base64 has no
/// padding and the pieces concatenate to the document's base64.
const PDF_PIECE: usize = 48 * 1024;

/// The slots for large responses, shared by every connection.
#[derive(Clone)]
pub struct Downloads(Arc<Semaphore>);

impl Default for Downloads {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_DOWNLOADS)))
    }
}

impl Downloads {
    /// A slot, held until the response has been sent (or the client left).
    pub fn start(&self) -> Result<OwnedSemaphorePermit, Problem> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many downloads",
                format!(
                    "{MAX_DOWNLOADS} results or backups are being sent; retry in {RETRY_AFTER_SECS} s"
                ),
            )
            .retry_after(RETRY_AFTER_SECS)
        })
    }
}

/// `result` as a DiagnosticReport whose PDF is encoded piece by piece as it
/// is sent. The JSON around it is made with a random stand-in for the data,
/// which nothing in the record can contain.
pub fn result_response(
    result: LabResult,
    permit: OwnedSemaphorePermit,
) -> Result<Response<ApiBody>, Problem> {
    let marker = stand_in()?;
    let shell = fhir::diagnostic_report(&result, serde_json::json!(marker));
    let text = serde_json::to_string(&shell).map_err(|e| Problem::internal(e.to_string()))?;
    let quoted = format!("\"{marker}\"");
    let (head, tail) = match text.split_once(&quoted) {
        // A withdrawn result has no document, so no stand-in.
        None => (text, String::new()),
        Some((h, t)) => (format!("{h}\""), format!("\"{t}")),
    };
    let with_data = !tail.is_empty();
    let data_len = if with_data {
        result.pdf.len().div_ceil(3) * 4
    } else {
        0
    };
    let length = head.len() + data_len + tail.len();
    let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
    tokio::spawn(async move {
        let _permit = permit;
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        if with_data {
            for piece in result.pdf.chunks(PDF_PIECE) {
                let b64 = base64::engine::general_purpose::STANDARD.encode(piece);
                if tx.send(Ok(Bytes::from(b64))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(Bytes::from(tail))).await;
        }
    });
    let mut resp = Response::new(ApiBody::Stream(rx));
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(hyper::header::CONTENT_LENGTH, length.into());
    Ok(resp)
}

/// A patient's inbound media as it came (an image, a document…), sent in
/// pieces while the slot is held. Only a well-formed media type is passed
/// on (else `application/octet-stream`); it is always an attachment, never
/// rendered by the client as a page.
pub fn media_response(
    bytes: Vec<u8>,
    mime_type: Option<&str>,
    permit: OwnedSemaphorePermit,
) -> Result<Response<ApiBody>, Problem> {
    let length = bytes.len();
    let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
    tokio::spawn(async move {
        let _permit = permit;
        let bytes = zeroize::Zeroizing::new(bytes);
        for piece in bytes.chunks(PDF_PIECE) {
            if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(ApiBody::Stream(rx));
    let headers = resp.headers_mut();
    let mime = mime_type
        .filter(|m| is_media_type(m))
        .unwrap_or("application/octet-stream");
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_str(mime).map_err(|_| Problem::internal("media type"))?,
    );
    headers.insert(
        hyper::header::CONTENT_DISPOSITION,
        hyper::header::HeaderValue::from_static("attachment"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(hyper::header::CONTENT_LENGTH, length.into());
    Ok(resp)
}

/// `type/subtype` of token characters (what Meta sends, e.g. `image/jpeg`,
/// `audio/ogg; codecs=opus` is cut at the parameters by the caller).
fn is_media_type(m: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(m.split_once('/'), Some((a, b)) if token(a) && token(b))
}

/// 32 random hex digits.
fn stand_in() -> Result<String, Problem> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Problem::internal("no randomness"))?;
    Ok(format!("pdf-{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PatientId, ResultStatus};
    use http_body_util::BodyExt;

    fn result(pdf_len: usize, withdrawn: bool) -> LabResult {
        LabResult {
            order_number: "ORD-1".into(),
            patient: PatientId([7; 16]),
            status: ResultStatus::Final,
            observed_at: None,
            received_at: jiff::Timestamp::UNIX_EPOCH,
            version: 1,
            pdf: (0..pdf_len).map(|i| (i % 251) as u8).collect(),
            delivered: false,
            withdrawn,
            release_code: None,
        }
    }

    #[tokio::test]
    async fn the_stream_is_the_whole_report() {
        for (len, withdrawn) in [
            (0, false),
            (1, false),
            (PDF_PIECE * 3 + 2, false),
            (10, true),
        ] {
            let r = result(len, withdrawn);
            let data = base64::engine::general_purpose::STANDARD.encode(&r.pdf);
            let expected = fhir::diagnostic_report(&r, serde_json::json!(data));
            let downloads = Downloads::default();
            let resp = result_response(r, downloads.start().unwrap()).unwrap();
            let declared: usize = resp.headers()[hyper::header::CONTENT_LENGTH]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), declared);
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, expected, "{len} {withdrawn}");
        }
    }

    #[test]
    fn downloads_are_bounded() {
        let d = Downloads::default();
        let held: Vec<_> = (0..MAX_DOWNLOADS).map(|_| d.start().unwrap()).collect();
        let refused = d.start().unwrap_err();
        assert_eq!(refused.status, 503);
        drop(held);
        assert!(d.start().is_ok());
    }
}
