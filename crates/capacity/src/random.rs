//! A seeded random number generator, passed in explicitly wherever the capacity crate draws
//! (the workload generator, the simulator's realistic mode): SplitMix64, which is small, fast,
//! and gives the same stream for the same seed on every machine. There is no global generator.

/// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit state advanced by a constant, then mixed.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng { state: seed }
    }

    /// An independent stream derived from this seed and a label, so that changing one
    /// component's draws does not reshuffle another's.
    pub fn stream(seed: u64, label: &str) -> SeededRng {
        let mut mixed = seed;
        for byte in label.bytes() {
            mixed = mix(mixed ^ u64::from(byte));
        }
        SeededRng::new(mixed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high] (integers).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }

    /// Exponential with the given rate (events per unit).
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }

    /// Standard normal, by Box-Muller.
    pub fn normal(&mut self) -> f64 {
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.unit()).cos()
    }

    /// Lognormal with the given median and shape σ.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// The number of failures before the first success, with the given mean.
    pub fn geometric(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        let success = 1.0 / (1.0 + mean);
        ((1.0 - self.unit()).ln() / (1.0 - success).ln()).floor() as u64
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_streams_differ() {
        let mut first = SeededRng::new(7);
        let mut second = SeededRng::new(7);
        let draws: Vec<u64> = (0..5).map(|_| first.next_u64()).collect();
        assert_eq!(draws, (0..5).map(|_| second.next_u64()).collect::<Vec<_>>());
        let mut other = SeededRng::stream(7, "bursts");
        assert_ne!(draws[0], other.next_u64());
    }

    #[test]
    fn draws_have_the_asked_for_means() {
        let mut rng = SeededRng::new(42);
        let count = 200_000;
        let unit: f64 = (0..count).map(|_| rng.unit()).sum::<f64>() / count as f64;
        assert!((unit - 0.5).abs() < 0.01, "{unit}");
        let exponential: f64 = (0..count).map(|_| rng.exponential(2.0)).sum::<f64>() / count as f64;
        assert!((exponential - 0.5).abs() < 0.01, "{exponential}");
        let geometric = (0..count).map(|_| rng.geometric(4.0)).sum::<u64>() as f64 / count as f64;
        assert!((geometric - 4.0).abs() < 0.1, "{geometric}");
        let mut logs: Vec<f64> = (0..count).map(|_| rng.lognormal(14.0, 0.5)).collect();
        logs.sort_by(f64::total_cmp);
        let median = logs[count / 2];
        assert!((median - 14.0).abs() < 0.3, "{median}");
        assert!((0..1000).map(|_| rng.between(3, 5)).all(|value| (3..=5).contains(&value)));
    }
}
