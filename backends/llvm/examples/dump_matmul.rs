//! Prints the optimised LLVM IR of the CPU matmul kernel for the host:
//! `cargo run -p tdl-llvm --example dump_matmul [TILE_M TILE_N TILE_K]`.

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|x| x.parse().ok()).collect();
    let tiles = if a.len() == 3 { (a[0], a[1], a[2]) } else { (96, 128, 256) };
    match tdl_llvm::matmul::matmul_llvm_text(tiles) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
