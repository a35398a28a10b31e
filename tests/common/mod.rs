//! Helpers shared by the end-to-end tests of the `tdlc` binary: running it,
//! checking its exit codes and diagnostics, and comparing tensors.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tdl::reference::Tensor;

/// The `tdlc` binary Cargo built for these tests.
pub const TDLC: &str = env!("CARGO_BIN_EXE_tdlc");

/// What one run of `tdlc` did.
#[derive(Debug)]
pub struct Out {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for failure messages.
    pub cmdline: String,
}

impl Out {
    /// Everything a failure message needs.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            visible(&self.stdout),
            visible(&self.stderr)
        )
    }
}

/// `text` with control characters (other than newlines and tabs) escaped,
/// so that a NUL in tdlc's output shows up in a failure message.
pub fn visible(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// Runs `tdlc ARGS` in `cwd`, with no stdin and with `RUST_BACKTRACE` unset
/// (a backtrace is not part of any contract).
pub fn tdlc_in<I, S>(cwd: &Path, args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tdlc_with_env(cwd, args, &[])
}

/// [`tdlc_in`] with extra environment variables.
pub fn tdlc_with_env<I, S>(cwd: &Path, args: I, env: &[(&str, &str)]) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cmdline = std::iter::once("tdlc".to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(TDLC)
        .args(&args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {TDLC}: {e}"));
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        cmdline,
    }
}

/// Runs `tdlc ARGS` in the repository root.
pub fn tdlc<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tdlc_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// The contract's examples.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.tdl"))
}

pub const EXAMPLES: [&str; 5] = ["causal_attention", "gqa_window", "moa", "na2d", "block"];

/// No sign of a panic or an internal error anywhere in the output.
pub fn assert_no_panic(out: &Out) {
    for needle in ["panicked", "internal error", "RUST_BACKTRACE", "stack backtrace", "this is a bug in tdlc"] {
        assert!(
            !out.stderr.contains(needle) && !out.stdout.contains(needle),
            "tdlc printed `{needle}` (a panic or an internal error):\n{}",
            out.describe()
        );
    }
}

/// Exit 0, no panic.
pub fn assert_ok(out: &Out) {
    assert_eq!(out.code, Some(0), "expected success:\n{}", out.describe());
    assert_no_panic(out);
}

/// A user error: exit 1, something on stderr, no panic, never exit 2.
pub fn assert_user_error(out: &Out) {
    assert_no_panic(out);
    assert_eq!(out.code, Some(1), "expected exit 1 (user error):\n{}", out.describe());
    assert!(!out.stderr.trim().is_empty(), "a user error must say what is wrong on stderr:\n{}", out.describe());
}

/// A user error whose stderr contains every one of `needles`.
pub fn assert_user_error_says(out: &Out, needles: &[&str]) {
    assert_user_error(out);
    for n in needles {
        assert!(out.stderr.contains(n), "stderr should contain `{n}`:\n{}", out.describe());
    }
}

/// The diagnostics on stderr point into the source: `FILE:LINE:COL` appears,
/// and each source-snippet diagnostic (`┌─ FILE:L:C`) is followed by a
/// marker line (a line of the snippet gutter holding `^`) before the next
/// diagnostic starts.
pub fn assert_located_diagnostics(out: &Out, file_name: &str) {
    let loc = format!("{file_name}:");
    let located: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| {
            l.find(&loc).is_some_and(|i| {
                let rest = &l[i + loc.len()..];
                let mut parts = rest.splitn(3, ':');
                let line = parts.next().unwrap_or("");
                let col = parts.next().unwrap_or("");
                let col: String = col.chars().take_while(|c| c.is_ascii_digit()).collect();
                !line.is_empty() && line.chars().all(|c| c.is_ascii_digit()) && !col.is_empty()
            })
        })
        .collect();
    assert!(!located.is_empty(), "stderr should name {file_name}:LINE:COL:\n{}", out.describe());

    // Split stderr into diagnostics at each `error:`/`warning:` header and
    // check every one that shows a snippet has a marker.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for l in out.stderr.lines() {
        if l.starts_with("error") || l.starts_with("warning") || blocks.is_empty() {
            blocks.push(Vec::new());
        }
        blocks.last_mut().unwrap().push(l);
    }
    let mut snippets = 0;
    for b in &blocks {
        if !b.iter().any(|l| l.contains("┌─")) {
            continue;
        }
        snippets += 1;
        let marked = b.iter().any(|l| l.contains('│') && l.contains('^'));
        assert!(
            marked,
            "this diagnostic shows a source line but no `^` marker under it:\n{}\n\nfull output:\n{}",
            visible(&b.join("\n")),
            out.describe()
        );
    }
    assert!(snippets > 0, "expected at least one diagnostic with a source snippet:\n{}", out.describe());
}

/// `|actual - expected| <= tol * max(1, |expected|)` everywhere, every
/// actual value finite, and the shapes equal.
pub fn assert_close(what: &str, actual: &Tensor, expected_shape: &[usize], expected: &[f64], tol: f64) {
    assert_eq!(actual.shape, expected_shape, "{what}: shape");
    assert_eq!(actual.data.len(), expected.len(), "{what}: element count");
    let nonfinite = actual.data.iter().filter(|v| !v.is_finite()).count();
    assert_eq!(nonfinite, 0, "{what}: {nonfinite} non-finite output elements");
    let mut bad = Vec::new();
    let mut worst = 0.0f64;
    for (i, (&a, &e)) in actual.data.iter().zip(expected).enumerate() {
        assert!(e.is_finite(), "{what}: the test's own expected value {i} is not finite: {e}");
        let err = (a - e).abs() / e.abs().max(1.0);
        worst = worst.max(err);
        if err > tol {
            bad.push((i, a, e));
        }
    }
    if !bad.is_empty() {
        let idx = |mut i: usize| {
            let mut ix = vec![0; expected_shape.len()];
            for ax in (0..expected_shape.len()).rev() {
                ix[ax] = i % expected_shape[ax];
                i /= expected_shape[ax];
            }
            ix
        };
        let first: Vec<String> =
            bad.iter().take(8).map(|&(i, a, e)| format!("  at {:?}: tdlc {a:.9}, formula {e:.9}", idx(i))).collect();
        panic!(
            "{what}: {} of {} elements differ by more than {tol} (relative to max(1, |expected|)); worst {worst:.3e}; first:\n{}",
            bad.len(),
            expected.len(),
            first.join("\n")
        );
    }
}
