//! `tdl-ir`: the intermediate representations every other tdlc crate shares.
//!
//! * [`types`]: element types, symbolic dimensions ([`Dim`]) and value types.
//! * [`mask`]: mask expressions ([`MaskExpr`]) and the scalar index-lambda
//!   language ([`ScalarExpr`]) used by masks and score modifiers.
//! * [`op`]: the operators of the typed dataflow graph.
//! * [`graph`]: the [`Graph`] itself (petgraph underneath, [`NodeId`] on top)
//!   and [`Module`], a file's worth of graphs.
//! * [`verify()`]: the verifier; [`VerifiedGraph`] is the proof lowering and
//!   backends take.
//! * [`text`]: the text form; every graph prints and re-parses to itself.
//!
//! **Architecture Invariant:** `ir` knows nothing about `.tdl` source syntax,
//! logos, inkwell or melior. Spans are carried as plain byte ranges so errors
//! found late can still point at the source line.

pub mod eval;
pub mod graph;
pub mod infer;
pub mod layout;
pub mod mask;
pub mod op;
pub mod span;
pub mod text;
pub mod types;
pub mod verify;

pub use graph::{Graph, Module, Node, NodeId, Param};
pub use mask::{ArrayRef, ConstValue, LambdaVar, MaskExpr, ScalarBinary, ScalarExpr, ScalarUnary};
pub use op::{BinaryOp, Op, ReduceOp, UnaryOp};
pub use span::Span;
pub use types::{Bindings, DType, Dim, DimError, TensorType, Type};
pub use verify::{verify, VerifiedGraph, VerifyError};
