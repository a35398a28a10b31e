//! The built-in functions: argument binding (positional and named), the
//! tensor operators, the built-in masks and `attention`.

use super::*;

/// How many arguments a built-in takes, and their names in order.
struct Sig {
    params: &'static [&'static str],
    required: usize,
}

fn sig(name: &str) -> Option<Sig> {
    let s = |params, required| Some(Sig { params, required });
    match name {
        n if UNARY_FNS.contains(&n) => s(&["x"], 1),
        "sum" | "max" | "mean" => s(&["x", "axis", "keepdims"], 1),
        "softmax" => s(&["x", "axis"], 1),
        "transpose" => s(&["x"], 1),
        "permute" => s(&["x", "perm"], 2),
        "reshape" => s(&["x", "shape"], 2),
        "concat" => s(&["xs", "axis"], 1),
        "slice" => s(&["x", "axis", "start", "end"], 2),
        "repeat" => s(&["x", "n", "axis"], 2),
        "where" => s(&["cond", "a", "b"], 3),
        "layernorm" => s(&["x", "g", "b", "eps"], 3),
        "rmsnorm" => s(&["x", "g", "eps"], 2),
        "rope" => s(&["x", "base"], 1),
        "attention" => s(&["q", "k", "v", "mask", "scale", "score"], 3),
        "causal" => s(&[], 0),
        "local" => s(&["left", "right"], 0),
        "window" => s(&["w"], 1),
        "dilated" => s(&["w", "d"], 2),
        "sink" => s(&["n"], 1),
        "strided" => s(&["stride", "offset"], 1),
        "neighborhood" => s(&["kernel", "grid", "dilation", "causal"], 2),
        "blocks" => s(&["layout", "block"], 2),
        "document" => s(&["ids"], 1),
        _ => None,
    }
}

type Bound<'e> = Vec<Option<CallArg<'e>>>;

impl<'a> Lowerer<'a> {
    pub(super) fn call(&mut self, func: &Ident, args: Vec<CallArg>, span: Span) -> Val {
        let name = func.name.as_str();
        let Some(sig) = sig(name) else {
            if name == "mask" {
                return self.err(
                    Diagnostic::error("`mask` starts a mask lambda: `mask(q, k, h) => predicate`")
                        .at(span, "expected `=>` and a predicate after the parameters"),
                );
            }
            let mut d =
                Diagnostic::error(format!("unknown function `{name}`")).at(func.span, "not a built-in function");
            if let Some(c) = closest(name, BUILTINS.iter().copied().chain(["causal", "document"])) {
                d = d.hint(format!("did you mean `{c}`?"));
            }
            if self.locals.contains_key(name) {
                d = d.note(format!("`{name}` is a value here, not a function"));
            }
            return self.err(d);
        };
        let Some(b) = self.bind(func, args, &sig, span) else {
            // Still lower the arguments, so errors inside them are reported.
            return Val::Error;
        };
        self.builtin(name, b, span)
    }

    fn bind<'e>(&mut self, func: &Ident, args: Vec<CallArg<'e>>, sig: &Sig, span: Span) -> Option<Bound<'e>> {
        let mut out: Bound<'e> = vec![None; sig.params.len()];
        let mut ok = true;
        let mut positional = 0;
        let usage = format!("{}({})", func.name, sig.params.join(", "));
        for a in args {
            let slot = match a.name {
                None => {
                    let p = positional;
                    positional += 1;
                    if p >= sig.params.len() {
                        self.diags.push(
                            Diagnostic::error(format!(
                                "`{}` takes at most {} argument(s)",
                                func.name,
                                sig.params.len()
                            ))
                            .at(a.span, "extra argument")
                            .note(format!("usage: {usage}")),
                        );
                        ok = false;
                        continue;
                    }
                    p
                }
                Some(n) => match sig.params.iter().position(|p| *p == n.name) {
                    Some(p) => p,
                    None => {
                        let mut d = Diagnostic::error(format!("`{}` has no argument named `{}`", func.name, n.name))
                            .at(n.span, "unknown argument")
                            .note(format!("usage: {usage}"));
                        if let Some(c) = closest(&n.name, sig.params.iter().copied()) {
                            d = d.hint(format!("did you mean `{c}`?"));
                        }
                        self.diags.push(d);
                        ok = false;
                        continue;
                    }
                },
            };
            if out[slot].is_some() {
                self.diags.push(
                    Diagnostic::error(format!("argument `{}` of `{}` is given twice", sig.params[slot], func.name))
                        .at(a.span, "given again here"),
                );
                ok = false;
                continue;
            }
            out[slot] = Some(a);
        }
        for (i, p) in sig.params.iter().enumerate().take(sig.required) {
            if out[i].is_none() {
                self.diags.push(
                    Diagnostic::error(format!("`{}` needs the argument `{p}`", func.name))
                        .at(span, format!("`{p}` missing"))
                        .note(format!("usage: {usage}")),
                );
                ok = false;
            }
        }
        ok.then_some(out)
    }

    /// An argument's value. Each source argument is lowered once, however
    /// many times a built-in asks, so its errors are reported once.
    fn arg_val(&mut self, a: &CallArg) -> Val {
        match &a.value {
            ArgValue::Expr(e) => {
                let key = (e.span.start, e.span.end);
                if let Some(v) = self.arg_cache.get(&key) {
                    return v.clone();
                }
                let v = self.expr(e);
                self.arg_cache.insert(key, v.clone());
                v
            }
            ArgValue::Val(v) => v.clone(),
        }
    }

    fn arg_tensor(&mut self, a: &CallArg) -> Option<NodeId> {
        let v = self.arg_val(a);
        self.tensor(v, a.span)
    }

    fn arg_const(&mut self, a: &CallArg, what: &str) -> Option<Const> {
        match self.arg_val(a) {
            Val::Const(c) => Some(c),
            Val::Error => None,
            Val::Node(_) => {
                self.diags.push(
                    Diagnostic::error(format!("{what} must be a compile-time constant"))
                        .at(a.span, "computed at run time"),
                );
                None
            }
        }
    }

    fn arg_int(&mut self, a: &CallArg, what: &str) -> Option<i64> {
        match self.arg_const(a, what)? {
            Const::Int(i) => Some(i),
            other => {
                self.diags.push(
                    Diagnostic::error(format!("{what} must be an integer, found {}", other.describe()))
                        .at(a.span, "expected an integer"),
                );
                None
            }
        }
    }

    fn arg_float(&mut self, a: &CallArg, what: &str) -> Option<f64> {
        match self.arg_const(a, what)? {
            Const::Int(i) => Some(i as f64),
            Const::Float(f) => Some(f),
            other => {
                self.diags.push(
                    Diagnostic::error(format!("{what} must be a number, found {}", other.describe()))
                        .at(a.span, "expected a number"),
                );
                None
            }
        }
    }

    fn arg_bool(&mut self, a: &CallArg, what: &str) -> Option<bool> {
        match self.arg_const(a, what)? {
            Const::Bool(b) => Some(b),
            other => {
                self.diags.push(
                    Diagnostic::error(format!("{what} must be `true` or `false`, found {}", other.describe()))
                        .at(a.span, "expected a bool"),
                );
                None
            }
        }
    }

    /// A list of integers: `[1, 2]`, or one integer meaning a list of one.
    fn arg_ints(&mut self, a: &CallArg, what: &str) -> Option<Vec<i64>> {
        match self.arg_const(a, what)? {
            Const::Int(i) => Some(vec![i]),
            Const::Array(arr) if arr.dtype == DType::I32 && arr.shape.len() == 1 => {
                Some(arr.data.iter().map(|v| *v as i64).collect())
            }
            _ => {
                self.diags.push(
                    Diagnostic::error(format!("{what} must be a list of integers"))
                        .at(a.span, "expected e.g. `[7, 7]`"),
                );
                None
            }
        }
    }

    fn arg_bools(&mut self, a: &CallArg, what: &str) -> Option<Vec<bool>> {
        match self.arg_const(a, what)? {
            Const::Bool(b) => Some(vec![b]),
            Const::Array(arr) if arr.dtype == DType::Bool && arr.shape.len() == 1 => {
                Some(arr.data.iter().map(|v| *v != 0.0).collect())
            }
            _ => {
                self.diags.push(
                    Diagnostic::error(format!("{what} must be a list of booleans"))
                        .at(a.span, "expected e.g. `[false, true]`"),
                );
                None
            }
        }
    }

    /// A (possibly negative) axis argument, normalised against `rank`.
    fn axis(&mut self, a: Option<&CallArg>, default: i64, rank: usize, call: Span) -> Option<usize> {
        let v = match a {
            Some(a) => self.arg_int(a, "`axis`")?,
            None => default,
        };
        let r = rank as i64;
        if v < -r || v >= r {
            let d = Diagnostic::error(format!("axis {v} is out of range for a tensor of rank {rank}"));
            let d = match a {
                Some(a) => d.at(a.span, format!("expected an axis in {}..{}", -r, r)),
                None => d.at(call, format!("the default axis is {default}")),
            };
            self.diags.push(d);
            return None;
        }
        Some(if v < 0 { (v + r) as usize } else { v as usize })
    }

    fn rank(&self, id: NodeId) -> usize {
        self.tensor_ty(id).map_or(0, |t| t.rank())
    }

    fn builtin(&mut self, name: &str, b: Bound, span: Span) -> Val {
        let arg_spans: Vec<Span> = b.iter().flatten().map(|a| a.span).collect();
        macro_rules! t {
            ($i:expr) => {
                match b[$i].as_ref().and_then(|a| self.arg_tensor(a)) {
                    Some(x) => x,
                    None => return Val::Error,
                }
            };
        }
        macro_rules! some {
            ($e:expr) => {
                match $e {
                    Some(x) => x,
                    None => return Val::Error,
                }
            };
        }
        match name {
            n if UNARY_FNS.contains(&n) => {
                let x = t!(0);
                let u = some!(UnaryOp::from_name(n));
                self.node(Op::Unary(u), &[x], span, &arg_spans)
            }
            "sum" | "max" | "mean" => {
                let x = t!(0);
                if let Some(a) = &b[1] {
                    if let Val::Node(id) = self.arg_val(a) {
                        let d = match self.ty(id) {
                            Type::Mask => self.mask_not_tensor(a.span),
                            Type::Tensor(_) => {
                                Diagnostic::error(format!("not supported yet: elementwise `{name}` of two tensors"))
                                    .at(a.span, "the second argument of a reduction is its axis")
                            }
                        };
                        return self.err(d);
                    }
                }
                let axis = some!(self.axis(b[1].as_ref(), -1, self.rank(x), span));
                let keepdims = match &b[2] {
                    Some(a) => some!(self.arg_bool(a, "`keepdims`")),
                    None => false,
                };
                let op = some!(ReduceOp::from_name(name));
                self.node(Op::Reduce { op, axis, keepdims }, &[x], span, &arg_spans)
            }
            "softmax" => {
                let x = t!(0);
                let axis = some!(self.axis(b[1].as_ref(), -1, self.rank(x), span));
                self.node(Op::Softmax { axis }, &[x], span, &arg_spans)
            }
            "transpose" => {
                let x = t!(0);
                self.node(Op::Transpose, &[x], span, &arg_spans)
            }
            "permute" => {
                let x = t!(0);
                let a = some!(b[1].as_ref());
                let raw = some!(self.arg_ints(a, "the permutation"));
                let r = self.rank(x) as i64;
                let mut perm = Vec::new();
                for p in raw {
                    if p < -r || p >= r {
                        return self.err(
                            Diagnostic::error(format!("axis {p} in the permutation is out of range for rank {r}"))
                                .at(a.span, "out of range"),
                        );
                    }
                    perm.push(if p < 0 { (p + r) as usize } else { p as usize });
                }
                let mut problems = Vec::new();
                if perm.len() != r as usize {
                    problems.push(format!("it has {} entries but the tensor has rank {r}", perm.len()));
                }
                for ax in 0..r as usize {
                    match perm.iter().filter(|p| **p == ax).count() {
                        0 => problems.push(format!("axis {ax} is missing")),
                        1 => {}
                        n => problems.push(format!("axis {ax} appears {n} times")),
                    }
                }
                if !problems.is_empty() {
                    let ty = self.tensor_ty(x).map(|t| t.to_string()).unwrap_or_default();
                    return self.err(
                        Diagnostic::error(format!("not a permutation of the axes of {ty}: {}", problems.join(", ")))
                            .at(a.span, "each axis must appear exactly once"),
                    );
                }
                self.node(Op::Permute { perm }, &[x], span, &arg_spans)
            }
            "reshape" => {
                let x = t!(0);
                let a = some!(b[1].as_ref());
                let ArgValue::Expr(Expr { kind: ExprKind::Array(elems), .. }) = &a.value else {
                    return self.err(
                        Diagnostic::error("the new shape must be a list of dimensions")
                            .at(a.span, "expected e.g. `[T, 8, 64]`"),
                    );
                };
                let mut shape = Vec::new();
                for e in elems.iter() {
                    shape.push(some!(self.dim(e)));
                }
                self.node(Op::Reshape { shape }, &[x], span, &arg_spans)
            }
            "concat" => {
                let a = some!(b[0].as_ref());
                let ArgValue::Expr(Expr { kind: ExprKind::Array(elems), .. }) = &a.value else {
                    return self.err(
                        Diagnostic::error("`concat` takes a list of tensors").at(a.span, "expected e.g. `[a, b]`"),
                    );
                };
                let mut xs = Vec::new();
                let mut spans = Vec::new();
                for e in elems.iter() {
                    let v = self.expr(e);
                    xs.push(self.tensor(v, e.span));
                    spans.push(e.span);
                }
                let xs: Vec<NodeId> = some!(xs.into_iter().collect::<Option<Vec<_>>>());
                if xs.is_empty() {
                    return self.err(Diagnostic::error("`concat` needs at least one tensor").at(a.span, "empty list"));
                }
                let axis = some!(self.axis(b[1].as_ref(), 0, self.rank(xs[0]), span));
                self.node(Op::Concat { axis }, &xs, span, &spans)
            }
            "slice" => {
                let x = t!(0);
                let axis = some!(self.axis(b[1].as_ref(), 0, self.rank(x), span));
                let start = match &b[2] {
                    Some(a) => some!(self.arg_int(a, "`start`")),
                    None => 0,
                };
                let size = self.tensor_ty(x).and_then(|t| t.shape[axis].as_const());
                let start_span = b[2].as_ref().map_or(span, |a| a.span);
                let end_span = b[3].as_ref().map_or(span, |a| a.span);
                if start < 0 || size.is_some_and(|n| start >= n) {
                    let what = size.map_or("not negative".to_string(), |n| format!("in 0..{n}"));
                    return self.err(
                        Diagnostic::error(format!("slice start {start} is out of range"))
                            .at(start_span, format!("start must be {what}"))
                            .note(size.map_or(String::new(), |n| format!("axis {axis} has size {n}"))),
                    );
                }
                if let (Some(a), Some(n)) = (&b[3], size) {
                    if let Val::Const(Const::Int(e)) = self.arg_val(a) {
                        if e > n || e <= start {
                            let why = if e <= start {
                                format!("end must be greater than start ({start})")
                            } else {
                                format!("end must be at most {n}")
                            };
                            return self.err(
                                Diagnostic::error(format!("slice end {e} is out of range"))
                                    .at(end_span, why)
                                    .note(format!("axis {axis} has size {n}; a slice takes 0 <= start < end <= size")),
                            );
                        }
                    }
                }
                let end = match &b[3] {
                    Some(a) => some!(self.arg_int(a, "`end`")),
                    None => match self.tensor_ty(x).and_then(|t| t.shape[axis].as_const()) {
                        Some(c) => c,
                        None => {
                            return self.err(
                                Diagnostic::error("`slice` along a symbolic axis needs `end`")
                                    .at(span, "missing `end`")
                                    .note("not supported yet: symbolic slice bounds"),
                            )
                        }
                    },
                };
                self.node(Op::Slice { axis, start, end }, &[x], span, &arg_spans)
            }
            "repeat" => {
                let x = t!(0);
                let times = some!(self.arg_int(some!(b[1].as_ref()), "the repeat count"));
                let axis = some!(self.axis(b[2].as_ref(), 0, self.rank(x), span));
                self.node(Op::Repeat { times, axis }, &[x], span, &arg_spans)
            }
            "where" => {
                let (ca, aa, ba) = (some!(b[0].as_ref()), some!(b[1].as_ref()), some!(b[2].as_ref()));
                let c = self.arg_val(ca);
                let va = self.arg_val(aa);
                let vb = self.arg_val(ba);
                let cond = match c {
                    Val::Node(id) => id,
                    Val::Error => return Val::Error,
                    Val::Const(_) => {
                        return self.err(
                            Diagnostic::error("the condition of `where` must be a mask or a bool tensor")
                                .at(ca.span, "a constant"),
                        )
                    }
                };
                let (x, y) = some!(self.pair(va, aa.span, vb, ba.span));
                if matches!(self.ty(cond), Type::Mask) {
                    let (tx, ty) = (self.tensor_ty(x).cloned(), self.tensor_ty(y).cloned());
                    if let (Some(tx), Some(ty)) = (tx, ty) {
                        // The mask covers the broadcast result's last two axes.
                        if let Ok(shape) = tdl_ir::infer::broadcast_shapes(&tx.shape, &ty.shape) {
                            let r = shape.len();
                            if r >= 2 {
                                self.check_mask_fits(cond, shape[r - 2].as_const(), shape[r - 1].as_const(), span);
                            }
                        }
                    }
                }
                self.node(Op::Where, &[cond, x, y], span, &arg_spans)
            }
            "layernorm" | "rmsnorm" => {
                let x = t!(0);
                let g = t!(1);
                let (bias, eps_slot, default) =
                    if name == "layernorm" { (Some(t!(2)), 3, 1e-5) } else { (None, 2, 1e-6) };
                let eps = match &b[eps_slot] {
                    Some(a) => some!(self.arg_float(a, "`eps`")),
                    None => default,
                };
                match bias {
                    Some(bb) => self.node(Op::LayerNorm { eps }, &[x, g, bb], span, &arg_spans),
                    None => self.node(Op::RmsNorm { eps }, &[x, g], span, &arg_spans),
                }
            }
            "rope" => {
                let x = t!(0);
                let base = match &b[1] {
                    Some(a) => some!(self.arg_float(a, "`base`")),
                    None => 10000.0,
                };
                self.node(Op::Rope { base }, &[x], span, &arg_spans)
            }
            "attention" => self.attention(b, span),
            _ => self.builtin_mask(name, b, span),
        }
    }

    fn attention(&mut self, b: Bound, span: Span) -> Val {
        let q = b[0].as_ref().and_then(|a| self.arg_tensor(a));
        let k = b[1].as_ref().and_then(|a| self.arg_tensor(a));
        let v = b[2].as_ref().and_then(|a| self.arg_tensor(a));
        let mut spans: Vec<Span> = b[..3].iter().flatten().map(|a| a.span).collect();
        let mut inputs: Vec<NodeId> = match (q, k, v) {
            (Some(q), Some(k), Some(v)) => vec![q, k, v],
            _ => Vec::new(),
        };
        let mut ok = inputs.len() == 3;
        let mut masked = false;
        if let Some(a) = &b[3] {
            match self.arg_val(a) {
                Val::Node(m) if matches!(self.ty(m), Type::Mask) => {
                    masked = true;
                    inputs.push(m);
                    spans.push(a.span);
                }
                Val::Error => ok = false,
                _ => {
                    self.diags.push(
                        Diagnostic::error("`mask` must be a mask")
                            .at(a.span, "not a mask")
                            .hint("masks are built-ins like `causal`, `window(256)`, or `mask(q, k, h) => ...`"),
                    );
                    ok = false;
                }
            }
        }
        let scale = match &b[4] {
            Some(a) => match self.arg_float(a, "`scale`") {
                Some(s) => Some(s),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let mut score = None;
        if let Some(a) = &b[5] {
            match &a.value {
                ArgValue::Expr(Expr { kind: ExprKind::Lambda { is_mask: false, params, body }, .. })
                    if (1..=4).contains(&params.len()) =>
                {
                    let vars: Vec<(String, LambdaVar)> = params
                        .iter()
                        .zip([LambdaVar::S, LambdaVar::Q, LambdaVar::K, LambdaVar::H])
                        .map(|(p, v)| (p.name.clone(), v))
                        .collect();
                    let mut ops = Vec::new();
                    match self.scalar(body, &vars, &mut ops) {
                        Some((_, SType::Bool)) => {
                            self.diags.push(
                                Diagnostic::error("a score modifier must give a number, this gives a boolean")
                                    .at(body.span, "a predicate")
                                    .hint("to mask scores pass `mask = mask(q, k, h) => ...` instead"),
                            );
                            ok = false;
                        }
                        Some((e, _)) if tdl_ir::mask::check_expr_limits(e.measure()).is_err() => {
                            let why = tdl_ir::mask::check_expr_limits(e.measure()).err().unwrap_or_default();
                            self.diags.push(
                                Diagnostic::error(format!("score modifier too large: {why}")).at(a.span, "this lambda"),
                            );
                            ok = false;
                        }
                        Some((mut e, _)) => {
                            let base = inputs.len();
                            e.map_operands(&mut |i| i + base);
                            for o in ops {
                                inputs.push(o);
                                spans.push(a.span);
                            }
                            score = Some(e);
                        }
                        None => ok = false,
                    }
                }
                _ => {
                    self.diags.push(
                        Diagnostic::error("`score` must be a lambda `(s, q, k, h) => ...`")
                            .at(a.span, "expected a score modifier")
                            .note("the parameters are the score, the query index, the key index and the head, in that order"),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return Val::Error;
        }
        if masked {
            let qt = self.tensor_ty(inputs[0]).cloned();
            let kt = self.tensor_ty(inputs[1]).cloned();
            if let (Some(qt), Some(kt)) = (qt, kt) {
                if qt.rank() >= 2 && kt.rank() >= 2 {
                    let t = qt.shape[qt.rank() - 2].as_const();
                    let s = kt.shape[kt.rank() - 2].as_const();
                    self.check_mask_fits(inputs[3], t, s, span);
                }
            }
        }
        self.node(Op::Attention { scale, masked, score }, &inputs, span, &spans)
    }

    fn builtin_mask(&mut self, name: &str, b: Bound, span: Span) -> Val {
        macro_rules! int {
            ($i:expr, $what:expr) => {
                match b[$i].as_ref() {
                    Some(a) => match self.arg_int(a, $what) {
                        Some(v) => Some((v, a.span)),
                        None => return Val::Error,
                    },
                    None => None,
                }
            };
        }
        let positive = |s: &mut Self, v: Option<(i64, Span)>, what: &str, min: i64| -> Option<i64> {
            let (v, sp) = v?;
            if v < min {
                s.diags
                    .push(Diagnostic::error(format!("{what} must be at least {min}, found {v}")).at(sp, "too small"));
                return None;
            }
            Some(v)
        };
        let m = match name {
            "causal" => MaskExpr::Causal,
            "local" => {
                let left = int!(0, "`left`").map_or(0, |v| v.0);
                let right = int!(1, "`right`").map_or(0, |v| v.0);
                MaskExpr::Local { left, right }
            }
            "window" => {
                let w = int!(0, "the window");
                match positive(self, w, "the window", 1) {
                    Some(w) => MaskExpr::Window { w },
                    None => return Val::Error,
                }
            }
            "dilated" => {
                let w = int!(0, "the window");
                let d = int!(1, "the dilation");
                match (positive(self, w, "the window", 1), positive(self, d, "the dilation", 1)) {
                    (Some(w), Some(d)) => MaskExpr::Dilated { w, d },
                    _ => return Val::Error,
                }
            }
            "sink" => {
                let n = int!(0, "the sink size");
                match positive(self, n, "the sink size", 0) {
                    Some(n) => MaskExpr::Sink { n },
                    None => return Val::Error,
                }
            }
            "strided" => {
                let st = int!(0, "the stride");
                let offset = int!(1, "`offset`").map_or(0, |v| v.0);
                match positive(self, st, "the stride", 1) {
                    Some(stride) => MaskExpr::Strided { stride, offset },
                    None => return Val::Error,
                }
            }
            "neighborhood" => match self.neighborhood(&b, span) {
                Some(m) => m,
                None => return Val::Error,
            },
            "blocks" => {
                let la = match b[0].as_ref() {
                    Some(a) => a,
                    None => return Val::Error,
                };
                let block = match b[1].as_ref().and_then(|a| self.arg_ints(a, "`block`").map(|v| (v, a.span))) {
                    Some((v, _)) if v.len() == 1 && v[0] >= 1 => [v[0], v[0]],
                    Some((v, _)) if v.len() == 2 && v[0] >= 1 && v[1] >= 1 => [v[0], v[1]],
                    Some((_, s)) => {
                        return self.err(
                            Diagnostic::error("`block` must be two positive sizes `[bq, bk]`")
                                .at(s, "expected e.g. `[64, 64]`"),
                        )
                    }
                    None => return Val::Error,
                };
                match self.arg_val(la) {
                    Val::Node(id) => {
                        return self.mask_node(MaskExpr::Blocks { layout: ArrayRef::Operand(0), block }, vec![id], span)
                    }
                    Val::Const(Const::Array(mut a))
                        if a.shape.len() == 2 && (a.dtype == DType::Bool || a.dtype == DType::I32) =>
                    {
                        if a.data.iter().any(|v| *v != 0.0 && *v != 1.0) {
                            return self.err(
                                Diagnostic::error("a block layout holds only 0/1 or true/false")
                                    .at(la.span, "other values here"),
                            );
                        }
                        a.dtype = DType::Bool;
                        MaskExpr::Blocks { layout: ArrayRef::Const(a), block }
                    }
                    Val::Error => return Val::Error,
                    _ => {
                        return self.err(
                            Diagnostic::error("a block layout must be a 2-D bool input or constant array")
                                .at(la.span, "not a 2-D layout"),
                        )
                    }
                }
            }
            "document" => {
                let a = match b[0].as_ref() {
                    Some(a) => a,
                    None => return Val::Error,
                };
                match self.arg_val(a) {
                    Val::Node(id) if self.tensor_ty(id).is_some() => {
                        return self.mask_node(MaskExpr::Document { ids: 0 }, vec![id], span);
                    }
                    Val::Error => return Val::Error,
                    _ => {
                        return self.err(
                            Diagnostic::error("`document` takes the document ids, an i32[T] input")
                                .at(a.span, "expected a tensor"),
                        )
                    }
                }
            }
            _ => return Val::Error,
        };
        self.mask_node(m, Vec::new(), span)
    }

    fn neighborhood(&mut self, b: &Bound, span: Span) -> Option<MaskExpr> {
        let ka = b[0].as_ref()?;
        let kernel = self.arg_ints(ka, "`kernel`")?;
        let ga = b[1].as_ref()?;
        let grid = self.arg_ints(ga, "`grid`")?;
        let n = kernel.len();
        if !(1..=3).contains(&n) {
            self.diags.push(
                Diagnostic::error(format!("neighborhood attention has 1, 2 or 3 axes, found {n}")).at(ka.span, "here"),
            );
            return None;
        }
        let fit = |s: &mut Self, v: Vec<i64>, a: &CallArg, what: &str| -> Option<Vec<i64>> {
            if v.len() == n {
                Some(v)
            } else if v.len() == 1 {
                Some(vec![v[0]; n])
            } else {
                s.diags.push(
                    Diagnostic::error(format!("`{what}` has {} entries but `kernel` has {n}", v.len()))
                        .at(a.span, format!("expected {n} entries")),
                );
                None
            }
        };
        let grid = fit(self, grid, ga, "grid")?;
        let dilation = match &b[2] {
            Some(a) => {
                let v = self.arg_ints(a, "`dilation`")?;
                fit(self, v, a, "dilation")?
            }
            None => vec![1; n],
        };
        let causal = match &b[3] {
            Some(a) => {
                let v = self.arg_bools(a, "`causal`")?;
                if v.len() == n {
                    v
                } else if v.len() == 1 {
                    vec![v[0]; n]
                } else {
                    self.diags.push(
                        Diagnostic::error(format!("`causal` has {} entries but `kernel` has {n}", v.len()))
                            .at(a.span, "wrong length"),
                    );
                    return None;
                }
            }
            None => vec![false; n],
        };
        let mut ok = true;
        for ax in 0..n {
            let (k, g, d) = (kernel[ax], grid[ax], dilation[ax]);
            if k < 1 || k % 2 == 0 {
                self.diags.push(
                    Diagnostic::error(format!("the kernel must be odd and positive, found {k} on axis {ax}"))
                        .at(ka.span, "NATTEN kernels are odd"),
                );
                ok = false;
            } else if g < 1 || d < 1 {
                self.diags.push(
                    Diagnostic::error(format!("grid and dilation must be positive on axis {ax}")).at(span, "here"),
                );
                ok = false;
            } else if g / d < k {
                self.diags.push(
                    Diagnostic::error(format!(
                        "axis {ax}: a grid of {g} with dilation {d} gives dilation groups of {} positions, fewer than the kernel {k}",
                        g / d
                    ))
                    .at(span, "kernel larger than a dilation group"),
                );
                ok = false;
            }
        }
        if grid.iter().try_fold(1i64, |acc, g| acc.checked_mul(*g)).is_none() {
            self.diags.push(Diagnostic::error("the grid has too many positions").at(ga.span, "overflows"));
            ok = false;
        }
        ok.then_some(MaskExpr::Neighborhood { kernel, grid, dilation, causal })
    }
}
