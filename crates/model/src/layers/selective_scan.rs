//! Mamba's selective scan (Gu & Dao 2023) in Burn tensor ops, so that it runs on every backend
//! with autodiff:
//!
//! ```text
//! hₜ = exp(Δₜ·A) ⊙ hₜ₋₁ + (Δₜ·xₜ) ⊗ Bₜ        h: [e, n] per sample
//! yₜ = hₜ · Cₜ + D ⊙ xₜ
//! ```
//!
//! The sequence is cut into chunks of `chunk` steps. Inside a chunk the recurrence
//! `hₜ = aₜ·hₜ₋₁ + vₜ` is solved by a Hillis–Steele scan over the pairs (a, v): log₂(chunk)
//! rounds of whole-chunk tensor operations, each combining every step with the one `offset`
//! before it. Only decays `exp(Δ·A)` in (0, 1] and their products are ever formed, so nothing
//! overflows however large Δ grows — unlike the cumulative-sum form `exp(Sₜ)·Σ exp(−Sₛ)·vₛ`, whose
//! `exp(−S)` leaves f32 once a chunk decays by more than e⁸⁸. Chunks are joined by a short
//! sequential carry of the last state.
//!
//! Everything here computes in f32 (the scan inputs are cast up by the caller): the state and
//! its products are where half precision would lose the sequence.

use burn::prelude::*;

/// The per-step inputs of one scan, time-major (so that a chunk of steps is a contiguous slice),
/// all in f32.
#[derive(Debug, Clone)]
pub struct ScanInputs<B: Backend> {
    /// xₜ: `[length, batch, inner]`.
    pub x: Tensor<B, 3>,
    /// Δₜ (after softplus, positive): `[length, batch, inner]`.
    pub delta: Tensor<B, 3>,
    /// Bₜ: `[length, batch, state]`.
    pub b: Tensor<B, 3>,
    /// Cₜ: `[length, batch, state]`.
    pub c: Tensor<B, 3>,
}

impl<B: Backend> ScanInputs<B> {
    /// Steps in the sequence.
    pub fn length(&self) -> usize {
        self.x.dims()[0]
    }

    /// Steps `start .. start + length` alone.
    pub fn narrow(&self, start: usize, length: usize) -> Self {
        Self {
            x: self.x.clone().narrow(0, start, length),
            delta: self.delta.clone().narrow(0, start, length),
            b: self.b.clone().narrow(0, start, length),
            c: self.c.clone().narrow(0, start, length),
        }
    }

    /// The chunks of `chunk` steps that cover the sequence, as `(start, length)`; the last one
    /// is shorter when `chunk` does not divide the length.
    pub fn chunks(&self, chunk: usize) -> Vec<(usize, usize)> {
        let length = self.length();
        let chunk = chunk.max(1);
        (0..length)
            .step_by(chunk)
            .map(|start| (start, chunk.min(length - start)))
            .collect()
    }
}

/// The scan's parameters: A `[inner, state]` (negative) and D `[inner]`, in f32.
#[derive(Debug, Clone)]
pub struct ScanParameters<B: Backend> {
    /// A = −exp(A_log).
    pub a: Tensor<B, 2>,
    /// The skip connection D.
    pub d: Tensor<B, 1>,
}

/// The whole scan: `y` `[length, batch, inner]`.
pub fn selective_scan<B: Backend>(
    inputs: &ScanInputs<B>,
    parameters: &ScanParameters<B>,
    chunk: usize,
) -> Tensor<B, 3> {
    scan_chunks(inputs, parameters, chunk, false).0
}

/// The whole scan, and the states entering each chunk (`None` for the first), for a replay that
/// differentiates the scan one chunk at a time. Run it untracked: besides `y` it keeps only these
/// `[batch, inner, state]` carries.
pub fn selective_scan_with_carries<B: Backend>(
    inputs: &ScanInputs<B>,
    parameters: &ScanParameters<B>,
    chunk: usize,
) -> (Tensor<B, 3>, Vec<Option<Tensor<B, 3>>>) {
    scan_chunks(inputs, parameters, chunk, true)
}

/// Chunk after chunk, each from the last state of the one before; the carries only when asked
/// (an untracked forward would otherwise hold one state per chunk for nothing).
fn scan_chunks<B: Backend>(
    inputs: &ScanInputs<B>,
    parameters: &ScanParameters<B>,
    chunk: usize,
    keep_carries: bool,
) -> (Tensor<B, 3>, Vec<Option<Tensor<B, 3>>>) {
    let mut state = None;
    let mut outputs = Vec::new();
    let mut carries = Vec::new();
    for (start, length) in inputs.chunks(chunk) {
        if keep_carries {
            carries.push(state.clone());
        }
        let (y, last) = scan_chunk(&inputs.narrow(start, length), parameters, state);
        outputs.push(y);
        state = Some(last);
    }
    (Tensor::cat(outputs, 0), carries)
}

/// One chunk from the state `initial` (zero when `None`): its outputs `[steps, batch, inner]`
/// and its last state `[batch, inner, state]`.
///
/// The state-sized tensors are kept as `[steps, batch · inner · state]` rows, so that every
/// slice of steps is contiguous and every product is either elementwise on equal shapes, a
/// row shared by all steps, or a matmul — the shapes the CPU backend runs with SIMD rather than
/// through its element-by-element strided path.
pub fn scan_chunk<B: Backend>(
    inputs: &ScanInputs<B>,
    parameters: &ScanParameters<B>,
    initial: Option<Tensor<B, 3>>,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let [steps, batch, inner] = inputs.x.dims();
    let state_size = parameters.a.dims()[1];
    let rows = steps * batch;
    let width = batch * inner * state_size;
    // aₜ = exp(Δₜ·A): A repeated for every (step, sample), scaled by Δ per channel.
    let a = parameters
        .a
        .clone()
        .reshape([1, inner * state_size])
        .repeat_dim(0, rows)
        .reshape([rows, inner, state_size]);
    let mut decay = (a * inputs.delta.clone().reshape([rows, inner, 1]))
        .exp()
        .reshape([steps, width]);
    // vₜ = (Δₜ·xₜ) ⊗ Bₜ, one outer product per (step, sample).
    let mut state = (inputs.delta.clone() * inputs.x.clone())
        .reshape([rows, inner, 1])
        .matmul(inputs.b.clone().reshape([rows, 1, state_size]))
        .reshape([steps, width]);
    // After the round with `offset`, state[t] holds Σ over the last 2·offset steps up to t of
    // vₛ times the decays between s and t, and decay[t] the product of those 2·offset decays.
    let mut offset = 1;
    while offset < steps {
        let tail = steps - offset;
        let later_decay = decay.clone().narrow(0, offset, tail);
        let carried = state.clone().narrow(0, 0, tail) * later_decay.clone();
        state = Tensor::cat(
            vec![
                state.clone().narrow(0, 0, offset),
                state.narrow(0, offset, tail) + carried,
            ],
            0,
        );
        // The decay products are needed by the next round, and by the carry-in at the end.
        if 2 * offset < steps || initial.is_some() {
            let earlier_decay = decay.clone().narrow(0, 0, tail);
            decay = Tensor::cat(
                vec![decay.narrow(0, 0, offset), earlier_decay * later_decay],
                0,
            );
        }
        offset *= 2;
    }
    if let Some(initial) = initial {
        state = state + decay * initial.reshape([1, width]);
    }
    let last = state
        .clone()
        .narrow(0, steps - 1, 1)
        .reshape([batch, inner, state_size]);
    let read = state
        .reshape([rows, inner, state_size])
        .matmul(inputs.c.clone().reshape([rows, state_size, 1]))
        .reshape([rows, inner]);
    let skip = inputs.x.clone().reshape([rows, inner]) * parameters.d.clone().reshape([1, inner]);
    ((read + skip).reshape([steps, batch, inner]), last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    type B = Autodiff<TestBackend>;

    struct Case {
        inputs: ScanInputs<B>,
        a_log: Tensor<B, 2>,
        d: Tensor<B, 1>,
        upstream: Tensor<B, 3>,
    }

    /// Time-major inputs `[length, batch, ·]`.
    fn case(batch: usize, length: usize, inner: usize, state: usize, delta_scale: f64) -> Case {
        let device = Default::default();
        let random = |shape: [usize; 3], low: f64, high: f64| {
            Tensor::<B, 3>::random(shape, Distribution::Uniform(low, high), &device).require_grad()
        };
        Case {
            inputs: ScanInputs {
                x: random([length, batch, inner], -1.0, 1.0),
                delta: random([length, batch, inner], 0.01, delta_scale),
                b: random([length, batch, state], -1.0, 1.0),
                c: random([length, batch, state], -1.0, 1.0),
            },
            // S4D-real: A = −(1 … state), here perturbed.
            a_log: Tensor::<B, 2>::random([inner, state], Distribution::Uniform(0.0, 2.8), &device)
                .require_grad(),
            d: Tensor::<B, 1>::random([inner], Distribution::Uniform(0.5, 1.5), &device)
                .require_grad(),
            upstream: Tensor::random([length, batch, inner], Distribution::Default, &device),
        }
    }

    /// The recurrence as written, one step at a time.
    fn sequential(inputs: &ScanInputs<B>, parameters: &ScanParameters<B>) -> Tensor<B, 3> {
        let [length, batch, inner] = inputs.x.dims();
        let state_size = parameters.a.dims()[1];
        let mut h = Tensor::<B, 3>::zeros([batch, inner, state_size], &inputs.x.device());
        let mut outputs = Vec::new();
        for t in 0..length {
            let step = |tensor: &Tensor<B, 3>| {
                let width = tensor.dims()[2];
                tensor.clone().narrow(0, t, 1).reshape([batch, width])
            };
            let (x, delta, b, c) = (
                step(&inputs.x),
                step(&inputs.delta),
                step(&inputs.b),
                step(&inputs.c),
            );
            let decay = (delta.clone().unsqueeze_dim::<3>(2)
                * parameters.a.clone().unsqueeze_dim::<3>(0))
            .exp();
            h = decay * h + (delta * x.clone()).unsqueeze_dim::<3>(2) * b.unsqueeze_dim::<3>(1);
            let y = (h.clone() * c.unsqueeze_dim::<3>(1))
                .sum_dim(2)
                .reshape([batch, inner])
                + x * parameters.d.clone().unsqueeze_dim(0);
            outputs.push(y.unsqueeze_dim::<3>(0));
        }
        Tensor::cat(outputs, 0)
    }

    /// Output and the gradients of x, Δ, B, C, A_log and D for `sum(y · upstream)`.
    fn run(
        case: &Case,
        scan: impl Fn(&ScanInputs<B>, &ScanParameters<B>) -> Tensor<B, 3>,
    ) -> Vec<Vec<f32>> {
        let parameters = ScanParameters {
            a: case.a_log.clone().exp().neg(),
            d: case.d.clone(),
        };
        let y = scan(&case.inputs, &parameters);
        let grads = (y.clone() * case.upstream.clone()).sum().backward();
        let values = |tensor: Tensor<
            <B as burn::tensor::backend::AutodiffBackend>::InnerBackend,
            3,
        >| { tensor.into_data().to_vec::<f32>().unwrap() };
        let inputs = &case.inputs;
        vec![
            y.inner().into_data().to_vec::<f32>().unwrap(),
            values(inputs.x.grad(&grads).unwrap()),
            values(inputs.delta.grad(&grads).unwrap()),
            values(inputs.b.grad(&grads).unwrap()),
            values(inputs.c.grad(&grads).unwrap()),
            case.a_log
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            case.d
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        ]
    }

    fn relative(got: &[f32], want: &[f32]) -> f64 {
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
        norm(&mut got.iter().zip(want).map(|(a, b)| (a - b) as f64))
            / norm(&mut want.iter().map(|&x| x as f64))
    }

    #[test]
    fn chunked_scan_equals_the_sequential_recurrence_with_its_gradients() {
        let _rng = crate::rng_lock();
        TestBackend::seed(&Default::default(), 7);
        let case = case(2, 37, 6, 5, 0.5);
        let want = run(&case, sequential);
        // Chunks that divide 37 and ones that do not, down to one step and up to the whole.
        for chunk in [1, 2, 5, 8, 16, 37, 64] {
            let got = run(&case, |inputs, parameters| {
                selective_scan(inputs, parameters, chunk)
            });
            for (name, (got, want)) in ["y", "x", "delta", "B", "C", "A_log", "D"]
                .iter()
                .zip(got.iter().zip(&want))
            {
                let error = relative(got, want);
                assert!(error <= 1e-5, "chunk {chunk}: {name} differs by {error:e}");
            }
        }
    }

    #[test]
    fn steep_decays_stay_finite() {
        let _rng = crate::rng_lock();
        TestBackend::seed(&Default::default(), 8);
        // Δ up to 20 with A down to −16: a chunk of 64 decays by e^−20000, which the
        // cumulative-sum form cannot represent in f32.
        let case = case(1, 70, 3, 4, 20.0);
        let want = run(&case, sequential);
        let got = run(&case, |inputs, parameters| {
            selective_scan(inputs, parameters, 64)
        });
        for (got, want) in got.iter().zip(&want) {
            assert!(got.iter().all(|v| v.is_finite()));
            assert!(relative(got, want) <= 1e-5);
        }
    }
}
