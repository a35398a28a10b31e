//! Context creation, diagnostics capture, parsing, verification and pass
//! pipelines: the plumbing every MLIR step of the backend goes through.

use std::sync::{Arc, Mutex};

use melior::{
    diagnostic::DiagnosticHandlerId,
    dialect::DialectRegistry,
    ir::{operation::OperationLike, Module},
    pass::PassManager,
    utility::{parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes},
    Context,
};

use crate::MlirError;

/// Creates an MLIR context with all upstream dialects loaded, all LLVM IR
/// translations registered (needed by the JIT and by NVVM serialisation),
/// and all passes registered (needed to parse pipelines by name, e.g.
/// `gpu-lower-to-nvvm-pipeline`; registration is process-wide and guarded by
/// a `Once` inside melior).
pub fn new_context() -> Context {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    register_all_llvm_translations(&context);
    register_all_passes();
    context
}

/// Captures the diagnostics a context emits while it is alive, instead of
/// letting MLIR print them to stderr. Detaches itself on drop.
pub struct DiagnosticCollector<'c> {
    context: &'c Context,
    id: Option<DiagnosticHandlerId>,
    messages: Arc<Mutex<Vec<String>>>,
}

impl<'c> DiagnosticCollector<'c> {
    /// Starts collecting the diagnostics of `context`.
    pub fn attach(context: &'c Context) -> Self {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        let id = context.attach_diagnostic_handler(move |diagnostic| {
            let mut text = format!("{}: {}", diagnostic.location(), diagnostic);
            for i in 0..diagnostic.note_count() {
                if let Ok(note) = diagnostic.note(i) {
                    text.push_str(&format!("\n  note: {}: {}", note.location(), note));
                }
            }
            if let Ok(mut messages) = sink.lock() {
                messages.push(text);
            }
            true // handled: do not also print to stderr
        });
        Self { context, id: Some(id), messages }
    }

    /// Removes and returns the diagnostics collected so far.
    pub fn take(&self) -> Vec<String> {
        match self.messages.lock() {
            Ok(mut messages) => std::mem::take(&mut *messages),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl Drop for DiagnosticCollector<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.context.detach_diagnostic_handler(id);
        }
    }
}

impl std::fmt::Debug for DiagnosticCollector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiagnosticCollector").finish_non_exhaustive()
    }
}

/// Parses MLIR text into a module, reporting parser diagnostics on failure.
pub fn parse_module<'c>(context: &'c Context, source: &str) -> Result<Module<'c>, MlirError> {
    let collector = DiagnosticCollector::attach(context);
    Module::parse(context, source).ok_or_else(|| MlirError::Parse { diagnostics: collector.take() })
}

/// Verifies a module, reporting the verifier's diagnostics on failure.
pub fn verify_module(module: &Module) -> Result<(), MlirError> {
    let context = module.context();
    // SAFETY: the reference does not outlive `module`, which borrows the context.
    let collector = DiagnosticCollector::attach(unsafe { context.to_ref() });
    if module.as_operation().verify() {
        Ok(())
    } else {
        Err(MlirError::Verify { diagnostics: collector.take() })
    }
}

/// Parses `pipeline` (a textual pass pipeline anchored on the module, e.g.
/// `builtin.module(canonicalize,cse)`) and runs it on `module`, with the
/// verifier enabled between passes.
pub fn run_pipeline(module: &mut Module, pipeline: &str) -> Result<(), MlirError> {
    let context = module.context();
    // SAFETY: the reference does not outlive `module`, which borrows the context.
    let context = unsafe { context.to_ref() };
    let collector = DiagnosticCollector::attach(context);
    let pass_manager = PassManager::new(context);
    pass_manager.enable_verifier(true);
    parse_pass_pipeline(pass_manager.as_operation_pass_manager(), pipeline).map_err(|e| {
        let mut message = e.to_string();
        for d in collector.take() {
            message.push('\n');
            message.push_str(&d);
        }
        MlirError::PipelineParse { pipeline: pipeline.to_string(), message }
    })?;
    pass_manager
        .run(module)
        .map_err(|_| MlirError::PipelineRun { pipeline: pipeline.to_string(), diagnostics: collector.take() })
}
