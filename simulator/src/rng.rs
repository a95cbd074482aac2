//! A small, portable, seedable random generator (xoshiro256++ seeded by splitmix64) and the
//! few distributions the simulator needs.
//!
//! The simulator promises "same flags, same bytes". `rand`'s `SmallRng` is explicitly not
//! portable across platforms or versions, and `rand_distr`'s samplers may change between
//! releases, so everything that decides the shape of a graph or of the activity goes through
//! this file, whose output depends on nothing but the seed.

/// splitmix64 finaliser: a good 64-bit mixing function.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut s = [0u64; 4];
        for w in &mut s {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            *w = mix64(x);
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        Self { s }
    }

    /// An independent stream for (`seed`, `stream`, `index`): used to give every community,
    /// phase and round its own generator so work can be split over threads without changing
    /// the output.
    pub fn derive(seed: u64, stream: u64, index: u64) -> Self {
        Self::new(mix64(
            seed ^ mix64(stream.wrapping_mul(0xA24B_AED4_963E_E407) ^ mix64(index)),
        ))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) (multiply-shift; the bias is below 2^-32 for the sizes used here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [lo, hi].
    #[inline]
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponential with the given mean.
    #[inline]
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    /// Standard normal (Box–Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64(); // (0, 1]
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and shape.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// Number of failures before the first success of a Bernoulli(`p`) trial.
    pub fn geometric(&mut self, p: f64) -> u64 {
        let u = 1.0 - self.f64();
        (u.ln() / (1.0 - p).ln()).floor().max(0.0) as u64
    }

    /// `x` rounded down or up at random so that the expectation is `x`.
    #[inline]
    pub fn stoch_round(&mut self, x: f64) -> u32 {
        let f = x.floor();
        let extra = u32::from(self.f64() < x - f);
        f as u32 + extra
    }
}

/// Walker/Vose alias table: O(1) sampling of an index with probability proportional to a
/// weight. 8 bytes per entry.
#[derive(Debug, Clone)]
pub struct Alias {
    /// Acceptance threshold scaled to 2^32.
    prob: Vec<u32>,
    alias: Vec<u32>,
}

impl Alias {
    /// Builds the table; `weights` must be non-empty with a positive sum.
    pub fn new(weights: &[f32]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let scale = if total > 0.0 { n as f64 / total } else { 0.0 };
        let mut prob = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let mut scaled: Vec<f64> = weights.iter().map(|&w| f64::from(w) * scale).collect();
        let mut small: Vec<u32> = Vec::new();
        let mut large: Vec<u32> = Vec::new();
        for (i, &p) in scaled.iter().enumerate() {
            if p < 1.0 {
                small.push(i as u32);
            } else {
                large.push(i as u32);
            }
        }
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            let ps = scaled[s as usize];
            prob[s as usize] = (ps * 4_294_967_296.0).min(4_294_967_295.0) as u32;
            alias[s as usize] = l;
            scaled[l as usize] -= 1.0 - ps;
            if scaled[l as usize] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left (rounding) is accepted with certainty.
        Self { prob, alias }
    }

    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let r = rng.next_u64();
        let i = ((u128::from(r >> 32) * self.prob.len() as u128) >> 32) as usize;
        if (r as u32) < self.prob[i] || self.prob[i] == u32::MAX {
            i as u32
        } else {
            self.alias[i]
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.prob.capacity() * 4 + self.alias.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::derive(7, 1, 2).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::derive(7, 1, 2).next_u64(),
            Rng::derive(7, 1, 3).next_u64()
        );
        assert_ne!(
            Rng::derive(7, 1, 2).next_u64(),
            Rng::derive(8, 1, 2).next_u64()
        );
    }

    #[test]
    fn distributions_have_their_means() {
        let mut r = Rng::new(3);
        let n = 200_000;
        let e: f64 = (0..n).map(|_| r.exp(10.0)).sum::<f64>() / n as f64;
        assert!((e - 10.0).abs() < 0.2, "{e}");
        let z: f64 = (0..n).map(|_| r.normal()).sum::<f64>() / n as f64;
        assert!(z.abs() < 0.02, "{z}");
        let s: f64 = (0..n).map(|_| f64::from(r.stoch_round(2.3))).sum::<f64>() / n as f64;
        assert!((s - 2.3).abs() < 0.02, "{s}");
        let g: f64 = (0..n).map(|_| r.geometric(0.5) as f64).sum::<f64>() / n as f64;
        assert!((g - 1.0).abs() < 0.03, "{g}");
    }

    #[test]
    fn alias_follows_weights() {
        let w = [1.0f32, 0.0, 3.0, 6.0];
        let a = Alias::new(&w);
        let mut r = Rng::new(1);
        let mut c = [0u32; 4];
        for _ in 0..100_000 {
            c[a.sample(&mut r) as usize] += 1;
        }
        assert_eq!(c[1], 0);
        assert!((f64::from(c[0]) / 1e5 - 0.1).abs() < 0.01);
        assert!((f64::from(c[3]) / 1e5 - 0.6).abs() < 0.01);
    }
}
