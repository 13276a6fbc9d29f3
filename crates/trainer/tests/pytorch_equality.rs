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
    let config = ConfigLoader::with_overrides(overrides).unwrap();
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
    vidtrain_trainer::persist::pretrained::load(&mut model, &config, weights).unwrap();
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
    let relative = relative_error(&got, &fixture.logits);
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
    let report =
        vidtrain_trainer::persist::pretrained::load(&mut model, &config, &weights).unwrap();
    assert_eq!(report.head_reinitialised_from, Some(400));

    let mut config = fixture.config.clone();
    config.model.resnet_depth = 10;
    let mut model: ActionModel<Flex> = ActionModelConfig::from_config(&config).init(&device);
    let error = vidtrain_trainer::persist::pretrained::load(&mut model, &config, &weights)
        .unwrap_err()
        .to_string();
    assert!(error.contains("model.pretrained"), "{error}");
    assert!(
        error.contains("backbone.layer1.1.conv1.weight"),
        "names the unexpected second block: {error}"
    );

    // Another width: every tensor is named once, as not loadable. BatchNorm's γ/β used to be
    // listed twice, also under their file keys as "in the file but not in the model".
    let mut config = fixture.config.clone();
    config.model.resnet_width = 32;
    let mut model: ActionModel<Flex> = ActionModelConfig::from_config(&config).init(&device);
    let error = vidtrain_trainer::persist::pretrained::load(&mut model, &config, &weights)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("backbone.stem_norm.gamma (model [32], file [64])"),
        "{error}"
    );
    assert!(!error.contains("backbone.stem_norm.weight"), "{error}");
    assert!(
        !error.contains("in the file but not in the model"),
        "{error}"
    );
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let norm = |values: &mut dyn Iterator<Item = f64>| values.map(|v| v * v).sum::<f64>().sqrt();
    norm(&mut got.iter().zip(want).map(|(a, b)| (a - b) as f64))
        / norm(&mut want.iter().map(|&v| v as f64))
}

fn json_floats(json: &serde_json::Value, key: &str) -> Vec<f32> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("fixture has no {key}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// The logits and the gradient of `sum(logits · upstream)` with respect to the input equal the
/// reference's (its selective scan a plain loop over time), whatever the chunk of vidtrain's scan.
fn assert_same_logits_and_input_gradient(name: &str) {
    type B = burn::backend::Autodiff<Flex>;
    let fixture = read(name);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    let weights = fixtures().join(format!("{name}.pth"));
    assert_eq!(
        trainable(&fixture.config),
        fixture.parameters,
        "{name}: parameter count"
    );
    let device = Default::default();
    // Chunks of one step, ones that do not divide the sequence, and one longer than it.
    for chunk in [1, 3, 16, 64] {
        let mut config = fixture.config.clone();
        config.model.pretrained = weights.display().to_string();
        config.model.transformer_dropout = 0.0;
        config.model.mamba_chunk = chunk;
        let mut model: ActionModel<B> = ActionModelConfig::from_config(&config).init(&device);
        vidtrain_trainer::persist::pretrained::load(&mut model, &config, &weights).unwrap();
        let input = Tensor::<B, 1>::from_floats(fixture.input.as_slice(), &device).require_grad();
        let shape = fixture.input_shape.clone();
        let scores = match shape.len() {
            6 => model.forward(
                Some(
                    input
                        .clone()
                        .reshape(<[usize; 6]>::try_from(shape).unwrap()),
                ),
                None,
            ),
            _ => model.forward(
                None,
                Some(
                    input
                        .clone()
                        .reshape(<[usize; 5]>::try_from(shape).unwrap()),
                ),
            ),
        };
        let logits = scores.clone().into_data().to_vec::<f32>().unwrap();
        let error = relative_error(&logits, &fixture.logits);
        assert!(
            error <= 1e-4,
            "{name}, chunk {chunk}: logits differ by {error:e}"
        );
        let upstream =
            Tensor::<B, 1>::from_floats(json_floats(&json, "upstream").as_slice(), &device)
                .reshape(scores.dims());
        let grads = (scores * upstream).sum().backward();
        let gradient = input
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let error = relative_error(&gradient, &json_floats(&json, "input_gradient"));
        assert!(
            error <= 1e-4,
            "{name}, chunk {chunk}: input gradient differs by {error:e}"
        );
    }
}

#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn videomamba_gives_the_sequential_references_logits_and_input_gradient() {
    assert_same_logits_and_input_gradient("videomamba");
}

#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn keypoint_mamba_gives_the_sequential_references_logits_and_input_gradient() {
    assert_same_logits_and_input_gradient("mamba_kpt");
}

/// vidtrain's chunked scan (f32) against the recurrence run step by step in float64 by PyTorch:
/// the output and the gradients of x, Δ, A, B, C and D, for chunks that divide the 45 steps and
/// chunks that do not.
#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn chunked_scan_equals_the_sequential_recurrence_of_pytorch() {
    use vidtrain_model::layers::selective_scan::{ScanInputs, ScanParameters, selective_scan};
    type B = burn::backend::Autodiff<Flex>;
    let path = fixtures().join("selective_scan.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let shape: Vec<usize> = json["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let [batch, length, inner, state] = <[usize; 4]>::try_from(shape).unwrap();
    let device = Default::default();
    // PyTorch's are batch-major `[batch, length, ·]`; vidtrain's scan is time-major.
    let sequence = |key: &str, width: usize| {
        Tensor::<B, 1>::from_floats(json_floats(&json, key).as_slice(), &device)
            .reshape([batch, length, width])
            .swap_dims(0, 1)
            .reshape([length * batch * width])
            .reshape([length, batch, width])
            .require_grad()
    };
    let batch_major = |tensor: Tensor<burn::backend::Flex, 3>| {
        let [l, b, w] = tensor.dims();
        tensor
            .swap_dims(0, 1)
            .reshape([b * l * w])
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    for chunk in [1, 4, 7, 16, 45, 64] {
        let inputs = ScanInputs {
            x: sequence("x", inner),
            delta: sequence("delta", inner),
            b: sequence("b", state),
            c: sequence("c", state),
        };
        let parameters = ScanParameters {
            a: Tensor::<B, 1>::from_floats(json_floats(&json, "a").as_slice(), &device)
                .reshape([inner, state])
                .require_grad(),
            d: Tensor::<B, 1>::from_floats(json_floats(&json, "d").as_slice(), &device)
                .require_grad(),
        };
        let y = selective_scan(&inputs, &parameters, chunk);
        let upstream = sequence("upstream", inner).detach();
        let grads = (y.clone() * upstream).sum().backward();
        let checks = [
            ("y", batch_major(y.inner())),
            ("grad_x", batch_major(inputs.x.grad(&grads).unwrap())),
            (
                "grad_delta",
                batch_major(inputs.delta.grad(&grads).unwrap()),
            ),
            ("grad_b", batch_major(inputs.b.grad(&grads).unwrap())),
            ("grad_c", batch_major(inputs.c.grad(&grads).unwrap())),
            (
                "grad_a",
                parameters
                    .a
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec()
                    .unwrap(),
            ),
            (
                "grad_d",
                parameters
                    .d
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec()
                    .unwrap(),
            ),
        ];
        for (key, got) in checks {
            let error = relative_error(&got, &json_floats(&json, key));
            assert!(error <= 1e-4, "chunk {chunk}: {key} differs by {error:e}");
        }
    }
}

/// Every float parameter moved off the values it was loaded with (scaled and shifted by an amount
/// that differs per tensor), so that an export is known to carry vidtrain's weights, not the
/// file's.
fn perturbed(model: ActionModel<Flex>) -> ActionModel<Flex> {
    struct Perturb(usize);
    impl burn::module::ModuleMapper<Flex> for Perturb {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<Flex, D>>,
        ) -> burn::module::Param<Tensor<Flex, D>> {
            self.0 += 1;
            let (id, tensor, mapper) = param.consume();
            let shift = 0.01 * ((self.0 % 7) as f32 - 3.0);
            burn::module::Param::from_mapped_value(id, tensor * 1.05 + shift, mapper)
        }
    }
    model.map(&mut Perturb(0))
}

/// `vidtrain export` writes what PyTorch loads: for each backbone with a PyTorch reference, the
/// model (loaded from the fixture, then changed) is exported as safetensors and as `.pth`; the
/// reference module loads each file with `load_state_dict(strict=True)` and gives vidtrain's
/// logits (relative ≤ 1e-4, f32, evaluation mode).
#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn exported_weights_load_into_the_pytorch_reference_and_give_vidtrains_logits() {
    use vidtrain_trainer::persist::export::{ExportFormat, state_dict, write};
    let python = std::env::var_os("VIDTRAIN_PYTHON")
        .unwrap_or_else(|| panic!("VIDTRAIN_PYTHON is not set ({WHY_IGNORED})"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/reference_fixtures.py");
    let out = std::env::temp_dir().join(format!("vidtrain-export-check-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let device = Default::default();
    for name in [
        "r3d_18",
        "stgcn_coco17",
        "transformer",
        "vivit",
        "videomamba",
        "mamba_kpt",
    ] {
        let (model_config, model, input, input_shape) = if name == "vivit" {
            // No PyTorch fixture: vidtrain's own initial weights, whose tubelet embedding
            // PyTorch's reference holds as a Conv3d (a permutation, not only a rename).
            let config = vidtrain_config::ConfigLoader::with_overrides([
                "model.backbone=\"vivit\"",
                "train.view=\"single\"",
                "model.model_class_num=9",
                "model.transformer_dim=32",
                "model.transformer_layers=2",
                "model.transformer_heads=4",
                "model.transformer_ff_dim=64",
                "model.tubelet_size=[2, 8, 8]",
                "data.img_size=16",
                "data.uniform_temporal_subsample_num=4",
            ])
            .unwrap();
            let model_config = ActionModelConfig::from_config(&config);
            Flex::seed(&device, 11);
            let model: ActionModel<Flex> = model_config.init(&device);
            let shape = vec![2, 1, 4, 16, 16, 3];
            let input: Tensor<Flex, 6> =
                Tensor::random(shape.clone(), burn::tensor::Distribution::Default, &device);
            let input = input.into_data().to_vec::<f32>().unwrap();
            (model_config, model, input, shape)
        } else {
            let fixture = read(name);
            let mut config = fixture.config.clone();
            let weights = fixtures().join(format!("{name}.pth"));
            config.model.pretrained = weights.display().to_string();
            let model_config = ActionModelConfig::from_config(&config);
            let mut model: ActionModel<Flex> = model_config.init(&device);
            vidtrain_trainer::persist::pretrained::load(&mut model, &config, &weights).unwrap();
            let model = perturbed(model);
            (model_config, model, fixture.input, fixture.input_shape)
        };
        let data = TensorData::new(input.clone(), input_shape.clone());
        let scores = match input_shape.len() {
            6 => model.forward(Some(Tensor::from_data(data, &device)), None),
            _ => model.forward(None, Some(Tensor::from_data(data, &device))),
        };
        let ours = scores.into_data().to_vec::<f32>().unwrap();
        if name != "vivit" {
            let moved = relative_error(&ours, &read(name).logits);
            assert!(moved > 1e-3, "{name}: the perturbation changed nothing");
        }

        let state = state_dict(&model, &model_config).unwrap();
        let input_json = out.join(format!("{name}-input.json"));
        std::fs::write(
            &input_json,
            serde_json::json!({"input": input, "input_shape": input_shape}).to_string(),
        )
        .unwrap();
        for format in [ExportFormat::Safetensors, ExportFormat::Pth] {
            let file = out.join(format!("{name}.{}", format.extension()));
            write(&state, format, &file).unwrap();
            let logits_json = out.join(format!("{name}-{}.json", format.extension()));
            let status = std::process::Command::new(&python)
                .arg(&script)
                .args(["check-export", name])
                .args([&file, &input_json, &logits_json])
                .status()
                .unwrap();
            assert!(status.success(), "{name}: PyTorch did not load {file:?}");
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&logits_json).unwrap()).unwrap();
            let theirs = json_floats(&json, "logits");
            let error = relative_error(&theirs, &ours);
            assert!(
                error <= 1e-4,
                "{name} ({format:?}): PyTorch's logits on the export differ by {error:e}\n ours    \
                 {ours:?}\n pytorch {theirs:?}"
            );
        }
    }
    std::fs::remove_dir_all(out).unwrap();
}
