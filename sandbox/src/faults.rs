//! Fault injection: the noise of the real web, at configured rates.
//!
//! A spec is a comma-separated list of `KIND=RATE[:PARAM]`, or a single
//! number that spreads that total rate evenly over every kind:
//!
//! ```text
//! latency=0.1:300ms,404=0.05,429=0.05:2s,500=0.05,truncate=0.05,stall=0.02:30s,non_utf8=0.02,huge=0.01:4mb
//! 0.1
//! ```
//!
//! Which request gets which fault is drawn from a generator seeded by the
//! sandbox seed and the request's arrival number, so a sequential client
//! sees the same faults on every run.

use std::time::Duration;

use fathom_core::{SeededRng, derive_seed};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer correctly, but late.
    Latency(Duration),
    /// 404 Not Found.
    NotFound,
    /// 429 Too Many Requests with a `Retry-After` in seconds.
    TooManyRequests(Duration),
    /// 500 Internal Server Error.
    ServerError,
    /// The body stops halfway and the connection is cut.
    Truncated,
    /// No answer for this long (past any sane client timeout).
    Stall(Duration),
    /// The body carries bytes that are not UTF-8, though declared UTF-8.
    NonUtf8,
    /// The page is padded to this many bytes.
    Huge(usize),
}

/// Rates per kind, each in `0..=1`; their sum must not exceed 1.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultSpec {
    /// `(rate, fault)` pairs, checked in order.
    pub faults: Vec<(f64, Fault)>,
}

/// A spec that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad fault spec '{spec}': {problem}. Use KIND=RATE[:PARAM],… with kinds latency, 404, 429, 500, truncate, stall, non_utf8, huge (for example 'latency=0.1:300ms,500=0.05'), or one total rate such as 0.1"
)]
pub struct FaultSpecError {
    /// The spec given.
    pub spec: String,
    /// What is wrong with it.
    pub problem: String,
}

fn duration(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else if let Some(s) = text.strip_suffix('s') {
        s.parse::<f64>().ok().map(Duration::from_secs_f64)
    } else {
        None
    }
}

fn size(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    if let Some(mb) = lower.strip_suffix("mb") {
        mb.parse::<usize>().ok().map(|n| n << 20)
    } else if let Some(kb) = lower.strip_suffix("kb") {
        kb.parse::<usize>().ok().map(|n| n << 10)
    } else {
        lower.parse().ok()
    }
}

const DEFAULT_LATENCY: Duration = Duration::from_millis(300);
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
const DEFAULT_STALL: Duration = Duration::from_secs(60);
const DEFAULT_HUGE: usize = 4 << 20;

impl FaultSpec {
    /// No faults.
    pub fn none() -> FaultSpec {
        FaultSpec::default()
    }

    /// Parses a spec (see the module docs).
    pub fn parse(spec: &str) -> Result<FaultSpec, FaultSpecError> {
        let err = |problem: String| FaultSpecError {
            spec: spec.to_string(),
            problem,
        };
        let spec_t = spec.trim();
        if spec_t.is_empty() || spec_t == "none" {
            return Ok(FaultSpec::none());
        }
        if let Ok(total) = spec_t.parse::<f64>() {
            if !(0.0..=1.0).contains(&total) {
                return Err(err(format!("total rate {total} is not between 0 and 1")));
            }
            let kinds = [
                Fault::Latency(DEFAULT_LATENCY),
                Fault::NotFound,
                Fault::TooManyRequests(DEFAULT_RETRY_AFTER),
                Fault::ServerError,
                Fault::Truncated,
                Fault::Stall(DEFAULT_STALL),
                Fault::NonUtf8,
                Fault::Huge(DEFAULT_HUGE),
            ];
            let each = total / kinds.len() as f64;
            return Ok(FaultSpec {
                faults: kinds.into_iter().map(|f| (each, f)).collect(),
            });
        }
        let mut faults = Vec::new();
        for item in spec_t.split(',') {
            let (kind, rest) = item
                .split_once('=')
                .ok_or_else(|| err(format!("'{item}' has no '='")))?;
            let (rate, param) = match rest.split_once(':') {
                Some((r, p)) => (r, Some(p)),
                None => (rest, None),
            };
            let rate: f64 = rate
                .parse()
                .map_err(|_| err(format!("rate '{rate}' of {kind} is not a number")))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(err(format!("rate {rate} of {kind} is not between 0 and 1")));
            }
            let bad_param = || {
                err(format!(
                    "parameter '{}' of {kind} is not understood",
                    param.unwrap_or("")
                ))
            };
            let fault = match kind.trim() {
                "latency" => Fault::Latency(param.map_or(Some(DEFAULT_LATENCY), duration).ok_or_else(bad_param)?),
                "404" => Fault::NotFound,
                "429" => Fault::TooManyRequests(
                    param
                        .map_or(Some(DEFAULT_RETRY_AFTER), duration)
                        .ok_or_else(bad_param)?,
                ),
                "500" => Fault::ServerError,
                "truncate" => Fault::Truncated,
                "stall" => Fault::Stall(param.map_or(Some(DEFAULT_STALL), duration).ok_or_else(bad_param)?),
                "non_utf8" => Fault::NonUtf8,
                "huge" => Fault::Huge(param.map_or(Some(DEFAULT_HUGE), size).ok_or_else(bad_param)?),
                other => return Err(err(format!("unknown fault kind '{other}'"))),
            };
            faults.push((rate, fault));
        }
        let total: f64 = faults.iter().map(|(r, _)| r).sum();
        if total > 1.0 + 1e-9 {
            return Err(err(format!("rates add up to {total}, more than 1")));
        }
        Ok(FaultSpec { faults })
    }

    /// The fault (if any) for the `n`-th request.
    pub fn draw(&self, seed: u64, n: u64) -> Option<Fault> {
        if self.faults.is_empty() {
            return None;
        }
        let x = SeededRng::new(derive_seed(seed, "sandbox-fault", n)).next_f64();
        let mut acc = 0.0;
        for (rate, fault) in &self.faults {
            acc += rate;
            if x < acc {
                return Some(*fault);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let s = FaultSpec::parse("latency=0.1:250ms,404=0.05,429=0.05:2s,huge=0.01:1mb").unwrap();
        assert_eq!(
            s.faults,
            vec![
                (0.1, Fault::Latency(Duration::from_millis(250))),
                (0.05, Fault::NotFound),
                (0.05, Fault::TooManyRequests(Duration::from_secs(2))),
                (0.01, Fault::Huge(1 << 20)),
            ]
        );
        assert_eq!(FaultSpec::parse("0.16").unwrap().faults.len(), 8);
        assert_eq!(FaultSpec::parse("none").unwrap(), FaultSpec::none());
        for bad in [
            "latency",
            "latency=x",
            "teapot=0.1",
            "404=1.5",
            "500=0.6,404=0.6",
            "stall=0.1:forever",
        ] {
            let e = FaultSpec::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("bad fault spec '{bad}'")), "{e}");
        }
    }

    #[test]
    fn draws_are_deterministic_and_match_the_rates() {
        let s = FaultSpec::parse("404=0.1,500=0.1").unwrap();
        let draws: Vec<_> = (0..10_000).map(|n| s.draw(9, n)).collect();
        assert_eq!(draws, (0..10_000).map(|n| s.draw(9, n)).collect::<Vec<_>>());
        let n404 = draws.iter().filter(|d| **d == Some(Fault::NotFound)).count();
        let n500 = draws.iter().filter(|d| **d == Some(Fault::ServerError)).count();
        assert!(
            (850..1150).contains(&n404) && (850..1150).contains(&n500),
            "{n404} {n500}"
        );
        assert_eq!(FaultSpec::none().draw(9, 1), None);
    }
}
