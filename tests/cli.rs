//! The command-line contract of `tdlc` that scripts rely on: exit codes (0
//! success, 1 user error with diagnostics on stderr, 2 internal error only),
//! `run`'s inputs and outputs, `fmt` and `compile`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tdl::ir::DType;
use tdl::reference::{npy, random_tensor, Tensor};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn write_npy(dir: &Path, name: &str, t: &Tensor) -> PathBuf {
    let p = dir.join(name);
    npy::write_npy(&p, t).unwrap();
    p
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `tdlc run ARGS` in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Out {
    tdlc_in(dir, std::iter::once("run").chain(args.iter().copied()))
}

const TWO: &str = "graph two(x: f32[T, 4]) -> (f32[T, 4], f32[T]) { return exp(x), sum(x, axis = -1) }\n";

const AFFINE: &str = "graph affine(x: f32[T, 4], w: f32[4, 3], b: f32[3]) -> f32[T, 3] {\n    return x @ w + b\n}\n";

/// Writes a raw `.npy` file (version 1.0) with the given header fields.
fn raw_npy(dir: &Path, name: &str, descr: &str, shape: &str, data: &[u8]) -> PathBuf {
    raw_npy_order(dir, name, descr, false, shape, data)
}

/// [`raw_npy`] with the `fortran_order` field.
fn raw_npy_order(dir: &Path, name: &str, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> PathBuf {
    let order = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    write(dir, name, bytes)
}

/// A `.safetensors` file of f32 tensors.
fn write_safetensors(dir: &Path, name: &str, tensors: &[(&str, &Tensor)]) -> PathBuf {
    use safetensors::tensor::TensorView;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            assert_eq!(t.dtype, DType::F32);
            let b: Vec<u8> = t.data.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
            (n.to_string(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, shape)| (n.clone(), TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap()))
        .collect();
    let data = safetensors::serialize(views, None).unwrap();
    write(dir, name, data)
}

fn result_lines(out: &Out) -> Vec<&str> {
    out.stdout.lines().filter(|l| l.starts_with("result ")).collect()
}

// ---------------------------------------------------------------------------
// Usage errors (clap).
// ---------------------------------------------------------------------------

/// clap's convention: usage errors exit 2 with the usage on stderr. Our
/// contract reserves 2 for internal errors; this pins what actually happens
/// so that a change either way is deliberate.
#[test]
fn usage_errors_are_exit_1_with_usage_on_stderr() {
    let cases: [&[&str]; 5] = [&[], &["--bogus"], &["check"], &["run", "--nope", "x.tdl"], &["frobnicate"]];
    for args in cases {
        let out = tdlc(args);
        assert_no_panic(&out);
        assert_eq!(out.code, Some(1), "a usage error is a user error:\n{}", out.describe());
        assert!(out.stderr.contains("Usage: tdlc"), "usage on stderr:\n{}", out.describe());
        assert!(!out.stderr.contains("internal error"), "{}", out.describe());
        assert!(out.stdout.is_empty(), "nothing on stdout:\n{}", out.describe());
    }
    let out = tdlc(["--bogus"]);
    assert!(out.stderr.contains("unexpected argument '--bogus'"), "{}", out.describe());
    let out = tdlc(["check"]);
    assert!(out.stderr.contains("<FILE>"), "{}", out.describe());
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    let out = tdlc(["--help"]);
    assert_ok(&out);
    for sub in ["check", "run", "fmt", "compile"] {
        assert!(out.stdout.contains(sub), "--help lists `{sub}`:\n{}", out.describe());
    }
    let out = tdlc(["--version"]);
    assert_ok(&out);
    assert!(out.stdout.starts_with("tdlc "), "{}", out.describe());
    let out = tdlc(["run", "--help"]);
    assert_ok(&out);
    for flag in ["--input", "--weights", "--bind", "--random", "--seed", "--output", "--graph"] {
        assert!(out.stdout.contains(flag), "run --help lists {flag}:\n{}", out.describe());
    }
}

// ---------------------------------------------------------------------------
// Bad sources: exit 1, located diagnostics.
// ---------------------------------------------------------------------------

#[test]
fn a_bad_source_is_exit_1_with_file_line_col_and_a_marker_in_every_subcommand() {
    let dir = tmp();
    let bad = write(dir.path(), "bad.tdl", "graph f(x: f32[T, 4]) -> f32[T, 4] {\n    return exp(y)\n}\n");
    for args in [
        vec!["check", "bad.tdl"],
        vec!["run", "bad.tdl", "--random", "--bind", "T=3"],
        vec!["compile", "bad.tdl"],
        vec!["compile", "bad.tdl", "--emit", "graph", "--graph", "f"],
    ] {
        let out = tdlc_in(dir.path(), &args);
        assert_user_error_says(&out, &["unknown name `y`", "bad.tdl:2:16"]);
        assert_located_diagnostics(&out, "bad.tdl");
        assert!(out.stdout.is_empty(), "nothing on stdout for a bad source:\n{}", out.describe());
    }
    assert!(bad.exists());
}

/// The contract's own example of a type error: the message says what was
/// expected and suggests the missing `transpose`.
#[test]
fn a_type_error_names_the_types_and_suggests_the_fix() {
    let dir = tmp();
    write(
        dir.path(),
        "scores.tdl",
        "graph scores(q: f32[H, T, 64], k: f32[H, S, 64]) -> f32[H, T, S] {\n    return q @ k\n}\n",
    );
    let out = tdlc_in(dir.path(), ["check", "scores.tdl"]);
    assert_user_error_says(&out, &["scores.tdl:2:12", "f32[H, S, 64]", "transpose(k)"]);
    assert_located_diagnostics(&out, "scores.tdl");
}

#[test]
fn fmt_of_a_syntax_error_is_exit_1_with_located_diagnostics() {
    let dir = tmp();
    let src = "graph f(x: f32[T, 4]) -> f32[T, 4] {\n    return exp(x\n}\n";
    let file = write(dir.path(), "syn.tdl", src);
    for args in [vec!["fmt", "syn.tdl"], vec!["fmt", "--check", "syn.tdl"], vec!["fmt", "--write", "syn.tdl"]] {
        let out = tdlc_in(dir.path(), &args);
        assert_user_error(&out);
        assert_located_diagnostics(&out, "syn.tdl");
        assert!(out.stdout.is_empty(), "{}", out.describe());
    }
    assert_eq!(std::fs::read_to_string(file).unwrap(), src, "fmt --write must leave a file it cannot parse alone");
}

#[test]
fn a_missing_source_file_is_exit_1_naming_it() {
    let dir = tmp();
    for sub in [&["check"][..], &["run", "--random"], &["fmt"], &["fmt", "--check"], &["compile"]] {
        let mut args: Vec<&str> = vec![sub[0], "no_such_file.tdl"];
        args.extend(&sub[1..]);
        let out = tdlc_in(dir.path(), &args);
        assert_user_error_says(&out, &["no_such_file.tdl"]);
    }
}

#[test]
fn a_directory_instead_of_a_source_file_is_exit_1() {
    let dir = tmp();
    std::fs::create_dir(dir.path().join("d.tdl")).unwrap();
    let out = tdlc_in(dir.path(), ["check", "d.tdl"]);
    assert_user_error_says(&out, &["d.tdl"]);
}

#[test]
fn an_invalid_utf8_file_is_exit_1_with_its_location() {
    let dir = tmp();
    write(dir.path(), "inv.tdl", b"graph f(x: f32[4]) -> f32[4] { return x }\n// \xff\xfe\n".as_slice());
    for args in [
        vec!["check", "inv.tdl"],
        vec!["fmt", "inv.tdl"],
        vec!["run", "inv.tdl", "--random"],
        vec!["compile", "inv.tdl"],
    ] {
        let out = tdlc_in(dir.path(), &args);
        assert_user_error_says(&out, &["inv.tdl:2:4", "UTF-8"]);
    }
}

/// A NUL byte in a source file is a user error, located, never a panic.
#[test]
fn a_file_with_nul_bytes_is_exit_1() {
    let dir = tmp();
    write(dir.path(), "nul.tdl", b"graph f(x: f32[4]) -> f32[4] {\n    return x\x00\n}\n".as_slice());
    write(dir.path(), "nul0.tdl", b"\x00\x00\x00\x00".as_slice());
    for file in ["nul.tdl", "nul0.tdl"] {
        for args in [vec!["check", file], vec!["fmt", file], vec!["run", file, "--random"], vec!["compile", file]] {
            let out = tdlc_in(dir.path(), &args);
            assert_user_error_says(&out, &[&format!("{file}:")]);
        }
    }
    let out = tdlc_in(dir.path(), ["check", "nul.tdl"]);
    assert!(out.stderr.contains("nul.tdl:2:13"), "{}", out.describe());
}

/// The contract: every error "shows the offending source line with a
/// marker". A NUL byte is invisible, so its marker matters most.
#[test]
fn the_diagnostic_for_a_nul_byte_has_a_visible_marker() {
    let dir = tmp();
    // At the end of a line and in the middle of one.
    write(dir.path(), "nul_end.tdl", b"graph f(x: f32[4]) -> f32[4] {\n    return x\x00\n}\n".as_slice());
    write(dir.path(), "nul_mid.tdl", b"graph f(x: f32[4]) -> f32[4] {\n    return x\x00 }\n".as_slice());
    for file in ["nul_end.tdl", "nul_mid.tdl"] {
        let out = tdlc_in(dir.path(), ["check", file]);
        assert_user_error(&out);
        assert_located_diagnostics(&out, file);
    }
}

// ---------------------------------------------------------------------------
// Bad inputs to `run`: exit 1, the message names the input.
// ---------------------------------------------------------------------------

fn f32t(shape: &[usize], seed: u64) -> Tensor {
    random_tensor(DType::F32, shape, seed)
}

#[test]
fn a_wrong_npy_dtype_is_exit_1_naming_the_input_and_the_types() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    let q_i32 = Tensor::new(DType::I32, vec![2, 37, 64], vec![1.0; 2 * 37 * 64]).unwrap();
    write_npy(dir.path(), "q_i32.npy", &q_i32);
    let out = run_in(dir.path(), &[&ca, "--input", "q=q_i32.npy", "--random"]);
    assert_user_error_says(&out, &["`q`", "q_i32.npy", "f32", "i32"]);

    // float64, as NumPy writes by default: the message says how to convert.
    raw_npy(dir.path(), "q_f64.npy", "<f8", "(2, 37, 64)", &vec![0u8; 8 * 2 * 37 * 64]);
    let out = run_in(dir.path(), &[&ca, "--input", "q=q_f64.npy", "--random"]);
    assert_user_error_says(&out, &["`q`", "q_f64.npy", "float64", "float32"]);
}

#[test]
fn a_wrong_shape_is_exit_1_naming_the_input_the_expected_type_and_the_actual_shape() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    write_npy(dir.path(), "q32.npy", &f32t(&[2, 37, 32], 1));
    let out = run_in(dir.path(), &[&ca, "--input", "q=q32.npy", "--random"]);
    assert_user_error_says(&out, &["`q`", "f32[H, T, 64]", "f32[2, 37, 32]"]);

    write_npy(dir.path(), "q_rank2.npy", &f32t(&[37, 64], 1));
    let out = run_in(dir.path(), &[&ca, "--input", "q=q_rank2.npy", "--random"]);
    assert_user_error_says(&out, &["`q`", "f32[H, T, 64]", "f32[37, 64]"]);

    // A fixed-shape example.
    write_npy(dir.path(), "k_small.npy", &f32t(&[4, 100, 32], 1));
    let out = run_in(dir.path(), &[&s(&example("na2d")), "--input", "k=k_small.npy", "--random"]);
    assert_user_error_says(&out, &["`k`", "f32[4, 4096, 32]", "f32[4, 100, 32]"]);
}

#[test]
fn conflicting_symbols_are_exit_1_naming_both_places() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    write_npy(dir.path(), "q.npy", &f32t(&[2, 37, 64], 1));
    write_npy(dir.path(), "k3.npy", &f32t(&[3, 45, 64], 2));
    let out = run_in(dir.path(), &[&ca, "--input", "q=q.npy", "--input", "k=k3.npy", "--random"]);
    assert_user_error_says(&out, &["`H`", "`q`", "`k`", "2", "3"]);

    // --bind against a file.
    let out = run_in(dir.path(), &[&ca, "--input", "q=q.npy", "--bind", "T=38", "--random"]);
    assert_user_error_says(&out, &["T=38", "`q`", "37"]);

    // Two files that disagree on T through different parameters (v: S only).
    write_npy(dir.path(), "k.npy", &f32t(&[2, 45, 64], 2));
    write_npy(dir.path(), "v.npy", &f32t(&[2, 44, 64], 3));
    let out = run_in(dir.path(), &[&ca, "--input", "q=q.npy", "--input", "k=k.npy", "--input", "v=v.npy"]);
    assert_user_error_says(&out, &["`S`", "`k`", "`v`", "45", "44"]);
}

#[test]
fn an_unbound_symbol_for_a_random_input_suggests_bind() {
    let dir = tmp();
    let out = run_in(dir.path(), &[&s(&example("causal_attention")), "--random"]);
    assert_user_error_says(&out, &["--bind"]);
    let out = run_in(dir.path(), &[&s(&example("causal_attention")), "--random", "--bind", "H=2", "--bind", "T=3"]);
    assert_user_error_says(&out, &["`S`", "--bind S="]);
    let out =
        run_in(dir.path(), &[&s(&example("moa")), "--input", "q=random", "--input", "k=random", "--input", "v=random"]);
    assert_user_error_says(&out, &["`T`", "--bind T="]);
}

#[test]
fn an_input_with_no_value_says_how_to_give_one() {
    let dir = tmp();
    let out =
        run_in(dir.path(), &[&s(&example("causal_attention")), "--bind", "H=1", "--bind", "T=2", "--bind", "S=2"]);
    assert_user_error_says(&out, &["`q`", "--input q=", "--random"]);
}

#[test]
fn an_unknown_input_name_is_exit_1_listing_the_inputs() {
    let dir = tmp();
    let out = run_in(
        dir.path(),
        &[
            &s(&example("causal_attention")),
            "--random",
            "--bind",
            "H=1",
            "--bind",
            "T=2",
            "--bind",
            "S=2",
            "--input",
            "zz=random",
        ],
    );
    assert_user_error_says(&out, &["`zz`", "q, k, v"]);
}

#[test]
fn malformed_binds_are_exit_1() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    let base = ["--random", "--bind", "H=1", "--bind", "S=2"];
    for (bind, needle) in [
        ("T3", "T3"),
        ("T=x", "`x`"),
        ("=3", "=3"),
        ("T=", "T="),
        ("T=0", "T=0"),
        ("T=-4", "T=-4"),
        ("T=99999999999999999999999", "99999999999999999999999"),
        ("Z=3", "`Z`"),
    ] {
        let mut args = vec![ca.as_str()];
        args.extend(base);
        args.extend(["--bind", bind]);
        let out = run_in(dir.path(), &args);
        assert_user_error_says(&out, &[needle]);
    }
}

#[test]
fn malformed_input_flags_are_exit_1() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    let base = ["--random", "--bind", "H=1", "--bind", "T=2", "--bind", "S=2"];
    for (input, needle) in [
        ("q", "--input q"),
        ("=random", "=random"),
        ("q=", "q="),
        ("q=random:x", "`x`"),
        ("q=random:-1", "`-1`"),
        ("q=missing.npy", "missing.npy"),
    ] {
        let mut args = vec![ca.as_str()];
        args.extend(base);
        args.extend(["--input", input]);
        let out = run_in(dir.path(), &args);
        assert_user_error_says(&out, &[needle]);
    }
    let mut args = vec![ca.as_str()];
    args.extend(base);
    args.extend(["--input", "q=random", "--input", "q=random:3"]);
    assert_user_error_says(&run_in(dir.path(), &args), &["--input q", "twice"]);
}

#[test]
fn broken_npy_files_are_exit_1_naming_the_input() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    write(dir.path(), "garbage.npy", "this is not numpy");
    write(dir.path(), "empty.npy", "");
    raw_npy(dir.path(), "trunc.npy", "<f4", "(2, 37, 64)", &[0u8; 40]);
    raw_npy_order(dir.path(), "fortran.npy", "<f4", true, "(2, 37, 64)", &vec![0u8; 4 * 2 * 37 * 64]);
    raw_npy(dir.path(), "c128.npy", "<c16", "(2, 37, 64)", &vec![0u8; 16 * 2 * 37 * 64]);
    for file in ["garbage.npy", "empty.npy", "trunc.npy", "fortran.npy", "c128.npy"] {
        let out = run_in(dir.path(), &[&ca, "--input", &format!("q={file}"), "--random"]);
        assert_user_error_says(&out, &["`q`", file]);
    }
}

/// A header whose shape overflows 64 bits when multiplied out (2⁴⁰·2⁴⁰):
/// a clean user error, and no panic message on the way.
#[test]
fn an_npy_header_with_an_overflowing_shape_is_a_clean_user_error() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    raw_npy(dir.path(), "huge.npy", "<f4", "(1099511627776, 1099511627776, 64)", &[]);
    let out = run_in(dir.path(), &[&ca, "--input", "q=huge.npy", "--random"]);
    assert_user_error_says(&out, &["`q`", "huge.npy"]);
}

#[test]
fn sizes_over_the_limits_are_exit_1_not_an_allocation() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    // Inputs too large.
    let out = run_in(dir.path(), &[&ca, "--random", "--bind", "H=100000", "--bind", "T=100000", "--bind", "S=100000"]);
    assert_user_error_says(&out, &["`q`", "limit"]);
    // Inputs fine, the T×S scores too large for the reference (the CPU
    // backend, the default, never builds T×S and runs this).
    let out = run_in(
        dir.path(),
        &[&ca, "--backend", "reference", "--random", "--bind", "H=1", "--bind", "T=100000", "--bind", "S=100000"],
    );
    assert_user_error_says(&out, &["limit"]);
    // A shape that overflows 64 bits.
    write(
        dir.path(),
        "big.tdl",
        "graph big(x: f32[4611686018427387904, 4611686018427387904]) -> f32[4611686018427387904, 4611686018427387904] {\n    return x\n}\n",
    );
    let out = run_in(dir.path(), &["big.tdl", "--random"]);
    assert_user_error_says(&out, &["`x`"]);
}

#[test]
fn broken_weights_files_are_exit_1() {
    let dir = tmp();
    write(dir.path(), "affine.tdl", AFFINE);
    write(dir.path(), "garbage.safetensors", "not safetensors at all");
    let out = run_in(dir.path(), &["affine.tdl", "--weights", "garbage.safetensors", "--random", "--bind", "T=3"]);
    assert_user_error_says(&out, &["garbage.safetensors"]);
    let out = run_in(dir.path(), &["affine.tdl", "--weights", "missing.safetensors", "--random", "--bind", "T=3"]);
    assert_user_error_says(&out, &["missing.safetensors"]);
    // A weight of the wrong shape.
    let w_t = f32t(&[3, 4], 1);
    write_safetensors(dir.path(), "wt.safetensors", &[("w", &w_t)]);
    let out = run_in(dir.path(), &["affine.tdl", "--weights", "wt.safetensors", "--random", "--bind", "T=3"]);
    assert_user_error_says(&out, &["`w`", "f32[4, 3]", "f32[3, 4]"]);
}

#[test]
fn more_outputs_than_results_is_exit_1() {
    let dir = tmp();
    write(dir.path(), "two.tdl", TWO);
    let out = run_in(
        dir.path(),
        &["two.tdl", "--random", "--bind", "T=3", "--output", "a.npy", "--output", "b.npy", "--output", "c.npy"],
    );
    assert_user_error_says(&out, &["2 result", "3 --output"]);
    assert!(!dir.path().join("a.npy").exists(), "nothing should be written when the arguments are wrong");
}

#[test]
fn an_unwritable_output_is_exit_1() {
    let dir = tmp();
    write(dir.path(), "two.tdl", TWO);
    let out = run_in(dir.path(), &["two.tdl", "--random", "--bind", "T=3", "--output", "no/such/dir/a.npy"]);
    assert_user_error_says(&out, &["no/such/dir/a.npy"]);
}

// ---------------------------------------------------------------------------
// `run`: inputs and outputs.
// ---------------------------------------------------------------------------

/// `--input NAME=PATH.npy` for every input gives the same bytes as the same
/// data from `--input NAME=random:SEED` and from `--random --seed S` (input
/// `i` gets seed `S + i`).
#[test]
fn run_with_npy_inputs_random_seeds_and_random_agree() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    let (h, t, sz, d) = (2, 5, 7, 64);
    write_npy(dir.path(), "q.npy", &f32t(&[h, t, d], 100));
    write_npy(dir.path(), "k.npy", &f32t(&[h, sz, d], 101));
    write_npy(dir.path(), "v.npy", &f32t(&[h, sz, d], 102));

    let out = run_in(
        dir.path(),
        &[&ca, "--input", "q=q.npy", "--input", "k=k.npy", "--input", "v=v.npy", "--output", "files.npy"],
    );
    assert_ok(&out);
    let lines = result_lines(&out);
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(lines[0].starts_with("result 0: f32[2, 5, 64]"), "{}", out.describe());
    assert!(lines[0].contains("all finite"), "{}", out.describe());

    let out = run_in(
        dir.path(),
        &[
            &ca,
            "--input",
            "q=random:100",
            "--input",
            "k=random:101",
            "--input",
            "v=random:102",
            "--bind",
            "T=5",
            "--bind",
            "S=7",
            "--bind",
            "H=2",
            "--output",
            "seeds.npy",
        ],
    );
    assert_ok(&out);
    let out = run_in(
        dir.path(),
        &[&ca, "--random", "--seed", "100", "--bind", "T=5", "--bind", "S=7", "--bind", "H=2", "--output", "rand.npy"],
    );
    assert_ok(&out);
    // Files fix some symbols; random fills the rest.
    let out = run_in(
        dir.path(),
        &[&ca, "--input", "q=q.npy", "--input", "k=k.npy", "--random", "--seed", "100", "--output", "mixed.npy"],
    );
    assert_ok(&out);

    let files = std::fs::read(dir.path().join("files.npy")).unwrap();
    for other in ["seeds.npy", "rand.npy", "mixed.npy"] {
        assert!(files == std::fs::read(dir.path().join(other)).unwrap(), "files.npy and {other} differ");
    }
    let t_out = npy::read_npy(dir.path().join("files.npy")).unwrap();
    assert_eq!(t_out.shape, vec![h, t, d]);
    assert!(t_out.all_finite());
}

#[test]
fn random_inputs_are_deterministic_per_seed() {
    let dir = tmp();
    write(dir.path(), "two.tdl", TWO);
    let go = |input: &str, out_name: &str| {
        let out = run_in(dir.path(), &["two.tdl", "--input", input, "--bind", "T=6", "--output", out_name]);
        assert_ok(&out);
        std::fs::read(dir.path().join(out_name)).unwrap()
    };
    let a = go("x=random:5", "a.npy");
    let b = go("x=random:5", "b.npy");
    let c = go("x=random:6", "c.npy");
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, other data");
    // And it is random_tensor(f32, [6, 4], 5).
    let x = f32t(&[6, 4], 5);
    let got = npy::read_npy(dir.path().join("a.npy")).unwrap();
    let want: Vec<f64> = x.data.iter().map(|v| v.exp()).collect();
    assert_close("exp(x)", &got, &[6, 4], &want, 1e-6);
    // `NAME=random` without a seed is --seed + the parameter's index.
    let out =
        run_in(dir.path(), &["two.tdl", "--input", "x=random", "--seed", "5", "--bind", "T=6", "--output", "d.npy"]);
    assert_ok(&out);
    assert_eq!(a, std::fs::read(dir.path().join("d.npy")).unwrap());
}

/// A graph with two results: one summary line per result, in order, and
/// `--output` per result.
#[test]
fn run_prints_one_line_per_result_and_writes_each_output() {
    let dir = tmp();
    write(dir.path(), "two.tdl", TWO);
    let x = f32t(&[5, 4], 11);
    write_npy(dir.path(), "x.npy", &x);
    let out = run_in(dir.path(), &["two.tdl", "--input", "x=x.npy", "--output", "e.npy", "--output", "s.npy"]);
    assert_ok(&out);
    let lines = result_lines(&out);
    assert_eq!(lines.len(), 2, "{}", out.describe());
    assert!(lines[0].starts_with("result 0: f32[5, 4]"), "{}", out.describe());
    assert!(lines[1].starts_with("result 1: f32[5]"), "{}", out.describe());
    for l in &lines {
        assert!(l.contains("(all finite)"), "{}", out.describe());
    }
    let e = npy::read_npy(dir.path().join("e.npy")).unwrap();
    let sm = npy::read_npy(dir.path().join("s.npy")).unwrap();
    let want_e: Vec<f64> = x.data.iter().map(|v| v.exp()).collect();
    let want_s: Vec<f64> = x.data.chunks(4).map(|r| r.iter().sum()).collect();
    assert_close("exp(x)", &e, &[5, 4], &want_e, 1e-6);
    assert_close("sum(x, axis = -1)", &sm, &[5], &want_s, 1e-6);

    // Without --output: still one line per result, nothing written.
    let out = run_in(dir.path(), &["two.tdl", "--input", "x=x.npy"]);
    assert_ok(&out);
    assert_eq!(result_lines(&out).len(), 2, "{}", out.describe());
    // Fewer --output paths than results: the first results are written.
    let out = run_in(dir.path(), &["two.tdl", "--input", "x=x.npy", "--output", "only.npy"]);
    assert_ok(&out);
    assert_eq!(result_lines(&out).len(), 2, "{}", out.describe());
    assert_eq!(std::fs::read(dir.path().join("only.npy")).unwrap(), std::fs::read(dir.path().join("e.npy")).unwrap());
}

/// `--weights W.safetensors` binds parameters by name.
#[test]
fn run_binds_weights_from_safetensors() {
    let dir = tmp();
    write(dir.path(), "affine.tdl", AFFINE);
    let x = f32t(&[3, 4], 1);
    let w = f32t(&[4, 3], 2);
    let b = f32t(&[3], 3);
    write_npy(dir.path(), "x.npy", &x);
    // An extra tensor the graph does not use is fine.
    let unused = f32t(&[2], 4);
    write_safetensors(dir.path(), "wb.safetensors", &[("w", &w), ("b", &b), ("unused", &unused)]);
    let out =
        run_in(dir.path(), &["affine.tdl", "--input", "x=x.npy", "--weights", "wb.safetensors", "--output", "y.npy"]);
    assert_ok(&out);
    assert_eq!(result_lines(&out).len(), 1, "{}", out.describe());
    let mut want = vec![0.0; 3 * 3];
    for i in 0..3 {
        for j in 0..3 {
            want[i * 3 + j] = (0..4).map(|l| x.data[i * 4 + l] * w.data[l * 3 + j]).sum::<f64>() + b.data[j];
        }
    }
    let got = npy::read_npy(dir.path().join("y.npy")).unwrap();
    assert_close("x @ w + b", &got, &[3, 3], &want, 1e-6);

    // Weights with random for the rest: x random with symbol T bound.
    let out = run_in(dir.path(), &["affine.tdl", "--weights", "wb.safetensors", "--random", "--bind", "T=2"]);
    assert_ok(&out);
    assert!(result_lines(&out)[0].starts_with("result 0: f32[2, 3]"), "{}", out.describe());

    // A weight missing from the file and no other source.
    write_safetensors(dir.path(), "w_only.safetensors", &[("w", &w)]);
    let out = run_in(dir.path(), &["affine.tdl", "--input", "x=x.npy", "--weights", "w_only.safetensors"]);
    assert_user_error_says(&out, &["`b`"]);
}

#[test]
fn run_on_a_file_with_several_graphs_needs_graph() {
    let dir = tmp();
    write(dir.path(), "both.tdl", format!("{TWO}{AFFINE}"));
    let out = run_in(dir.path(), &["both.tdl", "--random", "--bind", "T=2"]);
    assert_user_error_says(&out, &["two", "affine", "--graph"]);
    let out = run_in(dir.path(), &["both.tdl", "--graph", "affine", "--random", "--bind", "T=2"]);
    assert_ok(&out);
    assert!(result_lines(&out)[0].starts_with("result 0: f32[2, 3]"), "{}", out.describe());
    let out = run_in(dir.path(), &["both.tdl", "--graph", "nope", "--random", "--bind", "T=2"]);
    assert_user_error_says(&out, &["`nope`", "two", "affine"]);
}

// ---------------------------------------------------------------------------
// `fmt`.
// ---------------------------------------------------------------------------

const MESSY: &str = "// c1 file header
const  D=4 // c2 trailing const

// c3 before graph
graph a(x: f32[T, 4], // c4 after first param
        w: f32[4, 4]) -> f32[T, 4] { // c5 after brace
  // c6 leading statement
    let y=x @ w   // c7 trailing let
        + x         // c8 continuation
    return y // c9 after return
    // c10 before close
} // c11 after close brace
graph b(x: f32[T]) -> f32[T] {
    return exp(
        x // c12 inside call
    )
}
// c13 end of file, no newline";

/// Every `//` comment's text in `src`.
fn comments(src: &str) -> Vec<String> {
    src.lines().filter_map(|l| l.find("//").map(|i| l[i + 2..].trim().to_string())).collect()
}

fn fmt_text(dir: &Path, file: &str) -> String {
    let out = tdlc_in(dir, ["fmt", file]);
    assert_ok(&out);
    out.stdout
}

#[test]
fn fmt_prints_canonical_text_that_keeps_comments_and_meaning() {
    let dir = tmp();
    write(dir.path(), "messy.tdl", MESSY);
    let formatted = fmt_text(dir.path(), "messy.tdl");
    assert_ne!(formatted, MESSY);
    for c in comments(MESSY) {
        assert!(formatted.contains(&c), "comment `// {c}` lost:\n{formatted}");
    }
    assert!(formatted.contains("const D = 4"), "{formatted}");
    assert!(formatted.contains("    return y"), "{formatted}");
    assert!(formatted.ends_with('\n'), "{formatted:?}");
    // The formatted text means the same: same graphs.
    write(dir.path(), "formatted.tdl", &formatted);
    let g1 = tdlc_in(dir.path(), ["compile", "messy.tdl"]);
    let g2 = tdlc_in(dir.path(), ["compile", "formatted.tdl"]);
    assert_ok(&g1);
    assert_ok(&g2);
    assert_eq!(g1.stdout, g2.stdout, "formatting changed the meaning");
    // Formatting twice is the identity.
    assert_eq!(fmt_text(dir.path(), "formatted.tdl"), formatted);
}

#[test]
fn fmt_is_idempotent_and_keeps_comments_on_every_example() {
    let dir = tmp();
    for name in EXAMPLES {
        let src = std::fs::read_to_string(example(name)).unwrap();
        let once = fmt_text(dir.path(), &s(&example(name)));
        for c in comments(&src) {
            assert!(once.contains(&c), "{name}: comment `// {c}` lost:\n{once}");
        }
        let f = write(dir.path(), &format!("{name}.tdl"), &once);
        let twice = fmt_text(dir.path(), &s(&f));
        assert_eq!(once, twice, "{name}: fmt is not idempotent");
        let out = tdlc_in(dir.path(), ["fmt", "--check", &s(&f)]);
        assert_ok(&out);
        assert!(out.stdout.is_empty(), "{}", out.describe());
        // Same graph before and after.
        let g1 = tdlc(["compile".as_ref(), example(name).as_os_str()]);
        let g2 = tdlc_in(dir.path(), ["compile", &s(&f)]);
        assert_ok(&g1);
        assert_eq!(g1.stdout, g2.stdout, "{name}: formatting changed the graph");
    }
}

#[test]
fn fmt_check_exits_1_on_unformatted_and_0_on_formatted_input() {
    let dir = tmp();
    write(dir.path(), "messy.tdl", MESSY);
    let out = tdlc_in(dir.path(), ["fmt", "--check", "messy.tdl"]);
    assert_user_error_says(&out, &["messy.tdl"]);
    assert!(out.stdout.is_empty(), "--check prints nothing on stdout:\n{}", out.describe());
    assert_eq!(std::fs::read_to_string(dir.path().join("messy.tdl")).unwrap(), MESSY, "--check must not write");
    let formatted = fmt_text(dir.path(), "messy.tdl");
    write(dir.path(), "ok.tdl", &formatted);
    let out = tdlc_in(dir.path(), ["fmt", "--check", "ok.tdl"]);
    assert_ok(&out);
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

#[test]
fn fmt_write_rewrites_in_place() {
    let dir = tmp();
    let f = write(dir.path(), "messy.tdl", MESSY);
    let printed = fmt_text(dir.path(), "messy.tdl");
    for flag in ["--write", "-w"] {
        write(dir.path(), "messy.tdl", MESSY);
        let out = tdlc_in(dir.path(), ["fmt", flag, "messy.tdl"]);
        assert_ok(&out);
        assert!(out.stdout.is_empty(), "{}", out.describe());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), printed, "{flag} writes what fmt prints");
        let out = tdlc_in(dir.path(), ["fmt", "--check", "messy.tdl"]);
        assert_ok(&out);
        // Writing a formatted file again changes nothing.
        let out = tdlc_in(dir.path(), ["fmt", flag, "messy.tdl"]);
        assert_ok(&out);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), printed);
    }
    // --write and --check together are a usage error.
    let out = tdlc_in(dir.path(), ["fmt", "--write", "--check", "messy.tdl"]);
    assert_no_panic(&out);
    assert_ne!(out.code, Some(0), "{}", out.describe());
}

// ---------------------------------------------------------------------------
// `compile`.
// ---------------------------------------------------------------------------

#[test]
fn compile_emits_the_graph_text() {
    let dir = tmp();
    write(dir.path(), "two.tdl", TWO);
    for args in [vec!["compile", "two.tdl"], vec!["compile", "two.tdl", "--emit", "graph"]] {
        let out = tdlc_in(dir.path(), &args);
        assert_ok(&out);
        assert!(out.stdout.starts_with("graph two("), "{}", out.describe());
        assert!(out.stdout.contains("return"), "{}", out.describe());
    }
    for name in EXAMPLES {
        let out = tdlc(["compile".as_ref(), example(name).as_os_str(), "--emit".as_ref(), "graph".as_ref()]);
        assert_ok(&out);
        assert!(out.stdout.starts_with(&format!("graph {name}(")), "{}", out.describe());
        assert!(out.stdout.contains("return"), "{}", out.describe());
    }
    let out = tdlc_in(dir.path(), ["compile", "two.tdl", "--emit", "cubin"]);
    assert_no_panic(&out);
    assert_ne!(out.code, Some(0), "an unknown stage is refused:\n{}", out.describe());
}

#[test]
fn compile_graph_selects_and_an_unknown_graph_lists_the_others() {
    let dir = tmp();
    write(dir.path(), "both.tdl", format!("{TWO}{AFFINE}"));
    let all = tdlc_in(dir.path(), ["compile", "both.tdl"]);
    assert_ok(&all);
    assert!(all.stdout.contains("graph two(") && all.stdout.contains("graph affine("), "{}", all.describe());

    let one = tdlc_in(dir.path(), ["compile", "both.tdl", "--graph", "affine"]);
    assert_ok(&one);
    assert!(one.stdout.starts_with("graph affine("), "{}", one.describe());
    assert!(!one.stdout.contains("graph two("), "{}", one.describe());
    assert!(one.stdout.contains("return"), "{}", one.describe());

    let out = tdlc_in(dir.path(), ["compile", "both.tdl", "--graph", "nope"]);
    assert_user_error_says(&out, &["`nope`", "two", "affine"]);
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

#[test]
fn compile_o_writes_the_file() {
    let dir = tmp();
    write(dir.path(), "two.tdl", TWO);
    let printed = tdlc_in(dir.path(), ["compile", "two.tdl"]);
    assert_ok(&printed);
    for flag in ["-o", "--output"] {
        let out = tdlc_in(dir.path(), ["compile", "two.tdl", flag, "g.txt"]);
        assert_ok(&out);
        assert!(out.stdout.is_empty(), "{}", out.describe());
        assert_eq!(std::fs::read_to_string(dir.path().join("g.txt")).unwrap(), printed.stdout);
        std::fs::remove_file(dir.path().join("g.txt")).unwrap();
    }
    let out = tdlc_in(dir.path(), ["compile", "two.tdl", "-o", "no/such/dir/g.txt"]);
    assert_user_error_says(&out, &["no/such/dir/g.txt"]);
}

// ---------------------------------------------------------------------------
// The pass pipeline's tools: --emit fused|egraph, --print-after,
// --disable-pass, explain.
// ---------------------------------------------------------------------------

#[test]
fn compile_emits_the_fused_graph_and_the_egraph() {
    let ca = s(&example("causal_attention"));
    let out = tdlc(["compile", &ca, "--emit", "fused"]);
    assert_ok(&out);
    assert!(out.stdout.contains("= attention %0, %1, %2"), "{}", out.describe());
    assert!(!out.stdout.contains("softmax"), "{}", out.describe());
    let out = tdlc(["compile", &ca, "--emit", "egraph"]);
    assert_ok(&out);
    assert!(out.stdout.starts_with("egraph causal_attention {"), "{}", out.describe());
    assert!(out.stdout.contains("attention{") && out.stdout.contains("softmax{axis=2}"), "{}", out.describe());
}

#[test]
fn print_after_and_disable_pass() {
    let ca = s(&example("causal_attention"));
    let out = tdlc(["compile", &ca, "--emit", "fused", "--print-after", "canonicalize"]);
    assert_ok(&out);
    assert!(out.stderr.contains("// after canonicalize"), "{}", out.describe());
    assert!(!out.stderr.contains("// after fuse-attention"), "{}", out.describe());
    let out = tdlc(["compile", &ca, "--emit", "fused", "--print-after-all"]);
    assert_ok(&out);
    for pass in tdl::passes::PASS_NAMES {
        assert!(out.stderr.contains(&format!("// after {pass}")), "{pass}: {}", out.describe());
    }
    let out = tdlc(["compile", &ca, "--emit", "fused", "--disable-pass", "fuse-attention"]);
    assert_ok(&out);
    assert!(out.stdout.contains("softmax") && !out.stdout.contains("= attention"), "{}", out.describe());
    let out = tdlc(["compile", &ca, "--emit", "fused", "--disable-pass", "no-such-pass"]);
    assert_ok(&out);
    assert!(out.stderr.contains("warning: --disable-pass no-such-pass: no such pass"), "{}", out.describe());
}

#[test]
fn explain_json_has_the_documented_shape() {
    let out = tdlc(["explain", &s(&example("gqa_window")), "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("explain --json prints JSON");
    let g = &v["graphs"][0];
    assert_eq!(g["name"], "gqa_window");
    let a = &g["attentions"][0];
    assert_eq!(g["attentions"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(a["mask"], "window(4096)");
    assert_eq!(a["scale"], 0.0884);
    assert_eq!(a["groups"], 4);
    assert_eq!(a["passes"], 1);
    assert_eq!(a["source"]["line"], 6);
    let phases = g["phases"].as_array().expect("phases");
    assert_eq!(
        phases.iter().map(|p| p["phase"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        ["canonicalize", "fuse-attention"]
    );
    for p in phases {
        assert_eq!(p["hit_node_limit"], false);
        assert!(p["rules_fired"].is_object() && p["stop_reason"].is_string());
    }
    assert!(g["cost_after"].as_f64() < g["cost_before"].as_f64());
    let text = tdlc(["explain", &s(&example("gqa_window"))]);
    assert_ok(&text);
    assert!(
        text.stdout.contains("attention at 6:12: mask window(4096), scale 0.0884, groups 4"),
        "{}",
        text.describe()
    );
}

#[test]
fn explain_reports_tiles_when_sizes_are_bound() {
    let ca = s(&example("causal_attention"));
    let out = tdlc([
        "explain",
        &ca,
        "--json",
        "--bind",
        "H=2",
        "--bind",
        "T=1000",
        "--bind",
        "S=1000",
        "--tile",
        "q=64,k=32",
    ]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let a = &v["graphs"][0]["attentions"][0];
    assert_eq!(a["tile_q"], 64);
    assert_eq!(a["tile_k"], 32);
    // 16 q-tiles × 32 k-tiles × 2 heads.
    assert_eq!(a["tiles_total"], 1024);
    let (visited, full, partial) =
        (a["tiles_visited"].as_u64().unwrap(), a["tiles_full"].as_u64().unwrap(), a["tiles_partial"].as_u64().unwrap());
    assert_eq!(visited, full + partial);
    assert!(visited < 1024 && partial > 0);
    assert_eq!(a["visited_over_minimum"], 1.0);
    let density = a["density"].as_f64().unwrap();
    assert!((density - 500_500.0 / 1_000_000.0).abs() < 1e-9, "causal density at T = S = 1000: {density}");
    assert_eq!(a["kv_splits"], 1);
    assert_eq!(a["empty_rows"]["count"], 0);
    // Without sizes the report says what to bind.
    let out = tdlc(["explain", &ca, "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(v["graphs"][0]["attentions"][0]["tiles_note"].as_str().unwrap_or("").contains("--bind"), "{}", out.stdout);
    // Rows that see no key are reported (T > S with a bottom-right causal mask).
    let out = tdlc(["explain", &ca, "--json", "--bind", "H=1", "--bind", "T=6", "--bind", "S=3", "--tile", "q=2,k=2"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["graphs"][0]["attentions"][0]["empty_rows"]["count"], 3);
    let bad = tdlc(["explain", &ca, "--tile", "q=0"]);
    assert_eq!(bad.code, Some(1), "{}", bad.describe());
}

/// Decodes an 8-bit RGB PNG written by `tdlc masks`: `(width, height, rgb)`.
fn read_png(p: &Path) -> (usize, usize, Vec<u8>) {
    let file = std::fs::File::open(p).unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("a valid PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

/// The `(width, height)` of a PNG written by `tdlc masks`.
fn png_size(p: &Path) -> (usize, usize) {
    let (w, h, _) = read_png(p);
    (w, h)
}

/// The pixels of `rgb` (`width` wide) in rows `ys` and columns `xs`.
fn pixels(rgb: &[u8], width: usize, ys: std::ops::Range<usize>, xs: std::ops::Range<usize>) -> Vec<[u8; 3]> {
    let mut out = Vec::new();
    for y in ys {
        for x in xs.clone() {
            let i = 3 * (y * width + x);
            out.push([rgb[i], rgb[i + 1], rgb[i + 2]]);
        }
    }
    out
}

fn is_dark(p: [u8; 3]) -> bool {
    p.iter().all(|c| *c < 160)
}

fn is_light_grey(p: [u8; 3]) -> bool {
    p[0] == p[1] && p[1] == p[2] && p[0] > 180
}

fn is_light_orange(p: [u8; 3]) -> bool {
    p[0] > 230 && p[0] > p[1] && p[1] > p[2] && p[2] > 80
}

fn is_green(p: [u8; 3]) -> bool {
    let [r, g, b] = p.map(i32::from);
    g > r + 20 && g > b + 20
}

#[test]
fn masks_draws_causal_mask_over_its_tile_classes() {
    let dir = tmp();
    let png = dir.path().join("causal.png");
    let out = tdlc([
        "masks",
        &s(&example("causal_attention")),
        "--bind",
        "H=1",
        "--bind",
        "T=300",
        "--bind",
        "S=300",
        "--tile",
        "q=64,k=64",
        "--png",
        &s(&png),
    ]);
    assert_ok(&out);
    // Exactly the path given (one attention), and one line about it.
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.describe());
    let line = out.stdout.lines().next().unwrap_or("");
    for needle in
        [&s(&png) as &str, "graph causal_attention", "mask causal", "300×300", "10 full, 5 partial, 10 empty of 25"]
    {
        assert!(line.contains(needle), "`{needle}` missing:\n{}", out.describe());
    }
    let (w, h, rgb) = read_png(&png);
    assert_eq!((w, h), (300, 300), "no downsampling at 300×300");
    // Inside the tiles (borders left out): rows are q, columns are k.
    let top_right = pixels(&rgb, w, 1..63, 257..300);
    assert!(top_right.iter().all(|p| is_light_grey(*p)), "the top-right tile is Empty: {:?}", &top_right[..3]);
    let diagonal = pixels(&rgb, w, 129..191, 129..191);
    assert!(diagonal.iter().any(|p| is_light_orange(*p)), "a diagonal tile is Partial (light orange)");
    assert!(diagonal.iter().any(|p| is_dark(*p)), "a diagonal tile has visible entries (dark)");
    assert!(diagonal.iter().all(|p| !is_green(*p) && !is_light_grey(*p)));
    let below = pixels(&rgb, w, 257..300, 1..63);
    assert!(below.iter().all(|p| is_green(*p) && is_dark(*p)), "a tile below the diagonal is Full (dark green)");
    // The long help documents the colours.
    let help = tdlc(["masks", "--help"]);
    assert_ok(&help);
    for needle in ["light grey", "light orange", "light green", "OUT-<graph>-<i>.png"] {
        assert!(help.stdout.contains(needle), "`{needle}` missing from the help:\n{}", help.describe());
    }
}

#[test]
fn masks_downsamples_na2d_and_draws_moa() {
    let dir = tmp();
    let na = dir.path().join("na2d.png");
    let out = tdlc(["masks", &s(&example("na2d")), "--png", &s(&na)]);
    assert_ok(&out);
    assert!(out.stdout.contains("4096×4096") && out.stdout.contains("picture 1024×1024"), "{}", out.describe());
    let (w, h, rgb) = read_png(&na);
    assert_eq!((w, h), (1024, 1024));
    assert!(rgb.chunks(3).any(|p| is_dark([p[0], p[1], p[2]])), "na2d has visible entries");
    let moa = dir.path().join("moa.png");
    let out = tdlc(["masks", &s(&example("moa")), "--bind", "T=200", "--head", "1", "--png", &s(&moa)]);
    assert_ok(&out);
    assert!(out.stdout.contains("head 1 of 8"), "{}", out.describe());
    assert_eq!(png_size(&moa), (200, 200));
    // Above 2^26 scores only the tile classes are drawn, and the line says so.
    let big = dir.path().join("big.png");
    let ca = s(&example("causal_attention"));
    let out = tdlc(["masks", &ca, "--bind", "H=1", "--bind", "T=100000", "--bind", "S=100000", "--png", &s(&big)]);
    assert_ok(&out);
    assert!(out.stdout.contains("tile classes only"), "{}", out.describe());
    assert_eq!(png_size(&big), (1024, 1024));
}

#[test]
fn masks_writes_one_numbered_file_per_attention() {
    let dir = tmp();
    let src = write(
        dir.path(),
        "two.tdl",
        "graph a(q: f32[8, 4], k: f32[8, 4], v: f32[8, 4]) -> f32[8, 4] {\n    return attention(q, k, v, mask = causal)\n}\n\
         graph b(q: f32[8, 4], k: f32[8, 4], v: f32[8, 4]) -> f32[8, 4] {\n    return attention(q, k, v)\n}\n",
    );
    let out = tdlc(["masks", &s(&src), "--tile", "q=4,k=4", "--png", &s(&dir.path().join("m.png"))]);
    assert_ok(&out);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.describe());
    assert!(!dir.path().join("m.png").exists());
    assert_eq!(png_size(&dir.path().join("m-a-0.png")), (8, 8));
    let (w, _, rgb) = read_png(&dir.path().join("m-b-0.png"));
    assert!(pixels(&rgb, w, 0..8, 0..8).iter().all(|p| is_green(*p) && is_dark(*p)), "unmasked: all Full");
    assert!(out.stdout.contains("mask none") && out.stdout.contains("4 full, 0 partial, 0 empty of 4"));
}

#[test]
fn masks_errors_are_user_errors() {
    let dir = tmp();
    let png = s(&dir.path().join("x.png"));
    let out = tdlc(["masks", &s(&example("moa")), "--png", &png]);
    assert_user_error_says(&out, &["--bind", "T=N", "attention 0"]);
    let src = write(dir.path(), "none.tdl", TWO);
    let out = tdlc(["masks", &s(&src), "--png", &png]);
    assert_user_error_says(&out, &["no fused attention"]);
    let out = tdlc(["masks", &s(&example("moa")), "--bind", "T=64", "--head", "8", "--png", &png]);
    assert_user_error_says(&out, &["--head 8"]);
    assert!(!dir.path().join("x.png").exists());
}

#[test]
fn compile_emits_the_kernel_ir_for_every_example_and_target() {
    for name in EXAMPLES {
        for target in ["host", "sm_80", "sm_90"] {
            let out = tdlc(["compile", &s(&example(name)), "--emit", "kernel", "--target", target]);
            assert_ok(&out);
            assert!(out.stdout.starts_with(&format!("kernel_program {name}(")), "{}", out.describe());
            assert!(out.stdout.contains("attention -> %"), "{}", out.describe());
            assert!(out.stdout.contains("results: %"), "{}", out.describe());
        }
    }
    // Forced tiles and split show in the text.
    let out = tdlc([
        "compile",
        &s(&example("causal_attention")),
        "--emit",
        "kernel",
        "--tile",
        "q=48,k=80",
        "--kv-split",
        "3",
    ]);
    assert_ok(&out);
    assert!(out.stdout.contains("tiles q=48 k=80, kv_split fixed(3)"), "{}", out.describe());
    // Bad options are user errors that say what was expected.
    for (flag, value, needle) in [
        ("--target", "sm_999", "known chips"),
        ("--kv-split", "0", "expected auto or a count"),
        ("--kv-split", "many", "expected auto or a count"),
        ("--tile", "q=0,k=64", "not a tile size"),
    ] {
        let out = tdlc(["compile", &s(&example("causal_attention")), "--emit", "kernel", flag, value]);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert_no_panic(&out);
        assert!(out.stderr.contains(needle), "{}", out.describe());
    }
}

/// `--backend kernel` runs the tiled f32 schedules and agrees with the
/// reference on the same inputs; `--stats` says what each kernel did.
#[test]
fn run_backend_kernel_matches_the_reference() {
    let dir = tmp();
    let file = s(&example("causal_attention"));
    let common = ["--random", "--seed", "3", "--bind", "H=2", "--bind", "T=37", "--bind", "S=45"];
    let run = |backend: &str, out: &str, extra: &[&str]| {
        let mut args = vec!["run", file.as_str(), "--backend", backend, "--output", out];
        args.extend(common);
        args.extend(extra);
        let o = tdlc_in(dir.path(), &args);
        assert_ok(&o);
        o
    };
    run("reference", "r.npy", &[]);
    let k = run("kernel", "k.npy", &["--tile", "q=16,k=7", "--kv-split", "1", "--stats"]);
    assert!(k.stdout.contains("(attention) on interpreter: 6 programs"), "{}", k.describe());
    assert!(k.stdout.contains("kv split 1"), "{}", k.describe());
    let r = npy::read_npy(dir.path().join("r.npy")).unwrap();
    let kt = npy::read_npy(dir.path().join("k.npy")).unwrap();
    assert_close("kernel vs reference", &kt, &r.shape, &r.data, 1e-4);
    // A forced KV split merges and still agrees.
    run("kernel", "k3.npy", &["--kv-split", "3"]);
    let k3 = npy::read_npy(dir.path().join("k3.npy")).unwrap();
    assert_close("kernel (kv split 3) vs reference", &k3, &r.shape, &r.data, 1e-4);
    // A wrong input shape is a clear user error.
    let x = f32t(&[2, 5, 63], 1);
    write_npy(dir.path(), "q.npy", &x);
    let o = tdlc_in(dir.path(), ["run", &file, "--backend", "kernel", "--input", "q=q.npy", "--random"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert_no_panic(&o);
}

/// Without `--tile`, the tile report uses the host cost model's tiles (the
/// ones `--emit kernel` chooses), and `kv_splits` is the split the Kernel
/// IR resolves to: more than 1 for one decoding row when there are cores to
/// spare.
#[test]
fn explain_tiles_follow_the_cost_model_and_report_the_kv_split() {
    let target = tdl::kernel::target::Target::host();
    let (tq, tk) = target.attention_tiles(Some(64), Some(64), 4);
    let dir = tmp();
    write(
        dir.path(),
        "dec.tdl",
        "graph dec(q: f32[H, T, 64], k: f32[H, S, 64], v: f32[H, S, 64]) -> f32[H, T, 64] {\n    \
         return attention(q, k, v, mask = causal)\n}\n",
    );
    let explain = |t: &str| {
        let out =
            tdlc_in(dir.path(), ["explain", "dec.tdl", "--json", "--bind", "H=1", "--bind", t, "--bind", "S=8192"]);
        assert_ok(&out);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        v["graphs"][0]["attentions"][0].clone()
    };
    let a = explain("T=1");
    assert_eq!(a["tile_q"], tq as u64);
    assert_eq!(a["tile_k"], tk as u64);
    let visited = a["tiles_visited"].as_u64().unwrap() as usize;
    let want = tdl::kernel::target::resolve_kv_split(target.kv_split(), 1, visited);
    assert_eq!(a["kv_splits"], want as u64, "{a}");
    if target.workers() >= 2 {
        assert!(want >= 2, "one decoding row on {} workers should split", target.workers());
    }
    // A long prefill has programs enough (64 q-tiles or more): no split.
    if target.workers() <= 64 {
        let a = explain("T=8192");
        assert_eq!(a["kv_splits"], 1, "{a}");
    }
}

/// `--backend cpu` compiles the attention through LLVM, runs it on the
/// requested threads, and agrees with the reference; 1 and 2 threads give
/// identical bytes; the transformer block runs end to end.
#[test]
fn run_backend_cpu_matches_the_reference() {
    let dir = tmp();
    let file = s(&example("causal_attention"));
    let common = ["--random", "--seed", "5", "--bind", "H=3", "--bind", "T=70", "--bind", "S=90"];
    let run = |backend: &str, out: &str, extra: &[&str]| {
        let mut args = vec!["run", file.as_str(), "--backend", backend, "--output", out];
        args.extend(common);
        args.extend(extra);
        let o = tdlc_in(dir.path(), &args);
        assert_ok(&o);
        o
    };
    run("reference", "r.npy", &[]);
    let c1 = run("cpu", "c1.npy", &["--threads", "1", "--stats"]);
    assert!(c1.stdout.contains("(attention) on cpu (LLVM JIT)"), "{}", c1.describe());
    run("cpu", "c2.npy", &["--threads", "2", "--tile", "q=16,k=24"]);
    run("cpu", "c3.npy", &["--threads", "2"]);
    let r = npy::read_npy(dir.path().join("r.npy")).unwrap();
    for f in ["c1.npy", "c2.npy", "c3.npy"] {
        let c = npy::read_npy(dir.path().join(f)).unwrap();
        assert_close(f, &c, &r.shape, &r.data, 1e-4);
    }
    assert_eq!(
        std::fs::read(dir.path().join("c1.npy")).unwrap(),
        std::fs::read(dir.path().join("c3.npy")).unwrap(),
        "1 and 2 threads differ"
    );
    let o = tdlc_in(dir.path(), ["run", &file, "--backend", "cpu", "--threads", "0", "--random"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert_no_panic(&o);
    // The whole block: every kernel compiled, the same numbers.
    let block = s(&example("block"));
    for (backend, out) in [("reference", "br.npy"), ("cpu", "bc.npy")] {
        let o = tdlc_in(
            dir.path(),
            ["run", &block, "--backend", backend, "--random", "--bind", "T=37", "--output", out, "--stats"],
        );
        assert_ok(&o);
        if backend == "cpu" {
            assert!(o.stdout.contains("(attention) on cpu (LLVM JIT)"), "{}", o.describe());
            assert!(o.stdout.contains("(rmsnorm) on cpu (LLVM JIT)"), "{}", o.describe());
            assert!(!o.stdout.contains("on interpreter"), "{}", o.describe());
        }
    }
    let (br, bc) =
        (npy::read_npy(dir.path().join("br.npy")).unwrap(), npy::read_npy(dir.path().join("bc.npy")).unwrap());
    let scale = br.data.iter().fold(1f64, |m, v| m.max(v.abs()));
    let err = br.data.iter().zip(&bc.data).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(err <= 1e-4 * scale, "block: max error {err} (scale {scale})");
}

// ---------------------------------------------------------------------------
// `tdlc bench`.
// ---------------------------------------------------------------------------

/// `tdlc bench ARGS --json` in `dir`: exit 0, one JSON object.
fn bench_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = tdlc_in(dir, std::iter::once("bench").chain(args.iter().copied()).chain(["--json"]));
    assert_ok(&out);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()))
}

fn num(v: &serde_json::Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or_else(|| panic!("`{field}` is not a number: {v}"))
}

/// The timing fields are consistent: `reps` times, median between min and
/// max, GFLOP/s and GB/s derived from the median.
fn assert_sane_timing(v: &serde_json::Value, reps: u64) {
    assert_eq!(v["reps"], reps, "{v}");
    let times = v["times_ms"].as_array().expect("times_ms");
    assert_eq!(times.len() as u64, reps, "{v}");
    let (median, min, max) = (num(v, "median_ms"), num(v, "min_ms"), num(v, "max_ms"));
    assert!(min > 0.0 && min <= median && median <= max, "{v}");
    for t in times {
        let t = t.as_f64().unwrap();
        assert!(min <= t && t <= max, "{v}");
    }
    let want = num(v, "flops") / (median * 1e-3) / 1e9;
    assert!((num(v, "gflops") - want).abs() <= 1e-9 * want.max(1.0), "{v}");
    let want = num(v, "bytes") / (median * 1e-3) / 1e9;
    assert!((num(v, "gbps") - want).abs() <= 1e-9 * want.max(1.0), "{v}");
}

/// Every backend times causal attention, and the work is counted exactly:
/// causal with T = S = 37 lets 37·38/2 entries through per head, each worth
/// 4·D flops; the bytes are q, k, v read and the output written.
#[test]
fn bench_counts_causal_attention_exactly_on_every_backend() {
    let dir = tmp();
    let file = s(&example("causal_attention"));
    let (h, t, d) = (2u64, 37u64, 64u64);
    let visible = h * t * (t + 1) / 2;
    for (backend, executor) in [("reference", None), ("kernel", Some("interpreter")), ("cpu", Some("cpu (LLVM JIT)"))] {
        let v = bench_json(
            dir.path(),
            &[&file, "--backend", backend, "--bind", "H=2", "--bind", "T=37", "--bind", "S=37"]
                .into_iter()
                .chain(["--reps", "2", "--warmup", "0", "--threads", "1"])
                .collect::<Vec<_>>(),
        );
        assert_sane_timing(&v, 2);
        assert_eq!(v["backend"], backend, "{v}");
        assert_eq!(v["graph"], "causal_attention", "{v}");
        assert_eq!(v["threads"], 1, "{v}");
        assert_eq!(v["warmup"], 0, "{v}");
        assert_eq!(v["bindings"], serde_json::json!({"H": 2, "S": 37, "T": 37}), "{v}");
        assert_eq!(v["attentions"], 1, "{v}");
        assert_eq!(v["visible"], visible, "{v}");
        assert_eq!(v["flops"], visible * 4 * d, "{v}");
        let fraction = num(&v, "visible_fraction");
        assert_eq!(fraction, visible as f64 / (h * t * t) as f64, "{v}");
        assert!(fraction > 0.5 && fraction < 0.52, "{v}");
        assert_eq!(v["bytes"], 4 * h * t * d * 4, "{v}");
        let kernels = v["kernels"].as_array().expect("kernels");
        match executor {
            None => assert!(kernels.is_empty(), "{v}"),
            Some(e) => {
                let attention = kernels.iter().find(|k| k["kind"] == "attention").expect("an attention kernel");
                assert_eq!(attention["executor"], e, "{v}");
            }
        }
    }
    // Several threads are reported as given.
    let v = bench_json(
        dir.path(),
        &[&file, "--bind", "H=1", "--bind", "T=5", "--bind", "S=9", "--threads", "2", "--reps", "1", "--warmup", "0"],
    );
    assert_eq!((v["backend"].as_str(), v["threads"].as_u64()), (Some("cpu"), Some(2)), "{v}");
    // Causal with T < S aligns bottom-right: row q sees S - T + q + 1 keys.
    assert_eq!(v["visible"], (0..5).map(|q| 9 - 5 + q + 1).sum::<u64>(), "{v}");
}

/// The transformer block: four matmuls (2·M·N·K each) and one causal
/// attention over 8 heads of 64; on every backend.
#[test]
fn bench_counts_the_transformer_block_on_every_backend() {
    let dir = tmp();
    let file = s(&example("block"));
    let t = 33u64;
    let matmuls = 2 * t * 512 * (1536 + 512 + 2048) + 2 * t * 2048 * 512;
    let attention = 8 * (t * (t + 1) / 2) * 4 * 64;
    for (backend, reps) in [("kernel", "2"), ("cpu", "2"), ("reference", "1")] {
        let v = bench_json(
            dir.path(),
            &[&file, "--backend", backend, "--bind", "T=33", "--reps", reps, "--warmup", "0", "--threads", "2"],
        );
        assert_sane_timing(&v, reps.parse().unwrap());
        assert_eq!(v["flops"], matmuls + attention, "{v}");
        assert_eq!(v["visible"], 8 * t * (t + 1) / 2, "{v}");
        assert!(v["bytes"].as_u64().unwrap() > 4 * (512 * 1536 + 512 * 512 + 2 * 512 * 2048), "{v}");
        if backend == "cpu" {
            let kernels = v["kernels"].as_array().unwrap();
            let jit = kernels.iter().filter(|k| k["executor"] == "cpu (LLVM JIT)").count();
            assert_eq!(jit, kernels.len(), "every kernel of the block runs compiled: {v}");
            assert_eq!(jit, 16, "{v}");
        }
    }
}

/// Leading batch axes multiply the visible count, a window mask counts
/// min(q + 1, w) keys per row, `D != Dv` counts 2·D + 2·Dv per entry, and
/// a graph without attention has no visible fraction.
#[test]
fn bench_counts_batches_windows_value_dims_and_plain_matmuls() {
    let dir = tmp();
    write(
        dir.path(),
        "w.tdl",
        "graph w(q: f32[B, H, T, 16], k: f32[B, H, T, 16], v: f32[B, H, T, 8]) -> f32[B, H, T, 8] {\n    \
         return attention(q, k, v, mask = window(5))\n}\n",
    );
    let (b, h, t) = (3u64, 2u64, 41u64);
    let visible = b * h * (0..t).map(|q| (q + 1).min(5)).sum::<u64>();
    for backend in ["kernel", "cpu"] {
        let v = bench_json(
            dir.path(),
            &["w.tdl", "--backend", backend, "--bind", "B=3", "--bind", "H=2", "--bind", "T=41", "--reps", "2"],
        );
        assert_eq!(v["visible"], visible, "{v}");
        assert_eq!(v["flops"], visible * (2 * 16 + 2 * 8), "{v}");
        assert_eq!(num(&v, "visible_fraction"), visible as f64 / (b * h * t * t) as f64, "{v}");
        assert_eq!(v["warmup"], 1, "the default warm-up: {v}");
    }
    write(dir.path(), "affine.tdl", AFFINE);
    let v = bench_json(dir.path(), &["affine.tdl", "--bind", "T=7", "--backend", "kernel"]);
    assert_sane_timing(&v, 5);
    assert_eq!(v["flops"], 2 * 7 * 4 * 3, "{v}");
    assert_eq!(v["attentions"], 0, "{v}");
    assert!(v["visible_fraction"].is_null() && v["visible"].is_null(), "{v}");
}

/// The human-readable report is one block with every figure.
#[test]
fn bench_prints_a_table() {
    let file = s(&example("causal_attention"));
    let out = tdlc(["bench", &file, "--bind", "H=1", "--bind", "T=16", "--bind", "S=16", "--reps", "2"]);
    assert_ok(&out);
    for needle in ["causal_attention", "backend", "cpu", "H=1 S=16 T=16", "median", "min", "max", "GFLOP/s"] {
        assert!(out.stdout.contains(needle), "`{needle}`:\n{}", out.describe());
    }
    for needle in ["visible", "0.531", "GB/s", "2 timed, 1 warm-up", "cpu (LLVM JIT): 1 attention"] {
        assert!(out.stdout.contains(needle), "`{needle}`:\n{}", out.describe());
    }
    let out = tdlc(["bench", "--help"]);
    assert_ok(&out);
    for flag in ["--graph", "--backend", "--bind", "--threads", "--warmup", "--reps", "--json"] {
        assert!(out.stdout.contains(flag), "bench --help lists {flag}:\n{}", out.describe());
    }
}

#[test]
fn bench_errors_are_user_errors() {
    let dir = tmp();
    let file = s(&example("causal_attention"));
    let binds = ["--bind", "H=1", "--bind", "T=4", "--bind", "S=4"];
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--reps", "0"], &["--reps 0", "1 to 10000"]),
        (&["--reps", "10001"], &["--reps 10001"]),
        (&["--warmup", "1001"], &["--warmup 1001"]),
        (&["--threads", "0"], &["--threads 0"]),
        (&["--graph", "nope"], &["no graph `nope`", "causal_attention"]),
        (&["--bind", "T=0"], &["T=0"]),
        (&["--bind", "T=x"], &["`x`"]),
        (&["--bind", "Z=3"], &["`Z`"]),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["bench", file.as_str()];
        args.extend(binds);
        args.extend(extra);
        let out = tdlc_in(dir.path(), &args);
        assert_user_error_says(&out, needles);
        assert!(out.stdout.is_empty(), "{}", out.describe());
    }
    // A missing size, a missing file, a bad source.
    let out = tdlc_in(dir.path(), ["bench", &file, "--bind", "H=1", "--bind", "T=4"]);
    assert_user_error_says(&out, &["--bind S=N"]);
    let out = tdlc_in(dir.path(), ["bench", "missing.tdl"]);
    assert_user_error_says(&out, &["missing.tdl"]);
    write(dir.path(), "bad.tdl", "graph f(x: f32[T, 4]) -> f32[T, 4] {\n    return exp(y)\n}\n");
    let out = tdlc_in(dir.path(), ["bench", "bad.tdl", "--bind", "T=3"]);
    assert_user_error(&out);
    assert_located_diagnostics(&out, "bad.tdl");
}

/// `compile --emit llvm|asm`: the CPU backend's kernels after O3 (vector
/// code, one section per kernel — loop nests and row functions as an
/// artifact compiles them; the ones it does not compile yet say so), and a
/// clean error for a GPU target.
#[test]
fn compile_emits_the_cpu_kernels_as_llvm_ir_and_assembly() {
    let dir = tmp();
    let block = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/block.tdl");
    let out = tdlc_in(dir.path(), ["compile", block, "--emit", "llvm"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for want in [
        "==== kernel `a` (attention) ====",
        "define void @tdl_attention_program(",
        "==== kernel `qkv` (matmul) ====",
        "define void @tdl_matmul_rows(",
        "==== kernel `x2` (elementwise) ====",
        "define void @tdl_ew(",
        "==== kernel `h` (rmsnorm) ====",
        "define void @tdl_rows(",
        "@llvm.fmuladd.v",
        "x float>",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?} in --emit llvm");
    }
    let out = tdlc_in(dir.path(), ["compile", block, "--emit", "asm"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.contains("tdl_attention_program:") && out.stdout.contains("tdl_matmul_rows:"));
    if cfg!(target_arch = "x86_64") {
        assert!(out.stdout.contains("vfmadd"), "fused multiply-adds in the assembly");
    }
    let out = tdlc_in(dir.path(), ["compile", block, "--emit", "llvm", "--target", "sm_90"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("--target host"), "{}", out.stderr);
}

/// `--target-cpu` / `--target-features` choose the vector code: SSE
/// (xmm only), AVX-512 (zmm) — generated here even where the host cannot run
/// it — and malformed values are user errors.
#[test]
fn target_cpu_and_features_choose_the_vector_code() {
    let dir = tmp();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/causal_attention.tdl");
    let asm = |extra: &[&str]| {
        let mut args = vec!["compile", file, "--emit", "asm"];
        args.extend_from_slice(extra);
        tdlc_in(dir.path(), args)
    };
    let sse = asm(&["--target-features=-avx512f,-avx2,-avx,-fma"]);
    assert_eq!(sse.code, Some(0), "{}", sse.describe());
    assert!(!sse.stdout.contains("ymm") && sse.stdout.contains("xmm"), "SSE code only");
    let skx = asm(&["--target-cpu", "skylake-avx512"]);
    assert_eq!(skx.code, Some(0), "{}", skx.describe());
    assert!(skx.stdout.contains("zmm") && skx.stdout.contains("skylake-avx512"), "AVX-512 code");
    for bad in [&["--target-features", "avx2"][..], &["--target-cpu", "zn ver3"][..]] {
        let out = asm(bad);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert!(out.stderr.contains("--target-"), "{}", out.stderr);
    }
}

/// A reader that stops early (`tdlc run … | head`) ends tdlc quietly, by
/// SIGPIPE as any Unix tool, never as an internal error.
#[cfg(unix)]
#[test]
fn a_closed_stdout_pipe_is_not_an_internal_error() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/block.tdl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tdlc"))
        .args(["compile", file, "--emit", "llvm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close the pipe while tdlc still has lines to write.
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    out.read_exact(&mut byte).unwrap();
    drop(out);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("internal error"), "{stderr}");
    assert_ne!(status.code(), Some(2), "{stderr}");
}

/// `tdlc run` runs on the CPU backend by default; a graph the Kernel IR
/// cannot express yet (an integer matmul) runs on the reference instead,
/// with a note, and `--backend cpu` says what is missing.
#[test]
fn run_defaults_to_the_cpu_backend_and_falls_back_with_a_note() {
    let dir = tmp();
    let ca = s(&example("causal_attention"));
    let out = run_in(dir.path(), &[&ca, "--random", "--bind", "H=2", "--bind", "T=37", "--bind", "S=45", "--stats"]);
    assert_ok(&out);
    assert!(out.stdout.contains("on cpu (LLVM JIT)"), "{}", out.describe());
    write(dir.path(), "imm.tdl", "graph imm(a: i32[T, 4], b: i32[4, 2]) -> i32[T, 2] {\n    return a @ b\n}\n");
    let out = run_in(dir.path(), &["imm.tdl", "--random", "--bind", "T=3"]);
    assert_ok(&out);
    let note = "note: running `imm` on the reference backend: lowering n2 (`matmul`)";
    assert!(out.stderr.contains(note) && out.stderr.contains("not supported yet"), "{}", out.describe());
    let out = run_in(dir.path(), &["imm.tdl", "--random", "--bind", "T=3", "--backend", "cpu"]);
    assert_user_error_says(&out, &["not supported yet", "matmul"]);
}

/// `tdlc selftest`: the embedded corpus on the CPU backend against the
/// reference, one line per graph and a summary.
#[test]
fn selftest_checks_the_embedded_corpus() {
    let out = tdlc(["selftest", "--filter", "examples/"]);
    assert_ok(&out);
    assert!(out.stdout.contains("ok   examples/block.tdl block: worst error"), "{}", out.describe());
    assert!(out.stdout.contains("16/16 kernels compiled"), "{}", out.describe());
    assert!(out.stdout.contains("selftest on cpu: 5 passed, 0 failed, 0 skipped (size 17)"), "{}", out.describe());
    let out = tdlc(["selftest", "--backend", "kernel", "--filter", "mask_lambdas", "--size", "33"]);
    assert_ok(&out);
    assert!(out.stdout.contains("0 failed"), "{}", out.describe());
}

/// `--backend gpu` where no CUDA driver loads (forced by pointing
/// `TDL_CUDA_DRIVER` at nothing, so the test means the same on a machine
/// with a GPU): `run`, `bench` and `selftest` fail cleanly — exit 1, "no
/// CUDA driver found" naming what was tried, nothing on stdout, no panic.
#[test]
fn backend_gpu_without_a_cuda_driver_fails_cleanly() {
    let ca = example("causal_attention");
    let ca = ca.to_str().unwrap();
    let binds = ["--bind", "H=2", "--bind", "T=5", "--bind", "S=5"];
    let mut run: Vec<&str> = vec!["run", ca, "--random", "--backend", "gpu"];
    run.extend(binds);
    let mut bench: Vec<&str> = vec!["bench", ca, "--backend", "gpu"];
    bench.extend(binds);
    let selftest = vec!["selftest", "--backend", "gpu"];
    let env = [("TDL_CUDA_DRIVER", "/nonexistent/libcuda.so")];
    for args in [run, bench, selftest] {
        let out = common::tdlc_with_env(Path::new(env!("CARGO_MANIFEST_DIR")), &args, &env);
        assert_user_error_says(&out, &["--backend gpu: no CUDA driver found", "/nonexistent/libcuda.so"]);
        assert!(out.stdout.is_empty(), "{}", out.describe());
        assert!(!out.stderr.contains("panicked") && !out.stderr.contains("internal error"), "{}", out.describe());
    }
}

/// `--backend gpu`'s host side against the CUDA mock driver of `tdl-cuda`'s
/// tests (C, built here; skipped without a C compiler), whose `tdl_*`
/// kernels are no-ops: every kernel's plan is validated, its PTX lowered
/// and "loaded", its buffers uploaded (16-bit floats packed in pairs,
/// `i64` offsets, iteration spaces, error flags), its arguments packed
/// and checked by the driver wrapper — views of 2- and 8-byte elements
/// counted in their own units — and its output read back; outputs stay on
/// the device for the kernels that read them (`--stats` counts the bytes
/// moved and kept); then `tdlc selftest --backend gpu` over the whole
/// embedded corpus, where every graph must fail only by its values. The
/// values are not checked (the mock computes nothing); a run only has to
/// get through.
#[test]
fn backend_gpu_plumbing_runs_against_the_mock_driver() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("backends/cuda/tests/mock/libcuda_mock.c");
    let lib = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tdlc_cli_libcuda_mock.so");
    let built = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        eprintln!("skipped: no C compiler to build the mock driver ({built:?})");
        return;
    }
    let env = [("TDL_CUDA_DRIVER", lib.to_str().unwrap())];
    let corpus = |f: &str| root.join("testsuite/corpus").join(f).to_str().unwrap().to_string();
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (corpus("dtypes.tdl"), "half_attention", vec!["H=2", "T=19", "S=23"]),
        (corpus("dtypes.tdl"), "bfloat_norm", vec!["T=19"]),
        (corpus("dtypes.tdl"), "bools", vec!["T=19"]),
        (corpus("dtypes.tdl"), "integers", vec!["T=19"]),
        (corpus("decode_kv_cache.tdl"), "decode_one", vec!["H=2", "S=1000"]),
        (corpus("mask_lambdas.tdl"), "moa_spans", vec!["T=37"]),
        (corpus("block_llama_gqa.tdl"), "llama_block", vec!["T=19"]),
        (corpus("concat_slice.tdl"), "concat_three", vec!["H=2", "T=19"]),
    ];
    for (file, graph, binds) in &cases {
        let mut args: Vec<&str> = vec!["run", file, "--graph", graph, "--random", "--backend", "gpu", "--stats"];
        for b in binds {
            args.extend(["--bind", b]);
        }
        let out = common::tdlc_with_env(root, &args, &env);
        assert_ok(&out);
        let kernels: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("kernel `")).collect();
        assert!(!kernels.is_empty(), "{graph}: no kernels\n{}", out.describe());
        let on_gpu = kernels.iter().filter(|l| l.contains(" on gpu (CUDA)")).count();
        assert!(on_gpu > 0, "{graph}: nothing ran on the (mock) GPU\n{}", out.describe());
        eprintln!("{graph}: {on_gpu} of {} kernels on the mock GPU", kernels.len());
        let moved = out.stdout.lines().find(|l| l.starts_with("device transfers: ")).unwrap_or_else(|| {
            panic!("{graph}: no transfer line\n{}", out.describe());
        });
        eprintln!("{graph}: {moved}");
        // The block's kernels read what earlier ones wrote: kept on the device.
        if *graph == "llama_block" {
            let kept: f64 = moved.split(", ").nth(2).and_then(|p| p.split(' ').next()).unwrap().parse().unwrap();
            assert!(kept > 0.0, "{graph}: nothing kept on the device: {moved}");
        }
    }
    // The whole embedded corpus: every graph gets through the GPU path; the
    // results differ from the reference only in value (the mock computes
    // nothing), never by an error.
    let out = common::tdlc_with_env(root, ["selftest", "--backend", "gpu", "--size", "9"], &env);
    assert_eq!(out.code, Some(1), "value mismatches expected:\n{}", out.describe());
    let fails: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert!(fails.len() > 100, "{}", out.describe());
    for l in &fails {
        assert!(l.contains(": result ") && l.contains(", backend "), "not a value mismatch: {l}");
    }
}

/// `--emit mlir|ptx`: the GPU kernels of a graph before and after the
/// in-process lowering; kernels the GPU code generator does not support
/// yet get a note; a malformed chip is a user error.
#[test]
fn compile_emits_gpu_kernels_as_mlir_and_ptx() {
    let ca = example("causal_attention");
    let out = tdlc(["compile".as_ref(), ca.as_os_str(), "--emit".as_ref(), "mlir".as_ref()]);
    assert_ok(&out);
    assert!(out.stdout.contains("gpu.module @causal_attention_kernels"), "{}", out.describe());
    assert!(out.stdout.contains("gpu.barrier"), "{}", out.describe());
    for chip in ["sm_90", "sm_80"] {
        let out = tdlc([
            "compile".as_ref(),
            ca.as_os_str(),
            "--emit".as_ref(),
            "ptx".as_ref(),
            "--gpu-chip".as_ref(),
            chip.as_ref(),
        ]);
        assert_ok(&out);
        assert!(out.stdout.contains(&format!(".target {chip}")), "{}", out.describe());
        assert!(out.stdout.contains(".entry k0_n4("), "{}", out.describe());
        assert!(out.stdout.contains(".shared .align 16"), "{}", out.describe());
        assert!(out.stdout.contains("bar.sync"), "{}", out.describe());
    }
    // The transformer block: every kernel generated (matmul, rmsnorm,
    // rope, copies, attention and its KV-split merge, elementwise), no note.
    let block = example("block");
    let out = tdlc(["compile".as_ref(), block.as_os_str(), "--emit".as_ref(), "ptx".as_ref()]);
    assert_ok(&out);
    assert!(!out.stderr.contains("not supported yet"), "{}", out.describe());
    assert_eq!(out.stdout.matches(".visible .entry k").count(), 17, "{}", out.describe());
    for k in ["k0_h(", "k1_qkv(", "k7_a(", "k7_a_merge(", "k15_n30("] {
        assert!(out.stdout.contains(k), "no entry {k}: {}", out.describe());
    }
    // Index lambdas (per-head spans, array reads) are generated too.
    let lambdas = Path::new(env!("CARGO_MANIFEST_DIR")).join("testsuite/corpus/mask_lambdas.tdl");
    let out = tdlc(["compile".as_ref(), lambdas.as_os_str(), "--emit".as_ref(), "ptx".as_ref()]);
    assert_ok(&out);
    assert!(!out.stderr.contains("not supported yet"), "{}", out.describe());
    assert!(out.stdout.contains(".visible .entry k0_n4("), "{}", out.describe());
    let out = tdlc([
        "compile".as_ref(),
        ca.as_os_str(),
        "--emit".as_ref(),
        "ptx".as_ref(),
        "--gpu-chip".as_ref(),
        "sm9".as_ref(),
    ]);
    assert_user_error_says(&out, &["--gpu-chip", "sm9"]);
}
