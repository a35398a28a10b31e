//! A compiled function as the drivers of [`crate::elementwise`] and
//! [`crate::rows`] get it: its address and whatever keeps the machine code
//! alive. The JIT (`tdl_llvm`) hands out functions it compiles on demand
//! (kept alive by its cache entry); an artifact hands out the functions
//! compiled into it (alive as long as the library is loaded).

use std::any::Any;
use std::sync::Arc;

/// A compiled function: its address and what keeps its code alive.
#[derive(Clone)]
pub struct Code {
    addr: usize,
    _keep: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Code").field("addr", &format_args!("{:#x}", self.addr)).finish()
    }
}

impl Code {
    /// The function at `addr`, alive while `keep` is (or, with `None`, for
    /// as long as the caller uses it).
    ///
    /// # Safety
    /// `addr` must be a function with the signature and the specialisation
    /// of the request it answers (a [`crate::elementwise::LoopFn`] generated
    /// for that [`crate::elementwise::LoopSpec`], a [`crate::rows::RowFn`]
    /// generated for that [`crate::rows::RowCode`]), whose code stays valid
    /// while `keep` lives (or, without `keep`, while the driver runs it).
    pub unsafe fn new(addr: usize, keep: Option<Arc<dyn Any + Send + Sync>>) -> Code {
        Code { addr, _keep: keep }
    }

    /// The function's address.
    pub fn addr(&self) -> usize {
        self.addr
    }
}
