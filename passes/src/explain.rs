//! `tdlc explain`: what the pipeline did to each graph, for people and for
//! scripts.
//!
//! The JSON shape is a contract (fields may be added, never renamed):
//!
//! ```text
//! {"graphs": [{"name": "...",
//!              "attentions": [{"mask": "<canonical mask text>" | null, "scale": 0.125,
//!                              "groups": 1, "passes": 1, "score": "<lambda>" | null,
//!                              "source": {"line": 7, "column": 12} | null,
//!                              "recomputes_scores": false}, ...],
//!              "unfused_softmax": [{"axis": 2, "passes": 3, "source": ...}, ...],
//!              "phases": [{"phase": "canonicalize", "stop_reason": "saturated",
//!                          "hit_node_limit": false, "iterations": 3, "egraph_nodes": 40,
//!                          "egraph_classes": 30, "rules_fired": {"rule": 1, ...},
//!                          "cost_before": 1.0, "cost_after": 1.0}, ...],
//!              "cost_before": 1.0, "cost_after": 1.0}]}
//! ```
//!
//! `passes` is FuseMax's count of passes over the scores a schedule needs:
//! a fused attention with an online softmax makes 1; a softmax left on its
//! own makes 3 (max, exp-sum, normalise).

use serde_json::{json, Value};
use tdl_ir::{Graph, Op, Span};

use crate::egraph::cost::graph_cost;
use crate::PassReport;

/// One fused attention node.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionInfo {
    pub mask: Option<String>,
    pub scale: Option<f64>,
    /// Query heads per key/value head (grouped-query attention), 1 if none.
    pub groups: i64,
    pub passes: u32,
    pub score: Option<String>,
    pub span: Option<Span>,
    /// The scores `q @ transpose(k)` are also computed for another use: the
    /// attention recomputes them (the cost model found that cheaper than
    /// leaving the softmax unfused).
    pub recomputes_scores: bool,
    /// The attention node in the graph after the pipeline.
    pub node: tdl_ir::NodeId,
}

/// What happened to one graph.
#[derive(Clone, Debug)]
pub struct GraphExplain {
    pub name: String,
    pub attentions: Vec<AttentionInfo>,
    /// Softmax nodes left unfused: `(axis, span)`.
    pub unfused_softmax: Vec<(usize, Option<Span>)>,
    pub reports: Vec<PassReport>,
    pub cost_before: f64,
    pub cost_after: f64,
}

/// Summarises the pipeline's effect on one graph.
pub fn explain_graph(before: &Graph, after: &Graph, reports: &[PassReport]) -> GraphExplain {
    let mut attentions = Vec::new();
    let mut unfused = Vec::new();
    for id in after.topo_order().unwrap_or_default() {
        let node = after.node(id);
        match &node.op {
            Op::Attention { scale, masked, score } => {
                let ins = after.inputs(id);
                let mask = if *masked {
                    match ins.get(3).map(|m| &after.node(*m).op) {
                        Some(Op::Mask(m)) => Some(tdl_ir::text::mask_text(m)),
                        _ => None,
                    }
                } else {
                    None
                };
                let heads = |i: usize| -> Option<i64> {
                    let t = ins.get(i).and_then(|x| after.node(*x).ty.as_tensor())?;
                    if t.rank() < 3 {
                        return None;
                    }
                    t.shape[t.rank() - 3].as_const()
                };
                let groups = match (heads(0), heads(1)) {
                    (Some(hq), Some(hk)) if hk > 0 && hq % hk == 0 => hq / hk,
                    _ => 1,
                };
                let (q, k) = (ins[0], ins[1]);
                let recomputes_scores = after.node_ids().into_iter().any(|m| {
                    after.node(m).op == Op::MatMul && {
                        let mi = after.inputs(m);
                        mi[0] == q && after.node(mi[1]).op == Op::Transpose && after.inputs(mi[1])[0] == k
                    }
                });
                attentions.push(AttentionInfo {
                    node: id,
                    recomputes_scores,
                    mask,
                    scale: *scale,
                    groups,
                    passes: 1,
                    score: score.as_ref().map(tdl_ir::text::scalar_text),
                    span: node.span,
                });
            }
            Op::Softmax { axis } => unfused.push((*axis, node.span)),
            _ => {}
        }
    }
    GraphExplain {
        name: after.name.clone(),
        attentions,
        unfused_softmax: unfused,
        reports: reports.to_vec(),
        cost_before: graph_cost(before),
        cost_after: graph_cost(after),
    }
}

fn source(span: Option<Span>, src: &str) -> Value {
    match span {
        Some(s) if s.start <= src.len() => {
            let before = &src[..src.floor_char_boundary_compat(s.start)];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            json!({"line": line, "column": col})
        }
        _ => Value::Null,
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// The JSON value of one graph's explanation (`src` maps spans to lines).
pub fn to_json(e: &GraphExplain, src: &str) -> Value {
    let attentions: Vec<Value> = e
        .attentions
        .iter()
        .map(|a| {
            json!({"mask": a.mask, "scale": a.scale, "groups": a.groups, "passes": a.passes,
                   "score": a.score, "source": source(a.span, src), "recomputes_scores": a.recomputes_scores})
        })
        .collect();
    let unfused: Vec<Value> = e
        .unfused_softmax
        .iter()
        .map(|(axis, span)| json!({"axis": axis, "passes": 3, "source": source(*span, src)}))
        .collect();
    let phases: Vec<Value> = e
        .reports
        .iter()
        .filter_map(|r| r.phase.as_ref())
        .map(|p| {
            json!({"phase": p.phase, "stop_reason": p.stop_reason, "hit_node_limit": p.hit_node_limit,
                   "iterations": p.iterations, "egraph_nodes": p.egraph_nodes, "egraph_classes": p.egraph_classes,
                   "rules_fired": p.rules_fired, "cost_before": p.cost_before, "cost_after": p.cost_after})
        })
        .collect();
    json!({"name": e.name, "attentions": attentions, "unfused_softmax": unfused, "phases": phases,
           "cost_before": e.cost_before, "cost_after": e.cost_after})
}

/// The human-readable explanation of one graph.
pub fn to_text(e: &GraphExplain, src: &str) -> String {
    let mut out = format!("graph {}\n", e.name);
    let loc = |s: Option<Span>| match source(s, src) {
        Value::Object(m) => format!(" at {}:{}", m["line"], m["column"]),
        _ => String::new(),
    };
    if e.attentions.is_empty() {
        out.push_str("  no attention fused\n");
    }
    for a in &e.attentions {
        out.push_str(&format!(
            "  attention{}: mask {}, scale {}, groups {}, {} pass over the scores{}\n",
            loc(a.span),
            a.mask.as_deref().unwrap_or("none"),
            a.scale.map_or("1/sqrt(D)".to_string(), |s| format!("{s}")),
            a.groups,
            a.passes,
            a.score.as_ref().map_or(String::new(), |s| format!(", score {s}")),
        ));
        if a.recomputes_scores {
            out.push_str("    the scores are also used elsewhere: the attention recomputes them, which the cost model found cheaper than leaving the softmax unfused\n");
        }
    }
    for (axis, span) in &e.unfused_softmax {
        out.push_str(&format!("  softmax over axis {axis}{} left unfused: 3 passes over its input\n", loc(*span)));
    }
    for r in &e.reports {
        if let Some(p) = &r.phase {
            out.push_str(&format!(
                "  phase {}: {} after {} iteration(s), {} e-nodes in {} classes; cost {:.3e} -> {:.3e}\n",
                p.phase, p.stop_reason, p.iterations, p.egraph_nodes, p.egraph_classes, p.cost_before, p.cost_after
            ));
            for (rule, n) in &p.rules_fired {
                out.push_str(&format!("    {rule}: {n}\n"));
            }
        }
    }
    out.push_str(&format!("  cost {:.3e} -> {:.3e}\n", e.cost_before, e.cost_after));
    out
}
