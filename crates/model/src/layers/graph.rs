//! Skeleton graphs and the spatial graph convolution of ST-GCN (Yan et al. 2018), as mmaction2
//! lays them out: a joint layout's edges, the K = 3 spatial-partition adjacency matrices (self
//! links, edges towards the centre, edges away from it, each column-normalised as A·D⁻¹), and
//! `unit_gcn`: a 1×1 convolution to K·C' channels, then each partition's channels aggregated over
//! the graph with its adjacency scaled by a learnable edge importance.

use burn::module::{Initializer, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;

use crate::layers::batch_norm::batch_norm_relu_channels;
use crate::layers::conv_gemm::ConvGeometry;
use crate::layers::conv3d::convolve_on_cpu;
use crate::layers::swap_axes::swap_middle_axes;
use crate::precision::{like, product};

/// A skeleton: joint count and undirected edges between joint positions (positions in the
/// keypoint array after `data.keypoint_indices`), and the centre joint the spatial partition
/// measures distance from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skeleton {
    /// Joints per frame.
    pub joints: usize,
    /// Edges `[a, b]` between joint positions.
    pub edges: Vec<[usize; 2]>,
    /// The centre joint.
    pub center: usize,
}

/// SAM-3D-body's 70 keypoints (MHR70) that the seed keeps, in `data.keypoint_indices` order:
/// head 0–4, shoulders 5–6, right-hand fingers 21–40 and wrist 41, left-hand fingers 42–61 and
/// wrist 62, acromions 67–68, neck 69.
const SAM3D_BODY_52_KEPT: [usize; 52] = [
    0, 1, 2, 3, 4, 5, 6, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38,
    39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62,
    67, 68, 69,
];

impl Skeleton {
    /// The seed's 52 SAM-3D-body joints. Edges in MHR70 numbering: the face (nose–eyes–ears),
    /// neck to nose, neck to each acromion and acromion to shoulder; each shoulder to its wrist (the elbows are not
    /// kept); each finger as a chain from the wrist (MHR70 lists a finger tip first: tip, 3, 2,
    /// base). Centre: the neck.
    pub fn sam3d_body_52() -> Self {
        let mut edges: Vec<[usize; 2]> = vec![
            [0, 1],
            [0, 2],
            [1, 3],
            [2, 4],
            [69, 0],
            [69, 67],
            [69, 68],
            [67, 5],
            [68, 6],
            [5, 62], // left shoulder – left wrist
            [6, 41], // right shoulder – right wrist
        ];
        for (wrist, first_finger) in [(41, 21), (62, 42)] {
            for finger in 0..5 {
                let tip = first_finger + 4 * finger;
                edges.extend([[wrist, tip + 3], [tip + 3, tip + 2], [tip + 2, tip + 1]]);
                edges.push([tip + 1, tip]);
            }
        }
        let position = |joint: usize| {
            SAM3D_BODY_52_KEPT
                .iter()
                .position(|&kept| kept == joint)
                .expect("every edge joins kept joints")
        };
        Self {
            joints: SAM3D_BODY_52_KEPT.len(),
            edges: edges
                .into_iter()
                .map(|[a, b]| [position(a), position(b)])
                .collect(),
            center: position(69),
        }
    }

    /// COCO's 17 body keypoints, with mmaction2's edges and the nose as centre.
    pub fn coco17() -> Self {
        Self {
            joints: 17,
            edges: vec![
                [15, 13],
                [13, 11],
                [16, 14],
                [14, 12],
                [11, 5],
                [12, 6],
                [9, 7],
                [7, 5],
                [10, 8],
                [8, 6],
                [5, 0],
                [6, 0],
                [1, 0],
                [3, 1],
                [2, 0],
                [4, 2],
            ],
            center: 0,
        }
    }

    /// Hops from the centre to every joint (`usize::MAX` for joints not connected to it).
    fn hops_from_center(&self) -> Vec<usize> {
        let mut hops = vec![usize::MAX; self.joints];
        hops[self.center] = 0;
        let mut frontier = vec![self.center];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for joint in frontier {
                for &[a, b] in &self.edges {
                    let other = if a == joint {
                        b
                    } else if b == joint {
                        a
                    } else {
                        continue;
                    };
                    if hops[other] == usize::MAX {
                        hops[other] = hops[joint] + 1;
                        next.push(other);
                    }
                }
            }
            frontier = next;
        }
        hops
    }

    /// The three spatial-partition adjacency matrices `[3, V, V]`, row-major, as mmaction2's
    /// `Graph(mode='spatial')` makes them: `A[k][j][i]` links joint `i` to joint `j`; partition 0
    /// the self links, 1 the edges from a joint to its neighbour nearer the centre ("inward"), 2
    /// the reverse; each of 1 and 2 multiplied by D⁻¹ of its column sums.
    pub fn spatial_adjacency(&self) -> Vec<f32> {
        let v = self.joints;
        let hops = self.hops_from_center();
        let mut inward = vec![0f32; v * v];
        let mut outward = vec![0f32; v * v];
        for &[a, b] in &self.edges {
            // Inward runs from the joint farther from the centre to the nearer one.
            let (far, near) = if hops[a] >= hops[b] { (a, b) } else { (b, a) };
            inward[near * v + far] = 1.0;
            outward[far * v + near] = 1.0;
        }
        let normalize = |matrix: &mut [f32]| {
            for column in 0..v {
                let sum: f32 = (0..v).map(|row| matrix[row * v + column]).sum();
                if sum > 0.0 {
                    for row in 0..v {
                        matrix[row * v + column] /= sum;
                    }
                }
            }
        };
        normalize(&mut inward);
        normalize(&mut outward);
        let mut adjacency = vec![0f32; 3 * v * v];
        for joint in 0..v {
            adjacency[joint * v + joint] = 1.0;
        }
        adjacency[v * v..2 * v * v].copy_from_slice(&inward);
        adjacency[2 * v * v..].copy_from_slice(&outward);
        adjacency
    }

    /// Checks that every edge joins two joints of the layout.
    pub fn check(&self) -> Result<(), String> {
        if self.center >= self.joints {
            return Err(format!(
                "the centre joint {} is not one of the {} joints",
                self.center, self.joints
            ));
        }
        match self
            .edges
            .iter()
            .find(|edge| edge.iter().any(|&joint| joint >= self.joints))
        {
            Some(edge) => Err(format!(
                "edge {edge:?} names a joint outside 0..{}",
                self.joints
            )),
            None => Ok(()),
        }
    }
}

/// Configuration of a [`GraphConv`].
#[derive(Config, Debug)]
pub struct GraphConvConfig {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Joints.
    pub joints: usize,
}

impl GraphConvConfig {
    /// Builds the layer over `adjacency` (`[3, V, V]`, row-major, from
    /// [`Skeleton::spatial_adjacency`]); edge importance starts at one, like mmaction2's.
    pub fn init<B: Backend>(&self, adjacency: &[f32], device: &B::Device) -> GraphConv<B> {
        let v = self.joints;
        let partitions = adjacency.len() / (v * v);
        let bound = 1.0 / (self.channels_in as f64).sqrt();
        GraphConv {
            conv: PointwiseConv {
                weight: Initializer::KaimingUniform {
                    gain: 1.0 / 3f64.sqrt(),
                    fan_out_only: false,
                }
                .init_with(
                    [self.channels_out * partitions, self.channels_in, 1, 1],
                    Some(self.channels_in),
                    None,
                    device,
                ),
                bias: Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init([self.channels_out * partitions], device),
            },
            adjacency: Param::from_tensor(Tensor::from_data(
                TensorData::new(adjacency.to_vec(), [partitions, v, v]),
                device,
            ))
            .set_require_grad(false),
            importance: Initializer::Ones.init([partitions, v, v], device),
            bn: BatchNormConfig::new(self.channels_out).init(device),
        }
    }
}

/// A 1×1 convolution over `[n, c, t, v]` (mmaction2 `nn.Conv2d(c_in, c_out, 1)`): its weight
/// keeps PyTorch's `[out, in, 1, 1]` shape so state dicts load as they are.
#[derive(Module, Debug)]
pub struct PointwiseConv<B: Backend> {
    /// `[out, in, 1, 1]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> PointwiseConv<B> {
    /// # Shapes
    /// - input: `[n, c_in, t, v]`
    /// - output: `[n, c_out, t, v]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c_in, t, v] = x.dims();
        let c_out = self.weight.dims()[0];
        // On the CPU vidtrain's convolution kernel over `[n, c, t, 1, v]` (in training one
        // autodiff op, which can keep its input in `model.activation_bits`): Burn's bias add
        // broadcast over `[n, c_out, t·v]` walked a strided iterator per element, 16 % of an
        // ST-GCN step forward and backward.
        let geometry = ConvGeometry {
            input: [n, c_in, t, 1, v],
            channels_out: c_out,
            kernel: [1, 1, 1],
            stride: [1, 1, 1],
            padding: [0, 0, 0],
            output: [t, 1, v],
        };
        let weight = self.weight.val().reshape([c_out, c_in, 1, 1, 1]);
        let bias = Some(self.bias.val());
        if let Some(output) =
            convolve_on_cpu(x.clone().reshape(geometry.input), weight, bias, geometry)
        {
            return output.reshape([n, c_out, t, v]);
        }
        let weight = like(self.weight.val(), &x).reshape([1, c_out, c_in]);
        let bias = like(self.bias.val(), &x).reshape([1, c_out, 1]);
        // [1, c_out, c_in] · [n, c_in, t·v]: a batched matmul over contiguous rows.
        (weight.matmul(x.reshape([n, c_in, t * v])) + bias).reshape([n, c_out, t, v])
    }
}

/// mmaction2's `unit_gcn` with `adaptive='importance'`: 1×1 conv to K·C' channels, aggregation
/// over the graph (`einsum('nkctv,kvw->nctw')` with `A ⊙ importance`), BatchNorm, ReLU.
#[derive(Module, Debug)]
pub struct GraphConv<B: Backend> {
    /// mmaction2 `conv`.
    pub conv: PointwiseConv<B>,
    /// mmaction2 `A` (a constant buffer).
    pub adjacency: Param<Tensor<B, 3>>,
    /// mmaction2 `PA`, the learnable edge importance.
    pub importance: Param<Tensor<B, 3>>,
    /// mmaction2 `bn`.
    pub bn: BatchNorm<B>,
}

impl<B: Backend> GraphConv<B> {
    /// # Shapes
    /// - input: `[n, c_in, t, v]`
    /// - output: `[n, c_out, t, v]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, _, t, v] = x.dims();
        let x = self.conv.forward(x); // [n, k·c', t, v]
        let adjacency = self.adjacency.val() * self.importance.val(); // [k, v, w]
        let partitions = adjacency.dims()[0];
        let channels = x.dims()[1] / partitions;
        // One product with the partitions in its inner dimension, `[n, c'·t, k·v] · [k·v, w]`:
        // a product per partition summed over them took the sum's backward through a strided
        // broadcast (6 % of an ST-GCN step) and four partition-wide values. The partitions move next
        // to the joints in one parallel copy (`swap_axes`). On the CPU in
        // training it is the linear layers' op (`precision::product`).
        let x = swap_middle_axes(x.reshape([n, partitions, channels * t, v])).reshape([
            n,
            channels * t,
            partitions * v,
        ]);
        let aggregated = product(x, adjacency.reshape([partitions * v, v])) // [n, c'·t, w]
            .reshape([n, channels, t, v]);
        batch_norm_relu_channels(&self.bn, aggregated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_layout_is_one_connected_tree_over_its_52_joints() {
        let skeleton = Skeleton::sam3d_body_52();
        skeleton.check().unwrap();
        assert_eq!(skeleton.joints, 52);
        assert_eq!(
            skeleton.edges.len(),
            51,
            "a tree over 52 joints has 51 edges"
        );
        assert!(
            skeleton.hops_from_center().iter().all(|&h| h != usize::MAX),
            "every joint reaches the neck"
        );
        let coco = Skeleton::coco17();
        coco.check().unwrap();
        assert!(coco.hops_from_center().iter().all(|&h| h != usize::MAX));
    }

    /// mmaction2's adjacency for COCO-17, entry by entry for a few joints: the left shoulder (5)
    /// has the nose (0) nearer the centre and the left elbow (7) and hip (11) farther out.
    #[test]
    fn spatial_partitions_are_column_normalised_inward_and_outward_edges() {
        let skeleton = Skeleton::coco17();
        let v = 17;
        let a = skeleton.spatial_adjacency();
        let at = |k: usize, row: usize, column: usize| a[k * v * v + row * v + column];
        assert_eq!(at(0, 5, 5), 1.0);
        // Inward: elbow → shoulder; column 7 has one entry.
        assert_eq!(at(1, 5, 7), 1.0);
        // Outward: shoulder → elbow and shoulder → hip; column 5 sums to one.
        assert_eq!(at(2, 7, 5), 0.5);
        assert_eq!(at(2, 11, 5), 0.5);
        for k in 1..3 {
            for column in 0..v {
                let sum: f32 = (0..v).map(|row| at(k, row, column)).sum();
                assert!(
                    sum == 0.0 || (sum - 1.0).abs() < 1e-6,
                    "k {k} column {column}"
                );
            }
        }
    }
}
