//! Row kernels (in progress).
use tdl_kernel::interp::RowArgs;
use tdl_kernel::ir::{ReduceKernel, RowKernel};

use crate::launch::LaunchPlan;
use crate::MlirError;

pub fn plan_reduce<'a>(_k: &ReduceKernel, _args: &RowArgs<'a>) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    Ok(None)
}

pub fn plan_row<'a>(_k: &RowKernel, _args: &RowArgs<'a>) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    Ok(None)
}

pub(crate) fn ir_reduce_func(
    _p: &tdl_kernel::ir::KernelProgram,
    _k: &ReduceKernel,
    _fname: &str,
) -> Result<(String, String), MlirError> {
    Err(MlirError::Unsupported("reduce in the GPU code generator".into()))
}

pub(crate) fn ir_row_func(
    _p: &tdl_kernel::ir::KernelProgram,
    _k: &RowKernel,
    _fname: &str,
) -> Result<(String, String), MlirError> {
    Err(MlirError::Unsupported("row kernels in the GPU code generator".into()))
}
