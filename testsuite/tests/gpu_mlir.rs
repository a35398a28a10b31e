//! Issue 6: the GPU kernels of every corpus and example program as
//! `tdlc compile --emit mlir` prints them (the Kernel IR lowered for
//! `sm_90`, one `gpu.module` per graph, before lowering to NVVM), kept as
//! snapshots so a change to the generated code is seen in review. That
//! every module verifies and lowers to PTX is `kernel.rs`'s
//! `gpu_kernels_of_the_corpus_lower_to_ptx`.

use tdl::kernel::lower::{lower, LowerOptions};
use tdl::kernel::target::Target;
use tdl::passes::{default_pipeline, run_pipeline_with};
use tdl_testsuite::check_ok;

fn gpu_mlir(name: &str, src: &str) -> String {
    let target = Target::gpu("sm_90").expect("sm_90");
    let mut out = String::new();
    for g in &check_ok(name, src).graphs {
        let mut none = |_: &tdl::passes::PassReport, _: &tdl::ir::VerifiedGraph| {};
        let fused = run_pipeline_with(g.clone(), &default_pipeline(), &mut none).expect("the pipeline runs").0;
        let p = lower(&fused, &target, &LowerOptions::default())
            .unwrap_or_else(|e| panic!("{name}: `{}` does not lower: {e}", g.name));
        out.push_str(&tdl::mlir::program::program_mlir(&p).0);
    }
    out
}

#[test]
fn corpus_gpu_mlir() {
    insta::glob!("../corpus", "*.tdl", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(gpu_mlir(&name, &src));
    });
}

#[test]
fn examples_gpu_mlir() {
    insta::glob!("../../examples", "*.tdl", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(gpu_mlir(&name, &src));
    });
}
