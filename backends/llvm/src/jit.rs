//! What every compiled kernel shares: parsing generated LLVM IR text,
//! optimising it for the host, JIT-compiling it and looking up its entry
//! point, and running work items on worker threads.

use std::mem::ManuallyDrop;

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::OptimizationLevel;

use crate::{HostTarget, LlvmError};

pub(crate) use tdl_rt::pool::run_parallel;

const PIPELINE: &str = "default<O3>";

/// Parses `text` into a module for the host, verifies it and runs the O3
/// pipeline with loop and SLP vectorisation and unrolling on.
pub(crate) fn optimised_module<'ctx>(
    ctx: &'ctx Context,
    text: &str,
    name: &str,
    host: &HostTarget,
) -> Result<Module<'ctx>, LlvmError> {
    let tm = host.target_machine(OptimizationLevel::Aggressive)?;
    let buf = MemoryBuffer::create_from_memory_range_copy(text.as_bytes(), name);
    let module = ctx.create_module_from_ir(buf).map_err(|e| LlvmError::Verify(e.to_string()))?;
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module.verify().map_err(|e| LlvmError::Verify(e.to_string()))?;
    let options = PassBuilderOptions::create();
    options.set_loop_vectorization(true);
    options.set_loop_slp_vectorization(true);
    options.set_loop_unrolling(true);
    module
        .run_passes(PIPELINE, &tm, options)
        .map_err(|m| LlvmError::Passes { pipeline: PIPELINE.to_string(), message: m.to_string() })?;
    Ok(module)
}

/// `text` optimised for the host, printed as LLVM IR or (`asm`) as the
/// host's assembly.
pub(crate) fn emit_text(text: &str, name: &str, host: &HostTarget, asm: bool) -> Result<String, LlvmError> {
    let ctx = Context::create();
    let module = optimised_module(&ctx, text, name, host)?;
    if !asm {
        return Ok(module.print_to_string().to_string());
    }
    let tm = host.target_machine(OptimizationLevel::Aggressive)?;
    let buf = tm
        .write_to_memory_buffer(&module, inkwell::targets::FileType::Assembly)
        .map_err(|e| LlvmError::Internal(format!("cannot write assembly: {e}")))?;
    Ok(String::from_utf8_lossy(buf.as_slice()).into_owned())
}

/// The JIT engine of `module` and the address of its function `name`
/// (valid while the engine lives).
pub(crate) fn jit<'ctx>(module: &Module<'ctx>, name: &str) -> Result<(ExecutionEngine<'ctx>, usize), LlvmError> {
    let engine =
        module.create_jit_execution_engine(OptimizationLevel::Aggressive).map_err(|m| LlvmError::Jit(m.to_string()))?;
    let addr =
        engine.get_function_address(name).map_err(|source| LlvmError::JitLookup { name: name.to_string(), source })?;
    if addr == 0 {
        return Err(LlvmError::Internal(format!("the JIT gave a null address for `{name}`")));
    }
    Ok((engine, addr))
}

/// A JIT-compiled module that owns its LLVM context: the machine code of
/// `addr` stays valid as long as the value lives, so compiled kernels can be
/// cached and called many times (from any thread).
pub(crate) struct Jitted {
    // Dropped explicitly, in this order, before `_ctx` (see `Drop`).
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    module: ManuallyDrop<Module<'static>>,
    _ctx: Box<Context>,
    /// The entry point's address.
    pub(crate) addr: usize,
}

// SAFETY: the context, module and engine are only touched when the value
// is created and dropped, never concurrently (no clone of the engine
// escapes `compile`); the machine code is immutable and callable from any
// thread.
unsafe impl Send for Jitted {}
unsafe impl Sync for Jitted {}

impl Jitted {
    /// Parses, optimises and JIT-compiles `text`; `entry` is the function
    /// whose address [`Jitted::addr`] holds.
    pub(crate) fn compile(text: &str, name: &str, entry: &str, host: &HostTarget) -> Result<Jitted, LlvmError> {
        let ctx = Box::new(Context::create());
        // SAFETY: the context is boxed, so its address is stable, and it is
        // dropped after the module and the engine that borrow it (`Drop`).
        let c: &'static Context = unsafe { &*(ctx.as_ref() as *const Context) };
        let module = optimised_module(c, text, name, host)?;
        let (engine, addr) = jit(&module, entry)?;
        Ok(Jitted { engine: ManuallyDrop::new(engine), module: ManuallyDrop::new(module), _ctx: ctx, addr })
    }
}

impl Drop for Jitted {
    fn drop(&mut self) {
        // SAFETY: each is dropped once, here, before the context.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            ManuallyDrop::drop(&mut self.module);
        }
    }
}
