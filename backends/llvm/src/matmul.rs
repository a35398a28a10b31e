//! The CPU matmul kernel: the Kernel IR's [`MatMulKernel`] compiled through
//! LLVM. One function computes a block of `tile_m` rows of one batch's
//! `C = A·B` for every column: per `(n-tile, k-tile)` a panel of B is packed
//! contiguous (zero past N), and each row accumulates `tile_n` lanes with
//! broadcast multiply-adds (`fast` flags: vectorised, fused). A and B are
//! read through their strides, so transposed and sliced views need no copy.
//! The runtime hands `(batch, m-tile)` work items to worker threads.

use crate::jit::Jitted;
use std::fmt::Write as _;
use tdl_kernel::interp::MatMulArgs;

use crate::attention::Ir;
use crate::jit::{self, Shared};
use crate::{HostTarget, LlvmError};

const FN_NAME: &str = "tdl_matmul_rows";

/// `(a, b, c, M, N, K, a_i, a_p, b_p, b_j, i0, i1)`: rows `i0..i1` of `c`
/// (row-major `M × N`).
type RowsFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// The LLVM IR text of the row-block function for `tile_n × tile_k` panels.
pub fn matmul_ir(tile_n: usize, tile_k: usize, host: &HostTarget) -> Result<String, LlvmError> {
    if tile_n == 0 || tile_k == 0 || tile_n > 1024 || tile_k > 4096 || tile_n * tile_k > 1 << 20 {
        return Err(LlvmError::Internal(format!("not supported yet: matmul panels of {tile_k}×{tile_n}")));
    }
    let (tn, tk) = (tile_n, tile_k);
    let mut ir = Ir { text: String::new(), next: 0 };
    let attrs: Vec<String> = host.function_attributes().iter().map(|(k, v)| format!("\"{k}\"=\"{v}\"")).collect();
    let _ = writeln!(
        ir.text,
        "declare i64 @llvm.smin.i64(i64, i64)\n\n\
         define void @{FN_NAME}(ptr noalias readonly %a, ptr noalias readonly %b, ptr noalias %c, i64 %M, i64 %N, \
         i64 %K, i64 %ai, i64 %ap, i64 %bp, i64 %bj, i64 %i0, i64 %i1) #0 {{\nentry:"
    );
    let fast = "fast";
    let panel = ir.alloca("float", tk * tn);
    let acc = ir.alloca("float", tn);
    let counters: Vec<String> = (0..5).map(|_| ir.alloca("i64", 1)).collect();
    let (cj0, cp0, ci, cp, cj) = (&counters[0], &counters[1], &counters[2], &counters[3], &counters[4]);
    let nt = ir.op("add", "i64", "%N", &(tn - 1).to_string());
    let ntiles = ir.op("udiv", "i64", &nt, &tn.to_string());
    let kt = ir.op("add", "i64", "%K", &(tk - 1).to_string());
    let ktiles = ir.op("udiv", "i64", &kt, &tk.to_string());
    ir.for_range(cj0, "0", &ntiles, |ir, jt| {
        let j0 = ir.op("mul", "i64", jt, &tn.to_string());
        let nrest = ir.op("sub", "i64", "%N", &j0);
        let bn = ir.min(&tn.to_string(), &nrest);
        ir.for_range(cp0, "0", &ktiles, |ir, pt| {
            let p0 = ir.op("mul", "i64", pt, &tk.to_string());
            let krest = ir.op("sub", "i64", "%K", &p0);
            let bk = ir.min(&tk.to_string(), &krest);
            let first = ir.op("icmp eq", "i64", pt, "0");
            // Pack B[p0.., j0..] into panel[p][j], zero past N.
            ir.for_range(cp, "0", &bk, |ir, p| {
                let pp = ir.op("add", "i64", &p0, p);
                let rowoff = ir.op("mul", "i64", &pp, "%bp");
                let prow = ir.op("mul", "i64", p, &tn.to_string());
                ir.for_range(cj, "0", &tn.to_string(), |ir, j| {
                    let inside = ir.op("icmp slt", "i64", j, &bn);
                    let jj0 = ir.op("add", "i64", &j0, j);
                    let last = ir.op("sub", "i64", "%N", "1");
                    let jj = ir.min(&jj0, &last);
                    let coloff = ir.op("mul", "i64", &jj, "%bj");
                    let off = ir.op("add", "i64", &rowoff, &coloff);
                    let pb = ir.gep("float", "%b", &off);
                    let x = ir.load("float", &pb);
                    let y = ir.tmp();
                    ir.line(format!("{y} = select i1 {inside}, float {x}, float 0.0"));
                    let idx = ir.op("add", "i64", &prow, j);
                    let pd = ir.gep("float", &panel, &idx);
                    ir.line(format!("store float {y}, ptr {pd}"));
                });
            });
            ir.for_range(ci, "%i0", "%i1", |ir, i| {
                let crow0 = ir.op("mul", "i64", i, "%N");
                let crow = ir.op("add", "i64", &crow0, &j0);
                // acc = first k-tile ? 0 : C[i, j0..j0+bn]
                ir.for_range(cj, "0", &tn.to_string(), |ir, j| {
                    let inside = ir.op("icmp slt", "i64", j, &bn);
                    let later = ir_not(ir, &first);
                    let keep = ir.op("and", "i1", &inside, &later);
                    let pa = ir.gep("float", &acc, j);
                    ir.line(format!("store float 0.0, ptr {pa}"));
                    ir.if_then(&keep, |ir| {
                        let idx = ir.op("add", "i64", &crow, j);
                        let pc = ir.gep("float", "%c", &idx);
                        let x = ir.load("float", &pc);
                        ir.line(format!("store float {x}, ptr {pa}"));
                    });
                });
                let arow = ir.op("mul", "i64", i, "%ai");
                ir.for_range(cp, "0", &bk, |ir, p| {
                    let pp = ir.op("add", "i64", &p0, p);
                    let aoff0 = ir.op("mul", "i64", &pp, "%ap");
                    let aoff = ir.op("add", "i64", &arow, &aoff0);
                    let pa = ir.gep("float", "%a", &aoff);
                    let x = ir.load("float", &pa);
                    let prow = ir.op("mul", "i64", p, &tn.to_string());
                    ir.for_range(cj, "0", &tn.to_string(), |ir, j| {
                        let idx = ir.op("add", "i64", &prow, j);
                        let pb = ir.gep("float", &panel, &idx);
                        let y = ir.load("float", &pb);
                        let pc = ir.gep("float", &acc, j);
                        let c = ir.load("float", &pc);
                        let xy = ir.op(&format!("fmul {fast}"), "float", &x, &y);
                        let s = ir.op(&format!("fadd {fast}"), "float", &c, &xy);
                        ir.line(format!("store float {s}, ptr {pc}"));
                    });
                });
                ir.for_range(cj, "0", &bn, |ir, j| {
                    let pa = ir.gep("float", &acc, j);
                    let x = ir.load("float", &pa);
                    let idx = ir.op("add", "i64", &crow, j);
                    let pc = ir.gep("float", "%c", &idx);
                    ir.line(format!("store float {x}, ptr {pc}"));
                });
            });
        });
    });
    ir.line("ret void");
    ir.text.push_str("}\n\n");
    let _ = writeln!(ir.text, "attributes #0 = {{ nounwind {} }}", attrs.join(" "));
    Ok(ir.text)
}

fn ir_not(ir: &mut Ir, x: &str) -> String {
    ir.op("xor", "i1", x, "true")
}

/// A compiled matmul kernel for one `(tile_m, tile_n, tile_k)`; its
/// machine code lives as long as it does.
pub struct CompiledMatMul {
    tiles: (usize, usize, usize),
    f: RowsFn,
    _jit: Jitted,
}

/// Compiles the matmul for `(tile_m, tile_n, tile_k)` and runs it on `args`
/// with `threads` worker threads; returns the row-major `[batch, M, N]`.
pub fn run_matmul(tiles: (usize, usize, usize), args: &MatMulArgs<'_>, threads: usize) -> Result<Vec<f32>, LlvmError> {
    CompiledMatMul::new(tiles)?.run(args, threads)
}

impl CompiledMatMul {
    /// Generates, optimises and JIT-compiles the kernel for the host.
    pub fn new(tiles: (usize, usize, usize)) -> Result<CompiledMatMul, LlvmError> {
        let tiles = (tiles.0.max(1), tiles.1, tiles.2);
        let host = HostTarget::detect()?;
        let text = matmul_ir(tiles.1, tiles.2, &host)?;
        let jit = Jitted::compile(&text, "tdl_matmul", FN_NAME, &host)?;
        // SAFETY: generated above with exactly this signature; valid while `jit` lives.
        let f: RowsFn = unsafe { std::mem::transmute::<usize, RowsFn>(jit.addr) };
        Ok(CompiledMatMul { tiles, f, _jit: jit })
    }

    /// Runs the kernel on `args` with `threads` worker threads; returns the
    /// row-major `[batch, M, N]`.
    pub fn run(&self, args: &MatMulArgs<'_>, threads: usize) -> Result<Vec<f32>, LlvmError> {
        let (tm, tn, tk) = self.tiles;
        let f = self.f;
        let (m, n, k) = (args.m, args.n, args.k);
        let nbatch = args.a_offsets.len();
        if args.b_offsets.len() != nbatch {
            return Err(LlvmError::Internal("matmul batch offsets differ in length".into()));
        }
        // Every element the kernel reads must be inside the operands.
        let reach = |off: usize, s1: usize, n1: usize, s2: usize, n2: usize| {
            off + s1 * n1.saturating_sub(1) + s2 * n2.saturating_sub(1)
        };
        for (&oa, &ob) in args.a_offsets.iter().zip(&args.b_offsets) {
            if m > 0 && k > 0 && reach(oa, args.a_i, m, args.a_p, k) >= args.a.len() {
                return Err(LlvmError::Internal("matmul A view out of bounds".into()));
            }
            if n > 0 && k > 0 && reach(ob, args.b_p, k, args.b_j, n) >= args.b.len() {
                return Err(LlvmError::Internal("matmul B view out of bounds".into()));
            }
        }
        let mut out = vec![0f32; nbatch * m * n];
        let mtiles = m.div_ceil(tm);
        let outp = Shared(out.as_mut_ptr());
        let (ap, bp) = (Shared(args.a.as_ptr().cast_mut()), Shared(args.b.as_ptr().cast_mut()));
        jit::run_parallel(nbatch * mtiles, threads, (2 << 20) + 4 * (tk * tn + tn), |w| {
            let (bi, mt) = (w / mtiles, w % mtiles);
            let (i0, i1) = (mt * tm, ((mt + 1) * tm).min(m));
            // SAFETY: the offsets and strides were checked against the operands
            // above; this item writes rows i0..i1 of batch bi only.
            unsafe {
                f(
                    ap.ptr().add(args.a_offsets[bi]),
                    bp.ptr().add(args.b_offsets[bi]),
                    outp.ptr().add(bi * m * n),
                    m as i64,
                    n as i64,
                    k as i64,
                    args.a_i as i64,
                    args.a_p as i64,
                    args.b_p as i64,
                    args.b_j as i64,
                    i0 as i64,
                    i1 as i64,
                )
            };
        })?;
        Ok(out)
    }
}
