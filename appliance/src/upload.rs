//! `POST /v1/admin/update` on the HTTPS API (admin token): an update bundle uploaded as the
//! request body, streamed into the same verifier and installer as `oasis update apply`
//! ([`crate::generations::NodeGenerations::apply`]), never held in memory.
//!
//! The size is bounded twice: a `Content-Length` over [`NodeGenerations::max_upload_bytes`] is
//! refused (413) before a byte is read, and the verifier itself reads no more than the header, a
//! bounded manifest and the member sizes it declares (within the same limit), plus one byte to
//! see that nothing follows.

use std::io::{self, Read};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::generations::{Applied, NodeGenerations};
use crate::operator::ActionError;

/// How many body chunks wait for the verifier at most.
const QUEUE: usize = 8;

/// A blocking reader of a request body's chunks, for the verifier on the blocking pool.
struct BodyReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// A reader of `chunks`, and the feed that fills it (to run beside the reader). When the reader
/// is dropped before the end (the verifier refused the bundle from its first bytes), the feed
/// reads the rest and drops it, up to `limit` bytes in all: a client still sending its upload
/// then gets the refusal, not a connection reset under it (a server that closes with unread
/// data sends a TCP reset, and the client's kernel may throw the answer away with it).
fn reader_of<S, E>(chunks: S, limit: u64) -> (BodyReader, impl std::future::Future<Output = ()>)
where
    S: futures::Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let feed = async move {
        let mut chunks = std::pin::pin!(chunks);
        let (mut seen, mut reader_gone) = (0u64, false);
        while let Some(chunk) = chunks.next().await {
            seen = seen.saturating_add(chunk.as_ref().map_or(0, |c| c.len() as u64));
            // While the verifier reads, it bounds the upload itself (and says so).
            if reader_gone && (seen > limit || chunk.is_err()) {
                break;
            }
            if !reader_gone {
                let chunk = chunk.map_err(|e| io::Error::other(format!("the upload broke off: {e}")));
                reader_gone = tx.send(chunk).await.is_err();
            }
        }
    };
    (BodyReader { chunks: rx, current: Bytes::new() }, feed)
}

/// Installs the bundle uploaded as `body` (authorised by the caller).
pub async fn apply_upload(
    generations: &NodeGenerations,
    headers: &HeaderMap,
    body: Body,
) -> Result<Applied, ActionError> {
    let limit = generations.max_upload_bytes();
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length.filter(|&l| l > limit) {
        return Err(ActionError::Body {
            too_large: true,
            text: format!("the upload is {length} bytes, over this appliance's limit of {limit} for an update bundle"),
        });
    }
    apply_stream(generations, body.into_data_stream()).await
}

/// Installs the bundle read from `chunks` (a request's body, or a form's file field). The
/// answer waits for the rest of a refused upload (see [`reader_of`]); the connection's own body
/// timeouts bound a client that stops sending.
pub async fn apply_stream<S, E>(generations: &NodeGenerations, chunks: S) -> Result<Applied, ActionError>
where
    S: futures::Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let (reader, feed) = reader_of(chunks, generations.max_upload_bytes());
    let (applied, ()) = tokio::join!(generations.apply(reader), feed);
    Ok(applied?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_of_many_chunks_reads_back_whole() {
        let chunks: Vec<Result<Bytes, io::Error>> =
            (0..50u8).map(|i| Ok(Bytes::from(vec![i; 1000 + i as usize]))).collect();
        let expected: Vec<u8> = (0..50u8).flat_map(|i| vec![i; 1000 + i as usize]).collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (mut reader, feed) = reader_of(body.into_data_stream(), u64::MAX);
        tokio::spawn(feed);
        let read = tokio::task::spawn_blocking(move || {
            let mut all = vec![];
            let mut small = [0u8; 333];
            loop {
                let n = reader.read(&mut small).unwrap();
                if n == 0 {
                    break all;
                }
                all.extend_from_slice(&small[..n]);
            }
        })
        .await
        .unwrap();
        assert_eq!(read, expected);
    }

    /// A reader dropped early (a bundle refused from its first bytes): the rest of the upload is
    /// still read, up to the limit and no further, so that the client gets the answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rest_of_a_refused_upload_is_read_up_to_the_limit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for (limit, read_at_most) in [(u64::MAX, 50), (10_000, 11)] {
            let taken = std::sync::Arc::new(AtomicUsize::new(0));
            let counted = taken.clone();
            let chunks = futures::stream::iter(0..50).map(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<_, io::Error>(Bytes::from(vec![0u8; 1000]))
            });
            let (mut reader, feed) = reader_of(chunks, limit);
            let feeder = tokio::spawn(feed);
            let first = tokio::task::spawn_blocking(move || reader.read(&mut [0u8; 10]).unwrap()).await.unwrap();
            assert_eq!(first, 10);
            feeder.await.unwrap();
            let read = taken.load(Ordering::SeqCst);
            assert!(read <= read_at_most && (limit != u64::MAX || read == 50), "limit {limit}: {read} chunks read");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_upload_is_an_error_not_a_short_file() {
        let chunks: Vec<Result<Bytes, io::Error>> =
            vec![Ok(Bytes::from_static(b"OASIS")), Err(io::Error::other("reset"))];
        let (mut reader, feed) = reader_of(futures::stream::iter(chunks), u64::MAX);
        tokio::spawn(feed);
        let e = tokio::task::spawn_blocking(move || reader.read_to_end(&mut vec![])).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("broke off"), "{e}");
    }

    /// A bundle uploaded in chunks, through the real verifier and installer.
    #[test]
    fn an_uploaded_bundle_is_installed_and_a_tampered_one_changes_nothing() {
        let rack = crate::generations::tests::Rack::new();
        let upload = |bytes: Vec<u8>| {
            let chunks: Vec<Result<Bytes, io::Error>> =
                bytes.chunks(4096).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let body = Body::from_stream(futures::stream::iter(chunks));
            rack.rt.block_on(apply_upload(&rack.generations, &HeaderMap::new(), body))
        };
        let bytes = std::fs::read(rack.bundle(1, "3.5.16-4", &rack.key)).unwrap();
        let mut tampered = bytes.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 1;
        let e = upload(tampered).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(rack.on_disk().is_empty(), "{:?}", rack.on_disk());
        let applied = upload(bytes).unwrap();
        assert_eq!(applied.generation.sequence, 1);
        assert_eq!(rack.on_disk().into_iter().collect::<Vec<_>>(), vec!["1".to_string()]);
    }
}
