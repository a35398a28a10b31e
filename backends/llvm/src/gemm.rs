//! A register-blocked block product, emitted inline into a kernel's LLVM IR:
//! `C[rows × n] (+)= A[rows × k] · B[k × n]` with `C` in `MR × NR`
//! register accumulators, one broadcast element of A per row and `NR / w`
//! vectors of B per step of the depth, fused multiply-adds. The attention
//! kernel uses it for `S = Q·Kᵀ` and `O += P·V`.
//!
//! Rows are processed in whole blocks of `rows` ([`MR`], or 4 for programs
//! of at most 4 rows; the caller pads A and C to a multiple of `MR` rows;
//! the extra rows compute values nobody reads).
//! Columns are processed in groups of two vectors; C's rows are padded to a
//! multiple of the vector width. B is read with plain vector loads where
//! `n_valid` columns exist and masked loads (zero past the end) where not,
//! so B may be a row of global memory that ends at `n_valid`.

use crate::attention::Ir;

/// Rows per register block (the runtime sizes stacks with the same constant).
pub(crate) use tdl_rt::MR;

/// One emitted block product.
pub(crate) struct BlockGemm<'s> {
    /// `f32` lanes of a vector.
    pub w: usize,
    /// Rows of a register block: [`MR`], or fewer for programs of few rows.
    pub rows: usize,
    /// Blocks of `rows` rows (an i64 value).
    pub blocks: &'s str,
    /// Columns of C (a multiple of `w` after padding).
    pub n: usize,
    /// Columns of B that exist.
    pub n_valid: usize,
    /// Depth (an i64 value).
    pub k: &'s str,
    /// `A[i][p] = a[i·a_row + p]`.
    pub a: &'s str,
    pub a_row: usize,
    /// `B[p][j] = b[p·b_row + j]`.
    pub b: &'s str,
    pub b_row: usize,
    /// `C[i][j] = c[i·c_row + j]`, vector-aligned rows.
    pub c: &'s str,
    pub c_row: usize,
    /// `C += A·B` (else `C = A·B`).
    pub accumulate: bool,
    /// Two i64 loop counters (allocas).
    pub counters: [&'s str; 2],
    /// At least `rows · 2` allocas of the vector type.
    pub acc: &'s [String],
}

impl BlockGemm<'_> {
    pub(crate) fn emit(&self, ir: &mut Ir) {
        let w = self.w;
        let vt = format!("<{w} x float>");
        let n_vec = self.n.div_ceil(w);
        let [cb, cp] = self.counters;
        ir.for_range(cb, "0", self.blocks, |ir, blk| {
            let row0 = ir.op("mul", "i64", blk, &self.rows.to_string());
            let a_off = ir.op("mul", "i64", &row0, &self.a_row.to_string());
            let c_off = ir.op("mul", "i64", &row0, &self.c_row.to_string());
            let ablock = ir.gep("float", self.a, &a_off);
            let cblock = ir.gep("float", self.c, &c_off);
            let mut v0 = 0;
            while v0 < n_vec {
                let nv = (n_vec - v0).min(2);
                let accs = |r: usize, v: usize| &self.acc[r * 2 + v];
                // Accumulators: C or zero.
                for r in 0..self.rows {
                    for v in 0..nv {
                        let x = if self.accumulate {
                            let p = ir.gep("float", &cblock, &(r * self.c_row + (v0 + v) * w).to_string());
                            let x = ir.tmp();
                            ir.line(format!("{x} = load {vt}, ptr {p}, align 4"));
                            x
                        } else {
                            "zeroinitializer".to_string()
                        };
                        ir.line(format!("store {vt} {x}, ptr {}", accs(r, v)));
                    }
                }
                ir.for_range_unrolled(cp, "0", self.k, 4, |ir, p| {
                    let brow0 = ir.op("mul", "i64", p, &self.b_row.to_string());
                    let brow = ir.gep("float", self.b, &brow0);
                    let bvs: Vec<String> = (0..nv)
                        .map(|v| {
                            let col = (v0 + v) * w;
                            let pb = ir.gep("float", &brow, &col.to_string());
                            if col >= self.n_valid {
                                return "zeroinitializer".to_string();
                            }
                            let x = ir.tmp();
                            if col + w <= self.n_valid {
                                ir.line(format!("{x} = load {vt}, ptr {pb}, align 4"));
                            } else {
                                let lanes: Vec<String> = (0..w)
                                    .map(|l| format!("i1 {}", if col + l < self.n_valid { "true" } else { "false" }))
                                    .collect();
                                ir.line(format!(
                                    "{x} = call {vt} @llvm.masked.load.v{w}f32.p0(ptr {pb}, i32 4, <{w} x i1> <{}>, {vt} zeroinitializer)",
                                    lanes.join(", ")
                                ));
                            }
                            x
                        })
                        .collect();
                    for r in 0..self.rows {
                        let idx0 = ir.op("add", "i64", p, &(r * self.a_row).to_string());
                        let pa = ir.gep("float", &ablock, &idx0);
                        broadcast_fma(ir, w, &pa, &bvs, &self.acc[r * 2..r * 2 + nv]);
                    }
                });
                for r in 0..self.rows {
                    for v in 0..nv {
                        let x = ir.load(&vt, accs(r, v));
                        let p = ir.gep("float", &cblock, &(r * self.c_row + (v0 + v) * w).to_string());
                        ir.line(format!("store {vt} {x}, ptr {p}, align 4"));
                    }
                }
                v0 += nv;
            }
        });
    }
}

/// One step of a register-blocked product for one row: `accs[v] +=
/// splat(*a) · bs[v]` (the accumulators are vector allocas).
pub(crate) fn broadcast_fma(ir: &mut Ir, w: usize, a: &str, bs: &[String], accs: &[String]) {
    let vt = format!("<{w} x float>");
    let x = ir.load("float", a);
    let ins = ir.tmp();
    ir.line(format!("{ins} = insertelement {vt} poison, float {x}, i64 0"));
    let splat = ir.tmp();
    ir.line(format!("{splat} = shufflevector {vt} {ins}, {vt} poison, <{w} x i32> zeroinitializer"));
    for (acc, b) in accs.iter().zip(bs) {
        let old = ir.load(&vt, acc);
        let y = ir.tmp();
        ir.line(format!("{y} = call {vt} @llvm.fmuladd.v{w}f32({vt} {splat}, {vt} {b}, {vt} {old})"));
        ir.line(format!("store {vt} {y}, ptr {acc}"));
    }
}

/// The declarations [`BlockGemm`] calls, for vectors of `w` lanes.
pub(crate) fn declarations(w: usize) -> String {
    let vt = format!("<{w} x float>");
    format!(
        "declare {vt} @llvm.fmuladd.v{w}f32({vt}, {vt}, {vt})\n\
         declare {vt} @llvm.masked.load.v{w}f32.p0(ptr, i32, <{w} x i1>, {vt})\n\
         declare float @llvm.vector.reduce.fadd.v{w}f32(float, {vt})\n\
         declare void @llvm.prefetch.p0(ptr, i32, i32, i32)\n"
    )
}

/// Scores by dot products, for programs with few query rows (decode): each
/// row of K (`b`, contiguous over the depth) is read once and dotted with
/// the [`MR`] rows of a block of A, `C[i][j] = Σ_p A[i][p]·B[j][p]`, `MR`
/// vector accumulators along the depth and one horizontal sum per entry.
/// Needs no packed Kᵀ, so K is streamed straight from memory.
pub(crate) struct RowDot<'s> {
    pub w: usize,
    /// Rows of A per block: [`MR`], or fewer for programs of few rows.
    pub rows: usize,
    /// Blocks of `rows` rows of A (an i64 value).
    pub blocks: &'s str,
    /// Rows of B to dot with (an i64 value).
    pub cols: &'s str,
    /// The depth (a constant).
    pub d: usize,
    /// `A[i][p] = a[i·a_row + p]`.
    pub a: &'s str,
    pub a_row: usize,
    /// `B[j][p] = b[j·b_row + p]`.
    pub b: &'s str,
    pub b_row: usize,
    /// `C[i][j] = c[i·c_row + j]`.
    pub c: &'s str,
    pub c_row: usize,
    /// Three i64 loop counters (allocas).
    pub counters: [&'s str; 3],
    /// At least `rows` allocas of the vector type.
    pub acc: &'s [String],
    /// `(base, row, bytes)`: with row `j` of B, prefetch `bytes` from
    /// `base + j·row` floats (the V row the scores will weigh), so the
    /// block product that reads V across rows finds it in cache.
    pub prefetch: Option<(&'s str, usize, usize)>,
}

impl RowDot<'_> {
    pub(crate) fn emit(&self, ir: &mut Ir) {
        let w = self.w;
        let vt = format!("<{w} x float>");
        let [cb, cj, cc] = self.counters;
        let (chunks, tail) = (self.d / w, self.d % w);
        let tail_mask: Vec<String> =
            (0..w).map(|l| format!("i1 {}", if l < tail { "true" } else { "false" })).collect();
        let tail_mask = format!("<{w} x i1> <{}>", tail_mask.join(", "));
        ir.for_range(cb, "0", self.blocks, |ir, blk| {
            let row0 = ir.op("mul", "i64", blk, &self.rows.to_string());
            let a_off = ir.op("mul", "i64", &row0, &self.a_row.to_string());
            let c_off = ir.op("mul", "i64", &row0, &self.c_row.to_string());
            let ablock = ir.gep("float", self.a, &a_off);
            let cblock = ir.gep("float", self.c, &c_off);
            ir.for_range(cj, "0", self.cols, |ir, j| {
                let boff = ir.op("mul", "i64", j, &self.b_row.to_string());
                let brow = ir.gep("float", self.b, &boff);
                if let Some((base, row, bytes)) = self.prefetch {
                    let poff = ir.op("mul", "i64", j, &row.to_string());
                    let prow = ir.gep("float", base, &poff);
                    for line in (0..bytes).step_by(64) {
                        let pp = ir.gep("i8", &prow, &line.to_string());
                        ir.line(format!("call void @llvm.prefetch.p0(ptr {pp}, i32 0, i32 3, i32 1)"));
                    }
                }
                for a in &self.acc[..self.rows] {
                    ir.line(format!("store {vt} zeroinitializer, ptr {a}"));
                }
                let step = |ir: &mut Ir, col: &str, masked: bool| {
                    let pb = ir.gep("float", &brow, col);
                    let load = |ir: &mut Ir, p: &str| {
                        let x = ir.tmp();
                        if masked {
                            ir.line(format!(
                                "{x} = call {vt} @llvm.masked.load.v{w}f32.p0(ptr {p}, i32 4, {tail_mask}, {vt} zeroinitializer)"
                            ));
                        } else {
                            ir.line(format!("{x} = load {vt}, ptr {p}, align 4"));
                        }
                        x
                    };
                    let kv = load(ir, &pb);
                    for (r, a) in self.acc[..self.rows].iter().enumerate() {
                        let idx = ir.op("add", "i64", col, &(r * self.a_row).to_string());
                        let pa = ir.gep("float", &ablock, &idx);
                        let qv = load(ir, &pa);
                        let old = ir.load(&vt, a);
                        let y = ir.tmp();
                        ir.line(format!("{y} = call {vt} @llvm.fmuladd.v{w}f32({vt} {qv}, {vt} {kv}, {vt} {old})"));
                        ir.line(format!("store {vt} {y}, ptr {a}"));
                    }
                };
                ir.for_range(cc, "0", &chunks.to_string(), |ir, c| {
                    let col = ir.op("mul", "i64", c, &w.to_string());
                    step(ir, &col, false);
                });
                if tail > 0 {
                    step(ir, &(chunks * w).to_string(), true);
                }
                for (r, a) in self.acc[..self.rows].iter().enumerate() {
                    let v = ir.load(&vt, a);
                    let sum = ir.tmp();
                    ir.line(format!("{sum} = call reassoc float @llvm.vector.reduce.fadd.v{w}f32(float -0.0, {vt} {v})"));
                    let idx = ir.op("add", "i64", j, &(r * self.c_row).to_string());
                    let pc = ir.gep("float", &cblock, &idx);
                    ir.line(format!("store float {sum}, ptr {pc}"));
                }
            });
        });
    }
}
