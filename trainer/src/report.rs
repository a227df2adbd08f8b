//! What an evaluation shows, with its uncertainty: per-episode scores,
//! means with 95% bootstrap intervals, and the *shortcut-free* subset.
//!
//! Intervals resample **questions** (a cluster bootstrap): the samples of
//! one question are not independent of each other, so resampling episodes
//! would give intervals too narrow. The resampling is seeded, so a report
//! is reproducible.
//!
//! A question is shortcut-free when no word of any of its accepted answers
//! appears in the question (DeepResearcher's normalisation): a reply that
//! copies a question word ("Who founded Vaindt Industries?" answered with
//! "Vaindt") cannot score there without finding the answer.

use std::collections::HashSet;

use fathom_core::SeededRng;
use fathom_core::reward::deepresearcher::preprocess;

use crate::harness::Question;

/// Resamples of a bootstrap interval.
pub const RESAMPLES: usize = 2000;

/// One evaluated episode.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EpisodeScore {
    /// Index of its question in the evaluated set.
    pub question: usize,
    /// Which sample of the question (0 when each is asked once).
    pub sample: u32,
    /// Training reward (−1 for a format failure).
    pub reward: f64,
    /// F1, a format failure scoring 0.
    pub f1: f64,
    /// Exact match.
    pub em: f64,
    /// Whether every turn was well formed and an answer given.
    pub well_formed: bool,
    /// Tool calls made.
    pub tool_calls: u32,
    /// Whether its question is shortcut-free.
    pub shortcut_free: bool,
}

/// Whether no word of any ground truth appears in the question.
pub fn shortcut_free(question: &Question) -> bool {
    let words = |text: &str| -> HashSet<String> {
        preprocess(&text.to_lowercase())
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let asked = words(&question.text);
    question.ground_truths.iter().all(|t| words(t).is_disjoint(&asked))
}

/// A mean and its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    /// The mean over episodes.
    pub mean: f64,
    /// 2.5th percentile of the resampled means.
    pub lo: f64,
    /// 97.5th percentile.
    pub hi: f64,
}

impl Interval {
    /// Whether the two intervals share no point.
    pub fn disjoint(&self, other: &Interval) -> bool {
        self.hi < other.lo || other.hi < self.lo
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} [{:.3}, {:.3}]", self.mean, self.lo, self.hi)
    }
}

/// The mean of `metric` over `episodes` and its 95% interval, resampling
/// questions `RESAMPLES` times from `seed`.
pub fn bootstrap(episodes: &[EpisodeScore], metric: impl Fn(&EpisodeScore) -> f64, seed: u64) -> Interval {
    if episodes.is_empty() {
        return Interval {
            mean: 0.0,
            lo: 0.0,
            hi: 0.0,
        };
    }
    // Per question: the sum of the metric and the episode count.
    let mut questions: Vec<usize> = episodes.iter().map(|e| e.question).collect();
    questions.sort_unstable();
    questions.dedup();
    let sums: Vec<(f64, f64)> = questions
        .iter()
        .map(|q| {
            episodes
                .iter()
                .filter(|e| e.question == *q)
                .fold((0.0, 0.0), |(s, n), e| (s + metric(e), n + 1.0))
        })
        .collect();
    let total = sums.iter().fold((0.0, 0.0), |(s, n), x| (s + x.0, n + x.1));
    let mean = total.0 / total.1;
    let mut rng = SeededRng::new(seed);
    let k = sums.len() as u64;
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let (mut s, mut n) = (0.0, 0.0);
            for _ in 0..k {
                let x = sums[rng.below(k) as usize];
                s += x.0;
                n += x.1;
            }
            s / n
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |p: f64| means[((p * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    Interval {
        mean,
        lo: at(0.025),
        hi: at(0.975),
    }
}

/// The five figures of a set of episodes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Figures {
    /// Questions.
    pub questions: usize,
    /// Episodes.
    pub episodes: usize,
    /// Mean reward.
    pub reward: Interval,
    /// Mean F1.
    pub f1: Interval,
    /// Mean EM.
    pub em: Interval,
    /// Share of well-formed episodes.
    pub well_formed: Interval,
    /// Tool calls per episode.
    pub tool_calls: Interval,
}

impl Figures {
    /// The figures of `episodes`, intervals seeded by `seed`.
    pub fn of(episodes: &[EpisodeScore], seed: u64) -> Figures {
        let mut questions: Vec<usize> = episodes.iter().map(|e| e.question).collect();
        questions.sort_unstable();
        questions.dedup();
        Figures {
            questions: questions.len(),
            episodes: episodes.len(),
            reward: bootstrap(episodes, |e| e.reward, fathom_core::derive_seed(seed, "reward", 0)),
            f1: bootstrap(episodes, |e| e.f1, fathom_core::derive_seed(seed, "f1", 0)),
            em: bootstrap(episodes, |e| e.em, fathom_core::derive_seed(seed, "em", 0)),
            well_formed: bootstrap(
                episodes,
                |e| f64::from(u8::from(e.well_formed)),
                fathom_core::derive_seed(seed, "well-formed", 0),
            ),
            tool_calls: bootstrap(
                episodes,
                |e| f64::from(e.tool_calls),
                fathom_core::derive_seed(seed, "tool-calls", 0),
            ),
        }
    }
}

/// The figures of an evaluation over all its questions and over the
/// shortcut-free ones.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Report {
    /// Every question.
    pub all: Figures,
    /// The shortcut-free questions only.
    pub shortcut_free: Figures,
}

impl Report {
    /// The report of `episodes`.
    pub fn of(episodes: &[EpisodeScore], seed: u64) -> Report {
        let free: Vec<EpisodeScore> = episodes.iter().copied().filter(|e| e.shortcut_free).collect();
        Report {
            all: Figures::of(episodes, seed),
            shortcut_free: Figures::of(&free, fathom_core::derive_seed(seed, "shortcut-free", 0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(text: &str, truths: &[&str]) -> Question {
        Question {
            id: fathom_core::QuestionId("q".into()),
            data_source: "t".into(),
            text: text.into(),
            ground_truths: truths.iter().map(|t| t.to_string()).collect(),
            hops: Some(1),
        }
    }

    #[test]
    fn shortcut_free_questions_share_no_word_with_any_answer() {
        assert!(!shortcut_free(&question(
            "Who founded Vaindt Industries?",
            &["Gale Vaindt"]
        )));
        assert!(shortcut_free(&question("Who founded Zest Mobile?", &["Ada Lind"])));
        assert!(shortcut_free(&question("In which year was Ada Lind born?", &["1980"])));
        // Any alias that overlaps makes it a shortcut; case and punctuation do not hide one.
        assert!(!shortcut_free(&question("Who founded Zest?", &["Ada Lind", "ZEST."])));
    }

    fn episode(question: usize, f1: f64) -> EpisodeScore {
        EpisodeScore {
            question,
            sample: 0,
            reward: f1,
            f1,
            em: 0.0,
            well_formed: true,
            tool_calls: 1,
            shortcut_free: true,
        }
    }

    #[test]
    fn bootstrap_intervals_hold_the_mean_and_narrow_with_more_questions() {
        let few: Vec<EpisodeScore> = (0..8).map(|q| episode(q, if q % 2 == 0 { 1.0 } else { 0.0 })).collect();
        let many: Vec<EpisodeScore> = (0..256)
            .map(|q| episode(q, if q % 2 == 0 { 1.0 } else { 0.0 }))
            .collect();
        let a = bootstrap(&few, |e| e.f1, 1);
        let b = bootstrap(&many, |e| e.f1, 1);
        assert_eq!((a.mean, b.mean), (0.5, 0.5));
        assert!(a.lo < 0.5 && a.hi > 0.5, "{a}");
        assert!(b.hi - b.lo < a.hi - a.lo, "{a} vs {b}");
        // Samples of one question move together: four samples of each of 8
        // questions give the interval of 8 questions, not of 32 episodes.
        let clustered: Vec<EpisodeScore> = (0..32)
            .map(|i| episode(i / 4, if (i / 4) % 2 == 0 { 1.0 } else { 0.0 }))
            .collect();
        let c = bootstrap(&clustered, |e| e.f1, 1);
        assert!((c.hi - c.lo) > 0.8 * (a.hi - a.lo), "{c} vs {a}");
        // Reproducible, and a constant has a point interval.
        assert_eq!(bootstrap(&few, |e| e.f1, 1), a);
        let flat = bootstrap(&few, |_| 0.25, 3);
        assert_eq!((flat.lo, flat.hi), (0.25, 0.25));
        assert!(!a.disjoint(&b));
        assert!(flat.disjoint(&Interval {
            mean: 0.9,
            lo: 0.8,
            hi: 1.0
        }));
    }
}
