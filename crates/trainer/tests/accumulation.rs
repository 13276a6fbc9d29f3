//! Gradient accumulation is exact: `batch_size=4` and `batch_size=1 accumulate_grad_batches=4`
//! give the same parameters after 5 optimizer steps (f32, CPU, dropout 0). The keypoint model is
//! used because it has no BatchNorm, whose batch statistics legitimately differ between the two.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use vidtrain_config::{Config, InputType};
use vidtrain_data::demo::{DemoSpec, generate};
use vidtrain_model::ActionModelConfig;
use vidtrain_trainer::{TrainOptions, train};

type B = Flex;

fn dataset() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("accumulation-demo");
    if !out.join("vidtrain.toml").is_file() {
        generate(&DemoSpec {
            out: out.clone(),
            persons: 2,
            frames: 400,
            width: 32,
            height: 32,
            seed: 9,
            front_share: None,
        })
        .unwrap();
    }
    out
}

fn config(batch_size: usize, accumulate: usize, run_dir: &Path) -> Config {
    let mut config = Config::default();
    config.paths.root_path = dataset();
    config.paths.annotation_path = "annotations.json".into();
    config.paths.video_path = "videos".into();
    config.paths.keypoint_path = "keypoints".into();
    config.paths.run_dir = run_dir.to_path_buf();
    config.data.load_rgb = false;
    config.data.load_kpt = true;
    config.data.num_workers = 0;
    config.data.batch_size = batch_size;
    config.model.input_type = InputType::Kpt;
    config.model.transformer_dim = 16;
    config.model.transformer_layers = 1;
    config.model.transformer_heads = 2;
    config.model.transformer_ff_dim = 32;
    config.model.transformer_dropout = 0.0;
    config.train.accumulate_grad_batches = accumulate;
    config.train.k_folds = 2;
    config.train.max_steps = 5;
    config.train.max_epochs = 4;
    config.train.lr = 1e-3;
    config.validate().unwrap();
    config
}

struct Collect(Vec<Vec<f32>>);

impl ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .push(param.val().into_data().to_vec::<f32>().unwrap());
    }
}

fn trained_parameters(config: &Config) -> (Vec<Vec<f32>>, usize) {
    let summary = train(config, &TrainOptions::default()).unwrap();
    let device = Default::default();
    let model = ActionModelConfig::from_config(config)
        .init::<B>(&device)
        .load_file(
            summary.last_checkpoint.clone().unwrap().join("model"),
            &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
            &device,
        )
        .unwrap();
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    (collect.0, summary.steps)
}

#[test]
fn micro_batches_with_accumulation_equal_one_large_batch() {
    let runs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("accumulation-runs");
    let _ = std::fs::remove_dir_all(&runs);
    let (large, large_steps) = trained_parameters(&config(4, 1, &runs));
    let (accumulated, accumulated_steps) = trained_parameters(&config(1, 4, &runs));
    let (initial, _) = {
        let mut config = config(4, 1, &runs);
        config.train.lr = 1e-12; // effectively untrained, to show that training moved the weights
        trained_parameters(&config)
    };
    assert_eq!((large_steps, accumulated_steps), (5, 5));
    // Relative error per parameter tensor, ‖a − b‖ / ‖a‖ (element-wise ratios blow up for
    // weights that sit at zero).
    let norm = |values: &[f32]| {
        values
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mut worst = 0f64;
    let mut moved = 0f64;
    for ((a, b), c) in large.iter().zip(&accumulated).zip(&initial) {
        let difference: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let change: Vec<f32> = a.iter().zip(c).map(|(x, z)| x - z).collect();
        worst = worst.max(norm(&difference) / norm(a).max(1e-12));
        moved = moved.max(norm(&change) / norm(a).max(1e-12));
    }
    println!(
        "largest relative difference {worst:.3e}; training moved weights by up to {moved:.3e}"
    );
    assert!(
        moved > 1e-3,
        "training did not change the parameters ({moved})"
    );
    assert!(worst <= 1e-5, "largest relative difference {worst}");
}
