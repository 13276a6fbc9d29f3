//! Data parallelism across processes (`mpiexec -n N vidtrain train`, `srun vidtrain train`): every
//! rank holds a replica of the model, trains its shard of each accumulation group (`shards`),
//! sums the group's gradients with the others (`gradients`), and steps. Rank 0 writes the run
//! directory. The processes meet through MPI (`transport`, behind the `mpi` feature); a build
//! without it runs one rank and refuses to start under a launcher, so that N copies never train
//! N unrelated models into one run folder.

mod gradients;
#[cfg(all(feature = "mpi", feature = "cuda"))]
mod nccl;
mod shards;
#[cfg(feature = "mpi")]
mod transport;
#[cfg(feature = "mpi")]
use transport as link;

/// A build without MPI is never connected: one rank, whose collectives return before they get here.
#[cfg(not(feature = "mpi"))]
mod link {
    use super::World;

    pub(super) fn sum<T>(_: &World, _: &str, _: &mut [T]) {
        unreachable!("connected only in builds with MPI")
    }
    pub(super) fn broadcast_bytes(_: &World, _: &str, _: Vec<u8>) -> Vec<u8> {
        unreachable!("connected only in builds with MPI")
    }
    pub(super) fn gather(_: &World, _: &str, _: &[f64]) -> Vec<Vec<f64>> {
        unreachable!("connected only in builds with MPI")
    }
}

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::backend::Backend;
use vidtrain_config::Config;

use crate::{Error, Result};

pub(crate) use gradients::all_reduce_gradients;
pub(crate) use shards::GroupShards;

/// This process's place among the processes that train one model together.
#[derive(Debug, Clone)]
pub struct World {
    rank: usize,
    size: usize,
    /// Rank among the ranks of this machine (the GPU a CUDA rank trains on).
    local_rank: usize,
    /// How long one collective may wait for the other ranks (`trainer.collective_timeout_s`);
    /// read by the MPI transport only.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    timeout: Duration,
    /// Whether the ranks meet through MPI (false: one rank, every collective is a no-op).
    connected: bool,
    /// Nanoseconds spent in collectives (waiting for other ranks included).
    collective_nanos: Arc<AtomicU64>,
    /// Of those, nanoseconds in the gradient all-reduce (the ranks arrive there together, after
    /// the step's loss all-reduce, so this is the transfer itself).
    gradient_nanos: Arc<AtomicU64>,
}

impl Default for World {
    /// One process training alone.
    fn default() -> Self {
        Self {
            rank: 0,
            size: 1,
            local_rank: 0,
            timeout: Duration::from_secs(600),
            connected: false,
            collective_nanos: Arc::default(),
            gradient_nanos: Arc::default(),
        }
    }
}

/// Where a launcher (mpiexec, srun) placed this process, read from the environment it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub size: usize,
}

/// The rank and world size a launcher gave this process: MPICH's and Intel MPI's `PMI_RANK` /
/// `PMI_SIZE` (also Slurm's PMI), Open MPI's `OMPI_COMM_WORLD_*`, Slurm's `SLURM_PROCID` /
/// `SLURM_NTASKS`. `None` when no launcher started it.
pub fn launch_from_environment() -> Option<Launch> {
    launch_from(|name| std::env::var(name).ok())
}

/// [`launch_from_environment`] over any variable lookup.
fn launch_from(variable: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let read = |name: &str| variable(name).and_then(|text| text.trim().parse::<usize>().ok());
    [
        ("PMI_RANK", "PMI_SIZE"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
    ]
    .iter()
    .find_map(|(rank, size)| {
        let launch = Launch {
            rank: read(rank)?,
            size: read(size)?,
        };
        (launch.size >= 1 && launch.rank < launch.size).then_some(launch)
    })
}

/// Ranks a launcher started on this machine (MPICH's `MPI_LOCALNRANKS`, Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, Slurm's `SLURM_NTASKS_PER_NODE`), when it says.
pub fn local_ranks_from_environment() -> Option<usize> {
    [
        "MPI_LOCALNRANKS",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|name| {
        // Slurm writes `4(x2)` for uneven layouts; the leading count is this node's.
        let text = std::env::var(name).ok()?;
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok().filter(|count| *count >= 1)
    })
}

/// The rank among the ranks of this machine, as MPICH (`MPI_LOCALRANKID`), Open MPI and Slurm
/// set it.
#[cfg(feature = "mpi")]
fn local_rank_from_environment() -> Option<usize> {
    [
        "MPI_LOCALRANKID",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// The processes of this run, joined. Dropping it ends MPI (every rank must reach the drop).
pub struct Session {
    world: World,
    #[cfg(feature = "mpi")]
    _universe: Option<::mpi::environment::Universe>,
}

impl Session {
    /// The world to train in.
    pub fn world(&self) -> World {
        self.world.clone()
    }
}

/// Joins the other ranks when a launcher started this process with more than one (MPI is
/// initialised only then, so a plain `vidtrain train` never needs `mpiexec`).
pub fn join(config: &Config) -> Result<Session> {
    join_as(config, launch_from_environment())
}

fn join_as(config: &Config, launch: Option<Launch>) -> Result<Session> {
    let timeout = Duration::from_secs_f64(config.trainer.collective_timeout_s);
    let alone = World {
        timeout,
        ..World::default()
    };
    let Some(launch) = launch.filter(|launch| launch.size > 1) else {
        return Ok(Session {
            world: alone,
            #[cfg(feature = "mpi")]
            _universe: None,
        });
    };
    #[cfg(feature = "mpi")]
    {
        let (universe, rank, size) = transport::initialise()?;
        if (rank, size) != (launch.rank, launch.size) {
            tracing::warn!(
                "the launcher's environment says rank {} of {}, MPI says rank {rank} of {size}; \
                 using MPI's",
                launch.rank,
                launch.size
            );
        }
        Ok(Session {
            world: World {
                rank,
                size,
                local_rank: local_rank_from_environment().unwrap_or(rank),
                connected: size > 1,
                ..alone
            },
            _universe: Some(universe),
        })
    }
    #[cfg(not(feature = "mpi"))]
    Err(Error::Unsupported {
        key: "mpiexec".into(),
        message: format!(
            "this process was started as rank {} of {} but this vidtrain was built without \
             MPI, so every rank would train its own model; rebuild with `cargo build --release \
             -p trainer-cli --features mpi` (needs MPICH: apt-get install mpich libmpich-dev \
             libclang-dev) or run one process",
            launch.rank, launch.size
        ),
    })
}

impl World {
    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks training together.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This rank's index among the ranks of its machine: the GPU it trains on.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// CUDA runs: sums gradients with NCCL on GPU `ordinal` from now on (every rank calls it;
    /// nothing to connect in a build without both CUDA and MPI).
    pub(crate) fn connect_gpus(&self, ordinal: usize) -> Result<()> {
        if !self.connected {
            return Ok(());
        }
        #[cfg(all(feature = "cuda", feature = "mpi"))]
        nccl::connect(self, ordinal)?;
        #[cfg(not(all(feature = "cuda", feature = "mpi")))]
        let _ = ordinal;
        Ok(())
    }

    /// Whether this rank writes the run directory, logs progress and saves checkpoints.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Seconds spent in collectives so far (waiting for slower ranks included).
    pub fn collective_seconds(&self) -> f64 {
        self.collective_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Ends every rank at once with exit code `code` (the error is already reported).
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.connected {
            transport::abort(code);
        }
        std::process::exit(code)
    }

    /// Seconds spent summing gradients so far.
    pub fn gradient_sync_seconds(&self) -> f64 {
        self.gradient_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn timed<T>(&self, run: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let value = run();
        self.collective_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        value
    }

    /// Replaces `values` by their sums over the ranks (elementwise); `what` names the
    /// collective in a timeout message.
    pub(crate) fn sum_f64(&self, what: &str, values: &mut [f64]) {
        if self.connected {
            self.timed(|| link::sum(self, what, values));
        }
    }

    /// Like [`World::sum_f64`] for `f32` values: gradients, whose time is also counted apart.
    pub(crate) fn sum_gradients(&self, what: &str, values: &mut [f32]) {
        if self.connected {
            let started = Instant::now();
            self.timed(|| self.sum_gradient_values(what, values));
            self.gradient_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// NCCL where [`World::connect_gpus`] connected this thread, else MPI.
    fn sum_gradient_values(&self, what: &str, values: &mut [f32]) {
        #[cfg(all(feature = "mpi", feature = "cuda"))]
        if let Some(summed) = nccl::sum(values) {
            if let Err(message) = summed {
                eprintln!(
                    "error: rank {} of {}: {what} over NCCL failed: {message}",
                    self.rank, self.size
                );
                self.abort(1);
            }
            return;
        }
        link::sum(self, what, values);
    }

    /// Rank 0's `bytes` on every rank.
    pub(crate) fn broadcast_bytes(&self, what: &str, bytes: Vec<u8>) -> Vec<u8> {
        if !self.connected {
            return bytes;
        }
        self.timed(|| link::broadcast_bytes(self, what, bytes))
    }

    /// Every rank's `values`, in rank order, on every rank.
    pub(crate) fn gather_f64(&self, what: &str, values: &[f64]) -> Vec<Vec<f64>> {
        if !self.connected {
            return vec![values.to_vec()];
        }
        self.timed(|| link::gather(self, what, values))
    }

    /// Rank 0's text on every rank.
    pub(crate) fn broadcast_text(&self, what: &str, text: &str) -> Result<String> {
        let bytes = self.broadcast_bytes(what, text.as_bytes().to_vec());
        String::from_utf8(bytes).map_err(|error| Error::Distributed {
            rank: self.rank,
            message: format!("rank 0 sent {what} that is not UTF-8: {error}"),
        })
    }
}

/// Rank 0's weights on every rank (broadcast as the bytes of a `.mpk` file), so the replicas
/// start equal whatever each rank initialised, loaded or resumed.
pub(crate) fn replicate_model<B: Backend, M: Module<B>>(
    world: &World,
    model: M,
    device: &B::Device,
) -> Result<M> {
    if world.size() == 1 {
        return Ok(model);
    }
    let failed = |message: String| Error::Distributed {
        rank: world.rank(),
        message: format!("sharing rank 0's initial weights: {message}"),
    };
    let bytes = if world.is_leader() {
        crate::persist::weights::record_bytes::<B, _>(model.clone().into_record())
            .map_err(failed)?
    } else {
        Vec::new()
    };
    let bytes = world.broadcast_bytes("the initial weights' broadcast", bytes);
    let record = crate::persist::weights::record_from_bytes::<B, M::Record>(bytes, device)
        .map_err(failed)?;
    Ok(model.load_record(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(variables: &[(&str, &str)]) -> Option<Launch> {
        launch_from(|name| {
            variables
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn mpich_open_mpi_and_slurm_launches_are_recognised() {
        let expected = Some(Launch { rank: 1, size: 4 });
        assert_eq!(launch(&[("PMI_RANK", "1"), ("PMI_SIZE", "4")]), expected);
        assert_eq!(
            launch(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4")]),
            expected
        );
        assert_eq!(
            launch(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "4")]),
            expected
        );
        assert_eq!(launch(&[]), None);
        // A rank outside the world or a half-set pair is no launch.
        assert_eq!(launch(&[("PMI_RANK", "4"), ("PMI_SIZE", "4")]), None);
        assert_eq!(launch(&[("PMI_RANK", "0")]), None);
    }

    #[test]
    fn one_process_trains_alone_without_mpi() {
        let config = Config::default();
        for launch in [None, Some(Launch { rank: 0, size: 1 })] {
            let world = join_as(&config, launch).unwrap().world();
            assert_eq!(
                (world.rank(), world.size(), world.is_leader()),
                (0, 1, true)
            );
            let mut values = [1.0, 2.0];
            world.sum_f64("a test", &mut values);
            assert_eq!(values, [1.0, 2.0]);
            assert_eq!(world.gather_f64("a test", &[3.0]), vec![vec![3.0]]);
        }
    }

    /// Without MPI, N copies would train N unrelated models into one run folder: refused.
    #[cfg(not(feature = "mpi"))]
    #[test]
    fn a_build_without_mpi_refuses_to_be_one_of_several_ranks() {
        let launch = Some(Launch { rank: 1, size: 2 });
        let Err(error) = join_as(&Config::default(), launch) else {
            panic!("joined without MPI");
        };
        let message = error.to_string();
        assert!(message.contains("rank 1 of 2"), "{message}");
        assert!(message.contains("--features mpi"), "{message}");
    }
}
