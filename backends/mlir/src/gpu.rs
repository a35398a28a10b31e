//! GPU smoke path: a `gpu.module` kernel lowered in process to PTX text.
//!
//! The kernel exercises what attention kernels need from the GPU toolchain:
//! thread/block ids, global loads and stores through `memref<?xf32>`,
//! workgroup (shared) memory, and `gpu.barrier`. It is lowered with MLIR's
//! `gpu-lower-to-nvvm-pipeline` with `cubin-format=isa`, which serialises
//! the NVVM module to PTX text through LLVM's NVPTX back end; no CUDA
//! toolkit or `ptxas` is involved.
//!
//! Kernel ABI note: each `memref<?xf32>` argument becomes 5 kernel
//! parameters (allocated pointer, aligned pointer, offset, size, stride).

use melior::{
    ir::{
        attribute::ArrayAttribute,
        operation::{OperationLike, WalkOrder, WalkResult},
        Module,
    },
    Context,
};

use crate::{
    context::{new_context, parse_module, run_pipeline, verify_module},
    MlirError,
};

/// Name of the smoke kernel (the PTX `.entry` symbol).
pub const SMOKE_KERNEL_NAME: &str = "rotate_sum";

/// Threads per block the smoke kernel must be launched with (the size of its
/// workgroup buffer).
pub const SMOKE_THREADS_PER_BLOCK: usize = 256;

/// The smoke kernel: `out[g] = in[g] + in[block*256 + (tid+1) % 256]`, where
/// the neighbour is read from workgroup memory after a barrier. Launch with
/// 256 threads per block over a buffer whose length is a multiple of 256.
const SMOKE_GPU_MLIR: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @tdl_smoke {
    gpu.func @rotate_sum(%in: memref<?xf32>, %out: memref<?xf32>)
        workgroup(%tile: memref<256xf32, #gpu.address_space<workgroup>>) kernel {
      %c1 = arith.constant 1 : index
      %c256 = arith.constant 256 : index
      %tid = gpu.thread_id x
      %bid = gpu.block_id x
      %base = arith.muli %bid, %c256 : index
      %g = arith.addi %base, %tid : index
      %v = memref.load %in[%g] : memref<?xf32>
      memref.store %v, %tile[%tid] : memref<256xf32, #gpu.address_space<workgroup>>
      gpu.barrier
      %t1 = arith.addi %tid, %c1 : index
      %nb = arith.remui %t1, %c256 : index
      %w = memref.load %tile[%nb] : memref<256xf32, #gpu.address_space<workgroup>>
      %s = arith.addf %v, %w : f32
      memref.store %s, %out[%g] : memref<?xf32>
      gpu.return
    }
  }
}
"#;

/// Checks that `chip` is a CUDA SM name: `sm_` + digits, optionally
/// followed by `a` or `f` (e.g. `sm_80`, `sm_90a`). Rejecting anything else
/// also keeps the name from injecting options into the pass pipeline.
pub fn validate_chip(chip: &str) -> Result<(), MlirError> {
    let digits = chip.strip_prefix("sm_").map(|rest| rest.strip_suffix(['a', 'f']).unwrap_or(rest));
    match digits {
        Some(d) if (2..=4).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(MlirError::InvalidChip(chip.to_string())),
    }
}

/// The in-process NVVM lowering pipeline for `chip`, producing PTX text
/// (`cubin-format=isa`, PTX ISA 8.0, `-O3`).
pub fn nvvm_pipeline(chip: &str) -> Result<String, MlirError> {
    validate_chip(chip)?;
    Ok(format!(
        "builtin.module(gpu-lower-to-nvvm-pipeline{{cubin-format=isa cubin-chip={chip} \
         cubin-features=+ptx80 opt-level=3}})"
    ))
}

/// Parses and verifies the smoke GPU module (before lowering).
pub fn smoke_gpu_module(context: &Context) -> Result<Module<'_>, MlirError> {
    let module = parse_module(context, SMOKE_GPU_MLIR)?;
    verify_module(&module)?;
    Ok(module)
}

/// Returns the PTX text of the first GPU object in `module`, i.e. of the
/// `gpu.binary` that `gpu-module-to-binary` left in place of a `gpu.module`.
pub fn extract_ptx(module: &Module) -> Result<String, MlirError> {
    let mut found: Option<Result<String, MlirError>> = None;
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        if op.name().as_string_ref().as_str() != Ok("gpu.binary") {
            return WalkResult::Advance;
        }
        found = Some(gpu_binary_text(&op));
        WalkResult::Interrupt
    });
    found.unwrap_or_else(|| Err(MlirError::NoGpuObject("no gpu.binary operation".into())))
}

fn gpu_binary_text<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>) -> Result<String, MlirError> {
    let objects =
        op.attribute("objects").map_err(|e| MlirError::NoGpuObject(format!("gpu.binary has no `objects`: {e}")))?;
    let objects = ArrayAttribute::try_from(objects)
        .map_err(|e| MlirError::NoGpuObject(format!("`objects` is not an array: {e}")))?;
    let object = objects.element(0).map_err(|_| MlirError::NoGpuObject("gpu.binary has no objects".into()))?;
    let raw = melior::ir::attribute::AttributeLike::to_raw(&object);
    // SAFETY: `raw` is a live attribute of this context; the GPU object
    // accessor is only called after checking that it is a #gpu.object.
    let text = unsafe {
        if !mlir_sys::mlirAttributeIsAGPUObjectAttr(raw) {
            return Err(MlirError::NoGpuObject("first object is not a #gpu.object".into()));
        }
        let s = mlir_sys::mlirGPUObjectAttrGetObject(raw);
        if s.data.is_null() || s.length == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(s.data.cast::<u8>(), s.length).to_vec()
        }
    };
    if text.is_empty() {
        return Err(MlirError::NoGpuObject("GPU object is empty".into()));
    }
    Ok(String::from_utf8(text)?)
}

/// Builds the smoke kernel (workgroup memory + `gpu.barrier`), lowers it in
/// process for `chip` (e.g. `"sm_90"`, `"sm_80"`) and returns the PTX text.
pub fn smoke_gpu_ptx(chip: &str) -> Result<String, MlirError> {
    let pipeline = nvvm_pipeline(chip)?;
    let context = new_context();
    let mut module = smoke_gpu_module(&context)?;
    run_pipeline(&mut module, &pipeline)?;
    extract_ptx(&module)
}
