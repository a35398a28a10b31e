//! Vectorisable `f32` math for the generated kernels: `exp`, `log`,
//! `tanh` and `erf` written in LLVM IR (range reduction, polynomials and
//! selects, no library calls and no branches), so the loops that call them
//! vectorise. Each is an `internal` function with the `#1` attribute group
//! (`alwaysinline`), defined by [`math_ir`].
//!
//! They follow the interpreter's (the Rust standard library's, `libm`'s)
//! special values exactly: NaN in, NaN out; `exp(-inf) = 0`,
//! `exp(+inf) = +inf` and overflow to `+inf` above `ln(f32::MAX)`; `exp`
//! underflows gradually through the subnormals; `log(0) = -inf`,
//! `log(x < 0) = NaN`, `log(+inf) = +inf`; `tanh(±inf) = ±1`;
//! `erf(±inf) = ±1`; signed zeros are kept.
//!
//! Accuracy against `f64` (the test `math_is_accurate` in
//! `tests/kernels.rs` measures it over 200 001 points and checks the
//! bounds in brackets):
//!
//! * `exp`: Cody–Waite reduction `x = n·ln 2 + r`, Cephes' degree-6
//!   polynomial, `2^n` applied in two halves (so subnormal results round
//!   once): relative error 7.8e-8 over [-87, 88.7] (< 2.4e-7).
//! * `log`: Cephes' `logf` (mantissa in `[√½, √2)`, degree-9 polynomial,
//!   subnormals scaled first): 7.6e-8 over [1e-30, 1e30] (< 2.4e-7).
//! * `tanh`: Cephes' `tanhf` (an odd polynomial below 0.625,
//!   `1 - 2/(e^{2|x|} + 1)` above): 1.3e-7 over [-12, 12] (< 5e-7).
//! * `erf`: FreeBSD's `s_erff.c` as `libm::erff` has it (what the
//!   interpreter calls), every interval evaluated and the right one
//!   selected, our `exp` inside: `gelu` through it 1.2e-7 over [0, 9]
//!   (< 5e-7). Against the interpreter it differs by an ulp of `erf` at
//!   most, which `gelu`'s `1 + erf(x/√2)` magnifies for x < 0 (see the
//!   tolerances in `tests/kernels.rs`).

use std::fmt::Write as _;

use crate::attention::{float_text, Ir};

/// `x` as an LLVM `float` constant.
fn f(x: f32) -> String {
    float_text(x)
}

const NAN: &str = "0x7FF8000000000000";
const INF: &str = "0x7FF0000000000000";
const NEG_INF: &str = "0xFFF0000000000000";

/// Horner's rule: `c[0]·x^(n-1) + … + c[n-1]`, in `f32` without contraction.
fn horner(ir: &mut Ir, x: &str, c: &[f32]) -> String {
    let mut acc = f(c[0]);
    for &k in &c[1..] {
        let m = ir.op("fmul", "float", &acc, x);
        acc = ir.op("fadd", "float", &m, &f(k));
    }
    acc
}

fn select(ir: &mut Ir, c: &str, ty: &str, a: &str, b: &str) -> String {
    let t = ir.tmp();
    ir.line(format!("{t} = select i1 {c}, {ty} {a}, {ty} {b}"));
    t
}

fn call1(ir: &mut Ir, fname: &str, x: &str) -> String {
    let t = ir.tmp();
    ir.line(format!("{t} = call float @{fname}(float {x})"));
    t
}

fn define(text: &mut String, name: &str, body: impl FnOnce(&mut Ir) -> String) {
    let mut ir = Ir::new();
    let r = body(&mut ir);
    let _ = writeln!(text, "define internal float @{name}(float %x) #1 {{\nentry:");
    text.push_str(&ir.text);
    let _ = writeln!(text, "  ret float {r}\n}}\n");
}

/// `@tdl_m_exp`, `@tdl_m_log`, `@tdl_m_tanh`, `@tdl_m_erf` and the
/// intrinsics they call but `llvm.fabs.f32` (which the module declares).
/// O3 drops the unused ones.
pub(crate) fn math_ir() -> String {
    let mut t = String::from("declare float @llvm.rint.f32(float)\ndeclare float @llvm.copysign.f32(float, float)\n\n");
    define(&mut t, "tdl_m_exp", exp_body);
    define(&mut t, "tdl_m_log", log_body);
    define(&mut t, "tdl_m_tanh", tanh_body);
    define(&mut t, "tdl_m_erf", erf_body);
    t
}

fn exp_body(ir: &mut Ir) -> String {
    let nan = ir.op("fcmp uno", "float", "%x", "0.0");
    let x0 = select(ir, &nan, "float", "0.0", "%x");
    // Below -104 the result rounds to 0, above 89 to +inf: clamping keeps
    // n small while the scaling below still under/overflows correctly.
    let lo = ir.op("fcmp olt", "float", &x0, &f(-104.0));
    let x1 = select(ir, &lo, "float", &f(-104.0), &x0);
    let hi = ir.op("fcmp ogt", "float", &x1, &f(89.0));
    let c = select(ir, &hi, "float", &f(89.0), &x1);
    let tt = ir.op("fmul", "float", &c, &f(std::f32::consts::LOG2_E));
    let n = call1(ir, "llvm.rint.f32", &tt);
    let a = ir.op("fmul", "float", &n, &f(0.693_359_4));
    let r1 = ir.op("fsub", "float", &c, &a);
    let b = ir.op("fmul", "float", &n, &f(-2.121_944_4e-4));
    let r = ir.op("fsub", "float", &r1, &b);
    let p = horner(ir, &r, &[1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5]);
    let r2 = ir.op("fmul", "float", &r, &r);
    let p2 = ir.op("fmul", "float", &p, &r2);
    let p3 = ir.op("fadd", "float", &p2, &r);
    let y = ir.op("fadd", "float", &p3, "1.0");
    // 2^n = 2^n1 · 2^n2 with n1 = floor(n/2): both halves are normal.
    let ni = ir.tmp();
    ir.line(format!("{ni} = fptosi float {n} to i32"));
    let n1 = ir.op("ashr", "i32", &ni, "1");
    let n2 = ir.op("sub", "i32", &ni, &n1);
    let mut scaled = y;
    for h in [n1, n2] {
        let e = ir.op("add", "i32", &h, "127");
        let bits = ir.op("shl", "i32", &e, "23");
        let s = ir.tmp();
        ir.line(format!("{s} = bitcast i32 {bits} to float"));
        scaled = ir.op("fmul", "float", &scaled, &s);
    }
    select(ir, &nan, "float", "%x", &scaled)
}

fn log_body(ir: &mut Ir) -> String {
    // Subnormals: scale by 2^23 first.
    let sub = ir.op("fcmp olt", "float", "%x", &f(f32::MIN_POSITIVE));
    let xs0 = ir.op("fmul", "float", "%x", &f(8_388_608.0));
    let xs = select(ir, &sub, "float", &xs0, "%x");
    let adj = select(ir, &sub, "i32", "-149", "-126");
    let bits = ir.tmp();
    ir.line(format!("{bits} = bitcast float {xs} to i32"));
    let ex = ir.op("lshr", "i32", &bits, "23");
    let ex1 = ir.op("and", "i32", &ex, "255");
    let e0 = ir.op("add", "i32", &ex1, &adj);
    let mb = ir.op("and", "i32", &bits, "8388607");
    let mb1 = ir.op("or", "i32", &mb, "1056964608"); // 0x3f000000: [0.5, 1)
    let m0 = ir.tmp();
    ir.line(format!("{m0} = bitcast i32 {mb1} to float"));
    let small = ir.op("fcmp olt", "float", &m0, &f(std::f32::consts::FRAC_1_SQRT_2));
    let e1 = ir.op("sub", "i32", &e0, "1");
    let e = select(ir, &small, "i32", &e1, &e0);
    let twice = ir.op("fadd", "float", &m0, &m0);
    let ma = ir.op("fsub", "float", &twice, "1.0");
    let mb2 = ir.op("fsub", "float", &m0, "1.0");
    let m = select(ir, &small, "float", &ma, &mb2);
    let z = ir.op("fmul", "float", &m, &m);
    let p = horner(
        ir,
        &m,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_5e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    let pm = ir.op("fmul", "float", &p, &m);
    let y0 = ir.op("fmul", "float", &pm, &z);
    let fe = ir.tmp();
    ir.line(format!("{fe} = sitofp i32 {e} to float"));
    let c2 = ir.op("fmul", "float", &fe, &f(-2.121_944_4e-4));
    let y1 = ir.op("fadd", "float", &y0, &c2);
    let hz = ir.op("fmul", "float", &z, &f(-0.5));
    let y2 = ir.op("fadd", "float", &y1, &hz);
    let r0 = ir.op("fadd", "float", &m, &y2);
    let c1 = ir.op("fmul", "float", &fe, &f(0.693_359_4));
    let r = ir.op("fadd", "float", &r0, &c1);
    let inf = ir.op("fcmp oeq", "float", "%x", INF);
    let ri = select(ir, &inf, "float", INF, &r);
    let zero = ir.op("fcmp oeq", "float", "%x", "0.0");
    let rz = select(ir, &zero, "float", NEG_INF, &ri);
    let bad = ir.op("fcmp ult", "float", "%x", "0.0");
    select(ir, &bad, "float", NAN, &rz)
}

fn tanh_body(ir: &mut Ir) -> String {
    let z = call1(ir, "llvm.fabs.f32", "%x");
    // |x| ≥ 0.625 (and NaN): 1 - 2/(e^{2|x|} + 1), with the sign of x.
    let big = ir.op("fcmp ogt", "float", &z, &f(44.0));
    let zc = select(ir, &big, "float", &f(44.0), &z);
    let z2 = ir.op("fadd", "float", &zc, &zc);
    let s = call1(ir, "tdl_m_exp", &z2);
    let s1 = ir.op("fadd", "float", &s, "1.0");
    let q = ir.op("fdiv", "float", &f(2.0), &s1);
    let l = ir.op("fsub", "float", "1.0", &q);
    let neg = ir.op("fcmp olt", "float", "%x", "0.0");
    let ln = ir.tmp();
    ir.line(format!("{ln} = fneg float {l}"));
    let large = select(ir, &neg, "float", &ln, &l);
    // |x| < 0.625: x + x·x²·P(x²).
    let xx = ir.op("fmul", "float", "%x", "%x");
    let p = horner(ir, &xx, &[-5.704_988_7e-3, 2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1]);
    let pz = ir.op("fmul", "float", &p, &xx);
    let pzx = ir.op("fmul", "float", &pz, "%x");
    let sm = ir.op("fadd", "float", &pzx, "%x");
    let small = ir.op("fcmp olt", "float", &z, &f(0.625));
    select(ir, &small, "float", &sm, &large)
}

/// `libm::erff`'s coefficients (FreeBSD `s_erff.c`) as `f32` bits, highest
/// power first.
const PP: &[u32] = &[0xB7C7_56B1, 0xBBBD_1489, 0xBCE9_528F, 0xBEA6_6BEB, 0x3E03_75D4];
const QQ: &[u32] = &[0xB684_E21A, 0x390A_EE49, 0x3BA6_8116, 0x3D85_2A63, 0x3ECB_BBCE, 0x3F80_0000];
const PA: &[u32] = &[0xBB0D_F9C0, 0x3D11_51B3, 0xBDE3_1CC2, 0x3EA2_FE54, 0xBEBE_9208, 0x3ED4_6805, 0xBB1A_CDC6];
const QA: &[u32] = &[0x3C44_5AA3, 0x3C5F_6E13, 0x3E01_3307, 0x3D93_1AE7, 0x3F0A_5785, 0x3DD9_F331, 0x3F80_0000];
const RA: &[u32] =
    &[0xC11D_077E, 0xC2A2_932B, 0xC338_9AE7, 0xC322_658C, 0xC279_8057, 0xC128_F022, 0xBF31_A0B7, 0xBC21_A093];
const SA: &[u32] = &[
    0xBD77_7F97,
    0x40D2_3F7C,
    0x42D9_451F,
    0x43D6_810B,
    0x4421_58C9,
    0x43D9_486F,
    0x4309_A863,
    0x419D_35CE,
    0x3F80_0000,
];
const RB: &[u32] = &[0xC3F1_C275, 0xC480_230B, 0xC41F_6441, 0xC320_A2EA, 0xC18E_104B, 0xBF4C_9DD4, 0xBC21_A092];
const SB: &[u32] =
    &[0xC1B3_8712, 0x43ED_43A7, 0x451F_90CE, 0x4547_FDBB, 0x44C0_1759, 0x43A2_E571, 0x41F2_B459, 0x3F80_0000];
const ERX: u32 = 0x3F58_560B;
const EFX8: u32 = 0x3F83_75D4;

/// Horner's rule over coefficients given as `f32` bits.
fn horner_bits(ir: &mut Ir, x: &str, c: &[u32]) -> String {
    let c: Vec<f32> = c.iter().map(|&b| f32::from_bits(b)).collect();
    horner(ir, x, &c)
}

fn erf_body(ir: &mut Ir) -> String {
    let bits = ir.tmp();
    ir.line(format!("{bits} = bitcast float %x to i32"));
    let ix = ir.op("and", "i32", &bits, "2147483647");
    let ax = call1(ir, "llvm.fabs.f32", "%x");
    // |x| < 0.84375: x + x·P(x²)/Q(x²); below 2^-28: 0.125·(8x + efx8·x).
    let z = ir.op("fmul", "float", "%x", "%x");
    let r = horner_bits(ir, &z, PP);
    let s = horner_bits(ir, &z, QQ);
    let y = ir.op("fdiv", "float", &r, &s);
    let xy = ir.op("fmul", "float", "%x", &y);
    let a_main = ir.op("fadd", "float", "%x", &xy);
    let x8 = ir.op("fmul", "float", "%x", &f(8.0));
    let xe = ir.op("fmul", "float", "%x", &f(f32::from_bits(EFX8)));
    let t0 = ir.op("fadd", "float", &x8, &xe);
    let a_tiny = ir.op("fmul", "float", &t0, &f(0.125));
    let tiny = ir.op("icmp ult", "i32", &ix, "830472192"); // 0x31800000: 2^-28
    let part_a = select(ir, &tiny, "float", &a_tiny, &a_main);
    // 0.84375 ≤ |x| < 1.25: erfc = 1 - erx - P(s)/Q(s), s = |x| - 1.
    let s1 = ir.op("fsub", "float", &ax, "1.0");
    let pa = horner_bits(ir, &s1, PA);
    let qa = horner_bits(ir, &s1, QA);
    let pq = ir.op("fdiv", "float", &pa, &qa);
    let om = ir.op("fsub", "float", "1.0", &f(f32::from_bits(ERX)));
    let erfc1 = ir.op("fsub", "float", &om, &pq);
    // 1.25 ≤ |x| < 6: erfc = e^(-z²-0.5625)·e^((z-|x|)(z+|x|) + R(s)/S(s)) / |x|,
    // s = 1/x², z = |x| with its low 13 bits cleared; one coefficient set
    // below 1/0.35, another above.
    let xx = ir.op("fmul", "float", &ax, &ax);
    let ss = ir.op("fdiv", "float", "1.0", &xx);
    let ra = horner_bits(ir, &ss, RA);
    let sa = horner_bits(ir, &ss, SA);
    let rb = horner_bits(ir, &ss, RB);
    let sb = horner_bits(ir, &ss, SB);
    let near = ir.op("icmp ult", "i32", &ix, "1077336941"); // 0x4036db6d: 1/0.35
    let rr = select(ir, &near, "float", &ra, &rb);
    let sr = select(ir, &near, "float", &sa, &sb);
    let axb = ir.tmp();
    ir.line(format!("{axb} = bitcast float {ax} to i32"));
    let zb = ir.op("and", "i32", &axb, "-8192"); // 0xffffe000
    let zf = ir.tmp();
    ir.line(format!("{zf} = bitcast i32 {zb} to float"));
    let zz = ir.op("fmul", "float", &zf, &zf);
    let nzz = ir.tmp();
    ir.line(format!("{nzz} = fneg float {zz}"));
    let e1a = ir.op("fsub", "float", &nzz, &f(0.5625));
    let e1 = call1(ir, "tdl_m_exp", &e1a);
    let zm = ir.op("fsub", "float", &zf, &ax);
    let zp = ir.op("fadd", "float", &zf, &ax);
    let zmp = ir.op("fmul", "float", &zm, &zp);
    let rs = ir.op("fdiv", "float", &rr, &sr);
    let e2a = ir.op("fadd", "float", &zmp, &rs);
    let e2 = call1(ir, "tdl_m_exp", &e2a);
    let ee = ir.op("fmul", "float", &e1, &e2);
    let erfc2 = ir.op("fdiv", "float", &ee, &ax);
    let mid = ir.op("icmp ult", "i32", &ix, "1067450368"); // 0x3fa00000: 1.25
    let erfc = select(ir, &mid, "float", &erfc1, &erfc2);
    let yb = ir.op("fsub", "float", "1.0", &erfc);
    let far = ir.op("icmp ult", "i32", &ix, "1086324736"); // 0x40c00000: 6
    let one_minus = ir.op("fsub", "float", "1.0", &f(f32::from_bits(0x0380_0000)));
    let y6 = select(ir, &far, "float", &yb, &one_minus);
    let signed = call2(ir, "llvm.copysign.f32", &y6, "%x");
    let inner = ir.op("icmp ult", "i32", &ix, "1062731776"); // 0x3f580000: 0.84375
    let res = select(ir, &inner, "float", &part_a, &signed);
    // erf(±inf) = ±1, erf(NaN) = NaN, as 1 - 2·sign + 1/x.
    let nonfinite = ir.op("icmp uge", "i32", &ix, "2139095040"); // 0x7f800000
    let nf0 = ir.op("fdiv", "float", "1.0", "%x");
    let sgn = call2(ir, "llvm.copysign.f32", "1.0", "%x");
    let nf = ir.op("fadd", "float", &sgn, &nf0);
    select(ir, &nonfinite, "float", &nf, &res)
}

fn call2(ir: &mut Ir, fname: &str, a: &str, b: &str) -> String {
    let t = ir.tmp();
    ir.line(format!("{t} = call float @{fname}(float {a}, float {b})"));
    t
}
