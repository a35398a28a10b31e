//! Toolchain smoke kernel: `y[i] = a * x[i] + y[i]` over a runtime length.
//!
//! This is the smallest kernel that exercises every step the CPU backend
//! needs: building IR with inkwell (loop, phi, GEP, loads/stores), host
//! function attributes, `noalias` parameters, the `default<O3>` pipeline for
//! the host target machine (which must vectorise the loop), and MCJIT.
//!
//! Generated signature (C ABI):
//! `void tdl_smoke_axpy(float a, const float *noalias x, float *noalias y, int64_t n)`.

use inkwell::{
    attributes::{Attribute, AttributeLoc},
    context::Context,
    module::{Linkage, Module},
    passes::PassBuilderOptions,
    targets::TargetMachine,
    AddressSpace, IntPredicate, OptimizationLevel,
};

use crate::{HostTarget, LlvmError};

/// Symbol name of the generated axpy function.
pub const AXPY_FN_NAME: &str = "tdl_smoke_axpy";

/// The optimisation pipeline used for the smoke kernel.
const PIPELINE: &str = "default<O3>";

type AxpyFn = unsafe extern "C" fn(f32, *const f32, *mut f32, i64);

/// A value-less enum attribute by name. Unknown names are an error: LLVM
/// returns kind 0 for them, and an attribute of kind 0 crashes the verifier
/// (e.g. `nocapture`, which LLVM 21 replaced by `captures(none)`).
fn enum_attribute(ctx: &Context, name: &str) -> Result<Attribute, LlvmError> {
    match Attribute::get_named_enum_kind_id(name) {
        0 => Err(LlvmError::Internal(format!("unknown LLVM enum attribute `{name}`"))),
        kind => Ok(ctx.create_enum_attribute(kind, 0)),
    }
}

/// Builds the axpy function into a fresh module targeted at `host`,
/// verifies it, and optimises it with `default<O3>` for `tm`.
fn build_optimised_axpy<'ctx>(
    ctx: &'ctx Context,
    host: &HostTarget,
    tm: &TargetMachine,
) -> Result<Module<'ctx>, LlvmError> {
    let module = ctx.create_module("tdl_smoke_axpy");
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());

    let f32t = ctx.f32_type();
    let i64t = ctx.i64_type();
    let ptrt = ctx.ptr_type(AddressSpace::default());
    let fn_type = ctx.void_type().fn_type(&[f32t.into(), ptrt.into(), ptrt.into(), i64t.into()], false);
    let function = module.add_function(AXPY_FN_NAME, fn_type, Some(Linkage::External));

    for (key, value) in host.function_attributes() {
        function.add_attribute(AttributeLoc::Function, ctx.create_string_attribute(key, &value));
    }
    function.add_attribute(AttributeLoc::Function, enum_attribute(ctx, "nounwind")?);
    for param in [1u32, 2] {
        function.add_attribute(AttributeLoc::Param(param), enum_attribute(ctx, "noalias")?);
    }

    let param =
        |i: u32| function.get_nth_param(i).ok_or_else(|| LlvmError::Internal(format!("axpy has no parameter {i}")));
    let a = param(0)?.into_float_value();
    let x = param(1)?.into_pointer_value();
    let y = param(2)?.into_pointer_value();
    let n = param(3)?.into_int_value();
    a.set_name("a");
    x.set_name("x");
    y.set_name("y");
    n.set_name("n");

    let entry = ctx.append_basic_block(function, "entry");
    let body = ctx.append_basic_block(function, "loop");
    let exit = ctx.append_basic_block(function, "exit");
    let b = ctx.create_builder();

    b.position_at_end(entry);
    let zero = i64t.const_zero();
    let nonempty = b.build_int_compare(IntPredicate::SGT, n, zero, "nonempty")?;
    b.build_conditional_branch(nonempty, body, exit)?;

    b.position_at_end(body);
    let i = b.build_phi(i64t, "i")?;
    let i_val = i.as_basic_value().into_int_value();
    // SAFETY (of the IR, not of Rust): 0 <= i < n, and the caller passes
    // buffers of n elements, so both GEPs stay in bounds.
    let px = unsafe { b.build_in_bounds_gep(f32t, x, &[i_val], "px")? };
    let py = unsafe { b.build_in_bounds_gep(f32t, y, &[i_val], "py")? };
    let xv = b.build_load(f32t, px, "xv")?.into_float_value();
    let yv = b.build_load(f32t, py, "yv")?.into_float_value();
    let ax = b.build_float_mul(a, xv, "ax")?;
    let sum = b.build_float_add(ax, yv, "sum")?;
    b.build_store(py, sum)?;
    let next = b.build_int_nsw_add(i_val, i64t.const_int(1, false), "next")?;
    let done = b.build_int_compare(IntPredicate::EQ, next, n, "done")?;
    b.build_conditional_branch(done, exit, body)?;
    i.add_incoming(&[(&zero, entry), (&next, body)]);

    b.position_at_end(exit);
    b.build_return(None)?;

    module.verify().map_err(|m| LlvmError::Verify(m.to_string()))?;

    let options = PassBuilderOptions::create();
    options.set_loop_vectorization(true);
    options.set_loop_slp_vectorization(true);
    options.set_loop_unrolling(true);
    module
        .run_passes(PIPELINE, tm, options)
        .map_err(|m| LlvmError::Passes { pipeline: PIPELINE.to_string(), message: m.to_string() })?;
    Ok(module)
}

/// Returns the optimised (`default<O3>`) LLVM IR text of the smoke axpy
/// kernel, compiled for `host`. On an AVX-512 host the loop body uses
/// `<16 x float>`, on AVX2 `<8 x float>`.
pub fn smoke_ir_text(host: &HostTarget) -> Result<String, LlvmError> {
    let tm = host.target_machine(OptimizationLevel::Aggressive)?;
    let ctx = Context::create();
    let module = build_optimised_axpy(&ctx, host, &tm)?;
    Ok(module.print_to_string().to_string())
}

/// Computes `y[i] = a * x[i] + y[i]` with the smoke kernel, compiled for the
/// host at O3 and run through MCJIT. `x` and `y` must have the same length.
///
/// The result is bit-identical to the plain Rust loop: the IR uses separate
/// `fmul`/`fadd` without fast-math flags, so LLVM may not contract them into
/// an FMA.
pub fn smoke_axpy_jit(a: f32, x: &[f32], y: &mut [f32]) -> Result<(), LlvmError> {
    if x.len() != y.len() {
        return Err(LlvmError::LengthMismatch { x: x.len(), y: y.len() });
    }
    let n = i64::try_from(x.len()).map_err(|_| LlvmError::TooLong(x.len()))?;

    let host = HostTarget::detect()?;
    let tm = host.target_machine(OptimizationLevel::Aggressive)?;
    let ctx = Context::create();
    let module = build_optimised_axpy(&ctx, &host, &tm)?;
    let engine =
        module.create_jit_execution_engine(OptimizationLevel::Aggressive).map_err(|m| LlvmError::Jit(m.to_string()))?;
    // SAFETY: the function was generated above with exactly this signature.
    let axpy = unsafe { engine.get_function::<AxpyFn>(AXPY_FN_NAME) }
        .map_err(|source| LlvmError::JitLookup { name: AXPY_FN_NAME.to_string(), source })?;
    // SAFETY: x and y are valid for n elements, y is writable, and they do not
    // overlap (a shared and a unique borrow), as the noalias params require.
    unsafe { axpy.call(a, x.as_ptr(), y.as_mut_ptr(), n) };
    Ok(())
}
