//! Compile-time benchmark of the pass pipeline.
//!
//! Run with `cargo bench -p tdl-testsuite --bench pipeline` (criterion builds
//! with the `bench` profile, i.e. release). Two programs, three measurements
//! each, so the report shows where the time goes:
//!
//! - `block`: the contract's pre-norm transformer block,
//!   `examples/block.tdl`, read at compile time.
//! - `block12`: a 12-layer stack of it, generated from the same file: one
//!   graph `block12` whose body is 12 copies of the block's body, layer
//!   `i`'s output `x_{i+1}` feeding layer `i + 1`. Every layer has its own
//!   weights (`g1_0, wqkv_0, wo_0, g2_0, w1_0, w2_0`, …, `w2_11`: 72 weight
//!   parameters plus `x_0`), as in a real model.
//!
//! For each program:
//!
//! - `frontend`: `tdl::check_source` (lex, parse, lower, type-check,
//!   verify);
//! - `passes`: `run_pipeline` with `default_pipeline()` on the checked graph
//!   (the clone of the input graph is set-up, not measured);
//! - `total`: both, source text to fused graph, what `tdlc compile --emit
//!   fused` does minus reading the file and printing.
//!
//! The set-up asserts that each program checks and that the pipeline really
//! fuses: one `attention` node for `block`, exactly 12 for `block12`, and no
//! softmax left over. Targets (issue): `total` under 50 ms for one block,
//! under 200 ms for twelve. Criterion's `time:` line is a mean (slope)
//! estimate; the medians are in
//! `target/criterion/GROUP/BENCH/new/estimates.json` (`median`).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tdl::ir::{Op, VerifiedGraph};
use tdl::passes::{default_pipeline, run_pipeline};

/// The contract's transformer block.
const BLOCK: &str = include_str!("../../examples/block.tdl");

/// How many layers the stacked program has.
const LAYERS: usize = 12;

/// The names `examples/block.tdl` binds: its parameters and its `let`s.
/// Each copy of the body gets them suffixed with its layer number.
fn bound_names(params: &[(String, String)], body: &[&str]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = params.iter().map(|(n, _)| n.clone()).collect();
    for line in body {
        if let Some(rest) = line.trim_start().strip_prefix("let ") {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

/// Renames every identifier of `line` that is in `names` to `NAME_i`;
/// `x`, the layer input, is `x_i` and so is already right.
fn suffix_names(line: &str, names: &BTreeSet<String>, i: usize) -> String {
    let mut out = String::new();
    let mut chars = line.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_ascii_digit() {
            // A number, exponent included (`1e5` is not an identifier `e5`).
            out.push(c);
            while let Some(&(_, d)) = chars.peek() {
                if !(d.is_alphanumeric() || d == '.' || d == '_') {
                    break;
                }
                out.push(d);
                chars.next();
            }
        } else if c.is_alphabetic() || c == '_' {
            let mut end = start + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if !(d.is_alphanumeric() || d == '_') {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            let word = &line[start..end];
            // `f(name = value)` names an argument; `let name = value` binds.
            let rest = line[end..].trim_start();
            let binds = line[..start].split_whitespace().next_back() == Some("let");
            let named_argument = rest.starts_with('=') && !rest.starts_with("==") && !binds;
            if names.contains(word) && !named_argument {
                out.push_str(&format!("{word}_{i}"));
            } else {
                out.push_str(word);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits `a: t1, b: t2[X, Y]` at the commas outside brackets.
fn split_params(list: &str) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in list.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .iter()
        .map(|p| {
            let (n, t) = p.split_once(':').expect("a parameter is `name: type`");
            (n.trim().to_string(), t.trim().to_string())
        })
        .collect()
}

/// `layers` copies of `examples/block.tdl`'s body in one graph, each with
/// its own weights, layer `i` reading `x_i` and binding `x_{i+1}`.
fn stacked_blocks(layers: usize) -> String {
    let open = BLOCK.find("graph block(").expect("block.tdl defines graph `block`") + "graph block(".len();
    let close = open + BLOCK[open..].find(") ->").expect("a result type");
    let params = split_params(&BLOCK[open..close].split_whitespace().collect::<Vec<_>>().join(" "));
    let result_ty = BLOCK[close + ") ->".len()..].split('{').next().expect("a body").trim().to_string();
    let body_start = close + BLOCK[close..].find('{').expect("a body") + 1;
    let body_end = BLOCK.rfind('}').expect("a closing brace");
    let body: Vec<&str> = BLOCK[body_start..body_end].lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(params[0].0 == "x", "the block's first parameter is its input `x`");
    let names = bound_names(&params, &body);

    let mut sig = vec![format!("x_0: {}", params[0].1)];
    for i in 0..layers {
        sig.extend(params[1..].iter().map(|(n, t)| format!("{n}_{i}: {t}")));
    }
    let mut src = format!(
        "// {layers} copies of examples/block.tdl, each with its own weights\ngraph block{layers}({}) -> {result_ty} {{\n",
        sig.join(", ")
    );
    for i in 0..layers {
        for line in &body {
            let line = suffix_names(line, &names, i);
            match line.trim_start().strip_prefix("return ") {
                Some(expr) => src.push_str(&format!("    let x_{} = {expr}\n", i + 1)),
                None => src.push_str(&format!("{line}\n")),
            }
        }
    }
    src.push_str(&format!("    return x_{layers}\n}}\n"));
    src
}

fn count(g: &VerifiedGraph, f: impl Fn(&Op) -> bool) -> usize {
    g.node_ids().into_iter().filter(|id| f(&g.node(*id).op)).count()
}

/// Source text → fused graph: the work `total` measures.
fn compile(src: &str) -> VerifiedGraph {
    let checked = tdl::check_source(src).unwrap_or_else(|e| panic!("does not check: {e:?}"));
    let g = checked.graphs.into_iter().next().expect("one graph");
    run_pipeline(g, &default_pipeline()).expect("the pipeline runs").0
}

/// Checks `src` and that the pipeline leaves exactly `attentions` attention
/// nodes and no softmax; returns the checked (unfused) graph.
fn prepare(name: &str, src: &str, attentions: usize) -> VerifiedGraph {
    let checked = tdl::check_source(src).unwrap_or_else(|e| panic!("{name} does not check: {e:?}\n{src}"));
    assert_eq!(checked.graphs.len(), 1, "{name}: one graph");
    let g = checked.graphs[0].clone();
    let fused = compile(src);
    assert_eq!(count(&fused, |op| matches!(op, Op::Attention { .. })), attentions, "{name}: attention nodes");
    assert_eq!(count(&fused, |op| matches!(op, Op::Softmax { .. })), 0, "{name}: unfused softmax");
    g
}

/// Benchmarks `src`'s three measurements, `seconds` of measurement each.
fn bench_program(c: &mut Criterion, name: &str, src: &str, attentions: usize, seconds: u64) {
    let graph = prepare(name, src, attentions);
    let passes = default_pipeline();
    let mut group = c.benchmark_group(name);
    group.sample_size(20).measurement_time(Duration::from_secs(seconds)).warm_up_time(Duration::from_secs(1));
    group.bench_function("frontend", |b| b.iter(|| tdl::check_source(black_box(src)).expect("checks")));
    group.bench_function("passes", |b| {
        b.iter_batched(
            || graph.clone(),
            |g| run_pipeline(g, &passes).expect("the pipeline runs"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("total", |b| b.iter(|| compile(black_box(src))));
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    bench_program(c, "block", BLOCK, 1, 5);
    let stacked = stacked_blocks(LAYERS);
    // 20 samples of ~35 ms each need more than 5 s.
    bench_program(c, "block12", &stacked, LAYERS, 10);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
