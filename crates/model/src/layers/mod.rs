//! The layers the backbones are built from: convolutions, normalisation, dropout, attention (encoder
//! blocks), Mamba blocks and their selective scan, the seed's convolution stem and graph convolution over a skeleton. Each layer's
//! activation-memory rule for the plan sits in `crate::summary`, keyed by [`crate::LayerRole`].

pub mod batch_norm;
pub mod conv3d;
mod conv_columns;
mod conv_direct;
pub mod conv_gemm;
mod conv_winograd;
mod conv_winograd_temporal;
pub mod dropout;
pub mod encoder;
pub mod gelu;
pub mod graph;
mod im2col;
pub mod mamba;
pub(crate) mod mean_pool;
pub mod norm_relu_host;
pub mod relu;
pub mod selective_scan;
pub mod stem;
pub mod swap_axes;
