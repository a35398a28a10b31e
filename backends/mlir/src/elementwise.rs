//! Elementwise kernels: one thread per output element (256 per
//! workgroup, grid `ceil(n/256)`), the fused chain ([`EwOp`]) compiled to
//! `arith` and LLVM intrinsics that exist on both targets
//! (`llvm.exp2.f32`, `llvm.sqrt.f32`, `llvm.fabs.f32`; `log` and `erf`
//! are computed here from `arith`, so no libdevice call is needed).
//!
//! The code depends on the output's rank, the inputs' element kinds and
//! the chain; shapes, broadcast strides and offsets are run-time
//! parameters: the output is a row-major `memref<?x…xf32>` (`xi32` for
//! chains writing `i32` or `bool`, bools stored as 0/1), input `i` a
//! strided `memref<?x…, strided<[?, …], offset: ?>>` of the output's
//! shape (stride 0 along broadcast axes). `i32` values follow the
//! interpreter (wrapping `+ - *`, floor division with `x / 0 == 0`,
//! `neg`, `abs`, `relu`, constants truncated and wrapped). Masks
//! (`EwOp::Mask`) are [`crate::mask`]'s code with `h` the index along axis
//! -3 (0 below rank 3) and their operands, symbols and error flag as
//! extra parameters.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::rc::Rc;

use tdl_ir::{BinaryOp, DType, UnaryOp};
use tdl_kernel::interp::{ElementwiseArgs, Elems, StridedView};
use tdl_kernel::ir::{ElementwiseKernel, EwOp, KernelProgram};

use crate::launch::{KernelCode, LaunchPlan, LaunchStep, Param, PlanBuf, Store, MAX_GRID_X};
use crate::mask::{mask, plan_extras, ArrayData, Extras, MaskCtx};
use crate::matmul::code_of;
use crate::wrap::{f32_lit, Func};
use crate::MlirError;

/// Threads per workgroup of the one-thread-per-element kernels.
pub const BLOCK: usize = 256;

pub(crate) fn unsupported(what: impl std::fmt::Display) -> MlirError {
    MlirError::Unsupported(format!("{what} in the GPU code generator"))
}

/// `memref<?x…xT>` of rank `r` (row-major).
pub(crate) fn dense(r: usize, t: &str) -> String {
    format!("memref<{}{t}>", "?x".repeat(r))
}

/// `memref<?x…xT, strided<[?, …], offset: ?>>` of rank `r`.
pub(crate) fn strided(r: usize, t: &str) -> String {
    format!("memref<{}{t}, strided<[{}], offset: ?>>", "?x".repeat(r), vec!["?"; r].join(", "))
}

/// SSA value emitter: `%e<n> = …` lines.
pub(crate) struct Emit {
    pub s: String,
    n: usize,
    pub indent: &'static str,
}

impl Emit {
    pub fn new(indent: &'static str) -> Emit {
        Emit { s: String::new(), n: 0, indent }
    }

    /// Emits `%eN = rhs` and returns `%eN`.
    pub fn v(&mut self, rhs: impl std::fmt::Display) -> String {
        self.n += 1;
        let name = format!("%e{}", self.n);
        let _ = writeln!(self.s, "{}{name} = {rhs}", self.indent);
        name
    }

    pub fn f(&mut self, c: f32) -> String {
        self.v(format!("arith.constant {} : f32", f32_lit(c)))
    }

    /// An empty emitter continuing this one's numbering (for a region
    /// whose text is placed later; then [`Emit::resume`]).
    pub(crate) fn fork(&self) -> Emit {
        Emit { s: String::new(), n: self.n, indent: self.indent }
    }

    /// Continues the numbering after `other` (a [`Emit::fork`]).
    pub(crate) fn resume(&mut self, other: &Emit) {
        self.n = self.n.max(other.n);
    }

    /// A raw line (a region's `scf.yield`, `} else {`, a store).
    pub fn line(&mut self, text: impl std::fmt::Display) {
        let _ = writeln!(self.s, "{}{text}", self.indent);
    }

    pub(crate) fn intr(&mut self, name: &str, x: &str) -> String {
        self.v(format!("llvm.call_intrinsic \"llvm.{name}.f32\"({x}) : (f32) -> f32"))
    }

    pub(crate) fn bin(&mut self, op: &str, x: &str, y: &str) -> String {
        self.v(format!("arith.{op} {x}, {y} : f32"))
    }

    /// `e^x` as `2^(x·log2 e)`.
    pub fn exp(&mut self, x: &str) -> String {
        let l = self.f(std::f32::consts::LOG2_E);
        let a = self.bin("mulf", x, &l);
        self.intr("exp2", &a)
    }

    /// `ln x` from the exponent and a series in `s = f/(2+f)` (`x = 2^e·(1+f)`,
    /// `1+f` in `[√½, √2)`): a few ulp, with `ln 0 = -inf`, `ln x = NaN`
    /// for `x < 0` or NaN, `ln inf = inf`; subnormals scaled first.
    pub fn log(&mut self, x: &str) -> String {
        let tiny = self.f(f32::MIN_POSITIVE);
        let sub = self.v(format!("arith.cmpf olt, {x}, {tiny} : f32"));
        let two23 = self.f(8_388_608.0);
        let scaled = self.bin("mulf", x, &two23);
        let xs = self.v(format!("arith.select {sub}, {scaled}, {x} : f32"));
        let m23 = self.v("arith.constant -23 : i32");
        let z32 = self.v("arith.constant 0 : i32");
        let eadj = self.v(format!("arith.select {sub}, {m23}, {z32} : i32"));
        let bits = self.v(format!("arith.bitcast {xs} : f32 to i32"));
        let c23 = self.v("arith.constant 23 : i32");
        let sh = self.v(format!("arith.shrui {bits}, {c23} : i32"));
        let c255 = self.v("arith.constant 255 : i32");
        let ex = self.v(format!("arith.andi {sh}, {c255} : i32"));
        let c127 = self.v("arith.constant 127 : i32");
        let e0 = self.v(format!("arith.subi {ex}, {c127} : i32"));
        let e1 = self.v(format!("arith.addi {e0}, {eadj} : i32"));
        let mmask = self.v("arith.constant 8388607 : i32");
        let one_bits = self.v("arith.constant 1065353216 : i32");
        let mb = self.v(format!("arith.andi {bits}, {mmask} : i32"));
        let mb1 = self.v(format!("arith.ori {mb}, {one_bits} : i32"));
        let m = self.v(format!("arith.bitcast {mb1} : i32 to f32"));
        let sqrt2 = self.f(std::f32::consts::SQRT_2);
        let big = self.v(format!("arith.cmpf ogt, {m}, {sqrt2} : f32"));
        let half = self.f(0.5);
        let mh = self.bin("mulf", &m, &half);
        let m2 = self.v(format!("arith.select {big}, {mh}, {m} : f32"));
        let c1 = self.v("arith.constant 1 : i32");
        let ep = self.v(format!("arith.addi {e1}, {c1} : i32"));
        let e2 = self.v(format!("arith.select {big}, {ep}, {e1} : i32"));
        let one = self.f(1.0);
        let two = self.f(2.0);
        let f = self.bin("subf", &m2, &one);
        let d = self.bin("addf", &two, &f);
        let s = self.bin("divf", &f, &d);
        let z = self.bin("mulf", &s, &s);
        let mut p = self.f(1.0 / 9.0);
        for c in [1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0] {
            let pz = self.bin("mulf", &p, &z);
            let k = self.f(c);
            p = self.bin("addf", &pz, &k);
        }
        let pz = self.bin("mulf", &p, &z);
        let two_s = self.bin("mulf", &two, &s);
        let corr = self.bin("mulf", &two_s, &pz);
        let l1p = self.bin("addf", &two_s, &corr);
        let ef = self.v(format!("arith.sitofp {e2} : i32 to f32"));
        let hi = self.f(0.693_145_75);
        let lo = self.f(1.428_606_8e-6);
        let elo = self.bin("mulf", &ef, &lo);
        let tail = self.bin("addf", &l1p, &elo);
        let ehi = self.bin("mulf", &ef, &hi);
        let r = self.bin("addf", &ehi, &tail);
        let zero = self.f(0.0);
        let ninf = self.f(f32::NEG_INFINITY);
        let inf = self.f(f32::INFINITY);
        let nan = self.f(f32::NAN);
        let is0 = self.v(format!("arith.cmpf oeq, {x}, {zero} : f32"));
        let neg = self.v(format!("arith.cmpf ult, {x}, {zero} : f32"));
        let isinf = self.v(format!("arith.cmpf oeq, {x}, {inf} : f32"));
        let r1 = self.v(format!("arith.select {isinf}, {inf}, {r} : f32"));
        let r2 = self.v(format!("arith.select {is0}, {ninf}, {r1} : f32"));
        self.v(format!("arith.select {neg}, {nan}, {r2} : f32"))
    }

    pub(crate) fn sigmoid(&mut self, x: &str) -> String {
        let n = self.v(format!("arith.negf {x} : f32"));
        let e = self.exp(&n);
        let one = self.f(1.0);
        let d = self.bin("addf", &one, &e);
        self.bin("divf", &one, &d)
    }

    /// erf by Abramowitz–Stegun 7.1.26 (absolute error below 1.5e-7).
    fn erf(&mut self, x: &str) -> String {
        let a = self.intr("fabs", x);
        let p = self.f(0.327_591_1);
        let one = self.f(1.0);
        let pa = self.bin("mulf", &p, &a);
        let den = self.bin("addf", &one, &pa);
        let t = self.bin("divf", &one, &den);
        let mut q = self.f(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_7, -0.284_496_72, 0.254_829_6] {
            let qt = self.bin("mulf", &q, &t);
            let k = self.f(c);
            q = self.bin("addf", &qt, &k);
        }
        let poly = self.bin("mulf", &q, &t);
        let a2 = self.bin("mulf", &a, &a);
        let na2 = self.v(format!("arith.negf {a2} : f32"));
        let e = self.exp(&na2);
        let pe = self.bin("mulf", &poly, &e);
        let r = self.bin("subf", &one, &pe);
        let nr = self.v(format!("arith.negf {r} : f32"));
        let zero = self.f(0.0);
        let neg = self.v(format!("arith.cmpf olt, {x}, {zero} : f32"));
        self.v(format!("arith.select {neg}, {nr}, {r} : f32"))
    }

    /// `u(x)` in `f32`, the interpreter's formulas.
    pub fn unary(&mut self, u: UnaryOp, x: &str) -> String {
        match u {
            UnaryOp::Neg => self.v(format!("arith.negf {x} : f32")),
            UnaryOp::Abs => self.intr("fabs", x),
            UnaryOp::Relu => {
                let z = self.f(0.0);
                let lt = self.v(format!("arith.cmpf olt, {x}, {z} : f32"));
                self.v(format!("arith.select {lt}, {z}, {x} : f32"))
            }
            UnaryOp::Exp => self.exp(x),
            UnaryOp::Log => self.log(x),
            UnaryOp::Sqrt => self.intr("sqrt", x),
            UnaryOp::Rsqrt => {
                let s = self.intr("sqrt", x);
                let one = self.f(1.0);
                self.bin("divf", &one, &s)
            }
            UnaryOp::Tanh => {
                // 1 - 2 / (e^(2x) + 1): ±1 at the ends, NaN stays NaN.
                let two = self.f(2.0);
                let x2 = self.bin("mulf", x, &two);
                let e = self.exp(&x2);
                let one = self.f(1.0);
                let d = self.bin("addf", &e, &one);
                let q = self.bin("divf", &two, &d);
                self.bin("subf", &one, &q)
            }
            UnaryOp::Sigmoid => self.sigmoid(x),
            UnaryOp::Gelu => {
                let h = self.f(0.5);
                let hx = self.bin("mulf", &h, x);
                let c = self.f(std::f32::consts::FRAC_1_SQRT_2);
                let a = self.bin("mulf", x, &c);
                let e = self.erf(&a);
                let one = self.f(1.0);
                let s = self.bin("addf", &one, &e);
                self.bin("mulf", &hx, &s)
            }
            UnaryOp::Silu => {
                let s = self.sigmoid(x);
                self.bin("mulf", x, &s)
            }
        }
    }
}

/// The multi-index of thread `%lin` in the output (`%i0…`), given the
/// sizes `%d0…` (emitted by [`dims`]).
pub(crate) fn decompose(e: &mut Emit, rank: usize, lin: &str) -> Vec<String> {
    let mut idx = vec![String::new(); rank];
    let mut rest = lin.to_string();
    for a in (0..rank).rev() {
        if a == 0 {
            idx[a] = rest.clone();
        } else {
            idx[a] = e.v(format!("arith.remui {rest}, %d{a} : index"));
            rest = e.v(format!("arith.divui {rest}, %d{a} : index"));
        }
    }
    idx
}

/// `%d<a> = memref.dim %<of>, a` for every axis and `%numel`, the product.
pub(crate) fn dims(out: &mut String, of: &str, ty: &str, rank: usize) {
    let _ = writeln!(out, "    %numel0 = arith.constant 1 : index");
    for a in 0..rank {
        let _ = writeln!(out, "    %ax{a} = arith.constant {a} : index");
        let _ = writeln!(out, "    %d{a} = memref.dim {of}, %ax{a} : {ty}");
        let _ = writeln!(out, "    %numel{} = arith.muli %numel{a}, %d{a} : index", a + 1);
    }
    let _ = writeln!(out, "    %numel = arith.addi %numel{rank}, %c0 : index");
}

/// The one-thread-per-element skeleton: `inner(e, idx)` emits the element's
/// code (inside `scf.if %lin < %numel`).
pub(crate) fn per_element(
    name: &str,
    params: Vec<(String, String)>,
    out_ty: &str,
    rank: usize,
    inner: impl FnOnce(&mut Emit, &[String]) -> Result<(), MlirError>,
) -> Result<Func, MlirError> {
    let mut body = String::new();
    let _ = writeln!(body, "    %c0 = arith.constant 0 : index\n    %cblock = arith.constant {BLOCK} : index");
    dims(&mut body, "%out", out_ty, rank);
    let mut e = Emit::new("        ");
    let idx = decompose(&mut e, rank, "%lin");
    inner(&mut e, &idx)?;
    let _ = write!(
        body,
        "    PHASE{{
      %lin0 = arith.muli %bx, %cblock : index
      %lin = arith.addi %lin0, %tx : index
      %inb = arith.cmpi ult, %lin, %numel : index
      scf.if %inb {{
{}      }}
    }}PHASE
",
        e.s
    );
    Ok(Func { name: name.to_string(), params, block: [BLOCK as u32, 1], shared: Vec::new(), body })
}

/// What the code of an elementwise kernel depends on.
struct Spec<'k> {
    rank: usize,
    /// Per input: how its floating-point data is stored (`None`: `i32`).
    inputs: Vec<Option<Store>>,
    /// How a floating-point output is stored.
    out: Store,
    /// Per mask: its operands' element types and ranks.
    mask_types: Vec<Vec<Option<(DType, usize)>>>,
    k: &'k ElementwiseKernel,
}

/// `c` as the interpreter rounds an `i32` constant (truncated, wrapped
/// modulo 2³²; non-finite values give 0).
fn i32_const(c: f64) -> i32 {
    if !c.is_finite() {
        return 0;
    }
    let t = c.trunc();
    if (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&t) {
        return t as i32;
    }
    t.rem_euclid(4_294_967_296.0) as u32 as i32
}

/// The element type an instruction's value has in the code.
fn val_ty(d: DType) -> &'static str {
    match d {
        DType::I32 => "i32",
        DType::Bool => "i1",
        _ => "f32",
    }
}

/// The kernel: parameters `%out` (row-major, `f32`, or `i32` for integer
/// and boolean outputs), `%in<i>` (strided views), then the masks'
/// [`Extras`]; also the extras.
fn func(spec: &Spec<'_>, name: &str) -> Result<(Func, Extras), MlirError> {
    let r = spec.rank;
    let k = spec.k;
    let Some(last) = k.body.last() else { return Err(unsupported("an empty elementwise chain")) };
    let out_elem = if last.dtype.is_float() { spec.out.mlir() } else { "i32" };
    let mut params = vec![("%out".to_string(), dense(r, out_elem))];
    for (i, st) in spec.inputs.iter().enumerate() {
        params.push((format!("%in{i}"), strided(r, st.map_or("i32", Store::mlir))));
    }
    if !k.masks.is_empty() && r < 2 {
        return Err(unsupported("masks on results of rank below 2"));
    }
    let out_ty = dense(r, out_elem);
    let mut x = Extras::new(spec.mask_types.clone());
    let mut f = per_element(name, params, &out_ty, r, |e, idx| {
        let at = idx.join(", ");
        if !k.masks.is_empty() {
            e.line(format!("%T64 = arith.index_cast %d{} : index to i64", r - 2));
            e.line(format!("%S64 = arith.index_cast %d{} : index to i64", r - 1));
            e.line(format!("%q64 = arith.index_cast {} : index to i64", idx[r - 2]));
            e.line(format!("%k64 = arith.index_cast {} : index to i64", idx[r - 1]));
            if r >= 3 {
                e.line(format!("%h64 = arith.index_cast {} : index to i64", idx[r - 3]));
            } else {
                e.line("%h64 = arith.constant 0 : i64");
            }
        }
        let mut vals: Vec<String> = Vec::with_capacity(k.body.len());
        for inst in &k.body {
            let dt = inst.dtype;
            let v = match &inst.op {
                EwOp::Load(i) => {
                    let Some(&st) = spec.inputs.get(*i) else {
                        return Err(MlirError::BadPlan(format!("elementwise load of missing input {i}")));
                    };
                    match (st, dt) {
                        (Some(st), d) if d.is_float() => {
                            let x = e.v(format!("memref.load %in{i}[{at}] : {}", strided(r, st.mlir())));
                            st.widen(e, &x)
                        }
                        (None, DType::I32) => e.v(format!("memref.load %in{i}[{at}] : {}", strided(r, "i32"))),
                        (None, DType::Bool) => {
                            let v = e.v(format!("memref.load %in{i}[{at}] : {}", strided(r, "i32")));
                            let z = e.v("arith.constant 0 : i32");
                            e.v(format!("arith.cmpi ne, {v}, {z} : i32"))
                        }
                        _ => return Err(unsupported("loads converting between integers and floats")),
                    }
                }
                EwOp::Const(c) => match dt {
                    DType::Bool => e.v(format!("arith.constant {}", *c != 0.0)),
                    DType::I32 => e.v(format!("arith.constant {} : i32", i32_const(*c))),
                    _ => e.f(*c as f32),
                },
                EwOp::Unary(u, a) if dt.is_float() => e.unary(*u, &vals[*a]),
                EwOp::Unary(u, a) if dt == DType::I32 => {
                    let v = &vals[*a];
                    let z = e.v("arith.constant 0 : i32");
                    match u {
                        UnaryOp::Neg => e.v(format!("arith.subi {z}, {v} : i32")),
                        UnaryOp::Abs => {
                            let n = e.v(format!("arith.subi {z}, {v} : i32"));
                            let neg = e.v(format!("arith.cmpi slt, {v}, {z} : i32"));
                            e.v(format!("arith.select {neg}, {n}, {v} : i32"))
                        }
                        UnaryOp::Relu => e.v(format!("arith.maxsi {v}, {z} : i32")),
                        other => return Err(unsupported(format!("`{}` of an integer", other.name()))),
                    }
                }
                EwOp::Binary(b, a, c) if dt.is_float() => {
                    let op = match b {
                        BinaryOp::Add => "addf",
                        BinaryOp::Sub => "subf",
                        BinaryOp::Mul => "mulf",
                        BinaryOp::Div => "divf",
                    };
                    e.bin(op, &vals[*a], &vals[*c])
                }
                EwOp::Binary(b, a, c) if dt == DType::I32 => {
                    let (va, vc) = (&vals[*a], &vals[*c]);
                    match b {
                        BinaryOp::Add => e.v(format!("arith.addi {va}, {vc} : i32")),
                        BinaryOp::Sub => e.v(format!("arith.subi {va}, {vc} : i32")),
                        BinaryOp::Mul => e.v(format!("arith.muli {va}, {vc} : i32")),
                        BinaryOp::Div => {
                            // Floor division in i64 (x / 0 == 0), wrapped to i32.
                            let wa = e.v(format!("arith.extsi {va} : i32 to i64"));
                            let wc = e.v(format!("arith.extsi {vc} : i32 to i64"));
                            let q = crate::lambda::int_div(e, &wa, &wc);
                            e.v(format!("arith.trunci {q} : i64 to i32"))
                        }
                    }
                }
                EwOp::Select(c, a, b) => {
                    e.v(format!("arith.select {}, {}, {} : {}", vals[*c], vals[*a], vals[*b], val_ty(dt)))
                }
                EwOp::Mask(m) => {
                    let Some(mu) = k.masks.get(*m) else {
                        return Err(MlirError::BadPlan(format!("elementwise mask {m} missing")));
                    };
                    let cx = MaskCtx { q: "%q64", k: "%k64", h: "%h64", t: "%T64", s: "%S64", group: *m };
                    mask(e, &mu.expr, &cx, &mut x, "GPU elementwise kernel")?
                }
                other => {
                    return Err(unsupported(format!("the element operation {other:?} on {}", dt.name())));
                }
            };
            vals.push(v);
        }
        let last_v = vals.last().cloned().unwrap_or_default();
        let stored = match last.dtype {
            DType::Bool => e.v(format!("arith.extui {last_v} : i1 to i32")),
            d if d.is_float() => spec.out.narrow(e, &last_v),
            _ => last_v,
        };
        e.line(format!("memref.store {stored}, %out[{at}] : {out_ty}"));
        Ok(())
    })?;
    // `%h` is read by no mask: the head is always the index along axis -3.
    x.heads = false;
    f.params.extend(x.params());
    Ok((f, x))
}

/// The `gpu.func` of elementwise kernel `k` of `p` (for [`crate::program`]).
pub(crate) fn ir_func(p: &KernelProgram, k: &ElementwiseKernel, fname: &str) -> Result<(String, String), MlirError> {
    let out = p.buffer(k.out).ok_or_else(|| MlirError::BadPlan("no output buffer".into()))?;
    let inputs =
        k.inputs.iter().map(|a| p.buffer(a.buf).filter(|b| b.dtype.is_float()).map(|b| Store::of(b.dtype))).collect();
    let mask_types = k
        .masks
        .iter()
        .map(|m| m.operands.iter().map(|&b| p.buffer(b).map(|x| (x.dtype, x.shape.len()))).collect())
        .collect();
    let spec = Spec { rank: out.shape.len(), inputs, out: Store::of(out.dtype), mask_types, k };
    let (f, _) = func(&spec, fname)?;
    Ok((f.gpu(), format!("elementwise, rank {}, {} output, one thread per element", spec.rank, out.dtype.name())))
}

/// The code of `f` (named canonically).
pub(crate) fn cached_code(kind: &str, f: &Func) -> Rc<KernelCode> {
    Rc::new(code_of(kind, f))
}

/// The grid of a one-thread-per-element kernel over `n` elements.
pub(crate) fn grid_1d(n: usize) -> Option<[u32; 3]> {
    let g = n.div_ceil(BLOCK) as u64;
    (g <= MAX_GRID_X).then_some([g as u32, 1, 1])
}

/// The launch plan of an elementwise hook call; `Ok(None)` when the GPU
/// kernel does not support it. Parameters: the output (row-major, the
/// hook's shape; an `f32` [`PlanBuf::Zeroed`], or for chains writing
/// `i32`/`bool` an [`PlanBuf::I32`] of zeros written as `i32`, bools 0/1),
/// then each input as a strided view of its buffer, then the masks'
/// extras ([`crate::mask::Extras`]; the error flag is
/// [`LaunchPlan::error_flag`]).
pub fn plan_elementwise<'a>(
    k: &ElementwiseKernel,
    args: &ElementwiseArgs<'a>,
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let masks: Vec<Vec<ArrayData<'_>>> = args
        .masks
        .iter()
        .map(|m| m.operands.iter().map(|o| ArrayData { dtype: o.dtype, shape: &o.shape, data: o.data }).collect())
        .collect();
    let stores = (0..args.inputs.len()).map(|i| Store::of(args.dtypes.get(i).copied().unwrap_or(DType::F32))).collect();
    plan_elementwise_stored(k, args.shape, (&args.inputs, stores, Store::of(args.out_dtype)), &masks, args.bindings)
}

/// [`plan_elementwise`] with each mask's operands as [`ArrayData`],
/// floating-point data stored as `f32`.
pub fn plan_elementwise_arrays<'a>(
    k: &ElementwiseKernel,
    shape: &[usize],
    inputs: &[StridedView<'a>],
    masks: &[Vec<ArrayData<'_>>],
    bindings: &tdl_ir::Bindings,
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    plan_elementwise_stored(k, shape, (inputs, vec![Store::F32; inputs.len()], Store::F32), masks, bindings)
}

/// [`plan_elementwise_arrays`] with the floating-point inputs stored as
/// `stores` say (by input; ignored for integer inputs) and a
/// floating-point output as `out`.
pub fn plan_elementwise_stored<'a>(
    k: &ElementwiseKernel,
    shape: &[usize],
    (inputs, stores, out): (&[StridedView<'a>], Vec<Store>, Store),
    masks: &[Vec<ArrayData<'_>>],
    bindings: &tdl_ir::Bindings,
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let in_store = |i: usize| stores.get(i).copied().unwrap_or_default();
    let input_stores =
        inputs.iter().enumerate().map(|(i, v)| matches!(v.data, Elems::F32(_)).then(|| in_store(i))).collect();
    let groups: Vec<Vec<Option<ArrayData<'_>>>> = masks.iter().map(|m| m.iter().copied().map(Some).collect()).collect();
    let mask_types = groups.iter().map(|g| g.iter().map(|o| o.map(|o| (o.dtype, o.shape.len()))).collect()).collect();
    let spec = Spec { rank: shape.len(), inputs: input_stores, out, mask_types, k };
    let Some((f, x)) = MlirError::declined(func(&spec, "tdl_ew"))? else { return Ok(None) };
    let r = shape.len();
    if !k.masks.is_empty() {
        let (t, s) = (shape[r - 2], shape[r - 1]);
        for (m, g) in k.masks.iter().zip(&groups) {
            let ops: Vec<ArrayData<'_>> = g.iter().flatten().copied().collect();
            if !crate::mask::check(&m.expr, &ops, t, s) {
                return Ok(None);
            }
        }
    }
    let n: usize = shape.iter().product();
    let int_out = k.body.last().is_some_and(|l| !l.dtype.is_float());
    let mut buffers = vec![if int_out { PlanBuf::I32(Cow::Owned(vec![0; n])) } else { out.zeroed(n) }];
    let mut params = vec![Param::contiguous(0, shape)];
    for (i, v) in inputs.iter().enumerate() {
        let b = buffers.len();
        buffers.push(match v.data {
            Elems::F32(d) => in_store(i).input(d),
            Elems::I32(d) => PlanBuf::I32(Cow::Borrowed(d)),
        });
        if v.shape.as_slice() != shape || v.strides.len() != shape.len() {
            return Err(MlirError::BadPlan("an elementwise input is not broadcast to the output".into()));
        }
        params.push(Param::MemRef {
            buf: b,
            offset: v.offset as i64,
            sizes: v.shape.iter().map(|&s| s as i64).collect(),
            strides: v.strides.iter().map(|&s| s as i64).collect(),
        });
    }
    let Some((extra, error_flag)) = plan_extras(&x, &groups, bindings, 1, &mut buffers) else {
        return Ok(None);
    };
    params.extend(extra);
    let Some(grid) = grid_1d(n) else { return Ok(None) };
    let steps = if n == 0 {
        Vec::new()
    } else {
        vec![LaunchStep { func: "tdl_ew".into(), grid, block: [BLOCK as u32, 1, 1], shared_bytes: 0, params }]
    };
    Ok(Some(LaunchPlan {
        code: cached_code("elementwise", &f),
        buffers,
        steps,
        output: 0,
        output_shape: shape.to_vec(),
        error_flag,
        stats: None,
    }))
}
