//! Recorded web exchanges as WARC 1.1 (ISO 28500:2017), the web-archive
//! format that pywb, warcio, wget and the Internet Archive's tools read.
//!
//! The file opens with a `warcinfo` record. Each exchange becomes a
//! `request` record and, when a response arrived, a `response` record
//! (`application/http`, the status line, the recorded headers and the body
//! exactly as recorded), or else a `metadata` record with the error. Every
//! record carries a SHA-256 `WARC-Block-Digest` (base32), page responses
//! also a `WARC-Payload-Digest` of the body; a body cut at the size cap is marked
//! `WARC-Truncated: length`. Searches (which went to a search API, not a
//! page) get the URI `urn:fathom:search:<backend>?num=N&q=<query>`. Each
//! record names its run, episode, turn, request and source in
//! `WARC-Fathom-*` fields.

use std::io::{self, Write};

use fathom_core::event::{WebExchange, WebKind};
use fathom_core::{RunId, Timestamp};
use sha2::{Digest as _, Sha256};

/// RFC 4648 base32 (upper case, padded), as WARC digests are written.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for chunk in bytes.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let n = u64::from_be_bytes([0, 0, 0, buf[0], buf[1], buf[2], buf[3], buf[4]]);
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < chars {
                out.push(ALPHABET[((n >> (35 - 5 * i)) & 31) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `sha256:BASE32` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", base32(&Sha256::digest(bytes)))
}

/// A stable `<urn:uuid:…>` for a record.
fn record_id(parts: &[&str]) -> String {
    let h = blake3::hash(parts.join("\u{1f}").as_bytes());
    let b = h.as_bytes();
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[..16]);
    u[6] = (u[6] & 0x0f) | 0x80; // version 8: custom
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = u.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "<urn:uuid:{}-{}-{}-{}-{}>",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// WARC dates: UTC, microseconds.
fn date(t: Timestamp) -> String {
    let full = t.to_string(); // 2026-11-21T23:18:54.000000001Z
    match full.split_once('.') {
        Some((secs, frac)) => format!("{secs}.{}Z", &frac[..6.min(frac.len())]),
        None => full,
    }
}

fn percent(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarcCounts {
    /// `request` records.
    pub requests: u64,
    /// `response` records.
    pub responses: u64,
    /// `metadata` records (exchanges that got no response).
    pub failures: u64,
}

/// Writes WARC records to `out`.
#[derive(Debug)]
pub struct WarcWriter<W: Write> {
    out: W,
    counts: WarcCounts,
}

impl<W: Write> WarcWriter<W> {
    /// Starts a WARC file with its `warcinfo` record.
    pub fn new(mut out: W, software: &str, created: Timestamp) -> io::Result<WarcWriter<W>> {
        let fields = format!(
            "software: {software}\r\nformat: WARC File Format 1.1\r\nconformsTo: https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/\r\n"
        );
        write_record(
            &mut out,
            &[
                ("WARC-Type", "warcinfo".into()),
                ("WARC-Record-ID", record_id(&["warcinfo", &created.to_string()])),
                ("WARC-Date", date(created)),
                ("Content-Type", "application/warc-fields".into()),
            ],
            fields.as_bytes(),
            None,
        )?;
        Ok(WarcWriter {
            out,
            counts: WarcCounts::default(),
        })
    }

    /// Writes one recorded exchange (its body as stored).
    pub fn exchange(&mut self, run: RunId, at: Timestamp, w: &WebExchange, body: &[u8]) -> io::Result<()> {
        let (uri, request_block) = match w.request_kind {
            WebKind::Search => {
                let num = w
                    .canonical
                    .split_whitespace()
                    .find_map(|p| p.strip_prefix("num="))
                    .unwrap_or("10");
                let uri = format!("urn:fathom:search:{}?num={num}&q={}", w.backend, percent(&w.target));
                let json = serde_json::json!({"q": w.target, "num": num.parse::<u64>().unwrap_or(10)}).to_string();
                let block = format!(
                    "POST /search HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                    json.len()
                );
                (uri, block)
            }
            WebKind::Fetch => {
                let Ok(url) = url::Url::parse(w.target.trim()) else {
                    // Not a URL at all (the agent made it up): nothing a
                    // WARC reader could index; recorded as metadata only.
                    return self.failure(
                        run,
                        at,
                        w,
                        &format!("urn:fathom:invalid-url:{}", percent(&w.target)),
                        None,
                    );
                };
                let mut path = url.path().to_string();
                if let Some(q) = url.query() {
                    path.push('?');
                    path.push_str(q);
                }
                let host = match url.port() {
                    Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_string(),
                };
                (url.to_string(), format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            }
        };
        let request_id = record_id(&["request", &run.to_string(), &w.request_id.to_string()]);
        let fathom = self.fathom_fields(run, w);
        let mut headers = vec![
            ("WARC-Type", "request".to_string()),
            ("WARC-Record-ID", request_id.clone()),
            ("WARC-Date", date(at)),
            ("WARC-Target-URI", uri.clone()),
            ("Content-Type", "application/http;msgtype=request".into()),
        ];
        headers.extend(fathom.iter().cloned());
        // Requests carry a block digest only: readers disagree on what a
        // request record's payload is.
        write_record(&mut self.out, &headers, request_block.as_bytes(), None)?;
        self.counts.requests += 1;
        if w.status == 0 {
            return self.failure(run, at, w, &uri, Some(&request_id));
        }
        let mut block = format!("HTTP/1.1 {} {}\r\n", w.status, reason(w.status)).into_bytes();
        for h in &w.headers {
            if h.name.eq_ignore_ascii_case("content-length") || h.name.eq_ignore_ascii_case("transfer-encoding") {
                continue;
            }
            let value: String = h.value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            block.extend_from_slice(format!("{}: {value}\r\n", h.name).as_bytes());
        }
        block.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        block.extend_from_slice(body);
        let mut headers = vec![
            ("WARC-Type", "response".to_string()),
            (
                "WARC-Record-ID",
                record_id(&["response", &run.to_string(), &w.request_id.to_string()]),
            ),
            ("WARC-Date", date(at)),
            ("WARC-Target-URI", uri),
            ("WARC-Concurrent-To", request_id),
            ("Content-Type", "application/http;msgtype=response".into()),
        ];
        if w.body_truncated {
            headers.push(("WARC-Truncated", "length".into()));
        }
        headers.extend(fathom);
        // A payload digest where readers agree on the payload: the entity
        // body of an HTTP(S) response (readers treat the whole block of a
        // `urn:` record as its payload, which the block digest covers).
        let payload = matches!(w.request_kind, WebKind::Fetch).then_some(body);
        write_record(&mut self.out, &headers, &block, payload)?;
        self.counts.responses += 1;
        Ok(())
    }

    fn fathom_fields(&self, run: RunId, w: &WebExchange) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("WARC-Fathom-Run", run.to_string()),
            ("WARC-Fathom-Request", w.request_id.to_string()),
            ("WARC-Fathom-Source", w.source.to_string()),
            ("WARC-Fathom-Attempt", w.attempt.to_string()),
        ];
        if let Some(e) = w.episode_id {
            out.push(("WARC-Fathom-Episode", e.to_string()));
        }
        if let Some(t) = w.turn {
            out.push(("WARC-Fathom-Turn", t.to_string()));
        }
        out
    }

    fn failure(
        &mut self,
        run: RunId,
        at: Timestamp,
        w: &WebExchange,
        uri: &str,
        concurrent: Option<&str>,
    ) -> io::Result<()> {
        let error: String = w
            .error
            .as_deref()
            .unwrap_or("no response")
            .chars()
            .filter(|c| *c != '\r' && *c != '\n')
            .collect();
        let fields = format!("fathom-error: {error}\r\n");
        let mut headers = vec![
            ("WARC-Type", "metadata".to_string()),
            (
                "WARC-Record-ID",
                record_id(&["metadata", &run.to_string(), &w.request_id.to_string()]),
            ),
            ("WARC-Date", date(at)),
            ("WARC-Target-URI", uri.to_string()),
            ("Content-Type", "application/warc-fields".into()),
        ];
        if let Some(c) = concurrent {
            headers.push(("WARC-Concurrent-To", c.to_string()));
        }
        headers.extend(self.fathom_fields(run, w));
        write_record(&mut self.out, &headers, fields.as_bytes(), None)?;
        self.counts.failures += 1;
        Ok(())
    }

    /// What was written so far.
    pub fn counts(&self) -> WarcCounts {
        self.counts
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn write_record(
    out: &mut impl Write,
    headers: &[(&str, String)],
    block: &[u8],
    payload: Option<&[u8]>,
) -> io::Result<()> {
    let mut head = String::from("WARC/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("WARC-Block-Digest: {}\r\n", digest(block)));
    if let Some(p) = payload {
        head.push_str(&format!("WARC-Payload-Digest: {}\r\n", digest(p)));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", block.len()));
    out.write_all(head.as_bytes())?;
    out.write_all(block)?;
    out.write_all(b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "MY======"),
            ("fo", "MZXQ===="),
            ("foo", "MZXW6==="),
            ("foob", "MZXW6YQ="),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI======"),
        ] {
            assert_eq!(base32(input.as_bytes()), expected, "{input}");
        }
        // SHA-256 of "abc" in base32, as Python's hashlib and base64 give it.
        assert_eq!(
            digest(b"abc"),
            "sha256:XJ4BNP4PAHH6UQKBIDPF3LRCEOYAGYNDSYLXVHFUCD7WD4QACWWQ===="
        );
    }

    #[test]
    fn record_ids_are_stable_uuids_and_dates_are_microseconds() {
        let a = record_id(&["request", "r-1", "w-7"]);
        assert_eq!(a, record_id(&["request", "r-1", "w-7"]));
        assert_ne!(a, record_id(&["response", "r-1", "w-7"]));
        assert!(
            a.starts_with("<urn:uuid:") && a.len() == "<urn:uuid:>".len() + 36,
            "{a}"
        );
        assert_eq!(
            date(Timestamp(1_700_000_000_123_456_789)),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
