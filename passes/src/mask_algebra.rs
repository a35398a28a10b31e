//! `mask-algebra`: simplifies every mask expression and puts it in the
//! canonical form tile classification reads.
//!
//! [`simplify`] is a pure function on [`MaskExpr`]; the [`MaskAlgebra`] pass
//! applies it to every `Op::Mask` node. Every rewrite is exact for every
//! `T`, `S` and `h` (including `T != S`): the reference interpreter's
//! `tdl_reference::mask::MaskEval` is the oracle, and `passes/tests/mask_algebra.rs` checks it on random masks.
//!
//! # Errors are part of the meaning
//!
//! A mask can fail where it is used: a lambda can index an array out of range
//! or read an unbound symbol (*evaluation* errors), and `neighborhood`,
//! `blocks` and `document` check their sizes before evaluating anything
//! (*compile* errors). `a & b` and `a | b` short-circuit, so `causal &
//! (mask(q, k) => c[q - k] > 0)` never indexes with a negative `q - k`:
//! the order of the operands matters. Hence:
//!
//! * An operand is **eval-safe** when it can never fail once compiled:
//!   built-ins, `neighborhood`, `blocks`, `document`, and lambdas that read
//!   neither arrays nor symbols nor `s` and are well-typed booleans (checked
//!   by a small type analysis). The others are **barriers**.
//! * A flattened `&`/`|` list is cut at barriers into *runs* of eval-safe
//!   operands. Only inside a run are operands reordered, merged or dropped;
//!   barriers keep their place and their relative order with the runs.
//! * Anything dropped whose compile-checked leaves (`neighborhood`, `blocks`,
//!   `document`) appear nowhere else in the list is kept after all, so no
//!   compile error disappears. (A barrier after an absorbing constant can
//!   still go, with the node operand it read: the pass then keeps the
//!   original mask, since the verifier wants every operand read.)
//!
//! # Rules
//!
//! "run" = the operands of one flattened `&` (or `|`) between barriers.
//! `true`/`false` are `mask(q, k) => true`/`false` (`Lambda(Bool(..))`).
//! `sat(x)` is saturating subtraction, as `MaskEval` computes `window`.
//!
//! | rule | where | why it is sound |
//! |---|---|---|
//! | `!!a → a` | anywhere | `!` is an involution; `a` is evaluated at the same points |
//! | `!true → false`, `!false → true` | anywhere | constant |
//! | `(a & b) & c → a & b & c` (same for `\|`), rebuilt left-leaning | anywhere | associativity; short-circuit evaluation is left to right either way |
//! | `… a … & … a … → … a …` (later copies dropped; same for `\|`) | whole list | the later copy is evaluated only where the first held (`&`) / failed (`\|`) without error; evaluation is deterministic |
//! | sort operands by (kind, parameters, printed text) | inside a run | eval-safe operands cannot fail, and `&`/`\|` are commutative on values |
//! | `a & true → a`, `a \| false → a` | inside a run | identity |
//! | `a & false → false`, `a \| true → true`; later operands are dropped | run; everything after it | the run is constant; what follows it is never evaluated |
//! | `a & !a → false`, `a \| !a → true` | inside a run | `a` is eval-safe, so both are total booleans |
//! | `a & (a \| b) → a`; `a \| (a & b) → a` | `a` earlier or in the same run; the disjuncts (conjuncts) before `a` eval-safe | where the `\|` is evaluated `a` holds, so it holds (and what it evaluates before `a` cannot fail) |
//! | `local(l, r) → false` if `l + r < 0` | leaf | `q - l <= k <= q + r` is empty |
//! | `window(w) → false` if `w <= 0` | leaf | `q - sat(w - 1) <= k <= q` is empty |
//! | `sink(n) → false` if `n <= 0` | leaf | `k >= 0` |
//! | `strided(1, o) → true` | leaf | `x % 1 == 0` |
//! | `strided(s, o) → strided(s, o mod s)` for `s >= 2` | leaf | `(k + o) % s` depends on `o mod s` only |
//! | `window(a) & window(b) → window(min)` | run | both are `causal & q - (w-1) <= k <= q`: nested intervals with the same right end |
//! | `causal & window(w) → window(w)`, `causal & dilated(w, d) → dilated(w, d)` | run | both contain `causal` literally |
//! | `dilated(a, d) & dilated(b, d) → dilated(min, d)` for `d >= 1` | run | `q - k < a·d & q - k < b·d` is `q - k < min·d` |
//! | `sink(a) & sink(b) → sink(min)` | run | `k < a & k < b` |
//! | `local(l1, r1) & local(l2, r2) → local(min l, min r)`; `false` if then `l + r < 0` | run | lower and upper bounds intersect separately, even when empty |
//! | `window(w) & local(l, r) → window(min(w, l + 1))` for `l, r >= 0` | run | `k <= q` implies `k <= q + r`; the lower bounds are both `q - x`; `local` and `window` both use absolute indices |
//! | `causal & local(l, 0) → window(l + 1)` for `0 <= l < i64::MAX` | run | `window(w)` *is* `causal & local(w - 1, 0)` (only `right = 0` exactly: `causal` is bottom-right aligned, `local` is not) |
//! | `strided(s, a) & strided(s, b)`: `false` if `a != b` (after `mod s`) | run | `k ≡ -a` and `k ≡ -b (mod s)` |
//! | `window(a) \| window(b) → window(max)`; `dilated(a, d) \| dilated(b, d) → dilated(max, d)` (`d >= 1`) | run | nested sets, as above |
//! | `sink(a) \| sink(b) → sink(max)` | run | `k < max` |
//! | `causal \| window(w) → causal`, `causal \| dilated(w, d) → causal` | run | both are contained in `causal` |
//! | `local(l1, r1) \| local(l2, r2) → local(l2, r2)` when `l1 <= l2`, `r1 <= r2` | run | the first interval is inside the second |
//! | `window(w) \| local(l, r) → local(l, r)` when `l >= w - 1`, `r >= 0` | run | the window's interval is inside the local one |
//!
//! Not done, on purpose: De Morgan (a `!` stays where the user wrote it),
//! merging lambdas, `causal & local(l, r)` with `r != 0`, `dilated(w, 1)` to
//! a window (with `T < S`, `dilated` allows `k > q`; `window` does not).

use std::collections::BTreeMap;

use tdl_ir::mask::check_expr_limits;
use tdl_ir::{Graph, LambdaVar, MaskExpr, Op, ScalarBinary, ScalarExpr, ScalarUnary};

use crate::{Pass, PassReport};

/// Rewrites every `Op::Mask` node with [`simplify`]. A simplification is
/// applied only when the node's operands are all still read (the verifier
/// requires it) and the result stays within the expression limits.
pub struct MaskAlgebra;

impl Pass for MaskAlgebra {
    fn name(&self) -> &'static str {
        "mask-algebra"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, String> {
        let mut changed = false;
        for id in g.node_ids() {
            let Op::Mask(m) = &g.node(id).op else { continue };
            if let Some(s) = rewrite(m) {
                g.node_mut(id).op = Op::Mask(s);
                changed = true;
            }
        }
        Ok(PassReport::simple(self.name(), changed))
    }
}

/// The simplified mask, when it differs from `m` and may replace it in a node.
fn rewrite(m: &MaskExpr) -> Option<MaskExpr> {
    let s = simplify(m);
    if same(&s, m) {
        return None;
    }
    let set = |x: &MaskExpr| {
        let mut v = x.operands();
        v.sort_unstable();
        v.dedup();
        v
    };
    if set(&s) != set(m) || check_expr_limits(s.measure()).is_err() {
        return None;
    }
    Some(s)
}

/// Equal, or equal up to float payloads (`NaN` literals compare unequal).
fn same(a: &MaskExpr, b: &MaskExpr) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// Simplifies `m` to its canonical form: same predicate (and same errors)
/// for every `T`, `S`, `h`. Idempotent; the rules are in the module docs.
/// Recurses as deep as the expression (verified graphs hold at most
/// [`tdl_ir::mask::MAX_EXPR_DEPTH`] levels); `&`/`|` chains and `!` chains
/// are walked without recursion.
pub fn simplify(m: &MaskExpr) -> MaskExpr {
    let mut cur = step(m);
    // One bottom-up step reaches the fixpoint in practice; iterate anyway so
    // the result is idempotent by construction.
    for _ in 0..16 {
        let next = step(&cur);
        if same(&next, &cur) {
            break;
        }
        cur = next;
    }
    cur
}

fn constant(b: bool) -> MaskExpr {
    MaskExpr::Lambda(ScalarExpr::Bool(b))
}

fn const_of(m: &MaskExpr) -> Option<bool> {
    match m {
        MaskExpr::Lambda(ScalarExpr::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// One bottom-up simplification step.
fn step(m: &MaskExpr) -> MaskExpr {
    match m {
        MaskExpr::And(..) => combine(m, true),
        MaskExpr::Or(..) => combine(m, false),
        MaskExpr::Not(a) => {
            let mut negate = true;
            let mut inner: &MaskExpr = a;
            while let MaskExpr::Not(b) = inner {
                negate = !negate;
                inner = b;
            }
            let s = step(inner);
            if !negate {
                return s;
            }
            match s {
                MaskExpr::Not(x) => *x,
                other => match const_of(&other) {
                    Some(b) => constant(!b),
                    None => MaskExpr::Not(Box::new(other)),
                },
            }
        }
        leaf => leaf_rule(leaf),
    }
}

fn leaf_rule(m: &MaskExpr) -> MaskExpr {
    match *m {
        MaskExpr::Local { left, right } if (left as i128) + (right as i128) < 0 => constant(false),
        MaskExpr::Window { w } if w <= 0 => constant(false),
        MaskExpr::Sink { n } if n <= 0 => constant(false),
        MaskExpr::Strided { stride: 1, .. } => constant(true),
        MaskExpr::Strided { stride, offset } if stride >= 2 => {
            MaskExpr::Strided { stride, offset: offset.rem_euclid(stride) }
        }
        _ => m.clone(),
    }
}

/// The operands of a chain of `&` (`is_and`) or `|`, left to right, without
/// recursion.
fn flatten(m: &MaskExpr, is_and: bool) -> Vec<&MaskExpr> {
    let mut out = Vec::new();
    let mut stack = vec![m];
    while let Some(x) = stack.pop() {
        match (x, is_and) {
            (MaskExpr::And(a, b), true) | (MaskExpr::Or(a, b), false) => {
                stack.push(b);
                stack.push(a);
            }
            _ => out.push(x),
        }
    }
    out
}

fn is_comb(m: &MaskExpr, is_and: bool) -> bool {
    matches!((m, is_and), (MaskExpr::And(..), true) | (MaskExpr::Or(..), false))
}

fn build(items: Vec<MaskExpr>, is_and: bool) -> MaskExpr {
    let mut it = items.into_iter();
    let Some(mut acc) = it.next() else {
        return constant(is_and);
    };
    for x in it {
        acc = if is_and { MaskExpr::And(Box::new(acc), Box::new(x)) } else { MaskExpr::Or(Box::new(acc), Box::new(x)) };
    }
    acc
}

/// Simplifies a `&` (`is_and`) or `|` chain.
fn combine(m: &MaskExpr, is_and: bool) -> MaskExpr {
    let mut items = Vec::new();
    for x in flatten(m, is_and) {
        let s = step(x);
        if is_comb(&s, is_and) {
            items.extend(flatten(&s, is_and).into_iter().cloned());
        } else {
            items.push(s);
        }
    }
    build(simplify_list(items, is_and), is_and)
}

struct Entry {
    e: MaskExpr,
    keep: bool,
    /// The run (or barrier) the operand belongs to.
    seg: usize,
}

fn simplify_list(items: Vec<MaskExpr>, is_and: bool) -> Vec<MaskExpr> {
    // Later copies go (sound anywhere: see the module docs).
    let mut uniq: Vec<MaskExpr> = Vec::with_capacity(items.len());
    for x in items {
        if !uniq.contains(&x) {
            uniq.push(x);
        }
    }

    // Runs and barriers. After a run that became the absorbing constant,
    // nothing is evaluated: the rest is dropped (unless kept for coverage).
    let mut entries: Vec<Entry> = Vec::with_capacity(uniq.len());
    let mut collapsed = false;
    let mut seg = 0;
    let mut i = 0;
    while i < uniq.len() {
        if collapsed {
            entries.push(Entry { e: uniq[i].clone(), keep: false, seg });
            i += 1;
            continue;
        }
        if !eval_safe(&uniq[i]) {
            entries.push(Entry { e: uniq[i].clone(), keep: true, seg });
            seg += 1;
            i += 1;
            continue;
        }
        let start = i;
        while i < uniq.len() && eval_safe(&uniq[i]) {
            i += 1;
        }
        let run = normalize_run(&uniq[start..i], is_and);
        collapsed = run.collapsed;
        entries.extend(run.kept.into_iter().map(|e| Entry { e, keep: true, seg }));
        entries.extend(run.dropped.into_iter().map(|e| Entry { e, keep: false, seg }));
        seg += 1;
    }

    absorb(&mut entries, is_and);

    // Coverage: a dropped operand whose compile-checked leaves appear in no
    // kept operand stays, so no size-check error vanishes. Re-keeping never
    // changes the value: see the docs.
    let leaves: Vec<Vec<&MaskExpr>> = entries
        .iter()
        .map(|x| {
            let mut l = Vec::new();
            checked_leaves(&x.e, &mut l);
            l
        })
        .collect();
    let mut keep: Vec<bool> = entries.iter().map(|x| x.keep).collect();
    for j in 0..entries.len() {
        if keep[j] || leaves[j].is_empty() {
            continue;
        }
        let covered =
            leaves[j].iter().all(|leaf| (0..entries.len()).any(|p| p != j && keep[p] && leaves[p].contains(leaf)));
        if !covered {
            keep[j] = true;
        }
    }
    entries.into_iter().zip(keep).filter(|(_, k)| *k).map(|(x, _)| x.e).collect()
}

/// `a & (a | b) → a` and `a | (a & b) → a`, where `a` is earlier in the list
/// or in the same run, and the operands of the inner chain before `a` are
/// eval-safe.
fn absorb(entries: &mut [Entry], is_and: bool) {
    for j in 0..entries.len() {
        if !entries[j].keep || !is_comb(&entries[j].e, !is_and) {
            continue;
        }
        let parts = flatten(&entries[j].e, !is_and);
        let mut absorbed = false;
        for d in parts {
            let found =
                entries.iter().enumerate().any(|(p, x)| p != j && (p < j || x.seg == entries[j].seg) && x.e == *d);
            if found {
                absorbed = true;
                break;
            }
            if !eval_safe(d) {
                break;
            }
        }
        if absorbed {
            entries[j].keep = false;
        }
    }
}

struct Run {
    kept: Vec<MaskExpr>,
    dropped: Vec<MaskExpr>,
    collapsed: bool,
}

fn collapse(run: &[MaskExpr], absorbing: bool) -> Run {
    let mut dropped: Vec<MaskExpr> = run.iter().filter(|x| const_of(x).is_none()).cloned().collect();
    sort_canonical(&mut dropped);
    Run { kept: vec![constant(absorbing)], dropped, collapsed: true }
}

/// Merges, constants and canonical order inside one run of eval-safe,
/// distinct operands.
fn normalize_run(run: &[MaskExpr], is_and: bool) -> Run {
    let absorbing = !is_and;
    if run.iter().any(|x| const_of(x) == Some(absorbing)) {
        return collapse(run, absorbing);
    }
    if run.iter().any(|x| matches!(x, MaskExpr::Not(a) if run.contains(&**a))) {
        return collapse(run, absorbing);
    }
    // `a & (a | b) → a` inside the run, before merging can rename `a`
    // (every operand of the run is eval-safe, so order does not matter).
    let absorbed: Vec<bool> = run
        .iter()
        .map(|x| is_comb(x, !is_and) && flatten(x, !is_and).into_iter().any(|d| run.iter().any(|y| y == d)))
        .collect();
    let mut dropped: Vec<MaskExpr> = run.iter().zip(&absorbed).filter(|(_, a)| **a).map(|(x, _)| x.clone()).collect();
    sort_canonical(&mut dropped);
    let mut others = Vec::new();
    let mut b = Builtins::default();
    for (x, _) in run.iter().zip(&absorbed).filter(|(_, a)| !**a) {
        if const_of(x).is_some() {
            continue; // the identity: `a & true`, `a | false`
        }
        if !b.add(x) {
            others.push(x.clone());
        }
    }
    let Some(mut kept) = (if is_and { b.finish_and() } else { b.finish_or() }) else {
        return collapse(run, absorbing);
    };
    kept.extend(others);
    sort_canonical(&mut kept);
    Run { kept, dropped, collapsed: false }
}

/// The built-ins of one run that the interval rules combine.
#[derive(Default)]
struct Builtins {
    causal: bool,
    windows: Vec<i64>,
    /// `d >= 1` → the `w`s with that `d`.
    dilated: BTreeMap<i64, Vec<i64>>,
    /// `dilated` with `d < 1`: only deduplicated.
    dilated_other: Vec<(i64, i64)>,
    locals: Vec<(i64, i64)>,
    sinks: Vec<i64>,
    /// `stride >= 2` → the offsets (already reduced modulo the stride).
    strided: BTreeMap<i64, Vec<i64>>,
}

impl Builtins {
    /// Takes `x` if it is a built-in these rules handle.
    fn add(&mut self, x: &MaskExpr) -> bool {
        match *x {
            MaskExpr::Causal => self.causal = true,
            MaskExpr::Window { w } if w >= 1 => self.windows.push(w),
            MaskExpr::Dilated { w, d } if d >= 1 => self.dilated.entry(d).or_default().push(w),
            MaskExpr::Dilated { w, d } => self.dilated_other.push((w, d)),
            MaskExpr::Local { left, right } => self.locals.push((left, right)),
            MaskExpr::Sink { n } if n >= 1 => self.sinks.push(n),
            MaskExpr::Strided { stride, offset } if stride >= 2 => {
                self.strided.entry(stride).or_default().push(offset.rem_euclid(stride))
            }
            _ => return false,
        }
        true
    }

    fn any_dilated(&self) -> bool {
        !self.dilated.is_empty() || !self.dilated_other.is_empty()
    }

    /// The intersection; `None` when it is empty.
    fn finish_and(self) -> Option<Vec<MaskExpr>> {
        let mut window = self.windows.iter().copied().min();
        let mut local = self.locals.iter().copied().reduce(|(l1, r1), (l2, r2)| (l1.min(l2), r1.min(r2)));
        if let Some((l, r)) = local {
            if (l as i128) + (r as i128) < 0 {
                return None;
            }
        }
        if let (Some(w), Some((l, r))) = (window, local) {
            if l >= 0 && r >= 0 {
                // w >= 1, so w - 1 does not overflow; l < w - 1 bounds l + 1.
                window = Some(if l >= w - 1 { w } else { l + 1 });
                local = None;
            }
        }
        if let (true, None, Some((l, 0))) = (self.causal, window, local) {
            if (0..i64::MAX).contains(&l) {
                window = Some(l + 1);
                local = None;
            }
        }
        let causal = self.causal && window.is_none() && !self.any_dilated();
        let mut out = Vec::new();
        if causal {
            out.push(MaskExpr::Causal);
        }
        if let Some(w) = window {
            out.push(MaskExpr::Window { w });
        }
        for (d, ws) in &self.dilated {
            out.push(MaskExpr::Dilated { w: *ws.iter().min().expect("non-empty"), d: *d });
        }
        push_distinct(&mut out, self.dilated_other.iter().map(|&(w, d)| MaskExpr::Dilated { w, d }));
        if let Some((left, right)) = local {
            out.push(MaskExpr::Local { left, right });
        }
        if let Some(n) = self.sinks.iter().copied().min() {
            out.push(MaskExpr::Sink { n });
        }
        for (stride, offsets) in &self.strided {
            if offsets.iter().any(|o| *o != offsets[0]) {
                return None;
            }
            out.push(MaskExpr::Strided { stride: *stride, offset: offsets[0] });
        }
        Some(out)
    }

    /// The union (never empty: the operands are not constants).
    fn finish_or(self) -> Option<Vec<MaskExpr>> {
        let mut out = Vec::new();
        if self.causal {
            out.push(MaskExpr::Causal);
        }
        let window = if self.causal { None } else { self.windows.iter().copied().max() };
        if let Some(w) = window {
            out.push(MaskExpr::Window { w });
        }
        if !self.causal {
            for (d, ws) in &self.dilated {
                out.push(MaskExpr::Dilated { w: *ws.iter().max().expect("non-empty"), d: *d });
            }
            push_distinct(&mut out, self.dilated_other.iter().map(|&(w, d)| MaskExpr::Dilated { w, d }));
        }
        // A local inside another (or holding the window) makes it redundant.
        let mut locals: Vec<(i64, i64)> = Vec::new();
        for (i, &(l1, r1)) in self.locals.iter().enumerate() {
            let inside = self
                .locals
                .iter()
                .enumerate()
                .any(|(j, &(l2, r2))| j != i && l1 <= l2 && r1 <= r2 && ((l1, r1) != (l2, r2) || j < i));
            if !inside && !locals.contains(&(l1, r1)) {
                locals.push((l1, r1));
            }
        }
        if let Some(w) = window {
            if locals.iter().any(|&(l, r)| l >= w - 1 && r >= 0) {
                out.retain(|x| !matches!(x, MaskExpr::Window { .. }));
            }
        }
        out.extend(locals.into_iter().map(|(left, right)| MaskExpr::Local { left, right }));
        if let Some(n) = self.sinks.iter().copied().max() {
            out.push(MaskExpr::Sink { n });
        }
        for (stride, offsets) in &self.strided {
            let mut seen = Vec::new();
            for &offset in offsets {
                if !seen.contains(&offset) {
                    seen.push(offset);
                    out.push(MaskExpr::Strided { stride: *stride, offset });
                }
            }
        }
        Some(out)
    }
}

fn push_distinct(out: &mut Vec<MaskExpr>, xs: impl Iterator<Item = MaskExpr>) {
    for x in xs {
        if !out.contains(&x) {
            out.push(x);
        }
    }
}

// ---------------------------------------------------------------------------
// Canonical order

fn rank(m: &MaskExpr) -> u8 {
    match m {
        MaskExpr::Lambda(ScalarExpr::Bool(_)) => 0,
        MaskExpr::Causal => 1,
        MaskExpr::Window { .. } => 2,
        MaskExpr::Dilated { .. } => 3,
        MaskExpr::Local { .. } => 4,
        MaskExpr::Sink { .. } => 5,
        MaskExpr::Strided { .. } => 6,
        MaskExpr::Neighborhood { .. } => 7,
        MaskExpr::Blocks { .. } => 8,
        MaskExpr::Document { .. } => 9,
        MaskExpr::Lambda(_) => 10,
        MaskExpr::Not(_) => 11,
        MaskExpr::And(..) => 12,
        MaskExpr::Or(..) => 13,
    }
}

fn params(m: &MaskExpr) -> Vec<i64> {
    match *m {
        MaskExpr::Lambda(ScalarExpr::Bool(b)) => vec![b as i64],
        MaskExpr::Window { w } => vec![w],
        MaskExpr::Dilated { w, d } => vec![w, d],
        MaskExpr::Local { left, right } => vec![left, right],
        MaskExpr::Sink { n } => vec![n],
        MaskExpr::Strided { stride, offset } => vec![stride, offset],
        MaskExpr::Document { ids } => vec![ids as i64],
        _ => Vec::new(),
    }
}

/// Sorts by a total order on masks: kind, then parameters, then printed
/// text (then the `Debug` text, which tells apart what prints alike).
fn sort_canonical(v: &mut [MaskExpr]) {
    v.sort_by_cached_key(|m| {
        let r = rank(m);
        if r < 7 {
            // Kind and parameters say everything about these.
            (r, params(m), String::new(), String::new())
        } else {
            (r, params(m), tdl_ir::text::mask_text(m), format!("{m:?}"))
        }
    });
}

// ---------------------------------------------------------------------------
// Safety analyses

/// The compile-checked leaves (`neighborhood`, `blocks`, `document`) of `m`.
fn checked_leaves<'a>(m: &'a MaskExpr, out: &mut Vec<&'a MaskExpr>) {
    let mut stack = vec![m];
    while let Some(x) = stack.pop() {
        match x {
            MaskExpr::Neighborhood { .. } | MaskExpr::Blocks { .. } | MaskExpr::Document { .. } => out.push(x),
            MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            MaskExpr::Not(a) => stack.push(a),
            _ => {}
        }
    }
}

/// Whether evaluating `m` at any `(q, k, h)` can never fail once the mask
/// has been checked against its sizes.
fn eval_safe(m: &MaskExpr) -> bool {
    let mut stack = vec![m];
    while let Some(x) = stack.pop() {
        match x {
            MaskExpr::Lambda(e) if kind(e) != Some(Kind::Bool) => return false,
            MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            MaskExpr::Not(a) => stack.push(a),
            _ => {}
        }
    }
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    /// An integer or a float (a `where` with one of each).
    Num,
    Bool,
}

fn numeric(k: Kind) -> bool {
    k != Kind::Bool
}

/// The kind of value `e` always evaluates to without error, or `None` when
/// it may fail (arrays, symbols, `s`, or a kind mismatch).
fn kind(e: &ScalarExpr) -> Option<Kind> {
    use ScalarBinary as B;
    Some(match e {
        ScalarExpr::Var(LambdaVar::S) | ScalarExpr::Sym(_) | ScalarExpr::Index { .. } => return None,
        ScalarExpr::Var(_) | ScalarExpr::Int(_) => Kind::Int,
        ScalarExpr::Float(_) => Kind::Float,
        ScalarExpr::Bool(_) => Kind::Bool,
        ScalarExpr::Unary(op, a) => {
            let a = kind(a)?;
            match op {
                ScalarUnary::Not if a == Kind::Bool => Kind::Bool,
                ScalarUnary::Neg | ScalarUnary::Abs if numeric(a) => a,
                ScalarUnary::Exp | ScalarUnary::Log | ScalarUnary::Sqrt | ScalarUnary::Tanh | ScalarUnary::Sigmoid
                    if numeric(a) =>
                {
                    Kind::Float
                }
                _ => return None,
            }
        }
        ScalarExpr::Binary(op, a, b) => {
            let (a, b) = (kind(a)?, kind(b)?);
            match op {
                B::And | B::Or if a == Kind::Bool && b == Kind::Bool => Kind::Bool,
                B::Eq | B::Ne if (a == Kind::Bool) == (b == Kind::Bool) => Kind::Bool,
                B::Lt | B::Le | B::Gt | B::Ge if numeric(a) && numeric(b) => Kind::Bool,
                B::Add | B::Sub | B::Mul | B::Div | B::Mod | B::Min | B::Max if numeric(a) && numeric(b) => {
                    match (a, b) {
                        (Kind::Int, Kind::Int) => Kind::Int,
                        (Kind::Float, _) | (_, Kind::Float) => Kind::Float,
                        _ => Kind::Num,
                    }
                }
                _ => return None,
            }
        }
        ScalarExpr::Select(c, a, b) => {
            if kind(c)? != Kind::Bool {
                return None;
            }
            let (a, b) = (kind(a)?, kind(b)?);
            match (a, b) {
                _ if a == b => a,
                _ if numeric(a) && numeric(b) => Kind::Num,
                _ => return None,
            }
        }
    })
}
