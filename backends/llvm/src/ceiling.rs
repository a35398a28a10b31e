//! The machine's arithmetic ceiling, measured with code of our own: a
//! JIT-compiled loop of independent vector fused multiply-adds (12
//! accumulators of the host's vector width, as many as the micro-kernels
//! keep), run on every worker thread at once. The benchmark suite reports
//! every configuration beside it.

use std::fmt::Write as _;
use std::time::Instant;

use crate::jit::{self, Jitted};
use crate::{HostTarget, LlvmError};

const FN_NAME: &str = "tdl_fma_peak";
const CHAINS: usize = 12;

/// `(iterations) -> checksum`.
type PeakFn = unsafe extern "C" fn(i64) -> f32;

/// The LLVM IR of the peak loop for `host`.
fn peak_ir(host: &HostTarget) -> String {
    let w = (host.f32_lanes() as usize).max(1);
    let vt = format!("<{w} x float>");
    let attrs: Vec<String> = host.function_attributes().iter().map(|(k, v)| format!("\"{k}\"=\"{v}\"")).collect();
    let splat = |x: f32| format!("<{}>", vec![format!("float {}", crate::attention::float_text(x)); w].join(", "));
    let mut t = String::new();
    let _ = writeln!(t, "declare {vt} @llvm.fma.v{w}f32({vt}, {vt}, {vt})");
    let _ = writeln!(t, "declare float @llvm.vector.reduce.fadd.v{w}f32(float, {vt})");
    let _ = writeln!(t, "define float @{FN_NAME}(i64 %n) #0 {{\nentry:\n  br label %loop\nloop:");
    let _ = writeln!(t, "  %i = phi i64 [ 0, %entry ], [ %i2, %loop ]");
    for c in 0..CHAINS {
        let _ = writeln!(t, "  %a{c} = phi {vt} [ {}, %entry ], [ %b{c}, %loop ]", splat(c as f32));
    }
    for c in 0..CHAINS {
        let _ = writeln!(
            t,
            "  %b{c} = call {vt} @llvm.fma.v{w}f32({vt} %a{c}, {vt} {}, {vt} {})",
            splat(0.999_999),
            splat(1e-6)
        );
    }
    let _ =
        writeln!(t, "  %i2 = add i64 %i, 1\n  %more = icmp slt i64 %i2, %n\n  br i1 %more, label %loop, label %done");
    let _ = writeln!(t, "done:");
    let mut acc = "%b0".to_string();
    for c in 1..CHAINS {
        let _ = writeln!(t, "  %s{c} = fadd {vt} {acc}, %b{c}");
        acc = format!("%s{c}");
    }
    let _ =
        writeln!(t, "  %r = call float @llvm.vector.reduce.fadd.v{w}f32(float 0.0, {vt} {acc})\n  ret float %r\n}}");
    let _ = writeln!(t, "attributes #0 = {{ nounwind {} }}", attrs.join(" "));
    t
}

/// Measured fused-multiply-add throughput of the host, in GFLOP/s, with
/// `threads` threads each running `iterations` steps of 12 vector FMAs
/// (2 flops per lane each); the best of `reps` runs.
pub fn fma_peak_gflops(threads: usize, iterations: u64, reps: usize) -> Result<f64, LlvmError> {
    let host = HostTarget::detect()?;
    let jit = Jitted::compile(&peak_ir(&host), "tdl_fma_peak", FN_NAME, &host)?;
    // SAFETY: `tdl_fma_peak` is `float(i64)` as generated above; its code
    // lives as long as `jit`, which outlives the calls.
    let f: PeakFn = unsafe { std::mem::transmute::<usize, PeakFn>(jit.addr) };
    let threads = threads.max(1);
    let n = i64::try_from(iterations.max(1)).unwrap_or(i64::MAX);
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        jit::run_parallel(threads, threads, 1 << 20, |_| {
            // SAFETY: a pure function of its argument.
            std::hint::black_box(unsafe { f(n) });
        })?;
        let secs = start.elapsed().as_secs_f64();
        let flops = threads as f64 * n as f64 * (CHAINS * 2 * host.f32_lanes() as usize) as f64;
        best = best.max(flops / secs / 1e9);
    }
    Ok(best)
}
