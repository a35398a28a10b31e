//! The two wrappers of a kernel body (the discipline of
//! [`crate::attention`], for the simple kernels): a `gpu.func` for the GPU
//! and a pair of host functions for the ExecutionEngine.
//!
//! A body is MLIR text run once per workgroup. It may use the block ids
//! `%bx`, `%by`, `%bz` (`index`) everywhere, the thread ids `%tx`, `%ty`
//! only inside phases, and the workgroup buffers by name with types
//! written `memref<…xf32SMEM>`. A phase is `PHASE{ … }PHASE`: on the GPU
//! straight-line code followed by `gpu.barrier`, on the host an
//! `scf.forall` over the block's threads. Code outside phases must be free
//! of side effects and every loop holding a phase must have block-uniform
//! bounds (the barrier rule of `docs/design/gpu-mlir-research.md`).

use std::fmt::Write as _;

/// A kernel: its name, parameters (`("%a", "memref<?xf32>")`, in the
/// launch order), block shape `(x, y)`, workgroup buffers (`("%As",
/// "16x16xf32")`) and body.
pub(crate) struct Func {
    pub name: String,
    pub params: Vec<(String, String)>,
    pub block: [u32; 2],
    pub shared: Vec<(String, String)>,
    pub body: String,
}

const WG: &str = ", #gpu.address_space<workgroup>";

impl Func {
    fn sig(&self) -> String {
        self.params.iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ")
    }

    /// The `gpu.func` (to place inside a `gpu.module`).
    pub fn gpu(&self) -> String {
        let [bx, by] = self.block;
        let wg = if self.shared.is_empty() {
            String::new()
        } else {
            let list: Vec<String> =
                self.shared.iter().map(|(n, s)| format!("{n} : memref<{s}{WG}> {{llvm.align = 16 : i64}}")).collect();
            format!(" workgroup({})", list.join(", "))
        };
        let body = self
            .body
            .replace("SMEM", WG)
            .replace("PHASE{", "scf.execute_region {")
            .replace("}PHASE", "  scf.yield\n    }\n    gpu.barrier");
        format!(
            "  gpu.func @{name}({sig}){wg} kernel attributes {{known_block_size = array<i32: {bx}, {by}, 1>}} {{
    %bx = gpu.block_id x
    %by = gpu.block_id y
    %bz = gpu.block_id z
    %tx = gpu.thread_id x
    %ty = gpu.thread_id y
{body}    gpu.return
  }}
",
            name = self.name,
            sig = self.sig()
        )
    }

    /// The host functions: `@<name>_block` (one workgroup, its phases as
    /// `scf.forall` over the threads, workgroup buffers as allocas) and
    /// `@<name>(params…, %gx, %gy, %gz)` looping over the grid.
    pub fn host(&self) -> String {
        let [bx, by] = self.block;
        let body = self
            .body
            .replace("SMEM", "")
            .replace("PHASE{", &format!("scf.forall (%ty, %tx) in ({by}, {bx}) {{"))
            .replace("}PHASE", "}");
        let mut allocas = String::new();
        for (n, s) in &self.shared {
            let _ = writeln!(allocas, "    {n} = memref.alloca() : memref<{s}>");
        }
        let names: Vec<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
        let types: Vec<&str> = self.params.iter().map(|(_, t)| t.as_str()).collect();
        let sig = self.sig();
        let comma = if sig.is_empty() { "" } else { ", " };
        format!(
            "func.func private @{name}_block({sig}{comma}%bx: index, %by: index, %bz: index) {{
{allocas}{body}    return
}}
func.func @{name}({sig}{comma}%gx: index, %gy: index, %gz: index) attributes {{llvm.emit_c_interface}} {{
  %wc0 = arith.constant 0 : index
  %wc1 = arith.constant 1 : index
  scf.for %wz = %wc0 to %gz step %wc1 {{
    scf.for %wy = %wc0 to %gy step %wc1 {{
      scf.for %wx = %wc0 to %gx step %wc1 {{
        func.call @{name}_block({args}{comma}%wx, %wy, %wz) : ({tys}{comma}index, index, index) -> ()
      }}
    }}
  }}
  return
}}
",
            name = self.name,
            args = names.join(", "),
            tys = types.join(", "),
        )
    }
}

/// A `gpu.module` named `module` holding `funcs` (`gpu.func` texts), with
/// `aliases` (type aliases) before it.
pub(crate) fn gpu_module_text(aliases: &str, module: &str, funcs: &str) -> String {
    format!("{aliases}module attributes {{gpu.container_module}} {{\ngpu.module @{module} {{\n{funcs}}}\n}}\n")
}

/// `x` as an MLIR `f32` literal (exact, hexadecimal bits).
pub(crate) fn f32_lit(x: f32) -> String {
    format!("0x{:08X}", x.to_bits())
}
