//! vidtrain's models give PyTorch's logits on PyTorch's weights: torchvision's `r3d_18`, an
//! ST-GCN with mmaction2's layout and names, and the seed transformer of
//! `bench/pytorch_reference.py`, each with random weights and random BatchNorm statistics, loaded
//! through `model.pretrained` and run in evaluation mode in f32 (relative ≤ 1e-4).
//!
//! The fixtures come from `bench/reference_fixtures.py` (PyTorch from PyPI): `cargo xtask ci`
//! makes them and runs these tests with `VIDTRAIN_TORCH_FIXTURES` set; a plain `cargo test`
//! skips them as ignored rather than passing them without a reference.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use vidtrain_config::{Config, ConfigLoader};
use vidtrain_model::{ActionModel, ActionModelConfig};

const WHY_IGNORED: &str = "needs PyTorch fixtures: run through `cargo xtask ci`";

fn fixtures() -> PathBuf {
    PathBuf::from(
        std::env::var_os("VIDTRAIN_TORCH_FIXTURES")
            .unwrap_or_else(|| panic!("VIDTRAIN_TORCH_FIXTURES is not set ({WHY_IGNORED})")),
    )
}

struct Fixture {
    config: Config,
    parameters: usize,
    input_shape: Vec<usize>,
    input: Vec<f32>,
    logits: Vec<f32>,
}

fn read(name: &str) -> Fixture {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let overrides: Vec<String> = json["config"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .chain([
            "train.view=\"single\"".to_string(),
            "model.transformer_dropout=0.1".to_string(),
        ])
        .collect();
    let config = ConfigLoader::new()
        .overrides(overrides)
        .unwrap()
        .load()
        .unwrap();
    let floats = |key: &str| -> Vec<f32> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    Fixture {
        config,
        parameters: json["parameters"].as_u64().unwrap() as usize,
        input_shape: json["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect(),
        input: floats("input"),
        logits: floats("logits"),
    }
}

/// vidtrain's logits for the fixture's input with the weights of `weights`.
fn logits(fixture: &Fixture, weights: &Path) -> (Vec<f32>, usize) {
    let device = Default::default();
    let mut config = fixture.config.clone();
    config.model.pretrained = weights.display().to_string();
    let mut model: ActionModel<Flex> = ActionModelConfig::from_config(&config).init(&device);
    vidtrain_trainer::pretrained::load(&mut model, &config, weights).unwrap();
    let input = TensorData::new(fixture.input.clone(), fixture.input_shape.clone());
    let scores = match fixture.input_shape.len() {
        6 => model.forward(Some(Tensor::from_data(input, &device)), None),
        _ => model.forward(None, Some(Tensor::from_data(input, &device))),
    };
    (
        scores.into_data().to_vec::<f32>().unwrap(),
        trainable(&config),
    )
}

/// Parameters PyTorch counts (`requires_grad`) in the model `config` builds: Burn's count less
/// BatchNorm's running statistics and ST-GCN's fixed adjacency (what an autodiff model tracks).
fn trainable(config: &Config) -> usize {
    type B = burn::backend::Autodiff<Flex>;
    let model: ActionModel<B> = ActionModelConfig::from_config(config).init(&Default::default());
    struct Count(usize);
    impl burn::module::ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.0 += param.val().shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

fn assert_same_logits(name: &str, weights: &str) {
    let fixture = read(name);
    let (got, parameters) = logits(&fixture, &fixtures().join(weights));
    assert_eq!(parameters, fixture.parameters, "{name}: parameter count");
    assert_eq!(got.len(), fixture.logits.len());
    let norm = |values: &[f32]| {
        values
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let difference: Vec<f32> = got
        .iter()
        .zip(&fixture.logits)
        .map(|(a, b)| a - b)
        .collect();
    let relative = norm(&difference) / norm(&fixture.logits);
    assert!(
        relative <= 1e-4,
        "{name} ({weights}): logits differ by {relative:e}\n ours    {got:?}\n pytorch {:?}",
        fixture.logits
    );
}

#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn r3d_18_from_a_torchvision_state_dict_gives_torchvisions_logits() {
    assert_same_logits("r3d_18", "r3d_18.pth");
}

#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn r3d_18_from_safetensors_gives_torchvisions_logits() {
    assert_same_logits("r3d_18", "r3d_18.safetensors");
}

#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn stgcn_from_an_mmaction2_state_dict_gives_the_references_logits() {
    assert_same_logits("stgcn_coco17", "stgcn_coco17.pth");
}

#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn seed_transformer_from_the_pytorch_reference_gives_its_logits() {
    assert_same_logits("transformer", "transformer.pth");
}

/// Fine-tuning on another class count: the classifier starts fresh, everything else loads; a
/// file for another depth fails and names the keys that do not fit.
#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn another_class_count_reinitialises_the_head_and_a_wrong_depth_names_every_misfit() {
    let fixture = read("r3d_18");
    let weights = fixtures().join("r3d_18.pth");
    let device = Default::default();
    let mut config = fixture.config.clone();
    config.model.model_class_num = 4;
    let mut model: ActionModel<Flex> = ActionModelConfig::from_config(&config).init(&device);
    let report = vidtrain_trainer::pretrained::load(&mut model, &config, &weights).unwrap();
    assert_eq!(report.head_reinitialised_from, Some(400));

    let mut config = fixture.config.clone();
    config.model.resnet_depth = 10;
    let mut model: ActionModel<Flex> = ActionModelConfig::from_config(&config).init(&device);
    let error = vidtrain_trainer::pretrained::load(&mut model, &config, &weights)
        .unwrap_err()
        .to_string();
    assert!(error.contains("model.pretrained"), "{error}");
    assert!(
        error.contains("backbone.layer1.1.conv1.weight"),
        "names the unexpected second block: {error}"
    );
}
