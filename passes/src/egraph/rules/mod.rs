//! Rewrite rules, one file per topic (see `passes/RULES.md`).
//!
//! A rule is a name, an egg pattern to search, and an applier. Appliers that
//! build new nodes go through [`try_add`], which type-checks with the shared
//! rules before anything is inserted, and only union a result whose type is
//! the matched class's: a rule can fail to apply, never make the e-graph
//! unsound.

pub mod attention;
pub mod canonicalize;

use egg::{Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use tdl_ir::infer::infer_type;
use tdl_ir::{ConstValue, DType, Op, Type};

use super::{add_op, TEGraph, TensorAnalysis, TL};

pub type Rule = Rewrite<TL, TensorAnalysis>;

/// An applier written as a function: given the matched class and the
/// substitution, return the class to union with it (or `None`).
pub struct Custom {
    pub f: fn(&mut TEGraph, Id, &Subst) -> Option<Id>,
}

impl Applier<TL, TensorAnalysis> for Custom {
    fn apply_one(
        &self,
        egraph: &mut TEGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TL>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let Some(new) = (self.f)(egraph, eclass, subst) else { return Vec::new() };
        if egraph[new].data.ty != egraph[eclass].data.ty {
            return Vec::new();
        }
        if egraph.union(eclass, new) {
            vec![new]
        } else {
            Vec::new()
        }
    }
}

/// A named rule from a pattern and an applier function.
pub fn custom(name: &str, pattern: &str, f: fn(&mut TEGraph, Id, &Subst) -> Option<Id>) -> Rule {
    let p: Pattern<TL> = pattern.parse().unwrap_or_else(|e| panic!("rule {name}: bad pattern {pattern}: {e}"));
    Rewrite::new(name, p, Custom { f }).unwrap_or_else(|e| panic!("rule {name}: {e}"))
}

pub fn v(name: &str) -> Var {
    name.parse().unwrap_or_else(|e| panic!("bad pattern variable {name}: {e}"))
}

/// The operator an attribute leaf names.
pub fn attr(egraph: &TEGraph, id: Id) -> Option<Op> {
    let k = egraph[id].data.attr?;
    Some(egraph.analysis.attr(k).clone())
}

/// The value of a rank-0 constant class.
pub fn scalar(egraph: &TEGraph, id: Id) -> Option<f64> {
    egraph[id].data.scalar
}

pub fn ty(egraph: &TEGraph, id: Id) -> Option<Type> {
    egraph[id].data.ty.clone()
}

/// Adds `op` over `xs` only if the shared type rules accept it.
pub fn try_add(egraph: &mut TEGraph, op: Op, xs: &[Id]) -> Option<Id> {
    let tys: Vec<Type> = xs.iter().map(|x| egraph[*x].data.ty.clone()).collect::<Option<Vec<_>>>()?;
    let refs: Vec<&Type> = tys.iter().collect();
    infer_type(&op, &refs).ok()?;
    Some(add_op(egraph, op, xs))
}

/// A rank-0 constant of `dtype`.
pub fn scalar_const(egraph: &mut TEGraph, dtype: DType, value: f64) -> Id {
    add_op(egraph, Op::Constant(ConstValue::scalar(dtype, value)), &[])
}

/// The element type of a tensor class.
pub fn dtype(egraph: &TEGraph, id: Id) -> Option<DType> {
    egraph[id].data.ty.as_ref()?.as_tensor().map(|t| t.dtype)
}

/// Every rule of a phase, by phase name.
pub fn for_phase(phase: &str) -> Vec<Rule> {
    match phase {
        "canonicalize" => canonicalize::rules(),
        "fuse-attention" => {
            let mut r = canonicalize::rules();
            r.extend(attention::rules());
            r
        }
        _ => Vec::new(),
    }
}

/// The shape of a tensor class.
pub fn tensor_dims(egraph: &TEGraph, id: Id) -> Option<Vec<tdl_ir::Dim>> {
    Some(egraph[id].data.ty.as_ref()?.as_tensor()?.shape.clone())
}

/// If the class holds `repeat(x, times, axis)`, returns `(x, times, axis)`.
pub fn nodes_where_repeat(egraph: &TEGraph, id: Id) -> Option<(Id, i64, usize)> {
    egraph[id].nodes.iter().find_map(|n| match n {
        TL::Repeat([a, x]) => match attr(egraph, *a)? {
            Op::Repeat { times, axis } => Some((egraph.find(*x), times, axis)),
            _ => None,
        },
        _ => None,
    })
}
