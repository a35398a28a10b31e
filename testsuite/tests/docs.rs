//! The language reference, `docs/language.md`: every ```` ```tdl ```` block
//! is a complete file that checks, and the contract's example graphs are
//! all there.
//!
//! Nothing here reads the contract itself (the project never reads
//! `../shared` at build or test time); the contract's examples are found in
//! the reference by their graph headers.

use tdl_testsuite::{check_ok, repo_root};

/// The contract's example graphs, by the start of their headers.
const CONTRACT_GRAPHS: [&str; 5] =
    ["graph causal_attention(", "graph gqa_window(", "graph na2d(", "graph moa(", "graph block("];

/// A fenced ```` ```tdl ```` block: the line of its opening fence (1-based)
/// and its text.
struct Block {
    line: usize,
    text: String,
}

fn language_md() -> String {
    let path = repo_root().join("docs").join("language.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every ```` ```tdl ```` block of `md`. Panics on a block that is never
/// closed.
fn tdl_blocks(md: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        let fence = line.trim();
        match &mut open {
            None => {
                if fence == "```tdl" {
                    open = Some(Block { line: i + 1, text: String::new() });
                }
            }
            Some(b) => {
                if fence == "```" {
                    blocks.extend(open.take());
                } else {
                    b.text.push_str(line);
                    b.text.push('\n');
                }
            }
        }
    }
    if let Some(b) = open {
        panic!("docs/language.md: the ```tdl block opened at line {} is never closed", b.line);
    }
    blocks
}

#[test]
fn every_tdl_block_checks() {
    let md = language_md();
    let blocks = tdl_blocks(&md);
    assert!(
        blocks.len() >= 20,
        "docs/language.md has {} ```tdl blocks; the reference should show at least 20 complete programs",
        blocks.len()
    );
    for b in &blocks {
        check_ok(&format!("docs/language.md:{}", b.line), &b.text);
    }
}

#[test]
fn the_contract_examples_are_documented() {
    let md = language_md();
    let blocks = tdl_blocks(&md);
    for header in CONTRACT_GRAPHS {
        let found = blocks.iter().any(|b| b.text.lines().any(|l| l.trim_start().starts_with(header)));
        assert!(found, "docs/language.md has no ```tdl block with the contract example `{header}...`");
    }
}

#[test]
fn block_extraction() {
    let md = "text\n```tdl\ngraph a(x: f32[4]) -> f32[4] {\n    return x\n}\n```\n```text\nnot tdl\n```\n  ```tdl\nconst A = 1\n  ```\n";
    let blocks = tdl_blocks(md);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].line, 2);
    assert_eq!(blocks[0].text, "graph a(x: f32[4]) -> f32[4] {\n    return x\n}\n");
    assert_eq!(blocks[1].line, 10);
    assert_eq!(blocks[1].text, "const A = 1\n");
}
