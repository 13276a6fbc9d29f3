//! The config loader's unit tests: defaults, presets, overrides and their errors.

use super::*;
use crate::{Fold, Precision};

fn load(overrides: &[&str]) -> Result<Config> {
    ConfigLoader::new().overrides(overrides)?.load()
}

/// The seed's scenario commands, as its users type them.
const SCENARIO_A: [&str; 3] = [
    "trainer.precision=16",
    "train.accumulate_grad_batches=4",
    "data.batch_size=1",
];
const SCENARIO_C: [&str; 7] = [
    "trainer.precision=16",
    "train.accumulate_grad_batches=16",
    "data.batch_size=1",
    "data.max_video_frames=200",
    "data.img_size=112",
    "data.num_workers=0",
    "model.use_gradient_checkpointing=true",
];

fn error_text(overrides: &[&str]) -> String {
    load(overrides).expect_err("should be rejected").to_string()
}

#[test]
fn checkpoint_modes_print_as_they_are_written() {
    for mode in [
        crate::RecomputeMode::None,
        crate::RecomputeMode::Encoder,
        crate::RecomputeMode::Stem,
        crate::RecomputeMode::All,
    ] {
        let config = ConfigLoader::new()
            .overrides(&[format!("model.checkpoint={}", mode.as_str())])
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(config.model.recompute, mode);
    }
}

#[test]
fn default_toml_spells_out_the_built_in_defaults() {
    let from_file: Config = toml::from_str(DEFAULT_TOML).unwrap();
    assert_eq!(from_file, Config::default());
    // And it names every key of the schema.
    for key in all_keys() {
        let (section, field) = key.split_once('.').unwrap_or(("", &key));
        let table: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
        let present = if section.is_empty() {
            table.contains_key(field)
        } else {
            table[section].as_table().unwrap().contains_key(field)
        };
        assert!(present, "configs/default.toml lacks `{key}`");
    }
}

#[test]
fn the_seeds_scenario_commands_are_accepted_verbatim() {
    let a = load(&SCENARIO_A).unwrap();
    assert_eq!(a.trainer.precision, Precision::Half);
    assert_eq!(a.train.accumulate_grad_batches, 4);
    assert_eq!(a.data.batch_size, 1);
    let b = load(&[
        "trainer.precision=16",
        "train.accumulate_grad_batches=8",
        "data.batch_size=1",
        "data.max_video_frames=300",
        "data.img_size=160",
        "data.num_workers=2",
    ])
    .unwrap();
    assert_eq!(
        (b.data.max_video_frames, b.data.img_size, b.data.num_workers),
        (300, 160, 2)
    );
    let c = load(&SCENARIO_C).unwrap();
    assert!(c.model.use_gradient_checkpointing);
    assert_eq!(c.data.num_workers, 0);
}

#[test]
fn scenario_presets_equal_the_scenario_commands() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let preset = |name: &str| {
        ConfigLoader::new()
            .file(&root.join(name))
            .unwrap()
            .load()
            .unwrap()
    };
    assert_eq!(
        preset("scenario-a-16g-ram-8g-vram.toml"),
        load(&SCENARIO_A).unwrap()
    );
    assert_eq!(
        preset("scenario-c-4g-vram.toml"),
        load(&SCENARIO_C).unwrap()
    );
    let b = preset("scenario-b-8g-ram-6g-vram.toml");
    assert_eq!((b.train.accumulate_grad_batches, b.data.img_size), (8, 160));
}

#[test]
fn precision_accepts_every_lightning_spelling() {
    for (text, expected) in [
        ("32", Precision::Full),
        ("32-true", Precision::Full),
        ("16", Precision::Half),
        ("16-mixed", Precision::Half),
        ("bf16", Precision::BHalf),
        ("bf16-mixed", Precision::BHalf),
    ] {
        let config = load(&[&format!("trainer.precision={text}")]).unwrap();
        assert_eq!(config.trainer.precision, expected, "{text}");
    }
    let message = error_text(&["trainer.precision=8"]);
    assert!(
        message.contains("trainer.precision") && message.contains("bf16-mixed"),
        "{message}"
    );
}

#[test]
fn unknown_keys_name_the_closest_valid_key_and_the_source() {
    let message = error_text(&["data.batchsize=1"]);
    assert!(message.contains("`data.batchsize`"), "{message}");
    assert!(
        message.contains("did you mean `data.batch_size`"),
        "{message}"
    );
    assert!(
        message.contains("command-line override `data.batchsize=1`"),
        "{message}"
    );
    let message = error_text(&["trian.lr=0.1"]);
    assert!(message.contains("did you mean `train"), "{message}");
}

#[test]
fn wrong_types_say_what_was_expected() {
    let message = error_text(&["data.batch_size=four"]);
    assert!(message.contains("data.batch_size"), "{message}");
    assert!(message.contains("expected"), "{message}");
    let message = error_text(&["data.on_bad_sample=ignore"]);
    assert!(
        message.contains("skip") && message.contains("error"),
        "{message}"
    );
}

#[test]
fn impossible_combinations_are_rejected_with_the_key() {
    for (overrides, key) in [
        (
            &["data.load_rgb=false", "data.load_kpt=false"][..],
            "data.load_rgb",
        ),
        (
            &["train.accumulate_grad_batches=0"][..],
            "train.accumulate_grad_batches",
        ),
        (&["data.img_size=150"][..], "data.img_size"),
        (
            &["model.transformer_heads=3"][..],
            "model.transformer_heads",
        ),
        (&["train.fold=7"][..], "train.fold"),
        (&["data.views=[front, top]"][..], "data.views"),
        // Used to be accepted: every decode and probe then timed out at once.
        (&["data.decode_timeout_s=0"][..], "data.decode_timeout_s"),
        (&["data.views_per_decoder=0"][..], "data.views_per_decoder"),
        (
            &["trainer.allocator_slack_percent=5000"][..],
            "trainer.allocator_slack_percent",
        ),
    ] {
        let message = error_text(overrides);
        assert!(message.contains(key), "{overrides:?}: {message}");
    }
}

#[test]
fn scientific_notation_is_a_number() {
    assert_eq!(load(&["train.lr=1e-3"]).unwrap().train.lr, 1e-3);
    assert_eq!(load(&["train.lr=2.5E-4"]).unwrap().train.lr, 2.5e-4);
    assert_eq!(load(&["experiment=1e3x"]).unwrap().experiment, "1e3x");
}

#[test]
fn lists_and_fold_all_parse_from_overrides() {
    let config = load(&["data.views=[front, left]", "train.fold=all"]).unwrap();
    assert_eq!(config.data.views, vec!["front", "left"]);
    assert_eq!(config.train.fold, Fold::All);
}

#[test]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail's closure type is fixed by figment"
)]
fn layers_apply_in_order_file_then_env_then_overrides() {
    let folder = std::env::temp_dir().join(format!("vidtrain-config-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let toml_path = folder.join("a.toml");
    std::fs::write(&toml_path, "[data]\nbatch_size = 3\nimg_size = 64\n").unwrap();
    let yaml_path = folder.join("b.yaml");
    std::fs::write(&yaml_path, "data:\n  img_size: 96\ntrain:\n  lr: 0.5\n").unwrap();
    figment::Jail::expect_with(|jail| {
        jail.set_env("VIDTRAIN_TRAIN__LR", "0.25");
        jail.set_env("VIDTRAIN_LOG", "debug"); // not a key: ignored
        let config = ConfigLoader::new()
            .file(&toml_path)
            .unwrap()
            .file(&yaml_path)
            .unwrap()
            .env()
            .overrides(["data.batch_size=2"])
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(config.data.img_size, 96); // YAML over TOML
        assert_eq!(config.train.lr, 0.25); // env over files
        assert_eq!(config.data.batch_size, 2); // override over everything
        Ok(())
    });
    std::fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn a_missing_config_file_is_named() {
    let error = ConfigLoader::new()
        .file(Path::new("/nonexistent/x.toml"))
        .unwrap_err();
    assert!(error.to_string().contains("/nonexistent/x.toml"));
}

#[test]
fn overrides_without_equals_are_rejected() {
    let error = ConfigLoader::new()
        .overrides(["data.batch_size"])
        .unwrap_err();
    assert!(error.to_string().contains("key=value"));
}

#[test]
fn an_augment_preset_sets_its_keys_and_explicit_keys_win() {
    let standard = load(&["data.augment=standard"]).unwrap();
    assert_eq!(standard.data.hflip_prob, 0.5);
    assert_eq!(standard.data.crop_scale, [0.6, 1.0]);
    assert_eq!(standard.data.color_jitter, [0.2, 0.2, 0.2]);
    assert!(standard.data.temporal_jitter && standard.augments());
    // A key set on the command line, in either order, beats the preset.
    for overrides in [
        ["data.augment=standard", "data.hflip_prob=0"],
        ["data.hflip_prob=0", "data.augment=standard"],
    ] {
        let config = load(&overrides).unwrap();
        assert_eq!(config.data.hflip_prob, 0.0);
        assert_eq!(config.data.crop_scale, [0.6, 1.0]);
    }
    let light = load(&["data.augment=light"]).unwrap();
    assert_eq!(light.data.crop_scale, [1.0, 1.0]);
    assert_eq!(light.data.color_jitter, [0.0; 3]);
    assert!(!load(&[]).unwrap().augments());
}

#[test]
fn class_weights_are_a_name_or_one_weight_per_class() {
    use crate::ClassWeights;
    let balanced = load(&["train.class_weights=balanced"]).unwrap();
    assert_eq!(balanced.train.class_weights, ClassWeights::Balanced);
    let list = load(&["train.class_weights=[1,1,1,1,1,1,1,1,0.2]"]).unwrap();
    assert_eq!(
        list.train.class_weights,
        ClassWeights::Fixed(vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2])
    );
    let short = load(&["train.class_weights=[1,2]"])
        .unwrap_err()
        .to_string();
    assert!(short.contains("train.class_weights") && short.contains("2 weights for 9"));
    let word = load(&["train.class_weights=inverse"])
        .unwrap_err()
        .to_string();
    assert!(word.contains("\"balanced\""), "{word}");
}

#[test]
fn training_controls_are_checked_before_a_run() {
    for (override_, key) in [
        ("train.monitor=val_acc", "train.monitor"),
        ("data.hflip_prob=1.5", "data.hflip_prob"),
        ("data.crop_scale=[0.8,0.5]", "data.crop_scale"),
        ("train.nesterov=true", "train.nesterov"),
        ("eval.clips=0", "eval.clips"),
    ] {
        let error = load(&[override_]).unwrap_err().to_string();
        assert!(error.contains(key), "{override_}: {error}");
    }
    assert!(load(&["train.optimizer=sgd", "train.nesterov=true"]).is_ok());
    // Other classes: the seed's default flip pairs do not stand in the way until flips are
    // on, and then the error says what to set.
    let other_classes = [
        "data.class_names=[\"walk\",\"run\"]",
        "model.model_class_num=2",
    ];
    assert!(load(&other_classes).is_ok());
    let flipping = [other_classes[0], other_classes[1], "data.hflip_prob=0.5"];
    let error = load(&flipping).unwrap_err().to_string();
    assert!(
        error.contains("data.flip_label_pairs") && error.contains("`[]`"),
        "{error}"
    );
    let none = [
        other_classes[0],
        other_classes[1],
        "data.hflip_prob=0.5",
        "data.flip_label_pairs=[]",
    ];
    assert!(load(&none).is_ok());
    assert!(!crate::MonitorMode::Auto.maximises("val_loss"));
    assert!(crate::MonitorMode::Auto.maximises("val_macro_f1"));
}

#[test]
fn flip_joint_pairs_become_positions_among_the_kept_joints() {
    let config = load(&[]).unwrap();
    let positions = config.flip_joint_positions();
    // Kept: 0–6 at 0–6, hands 21–62 at 7–48, 67–69 at 49–51.
    assert!(positions.contains(&[1, 2]) && positions.contains(&[5, 6]));
    assert!(positions.contains(&[7, 28]) && positions.contains(&[27, 48]));
    assert!(positions.contains(&[49, 50]));
    // Elbows, hips and feet are not kept: nothing to exchange.
    assert_eq!(positions.len(), 3 + 21 + 1);
    let custom = load(&["data.flip_joint_pairs=[[0,69]]"]).unwrap();
    assert_eq!(custom.flip_joint_positions(), vec![[0, 51]]);
}

/// `model.activation_bits` takes the widths the codes have, and a typo is refused by name.
#[test]
fn activation_bits_are_one_of_the_code_widths() {
    for bits in [32, 16, 8, 4, 2] {
        let config = load(&[&format!("model.activation_bits={bits}")]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.model.activation_bits, bits);
    }
    let message = error_text(&["model.activation_bits=3"]);
    assert!(
        message.contains("model.activation_bits") && message.contains("32"),
        "{message}"
    );
}
