//! The CPU matmul kernel: the Kernel IR's [`MatMulKernel`] compiled through
//! LLVM. One function computes a block of `tile_m` rows of one batch's
//! `C = A·B` for every column: per `(n-tile, k-tile)` a panel of B is packed
//! contiguous (zero past N), and each row accumulates `tile_n` lanes with
//! broadcast multiply-adds (`fast` flags: vectorised, fused). A and B are
//! read through their strides, so transposed and sliced views need no copy.
//! The runtime hands `(batch, m-tile)` work items to worker threads.

use std::fmt::Write as _;

use tdl_kernel::interp::MatMulArgs;

use crate::attention::Ir;
use crate::gemm::{self, broadcast_fma, MR};
use tdl_rt::matmul::{MatMulRunner, RowsFn};

use crate::jit::{self, Jitted};
use crate::{HostTarget, LlvmError};

pub(crate) const FN_NAME: &str = "tdl_matmul_rows";

/// The LLVM IR text of the row-block function for blocks of at most
/// `tile_m` rows and `tile_n × tile_k` panels, on the host's vectors.
pub fn matmul_ir(tile_m: usize, tile_n: usize, tile_k: usize, host: &HostTarget) -> Result<String, LlvmError> {
    if tile_m == 0
        || tile_n == 0
        || tile_k == 0
        || tile_m > 4096
        || tile_n > 1024
        || tile_k > 4096
        || tile_n * tile_k > 1 << 20
        || tile_m * tile_k > 1 << 20
    {
        return Err(LlvmError::Unsupported(format!("matmul tiles of {tile_m}×{tile_n}×{tile_k}")));
    }
    let w = (host.f32_lanes() as usize).max(1);
    // The micro-kernel's columns: two vectors.
    let (nv, nr) = (2, 2 * w);
    let tk = tile_k;
    let tn = tile_n.next_multiple_of(nr);
    let tm = tile_m.next_multiple_of(MR);
    let vt = format!("<{w} x float>");
    let mut ir = Ir::new();
    let attrs: Vec<String> = host.function_attributes().iter().map(|(k, v)| format!("\"{k}\"=\"{v}\"")).collect();
    let _ = writeln!(
        ir.text,
        "declare i64 @llvm.smin.i64(i64, i64)\ndeclare void @llvm.memset.p0.i64(ptr, i8, i64, i1)\n{}\n\
         define void @{FN_NAME}(ptr noalias readonly %a, ptr noalias readonly %b, ptr noalias %c, i64 %M, i64 %N, \
         i64 %K, i64 %ai, i64 %ap, i64 %bp, i64 %bj, i64 %i0, i64 %i1) #0 {{\nentry:",
        gemm::declarations(w)
    );
    let apack = ir.alloca("float", tm * tk);
    let stage = ir.alloca("float", nr);
    let acc: Vec<Vec<String>> = (0..MR).map(|_| (0..nv).map(|_| ir.alloca(&vt, 1)).collect()).collect();
    let counters: Vec<String> = (0..6).map(|_| ir.alloca("i64", 1)).collect();
    let (cj0, cp0, cp, cj, cb, cg) =
        (&counters[0], &counters[1], &counters[2], &counters[3], &counters[4], &counters[5]);
    let nt = ir.op("add", "i64", "%N", &(tile_n - 1).to_string());
    let ntiles = ir.op("udiv", "i64", &nt, &tile_n.to_string());
    let kt = ir.op("add", "i64", "%K", &(tk - 1).to_string());
    let ktiles = ir.op("udiv", "i64", &kt, &tk.to_string());
    let rows = ir.op("sub", "i64", "%i1", "%i0");
    let b0 = ir.op("add", "i64", &rows, &(MR - 1).to_string());
    let blocks = ir.op("udiv", "i64", &b0, &MR.to_string());
    ir.for_range(cp0, "0", &ktiles, |ir, pt| {
        let p0 = ir.op("mul", "i64", pt, &tk.to_string());
        let krest = ir.op("sub", "i64", "%K", &p0);
        let bk = ir.min(&tk.to_string(), &krest);
        let first = ir.op("icmp eq", "i64", pt, "0");
        // Pack A[i0.., p0..] as blocks of MR rows, apack[blk][p][r] (rows
        // past i1 zero), so the micro-kernel reads it contiguously.
        ir.for_range(cb, "0", &blocks, |ir, blk| {
            let boff = ir.op("mul", "i64", blk, &(MR * tk).to_string());
            for r in 0..MR {
                let row0 = ir.op("mul", "i64", blk, &MR.to_string());
                let row1 = ir.op("add", "i64", &row0, &r.to_string());
                let i = ir.op("add", "i64", "%i0", &row1);
                let inside = ir.op("icmp slt", "i64", &i, "%i1");
                let last = ir.op("sub", "i64", "%i1", "1");
                let ic = ir.min(&i, &last);
                let arow = ir.op("mul", "i64", &ic, "%ai");
                ir.for_range(cp, "0", &bk, |ir, p| {
                    let pp = ir.op("add", "i64", &p0, p);
                    let acol = ir.op("mul", "i64", &pp, "%ap");
                    let off = ir.op("add", "i64", &arow, &acol);
                    let pa = ir.gep("float", "%a", &off);
                    let x = ir.load("float", &pa);
                    let y = ir.tmp();
                    ir.line(format!("{y} = select i1 {inside}, float {x}, float 0.0"));
                    let pm = ir.op("mul", "i64", p, &MR.to_string());
                    let o1 = ir.op("add", "i64", &boff, &pm);
                    let o2 = ir.op("add", "i64", &o1, &r.to_string());
                    let pd = ir.gep("float", &apack, &o2);
                    ir.line(format!("store float {y}, ptr {pd}"));
                });
            }
        });
        ir.for_range(cj0, "0", &ntiles, |ir, jt| {
            let j0 = ir.op("mul", "i64", jt, &tile_n.to_string());
            let nrest = ir.op("sub", "i64", "%N", &j0);
            let bn = ir.min(&tile_n.to_string(), &nrest);
            let g0 = ir.op("add", "i64", &bn, &(nr - 1).to_string());
            let groups = ir.op("udiv", "i64", &g0, &nr.to_string());
            // This (k-tile, n-tile)'s panel of the packed B (see
            // `pack_b`): micro-panels of nr columns, [j / nr][p][j % nr].
            let slot0 = ir.op("mul", "i64", pt, &ntiles);
            let slot = ir.op("add", "i64", &slot0, jt);
            let poff = ir.op("mul", "i64", &slot, &(tk * tn).to_string());
            let panel = ir.gep("float", "%b", &poff);
            let mk =
                MicroKernel { w, nv, nr, tk, vt: &vt, panel: &panel, apack: &apack, stage: &stage, acc: &acc, cj, cp };
            let at = Block { j0: &j0, bn: &bn, bk: &bk, first: &first };
            // Per column group (its B micro-panel stays in L1): whole
            // blocks of MR rows, then the last, partial one.
            let whole = ir.op("udiv", "i64", &rows, &MR.to_string());
            let done = ir.op("mul", "i64", &whole, &MR.to_string());
            let left = ir.op("sub", "i64", &rows, &done);
            let any = ir.op("icmp sgt", "i64", &left, "0");
            ir.for_range(cg, "0", &groups, |ir, g| {
                ir.for_range(cb, "0", &whole, |ir, blk| mk.emit(ir, g, blk, None, &at));
                ir.if_then(&any, |ir| mk.emit(ir, g, &whole, Some(&left), &at));
            });
        });
    });
    ir.line("ret void");
    ir.text.push_str("}\n\n");
    let _ = writeln!(ir.text, "attributes #0 = {{ nounwind {} }}", attrs.join(" "));
    Ok(ir.text)
}

/// Where one panel sits: columns `j0..j0+bn`, depth `bk`, and whether it
/// is the first k-tile.
struct Block<'s> {
    j0: &'s str,
    bn: &'s str,
    bk: &'s str,
    first: &'s str,
}

/// The register-blocked micro-kernel: `MR × nr` of C in `MR · nv` vector
/// accumulators; per step of the depth, `nv` panel vectors and `MR`
/// broadcast elements of the packed A block, `MR · nv` fused multiply-adds.
struct MicroKernel<'s> {
    w: usize,
    nv: usize,
    nr: usize,
    tk: usize,
    vt: &'s str,
    panel: &'s str,
    apack: &'s str,
    stage: &'s str,
    acc: &'s [Vec<String>],
    cj: &'s str,
    cp: &'s str,
}

impl MicroKernel<'_> {
    /// The micro-kernel on row block `blk` (rows `i0 + blk·MR ..`) for every
    /// column group; `valid` rows of C are read and written (all `MR` when
    /// `None`).
    fn emit(&self, ir: &mut Ir, g: &str, blk: &str, valid: Option<&str>, at: &Block<'_>) {
        let (w, nv, nr, vt) = (self.w, self.nv, self.nr, self.vt);
        let row0 = ir.op("mul", "i64", blk, &MR.to_string());
        let i = ir.op("add", "i64", "%i0", &row0);
        let aoff = ir.op("mul", "i64", blk, &(MR * self.tk).to_string());
        let ablock = ir.gep("float", self.apack, &aoff);
        // Row r of C takes part when r < valid.
        let row_ok: Vec<Option<String>> =
            (0..MR).map(|r| valid.map(|v| ir.op("icmp slt", "i64", &r.to_string(), v))).collect();
        let guarded = |ir: &mut Ir, r: usize, body: &mut dyn FnMut(&mut Ir)| match &row_ok[r] {
            Some(c) => ir.if_then(c, |ir| body(ir)),
            None => body(ir),
        };
        {
            let jj = ir.op("mul", "i64", g, &nr.to_string());
            let left = ir.op("sub", "i64", at.bn, &jj);
            let full = ir.op("icmp sge", "i64", &left, &nr.to_string());
            let width = ir.min(&left, &nr.to_string());
            let col = ir.op("add", "i64", at.j0, &jj);
            let crows: Vec<String> = (0..MR)
                .map(|r| {
                    let ir_ = ir.op("add", "i64", &i, &r.to_string());
                    let off = ir.op("mul", "i64", &ir_, "%N");
                    let off2 = ir.op("add", "i64", &off, &col);
                    // Only dereferenced for valid rows.
                    let t = ir.tmp();
                    ir.line(format!("{t} = getelementptr float, ptr %c, i64 {off2}"));
                    t
                })
                .collect();
            // The accumulators: 0 on the first k-tile, else C (staged at the
            // edge of N).
            for row in self.acc {
                for a in row {
                    ir.line(format!("store {vt} zeroinitializer, ptr {a}"));
                }
            }
            let later = ir.op("xor", "i1", at.first, "true");
            let later_full = ir.op("and", "i1", &later, &full);
            let later_edge = ir.op("xor", "i1", &later, &later_full);
            ir.if_then(&later_full, |ir| {
                for (r, (crow, accs)) in crows.iter().zip(self.acc).enumerate() {
                    guarded(ir, r, &mut |ir| {
                        for (v, a) in accs.iter().enumerate() {
                            let p = ir.gep("float", crow, &(v * w).to_string());
                            let x = ir.tmp();
                            ir.line(format!("{x} = load {vt}, ptr {p}, align 4"));
                            ir.line(format!("store {vt} {x}, ptr {a}"));
                        }
                    });
                }
            });
            ir.if_then(&later_edge, |ir| {
                for (r, (crow, accs)) in crows.iter().zip(self.acc).enumerate() {
                    guarded(ir, r, &mut |ir| {
                        ir.line(format!(
                            "call void @llvm.memset.p0.i64(ptr align 4 {}, i8 0, i64 {}, i1 false)",
                            self.stage,
                            4 * nr
                        ));
                        ir.for_range(self.cj, "0", &width, |ir, j| {
                            let pc = ir.gep("float", crow, j);
                            let x = ir.load("float", &pc);
                            let ps = ir.gep("float", self.stage, j);
                            ir.line(format!("store float {x}, ptr {ps}"));
                        });
                        for (v, a) in accs.iter().enumerate() {
                            let p = ir.gep("float", self.stage, &(v * w).to_string());
                            let x = ir.tmp();
                            ir.line(format!("{x} = load {vt}, ptr {p}, align 4"));
                            ir.line(format!("store {vt} {x}, ptr {a}"));
                        }
                    });
                }
            });
            // The depth loop.
            let gpanel0 = ir.op("mul", "i64", g, &(self.tk * nr).to_string());
            let gpanel = ir.gep("float", self.panel, &gpanel0);
            ir.for_range(self.cp, "0", at.bk, |ir, p| {
                let pidx = ir.op("mul", "i64", p, &nr.to_string());
                let bvs: Vec<String> = (0..nv)
                    .map(|v| {
                        let idx = ir.op("add", "i64", &pidx, &(v * w).to_string());
                        let pb = ir.gep("float", &gpanel, &idx);
                        let x = ir.tmp();
                        ir.line(format!("{x} = load {vt}, ptr {pb}, align 4"));
                        x
                    })
                    .collect();
                let pa0 = ir.op("mul", "i64", p, &MR.to_string());
                for (r, accs) in self.acc.iter().enumerate() {
                    let o = ir.op("add", "i64", &pa0, &r.to_string());
                    let pa = ir.gep("float", &ablock, &o);
                    broadcast_fma(ir, w, &pa, &bvs, accs);
                }
            });
            // Back to C (staged at the edge of N).
            ir.if_then(&full, |ir| {
                for (r, (crow, accs)) in crows.iter().zip(self.acc).enumerate() {
                    guarded(ir, r, &mut |ir| {
                        for (v, a) in accs.iter().enumerate() {
                            let x = ir.load(vt, a);
                            let p = ir.gep("float", crow, &(v * w).to_string());
                            ir.line(format!("store {vt} {x}, ptr {p}, align 4"));
                        }
                    });
                }
            });
            let edge = ir.op("xor", "i1", &full, "true");
            ir.if_then(&edge, |ir| {
                for (r, (crow, accs)) in crows.iter().zip(self.acc).enumerate() {
                    guarded(ir, r, &mut |ir| {
                        for (v, a) in accs.iter().enumerate() {
                            let x = ir.load(vt, a);
                            let p = ir.gep("float", self.stage, &(v * w).to_string());
                            ir.line(format!("store {vt} {x}, ptr {p}, align 4"));
                        }
                        ir.for_range(self.cj, "0", &width, |ir, j| {
                            let ps = ir.gep("float", self.stage, j);
                            let x = ir.load("float", &ps);
                            let pc = ir.gep("float", crow, j);
                            ir.line(format!("store float {x}, ptr {pc}"));
                        });
                    });
                }
            });
        }
    }
}

/// A compiled matmul kernel for one `(tile_m, tile_n, tile_k)`; its
/// machine code lives as long as it does.
pub struct CompiledMatMul {
    runner: MatMulRunner,
    /// Owns the machine code the runner calls.
    _jit: Jitted,
}

/// The optimised LLVM IR of the matmul for `tiles` on the host (`--emit
/// llvm`, `examples/dump_matmul.rs`).
pub fn matmul_llvm_text(tiles: (usize, usize, usize)) -> Result<String, LlvmError> {
    let host = HostTarget::detect()?;
    jit::emit_text(&matmul_ir(tiles.0, tiles.1, tiles.2, &host)?, "tdl_matmul", &host, false)
}

impl CompiledMatMul {
    /// Generates, optimises and JIT-compiles the kernel for the host.
    pub fn new(tiles: (usize, usize, usize)) -> Result<CompiledMatMul, LlvmError> {
        CompiledMatMul::new_for(tiles, &HostTarget::detect()?)
    }

    /// [`CompiledMatMul::new`] for `host` (which must run here).
    pub fn new_for(tiles: (usize, usize, usize), host: &HostTarget) -> Result<CompiledMatMul, LlvmError> {
        let tiles = (tiles.0.max(1), tiles.1, tiles.2);
        let text = matmul_ir(tiles.0, tiles.1, tiles.2, host)?;
        let jit = Jitted::compile(&text, "tdl_matmul", FN_NAME, host)?;
        // SAFETY: generated above with exactly this signature; valid while `jit` lives.
        let f: RowsFn = unsafe { std::mem::transmute::<usize, RowsFn>(jit.addr) };
        let nr = 2 * (host.f32_lanes() as usize).max(1);
        // SAFETY: `f` is the row-block function for `tiles` and `nr`, and
        // `jit` (owned beside the runner) keeps its code alive.
        let runner = unsafe { MatMulRunner::new(tiles, f, nr) };
        Ok(CompiledMatMul { runner, _jit: jit })
    }

    /// Runs the kernel on `args` with `threads` worker threads; returns the
    /// row-major `[batch, M, N]`.
    pub fn run(&self, args: &MatMulArgs<'_>, threads: usize) -> Result<Vec<f32>, LlvmError> {
        Ok(self.runner.run(args, threads)?)
    }
}
