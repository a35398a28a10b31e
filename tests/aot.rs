//! Ahead-of-time artifacts: `tdlc compile --emit obj|so|header`, the C
//! example (`examples/c/run_attention.c`) built, linked and run at several
//! sequence lengths against the reference interpreter, one shared library
//! of the whole transformer block loaded and run at several T with every
//! kernel in compiled code (the runtime's `tdl_last_run_report` says which
//! executor ran each) and the JIT's bits, and a library whose compiled loop nest does not
//! match a call's strides falling back to the runtime's loops.
//!
//! These tests need the runtime archive `libtdl_runtime.a` beside the tdlc
//! binary; [`runtime`] builds it with cargo first (a no-op when it is
//! fresh), and a C compiler (`cc`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{assert_ok, assert_user_error_says, example, tdlc, TDLC};
use tdl::ir::{Bindings, DType};
use tdl::reference::{run_with_limits, Limits, Tensor};

/// Builds the runtime archive for the profile the tdlc binary was built
/// with (once per test binary) and returns its path.
fn runtime() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(TDLC).parent().expect("tdlc's folder").to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "tdl-rt-capi"]).current_dir(env!("CARGO_MANIFEST_DIR"));
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "cargo build -p tdl-rt-capi failed");
            let lib = dir.join("libtdl_runtime.a");
            assert!(lib.is_file(), "{} was not built", lib.display());
            lib
        })
        .clone()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

/// The C example's input pattern (exact in `f32` in C and Rust alike).
fn pattern(n: usize, seed: u64) -> Vec<f64> {
    (0..n as u64).map(|i| f64::from(((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5)).collect()
}

/// The reference's output of graph 0 of `file` on `inputs`.
fn reference(file: &Path, inputs: &[Tensor]) -> Vec<Tensor> {
    let src = std::fs::read_to_string(file).expect("the example");
    let checked = tdl::frontend::check(&src).expect("the example checks");
    run_with_limits(&checked.graphs[0], inputs, &Limits::default()).expect("the reference runs")
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// `tdlc compile FILE --emit so -o DIR/libNAME.so`; returns the library
/// and what tdlc printed on stderr.
fn compile_so_noting(file: &Path, dir: &Path, name: &str) -> (PathBuf, String) {
    runtime();
    let so = dir.join(format!("lib{name}.so"));
    let out =
        tdlc(["compile".as_ref(), file.as_os_str(), "--emit".as_ref(), "so".as_ref(), "-o".as_ref(), so.as_os_str()]);
    assert_ok(&out);
    assert!(so.is_file(), "no {}", so.display());
    assert!(dir.join(format!("{name}.h")).is_file(), "no header beside {}", so.display());
    (so, out.stderr)
}

fn compile_so(file: &Path, dir: &Path, name: &str) -> PathBuf {
    compile_so_noting(file, dir, name).0
}

#[test]
fn the_c_example_builds_links_and_runs_at_several_lengths() {
    let dir = tempdir();
    let file = example("causal_attention");
    compile_so(&file, dir.path(), "causal_attention");
    let header = std::fs::read_to_string(dir.path().join("causal_attention.h")).unwrap();
    assert!(header.contains("int tdl_run_causal_attention(const int64_t *dims"), "{header}");
    assert!(header.contains("dims (3): H, S, T"), "{header}");
    let exe = dir.path().join("run_attention");
    let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c/run_attention.c");
    let status = Command::new("cc")
        .arg("-O2")
        .arg("-I")
        .arg(dir.path())
        .arg(&c)
        .arg("-L")
        .arg(dir.path())
        .arg("-lcausal_attention")
        .arg(format!("-Wl,-rpath,{}", dir.path().display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("cc runs");
    assert!(status.success(), "the C example does not build");
    let run = |h: usize, t: usize, threads: &str| -> Vec<f64> {
        let out_file = dir.path().join(format!("out-{h}-{t}-{threads}.f32"));
        let out = Command::new(&exe)
            .args([h.to_string(), t.to_string()])
            .arg(&out_file)
            .env("TDL_THREADS", threads)
            .output()
            .expect("the example runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "H={h} T={t}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("short output refused: output 0 (`t1`) must have"), "{stdout}");
        let bytes = std::fs::read(&out_file).unwrap();
        bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
    };
    // One library, every length; none a multiple of the 128×64 tiles.
    for (h, t) in [(2, 1), (2, 37), (3, 130), (1, 257)] {
        let n = h * t * 64;
        let inputs: Vec<Tensor> =
            (1..=3).map(|seed| Tensor::new(DType::F32, vec![h, t, 64], pattern(n, seed)).unwrap()).collect();
        let want = reference(&file, &inputs);
        let got = run(h, t, "2");
        let err = max_abs_diff(&got, &want[0].data);
        assert!(err <= 1e-4, "H={h} T={t}: max abs error {err:.2e}");
    }
    // Threads 1 and 2 give the same bits.
    assert_eq!(run(3, 130, "1"), run(3, 130, "2"));
}

/// The entry point's C signature, called through `libloading`.
type Entry = unsafe extern "C" fn(*const i64, *const *const u8, *const usize, *const *mut u8, *const usize) -> i32;

/// A loaded artifact: its entry point and C API, called through
/// `libloading`.
struct Loaded {
    lib: libloading::Library,
    entry: String,
}

impl Loaded {
    fn open(so: &Path, graph: &str) -> Loaded {
        // SAFETY: the library is one tdlc just wrote; its symbols have the
        // signatures of its header.
        let lib = unsafe { libloading::Library::new(so) }.expect("the library loads");
        Loaded { lib, entry: format!("tdl_run_{graph}\0") }
    }

    fn c_string(&self, symbol: &[u8]) -> String {
        // SAFETY: `tdl_last_error` and `tdl_last_run_report` return a valid
        // C string owned by the library's thread-local storage.
        unsafe {
            let f: libloading::Symbol<'_, unsafe extern "C" fn() -> *const std::ffi::c_char> =
                self.lib.get(symbol).expect("the C API");
            std::ffi::CStr::from_ptr(f()).to_string_lossy().into_owned()
        }
    }

    /// Calls the entry with `dims`, the f32 inputs (with lengths `lens`)
    /// and one output of `n` elements; returns the status, the output and
    /// `tdl_last_error()`.
    fn call(&self, dims: &[i64], inputs: &[Vec<f32>], lens: &[usize], n: usize) -> (i32, Vec<f32>, String) {
        let ptrs: Vec<*const u8> = inputs.iter().map(|d| d.as_ptr().cast()).collect();
        let mut out = vec![0f32; n];
        let outs = [out.as_mut_ptr().cast::<u8>()];
        let out_lens = [n];
        // SAFETY: every pointer addresses as many f32s as its length says
        // (the runtime checks the lengths against the shapes first).
        let rc = unsafe {
            let entry: libloading::Symbol<'_, Entry> = self.lib.get(self.entry.as_bytes()).expect("the entry point");
            entry(dims.as_ptr(), ptrs.as_ptr(), lens.as_ptr(), outs.as_ptr(), out_lens.as_ptr())
        };
        (rc, out, self.c_string(b"tdl_last_error\0"))
    }

    /// `tdl_last_run_report()` as `(kernel, kind, executor)` rows.
    fn report(&self) -> Vec<(String, String, String)> {
        self.c_string(b"tdl_last_run_report\0")
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 3, "a report line: {l:?}");
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect()
    }
}

/// Random inputs of graph `g` under `b` (the reference's and as f32).
fn graph_inputs(g: &tdl::ir::Graph, b: &Bindings) -> (Vec<Tensor>, Vec<Vec<f32>>) {
    let inputs: Vec<Tensor> = g
        .params()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let shape: Vec<usize> =
                p.ty.concrete_shape(b).unwrap().into_iter().map(|d| usize::try_from(d).unwrap()).collect();
            tdl::reference::random::random_tensor(p.ty.dtype, &shape, 7 + i as u64)
        })
        .collect();
    let data = inputs.iter().map(|x| x.data.iter().map(|&v| v as f32).collect()).collect();
    (inputs, data)
}

/// The transformer block's library: every kernel compiled (so says the
/// header, tdlc prints no note), and at every T — none a multiple of a
/// tile size (attention 128×64, matmul 64×64×256, loop-nest work items of
/// 16 K elements) — every kernel runs in the library's compiled code, the
/// result is the reference's and bit for bit the JIT's.
#[test]
fn one_shared_library_runs_the_transformer_block_at_several_lengths() {
    let dir = tempdir();
    let file = example("block");
    let (so, stderr) = compile_so_noting(&file, dir.path(), "block");
    assert!(!stderr.contains("note:"), "a kernel of block.tdl is not compiled:\n{stderr}");
    let header = std::fs::read_to_string(dir.path().join("block.h")).unwrap();
    let kernel_lines: Vec<&str> = header.lines().filter(|l| l.contains("): ") && l.starts_with(" *     ")).collect();
    assert_eq!(kernel_lines.len(), 16, "block.tdl's 16 kernels in the header:\n{header}");
    for l in &kernel_lines {
        assert!(l.contains("): compiled: "), "{l}");
    }
    for kind in ["(rmsnorm)", "(rope)", "(copy)", "(elementwise)", "(matmul)", "(attention)"] {
        assert!(kernel_lines.iter().any(|l| l.contains(kind)), "no {kind} kernel in\n{header}");
    }
    let src = std::fs::read_to_string(&file).unwrap();
    let checked = tdl::frontend::check(&src).expect("block.tdl checks");
    let g = checked.graphs[0].graph();
    let lib = Loaded::open(&so, "block");
    for t in [1i64, 5, 70, 131] {
        let b: Bindings = [("T".to_string(), t)].into_iter().collect();
        let (inputs, data) = graph_inputs(g, &b);
        let want = reference(&file, &inputs);
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let (rc, out, message) = lib.call(&[t], &data, &lens, want[0].data.len());
        assert_eq!(rc, 0, "T={t}: {message}");
        let report = lib.report();
        assert_eq!(report.len(), 16, "T={t}: {report:?}");
        for (name, kind, executor) in &report {
            assert_eq!(executor, "cpu (AOT)", "T={t}: kernel `{name}` ({kind}) did not run compiled code");
        }
        let scale = want[0].data.iter().fold(0f64, |m, x| m.max(x.abs())).max(1.0);
        let got: Vec<f64> = out.iter().map(|&x| f64::from(x)).collect();
        let err = max_abs_diff(&got, &want[0].data) / scale;
        assert!(err <= 1e-4, "block at T={t}: error {err:.2e} relative to max |reference|");
        // The JIT (`tdlc run --backend cpu`) gives the same bits: the same
        // kernels, the same code.
        let mut args: Vec<std::ffi::OsString> =
            ["run".as_ref(), file.as_os_str(), "--backend".as_ref(), "cpu".as_ref()].map(Into::into).to_vec();
        for (p, x) in g.params().iter().zip(&inputs) {
            let path = dir.path().join(format!("{}-{t}.npy", p.name));
            tdl::reference::npy::write_npy(&path, x).unwrap();
            args.push("--input".into());
            args.push(format!("{}={}", p.name, path.display()).into());
        }
        let jit_out = dir.path().join(format!("jit-{t}.npy"));
        args.extend(["--output".into(), jit_out.clone().into_os_string()]);
        assert_ok(&tdlc(&args));
        let jit = tdl::reference::npy::read_npy(&jit_out).unwrap();
        assert_eq!(jit.shape, want[0].shape);
        let same = jit.data.iter().zip(&out).all(|(&j, &a)| (j as f32).to_bits() == a.to_bits());
        assert!(same, "T={t}: the library's output differs from the JIT's");
        // A short input is refused, nothing written.
        let short: Vec<usize> = lens.iter().map(|&n| n - 1).collect();
        let (rc, _, message) = lib.call(&[t], &data, &short, want[0].data.len());
        assert_eq!(rc, 1);
        assert!(message.contains("must have") && message.contains("the buffer has"), "{message}");
    }
}

/// A library compiled for the strides of generic sizes, called at sizes
/// where an operand's strides differ: `y: [T, 1]` is broadcast along the
/// last axis of `[T, S]` (stride 0) unless `S = 1`, where it is read with
/// stride 1. The kernel falls back to the runtime's loops there — and the
/// result is still the reference's.
#[test]
fn a_call_whose_strides_match_no_compiled_variant_runs_in_the_runtime() {
    let dir = tempdir();
    let file = dir.path().join("scale.tdl");
    std::fs::write(&file, "graph scale(x: f32[T, S], y: f32[T, 1]) -> f32[T, S] {\n    return x * y + x\n}\n").unwrap();
    let (so, stderr) = compile_so_noting(&file, dir.path(), "scale");
    assert!(!stderr.contains("note:"), "{stderr}");
    let header = std::fs::read_to_string(dir.path().join("scale.h")).unwrap();
    assert!(header.contains("(elementwise): compiled: strided loop nest"), "{header}");
    let src = std::fs::read_to_string(&file).unwrap();
    let checked = tdl::frontend::check(&src).expect("scale.tdl checks");
    let g = checked.graphs[0].graph();
    let lib = Loaded::open(&so, "scale");
    for (s, t, compiled) in [(5i64, 3i64, true), (1, 3, false), (1, 1, false), (37, 1, true), (2, 70, true)] {
        let b: Bindings = [("S".to_string(), s), ("T".to_string(), t)].into_iter().collect();
        let (inputs, data) = graph_inputs(g, &b);
        let want = reference(&file, &inputs);
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        // The entry takes the dimensions in sorted order: S, T.
        let (rc, out, message) = lib.call(&[s, t], &data, &lens, want[0].data.len());
        assert_eq!(rc, 0, "S={s} T={t}: {message}");
        let report = lib.report();
        assert_eq!(report.len(), 1, "{report:?}");
        let want_executor = if compiled { "cpu (AOT)" } else { "interpreter" };
        assert_eq!(report[0].2, want_executor, "S={s} T={t}: {report:?}");
        let got: Vec<f64> = out.iter().map(|&x| f64::from(x)).collect();
        let err = max_abs_diff(&got, &want[0].data);
        assert!(err <= 1e-5, "S={s} T={t}: max abs error {err:.2e}");
    }
}

#[test]
fn emit_obj_and_header_and_their_errors() {
    let dir = tempdir();
    let file = example("gqa_window");
    let obj = dir.path().join("gqa.o");
    let out =
        tdlc(["compile".as_ref(), file.as_os_str(), "--emit".as_ref(), "obj".as_ref(), "-o".as_ref(), obj.as_os_str()]);
    assert_ok(&out);
    let bytes = std::fs::read(&obj).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "an ELF object");
    let out = tdlc(["compile".as_ref(), file.as_os_str(), "--emit".as_ref(), "header".as_ref()]);
    assert_ok(&out);
    assert!(out.stdout.contains("int tdl_run_"), "{}", out.stdout);
    assert!(out.stdout.contains("const char *tdl_last_error(void);"), "{}", out.stdout);
    for emit in ["obj", "so"] {
        let out = tdlc(["compile".as_ref(), file.as_os_str(), "--emit".as_ref(), emit.as_ref()]);
        assert_user_error_says(&out, &["write binary files", "-o FILE"]);
    }
}

/// A mask lambda reading a per-head constant array (MoA) and grouped-query
/// attention with a sliding window, compiled into libraries and run at
/// several T against the reference, every kernel in compiled code.
#[test]
fn shared_libraries_of_lambda_masks_and_gqa() {
    for (name, ts) in [("moa", &[1i64, 45, 130][..]), ("gqa_window", &[1, 77])] {
        let dir = tempdir();
        let file = example(name);
        let so = compile_so(&file, dir.path(), name);
        let src = std::fs::read_to_string(&file).unwrap();
        let checked = tdl::frontend::check(&src).expect("the example checks");
        let g = checked.graphs[0].graph();
        let lib = Loaded::open(&so, name);
        for &t in ts {
            let b: Bindings = [("T".to_string(), t)].into_iter().collect();
            let (inputs, data) = graph_inputs(g, &b);
            let want = reference(&file, &inputs);
            let lens: Vec<usize> = data.iter().map(Vec::len).collect();
            let (rc, out, message) = lib.call(&[t], &data, &lens, want[0].data.len());
            assert_eq!(rc, 0, "{name} at T={t}: {message}");
            for (k, kind, executor) in lib.report() {
                assert_eq!(executor, "cpu (AOT)", "{name} at T={t}: kernel `{k}` ({kind})");
            }
            let scale = want[0].data.iter().fold(0f64, |m, x| m.max(x.abs())).max(1.0);
            let got: Vec<f64> = out.iter().map(|&x| f64::from(x)).collect();
            let err = max_abs_diff(&got, &want[0].data) / scale;
            assert!(err <= 1e-4, "{name} at T={t}: error {err:.2e} relative to max |reference|");
        }
    }
}

/// Element bytes of `t` in its C type (`f16`/`bf16` bits, `int32_t`,
/// `uint8_t` for `bool`), as a caller of the C entry passes them.
fn c_bytes(t: &Tensor) -> Vec<u8> {
    t.data
        .iter()
        .flat_map(|&x| match t.dtype {
            DType::F32 => (x as f32).to_ne_bytes().to_vec(),
            DType::F16 => half::f16::from_f64(x).to_bits().to_ne_bytes().to_vec(),
            DType::BF16 => half::bf16::from_f64(x).to_bits().to_ne_bytes().to_vec(),
            DType::I32 => (x as i32).to_ne_bytes().to_vec(),
            DType::Bool => vec![u8::from(x != 0.0)],
        })
        .collect()
}

/// Values of C-typed bytes of `dtype`, as `f64`.
fn from_c_bytes(b: &[u8], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => b.chunks(4).map(|c| f64::from(f32::from_ne_bytes(c.try_into().unwrap()))).collect(),
        DType::F16 => {
            b.chunks(2).map(|c| half::f16::from_bits(u16::from_ne_bytes(c.try_into().unwrap())).to_f64()).collect()
        }
        DType::BF16 => {
            b.chunks(2).map(|c| half::bf16::from_bits(u16::from_ne_bytes(c.try_into().unwrap())).to_f64()).collect()
        }
        DType::I32 => b.chunks(4).map(|c| f64::from(i32::from_ne_bytes(c.try_into().unwrap()))).collect(),
        DType::Bool => b.iter().map(|&x| f64::from(x)).collect(),
    }
}

/// A library of graphs with every element type at the C boundary (f16 and
/// bf16 bits, int32, bool bytes): the buffers pass through as their C
/// types, and every output is the reference's (integers and bools exactly,
/// halves to their rounding).
#[test]
fn c_buffers_of_every_element_type_pass_through() {
    let dir = tempdir();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("testsuite/corpus/dtypes.tdl");
    let so = compile_so(&file, dir.path(), "dtypes");
    let src = std::fs::read_to_string(&file).unwrap();
    let checked = tdl::frontend::check(&src).expect("dtypes.tdl checks");
    for t in [1usize, 19, 70] {
        for g in &checked.graphs {
            let mut b = Bindings::new();
            for s in ["H", "S", "T"] {
                b.insert(s.into(), if s == "H" { 2 } else { t as i64 });
            }
            let (inputs, _) = graph_inputs(g, &b);
            let want = run_with_limits(g, &inputs, &Limits::default()).expect("the reference runs");
            let lib = Loaded::open(&so, &g.name);
            let mut symbols: Vec<String> = g.params().iter().flat_map(|p| p.ty.symbols()).collect();
            symbols.sort_unstable();
            symbols.dedup();
            let dims: Vec<i64> = symbols.iter().map(|s| b[s.as_str()]).collect();
            let bytes: Vec<Vec<u8>> = inputs.iter().map(c_bytes).collect();
            let ptrs: Vec<*const u8> = bytes.iter().map(|d| d.as_ptr()).collect();
            let lens: Vec<usize> = inputs.iter().map(|x| x.data.len()).collect();
            let mut outs: Vec<Vec<u8>> = want.iter().map(|w| vec![0u8; c_bytes(w).len()]).collect();
            let out_ptrs: Vec<*mut u8> = outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
            let out_lens: Vec<usize> = want.iter().map(|w| w.data.len()).collect();
            // SAFETY: every buffer holds as many elements of its C type as
            // its length says.
            let rc = unsafe {
                let entry: libloading::Symbol<'_, Entry> = lib.lib.get(lib.entry.as_bytes()).expect("the entry point");
                entry(dims.as_ptr(), ptrs.as_ptr(), lens.as_ptr(), out_ptrs.as_ptr(), out_lens.as_ptr())
            };
            assert_eq!(rc, 0, "`{}` at T={t}: {}", g.name, lib.c_string(b"tdl_last_error\0"));
            for (i, (o, w)) in outs.iter().zip(&want).enumerate() {
                let got = from_c_bytes(o, w.dtype);
                if matches!(w.dtype, DType::I32 | DType::Bool) {
                    assert_eq!(got, w.data, "`{}` output {i} at T={t}", g.name);
                } else {
                    let scale = w.data.iter().fold(1.0f64, |m, x| m.max(x.abs()));
                    let err = max_abs_diff(&got, &w.data);
                    assert!(err <= 1e-2 * scale, "`{}` output {i} at T={t}: max abs error {err:.2e}", g.name);
                }
            }
        }
    }
}
