//! The loading bound holds for the whole process tree: vidtrain's own RSS grows by at most
//! `(prefetch_depth + num_workers + 1)` batches, and with the ffmpeg decoders (separate processes,
//! at most one per worker at a time, a sample's three views each) by at most that plus
//! `num_workers × decoder_rss_bytes(3)`.
//! Measured through `bench_pipeline`, which is what `vidtrain data bench` reports.

use std::path::Path;

use vidtrain_memutil::plan::decoder_rss_bytes;
use vidtrain_trainer::bench_pipeline;

#[test]
fn vidtrain_and_its_decoders_stay_within_the_loading_bound() {
    let demo = vidtrain_testkit::small_demo(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-memory-demo"),
    );
    let mut config = vidtrain_testkit::demo_config(&demo);
    config.data.img_size = 224;
    config.data.num_workers = 2;
    config.data.prefetch_depth = 2;
    config.data.batch_size = 4;

    let bench = bench_pipeline(&config, usize::MAX, false).unwrap();
    assert!(bench.samples > 0);
    let baseline = bench.baseline_rss_bytes.unwrap();
    let own = bench.peak_rss_bytes.unwrap();
    let tree = bench.peak_process_tree_rss_bytes.unwrap();
    let bound = (2 + 2 + 1) * bench.batch_bytes as u64 + (32 << 20);
    let tree_bound = bound + 2 * decoder_rss_bytes(config.data.views_per_decoder);
    eprintln!(
        "own growth {} MiB, process tree growth {} MiB (bounds {} / {} MiB)",
        own.saturating_sub(baseline) >> 20,
        tree.saturating_sub(baseline) >> 20,
        bound >> 20,
        tree_bound >> 20
    );
    assert!(own.saturating_sub(baseline) <= bound);
    assert!(tree.saturating_sub(baseline) <= tree_bound);
    // The decoders are really in the tree figure: each holds at least its code and libraries.
    assert!(
        tree >= own + (10 << 20),
        "own peak {own}, tree peak {tree}: decoders missing from the tree"
    );
}
