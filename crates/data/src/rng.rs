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

/// `ids.len()` draws with replacement in which every class present is equally likely and the
/// samples of a class are equally likely (PyTorch's `WeightedRandomSampler` with weights
/// 1 / class count), fixed by `seed`. `class_of` gives a sample id's class.
pub fn class_balanced(ids: &[usize], class_of: impl Fn(usize) -> usize, seed: u64) -> Vec<usize> {
    let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &id in ids {
        by_class.entry(class_of(id)).or_default().push(id);
    }
    let classes: Vec<&Vec<usize>> = by_class.values().collect();
    let mut rng = SplitMix64::new(seed ^ 0xba1a_6ced);
    (0..ids.len())
        .map(|_| {
            let members = classes[rng.below(classes.len() as u64) as usize];
            members[rng.below(members.len() as u64) as usize]
        })
        .collect()
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

    #[test]
    fn balanced_draws_give_each_class_an_equal_share() {
        // 90 samples of class 0, 10 of class 1.
        let ids: Vec<usize> = (0..100).collect();
        let class_of = |id: usize| usize::from(id >= 90);
        let draws = class_balanced(&ids, class_of, 5);
        assert_eq!(draws.len(), 100);
        assert_eq!(draws, class_balanced(&ids, class_of, 5));
        let rare: usize = (0..50)
            .map(|seed| {
                class_balanced(&ids, class_of, seed)
                    .iter()
                    .filter(|&&id| class_of(id) == 1)
                    .count()
            })
            .sum();
        // 5000 draws, half expected from class 1 (10 % under shuffling).
        assert!((2300..2700).contains(&rare), "{rare}");
    }
}
