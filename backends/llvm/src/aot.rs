//! Ahead-of-time artifacts: `tdlc compile --emit obj|so|header`.
//!
//! One object file holds, per graph of the source:
//!
//! * the kernels whose code does not depend on the sizes — attention
//!   programs and matmul row blocks, the same LLVM IR the JIT compiles —
//!   each renamed `tdl_aot_<g>_<i>` (its helpers made internal);
//! * the kernels whose code the JIT specialises for the run-time strides
//!   and sizes — elementwise chains and copy/concat/repeat (a strided loop
//!   nest per [`tdl_rt::elementwise::LoopVariant`]), softmax/layernorm/rmsnorm/rope rows and
//!   reductions (a row function per [`tdl_rt::rows::RowCode`]) — compiled for the
//!   variants the program's symbolic shapes give ([`variant_kernel`]), the
//!   same IR the JIT generates for them;
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
//! Loop-nest variants: the nests the runtime's driver builds at generic
//! sizes (every symbol bound to a large value), simplified and as built
//! ([`tdl_rt::elementwise::loop_variants`]); row functions: the last-axis
//! and inner-axis forms a softmax or reduction can need
//! ([`tdl_rt::rows::row_codes`]). At run time the runtime runs a kernel's
//! code when the call's nest matches a compiled variant and the executor's
//! loops otherwise (a symbol bound to 1 can turn an operand into a
//! broadcast, say), so a result is never wrong. What each kernel got is
//! [`AotGraph::report`]'s; the kernels no code generator compiles (integer
//! matmuls and moves, lambdas the lambda compiler declines) run in the
//! executor's loops.

use std::fmt::Write as _;
use std::path::Path;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use inkwell::OptimizationLevel;
use std::collections::HashMap;

use tdl_ir::DType;
use tdl_kernel::interp::{
    AttentionArgs, ElementwiseArgs, F32Run, HookRun, Hooks, I32Run, MatMulArgs, MoveArgs, RowArgs,
};
use tdl_kernel::ir::{
    AttentionKernel, ElementwiseKernel, KernelBody, KernelProgram, MatMulKernel, MoveKernel, ReduceKernel, RowKernel,
};
use tdl_rt::aot::{AotHooks, AotKernel, AotProgram, FORMAT_VERSION};

/// What the executor's run report calls an artifact's compiled kernels.
pub use tdl_rt::aot::EXECUTOR;
use tdl_rt::rows::RowCode;

use crate::emit::static_kernel;
use crate::jit::Jitted;
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

/// Kernel module `text` with its function `entry` renamed `fname` and
/// everything else it defines made internal (so modules link together).
fn renamed<'ctx>(ctx: &'ctx Context, text: &str, entry: &str, fname: &str) -> Result<Module<'ctx>, LlvmError> {
    let m = parse(ctx, text, fname)?;
    for f in m.get_functions() {
        if f.count_basic_blocks() == 0 {
            continue;
        }
        if f.get_name().to_bytes() == entry.as_bytes() {
            f.as_global_value().set_name(fname);
        } else {
            f.set_linkage(Linkage::Internal);
        }
    }
    for gv in m.get_globals() {
        if gv.get_initializer().is_some() && gv.get_linkage() != Linkage::Appending {
            gv.set_linkage(Linkage::Internal);
        }
    }
    Ok(m)
}

/// Sets the function-table index of a compiled kernel.
fn set_function(aot: &mut AotKernel, function: usize) {
    match aot {
        AotKernel::Attention { function: f, .. }
        | AotKernel::MatMul { function: f, .. }
        | AotKernel::Loop { function: f, .. }
        | AotKernel::Rows { function: f, .. } => *f = function,
    }
}

/// A kernel compiled as one function per variant of its run-time
/// structure: what the report says, and per function its LLVM IR text, its
/// entry function and what the runtime needs to call it (`function` still
/// 0).
pub(crate) struct VariantKernel {
    pub(crate) what: String,
    pub(crate) functions: Vec<(String, &'static str, AotKernel)>,
}

/// Elementwise, move, row or reduce kernel `body` of `p` compiled for
/// `host` for the variants its symbolic shapes give, or why it is not (the
/// reason, for `--emit` and the artifact's report).
pub(crate) fn variant_kernel(p: &KernelProgram, body: &KernelBody, host: &HostTarget) -> Result<VariantKernel, String> {
    let out = body.out();
    match body {
        KernelBody::Elementwise(_) | KernelBody::Move(_) => {
            let ek = match body {
                KernelBody::Elementwise(k) => Some(k),
                _ => None,
            };
            let variants = tdl_rt::elementwise::loop_variants(p, body)?;
            let mut functions = Vec::new();
            let mut texts = Vec::new();
            for v in variants {
                if let Some(text) = crate::elementwise::variant_ir(p, ek, &v, host) {
                    texts.push(v.text());
                    functions.push((
                        text,
                        crate::elementwise::FN_NAME,
                        AotKernel::Loop { out, variant: v, function: 0 },
                    ));
                }
            }
            if functions.is_empty() {
                return Err("not supported yet: the loop-nest code generator does not compile this chain (integer \
                            exp-like functions, a lambda it declines)"
                    .into());
            }
            Ok(VariantKernel {
                what: format!(
                    "strided loop nest{} for {} (other strides run in the runtime's executor)",
                    if texts.len() > 1 { "s" } else { "" },
                    texts.join(" / ")
                ),
                functions,
            })
        }
        KernelBody::Row(_) | KernelBody::Reduce(_) => {
            let codes = tdl_rt::rows::row_codes(p, body)?;
            let what: Vec<String> = codes.iter().map(RowCode::text).collect();
            let functions = codes
                .into_iter()
                .map(|code| {
                    (crate::rows::row_ir(&code, host), crate::rows::FN_NAME, AotKernel::Rows { out, code, function: 0 })
                })
                .collect();
            let s = if what.len() > 1 { "s" } else { "" };
            Ok(VariantKernel { what: format!("row function{s}: {}", what.join(" / ")), functions })
        }
        other => Err(format!("{} kernels are compiled whatever the sizes (see emit::static_kernel)", other.kind())),
    }
}

/// What an artifact compiles for one graph: the distinct functions (their
/// LLVM IR text and entry function), the compiled kernels (indexing the
/// functions) and the report.
struct GraphCode {
    functions: Vec<(String, &'static str)>,
    compiled: Vec<AotKernel>,
    report: Vec<KernelReport>,
}

fn graph_code(p: &KernelProgram, host: &HostTarget) -> GraphCode {
    let mut functions: Vec<(String, &'static str)> = Vec::new();
    // The function of each distinct IR text (kernels of one chain and
    // variant share it).
    let mut by_text: HashMap<String, usize> = HashMap::new();
    let mut add = |text: String, entry: &'static str| -> usize {
        if let Some(&f) = by_text.get(&text) {
            return f;
        }
        let function = functions.len();
        by_text.insert(text.clone(), function);
        functions.push((text, entry));
        function
    };
    let mut compiled: Vec<AotKernel> = Vec::new();
    let mut report = Vec::new();
    for k in &p.kernels {
        let how = match &k.body {
            KernelBody::Attention(_) | KernelBody::MatMul(_) => static_kernel(p, &k.body, host).map(|sk| {
                let mut aot = sk.aot;
                set_function(&mut aot, add(sk.text, sk.entry));
                if !compiled.contains(&aot) {
                    compiled.push(aot);
                }
                sk.what
            }),
            _ => variant_kernel(p, &k.body, host).map(|vk| {
                for (text, entry, mut aot) in vk.functions {
                    set_function(&mut aot, add(text, entry));
                    compiled.push(aot);
                }
                vk.what
            }),
        };
        report.push(KernelReport { name: k.name.clone(), kind: k.body.kind(), how });
    }
    GraphCode { functions, compiled, report }
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
        let GraphCode { functions: code, compiled, report } = graph_code(p, host);
        let mut functions: Vec<String> = Vec::with_capacity(code.len());
        for (i, (text, entry)) in code.iter().enumerate() {
            let fname = format!("tdl_aot_{g}_{i}");
            kernels.push(renamed(&ctx, text, entry, &fname)?);
            functions.push(fname);
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

/// One graph of an artifact loaded in this process: the functions an
/// object file of it holds, JIT-compiled from the same IR instead, behind
/// the runtime's own [`AotHooks`] built from the descriptor (serialized and
/// read back) — what `tdl_rt_run` runs for the graph, without the object
/// file and the C boundary. Tests run the ahead-of-time path on whole
/// corpora this way.
pub struct InProcess {
    hooks: AotHooks,
    /// Keeps the machine code of the hooks' functions alive.
    _code: Vec<Jitted>,
    /// How each kernel runs (as [`Artifact::graphs`] reports it).
    pub report: Vec<KernelReport>,
}

impl InProcess {
    /// Compiles graph `p` for `host` (which must be this machine's CPU:
    /// the code runs here), its kernels run on `threads` threads.
    pub fn load(p: &KernelProgram, host: &HostTarget, threads: usize) -> Result<InProcess, LlvmError> {
        let GraphCode { functions, compiled, report } = graph_code(p, host);
        let code = functions
            .iter()
            .map(|(text, entry)| Jitted::compile(text, "tdl_aot", entry, host))
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<usize> = code.iter().map(|c| c.addr).collect();
        let desc = AotProgram { version: FORMAT_VERSION, program: p.clone(), compiled }.to_bytes()?;
        let read = AotProgram::from_bytes(&desc)?;
        // SAFETY: `addrs[i]` is function `i` of `graph_code`, which the
        // descriptor's kernels index; `_code` keeps it alive with the hooks.
        let hooks = unsafe { AotHooks::new(&read.program, &read.compiled, &addrs, threads)? };
        Ok(InProcess { hooks, _code: code, report })
    }
}

impl Hooks for InProcess {
    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        self.hooks.attention(k, args)
    }

    fn matmul(&self, k: &MatMulKernel, args: &MatMulArgs<'_>) -> Option<Result<(Vec<f32>, &'static str), String>> {
        self.hooks.matmul(k, args)
    }

    fn elementwise(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hooks.elementwise(k, args)
    }

    fn elementwise_i32(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<I32Run, String>> {
        self.hooks.elementwise_i32(k, args)
    }

    fn reduce(&self, k: &ReduceKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hooks.reduce(k, args)
    }

    fn reduce_i32(&self, k: &ReduceKernel, x: &[i32], shape: &[usize]) -> Option<Result<I32Run, String>> {
        self.hooks.reduce_i32(k, x, shape)
    }

    fn row(&self, k: &RowKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hooks.row(k, args)
    }

    fn movement(&self, k: &MoveKernel, args: &MoveArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hooks.movement(k, args)
    }
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
    h.push_str(
        "/* What ran each kernel of the last successful call on this thread: one line\n \
         * per kernel, \"name<TAB>kind<TAB>executor\"; the executor is \"cpu (AOT)\" for\n \
         * the library's compiled code, \"interpreter\" for the runtime's loops. */\n",
    );
    h.push_str("const char *tdl_last_run_report(void);\n\n");
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
                Err(why) => format!("runs in the runtime's Kernel IR executor ({why})"),
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
const VERSION_SCRIPT: &str =
    "{\n  global: tdl_run_*; tdl_last_error; tdl_last_run_report; tdl_set_threads;\n  local: *;\n};\n";

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
