//! Zipfian ranks: rank `k` of `1..=n` is drawn with probability `k^-θ / H(n, θ)`.
//!
//! The sampler is rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to
//! generate variates from monotone discrete distributions", 1996), the method of Apache Commons
//! RNG and `rand_distr::Zipf`: constant time per sample, no table, exact for every `θ > 0`.
//!
//! Why not YCSB's `ZipfianGenerator` (Gray et al., "Quickly generating billion-record synthetic
//! databases", 1994)? Its closed form is exact for the two hottest ranks only: at n = 100,000 and
//! θ = 0.99 it draws rank 3 19 % too often, rank 5 9 % too often. Rejection-inversion gives the
//! distribution the workload names, so hit ratios and hot-key load can be predicted from θ. The
//! generalised harmonic number [`zeta`] is still computed (once) for [`Zipfian::probability`].
//!
//! The one zipfian generator of the workspace: ringbench's workloads, the micro-benchmarks and
//! the hot-key tests all draw from it. `rand_distr::Zipf` implements the same method, but the
//! version in the lock file is built on another major version of `rand` than the workspace's.

/// A Zipfian distribution over ranks `0..n` (rank 0 is the hottest key).
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

/// The generalised harmonic number `H(n, θ) = Σ_{k=1..n} k^-θ`: the normaliser of the
/// distribution. Linear in `n` (about 10 ns per term).
pub fn zeta(n: u64, theta: f64) -> f64 {
    // Summed from the smallest terms up, for accuracy.
    (1..=n).rev().map(|k| (k as f64).powf(-theta)).sum()
}

impl Zipfian {
    /// A distribution over `n` ranks with exponent `theta` (YCSB's default is 0.99; larger is more
    /// skewed).
    ///
    /// # Errors
    ///
    /// A message when `n` is 0 or `theta` is not a positive finite number.
    pub fn new(n: u64, theta: f64) -> Result<Self, String> {
        if n == 0 {
            return Err("a zipfian distribution needs at least one key".to_owned());
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(format!(
                "zipfian theta must be a positive number, got {theta}"
            ));
        }
        let mut zipf = Self {
            n,
            theta,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(n as f64 + 0.5);
        zipf.s = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        Ok(zipf)
    }

    /// Number of ranks.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The exponent θ.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// The exact probability of `rank` (0-based), given `H(n, θ)` from [`zeta`].
    pub fn probability(&self, rank: u64, zeta_n: f64) -> f64 {
        if rank >= self.n {
            return 0.0;
        }
        ((rank + 1) as f64).powf(-self.theta) / zeta_n
    }

    /// Draws a rank in `0..n`, calling `uniform` (uniform floats in `[0, 1)`) once, or more
    /// rarely a few times.
    pub fn sample(&self, mut uniform: impl FnMut() -> f64) -> u64 {
        if self.n == 1 {
            return 0;
        }
        // Bounded: each round accepts with probability well above 1/2, so 64 rounds failing
        // has probability below 2^-64; the fallback keeps the function total.
        for _ in 0..64 {
            let u = self.h_integral_n + uniform() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n as f64);
            if k - x <= self.s || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64 - 1;
            }
        }
        0
    }

    /// `h(x) = x^-θ`.
    fn h(&self, x: f64) -> f64 {
        (-self.theta * x.ln()).exp()
    }

    /// `H(x) = ∫ h`, written to stay accurate as θ → 1 (where it becomes `ln x`).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.theta) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.theta)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;

    /// Draws `samples` ranks and checks the first `head` ranks' frequencies against the exact
    /// probabilities, with a chi-square statistic over those ranks plus one bucket for the rest.
    fn check_distribution(n: u64, theta: f64, samples: u64, head: usize) {
        let zipf = Zipfian::new(n, theta).unwrap();
        let zeta_n = zeta(n, theta);
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = vec![0u64; head + 1];
        for _ in 0..samples {
            let rank = zipf.sample(|| rng.random::<f64>());
            assert!(rank < n);
            let bucket = usize::try_from(rank).unwrap_or(head).min(head);
            counts[bucket] += 1;
        }
        let mut chi_square = 0.0;
        let mut head_mass = 0.0;
        for (rank, &count) in counts.iter().take(head).enumerate() {
            let p = zipf.probability(rank as u64, zeta_n);
            head_mass += p;
            let expected = p * samples as f64;
            // Ranks 1..10 one by one: within 4.5 standard deviations of the binomial count
            // (at θ = 0.99 and 1M samples, that is within 1.3 % for rank 1 and 3 % for rank 10).
            if rank < 10 {
                let sigma = (expected * (1.0 - p)).sqrt();
                let z = (count as f64 - expected).abs() / sigma;
                assert!(
                    z < 4.5,
                    "n={n} θ={theta}: rank {rank} drawn {count} times, expected {expected:.0} (z = {z:.1})"
                );
            }
            chi_square += (count as f64 - expected).powi(2) / expected;
        }
        let expected_tail = (1.0 - head_mass) * samples as f64;
        chi_square += (counts[head] as f64 - expected_tail).powi(2) / expected_tail;
        // `head` degrees of freedom; the 99.9th percentile of χ²(100) is 149.4.
        assert!(
            chi_square < 149.4,
            "n={n} θ={theta}: chi-square {chi_square:.1} over {head} ranks + tail"
        );
    }

    #[test]
    fn zipfian_099_over_100k_keys_matches_the_exact_distribution() {
        check_distribution(100_000, 0.99, 1_000_000, 100);
    }

    #[test]
    fn zipfian_matches_for_mild_and_steep_exponents() {
        check_distribution(10_000, 0.5, 1_000_000, 100);
        check_distribution(1_000, 1.2, 1_000_000, 100);
    }

    #[test]
    fn probabilities_sum_to_one_and_decrease() {
        let zipf = Zipfian::new(1000, 0.99).unwrap();
        let zeta_n = zeta(1000, 0.99);
        let total: f64 = (0..1000).map(|r| zipf.probability(r, zeta_n)).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert!(zipf.probability(0, zeta_n) > zipf.probability(1, zeta_n));
        assert_eq!(zipf.probability(1000, zeta_n), 0.0);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(Zipfian::new(0, 0.99).is_err());
        assert!(Zipfian::new(10, 0.0).is_err());
        assert!(Zipfian::new(10, f64::NAN).is_err());
        let one = Zipfian::new(1, 0.99).unwrap();
        assert_eq!(one.sample(|| 0.5), 0);
        // Extremes of the uniform input stay in range.
        let zipf = Zipfian::new(50, 0.99).unwrap();
        assert!(zipf.sample(|| 0.0) < 50);
        assert!(zipf.sample(|| 1.0 - f64::EPSILON) < 50);
    }
}
