//! MPI (rsmpi over MPICH or any MPI 3 library): joining the ranks, and the collectives the
//! trainer needs. Every collective is started non-blocking and polled, so that a rank whose
//! peers died or hang gives up after `trainer.collective_timeout_s` and ends them all, instead
//! of waiting for ever in a blocking call.

use std::time::{Duration, Instant};

use mpi::Count;
use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::request::{Request, Scope, scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::World;
use crate::{Error, Result};

/// Exit code of every rank when a collective timed out (as `timeout(1)` uses).
const TIMED_OUT_EXIT_CODE: i32 = 124;

/// Initialises MPI; returns it with this process's rank and the world size.
pub(super) fn initialise() -> Result<(Universe, usize, usize)> {
    let universe = mpi::initialize().ok_or_else(|| Error::Unsupported {
        key: "mpiexec".into(),
        message: "MPI was initialised twice in one process".into(),
    })?;
    let world = universe.world();
    Ok((universe, world.rank() as usize, world.size() as usize))
}

fn communicator() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

/// Ends every rank (MPI_Abort), after a pause in which the launcher forwards what this rank just
/// printed: MPICH's mpiexec tears down its output forwarding with the job, and without the pause
/// the error message was lost in about one run of three.
pub(super) fn abort(code: i32) -> ! {
    std::thread::sleep(Duration::from_millis(500));
    communicator().abort(code)
}

/// Polls `request` until it completes; past the timeout, reports and ends every rank.
fn wait<'a, D: ?Sized, S: Scope<'a>>(world: &World, what: &str, mut request: Request<'a, D, S>) {
    let started = Instant::now();
    let mut polls = 0u32;
    loop {
        match request.test() {
            Ok(_) => return,
            Err(pending) => request = pending,
        }
        let waited = started.elapsed();
        if waited >= world.timeout {
            eprintln!(
                "error: rank {} of {}: waited {:.0} s for the other ranks in {what} \
                 (trainer.collective_timeout_s = {}); a rank has died or hangs, ending every rank",
                world.rank,
                world.size,
                waited.as_secs_f64(),
                world.timeout.as_secs_f64()
            );
            abort(TIMED_OUT_EXIT_CODE);
        }
        // Yield first (a step's all-reduce usually completes within microseconds), then sleep
        // so that a rank waiting for a slower one leaves the cores to it (measured on 2 cores:
        // polling without sleeping for 20 ms made training 8 % slower).
        polls += 1;
        if polls < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Elementwise sums over the ranks, in place.
pub(super) fn sum<T: Equivalence + Copy>(world: &World, what: &str, values: &mut [T]) {
    let send = values.to_vec();
    let comm = communicator();
    scope(|scope| {
        let request =
            comm.immediate_all_reduce_into(scope, &send[..], &mut *values, SystemOperation::sum());
        wait(world, what, request);
    });
}

/// Rank 0's bytes on every rank (length first, then the bytes).
pub(super) fn broadcast_bytes(world: &World, what: &str, bytes: Vec<u8>) -> Vec<u8> {
    let comm = communicator();
    let root = comm.process_at_rank(0);
    let mut length = [bytes.len() as u64];
    scope(|scope| {
        wait(
            world,
            what,
            root.immediate_broadcast_into(scope, &mut length[..]),
        )
    });
    let mut buffer = bytes;
    buffer.resize(length[0] as usize, 0);
    scope(|scope| {
        wait(
            world,
            what,
            root.immediate_broadcast_into(scope, &mut buffer[..]),
        )
    });
    buffer
}

/// Every rank's values on every rank, in rank order.
pub(super) fn gather(world: &World, what: &str, values: &[f64]) -> Vec<Vec<f64>> {
    let comm = communicator();
    let mine = [values.len() as Count];
    let mut counts = vec![0 as Count; world.size];
    scope(|scope| {
        wait(
            world,
            what,
            comm.immediate_all_gather_into(scope, &mine[..], &mut counts[..]),
        )
    });
    let offsets: Vec<Count> = counts
        .iter()
        .scan(0, |next, &count| {
            let offset = *next;
            *next += count;
            Some(offset)
        })
        .collect();
    let total = counts.iter().map(|&count| count as usize).sum();
    let mut all = vec![0f64; total];
    {
        let mut partition = PartitionMut::new(&mut all[..], &counts[..], &offsets[..]);
        scope(|scope| {
            wait(
                world,
                what,
                comm.immediate_all_gather_varcount_into(scope, values, &mut partition),
            )
        });
    }
    let mut rows = Vec::with_capacity(world.size);
    let mut rest = all.as_slice();
    for &count in &counts {
        let (head, tail) = rest.split_at(count as usize);
        rows.push(head.to_vec());
        rest = tail;
    }
    rows
}
