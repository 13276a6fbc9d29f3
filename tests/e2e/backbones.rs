//! The 3-D ResNet, ST-GCN and Mamba backbones from the command line: settings that cannot work are
//! refused before anything starts (exit 2, the key named, no run folder), each trains, and
//! `model.pretrained` starts a run from PyTorch weights.

use crate::train::{TINY_MODEL, read_json, small_dataset, step_losses};
use crate::{assert_clean_failure, assert_stderr_contains, scratch, stderr, vidtrain};

/// `vidtrain train` on the small dataset with `extra`; returns the output.
fn train(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let config = small_dataset(dir);
    let mut args = vec!["train", "--config", config.as_str()];
    args.extend(TINY_MODEL);
    args.extend_from_slice(extra);
    vidtrain(dir, &args)
}

const STGCN_KPT: [&str; 5] = [
    "model.backbone=stgcn",
    "model.input_type=kpt",
    "data.load_kpt=true",
    "data.load_rgb=false",
    "model.stgcn_width=4",
];

#[test]
fn impossible_backbone_settings_are_refused_before_a_run_starts() {
    let dir = scratch("backbones-refused");
    let cases: &[(&[&str], &str)] = &[
        // 17 joints named, 52 kept by data.keypoint_indices.
        (
            &[&STGCN_KPT[..], &["model.skeleton=coco17"]].concat(),
            "model.skeleton",
        ),
        (
            &[&STGCN_KPT[..], &["model.skeleton=custom"]].concat(),
            "model.skeleton_edges",
        ),
        (
            &[
                &STGCN_KPT[..],
                &["model.skeleton=custom", "model.skeleton_edges=[[0, 60]]"],
            ]
            .concat(),
            "model.skeleton_edges",
        ),
        (&["model.backbone=stgcn"], "model.backbone"),
        (
            &["model.backbone=3dcnn", "model.resnet_depth=50"],
            "model.resnet_depth",
        ),
        (
            &[
                "model.backbone=3dcnn",
                // 64 wide against the keypoint transformer's 32.
                "model.resnet_width=8",
                "model.input_type=rgb_kpt",
                "data.load_kpt=true",
                "model.modality_fusion=mean",
            ],
            "model.modality_fusion",
        ),
        (
            &["model.pretrained=no-such-weights.pth"],
            "model.pretrained",
        ),
        (
            &["model.backbone=mamba", "model.mamba_state=0"],
            "model.mamba_state",
        ),
        (
            &["model.backbone=mamba", "model.mamba_chunk=0"],
            "model.mamba_chunk",
        ),
        // Tubelets of 3 frames do not tile the clip's 8.
        (
            &["model.backbone=mamba", "model.tubelet_size=[3,16,16]"],
            "data.uniform_temporal_subsample_num",
        ),
    ];
    for (extra, key) in cases {
        let output = train(&dir, &[&extra[..], &["train.max_steps=2"]].concat());
        assert_clean_failure(&output, 2);
        assert_stderr_contains(&output, key);
        assert!(
            !dir.join("runs").exists(),
            "{extra:?}: a run folder was made"
        );
    }
}

#[test]
fn each_new_backbone_trains_with_every_input_it_takes() {
    let dir = scratch("backbones-train");
    let resnet = [
        "model.backbone=3dcnn",
        "model.resnet_depth=10",
        "model.resnet_width=4",
    ];
    let cases: &[&[&str]] = &[
        &resnet,
        &[
            &resnet[..],
            &[
                "model.input_type=rgb_kpt",
                "data.load_kpt=true",
                "model.keypoint_backbone=stgcn",
                "model.stgcn_width=4",
                "model.fusion_mode=feature_concat",
            ],
        ]
        .concat(),
        &STGCN_KPT,
        &[
            "model.backbone=mamba",
            "model.mamba_dim=16",
            "model.mamba_layers=1",
        ],
        &[
            "model.backbone=mamba",
            "model.mamba_dim=16",
            "model.mamba_layers=1",
            "model.mamba_bidirectional=false",
            "model.input_type=kpt",
            "data.load_kpt=true",
            "data.load_rgb=false",
        ],
    ];
    for (number, case) in cases.iter().enumerate() {
        let experiment = format!("experiment=case-{number}");
        let output = train(
            &dir,
            &[&case[..], &[experiment.as_str(), "train.max_epochs=1"]].concat(),
        );
        assert!(output.status.success(), "{case:?}: {}", stderr(&output));
        let run = &crate::train::runs_of(&dir.join(format!("runs/case-{number}")))[0];
        let losses = step_losses(run);
        assert!(!losses.is_empty(), "{case:?}");
        assert!(losses.iter().all(|(_, loss)| loss.is_finite()), "{case:?}");
        // One epoch: eval of the saved model reproduces the validation accuracy.
        let summary = read_json(&run.join("summary.json"));
        let out = format!("eval-{number}");
        let output = vidtrain(
            &dir,
            &["eval", "--checkpoint", run.to_str().unwrap(), "--out", &out],
        );
        assert!(output.status.success(), "{case:?}: {}", stderr(&output));
        let report = read_json(&dir.join(&out).join("metrics.json"));
        let accuracy = report["metrics"]["accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - summary["val_accuracy"].as_f64().unwrap()).abs() < 1e-9,
            "{case:?}: eval {accuracy} vs {}",
            summary["val_accuracy"]
        );
    }
}

/// The fixtures of `bench/reference_fixtures.py` (made by `cargo xtask ci`).
fn torch_fixture(name: &str) -> String {
    let folder = std::env::var_os("VIDTRAIN_TORCH_FIXTURES")
        .expect("VIDTRAIN_TORCH_FIXTURES is set by cargo xtask ci");
    std::path::Path::new(&folder)
        .join(name)
        .display()
        .to_string()
}

#[test]
#[ignore = "needs PyTorch fixtures: run through `cargo xtask ci`"]
fn training_starts_from_torchvision_weights_and_refuses_a_file_of_another_depth() {
    let dir = scratch("backbones-pretrained");
    let weights = format!("model.pretrained={}", torch_fixture("r3d_18.pth"));
    // The fixture has torchvision's 400 classes, the run 9: the classifier starts fresh.
    let output = train(
        &dir,
        &[
            "train.max_steps=1",
            "model.backbone=3dcnn",
            "model.resnet_depth=18",
            "model.resnet_width=64",
            weights.as_str(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_stderr_contains(&output, "its classifier has 400 classes, this model 9");

    let other = scratch("backbones-pretrained-depth");
    let output = train(
        &other,
        &[
            "train.max_steps=1",
            "model.backbone=3dcnn",
            "model.resnet_depth=34",
            weights.as_str(),
        ],
    );
    assert_clean_failure(&output, 2);
    assert_stderr_contains(&output, "missing from the file");
    assert_stderr_contains(&output, "backbone.layer2.3.conv1.weight");
    assert!(!other.join("runs").exists());
}
