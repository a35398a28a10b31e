//! Elementwise kernels (in progress).
use tdl_kernel::interp::ElementwiseArgs;
use tdl_kernel::ir::ElementwiseKernel;

use crate::launch::LaunchPlan;
use crate::MlirError;

pub fn plan_elementwise<'a>(
    _k: &ElementwiseKernel,
    _args: &ElementwiseArgs<'a>,
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    Ok(None)
}

pub(crate) fn ir_func(
    _p: &tdl_kernel::ir::KernelProgram,
    k: &impl std::fmt::Debug,
    _fname: &str,
) -> Result<(String, String), MlirError> {
    let _ = k;
    Err(MlirError::Unsupported("this kind in the GPU code generator".into()))
}
