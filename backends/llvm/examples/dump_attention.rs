//! Prints the optimised LLVM IR of a causal attention kernel for this CPU
//! (`cargo run -p tdl-llvm --example dump_attention -- [tile_q tile_k d]`).
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (tq, tk, d) = match args.as_slice() {
        [a, b, c] => (*a, *b, *c),
        _ => (128, 64, 64),
    };
    let spec = tdl_llvm::attention::AttentionSpec::new(d, d, tq, tk, None, Some(tdl_ir::MaskExpr::Causal));
    match tdl_llvm::attention::attention_llvm_text(&spec) {
        Ok(t) => print!("{t}"),
        Err(e) => eprintln!("{e}"),
    }
}
