//! Ahead-of-time artifacts: `tdlc compile --emit obj|so|header`, the C
//! example (`examples/c/run_attention.c`) built, linked and run at several
//! sequence lengths against the reference interpreter, and one shared
//! library of the whole transformer block loaded and run at several T.
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

/// `tdlc compile FILE --emit so -o DIR/libNAME.so`; returns the library.
fn compile_so(file: &Path, dir: &Path, name: &str) -> PathBuf {
    runtime();
    let so = dir.join(format!("lib{name}.so"));
    let out =
        tdlc(["compile".as_ref(), file.as_os_str(), "--emit".as_ref(), "so".as_ref(), "-o".as_ref(), so.as_os_str()]);
    assert_ok(&out);
    assert!(so.is_file(), "no {}", so.display());
    assert!(dir.join(format!("{name}.h")).is_file(), "no header beside {}", so.display());
    so
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

/// Runs graph 0 of example `name` (one symbol, `T`) through a shared
/// library at each length in `ts`, against the reference.
fn library_matches_the_reference(name: &str, ts: &[i64]) {
    let dir = tempdir();
    let file = example(name);
    let so = compile_so(&file, dir.path(), name);
    let src = std::fs::read_to_string(&file).unwrap();
    let checked = tdl::frontend::check(&src).expect("the example checks");
    let g = checked.graphs[0].graph();
    let entry_name = format!("tdl_run_{}\0", checked.graphs[0].name);
    // SAFETY: the library is the one tdlc just wrote; its entry point has
    // the signature of its header.
    let lib = unsafe { libloading::Library::new(&so) }.expect("the library loads");
    let entry: libloading::Symbol<'_, Entry> = unsafe { lib.get(entry_name.as_bytes()) }.expect("the entry point");
    let last_error: libloading::Symbol<'_, unsafe extern "C" fn() -> *const std::ffi::c_char> =
        unsafe { lib.get(b"tdl_last_error\0") }.expect("tdl_last_error");
    for &t in ts {
        let b: Bindings = [("T".to_string(), t)].into_iter().collect();
        let inputs: Vec<Tensor> = g
            .params()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let shape: Vec<usize> =
                    p.ty.concrete_shape(&b).unwrap().into_iter().map(|d| usize::try_from(d).unwrap()).collect();
                tdl::reference::random::random_tensor(p.ty.dtype, &shape, 7 + i as u64)
            })
            .collect();
        let want = reference(&file, &inputs);
        let data: Vec<Vec<f32>> = inputs.iter().map(|x| x.data.iter().map(|&v| v as f32).collect()).collect();
        let ptrs: Vec<*const u8> = data.iter().map(|d| d.as_ptr().cast()).collect();
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let mut out = vec![0f32; want[0].data.len()];
        let outs = [out.as_mut_ptr().cast::<u8>()];
        let out_lens = [out.len()];
        let dims = [t];
        // SAFETY: every pointer addresses as many f32s as its length says.
        let rc = unsafe { entry(dims.as_ptr(), ptrs.as_ptr(), lens.as_ptr(), outs.as_ptr(), out_lens.as_ptr()) };
        let message = unsafe { std::ffi::CStr::from_ptr(last_error()) }.to_string_lossy().into_owned();
        assert_eq!(rc, 0, "{name} at T={t}: {message}");
        let scale = want[0].data.iter().fold(0f64, |m, x| m.max(x.abs())).max(1.0);
        let got: Vec<f64> = out.iter().map(|&x| f64::from(x)).collect();
        let err = max_abs_diff(&got, &want[0].data) / scale;
        assert!(err <= 1e-4, "{name} at T={t}: error {err:.2e} relative to max |reference|");
        // A short input is refused, nothing written.
        let short: Vec<usize> = lens.iter().map(|&n| n - 1).collect();
        let rc = unsafe { entry(dims.as_ptr(), ptrs.as_ptr(), short.as_ptr(), outs.as_ptr(), out_lens.as_ptr()) };
        let message = unsafe { std::ffi::CStr::from_ptr(last_error()) }.to_string_lossy().into_owned();
        assert_eq!(rc, 1);
        assert!(message.contains("must have") && message.contains("the buffer has"), "{message}");
    }
}

#[test]
fn one_shared_library_runs_the_transformer_block_at_several_lengths() {
    library_matches_the_reference("block", &[5, 70]);
}

/// A mask lambda reading a per-head constant array (MoA), compiled into
/// the artifact, and grouped-query attention with a sliding window.
#[test]
fn shared_libraries_of_lambda_masks_and_gqa() {
    library_matches_the_reference("moa", &[1, 45, 130]);
    library_matches_the_reference("gqa_window", &[1, 77]);
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
