//! MLLP framing (`0x0B` payload `0x1C 0x0D`) over any byte stream.
//!
//! Real senders put stray bytes (newlines, keep-alive junk) between frames,
//! split frames across TCP segments, and occasionally send far more than any
//! sane message: the reader skips junk, never buffers more than the limit,
//! and reports an oversized frame with its first bytes kept so the reply can
//! still name the message (MSH-10) it rejects.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

pub const START_BLOCK: u8 = 0x0B;
pub const END_BLOCK: u8 = 0x1C;
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// How much of an oversized frame is kept to read its header.
pub const OVERSIZED_HEAD: usize = 4096;

/// One frame as read. The bytes are a whole HL7 message (patient data):
/// `Debug` shows only their length.
#[derive(PartialEq, Eq)]
pub enum Incoming {
    Message(Vec<u8>),
    /// The frame was larger than the limit; `head` is its beginning.
    Oversized {
        head: Vec<u8>,
        len: usize,
    },
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incoming::Message(bytes) => f
                .debug_struct("Message")
                .field("bytes", &bytes.len())
                .finish(),
            Incoming::Oversized { head, len } => f
                .debug_struct("Oversized")
                .field("head_bytes", &head.len())
                .field("len", len)
                .finish(),
        }
    }
}

/// Reads the next frame. `Ok(None)` is a clean end of stream between frames;
/// a stream that ends inside a frame is an `UnexpectedEof` error.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> std::io::Result<Option<Incoming>> {
    // Skip anything before the start block.
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|&b| b == START_BLOCK) {
            Some(i) => {
                r.consume(i + 1);
                break;
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
    let mut body = Body::new(max_bytes);
    let mut pending_end_block = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside an MLLP frame",
            ));
        }
        if pending_end_block {
            pending_end_block = false;
            if buf.first() == Some(&CARRIAGE_RETURN) {
                r.consume(1);
                return Ok(Some(body.finish()));
            }
            body.take(&[END_BLOCK]);
        }
        let buf = r.fill_buf().await?;
        match buf.iter().position(|&b| b == END_BLOCK) {
            Some(i) => {
                body.take(buf.get(..i).unwrap_or_default());
                match buf.get(i + 1) {
                    Some(&CARRIAGE_RETURN) => {
                        r.consume(i + 2);
                        return Ok(Some(body.finish()));
                    }
                    Some(_) => {
                        // A lone 0x1C inside the payload: keep it as data.
                        body.take(&[END_BLOCK]);
                        r.consume(i + 1);
                    }
                    None => {
                        r.consume(i + 1);
                        pending_end_block = true;
                    }
                }
            }
            None => {
                let n = buf.len();
                body.take(buf);
                r.consume(n);
            }
        }
    }
}

struct Body {
    bytes: Vec<u8>,
    len: usize,
    max: usize,
}

impl Body {
    fn new(max: usize) -> Self {
        Self {
            bytes: Vec::new(),
            len: 0,
            max,
        }
    }

    fn take(&mut self, chunk: &[u8]) {
        self.len += chunk.len();
        let room = if self.len <= self.max {
            chunk.len()
        } else {
            OVERSIZED_HEAD
                .saturating_sub(self.bytes.len())
                .min(chunk.len())
        };
        self.bytes
            .extend_from_slice(chunk.get(..room).unwrap_or_default());
    }

    fn finish(mut self) -> Incoming {
        if self.len <= self.max {
            Incoming::Message(self.bytes)
        } else {
            self.bytes.truncate(OVERSIZED_HEAD);
            Incoming::Oversized {
                head: self.bytes,
                len: self.len,
            }
        }
    }
}

/// Writes one framed payload and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> std::io::Result<()> {
    let mut framed = Vec::with_capacity(payload.len() + 3);
    framed.push(START_BLOCK);
    framed.extend_from_slice(payload);
    framed.push(END_BLOCK);
    framed.push(CARRIAGE_RETURN);
    w.write_all(&framed).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn frames(input: &[u8], max: usize) -> Vec<Incoming> {
        let mut r = BufReader::with_capacity(7, input); // tiny buffer: frames split everywhere
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut r, max).await.unwrap() {
            out.push(f);
        }
        out
    }

    #[tokio::test]
    async fn reads_frames_split_anywhere_and_skips_junk() {
        let input = b"\r\n\x0bMSH|one\r\x1c\r junk \x0bMSH|two\x1cX\r\x1c\r\n";
        let got = frames(input, 1000).await;
        assert_eq!(
            got,
            vec![
                Incoming::Message(b"MSH|one\r".to_vec()),
                Incoming::Message(b"MSH|two\x1cX\r".to_vec())
            ]
        );
    }

    #[tokio::test]
    async fn oversized_frames_keep_their_head_and_the_stream_goes_on() {
        let mut input = vec![START_BLOCK];
        input.extend(std::iter::repeat_n(b'A', 10_000));
        input.extend([
            END_BLOCK,
            CARRIAGE_RETURN,
            START_BLOCK,
            b'o',
            b'k',
            END_BLOCK,
            CARRIAGE_RETURN,
        ]);
        let got = frames(&input, 100).await;
        match &got[0] {
            Incoming::Oversized { head, len } => {
                assert_eq!(*len, 10_000);
                assert_eq!(head.len(), OVERSIZED_HEAD);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(got[1], Incoming::Message(b"ok".to_vec()));
    }

    #[test]
    fn debug_shows_lengths_never_bytes() {
        let payload = b"MSH|^~\\&|A|B|||1||ADT^A04|X|P|2.5\rPID|1||1||ZZMARKERZZ".to_vec();
        let shown = format!("{:?}", Incoming::Message(payload.clone()));
        assert!(
            !shown.contains("ZZMARKERZZ") && !shown.contains("77, 83"),
            "{shown}"
        );
        assert!(shown.contains(&payload.len().to_string()), "{shown}");
        let shown = format!(
            "{:?}",
            Incoming::Oversized {
                head: payload,
                len: 99_999
            }
        );
        assert!(
            !shown.contains("ZZMARKERZZ") && shown.contains("99999"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let mut r = BufReader::new(&b"\x0bMSH|cut"[..]);
        assert!(read_frame(&mut r, 100).await.is_err());
    }
}
