//! Injected time.
//!
//! Nothing in fathom reads the ambient clock except [`SystemClock`]: every
//! other component takes a [`Clock`], so tests drive time with a
//! [`ManualClock`] and a replayed episode sees the timestamps it saw the first
//! time. clippy's `disallowed-methods` (see `clippy.toml`) forbids
//! `SystemTime::now` and `Instant::now` everywhere else.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Nanoseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Whole milliseconds since the epoch (what Parquet and SQL use).
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// Builds a timestamp from seconds and nanoseconds since the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs * 1_000_000_000)
    }

    /// Nanoseconds elapsed from `earlier` to `self`, zero if time went backwards.
    pub fn nanos_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with nanoseconds, for example `2026-11-21T23:18:54.000000001Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_rfc3339(&text).ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not an RFC 3339 UTC time")))
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses the form [`Timestamp`]'s `Display` writes (fraction optional).
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let y: i64 = date_parts.next()?.parse().ok()?;
    let m: u32 = date_parts.next()?.parse().ok()?;
    let d: u32 = date_parts.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut time_parts = hms.splitn(3, ':');
    let hh: i64 = time_parts.next()?.parse().ok()?;
    let mm: i64 = time_parts.next()?.parse().ok()?;
    let ss: i64 = time_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let nanos: i64 = if frac.is_empty() {
        0
    } else if frac.len() <= 9 && frac.bytes().all(|b| b.is_ascii_digit()) {
        frac.parse::<i64>().ok()? * 10_i64.pow(9 - frac.len() as u32)
    } else {
        return None;
    };
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(Timestamp(secs * 1_000_000_000 + nanos))
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The real wall clock. The only place in fathom that reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // This is the one sanctioned reading.
    fn now(&self) -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Moves the clock forward by `nanos`.
    pub fn advance(&self, nanos: i64) {
        self.nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.nanos.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.nanos.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_rfc3339_and_parse_back() {
        let t = Timestamp(1_795_303_134_000_000_001);
        let text = t.to_string();
        assert_eq!(text, "2026-11-21T23:18:54.000000001Z");
        assert_eq!(parse_rfc3339(&text), Some(t));
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            parse_rfc3339("2000-02-29T12:00:00Z"),
            Some(Timestamp::from_secs(951_825_600))
        );
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp(5));
        let other = clock.clone();
        assert_eq!(clock.now(), Timestamp(5));
        other.advance(10);
        assert_eq!(clock.now(), Timestamp(15));
        clock.set(Timestamp(1));
        assert_eq!(other.now(), Timestamp(1));
        assert_eq!(Timestamp(15).nanos_since(Timestamp(5)), 10);
        assert_eq!(Timestamp(5).nanos_since(Timestamp(15)), 0);
    }

    #[test]
    fn the_system_clock_is_after_2024() {
        assert!(SystemClock.now() > Timestamp::from_secs(1_704_067_200));
    }
}
