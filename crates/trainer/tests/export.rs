//! `vidtrain export` and `model.pretrained` are inverses: a model exported as safetensors or
//! `.pth` and read back through `model.pretrained` into a freshly initialised model gives the
//! exported model's logits, for every backbone (the PyTorch side of the round trip is
//! `pytorch_equality.rs`, which needs PyTorch).

use burn::backend::Flex;
use burn::prelude::*;
use vidtrain_config::{Config, ConfigLoader};
use vidtrain_model::{ActionModel, ActionModelConfig};
use vidtrain_trainer::persist::export::{ExportFormat, state_dict, write};

fn config(overrides: &[&str]) -> Config {
    let base = [
        "train.view=\"single\"",
        "data.img_size=32",
        "data.uniform_temporal_subsample_num=4",
        "model.transformer_dim=16",
        "model.transformer_layers=1",
        "model.transformer_heads=2",
        "model.transformer_ff_dim=32",
        "model.resnet_width=4",
        "model.resnet_depth=10",
        "model.stgcn_width=4",
        "model.mamba_dim=16",
        "model.mamba_layers=1",
        "model.tubelet_size=[2, 8, 8]",
    ];
    ConfigLoader::with_overrides(base.iter().chain(overrides)).unwrap()
}

fn logits(model: &ActionModel<Flex>, config: &Config) -> Vec<f32> {
    let [t, s] = [4, 32];
    let joints = config.data.keypoint_indices.len();
    // Inputs from a fixed formula, not Burn's global generator: the tests of this file run in
    // parallel, and another one drawing between a seed and these draws changed the inputs.
    fn input<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| ((i * 7919) % 1009) as f32 / 1009.0)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }
    let video = (config.model.input_type != vidtrain_config::InputType::Kpt)
        .then(|| input([2, 1, t, s, s, 3]));
    let keypoints = (config.model.input_type != vidtrain_config::InputType::Rgb)
        .then(|| input([2, 1, t, joints, 3]));
    model
        .forward(video, keypoints)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn every_backbone_exported_and_read_back_through_model_pretrained_gives_the_same_logits() {
    let out = std::env::temp_dir().join(format!("vidtrain-export-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let device = Default::default();
    for (name, overrides) in [
        ("transformer", &["model.backbone=\"transformer\""][..]),
        ("vivit", &["model.backbone=\"vivit\""]),
        ("r3d", &["model.backbone=\"3dcnn\""]),
        ("videomamba", &["model.backbone=\"mamba\""]),
        (
            "stgcn",
            &[
                "model.backbone=\"stgcn\"",
                "model.input_type=\"kpt\"",
                "data.load_rgb=false",
                "data.load_kpt=true",
            ],
        ),
        (
            "rgb+kpt",
            &[
                "model.backbone=\"transformer\"",
                "model.input_type=\"rgb_kpt\"",
                "data.load_kpt=true",
            ],
        ),
        (
            "kpt mamba",
            &[
                "model.backbone=\"mamba\"",
                "model.input_type=\"kpt\"",
                "data.load_rgb=false",
                "data.load_kpt=true",
            ],
        ),
    ] {
        let config = config(overrides);
        let model_config = ActionModelConfig::from_config(&config);
        Flex::seed(&device, 1);
        let model: ActionModel<Flex> = model_config.init(&device);
        model.materialize_parameters();
        let expected = logits(&model, &config);
        let state = state_dict(&model, &model_config).unwrap();
        for format in [ExportFormat::Safetensors, ExportFormat::Pth] {
            let file = out.join(format!("{}.{}", name.replace(' ', "_"), format.extension()));
            write(&state, format, &file).unwrap();
            let mut config = config.clone();
            config.model.pretrained = file.display().to_string();
            Flex::seed(&device, 2);
            let mut fresh: ActionModel<Flex> = model_config.init(&device);
            let report =
                vidtrain_trainer::persist::pretrained::load(&mut fresh, &config, &file).unwrap();
            assert_eq!(report.head_reinitialised_from, None, "{name}");
            let got = logits(&fresh, &config);
            assert_eq!(got, expected, "{name} through {format:?}");
        }
    }
    std::fs::remove_dir_all(out).unwrap();
}

/// The keypoint encoders' parameter names are those weights files saved before the keypoint
/// transformer and the keypoint Mamba shared one generic module (`FrameTokenEncoder`): a renamed
/// field would make every earlier run's `model.mpk` fail to load.
#[test]
fn keypoint_encoders_keep_the_parameter_names_of_earlier_weights_files() {
    use burn_store::ModuleSnapshot;
    let device = Default::default();
    for (backbone, expected) in [
        (
            "transformer",
            &[
                "keypoint_encoder.blocks.0.feed_forward_in.bias",
                "keypoint_encoder.blocks.0.feed_forward_in.weight",
                "keypoint_encoder.blocks.0.feed_forward_out.bias",
                "keypoint_encoder.blocks.0.feed_forward_out.weight",
                "keypoint_encoder.blocks.0.norm_attention.beta",
                "keypoint_encoder.blocks.0.norm_attention.gamma",
                "keypoint_encoder.blocks.0.norm_feed_forward.beta",
                "keypoint_encoder.blocks.0.norm_feed_forward.gamma",
                "keypoint_encoder.blocks.0.projection.bias",
                "keypoint_encoder.blocks.0.projection.weight",
                "keypoint_encoder.blocks.0.qkv.bias",
                "keypoint_encoder.blocks.0.qkv.weight",
                "keypoint_encoder.embedding.bias",
                "keypoint_encoder.embedding.weight",
                "keypoint_encoder.norm.beta",
                "keypoint_encoder.norm.gamma",
            ][..],
        ),
        (
            "mamba",
            &[
                "keypoint_mamba.blocks.0.in_proj.weight",
                "keypoint_mamba.blocks.0.norm.weight",
                "keypoint_mamba.blocks.0.out_proj.weight",
                "keypoint_mamba.embedding.bias",
                "keypoint_mamba.embedding.weight",
                "keypoint_mamba.norm.weight",
            ],
        ),
    ] {
        let config = config(&[
            "model.input_type=\"kpt\"",
            &format!("model.keypoint_backbone=\"{backbone}\""),
            "data.load_rgb=false",
            "data.load_kpt=true",
        ]);
        let model: ActionModel<Flex> = ActionModelConfig::from_config(&config).init(&device);
        let mut names: Vec<String> = model
            .collect(None, None, false)
            .iter()
            .map(|snapshot| snapshot.full_path())
            // The classifier, and the Mamba block's inner scan (a type the change did not touch).
            .filter(|name| !name.starts_with("head.") && !name.contains(".directions."))
            .collect();
        names.sort();
        assert_eq!(names, expected, "{backbone}");
    }
}
