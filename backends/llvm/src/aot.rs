//! Ahead-of-time artifacts: `tdlc compile --emit obj|so|header`.
//!
//! One object file holds, per graph of the source:
//!
//! * the kernels whose code does not depend on the sizes — attention
//!   programs and matmul row blocks, the same LLVM IR the JIT compiles —
//!   each renamed `tdl_aot_<g>_<i>` (its helpers made internal);
//! * the graph's Kernel IR program and which kernels were compiled, as a
//!   postcard-serialized [`AotProgram`] (`@tdl_desc_<g>`), and a table of
//!   the compiled functions' addresses (`@tdl_fns_<g>`);
//! * the entry point `tdl_run_<graph>(dims, inputs, input_lens, outputs,
//!   output_lens)`, which calls the runtime's `tdl_rt_run`.
//!
//! The whole module goes through `default<O3>` for the chosen CPU and is
//! written as a position-independent ELF object. `--emit so` links it with
//! the runtime archive (`libtdl_runtime.a`, the `tdl-rt-capi` crate: the
//! Kernel IR executor, the attention/matmul drivers, the thread pool, no
//! LLVM) into a shared library; [`header_text`] is its C header.
//!
//! Kernels of other kinds (elementwise chains, reductions, norms, moves)
//! are specialised by the JIT for their operands' run-time strides; in an
//! artifact they run in the runtime's Kernel IR executor loops for now, and
//! [`AotGraph::report`] says so per kernel.

use std::fmt::Write as _;
use std::path::Path;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use inkwell::OptimizationLevel;
use tdl_ir::DType;
use tdl_kernel::ir::KernelProgram;
use tdl_rt::aot::{AotKernel, AotProgram, FORMAT_VERSION};

use crate::emit::static_kernel;
use crate::{HostTarget, LlvmError};

/// How one kernel of a graph runs in the artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelReport {
    pub name: String,
    pub kind: &'static str,
    /// `Ok(what was compiled)` or `Err(why it runs in the executor's loops)`.
    pub how: Result<String, String>,
}

/// One graph of an artifact.
#[derive(Clone, Debug)]
pub struct AotGraph {
    pub program: KernelProgram,
    pub report: Vec<KernelReport>,
}

/// An object file and what it holds.
#[derive(Debug)]
pub struct Artifact {
    pub object: Vec<u8>,
    pub graphs: Vec<AotGraph>,
}

/// The C name of graph `name`'s entry point: `tdl_run_` and the name with
/// every character outside `[A-Za-z0-9_]` replaced by `_`.
pub fn entry_name(name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("tdl_run_{clean}")
}

/// `bytes` as an LLVM IR string constant body (`c"..."`).
fn ir_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\{b:02X}");
        }
    }
    s
}

fn parse<'ctx>(ctx: &'ctx Context, text: &str, name: &str) -> Result<Module<'ctx>, LlvmError> {
    let buf = MemoryBuffer::create_from_memory_range_copy(text.as_bytes(), name);
    ctx.create_module_from_ir(buf).map_err(|e| LlvmError::Verify(format!("{name}: {e}")))
}

/// Compiles every graph of `programs` into one object file for `host`.
pub fn compile(programs: &[KernelProgram], host: &HostTarget) -> Result<Artifact, LlvmError> {
    let tm = host.target_machine(OptimizationLevel::Aggressive)?;
    let ctx = Context::create();
    let mut kernels: Vec<Module<'_>> = Vec::new();
    let mut glue =
        String::from("declare i32 @tdl_rt_run(ptr, i64, ptr, i64, ptr, i64, ptr, ptr, i64, ptr, ptr, i64)\n");
    let mut graphs = Vec::new();
    let mut entries: Vec<String> = Vec::new();
    let mut graphs_functions: Vec<Vec<String>> = Vec::new();
    for (g, p) in programs.iter().enumerate() {
        let entry = entry_name(&p.name);
        if entries.contains(&entry) {
            return Err(LlvmError::Unsupported(format!(
                "two graphs whose C entry points are both `{entry}`; rename one of them"
            )));
        }
        entries.push(entry.clone());
        let mut compiled: Vec<AotKernel> = Vec::new();
        let mut functions: Vec<String> = Vec::new();
        let mut report = Vec::new();
        for k in &p.kernels {
            let how = match static_kernel(p, &k.body, host) {
                Ok(sk) => {
                    let same = |c: &AotKernel| match (c, &sk.aot) {
                        (
                            AotKernel::Attention { spec: a, tkp: ta, .. },
                            AotKernel::Attention { spec: b, tkp: tb, .. },
                        ) => a == b && ta == tb,
                        (AotKernel::MatMul { tiles: a, nr: na, .. }, AotKernel::MatMul { tiles: b, nr: nb, .. }) => {
                            a == b && na == nb
                        }
                        _ => false,
                    };
                    if !compiled.iter().any(same) {
                        let function = compiled.len();
                        let fname = format!("tdl_aot_{g}_{function}");
                        let m = parse(&ctx, &sk.text, &fname)?;
                        for f in m.get_functions() {
                            if f.count_basic_blocks() == 0 {
                                continue;
                            }
                            if f.get_name().to_bytes() == sk.entry.as_bytes() {
                                f.as_global_value().set_name(&fname);
                            } else {
                                f.set_linkage(Linkage::Internal);
                            }
                        }
                        for gv in m.get_globals() {
                            if gv.get_initializer().is_some() && gv.get_linkage() != Linkage::Appending {
                                gv.set_linkage(Linkage::Internal);
                            }
                        }
                        kernels.push(m);
                        functions.push(fname);
                        let mut aot = sk.aot.clone();
                        match &mut aot {
                            AotKernel::Attention { function: f, .. } | AotKernel::MatMul { function: f, .. } => {
                                *f = function
                            }
                        }
                        compiled.push(aot);
                    }
                    Ok(sk.what)
                }
                Err(why) => Err(why),
            };
            report.push(KernelReport { name: k.name.clone(), kind: k.body.kind(), how });
        }
        let desc = AotProgram { version: FORMAT_VERSION, program: p.clone(), compiled }.to_bytes()?;
        for f in &functions {
            let _ = writeln!(glue, "declare void @{f}()");
        }
        let table: Vec<String> = functions.iter().map(|f| format!("ptr @{f}")).collect();
        let _ = writeln!(
            glue,
            "@tdl_desc_{g} = private unnamed_addr constant [{} x i8] c\"{}\"",
            desc.len(),
            ir_bytes(&desc)
        );
        let _ = writeln!(
            glue,
            "@tdl_fns_{g} = private unnamed_addr constant [{} x ptr] [{}]",
            functions.len(),
            table.join(", ")
        );
        let _ = writeln!(
            glue,
            "define i32 @{entry}(ptr %dims, ptr %inputs, ptr %input_lens, ptr %outputs, ptr %output_lens) {{\n  \
             %r = call i32 @tdl_rt_run(ptr @tdl_desc_{g}, i64 {}, ptr @tdl_fns_{g}, i64 {}, ptr %dims, i64 {}, \
             ptr %inputs, ptr %input_lens, i64 {}, ptr %outputs, ptr %output_lens, i64 {})\n  ret i32 %r\n}}",
            desc.len(),
            functions.len(),
            p.symbols.len(),
            p.params.len(),
            p.results.len()
        );
        graphs.push(AotGraph { program: p.clone(), report });
        graphs_functions.push(functions);
    }
    let module = parse(&ctx, &glue, "tdl_artifact")?;
    for m in kernels {
        module.link_in_module(m).map_err(|e| LlvmError::Verify(format!("linking the kernels: {e}")))?;
    }
    // The kernels are reached through the tables only.
    for g in &graphs_functions {
        for f in g {
            if let Some(f) = module.get_function(f) {
                f.set_linkage(Linkage::Internal);
            }
        }
    }
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module.verify().map_err(|e| LlvmError::Verify(e.to_string()))?;
    let options = PassBuilderOptions::create();
    options.set_loop_vectorization(true);
    options.set_loop_slp_vectorization(true);
    options.set_loop_unrolling(true);
    module
        .run_passes("default<O3>", &tm, options)
        .map_err(|m| LlvmError::Passes { pipeline: "default<O3>".into(), message: m.to_string() })?;
    let buf = tm
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| LlvmError::Internal(format!("cannot write the object file: {e}")))?;
    Ok(Artifact { object: buf.as_slice().to_vec(), graphs })
}

/// The C type of a buffer element.
fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::I32 => "int32_t",
        DType::Bool => "uint8_t (bool)",
        DType::F16 => "uint16_t (f16 bits)",
        DType::BF16 => "uint16_t (bf16 bits)",
    }
}

/// The C header of an artifact of `graphs` (compiled from `source`):
/// one entry point per graph, with its dimensions, inputs and outputs
/// documented in order.
pub fn header_text(graphs: &[AotGraph], source: &str, guard: &str) -> String {
    let guard: String =
        guard.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    let mut h = String::new();
    let _ = writeln!(h, "/* Generated by tdlc {} from {source}; do not edit.", env!("CARGO_PKG_VERSION"));
    h.push_str(
        " *
 * Every entry point takes
 *   dims         the values of the graph's dimension symbols, in the order listed;
 *   inputs       one pointer per parameter, in order (element types below);
 *   input_lens   the number of elements of each input;
 *   outputs      one pointer per result, written by the call;
 *   output_lens  the number of elements of each output.
 * Every length is checked against the shapes the dimensions give before
 * anything is read or written. Returns 0 on success; otherwise nonzero,
 * and tdl_last_error() says what was wrong. One artifact serves every
 * value of the dimensions. Worker threads: TDL_THREADS or tdl_set_threads,
 * else every core.
 */
",
    );
    let _ = writeln!(h, "#ifndef TDL_{guard}_H\n#define TDL_{guard}_H\n");
    h.push_str("#include <stddef.h>\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
    h.push_str("/* The message of the last failed call on this thread (\"\" after a success). */\n");
    h.push_str("const char *tdl_last_error(void);\n\n");
    h.push_str("/* Worker threads of later calls; n <= 0 restores the default. */\nvoid tdl_set_threads(int n);\n");
    for g in graphs {
        let p = &g.program;
        let _ = writeln!(h, "\n/* graph `{}`", p.name);
        let dims = if p.symbols.is_empty() { "(none)".to_string() } else { p.symbols.join(", ") };
        let _ = writeln!(h, " *   dims ({}): {dims}", p.symbols.len());
        let shape = |b: &tdl_kernel::ir::Buffer| {
            let s: Vec<String> = b.shape.iter().map(|d| format!("[{d}]")).collect();
            format!("{} {}{}", c_type(b.dtype), b.name, s.join(""))
        };
        for (i, id) in p.params.iter().enumerate() {
            if let Some(b) = p.buffer(*id) {
                let _ = writeln!(h, " *   input {i}: {}", shape(b));
            }
        }
        for (i, id) in p.results.iter().enumerate() {
            if let Some(b) = p.buffer(*id) {
                let _ = writeln!(h, " *   output {i}: {}", shape(b));
            }
        }
        h.push_str(" *   kernels:\n");
        for k in &g.report {
            let how = match &k.how {
                Ok(what) => format!("compiled: {what}"),
                Err(_) => "runs in the runtime's Kernel IR executor".to_string(),
            };
            let _ = writeln!(h, " *     {} ({}): {how}", k.name, k.kind);
        }
        h.push_str(" */\n");
        let _ = writeln!(
            h,
            "int {}(const int64_t *dims, const void *const *inputs, const size_t *input_lens,\n    \
             void *const *outputs, const size_t *output_lens);",
            entry_name(&p.name)
        );
    }
    h.push_str("\n#ifdef __cplusplus\n}\n#endif\n\n");
    let _ = writeln!(h, "#endif /* TDL_{guard}_H */");
    h
}

/// The libraries a Rust static library needs on Linux
/// (`rustc --print native-static-libs`).
const NATIVE_LIBS: [&str; 6] = ["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"];

/// The symbols a shared library exports: the entry points and the C API
/// (the runtime's Rust symbols stay local, and unused code is dropped).
const VERSION_SCRIPT: &str = "{\n  global: tdl_run_*; tdl_last_error; tdl_set_threads;\n  local: *;\n};\n";

/// Links `object` and the runtime archive `runtime` into the shared library
/// `out` with the C compiler (`$CC`, else `cc`); only the C API is
/// exported.
pub fn link_shared(object: &Path, runtime: &Path, out: &Path) -> Result<(), LlvmError> {
    let cc = std::env::var("CC").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "cc".to_string());
    let script = object.with_extension("exports");
    std::fs::write(&script, VERSION_SCRIPT)
        .map_err(|e| LlvmError::Internal(format!("cannot write {}: {e}", script.display())))?;
    let mut arg = std::ffi::OsString::from("-Wl,--version-script=");
    arg.push(&script);
    let output = std::process::Command::new(&cc)
        .arg("-shared")
        .arg("-o")
        .arg(out)
        .arg(object)
        .arg(runtime)
        .arg("-Wl,--gc-sections")
        .arg(arg)
        .args(NATIVE_LIBS)
        .output();
    let _ = std::fs::remove_file(&script);
    let output = output
        .map_err(|e| LlvmError::Internal(format!("cannot run the C compiler `{cc}` to link {}: {e}", out.display())))?;
    if !output.status.success() {
        return Err(LlvmError::Internal(format!(
            "`{cc} -shared` failed to link {}: {}",
            out.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}
