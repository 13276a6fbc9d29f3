//! Project automation, run as `cargo xtask <command>`. A bare `cargo xtask` lists the commands.
//!
//! Kept free of Burn so that it builds in seconds.

mod bench;
mod cpu_bench;
mod ddp_bench;
mod optimizer_bench;
mod plan_bench;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

/// Commands: name, one-line description.
const COMMANDS: [(&str, &str); 3] = [
    (
        "ci",
        "fmt check, clippy -D warnings, cuda type-check, the whole test suite (what CI runs)",
    ),
    (
        "bench",
        "`bench data`: pipeline RSS and speed on long 720p video; `bench recompute`: RSS per model.checkpoint mode; `bench tokens`: VideoMamba vs ViViT cost at 1x/2x/4x tokens; `bench plan`: vidtrain plan vs measured peak RSS; `bench cpu`: bench-model vs PyTorch eager on this CPU, ratio table; `bench gpu`: CUDA binary + GPU script (vs PyTorch); `bench ddp`: demo samples/s with 1 and 2 MPI ranks, collectives' share; `bench optimizer`: r3d_18's Adam state in f32/bf16/8bit vs PyTorch Adam and bitsandbytes Adam8bit",
    ),
    (
        "demo-data",
        "generate the demo dataset: cargo xtask demo-data --out DIR [vidtrain demo-data flags]",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("demo-data") => demo_data(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("data") => bench::data(),
            Some("recompute") => bench::recompute(),
            Some("tokens") => bench::tokens(),
            Some("plan") => plan_bench::plan(),
            Some("gpu") => bench::gpu(),
            Some("cpu") => cpu_bench::cpu(),
            Some("ddp") => ddp_bench::ddp(),
            Some("optimizer") => optimizer_bench::optimizer(),
            _ => {
                eprintln!(
                    "usage: cargo xtask bench data|recompute|tokens|plan|cpu|gpu|ddp|optimizer"
                );
                return ExitCode::from(2);
            }
        },
        Some(other) => {
            eprintln!("unknown command `{other}`\n");
            print_commands();
            return ExitCode::from(2);
        }
        None => {
            print_commands();
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_commands() {
    println!("usage: cargo xtask <command>\n\ncommands:");
    for (name, description) in COMMANDS {
        println!("  {name:<10} {description}");
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs `command` to its end; `what` names it in the errors (how to install it, where useful).
pub(crate) fn run_checked(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the release `vidtrain` with `features` (none: `""`); benches run that binary.
pub(crate) fn build_vidtrain(features: &str) -> anyhow::Result<()> {
    let mut args = vec!["build", "--release", "-p", "trainer-cli"];
    if !features.is_empty() {
        args.extend(["--features", features]);
    }
    cargo(&args)
}

pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with(args, &[])
}

/// `cargo ARGS` with environment variables set for it (and the processes it starts).
fn cargo_with(args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("$ cargo {}", args.join(" "));
    let started = std::time::Instant::now();
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(project_root())
        .status()
        .with_context(|| format!("running {cargo}"))?;
    eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Everything CI checks. Tests run in release: Burn's CPU backend trains 10–50× faster there,
/// and the release build is shared with the main job.
fn ci() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The data-parallel build (MPI) and the device paths on wgpu (a Vulkan driver: lavapipe,
    // Mesa's software one, where there is no GPU) are tested below.
    require_mpi()?;
    require_vulkan()?;
    cargo(&[
        "clippy",
        "-p",
        "vidtrain-trainer",
        "-p",
        "trainer-cli",
        "--all-targets",
        "--features",
        DEVICE_TEST_FEATURES,
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["check", "-p", "trainer-cli", "--features", "cuda"])?;
    cargo(&["check", "-p", "trainer-cli", "--features", "cuda,mpi"])?;
    // The PyTorch equality tests' fixtures: reference models with random weights, their state
    // dicts, inputs and logits (bench/reference_fixtures.py, torch from PyPI).
    let python = cpu_bench::torch_python()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    let fixtures = target.join("torch-fixtures");
    run_checked(
        Command::new(&python)
            .arg(project_root().join("bench/reference_fixtures.py"))
            .arg(&fixtures),
        "bench/reference_fixtures.py",
    )?;
    let env = [
        ("VIDTRAIN_TORCH_FIXTURES", fixtures.as_path()),
        // The e2e test that reads TensorBoard files back with TensorBoard's own reader.
        ("VIDTRAIN_PYTHON", python.as_path()),
    ];
    // With MPI, so that the e2e tests run two ranks under `mpiexec`, and with wgpu on Vulkan, so
    // that they train on a device (tests/e2e/device.rs).
    let tests = cargo_with(
        &[
            "test",
            "--release",
            "--workspace",
            "--features",
            DEVICE_TEST_FEATURES,
            "--no-fail-fast",
        ],
        &env,
    );
    // The tests that need those fixtures (marked ignored for a plain `cargo test`). Selected
    // from the whole workspace, so that features unify as in the run above and nothing is
    // rebuilt.
    let with_fixtures = cargo_with(
        &[
            "test",
            "--release",
            "--workspace",
            "--features",
            DEVICE_TEST_FEATURES,
            "--test",
            "pytorch_equality",
            "--test",
            "e2e",
            "--",
            "--ignored",
        ],
        &env,
    );
    tests.and(with_fixtures)
}

/// The features of the test runs: data parallel over MPI and Burn's wgpu backend on Vulkan.
const DEVICE_TEST_FEATURES: &str = "trainer-cli/mpi,trainer-cli/vulkan";

/// A Vulkan loader and driver for the device e2e tests: a GPU's own, or Mesa's lavapipe.
fn require_vulkan() -> anyhow::Result<()> {
    let loader = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .any(|dir| Path::new(dir).join("libvulkan.so.1").exists());
    let driver = std::env::var_os("VK_ICD_FILENAMES").is_some()
        || ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .flatten()
            .any(|entry| entry.path().extension().is_some_and(|ext| ext == "json"));
    if loader && driver {
        return Ok(());
    }
    bail!(
        "the device tests need a Vulkan driver: apt-get install libvulkan1 mesa-vulkan-drivers \
         (lavapipe, a software GPU; .ci/run installs it)"
    )
}

/// The MPI library and launcher the `mpi` feature builds against and its tests run under.
pub(crate) fn require_mpi() -> anyhow::Result<()> {
    let found = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    };
    if found("mpicc") && found("mpiexec") {
        return Ok(());
    }
    bail!(
        "the data-parallel tests need MPI: apt-get install mpich libmpich-dev libclang-dev \
         (.ci/run installs them)"
    )
}

fn demo_data(args: &[String]) -> anyhow::Result<()> {
    let mut full = vec!["run", "--release", "-p", "trainer-cli", "--", "demo-data"];
    full.extend(args.iter().map(String::as_str));
    cargo(&full)
}

#[cfg(test)]
mod tidy {
    //! Repository checks that run with the test suite.

    use super::project_root;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }

    fn all_rust_files() -> Vec<PathBuf> {
        let mut files = Vec::new();
        for folder in ["crates", "xtask", "tests"] {
            rust_files(&project_root().join(folder), &mut files);
        }
        assert!(files.len() > 10, "found only {} files", files.len());
        files
    }

    #[test]
    fn every_rust_file_starts_with_a_module_doc() {
        let missing: Vec<_> = all_rust_files()
            .into_iter()
            .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//!"))
            .collect();
        assert!(
            missing.is_empty(),
            "files without a leading //! doc: {missing:?}"
        );
    }

    #[test]
    fn no_debug_macros_are_left() {
        let needle = ["dbg", "!("].concat();
        let offending: Vec<_> = all_rust_files()
            .into_iter()
            .filter(|path| std::fs::read_to_string(path).unwrap().contains(&needle))
            .collect();
        assert!(offending.is_empty(), "{needle} left in {offending:?}");
    }

    /// Repository paths a reader is sent to from `README.md` and `docs/` (in backticks or as
    /// link targets) exist: a renamed file otherwise leaves the docs pointing at nothing.
    /// Paths under build outputs (`target/`, `bench/gpu/bin/`, made by `cargo xtask bench gpu`)
    /// are not in a checkout and are not checked.
    #[test]
    fn every_path_the_docs_cite_exists() {
        let root = project_root();
        let mut documents = vec![root.join("README.md")];
        let mut folders = vec![root.join("docs")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|ext| ext == "md") {
                    documents.push(path);
                }
            }
        }
        let cited_roots = [
            "crates/", "docs/", "bench/", "configs/", "xtask/", "tests/", ".ci/", "shared/",
        ];
        let built = ["target/", "bench/gpu/bin/"];
        let mut missing = Vec::new();
        for document in &documents {
            let text = std::fs::read_to_string(document).unwrap();
            let in_backticks = text.split('`').skip(1).step_by(2);
            let link_targets = text
                .split("](")
                .skip(1)
                .filter_map(|rest| rest.split(')').next());
            for cited in in_backticks.chain(link_targets) {
                let path = cited
                    .trim_end_matches(['.', ',', ';', ':'])
                    .split(['#', ' '])
                    .next()
                    .unwrap_or_default();
                let relative = path.trim_start_matches("../");
                if !cited_roots
                    .iter()
                    .any(|prefix| relative.starts_with(prefix))
                    || built.iter().any(|prefix| relative.starts_with(prefix))
                    || relative.contains(['*', '<', '{', '…'])
                {
                    continue;
                }
                // `file.rs:120` cites a line; `../x` is relative to the document (a link).
                let file = path.split(':').next().unwrap_or_default();
                let resolved = if path.starts_with("../") {
                    document.parent().unwrap().join(file)
                } else {
                    root.join(file)
                };
                if !resolved.exists() {
                    missing.push(format!(
                        "{}: {cited}",
                        document.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "cited paths that do not exist: {missing:#?}"
        );
    }

    #[test]
    fn crates_depend_only_downwards() {
        // config ← data, model, memutil ← trainer ← trainer-cli; testkit (tests only) ← data
        let allowed: &[(&str, &[&str])] = &[
            ("vidtrain-config", &[]),
            ("vidtrain-data", &["vidtrain-config"]),
            ("vidtrain-model", &["vidtrain-config"]),
            ("vidtrain-memutil", &["vidtrain-config"]),
            (
                "vidtrain-trainer",
                &[
                    "vidtrain-config",
                    "vidtrain-data",
                    "vidtrain-model",
                    "vidtrain-memutil",
                ],
            ),
            ("vidtrain-testkit", &["vidtrain-config", "vidtrain-data"]),
        ];
        for (package, deps) in allowed {
            let folder = package.trim_start_matches("vidtrain-");
            let manifest = std::fs::read_to_string(
                project_root()
                    .join("crates")
                    .join(folder)
                    .join("Cargo.toml"),
            )
            .unwrap();
            let mut in_dev_dependencies = false;
            for line in manifest.lines() {
                if line.starts_with('[') {
                    in_dev_dependencies = line.contains("dev-dependencies");
                }
                if let Some(dependency) = line.split(['.', ' ', '=']).next()
                    && dependency.starts_with("vidtrain-")
                {
                    // The test fixtures may be a dev-dependency of any crate, nothing else.
                    let allowed = if in_dev_dependencies {
                        dependency == "vidtrain-testkit" || deps.contains(&dependency)
                    } else {
                        deps.contains(&dependency)
                    };
                    assert!(
                        allowed,
                        "{package} depends on {dependency}, which the design does not allow"
                    );
                }
            }
        }
    }
}
