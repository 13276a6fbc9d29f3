//! `Config::validate`: the combinations no run could honour, refused before any work starts,
//! each error naming its key.

use crate::schema::*;
use crate::{Error, Result};

impl Config {
    /// Rejects impossible or contradictory settings before any work starts.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &str, message: String| {
            Err(Error::Invalid {
                key: key.to_string(),
                message,
            })
        };
        let data = &self.data;
        if !data.load_rgb && !data.load_kpt {
            return invalid(
                "data.load_rgb",
                "both data.load_rgb and data.load_kpt are false: nothing would be loaded; \
                 set one of them to true"
                    .into(),
            );
        }
        for (key, value) in [
            ("data.batch_size", data.batch_size),
            ("data.img_size", data.img_size),
            (
                "data.uniform_temporal_subsample_num",
                data.uniform_temporal_subsample_num,
            ),
            ("data.max_video_frames", data.max_video_frames),
            ("data.prefetch_depth", data.prefetch_depth),
            (
                "train.accumulate_grad_batches",
                self.train.accumulate_grad_batches,
            ),
            ("train.max_epochs", self.train.max_epochs),
            ("train.k_folds", self.train.k_folds),
            (
                "train.video_batch_size",
                match self.train.video_batch_size {
                    InferenceBatch::Samples(samples) => samples,
                    InferenceBatch::Auto => 1,
                },
            ),
            ("model.model_class_num", self.model.model_class_num),
            ("model.transformer_dim", self.model.transformer_dim),
            ("model.transformer_heads", self.model.transformer_heads),
            ("model.transformer_ff_dim", self.model.transformer_ff_dim),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1, got 0".into());
            }
        }
        self.validate_backbones()?;
        self.validate_training_controls()?;
        if self.model.tubelet_size.contains(&0) {
            return invalid(
                "model.tubelet_size",
                format!(
                    "every size must be at least 1, got {:?}",
                    self.model.tubelet_size
                ),
            );
        }
        let tubelet_frames = self.model.tubelet_size[0];
        let tubelets = self.model.backbone == Backbone::Vivit
            || (self.model.backbone == Backbone::Mamba && self.model.input_type != InputType::Kpt);
        if tubelets
            && !data
                .uniform_temporal_subsample_num
                .is_multiple_of(tubelet_frames)
        {
            return invalid(
                "data.uniform_temporal_subsample_num",
                format!(
                    "must be a multiple of model.tubelet_size[0] = {tubelet_frames} for the {:?} \
                     backbone, got {}",
                    self.model.backbone, data.uniform_temporal_subsample_num
                ),
            );
        }
        let stride = self.model.spatial_stride();
        if !data.img_size.is_multiple_of(stride) {
            let lower = (data.img_size / stride).max(1) * stride;
            return invalid(
                "data.img_size",
                format!(
                    "must be a multiple of {stride} (the {:?} backbone's spatial stride), got {}; \
                     try {lower}",
                    self.model.backbone, data.img_size
                ),
            );
        }
        if data.uniform_temporal_subsample_num > data.max_video_frames {
            return invalid(
                "data.uniform_temporal_subsample_num",
                format!(
                    "samples {} frames per segment but data.max_video_frames is {}",
                    data.uniform_temporal_subsample_num, data.max_video_frames
                ),
            );
        }
        if !self
            .model
            .transformer_dim
            .is_multiple_of(self.model.transformer_heads)
        {
            return invalid(
                "model.transformer_heads",
                format!(
                    "must divide model.transformer_dim ({}), got {}",
                    self.model.transformer_dim, self.model.transformer_heads
                ),
            );
        }
        if !self.model.transformer_dim.is_multiple_of(2) {
            return invalid(
                "model.transformer_dim",
                format!(
                    "must be even (the stem's first stage has dim/2 channels), got {}",
                    self.model.transformer_dim
                ),
            );
        }
        if !(0.0..1.0).contains(&self.model.transformer_dropout) {
            return invalid(
                "model.transformer_dropout",
                format!("must be in [0, 1), got {}", self.model.transformer_dropout),
            );
        }
        let clip = self.trainer.gradient_clip_val;
        if !(clip >= 0.0 && clip.is_finite()) {
            return invalid(
                "trainer.gradient_clip_val",
                format!("must be 0 (off) or a positive norm, got {clip}"),
            );
        }
        if self.data.views_per_decoder == 0 {
            return invalid(
                "data.views_per_decoder",
                "must be at least 1 (1 = one ffmpeg process per view)".to_string(),
            );
        }
        if self.data.decode_timeout_s == 0 {
            return invalid(
                "data.decode_timeout_s",
                "must be at least 1 second: every decode and every probe would time out at once"
                    .to_string(),
            );
        }
        if self.trainer.allocator_slack_percent > 1000 {
            return invalid(
                "trainer.allocator_slack_percent",
                format!(
                    "must be at most 1000 (percent of the peak of live blocks), got {}; 0 never \
                     raises the peak",
                    self.trainer.allocator_slack_percent
                ),
            );
        }
        let timeout = self.trainer.collective_timeout_s;
        if !(timeout > 0.0 && timeout.is_finite()) {
            return invalid(
                "trainer.collective_timeout_s",
                format!("must be a positive number of seconds, got {timeout}"),
            );
        }
        if !(self.train.lr > 0.0 && self.train.lr.is_finite()) {
            return invalid(
                "train.lr",
                format!("must be a positive number, got {}", self.train.lr),
            );
        }
        if self.train.max_steps < -1 || self.train.max_steps == 0 {
            return invalid(
                "train.max_steps",
                format!(
                    "must be -1 (no limit) or at least 1, got {}",
                    self.train.max_steps
                ),
            );
        }
        if self.train.k_folds < 2 {
            return invalid(
                "train.k_folds",
                format!(
                    "must be at least 2 (folds split persons into training and validation), got {}",
                    self.train.k_folds
                ),
            );
        }
        if let Fold::Index(fold) = self.train.fold
            && fold >= self.train.k_folds
        {
            return invalid(
                "train.fold",
                format!(
                    "fold {fold} does not exist with train.k_folds = {}; use 0..{} or \"all\"",
                    self.train.k_folds,
                    self.train.k_folds - 1
                ),
            );
        }
        if data.class_names.len() != self.model.model_class_num {
            return invalid(
                "model.model_class_num",
                format!(
                    "is {} but data.class_names lists {} classes",
                    self.model.model_class_num,
                    data.class_names.len()
                ),
            );
        }
        if data.missing_view == MissingView::UsePresent
            && self.model.fusion_mode == FusionMode::FeatureConcat
        {
            return invalid(
                "data.missing_view",
                "is \"use_present\", but model.fusion_mode = \"feature_concat\" needs every \
                 view (its classifier takes one feature per view); use a mean fusion \
                 (logit_mean, prob_mean, feature_mean) or data.missing_view = \"skip\""
                    .into(),
            );
        }
        if data.views.is_empty() {
            return invalid(
                "data.views",
                "is empty; list at least one of front, left, right".into(),
            );
        }
        for view in data
            .views
            .iter()
            .chain(std::iter::once(&self.train.view_name))
        {
            if !KNOWN_VIEWS.contains(&view.as_str()) {
                let key = if view == &self.train.view_name {
                    "train.view_name"
                } else {
                    "data.views"
                };
                return invalid(
                    key,
                    format!("unknown view \"{view}\"; expected one of front, left, right"),
                );
            }
        }
        match self.model.input_type {
            InputType::Rgb if !data.load_rgb => {
                return invalid(
                    "model.input_type",
                    "is \"rgb\" but data.load_rgb = false; load RGB or use input_type = \"kpt\""
                        .into(),
                );
            }
            InputType::Kpt if !data.load_kpt => {
                return invalid(
                    "model.input_type",
                    "is \"kpt\" but data.load_kpt = false; set data.load_kpt = true".into(),
                );
            }
            InputType::RgbKpt if !(data.load_rgb && data.load_kpt) => {
                return invalid(
                    "model.input_type",
                    "is \"rgb_kpt\" but data.load_rgb or data.load_kpt is false".into(),
                );
            }
            InputType::Kpt | InputType::RgbKpt if data.keypoint_indices.is_empty() => {
                return invalid(
                    "data.keypoint_indices",
                    "is empty but the model reads keypoints; list the joints to keep".into(),
                );
            }
            InputType::Rgb | InputType::Kpt | InputType::RgbKpt => {}
        }
        Ok(())
    }

    /// The 3-D ResNet's depth and ST-GCN's input and skeleton.
    fn validate_backbones(&self) -> Result<()> {
        let invalid = |key: &str, message: String| {
            Err(Error::Invalid {
                key: key.to_string(),
                message,
            })
        };
        let model = &self.model;
        if ![32, 16, 8, 4, 2].contains(&model.activation_bits) {
            return invalid(
                "model.activation_bits",
                format!(
                    "must be 32 (keep activations as computed), 16, 8, 4 or 2, got {}",
                    model.activation_bits
                ),
            );
        }
        if model.backbone == Backbone::Resnet3d && ![10, 18, 34].contains(&model.resnet_depth) {
            return invalid(
                "model.resnet_depth",
                format!("must be 10, 18 or 34, got {}", model.resnet_depth),
            );
        }
        for (key, value) in [
            ("model.resnet_width", model.resnet_width),
            ("model.stgcn_width", model.stgcn_width),
            ("model.mamba_dim", model.mamba_dim),
            ("model.mamba_state", model.mamba_state),
            ("model.mamba_expand", model.mamba_expand),
            ("model.mamba_conv_kernel", model.mamba_conv_kernel),
            ("model.mamba_chunk", model.mamba_chunk),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1, got 0".into());
            }
        }
        if model.backbone == Backbone::Stgcn && model.input_type != InputType::Kpt {
            return invalid(
                "model.backbone",
                format!(
                    "stgcn reads keypoints only, but model.input_type is {:?}; set \
                     model.input_type = \"kpt\", or keep an RGB backbone and set \
                     model.keypoint_backbone = \"stgcn\"",
                    model.input_type
                ),
            );
        }
        if model.input_type == InputType::RgbKpt && model.modality_fusion == ModalityFusion::Mean {
            let rgb = match model.backbone {
                Backbone::Resnet3d => 8 * model.resnet_width,
                Backbone::Mamba => model.mamba_dim,
                _ => model.transformer_dim,
            };
            let keypoints = match model.keypoint_encoder() {
                KeypointBackboneKind::Stgcn => 4 * model.stgcn_width,
                KeypointBackboneKind::Transformer => model.transformer_dim,
                KeypointBackboneKind::Mamba => model.mamba_dim,
            };
            if rgb != keypoints {
                return invalid(
                    "model.modality_fusion",
                    format!(
                        "\"mean\" averages the RGB and keypoint features, but they are {rgb} and \
                         {keypoints} wide; use \"concat\", or match the widths \
                         (3dcnn: 8 × model.resnet_width, stgcn: 4 × model.stgcn_width, mamba: model.mamba_dim)"
                    ),
                );
            }
        }
        if model.input_type == InputType::Rgb
            || model.keypoint_encoder() != KeypointBackboneKind::Stgcn
        {
            return Ok(());
        }
        let joints = self.data.keypoint_indices.len();
        match model.skeleton.joints() {
            Some(layout) if layout != joints => invalid(
                "model.skeleton",
                format!(
                    "{:?} has {layout} joints but data.keypoint_indices keeps {joints}; list \
                     {layout} joints there, or describe the skeleton with model.skeleton = \
                     \"custom\" and model.skeleton_edges",
                    model.skeleton
                ),
            ),
            Some(_) => Ok(()),
            None => {
                if model.skeleton_edges.is_empty() {
                    return invalid(
                        "model.skeleton_edges",
                        "is empty but model.skeleton = \"custom\"; list the edges as [a, b] \
                         pairs of joint positions"
                            .into(),
                    );
                }
                if model.skeleton_center >= joints {
                    return invalid(
                        "model.skeleton_center",
                        format!("is {} but there are {joints} joints", model.skeleton_center),
                    );
                }
                match model
                    .skeleton_edges
                    .iter()
                    .find(|edge| edge.iter().any(|&joint| joint >= joints))
                {
                    Some(edge) => invalid(
                        "model.skeleton_edges",
                        format!(
                            "edge {edge:?} names a joint outside 0..{joints} (positions in \
                             data.keypoint_indices)"
                        ),
                    ),
                    None => Ok(()),
                }
            }
        }
    }
}
