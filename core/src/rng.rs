//! Seeded, serialisable randomness.
//!
//! fathom never uses an ambient RNG. Every random choice comes from a
//! [`SeededRng`] whose seed is recorded in an event (the run seed in
//! RunStarted, the episode seed in EpisodeStarted), and whose whole state is
//! four `u64`s that a checkpoint can store, so a resumed run draws exactly the
//! numbers the uninterrupted one would have. The generator is xoshiro256**,
//! seeded through SplitMix64; both are fixed here and never change, because a
//! recorded seed must mean the same stream forever.

/// One SplitMix64 step: advances `state` and returns a well-mixed output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a child seed from a parent seed, a label and an index, so that
/// (run seed, "episode", 17) always gives the same episode seed and distinct
/// labels give unrelated streams.
pub fn derive_seed(parent: u64, label: &str, index: u64) -> u64 {
    // FNV-1a over the label: stable, tiny, and good enough to separate labels
    // before SplitMix64 does the real mixing.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    let mut state = parent ^ h.rotate_left(17) ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    splitmix64(&mut state);
    splitmix64(&mut state)
}

/// xoshiro256**: fast, small, statistically strong, and fully determined by
/// its 256-bit state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededRng {
    s: [u64; 4],
}

impl SeededRng {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        SeededRng { s }
    }

    /// Restores a generator from [`SeededRng::state`]. An all-zero state is
    /// the one state xoshiro cannot leave, so it is replaced by `new(0)`.
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] {
            SeededRng::new(0)
        } else {
            SeededRng { s }
        }
    }

    /// The full state, for checkpoints.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[0, n)`, without modulo bias. `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SeededRng::below(0) has no valid result");
        // Lemire's multiply-and-reject method.
        loop {
            let x = self.next_u64();
            let m = u128::from(x) * u128::from(n);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `[lo, hi]`.
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        if lo == 0 && hi == u64::MAX {
            return self.next_u64();
        }
        lo + self.below(hi - lo + 1)
    }

    /// Picks one element of a non-empty slice.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Picks one element of a non-empty slice of `Copy` items, by value.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *self.choose(items)
    }

    /// Shuffles in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_pinned_forever() {
        // A recorded seed must mean the same numbers in every future version.
        let mut rng = SeededRng::new(42);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        expect_test::expect![[r#"
            [
                1546998764402558742,
                6990951692964543102,
                12544586762248559009,
            ]
        "#]]
        .assert_debug_eq(&first);
        assert_eq!(derive_seed(42, "episode", 3), derive_seed(42, "episode", 3));
        assert_ne!(derive_seed(42, "episode", 3), derive_seed(42, "episode", 4));
        assert_ne!(derive_seed(42, "episode", 3), derive_seed(42, "question", 3));
    }

    #[test]
    fn restoring_the_state_continues_the_stream() {
        let mut a = SeededRng::new(7);
        for _ in 0..10 {
            a.next_u64();
        }
        let mut b = SeededRng::from_state(a.state());
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn bounded_draws_stay_in_range_and_cover_it() {
        let mut rng = SeededRng::new(1);
        let mut seen = [0u32; 6];
        for _ in 0..6000 {
            let x = rng.range_inclusive(10, 15);
            assert!((10..=15).contains(&x));
            seen[(x - 10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        let f = rng.next_f64();
        assert!((0.0..1.0).contains(&f));
        let mut v: Vec<u32> = (0..20).collect();
        rng.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
