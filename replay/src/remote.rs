//! Remote gateway services: the HTTP attempts of a gateway made by other
//! processes (`fathom gateway serve`, on this machine or others), so a
//! rollout's web traffic spreads over many machines.
//!
//! Only the attempt travels: the gateway in the trainer still canonicalises
//! requests, applies its address guard before asking, retries, and records
//! every attempt in its own log, so replay is unchanged. Each episode
//! sticks to one service (its id picks it); when a service does not answer
//! (connection refused or dropped, an error status of its own, a malformed
//! reply) the same attempt goes to the next one, and the failed service is
//! left alone for [`REST`] before it is tried again. A failure to reach a
//! service is never recorded as a web exchange: only the answer of the
//! service that made the attempt is.
//!
//! Page reading travels too: a fetch asks the service to read the page to
//! text ([`crate::gateway::read_page`], the browsing agent's input), which
//! takes the HTML parsing off the trainer's CPU. The text is used only when
//! the service's [`reader_fingerprint`] is the trainer's own (the same
//! reading code), since replay reads the recorded body in the trainer;
//! otherwise the trainer reads the body itself and warns once.
//!
//! Protocol: `POST {base}/v1/attempt`, body = little-endian `u32` length,
//! the [`WireRequest`] as JSON, then the request body; the reply (200) is
//! the same framing of a [`WireExchange`] (with the page's text when asked
//! for) and the response body. With a token, `Authorization: Bearer TOKEN`.
//! `GET {base}/v1/health` answers JSON: `status`, `attempts`, `pages_read`
//! and `reader` (the fingerprint).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fathom_core::{Clock, Timestamp};

use crate::gateway::{WebError, WireExchange, WireRequest, reader_fingerprint};

/// How long a service that failed is skipped.
pub const REST: Duration = Duration::from_secs(5);

/// Frames a JSON header and a body.
pub fn frame<T: serde::Serialize>(head: &T, body: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(head).expect("wire types serialise");
    let mut out = Vec::with_capacity(4 + json.len() + body.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    out
}

/// Splits a frame into its JSON header and body.
pub fn unframe<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, Vec<u8>), String> {
    let len = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")) as usize)
        .ok_or("the frame is shorter than its length prefix")?;
    let json = bytes.get(4..4 + len).ok_or("the frame is shorter than its header")?;
    let head = serde_json::from_slice(json).map_err(|e| format!("the frame's header does not parse: {e}"))?;
    Ok((head, bytes[4 + len..].to_vec()))
}

/// The remote gateway services a gateway sends its attempts to.
pub struct Remotes {
    bases: Vec<String>,
    token: Option<String>,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    /// Per service: skipped until this time after a failure.
    resting: Mutex<Vec<Option<Timestamp>>>,
    /// Per service: warned that it reads pages with another reader.
    other_reader: Mutex<Vec<bool>>,
}

impl std::fmt::Debug for Remotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remotes")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl Remotes {
    /// Services at `urls` (`http://host:port`), with an optional token.
    pub fn new(urls: &[String], token: Option<String>, clock: Arc<dyn Clock>) -> Result<Remotes, WebError> {
        if urls.is_empty() {
            return Err(WebError::Transport("no gateway URL given".into()));
        }
        let mut bases = Vec::new();
        for u in urls {
            let parsed = url::Url::parse(u.trim()).map_err(|e| {
                WebError::Transport(format!(
                    "gateway URL '{u}' does not parse ({e}); write http://host:port as 'fathom gateway serve' prints it"
                ))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(WebError::Transport(format!(
                    "gateway URL '{u}' must be http:// or https://"
                )));
            }
            bases.push(parsed.as_str().trim_end_matches('/').to_string());
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| WebError::Transport(e.to_string()))?;
        Ok(Remotes {
            resting: Mutex::new(vec![None; bases.len()]),
            other_reader: Mutex::new(vec![false; bases.len()]),
            bases,
            token,
            client,
            clock,
        })
    }

    /// The services, in order.
    pub fn urls(&self) -> &[String] {
        &self.bases
    }

    /// Sends one attempt to the service `sticky` picks, or the next ones
    /// when it fails; `Err` when none answered.
    pub(crate) async fn send(&self, sticky: u64, request: &WireRequest) -> Result<WireExchange, String> {
        let n = self.bases.len();
        let first = (sticky % n as u64) as usize;
        let now = self.clock.now();
        let order: Vec<usize> = {
            let resting = self.resting.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
            let awake: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| resting[i].is_none_or(|until| now >= until))
                .collect();
            // When every service rests, try them all anyway.
            if awake.is_empty() { all } else { awake }
        };
        let body = frame(request, &request.body);
        // The service's own timeout, plus room for the reply.
        let timeout = Duration::from_millis(request.timeout_ms) + Duration::from_secs(10);
        let mut failures = Vec::new();
        for i in order {
            let base = &self.bases[i];
            match self.ask(base, body.clone(), timeout).await {
                Ok(mut ex) => {
                    self.resting.lock().unwrap_or_else(|e| e.into_inner())[i] = None;
                    if let Some(page) = &ex.page
                        && page.reader != reader_fingerprint()
                    {
                        // Another reader would give other text than replay
                        // will: read the body here instead.
                        let mut warned = self.other_reader.lock().unwrap_or_else(|e| e.into_inner());
                        if !warned[i] {
                            warned[i] = true;
                            eprintln!(
                                "warning: tool gateway {base} reads pages differently (reader {}, here {}: another fathom version?); its pages are read here",
                                page.reader,
                                reader_fingerprint()
                            );
                        }
                        ex.page = None;
                    }
                    return Ok(ex);
                }
                Err(why) => {
                    let until = Timestamp(self.clock.now().0.saturating_add(REST.as_nanos() as i64));
                    let mut resting = self.resting.lock().unwrap_or_else(|e| e.into_inner());
                    if resting[i].is_none() {
                        eprintln!("warning: tool gateway {base} failed ({why}); its requests go to the next gateway");
                    }
                    resting[i] = Some(until);
                    failures.push(format!("{base}: {why}"));
                }
            }
        }
        Err(format!("no tool gateway answered ({})", failures.join("; ")))
    }

    async fn ask(&self, base: &str, body: Vec<u8>, timeout: Duration) -> Result<WireExchange, String> {
        let mut rb = self
            .client
            .post(format!("{base}/v1/attempt"))
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        let (mut ex, body): (WireExchange, Vec<u8>) = unframe(&bytes)?;
        ex.body = body;
        Ok(ex)
    }
}
