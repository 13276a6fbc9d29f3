//! `vidtrain config show`: layering, the seed's spellings, and errors that name the key.

use crate::{assert_clean_failure, scratch, stderr, stdout, vidtrain, vidtrain_with};

#[test]
fn config_show_prints_the_overridden_values() {
    let dir = scratch("config-show");
    let output = vidtrain(
        &dir,
        &[
            "config",
            "show",
            "trainer.precision=16",
            "train.accumulate_grad_batches=4",
            "data.batch_size=1",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: toml::Table = toml::from_str(&stdout(&output)).unwrap();
    assert_eq!(shown["trainer"]["precision"].as_str(), Some("16-mixed"));
    assert_eq!(
        shown["train"]["accumulate_grad_batches"].as_integer(),
        Some(4)
    );
    assert_eq!(shown["data"]["batch_size"].as_integer(), Some(1));
    assert_eq!(
        shown["data"]["img_size"].as_integer(),
        Some(224),
        "defaults stay"
    );
}

#[test]
fn a_misspelt_key_fails_naming_the_right_one() {
    let dir = scratch("config-typo");
    let output = vidtrain(&dir, &["config", "show", "data.batchsize=1"]);
    assert_clean_failure(&output, 2);
    assert!(
        stderr(&output).contains("data.batch_size"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn files_env_and_overrides_layer_in_order() {
    let dir = scratch("config-layers");
    std::fs::write(
        dir.join("mine.yaml"),
        "data:\n  img_size: 96\n  num_workers: 1\n",
    )
    .unwrap();
    let output = vidtrain_with(
        &dir,
        &[
            "config",
            "show",
            "--config",
            "mine.yaml",
            "data.num_workers=3",
        ],
        |command| {
            command.env("VIDTRAIN_DATA__IMG_SIZE", "64");
        },
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: toml::Table = toml::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        shown["data"]["img_size"].as_integer(),
        Some(64),
        "env over file"
    );
    assert_eq!(
        shown["data"]["num_workers"].as_integer(),
        Some(3),
        "override over file"
    );
}

#[test]
fn an_impossible_combination_is_rejected_before_any_work() {
    let dir = scratch("config-invalid");
    let output = vidtrain(
        &dir,
        &["train", "data.load_rgb=false", "data.load_kpt=false"],
    );
    assert_clean_failure(&output, 2);
    assert!(stderr(&output).contains("data.load_kpt"));
    assert!(!dir.join("runs").exists(), "nothing may start");
}
