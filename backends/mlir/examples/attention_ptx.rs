//! Writes the GPU attention kernel's PTX for a few masks and tilings into a
//! folder, with a manifest, for `scripts/gpu-attention-check.py` to run on a
//! machine with an NVIDIA GPU:
//!
//!     cargo run -p tdl-mlir --example attention_ptx -- OUT_DIR [sm_90]

use std::fmt::Write as _;

use tdl_ir::MaskExpr;
use tdl_mlir::attention::{gpu_module, GpuAttentionSpec};
use tdl_mlir::{extract_ptx, new_context, nvvm_pipeline, parse_module, run_pipeline, verify_module};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: attention_ptx OUT_DIR [CHIP]")?);
    let chip = args.next().unwrap_or_else(|| "sm_90".into());
    std::fs::create_dir_all(&dir)?;
    // (name, mask, Python predicate over q, k, T, S)
    let cases: Vec<(&str, Option<MaskExpr>, &str)> = vec![
        ("none", None, "True"),
        ("causal", Some(MaskExpr::Causal), "k <= q + S - T"),
        ("window5", Some(MaskExpr::Window { w: 5 }), "k <= q + S - T and q - 4 <= k <= q"),
        (
            "sink2_or_window3",
            Some(MaskExpr::Or(Box::new(MaskExpr::Sink { n: 2 }), Box::new(MaskExpr::Window { w: 3 }))),
            "k < 2 or (k <= q + S - T and q - 2 <= k <= q)",
        ),
        ("not_causal", Some(MaskExpr::Not(Box::new(MaskExpr::Causal))), "k > q + S - T"),
    ];
    let mut manifest = String::new();
    for (tq, tk, d, dv) in [(64, 64, 64, 64), (32, 16, 16, 8), (32, 32, 128, 128)] {
        for (name, mask, pred) in &cases {
            let spec = GpuAttentionSpec {
                d,
                dv,
                tile_q: tq,
                tile_k: tk,
                scale: None,
                mask: mask.clone(),
                ..Default::default()
            };
            let context = new_context();
            let mut module = parse_module(&context, &gpu_module(&spec, "tdl_attn", "attn")?)?;
            verify_module(&module)?;
            run_pipeline(&mut module, &nvvm_pipeline(&chip)?)?;
            let file = format!("attn_{name}_{tq}x{tk}_d{d}_dv{dv}.ptx");
            std::fs::write(dir.join(&file), extract_ptx(&module)?)?;
            let _ = writeln!(manifest, "{file}\t{tq}\t{d}\t{dv}\t{pred}");
        }
    }
    std::fs::write(dir.join("manifest.tsv"), manifest)?;
    println!("wrote {}", dir.display());
    Ok(())
}
