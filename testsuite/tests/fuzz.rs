//! Robustness: no input makes the frontend panic, hang, overflow the stack
//! or allocate without bound. Property tests over random bytes, random token
//! streams and random mutations of real programs, plus the pathological
//! inputs the foundation issue names.
//!
//! The number of cases per property is `TDL_FUZZ_CASES` (default 4000); CI
//! runs the default. Every property also checks what must hold when the
//! input is accepted: formatting is idempotent and keeps the meaning.

use proptest::prelude::*;
use tdl::frontend::fmt::format_source;
use tdl::CheckError;

fn cases() -> u32 {
    std::env::var("TDL_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(4000)
}

/// Everything a user can reach from source text: check and fmt. Returns
/// whether the source checked.
fn exercise(src: &str) -> bool {
    let checked = match tdl::check_source(src) {
        Ok(c) => {
            for g in &c.graphs {
                let _ = tdl::ir::text::print_graph(g.graph());
            }
            true
        }
        Err(CheckError::User(d)) => {
            let _ = tdl::frontend::diag::render(&d, "fuzz.tdl", src);
            false
        }
        Err(CheckError::Internal(m)) => panic!("internal error on input {src:?}: {m}"),
    };
    if let Ok(formatted) = format_source(src) {
        let again = format_source(&formatted).expect("formatted text must parse");
        assert_eq!(again, formatted, "fmt is not idempotent on {src:?}");
        let checked_after = tdl::check_source(&formatted).is_ok();
        assert_eq!(checked, checked_after, "fmt changed whether {src:?} checks");
    }
    checked
}

const VOCAB: &[&str] = &[
    "graph",
    "const",
    "let",
    "return",
    "true",
    "false",
    "inf",
    "mask",
    "q",
    "k",
    "v",
    "x",
    "s",
    "h",
    "T",
    "S",
    "H",
    "D",
    "f32",
    "f16",
    "bf16",
    "i32",
    "bool",
    "f33",
    "0",
    "1",
    "2",
    "64",
    "-1",
    "0.125",
    "1e-5",
    "99999999999999999999",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    ";",
    "=",
    "->",
    "=>",
    "|>",
    "@",
    "+",
    "-",
    "*",
    "/",
    "%",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "!=",
    "&",
    "|",
    "!",
    "&&",
    "softmax",
    "transpose",
    "permute",
    "reshape",
    "concat",
    "slice",
    "repeat",
    "where",
    "attention",
    "causal",
    "window",
    "local",
    "dilated",
    "sink",
    "strided",
    "neighborhood",
    "blocks",
    "document",
    "axis",
    "keepdims",
    "sum",
    "max",
    "exp",
    "rope",
    "rmsnorm",
    "layernorm",
    "\n",
    "//c\n",
    "\0",
    "$",
    "é",
];

fn token_stream() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCAB), 0..80).prop_map(|toks| toks.join(" "))
}

const SEEDS: &[&str] = &[
    include_str!("../../examples/causal_attention.tdl"),
    include_str!("../../examples/gqa_window.tdl"),
    include_str!("../../examples/moa.tdl"),
    include_str!("../../examples/na2d.tdl"),
    include_str!("../../examples/block.tdl"),
];

/// A real program with a few random edits: deletions, duplications and
/// insertions of vocabulary tokens at random byte positions.
fn mutation() -> impl Strategy<Value = String> {
    (0..SEEDS.len(), prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(VOCAB)), 1..6))
        .prop_map(|(seed, edits)| {
            let mut s = SEEDS[seed].to_string();
            for (at, kind, tok) in edits {
                if s.is_empty() {
                    s.push_str(tok);
                    continue;
                }
                let mut i = at.index(s.len());
                while !s.is_char_boundary(i) {
                    i -= 1;
                }
                match kind {
                    0 => {
                        let mut j = (i + 1 + at.index(8)).min(s.len());
                        while !s.is_char_boundary(j) {
                            j -= 1;
                        }
                        s.replace_range(i..j, "");
                    }
                    1 => {
                        let mut j = (i + 1 + at.index(12)).min(s.len());
                        while !s.is_char_boundary(j) {
                            j -= 1;
                        }
                        let dup = s[i..j].to_string();
                        s.insert_str(i, &dup);
                    }
                    _ => s.insert_str(i, &format!(" {tok} ")),
                }
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_crash(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_token_streams_never_crash(src in token_stream()) {
        exercise(&src);
    }

    #[test]
    fn mutated_programs_never_crash(src in mutation()) {
        exercise(&src);
    }
}

#[test]
fn the_seed_programs_check() {
    for s in SEEDS {
        assert!(exercise(s));
    }
}

#[test]
fn pathological_inputs_give_clean_errors() {
    let wrap = |body: &str| format!("graph g(x: f32[4]) -> f32[4] {{\n    return {body}\n}}\n");
    let deep_parens = wrap(&format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000)));
    let long_sum = wrap(&format!("x{}", " + x".repeat(50_000)));
    let deep_unary = wrap(&format!("{}x", "-".repeat(100_000)));
    let deep_array = format!("const a = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let deep_calls = wrap(&format!("{}x{}", "exp(".repeat(100_000), ")".repeat(100_000)));
    let deep_lambda = format!(
        "graph g(q: f32[T, 4], k: f32[T, 4], v: f32[T, 4]) -> f32[T, 4] {{\n    return attention(q, k, v, mask = mask(q, k) => {}q < k{})\n}}\n",
        "(".repeat(50_000),
        ")".repeat(50_000)
    );
    for (what, src) in [
        ("100 000 nested parentheses", deep_parens),
        ("a 50 000-term sum", long_sum),
        ("100 000 unary minus", deep_unary),
        ("100 000 nested arrays", deep_array),
        ("100 000 nested calls", deep_calls),
        ("50 000 nested parentheses in a lambda", deep_lambda),
    ] {
        match tdl::check_source(&src) {
            Err(CheckError::User(d)) => {
                let text = tdl::frontend::diag::render(&d, "t.tdl", &src);
                assert!(text.contains("nested more than"), "{what}: unexpected diagnostics {text}");
            }
            Ok(_) => panic!("{what}: accepted"),
            Err(CheckError::Internal(m)) => panic!("{what}: internal error {m}"),
        }
        assert!(format_source(&src).is_err(), "{what}: fmt accepted it");
    }
}

#[test]
fn odd_bytes_and_numbers() {
    for src in [
        "",
        "\0",
        "graph\0g",
        "const a = 9223372036854775807\nconst b = a + 1\n",
        "const a = 99999999999999999999999999999\n",
        "const a = 1e400\n",
        "const a = -9223372036854775808\n",
        "graph g(x: f32[9223372036854775807, 9223372036854775807]) -> f32[9223372036854775807, 9223372036854775807] { return x }",
        "graph g(x: f32[T]) -> f32[T] { return reshape(x, [T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T * T]) }",
        "graph g(x: f32[4]) -> f32[4] { return repeat(x, 9223372036854775807, axis = 0) }",
        "const a = [[1, 2], [3]]\n",
        "graph g(x: f32[4]) -> f32[4] { return x }\ngraph g(x: f32[4]) -> f32[4] { return x }",
    ] {
        exercise(src);
    }
    // A valid file needs no graphs at all.
    assert!(exercise("const a = 1\n"));
}
