//! Running one e-graph phase: graph → e-graph → equality saturation with
//! explicit limits → extraction by the cost model → graph, with a report of
//! why it stopped, how often each rule fired, and the cost before and after.

use std::collections::BTreeMap;
use std::time::Duration;

use egg::{Runner, StopReason};
use tdl_ir::Graph;

use super::cost::{dag_cost, extract, graph_cost};
use super::rules::{for_phase, Rule};
use super::{egraph_text, from_graph, to_graph};

/// The budget of a phase. Tests use node and iteration limits only, so
/// their results never depend on the machine's speed.
#[derive(Clone, Debug)]
pub struct PhaseLimits {
    pub nodes: usize,
    pub iterations: usize,
    pub time: Option<Duration>,
}

impl Default for PhaseLimits {
    fn default() -> PhaseLimits {
        // The time limit only guards interactive use: the node and
        // iteration limits are what stop a phase on any real program, so
        // results do not depend on the machine's speed.
        PhaseLimits { nodes: 50_000, iterations: 40, time: Some(Duration::from_secs(10)) }
    }
}

/// What a phase did.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseReport {
    pub phase: String,
    /// `saturated`, `iteration limit N`, `node limit N`, `time limit S`.
    pub stop_reason: String,
    pub hit_node_limit: bool,
    pub iterations: usize,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    /// Rule name → how many times it added something new.
    pub rules_fired: BTreeMap<String, usize>,
    pub cost_before: f64,
    pub cost_after: f64,
}

/// The result of a phase: the new graph, the report, and the saturated
/// e-graph as text (for `--emit egraph`).
pub struct PhaseOutcome {
    pub graph: Graph,
    pub report: PhaseReport,
    pub egraph_text: String,
}

/// Runs the named phase's rules on `g`.
pub fn run_phase(phase: &str, g: &Graph, limits: &PhaseLimits) -> Result<PhaseOutcome, String> {
    run_rules(phase, &for_phase(phase), g, limits)
}

/// Runs `rules` on `g` as a phase named `phase` (tests use it to run single
/// rules, sound or deliberately not).
pub fn run_rules(phase: &str, rules: &[Rule], g: &Graph, limits: &PhaseLimits) -> Result<PhaseOutcome, String> {
    let conv = from_graph(g);
    let mut runner: Runner<super::TL, super::TensorAnalysis> = Runner::default()
        .with_egraph(conv.egraph)
        .with_node_limit(limits.nodes)
        .with_iter_limit(limits.iterations)
        .with_time_limit(limits.time.unwrap_or(Duration::from_secs(3600)));
    runner.roots = conv.roots.clone();
    let runner = runner.run(rules);
    if !runner.egraph.analysis.violations.is_empty() {
        return Err(format!(
            "phase `{phase}` broke the e-graph's soundness: {}",
            runner.egraph.analysis.violations.join("; ")
        ));
    }
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *fired.entry(name.to_string()).or_insert(0) += n;
        }
    }
    let (stop_reason, hit_node_limit) = match &runner.stop_reason {
        Some(StopReason::Saturated) => ("saturated".to_string(), false),
        Some(StopReason::IterationLimit(n)) => (format!("iteration limit {n}"), false),
        Some(StopReason::NodeLimit(n)) => (format!("node limit {n}"), true),
        Some(StopReason::TimeLimit(s)) => (format!("time limit {s} s"), false),
        Some(StopReason::Other(s)) => (s.clone(), false),
        None => ("not run".to_string(), false),
    };
    let egraph = &runner.egraph;
    let roots: Vec<egg::Id> = conv.roots.iter().map(|r| egraph.find(*r)).collect();
    let origins = super::canonical_origins(egraph, &conv.origins);
    let choice = extract(egraph);
    let cost_after = dag_cost(egraph, &roots, &choice);
    let mut graph = to_graph(g, egraph, &roots, &choice, &origins)?;
    graph.remove_dead_nodes();
    let report = PhaseReport {
        phase: phase.to_string(),
        stop_reason,
        hit_node_limit,
        iterations: runner.iterations.len(),
        egraph_nodes: egraph.total_number_of_nodes(),
        egraph_classes: egraph.number_of_classes(),
        rules_fired: fired,
        cost_before: graph_cost(g),
        cost_after,
    };
    Ok(PhaseOutcome { graph, report, egraph_text: egraph_text(egraph, &roots) })
}
