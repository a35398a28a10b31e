//! Shared helpers of the acceptance tests: building verified graphs with the
//! `tdl_ir` API and running single operators.
#![allow(dead_code)]

use tdl_ir::infer::infer_type;
use tdl_ir::{ConstValue, DType, Dim, Graph, NodeId, Op, TensorType, Type, VerifiedGraph};
use tdl_reference::{run, RunError, Tensor};

/// `"T"` is a symbol, `"64"` a constant, `"2*T"` twice a symbol.
pub fn dim(s: &str) -> Dim {
    if let Ok(c) = s.parse::<i64>() {
        return Dim::constant(c);
    }
    if let Some((c, sym)) = s.split_once('*') {
        return Dim::sym(sym).checked_mul(&Dim::constant(c.parse().unwrap())).unwrap();
    }
    Dim::sym(s)
}

pub fn tt(dtype: DType, dims: &[&str]) -> TensorType {
    TensorType::new(dtype, dims.iter().map(|d| dim(d)).collect())
}

/// A graph under construction; every node's type comes from the shared
/// type rules.
pub struct B {
    pub g: Graph,
}

impl B {
    pub fn new(name: &str) -> B {
        B { g: Graph::new(name) }
    }

    pub fn param(&mut self, name: &str, dtype: DType, dims: &[&str]) -> NodeId {
        self.g.add_param(name, tt(dtype, dims), None)
    }

    /// A parameter with the concrete shape of `t`.
    pub fn param_like(&mut self, name: &str, t: &Tensor) -> NodeId {
        let ty = TensorType::new(t.dtype, t.shape.iter().map(|&d| Dim::constant(d as i64)).collect());
        self.g.add_param(name, ty, None)
    }

    pub fn op(&mut self, op: Op, ins: &[NodeId]) -> NodeId {
        let tys: Vec<&Type> = ins.iter().map(|i| &self.g.node(*i).ty).collect();
        let ty = infer_type(&op, &tys).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        self.g.add_node(op, ty, ins, None)
    }

    pub fn konst(&mut self, dtype: DType, shape: &[usize], data: Vec<f64>) -> NodeId {
        self.op(Op::Constant(ConstValue { dtype, shape: shape.to_vec(), data }), &[])
    }

    /// An `f32` scalar literal.
    pub fn scalar(&mut self, v: f64) -> NodeId {
        self.konst(DType::F32, &[], vec![v])
    }

    pub fn finish(mut self, results: &[NodeId]) -> VerifiedGraph {
        let types: Vec<TensorType> =
            results.iter().map(|r| self.g.node(*r).ty.as_tensor().expect("results are tensors").clone()).collect();
        self.g.set_results(results.to_vec(), types);
        tdl_ir::verify(self.g).unwrap_or_else(|e| panic!("verify: {e}"))
    }
}

pub fn t(dtype: DType, shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(dtype, shape.to_vec(), data.to_vec()).unwrap()
}

pub fn f32t(shape: &[usize], data: &[f64]) -> Tensor {
    t(DType::F32, shape, data)
}

/// Runs one operator on concrete inputs.
pub fn apply(op: Op, xs: &[Tensor]) -> Result<Tensor, RunError> {
    let mut b = B::new("apply");
    let ids: Vec<NodeId> = xs.iter().enumerate().map(|(i, x)| b.param_like(&format!("x{i}"), x)).collect();
    let n = b.op(op, &ids);
    let g = b.finish(&[n]);
    let mut out = run(&g, xs)?;
    Ok(out.remove(0))
}

pub fn apply_ok(op: Op, xs: &[Tensor]) -> Tensor {
    apply(op, xs).unwrap_or_else(|e| panic!("{e}"))
}

pub fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "lengths differ: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok = (x == y) || (x - y).abs() <= tol;
        assert!(ok, "element {i}: {x} vs {y} (tol {tol})\n{a:?}\n{b:?}");
    }
}
