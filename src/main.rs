//! `tdlc`, the command-line compiler.
//!
//! Exit codes (scripts rely on them): 0 success; 1 user error (bad source,
//! bad input, bad command-line arguments); 2 internal error (a bug in tdlc:
//! it prints "internal error", the stage, and how to report it).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tdl::frontend::diag::{emit_stderr, line_col};
use tdl::inputs::{assemble_inputs, InputPlan, InputSource};
use tdl::ir::VerifiedGraph;
use tdl::reference::{npy, Limits, Tensor};
use tdl::{CheckError, Checked};

mod bench;

/// Source files larger than this are refused, so no input allocates without
/// bound.
const MAX_SOURCE_BYTES: u64 = 16 << 20;

thread_local! {
    static STAGE: Cell<&'static str> = const { Cell::new("start-up") };
}

fn stage(name: &'static str) {
    STAGE.with(|s| s.set(name));
}

#[derive(Parser)]
#[command(name = "tdlc", version, about = "tdlc: a compiler for attention and sparsity", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and type-check a file; print each graph's signature.
    Check { file: PathBuf },
    /// Run a graph on inputs and print (or save) its results.
    Run(RunArgs),
    /// Print a file in canonical format (idempotent; keeps comments).
    Fmt {
        file: PathBuf,
        /// Rewrite the file in place instead of printing it.
        #[arg(long, short = 'w')]
        write: bool,
        /// Print nothing; exit 1 if the file is not formatted.
        #[arg(long, conflicts_with = "write")]
        check: bool,
    },
    /// Compile a file and print an intermediate stage.
    Compile {
        file: PathBuf,
        /// The stage to print.
        #[arg(long, value_enum, default_value = "graph")]
        emit: Emit,
        /// Only this graph.
        #[arg(long)]
        graph: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        passes: PassArgs,
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Explain what the pass pipeline did: fused attentions, rules, costs.
    Explain {
        file: PathBuf,
        /// Only this graph.
        #[arg(long)]
        graph: Option<String>,
        /// Print JSON (a stable shape, documented in docs/passes.md).
        #[arg(long)]
        json: bool,
        /// Size a symbol for the tile report: T=4096. Repeatable.
        #[arg(long = "bind", value_name = "SYM=N")]
        binds: Vec<String>,
        /// Tile sizes for the tile report: q=64,k=128 (default: the host cost model's, as --emit kernel).
        #[arg(long, value_name = "q=N,k=N")]
        tile: Option<String>,
        #[command(flatten)]
        passes: PassArgs,
    },
    /// Draw each fused attention's mask and tile classes as a PNG.
    #[command(long_about = tdl::masks::HELP)]
    Masks(MasksArgs),
    /// Time a graph on random inputs: median/min/max ms, useful GFLOP/s, GB/s.
    Bench(BenchArgs),
    /// Run the conformance corpus (embedded in tdlc) on a backend against the reference interpreter.
    Selftest(SelftestArgs),
}

#[derive(clap::Args)]
struct SelftestArgs {
    /// The backend to check against the reference.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// The size of the sequence symbols (T, S, N); other symbols are 3.
    #[arg(long, default_value_t = 17)]
    size: i64,
    /// Only programs whose file name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Worker threads of the CPU backend (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    kernel: KernelArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    file: PathBuf,
    /// The graph to time (needed when the file has several).
    #[arg(long)]
    graph: Option<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Give a dimension symbol a size: T=1024. Repeatable; the inputs are random, so every symbol needs one.
    #[arg(long = "bind", value_name = "SYM=N")]
    binds: Vec<String>,
    /// Worker threads for --backend cpu (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Untimed runs first (0 to 1000).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs (1 to 10000); the report gives their median, min and max.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Base seed for the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (fields in README.md, "Benchmarking").
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    kernel: KernelArgs,
}

#[derive(clap::Args)]
struct MasksArgs {
    file: PathBuf,
    /// Only this graph.
    #[arg(long)]
    graph: Option<String>,
    /// Size a symbol: T=4096. Repeatable.
    #[arg(long = "bind", value_name = "SYM=N")]
    binds: Vec<String>,
    /// Tile sizes: q=64,k=128 (default 64×64).
    #[arg(long, value_name = "q=N,k=N")]
    tile: Option<String>,
    /// The head to draw.
    #[arg(long, default_value_t = 0)]
    head: usize,
    /// Where to write the picture; with several attentions, OUT-<graph>-<i>.png next to it.
    #[arg(long, value_name = "OUT.png")]
    png: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The verified typed graph from the frontend, in its text form.
    Graph,
    /// The saturated e-graph of the last e-graph phase (`fuse-attention`).
    Egraph,
    /// The graph after the whole pass pipeline (fused attention nodes).
    Fused,
    /// The Kernel IR: buffers and tiled loop-nest kernels.
    Kernel,
    /// The CPU backend's compiled kernels as LLVM IR, after O3 for the host.
    Llvm,
    /// The CPU backend's compiled kernels as host assembly.
    Asm,
    /// An object file of the CPU kernels and entry points (link it with libtdl_runtime.a); needs -o.
    Obj,
    /// A shared library with a C entry point per graph, and its header beside it (OUT with .h); needs -o.
    So,
    /// The C header of the shared library.
    Header,
    /// The GPU kernels as MLIR (gpu, scf, memref, arith, vector dialects), before lowering.
    Mlir,
    /// The GPU kernels as PTX for --gpu-chip, lowered in process.
    Ptx,
}

/// Kernel IR options shared by `compile --emit kernel` and `run --backend kernel`.
#[derive(clap::Args, Clone, Default)]
struct KernelArgs {
    /// The target the tile sizes are chosen for: host, sm_80 or sm_90.
    #[arg(long, default_value = "host")]
    target: String,
    /// Force the attention tile sizes: q=64,k=128 (default: the target's cost model).
    #[arg(long, value_name = "q=N,k=N")]
    tile: Option<String>,
    /// Split the KV range of every attention: N, or auto (the cost model; default).
    #[arg(long, value_name = "N|auto")]
    kv_split: Option<String>,
    /// CPU backend: the LLVM CPU to generate code for, like rustc's -C target-cpu (default: native, the host's).
    #[arg(long, value_name = "CPU")]
    target_cpu: Option<String>,
    /// CPU backend: +feature/-feature list on top of the CPU's, like rustc's -C target-feature (e.g. -avx2,-fma).
    #[arg(long, value_name = "+F,-F")]
    target_features: Option<String>,
    /// GPU backend: the chip to generate PTX for (sm_80, sm_90); its tiles too unless --target names a GPU.
    #[arg(long, default_value = "sm_90")]
    gpu_chip: String,
}

/// Pipeline options shared by `compile` and `explain`.
#[derive(clap::Args, Clone, Default)]
struct PassArgs {
    /// Print the graph after this pass (to stderr). Repeatable.
    #[arg(long = "print-after", value_name = "PASS")]
    print_after: Vec<String>,
    /// Print the graph after every pass (to stderr).
    #[arg(long)]
    print_after_all: bool,
    /// Skip this pass. Repeatable; unknown names warn.
    #[arg(long = "disable-pass", value_name = "PASS")]
    disable_pass: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The f64 reference interpreter (the oracle).
    Reference,
    /// The Kernel IR interpreter: the fused, tiled schedule in f32.
    Kernel,
    /// The CPU backend: the kernels compiled through LLVM and run on every
    /// core; what it does not compile yet (lambda masks, score modifiers,
    /// integer outputs) runs in the Kernel IR interpreter (`--stats` says
    /// which ran where).
    Cpu,
    /// The GPU backend: the kernels generated through MLIR, lowered to PTX
    /// and run on device 0 through the CUDA driver (loaded at run time: a
    /// machine without one gets "no CUDA driver found"); `--stats` says
    /// which ran where.
    Gpu,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Kernel => "kernel",
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    file: PathBuf,
    /// The graph to run (needed when the file has several).
    #[arg(long)]
    graph: Option<String>,
    /// Where the graph runs (default: cpu; a graph the Kernel IR cannot express yet runs on the reference, with a note).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// NAME=PATH.npy, NAME=random or NAME=random:SEED. Repeatable.
    #[arg(long = "input", value_name = "NAME=SOURCE")]
    inputs: Vec<String>,
    /// Bind parameters from a .safetensors file by name.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Give a dimension symbol a size: T=128. Repeatable.
    #[arg(long = "bind", value_name = "SYM=N")]
    binds: Vec<String>,
    /// Fill every input not otherwise given with random data.
    #[arg(long)]
    random: bool,
    /// Base seed for random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write result i to the i-th path given (.npy). Repeatable, in order.
    #[arg(long = "output", value_name = "PATH.npy")]
    outputs: Vec<PathBuf>,
    /// Print what each kernel did (--backend kernel|cpu|gpu).
    #[arg(long)]
    stats: bool,
    /// Worker threads for --backend cpu (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    kernel: KernelArgs,
}

/// A user error: already printed (diagnostics) or a message to print.
enum Failure {
    User(Option<String>),
    Internal(String),
}

type Res<T> = Result<T, Failure>;

fn user(msg: impl Into<String>) -> Failure {
    Failure::User(Some(msg.into()))
}

/// The last panic's message and stage, recorded by the hook and printed only
/// if the panic reaches `main`: a library that catches a panic of its own
/// (npyz on hostile headers) must not make tdlc claim a bug.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn main() -> ExitCode {
    // A closed pipe (`tdlc run … | head`) ends tdlc quietly, as it ends
    // every Unix tool, instead of failing a print (Rust ignores SIGPIPE).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at start-up,
    // before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Usage errors are user errors (exit 1); exit 2 is reserved for bugs.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    std::panic::set_hook(Box::new(move |info| {
        let where_ = STAGE.with(|s| s.get());
        let backtrace = std::backtrace::Backtrace::capture();
        if let Ok(mut slot) = LAST_PANIC.lock() {
            *slot = Some(format!("tdlc panicked during `{where_}`: {info}\n{backtrace}"));
        }
    }));
    let result = std::panic::catch_unwind(|| dispatch(cli));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Failure::User(msg))) => {
            if let Some(m) = msg {
                eprintln!("error: {m}");
            }
            ExitCode::from(1)
        }
        Ok(Err(Failure::Internal(msg))) => {
            let where_ = STAGE.with(|s| s.get());
            eprintln!("internal error during `{where_}`: {msg}");
            eprintln!(
                "this is a bug in tdlc, not in your input; please report it with the input file and this message"
            );
            ExitCode::from(2)
        }
        Err(_) => {
            let msg = LAST_PANIC.lock().ok().and_then(|mut m| m.take()).unwrap_or_else(|| "tdlc panicked".into());
            eprintln!("internal error: {}", msg.trim_end());
            eprintln!(
                "this is a bug in tdlc, not in your input; please report it with the input file and this message"
            );
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> Res<()> {
    match cli.command {
        Command::Check { file } => {
            let (name, src) = read_source(&file)?;
            let checked = check(&name, &src)?;
            for g in &checked.graphs {
                println!("graph {}", g.signature());
            }
            Ok(())
        }
        Command::Fmt { file, write, check } => {
            let (name, src) = read_source(&file)?;
            stage("fmt");
            let out = tdl::frontend::fmt::format_source(&src).map_err(|d| {
                emit_stderr(&d, &name, &src);
                Failure::User(None)
            })?;
            if check {
                if out != src {
                    return Err(user(format!("{name} is not formatted (run `tdlc fmt --write {name}`)")));
                }
            } else if write {
                if out != src {
                    std::fs::write(&file, out).map_err(|e| user(format!("cannot write {name}: {e}")))?;
                }
            } else {
                print!("{out}");
            }
            Ok(())
        }
        Command::Compile { file, emit, graph, output, passes, kernel } => {
            let (name, src) = read_source(&file)?;
            let checked = check(&name, &src)?;
            let graphs: Vec<&VerifiedGraph> = match &graph {
                Some(g) => vec![select(&checked, Some(g), &name)?],
                None => checked.graphs.iter().collect(),
            };
            if matches!(emit, Emit::Obj | Emit::So | Emit::Header) {
                return compile_artifact(&name, &graphs, emit, output.as_deref(), &passes, &kernel);
            }
            let mut texts = Vec::new();
            for g in graphs {
                let text = match emit {
                    Emit::Graph => tdl::ir::text::print_graph(g.graph()),
                    Emit::Fused => tdl::ir::text::print_graph(&optimize(g, &passes)?.0),
                    Emit::Kernel => tdl::kernel::text::print_program(&kernel_program(g, &passes, &kernel)?),
                    Emit::Llvm | Emit::Asm => {
                        if kernel.target != "host" {
                            return Err(user(format!(
                                "--emit llvm|asm is the CPU backend's output; --target {} is a GPU (use --target host)",
                                kernel.target
                            )));
                        }
                        let p = kernel_program(g, &passes, &kernel)?;
                        stage("llvm");
                        let kind = if matches!(emit, Emit::Asm) {
                            tdl::llvm::emit::EmitKind::Asm
                        } else {
                            tdl::llvm::emit::EmitKind::Llvm
                        };
                        tdl::llvm::emit::program_text_for(&p, kind, &cpu_target(&kernel)?)
                            .map_err(|e| Failure::Internal(e.to_string()))?
                    }
                    Emit::Obj | Emit::So | Emit::Header => unreachable!("handled above"),
                    Emit::Mlir | Emit::Ptx => {
                        // GPU tiles: --target when it names a GPU, else --gpu-chip's.
                        let mut gk = kernel.clone();
                        if gk.target == "host" {
                            tdl::kernel::target::Target::gpu(&gk.gpu_chip)
                                .map_err(|e| user(format!("--gpu-chip {}: {e}", gk.gpu_chip)))?;
                            gk.target = gk.gpu_chip.clone();
                        }
                        let p = kernel_program(g, &passes, &gk)?;
                        stage("mlir");
                        let (text, report) = if matches!(emit, Emit::Mlir) {
                            let (t, r) = tdl::mlir::program::program_mlir(&p);
                            (Some(t), r)
                        } else {
                            tdl::mlir::program::program_ptx(&p, &kernel.gpu_chip).map_err(|e| match e {
                                tdl::mlir::MlirError::InvalidChip(_) => user(format!("--gpu-chip: {e}")),
                                e => Failure::Internal(e.to_string()),
                            })?
                        };
                        for k in &report {
                            if let Err(why) = &k.how {
                                eprintln!("note: graph `{}`, kernel `{}` ({}): {why}", g.name, k.name, k.kind);
                            }
                        }
                        text.unwrap_or_else(|| {
                            format!("// graph `{}`: no kernel the GPU code generator supports yet\n", g.name)
                        })
                    }
                    Emit::Egraph => {
                        let (_, reports) = optimize(g, &passes)?;
                        let e = reports.iter().rev().find_map(|r| r.egraph.clone());
                        let text = e.unwrap_or_else(|| "(no e-graph phase ran)\n".to_string());
                        format!("egraph {} {{\n{text}}}\n", g.name)
                    }
                };
                texts.push(text);
            }
            stage("emit");
            let text = texts.join("\n");
            match output {
                Some(p) => std::fs::write(&p, text).map_err(|e| user(format!("cannot write {}: {e}", p.display())))?,
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Explain { file, graph, json, binds, tile, passes } => {
            let (name, src) = read_source(&file)?;
            let checked = check(&name, &src)?;
            let graphs: Vec<&VerifiedGraph> = match &graph {
                Some(g) => vec![select(&checked, Some(g), &name)?],
                None => checked.graphs.iter().collect(),
            };
            let bindings = parse_binds(&binds)?;
            let forced = match &tile {
                Some(t) => Some(parse_tile(Some(t))?),
                None => None,
            };
            let target = tdl::kernel::target::Target::host();
            let mut explained = Vec::new();
            for g in graphs {
                let (after, reports) = optimize(g, &passes)?;
                let e = tdl::passes::explain::explain_graph(g.graph(), after.graph(), &reports);
                stage("tiles");
                let tiles: Vec<Result<tdl::tiling::TileReport, String>> = e
                    .attentions
                    .iter()
                    .map(|a| {
                        let (tq, tk) =
                            forced.unwrap_or_else(|| tdl::tiling::default_tiles(after.graph(), a.node, &target));
                        tdl::tiling::tile_report(after.graph(), a.node, &bindings, tq, tk, target.kv_split())
                    })
                    .collect();
                explained.push((e, tiles));
            }
            stage("explain");
            if json {
                let graphs: Vec<_> = explained
                    .iter()
                    .map(|(e, tiles)| {
                        let mut v = tdl::passes::explain::to_json(e, &src);
                        if let Some(list) = v["attentions"].as_array_mut() {
                            for (a, t) in list.iter_mut().zip(tiles) {
                                add_tile_json(a, t);
                            }
                        }
                        v
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "graphs": graphs })).unwrap_or_default()
                );
            } else {
                for (e, tiles) in &explained {
                    let text = tdl::passes::explain::to_text(e, &src);
                    // The tile line goes under each attention line.
                    let mut tiles = tiles.iter();
                    for line in text.lines() {
                        println!("{line}");
                        if line.trim_start().starts_with("attention") {
                            if let Some(t) = tiles.next() {
                                println!("    {}", tile_text(t));
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Run(args) => run(args),
        Command::Masks(args) => masks(args),
        Command::Bench(args) => bench(args),
        Command::Selftest(args) => selftest(args),
    }
}

/// `tdlc masks`: one PNG per fused attention.
fn masks(args: MasksArgs) -> Res<()> {
    let (name, src) = read_source(&args.file)?;
    let checked = check(&name, &src)?;
    let graphs: Vec<&VerifiedGraph> = match &args.graph {
        Some(g) => vec![select(&checked, Some(g), &name)?],
        None => checked.graphs.iter().collect(),
    };
    let bindings = parse_binds(&args.binds)?;
    let (tile_q, tile_k) = parse_tile(args.tile.as_deref())?;
    // Draw everything first, so that an error writes no file.
    let mut pictures = Vec::new();
    for g in graphs {
        let (after, reports) = optimize(g, &PassArgs::default())?;
        let e = tdl::passes::explain::explain_graph(g.graph(), after.graph(), &reports);
        stage("masks");
        for (i, a) in e.attentions.iter().enumerate() {
            let at = a.span.map_or(String::new(), |sp| {
                let (l, c) = line_col(&src, sp.start);
                format!(" at {name}:{l}:{c}")
            });
            let p = tdl::masks::picture(after.graph(), a.node, &bindings, tile_q, tile_k, args.head)
                .map_err(|why| user(format!("graph `{}`, attention {i}{at}: {why}", g.name)))?;
            pictures.push((g.name.clone(), i, a.mask.clone().unwrap_or_else(|| "none".into()), p));
        }
    }
    if pictures.is_empty() {
        return Err(user(format!("{name}: no fused attention to draw")));
    }
    stage("output");
    let several = pictures.len() > 1;
    for (graph, i, mask, p) in &pictures {
        let path = if several { tdl::masks::numbered_path(&args.png, graph, *i) } else { args.png.clone() };
        tdl::masks::write_png(p, &path).map_err(user)?;
        println!("{}", tdl::masks::summary_line(p, &path, graph, *i, mask));
        if p.mismatches > 0 {
            eprintln!(
                "warning: {}: {} pixel(s) where brute force contradicts the tile classes (drawn red): a bug in tdlc, please report it",
                path.display(),
                p.mismatches
            );
        }
    }
    Ok(())
}

/// `q=64,k=128` (either part may be left out; default 64).
fn parse_tile(s: Option<&str>) -> Res<(usize, usize)> {
    let (mut q, mut k) = (64usize, 64usize);
    let Some(s) = s else { return Ok((q, k)) };
    for part in s.split(',') {
        let (name, v) = parse_kv(part, "--tile", "q=N,k=N")?;
        let n: usize = v
            .parse()
            .ok()
            .filter(|n| *n >= 1 && *n <= 1 << 20)
            .ok_or_else(|| user(format!("--tile {s}: `{v}` is not a tile size (1 to 1048576)")))?;
        match name {
            "q" => q = n,
            "k" => k = n,
            _ => return Err(user(format!("--tile {s}: expected q=N,k=N"))),
        }
    }
    Ok((q, k))
}

fn add_tile_json(a: &mut serde_json::Value, t: &Result<tdl::tiling::TileReport, String>) {
    let Some(obj) = a.as_object_mut() else { return };
    match t {
        Ok(r) => {
            let fields = serde_json::json!({
                "tile_q": r.tile_q, "tile_k": r.tile_k, "tiles_total": r.tiles_total,
                "tiles_visited": r.tiles_visited, "tiles_full": r.tiles_full, "tiles_partial": r.tiles_partial,
                "density": r.density, "visited_over_minimum": r.visited_over_minimum,
                "best_case_speedup": if r.best_case_speedup.is_finite() { serde_json::json!(r.best_case_speedup) } else { serde_json::Value::Null },
                "kv_splits": r.kv_splits,
                "empty_rows": r.empty_rows.as_ref().map(|(n, first)| serde_json::json!({"count": n, "first": first})),
            });
            if let Some(f) = fields.as_object() {
                obj.extend(f.clone());
            }
        }
        Err(why) => {
            obj.insert("tiles".into(), serde_json::Value::Null);
            obj.insert("tiles_note".into(), serde_json::json!(why));
        }
    }
}

fn tile_text(t: &Result<tdl::tiling::TileReport, String>) -> String {
    match t {
        Err(why) => format!("tiles: not classified ({why})"),
        Ok(r) => {
            let mut s = format!(
                "tiles {}x{}: {} visited of {} ({} full, {} partial), best-case speedup {:.2}x",
                r.tile_q, r.tile_k, r.tiles_visited, r.tiles_total, r.tiles_full, r.tiles_partial, r.best_case_speedup
            );
            if let Some(d) = r.density {
                s.push_str(&format!(", density {d:.4}"));
            }
            if let Some(v) = r.visited_over_minimum {
                s.push_str(&format!(", visited/minimum {v:.3}"));
            }
            if let Some((n, first)) = &r.empty_rows {
                if *n > 0 {
                    s.push_str(&format!("; {n} query row(s) see no key and give zeros (first: {first:?})"));
                }
            }
            s
        }
    }
}

/// Runs the pass pipeline on one graph, honouring the pass options.
fn optimize(g: &VerifiedGraph, args: &PassArgs) -> Res<(VerifiedGraph, Vec<tdl::passes::PassReport>)> {
    stage("passes");
    for p in &args.disable_pass {
        if !tdl::passes::PASS_NAMES.contains(&p.as_str()) {
            eprintln!("warning: --disable-pass {p}: no such pass (passes: {})", tdl::passes::PASS_NAMES.join(", "));
        }
    }
    for p in &args.print_after {
        if !tdl::passes::PASS_NAMES.contains(&p.as_str()) {
            eprintln!("warning: --print-after {p}: no such pass (passes: {})", tdl::passes::PASS_NAMES.join(", "));
        }
    }
    let disabled: std::collections::BTreeSet<String> = args.disable_pass.iter().cloned().collect();
    let passes = tdl::passes::pipeline_without(&disabled);
    let mut print = |r: &tdl::passes::PassReport, g: &VerifiedGraph| {
        if args.print_after_all || args.print_after.iter().any(|p| p == r.pass) {
            eprintln!("// after {}{}", r.pass, if r.changed { "" } else { " (no change)" });
            eprint!("{}", tdl::ir::text::print_graph(g.graph()));
        }
    };
    tdl::passes::run_pipeline_with(g.clone(), &passes, &mut print).map_err(|e| Failure::Internal(e.to_string()))
}

fn kernel_options(args: &KernelArgs) -> Res<(tdl::kernel::target::Target, tdl::kernel::lower::LowerOptions)> {
    use tdl::kernel::ir::KvSplit;
    let target = match args.target.as_str() {
        "host" => tdl::kernel::target::Target::host(),
        chip => tdl::kernel::target::Target::gpu(chip).map_err(|e| user(format!("--target {chip}: {e}")))?,
    };
    let mut opts = tdl::kernel::lower::LowerOptions::default();
    if args.tile.is_some() {
        opts.attention_tiles = Some(parse_tile(args.tile.as_deref())?);
    }
    opts.kv_split = match args.kv_split.as_deref() {
        None | Some("auto") => None,
        Some(n) => match n.parse::<usize>() {
            Ok(1) => Some(KvSplit::None),
            Ok(n) if (2..=4096).contains(&n) => Some(KvSplit::Fixed(n)),
            _ => return Err(user(format!("--kv-split {n}: expected auto or a count from 1 to 4096"))),
        },
    };
    Ok((target, opts))
}

/// `tdlc compile --emit obj|so|header`: one artifact of every graph.
fn compile_artifact(
    source: &str,
    graphs: &[&VerifiedGraph],
    emit: Emit,
    output: Option<&Path>,
    passes: &PassArgs,
    kernel: &KernelArgs,
) -> Res<()> {
    if kernel.target != "host" {
        return Err(user(format!(
            "--emit obj|so|header is the CPU backend's output; --target {} is a GPU (use --target host)",
            kernel.target
        )));
    }
    let programs = graphs.iter().map(|g| kernel_program(g, passes, kernel)).collect::<Res<Vec<_>>>()?;
    let out = match (emit, output) {
        (Emit::Obj | Emit::So, None) => {
            return Err(user("--emit obj and --emit so write binary files: name one with -o FILE"));
        }
        (_, out) => out,
    };
    stage("llvm");
    let host = cpu_target(kernel)?;
    let artifact = tdl::llvm::aot::compile(&programs, &host).map_err(|e| Failure::Internal(e.to_string()))?;
    // `libfoo.so` gets `foo.h` beside it.
    let stem = out.and_then(|p| p.file_stem()).map_or_else(|| "tdl".to_string(), |s| s.to_string_lossy().into_owned());
    let stem = match emit {
        Emit::So => stem.strip_prefix("lib").filter(|s| !s.is_empty()).unwrap_or(&stem).to_string(),
        _ => stem,
    };
    let header = tdl::llvm::aot::header_text(&artifact.graphs, source, &stem);
    stage("emit");
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|e| user(format!("cannot write {}: {e}", path.display())))
    };
    match (emit, out) {
        (Emit::Header, Some(p)) => write(p, header.as_bytes())?,
        (Emit::Header, None) => print!("{header}"),
        (Emit::Obj, Some(p)) => write(p, &artifact.object)?,
        (Emit::So, Some(p)) => {
            let runtime = runtime_library()?;
            let object = p.with_extension(format!("tmp{}.o", std::process::id()));
            write(&object, &artifact.object)?;
            let linked = tdl::llvm::aot::link_shared(&object, &runtime, p);
            let _ = std::fs::remove_file(&object);
            linked.map_err(|e| user(e.to_string()))?;
            write(&p.with_file_name(format!("{stem}.h")), header.as_bytes())?;
        }
        _ => unreachable!("checked above"),
    }
    for g in &artifact.graphs {
        for k in &g.report {
            if let Err(why) = &k.how {
                eprintln!(
                    "note: graph `{}`, kernel `{}` ({}): runs in the runtime's executor: {why}",
                    g.program.name, k.name, k.kind
                );
            }
        }
    }
    Ok(())
}

/// The runtime archive every shared library links: `$TDL_RUNTIME_LIB`, or
/// `libtdl_runtime.a` beside the tdlc binary (cargo's target folder) or in
/// `../lib` (an installed layout).
fn runtime_library() -> Res<PathBuf> {
    const NAME: &str = "libtdl_runtime.a";
    if let Some(p) = std::env::var_os("TDL_RUNTIME_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(user(format!("TDL_RUNTIME_LIB names {}, which is not a file", p.display())))
        };
    }
    let exe = std::env::current_exe().map_err(|e| Failure::Internal(format!("cannot locate the tdlc binary: {e}")))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let candidates = [dir.join(NAME), dir.join("..").join("lib").join(NAME)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        user(format!(
            "the runtime library {NAME} was not found (looked in {} and {}); build it with \
             `cargo build --release -p tdl-rt-capi` (scripts/setup.sh does), or set TDL_RUNTIME_LIB to its path",
            candidates[0].display(),
            candidates[1].display()
        ))
    })
}

/// The pass pipeline, then the Kernel IR (lowered and verified).
fn kernel_program(g: &VerifiedGraph, passes: &PassArgs, args: &KernelArgs) -> Res<tdl::kernel::ir::KernelProgram> {
    let (target, opts) = kernel_options(args)?;
    let (fused, _) = optimize(g, passes)?;
    stage("kernel-ir");
    let p = tdl::kernel::lower::lower(&fused, &target, &opts).map_err(|e| {
        if e.contains("not supported yet") {
            user(e)
        } else {
            Failure::Internal(e)
        }
    })?;
    tdl::kernel::verify::verify(&p)
        .map_err(|e| Failure::Internal(format!("the Kernel IR of graph `{}` fails verification: {e}", g.name)))?;
    Ok(p)
}

fn read_source(path: &Path) -> Res<(String, String)> {
    stage("read");
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| user(format!("cannot read {name}: {e}")))?;
    if meta.len() > MAX_SOURCE_BYTES {
        return Err(user(format!(
            "{name} is {} bytes; tdlc reads source files up to {MAX_SOURCE_BYTES} bytes",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| user(format!("cannot read {name}: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok((name, s)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
            let (line, col) = line_col(&valid, at);
            Err(user(format!(
                "{name}:{line}:{col}: the file is not valid UTF-8 (byte {at}); .tdl files are UTF-8 text"
            )))
        }
    }
}

fn check(name: &str, src: &str) -> Res<Checked> {
    stage("check");
    match tdl::check_source(src) {
        Ok(c) => {
            emit_stderr(&c.warnings, name, src);
            Ok(c)
        }
        Err(CheckError::User(d)) => {
            emit_stderr(&d, name, src);
            let n = d.iter().filter(|d| d.is_error()).count();
            Err(user(format!("{name}: {n} error(s)")))
        }
        Err(CheckError::Internal(m)) => Err(Failure::Internal(m)),
    }
}

fn select<'c>(checked: &'c Checked, graph: Option<&str>, file: &str) -> Res<&'c VerifiedGraph> {
    let names: Vec<&str> = checked.graphs.iter().map(|g| g.name.as_str()).collect();
    match graph {
        Some(n) => checked
            .graphs
            .iter()
            .find(|g| g.name == n)
            .ok_or_else(|| user(format!("{file} has no graph `{n}` (its graphs: {})", names.join(", ")))),
        None if checked.graphs.len() == 1 => Ok(&checked.graphs[0]),
        None if checked.graphs.is_empty() => Err(user(format!("{file} has no graphs"))),
        None => Err(user(format!("{file} has several graphs ({}): choose one with --graph NAME", names.join(", ")))),
    }
}

fn parse_kv<'s>(s: &'s str, flag: &str, example: &str) -> Res<(&'s str, &'s str)> {
    s.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| user(format!("{flag} {s}: expected {example}")))
}

/// `--bind SYM=N` flags (each size at least 1; a later one wins).
fn parse_binds(binds: &[String]) -> Res<tdl::ir::Bindings> {
    let mut bindings = tdl::ir::Bindings::new();
    for b in binds {
        let (k, v) = parse_kv(b, "--bind", "SYM=N")?;
        let n: i64 = v.parse().map_err(|_| user(format!("--bind {b}: `{v}` is not an integer")))?;
        if n < 1 {
            return Err(user(format!("--bind {b}: a dimension must be at least 1")));
        }
        bindings.insert(k.to_string(), n);
    }
    Ok(bindings)
}

/// `--threads`: the count given (at least 1), or every core.
fn resolve_threads(threads: Option<usize>) -> Res<usize> {
    match threads {
        Some(0) => Err(user("--threads 0: give at least 1")),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// The executors the Kernel IR interpreter hands kernels to: the CPU
/// backend's compiled kernels, the GPU's (`gpu`: the device opened by
/// [`open_gpu`]), or none.
fn backend_hooks(
    backend: Backend,
    threads: usize,
    args: &KernelArgs,
    gpu: Option<tdl::gpu::GpuHooks>,
) -> Res<Box<dyn tdl::kernel::interp::Hooks>> {
    Ok(match (backend, gpu) {
        (Backend::Cpu, _) => Box::new(tdl::llvm::cpu::CpuHooks::with_host(threads, cpu_target(args)?)),
        (Backend::Reference | Backend::Kernel, _) => Box::new(tdl::kernel::interp::NoHooks),
        (Backend::Gpu, Some(g)) => Box::new(g),
        (Backend::Gpu, None) => Box::new(open_gpu(args)?.0),
    })
}

/// `--backend gpu`: device 0 through the CUDA driver ("no CUDA driver
/// found" without one), and the kernel options with its chip's tiles
/// unless `--target` names a chip.
fn open_gpu(args: &KernelArgs) -> Res<(tdl::gpu::GpuHooks, KernelArgs)> {
    let hooks = tdl::gpu::GpuHooks::open().map_err(|e| user(format!("--backend gpu: {e}")))?;
    let mut k = args.clone();
    if k.target == "host" {
        k.target = hooks.chip().to_string();
    }
    Ok((hooks, k))
}

/// `tdlc selftest`: every corpus graph on `--backend` against the
/// reference; one line per graph and a summary; exit 1 if any fails.
fn selftest(args: SelftestArgs) -> Res<()> {
    use tdl::selftest::{check_graph, Outcome};
    if !(1..=4096).contains(&args.size) {
        return Err(user(format!("--size {}: give a size from 1 to 4096", args.size)));
    }
    let mut kernel_args = args.kernel.clone();
    let (hooks, executor): (Box<dyn tdl::kernel::interp::Hooks>, &str) = match args.backend {
        Backend::Reference => return Err(user("--backend reference is the oracle itself; check cpu, gpu or kernel")),
        Backend::Gpu => {
            let (g, k) = open_gpu(&args.kernel)?;
            println!("device: {}", g.device());
            kernel_args = k;
            (Box::new(g), tdl::gpu::EXECUTOR)
        }
        Backend::Cpu => {
            (backend_hooks(Backend::Cpu, resolve_threads(args.threads)?, &args.kernel, None)?, tdl::llvm::cpu::EXECUTOR)
        }
        Backend::Kernel => (Box::new(tdl::kernel::interp::NoHooks), "kernel interpreter"),
    };
    let limits = Limits { max_elements: 1 << 24 };
    let lower = |g: &VerifiedGraph| match kernel_program(g, &PassArgs::default(), &kernel_args) {
        Ok(p) => Ok(p),
        Err(Failure::User(why)) => Err(why.unwrap_or_else(|| "the graph does not lower".into())),
        Err(Failure::Internal(why)) => Err(why),
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (file, src) in tdl::selftest::CORPUS {
        if args.filter.as_ref().is_some_and(|f| !file.contains(f.as_str())) {
            continue;
        }
        let checked = match tdl::check_source(src) {
            Ok(c) => c,
            Err(_) => {
                println!("FAIL {file}: does not check");
                failed += 1;
                continue;
            }
        };
        for g in &checked.graphs {
            match check_graph(g, args.size, &limits, &lower, hooks.as_ref(), executor) {
                Outcome::Pass { worst, compiled, kernels } => {
                    passed += 1;
                    println!("ok   {file} {}: worst error {worst:.1e}, {compiled}/{kernels} kernels compiled", g.name);
                }
                Outcome::Fail(why) => {
                    failed += 1;
                    println!("FAIL {file} {}: {why}", g.name);
                }
                Outcome::Skip(why) => {
                    skipped += 1;
                    println!("skip {file} {}: {why}", g.name);
                }
            }
        }
    }
    println!(
        "selftest on {}: {passed} passed, {failed} failed, {skipped} skipped (size {})",
        args.backend.name(),
        args.size
    );
    if failed > 0 {
        return Err(Failure::User(None));
    }
    Ok(())
}

/// The CPU the CPU backend compiles for: the host with `--target-cpu` /
/// `--target-features` applied.
fn cpu_target(args: &KernelArgs) -> Res<tdl::llvm::HostTarget> {
    let host = tdl::llvm::HostTarget::detect().map_err(|e| Failure::Internal(e.to_string()))?;
    host.with_overrides(args.target_cpu.as_deref(), args.target_features.as_deref()).map_err(|e| user(e.to_string()))
}

/// A user error at the node of graph `g` that failed, shown in the source
/// where there is a span.
fn run_failure(message: String, span: Option<tdl::ir::Span>, g: &VerifiedGraph, name: &str, src: &str) -> Failure {
    match span {
        Some(span) => {
            let d = tdl::Diagnostic::error(message).at(span, format!("while running graph `{}`", g.name));
            emit_stderr(&[d], name, src);
            Failure::User(None)
        }
        None => user(message),
    }
}

/// A reference interpreter error as a failure.
fn reference_failure(e: tdl::reference::RunError, g: &VerifiedGraph, name: &str, src: &str) -> Failure {
    // With a span, the root cause: the span already says where.
    let message = if e.span().is_some() { e.root().to_string() } else { e.to_string() };
    run_failure(message, e.span(), g, name, src)
}

/// A Kernel IR interpreter error as a failure.
fn interp_failure(e: tdl::kernel::interp::InterpError, g: &VerifiedGraph, name: &str, src: &str) -> Failure {
    run_failure(e.to_string(), e.span, g, name, src)
}

fn run(args: RunArgs) -> Res<()> {
    let (name, src) = read_source(&args.file)?;
    let checked = check(&name, &src)?;
    let g = select(&checked, args.graph.as_deref(), &name)?;
    stage("inputs");
    let mut plan =
        InputPlan { weights: args.weights.clone(), random_rest: args.random, seed: args.seed, ..InputPlan::default() };
    for s in &args.inputs {
        let (k, v) = parse_kv(s, "--input", "NAME=PATH.npy or NAME=random[:SEED]")?;
        let src = InputSource::parse(v).map_err(|e| user(format!("--input {s}: {e}")))?;
        if plan.sources.insert(k.to_string(), src).is_some() {
            return Err(user(format!("--input {k} is given twice")));
        }
    }
    plan.binds = parse_binds(&args.binds)?;
    if args.outputs.len() > g.results().len() {
        return Err(user(format!(
            "graph `{}` has {} result(s) but {} --output paths were given",
            g.name,
            g.results().len(),
            args.outputs.len()
        )));
    }
    let limits = Limits::default();
    let inputs = assemble_inputs(g, &plan, &limits).map_err(user)?;
    stage("run");
    // `--backend gpu` opens the device first (and lowers for its chip).
    let (mut gpu, kernel_args) = match args.backend {
        Some(Backend::Gpu) => {
            let (h, k) = open_gpu(&args.kernel)?;
            (Some(h), k)
        }
        _ => (None, args.kernel.clone()),
    };
    // The default backend is the CPU's; a graph that does not lower to the
    // Kernel IR yet ("not supported yet") runs on the reference instead.
    let (backend, program) = match args.backend {
        Some(Backend::Reference) => (Backend::Reference, None),
        Some(b) => (b, Some(kernel_program(g, &PassArgs::default(), &kernel_args)?)),
        None => match kernel_program(g, &PassArgs::default(), &args.kernel) {
            Ok(p) => (Backend::Cpu, Some(p)),
            Err(Failure::User(Some(why))) if why.contains("not supported yet") => {
                eprintln!("note: running `{}` on the reference backend: {why}", g.name);
                (Backend::Reference, None)
            }
            Err(e) => return Err(e),
        },
    };
    let outputs = match (backend, program) {
        (Backend::Reference, _) | (_, None) => {
            tdl::reference::run_with_limits(g, &inputs, &limits).map_err(|e| reference_failure(e, g, &name, &src))?
        }
        (_, Some(p)) => {
            stage("run");
            let hooks = backend_hooks(backend, resolve_threads(args.threads)?, &kernel_args, gpu.take())?;
            let out = tdl::kernel::interp::run_with_hooks(&p, &inputs, &limits, hooks.as_ref())
                .map_err(|e| interp_failure(e, g, &name, &src))?;
            if args.stats {
                for k in &out.kernels {
                    match &k.attention {
                        Some(s) => println!(
                            "kernel `{}` ({}) on {}: {} programs, {} kv-tiles visited ({} full, {} partial), {} mask tests, kv split {}",
                            k.name, k.kind, k.executor, s.programs, s.tiles_visited, s.full_tiles, s.partial_tiles, s.mask_evals, s.kv_splits
                        ),
                        None => println!("kernel `{}` ({}) on {}", k.name, k.kind, k.executor),
                    }
                }
                for line in hooks.run_report() {
                    println!("{line}");
                }
            }
            out.results
        }
    };
    stage("output");
    for (i, t) in outputs.iter().enumerate() {
        let t = t.round_to_dtype();
        println!("result {i}: {}", summary(&t));
        if let Some(p) = args.outputs.get(i) {
            npy::write_npy(p, &t).map_err(|e| user(e.to_string()))?;
            println!("  written to {}", p.display());
        }
    }
    Ok(())
}

/// `tdlc bench`: one graph on random inputs, `--warmup` untimed runs, then
/// `--reps` timed ones (the run call alone), one hooks object for all.
fn bench(args: BenchArgs) -> Res<()> {
    if !(1..=bench::MAX_REPS).contains(&args.reps) {
        return Err(user(format!("--reps {}: give a count from 1 to {}", args.reps, bench::MAX_REPS)));
    }
    if args.warmup > bench::MAX_WARMUP {
        return Err(user(format!("--warmup {}: give a count from 0 to {}", args.warmup, bench::MAX_WARMUP)));
    }
    let threads = resolve_threads(args.threads)?;
    let (name, src) = read_source(&args.file)?;
    let checked = check(&name, &src)?;
    let g = select(&checked, args.graph.as_deref(), &name)?;
    stage("inputs");
    let binds = parse_binds(&args.binds)?;
    let plan = InputPlan { binds: binds.clone(), random_rest: true, seed: args.seed, ..InputPlan::default() };
    let limits = Limits::default();
    let inputs = assemble_inputs(g, &plan, &limits).map_err(user)?;
    // The Kernel IR: what `kernel` and `cpu` run, and where the work is
    // counted for every backend (the reference runs any graph, lowered or not).
    kernel_options(&args.kernel)?;
    let mut notes = Vec::new();
    if args.threads.is_some() && args.backend != Backend::Cpu {
        notes.push(format!("--threads applies to --backend cpu; {} runs on one thread", args.backend.name()));
    }
    // `--backend gpu` opens the device first (and lowers for its chip).
    let (gpu, kernel_args) = match args.backend {
        Backend::Gpu => {
            let (h, k) = open_gpu(&args.kernel)?;
            notes.push(format!(
                "device: {}; times are the kernels' device time (CUDA events), without the per-kernel host-device copies",
                h.device()
            ));
            (Some(h), k)
        }
        _ => (None, args.kernel.clone()),
    };
    let program = match (args.backend, kernel_program(g, &PassArgs::default(), &kernel_args)) {
        (Backend::Reference, Err(e)) => {
            let why = match e {
                Failure::User(why) => why.unwrap_or_else(|| "the graph does not lower to the Kernel IR".into()),
                Failure::Internal(why) => why,
            };
            notes.push(format!("the work is not counted: {why}"));
            None
        }
        (_, p) => Some(p?),
    };
    stage("count");
    let work = match &program {
        Some(p) => match bench::count_work(p, &inputs) {
            Ok(w) => Some(w),
            Err(why) => {
                notes.push(format!("the work is not counted: {why}"));
                None
            }
        },
        None => None,
    };
    stage("bench");
    let (times_ms, kernels) = match (args.backend, &program) {
        (Backend::Reference, _) => {
            let (times, _) =
                bench::time_reps(args.warmup, args.reps, || tdl::reference::run_with_limits(g, &inputs, &limits))
                    .map_err(|e| reference_failure(e, g, &name, &src))?;
            (times, Vec::new())
        }
        (Backend::Gpu, Some(p)) => {
            let Some(hooks) = gpu else { return Err(Failure::Internal("no GPU opened".into())) };
            // The device time of each run's launches, after the warmup.
            let run = || {
                tdl::kernel::interp::run_with_hooks(p, &inputs, &limits, &hooks)
                    .map_err(|e| interp_failure(e, g, &name, &src))
            };
            let mut last = run()?;
            for _ in 1..args.warmup {
                run()?;
            }
            let mut times = Vec::with_capacity(args.reps);
            for _ in 0..args.reps {
                hooks.take_device_ms();
                last = run()?;
                times.push(hooks.take_device_ms());
            }
            let kernels = kernel_lines(&last.kernels);
            (times, kernels)
        }
        (_, Some(p)) => {
            let hooks = backend_hooks(args.backend, threads, &kernel_args, None)?;
            let (times, out) = bench::time_reps(args.warmup, args.reps, || {
                tdl::kernel::interp::run_with_hooks(p, &inputs, &limits, hooks.as_ref())
            })
            .map_err(|e| interp_failure(e, g, &name, &src))?;
            let kernels = kernel_lines(&out.kernels);
            (times, kernels)
        }
        (_, None) => return Err(Failure::Internal("no Kernel IR program to run".into())),
    };
    stage("output");
    let report = bench::Report {
        file: name,
        graph: g.name.clone(),
        backend: args.backend.name(),
        threads: if args.backend == Backend::Cpu { threads } else { 1 },
        bindings: binds,
        warmup: args.warmup,
        reps: args.reps,
        times_ms,
        work,
        kernels,
        notes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json()).unwrap_or_default());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// What ran each kernel, as `tdlc bench` reports it.
fn kernel_lines(kernels: &[tdl::kernel::interp::KernelRun]) -> Vec<bench::KernelLine> {
    kernels.iter().map(|k| bench::KernelLine { name: k.name.clone(), kind: k.kind, executor: k.executor }).collect()
}

fn summary(t: &Tensor) -> String {
    let n = t.data.len();
    if n == 0 {
        return format!("{} (empty)", t.type_text());
    }
    let min = t.data.iter().copied().fold(f64::INFINITY, f64::min);
    let max = t.data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = t.data.iter().sum::<f64>() / n as f64;
    let nans = t.data.iter().filter(|v| v.is_nan()).count();
    let finite = if t.all_finite() {
        "all finite".to_string()
    } else if nans > 0 {
        format!("NOT all finite: {nans} NaN")
    } else {
        "NOT all finite".to_string()
    };
    format!("{}  min {min:.6}  max {max:.6}  mean {mean:.6}  ({finite})", t.type_text())
}
