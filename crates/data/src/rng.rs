//! Deterministic randomness: the same seed gives the same shuffles and demo data on every machine.

/// A tiny deterministic generator (SplitMix64), so demo data is identical on every machine.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `ids` in a random order fixed by `seed` (Fisher–Yates). Shuffling happens on sample ids before
/// loading, so the order never depends on which decoder finishes first.
pub fn shuffled(ids: &[usize], seed: u64) -> Vec<usize> {
    let mut order = ids.to_vec();
    let mut rng = SplitMix64::new(seed);
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_fixed_by_the_seed() {
        let ids: Vec<usize> = (0..50).collect();
        let first = shuffled(&ids, 3);
        assert_eq!(first, shuffled(&ids, 3));
        assert_ne!(first, shuffled(&ids, 4));
        assert_ne!(first, ids);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
    }
}
