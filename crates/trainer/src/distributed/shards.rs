//! Which samples of an epoch each rank trains. Every rank computes the same epoch order (same
//! seed); from where the pass starts, the order is cut into accumulation groups of
//! `batch_size × accumulate_grad_batches × world size` positions, and within a group rank `r`
//! takes every `size`-th position from `r` on. A full group thus gives each rank exactly its
//! micro-batches; a short last group is spread so that ranks differ by at most one sample (a
//! rank may have none), and its gradients still average over exactly the group's samples.

use std::ops::Range;

/// One rank's share of an epoch's training pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupShards {
    /// First position of the pass in the epoch's order (0, or where a resumed run stopped).
    start: usize,
    /// Samples in the epoch's order.
    end: usize,
    /// Positions per accumulation group over all ranks.
    group_samples: usize,
    rank: usize,
    size: usize,
}

impl GroupShards {
    /// Rank `rank` of `size`, each training `per_rank_group` samples per accumulation group,
    /// over positions `start..epoch_len`.
    pub(crate) fn new(
        epoch_len: usize,
        start: usize,
        per_rank_group: usize,
        rank: usize,
        size: usize,
    ) -> Self {
        assert!(rank < size && per_rank_group > 0, "rank {rank} of {size}");
        Self {
            start: start.min(epoch_len),
            end: epoch_len,
            group_samples: per_rank_group * size,
            rank,
            size,
        }
    }

    /// Accumulation groups left in the pass.
    pub(crate) fn groups(&self) -> usize {
        (self.end - self.start).div_ceil(self.group_samples)
    }

    /// The positions of group `group` (all ranks).
    pub(crate) fn group_range(&self, group: usize) -> Range<usize> {
        let first = self.start + group * self.group_samples;
        first..(first + self.group_samples).min(self.end)
    }

    /// The group that holds `position`.
    pub(crate) fn group_of(&self, position: usize) -> usize {
        (position - self.start) / self.group_samples
    }

    /// This rank's positions, group after group, in the order it trains them.
    pub(crate) fn positions(&self) -> Vec<usize> {
        (0..self.groups())
            .flat_map(|group| self.group_range(group).skip(self.rank).step_by(self.size))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::GroupShards;

    fn all_ranks(epoch_len: usize, start: usize, per_rank: usize, size: usize) -> Vec<Vec<usize>> {
        (0..size)
            .map(|rank| GroupShards::new(epoch_len, start, per_rank, rank, size).positions())
            .collect()
    }

    #[test]
    fn one_rank_trains_the_whole_order_from_the_start_position() {
        let shards = GroupShards::new(10, 4, 4, 0, 1);
        assert_eq!(shards.positions(), (4..10).collect::<Vec<_>>());
        assert_eq!(shards.groups(), 2);
        assert_eq!(shards.group_range(1), 8..10);
        assert_eq!(shards.group_of(9), 1);
    }

    #[test]
    fn ranks_cover_every_position_once_and_full_groups_evenly() {
        for (epoch_len, start, per_rank, size) in [(23, 0, 4, 2), (23, 8, 2, 3), (5, 0, 4, 4)] {
            let ranks = all_ranks(epoch_len, start, per_rank, size);
            let mut covered: Vec<usize> = ranks.iter().flatten().copied().collect();
            covered.sort_unstable();
            assert_eq!(covered, (start..epoch_len).collect::<Vec<_>>());
            let shards = GroupShards::new(epoch_len, start, per_rank, 0, size);
            for group in 0..shards.groups() {
                let range = shards.group_range(group);
                let shares: Vec<usize> = ranks
                    .iter()
                    .map(|positions| positions.iter().filter(|p| range.contains(p)).count())
                    .collect();
                let (low, high) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(high - low <= 1, "group {group}: {shares:?}");
                if range.len() == per_rank * size {
                    assert!(shares.iter().all(|&share| share == per_rank), "{shares:?}");
                }
            }
        }
    }

    #[test]
    fn a_rank_may_have_nothing_in_a_short_last_group() {
        // 9 samples, 2 per rank per group, 4 ranks: the last group is position 8 alone.
        let ranks = all_ranks(9, 0, 2, 4);
        assert_eq!(ranks[0], vec![0, 4, 8]);
        assert_eq!(ranks[3], vec![3, 7]);
    }
}
