//! The lambda language ([`tdl_ir::ScalarExpr`]) as the reference evaluates
//! it: the shared evaluator `tdl_ir::eval`, in `f64`, with errors as
//! [`RunError`]s.

use tdl_ir::ScalarExpr;

pub use tdl_ir::eval::{float_mod, int_div, int_mod, ArrayView};

use crate::error::RunError;
use crate::tensor::Tensor;

/// A value of the lambda language, with `f64` floats.
pub type Val = tdl_ir::eval::Val<f64>;

/// What a lambda sees (see `tdl_ir::eval::Env`), with `f64` scores.
pub(crate) type Env<'a> = tdl_ir::eval::Env<'a, f64>;

/// Evaluates `e` in `env`.
pub(crate) fn eval(e: &ScalarExpr, env: &Env) -> Result<Val, RunError> {
    tdl_ir::eval::eval(e, env).map_err(RunError::Eval)
}

/// A tensor as a lambda operand.
pub(crate) fn view(t: &Tensor) -> ArrayView<'_> {
    ArrayView { dtype: t.dtype, shape: &t.shape, data: &t.data }
}
