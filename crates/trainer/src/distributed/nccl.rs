//! NCCL for the gradient all-reduce of CUDA runs, the Horovod pattern: MPI starts the ranks and
//! hands rank 0's NCCL id to the others, NCCL sums the gradients over NVLink/InfiniBand.
//!
//! The bucket is staged: Burn's flat bucket is read back to the host (as on the MPI path), copied
//! to a device buffer NCCL owns, summed in place and read back. Summing Burn's own device buffer
//! would save the two copies but needs the raw pointer of a cubecl allocation and cubecl's stream,
//! which Burn 0.21 does not expose safely. NCCL calls have no timeout: the step's MPI loss
//! all-reduce just before (which has one) is where a dead rank is noticed.

use std::cell::RefCell;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::World;
use crate::{Error, Result};

/// This rank's NCCL communicator and the stream it runs on.
struct Ring {
    comm: Comm,
    stream: Arc<CudaStream>,
}

thread_local! {
    /// Set by [`connect`] on the thread that trains; NCCL handles are not `Send`.
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// Joins the ranks' NCCL communicator on GPU `ordinal` (every rank calls it).
pub(super) fn connect(world: &World, ordinal: usize) -> Result<()> {
    let failed = |message: String| Error::Distributed {
        rank: world.rank(),
        message: format!("NCCL on GPU {ordinal}: {message}"),
    };
    let id_bytes: Vec<u8> = if world.is_leader() {
        let id = guarded(Id::new).map_err(&failed)?;
        id.internal().iter().map(|&byte| byte as u8).collect()
    } else {
        Vec::new()
    };
    let id_bytes = world.broadcast_bytes("the NCCL id", id_bytes);
    let internal: [core::ffi::c_char; 128] = std::array::from_fn(|index| {
        id_bytes.get(index).copied().unwrap_or_default() as core::ffi::c_char
    });
    let context = CudaContext::new(ordinal).map_err(|error| failed(format!("{error:?}")))?;
    let stream = context.default_stream();
    let comm = guarded(|| {
        Comm::from_rank(
            Arc::clone(&stream),
            world.rank(),
            world.size(),
            Id::uninit(internal),
        )
    })
    .map_err(&failed)?;
    RING.with(|ring| *ring.borrow_mut() = Some(Ring { comm, stream }));
    Ok(())
}

/// Runs an NCCL call that may panic when the library cannot be loaded (cudarc loads it at first
/// use), turning both the panic and the error into a message.
fn guarded<T, E: std::fmt::Debug>(
    call: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{error:?}")),
        Err(_) => Err(
            "libnccl could not be loaded; install NCCL (libnccl2) or put the \
                       folder of libnccl.so.2 on LD_LIBRARY_PATH"
                .into(),
        ),
    }
}

/// Sums `values` over the ranks with NCCL when this thread is connected; `None` when it is not
/// (the caller then sums over MPI).
pub(super) fn sum(values: &mut [f32]) -> Option<std::result::Result<(), String>> {
    RING.with(|ring| {
        let ring = ring.borrow();
        let ring = ring.as_ref()?;
        let summed = (|| {
            let mut buffer = ring
                .stream
                .clone_htod(values)
                .map_err(|e| format!("{e:?}"))?;
            ring.comm
                .all_reduce_in_place(&mut buffer, &ReduceOp::Sum)
                .map_err(|e| format!("{e:?}"))?;
            ring.stream
                .memcpy_dtoh(&buffer, values)
                .map_err(|e| format!("{e:?}"))?;
            ring.stream.synchronize().map_err(|e| format!("{e:?}"))
        })();
        Some(summed)
    })
}
