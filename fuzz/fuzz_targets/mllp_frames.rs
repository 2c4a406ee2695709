//! MLLP framing under arbitrary bytes and arbitrary chunking: the reader
//! never panics, never returns more than the limit, and a stream cut into
//! different chunk sizes yields the same frames.
#![no_main]

use clinic_relay::pms::mllp::{self, Incoming};
use libfuzzer_sys::fuzz_target;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

const LIMIT: usize = 4096;

/// Hands out the input in chunks of the given sizes (cycled).
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Message(Vec<u8>),
    Oversized,
    Error,
}

fn frames(data: &[u8], sizes: Vec<usize>, capacity: usize) -> Vec<Seen> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut r = BufReader::with_capacity(
            capacity,
            Chunked {
                data,
                sizes,
                turn: 0,
            },
        );
        let mut out = Vec::new();
        loop {
            match mllp::read_frame(&mut r, LIMIT).await {
                Ok(None) => break,
                Ok(Some(Incoming::Message(m))) => {
                    assert!(m.len() <= LIMIT, "a frame over the limit was returned");
                    out.push(Seen::Message(m.to_vec()));
                }
                Ok(Some(_)) => out.push(Seen::Oversized),
                Err(_) => {
                    out.push(Seen::Error);
                    break;
                }
            }
            assert!(out.len() <= data.len() + 1, "more frames than bytes");
        }
        out
    })
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, sizes) = input;
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();
    let whole = frames(&data, vec![data.len().max(1)], 8192);
    if sizes.is_empty() {
        return;
    }
    let chunked = frames(&data, sizes, 64);
    assert_eq!(whole, chunked, "chunking changed the frames");
});
