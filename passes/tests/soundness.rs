//! An unsound rule must trip the analysis, not pass silently: the e-graph
//! refuses to merge classes of different types, and the phase fails naming
//! the problem.

use egg::{Pattern, Rewrite};
use tdl_ir::{verify, DType, Dim, Graph, Op, TensorType, Type};
use tdl_passes::egraph::phase::{run_rules, PhaseLimits};
use tdl_passes::egraph::rules::for_phase;

fn transpose_graph() -> Graph {
    let x_ty = TensorType::new(DType::F32, vec![Dim::sym("T"), Dim::sym("S")]);
    let t_ty = TensorType::new(DType::F32, vec![Dim::sym("S"), Dim::sym("T")]);
    let mut g = Graph::new("g");
    let x = g.add_param("x", x_ty, None);
    let t = g.add_node(Op::Transpose, Type::Tensor(t_ty.clone()), &[x], None);
    g.set_results(vec![t], vec![t_ty]);
    verify(g).unwrap().into_inner()
}

#[test]
fn a_rule_that_changes_a_type_fails_the_phase() {
    // "transpose(x) = x" is false unless x is square: [S, T] is not [T, S].
    let lhs: Pattern<_> = "(transpose ?x)".parse().unwrap();
    let rhs: Pattern<_> = "?x".parse().unwrap();
    let bogus = Rewrite::new("bogus-transpose-is-identity", lhs, rhs).unwrap();
    let err = run_rules("test", &[bogus], &transpose_graph(), &PhaseLimits::default()).err().expect("must fail");
    assert!(err.contains("soundness") && err.contains("different types"), "{err}");
}

#[test]
fn the_real_rules_keep_the_same_graph_sound() {
    for phase in ["canonicalize", "fuse-attention"] {
        let out = run_rules(phase, &for_phase(phase), &transpose_graph(), &PhaseLimits::default()).unwrap();
        assert!(!out.report.hit_node_limit);
        verify(out.graph).unwrap();
    }
}
