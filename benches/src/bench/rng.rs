//! The harness's own pseudo-random generator (xoshiro256**, seeded by SplitMix64).
//!
//! A workload's key and operation sequence is a promise: the same `--seed` gives the same
//! sequence on every machine and in every later version of ringbench. Owning the 30 lines of the
//! generator keeps that promise independent of another crate's algorithm or version.

/// xoshiro256** (Blackman and Vigna): fast, small state, good statistical quality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let state = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { state }
    }

    /// The generator of one stream (`stream`: a worker index, or a fixed tag for the load phase)
    /// of a run seeded with `seed`. Streams of one seed are unrelated to each other.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        let mut sm = seed;
        let base = splitmix64(&mut sm);
        Self::new(base ^ stream.wrapping_mul(GOLDEN_GAMMA).rotate_left(17))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (`n` ≥ 1), by Lemire's multiply-shift; the bias is below
    /// `n / 2^64`, far under anything a benchmark can see.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
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
    fn same_seed_same_sequence_and_streams_differ() {
        let a: Vec<u64> = (0..8)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        let mut s0 = Rng::for_stream(7, 0);
        let mut s1 = Rng::for_stream(7, 1);
        assert_ne!(s0.next_u64(), s1.next_u64());
    }

    #[test]
    fn sequence_is_pinned() {
        // The promise of `--seed`: these values (computed independently from the published
        // SplitMix64 and xoshiro256** definitions) must never change.
        let mut rng = Rng::new(1);
        assert_eq!(rng.next_u64(), 0xb3f2_af6d_0fc7_10c5);
        assert_eq!(rng.next_u64(), 0x853b_5596_4736_4cea);
        assert_eq!(rng.next_u64(), 0x92f8_9756_082a_4514);
    }

    #[test]
    fn below_and_floats_stay_in_range() {
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            assert!(rng.below(10) < 10);
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert_eq!(rng.below(1), 0);
        let mut buf = [0u8; 13];
        rng.fill_bytes(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
    }
}
