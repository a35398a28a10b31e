//! Compile once: a cache of JIT-compiled kernels keyed by their generated
//! LLVM IR text (which spells out everything the code depends on: the
//! kernel's specialisation and the host's CPU and features), so running a
//! program again — a benchmark's repetitions, the same kernel shape twice
//! in one program — reuses the machine code.
//!
//! Each entry is a [`Jitted`] (it owns its LLVM context, module and MCJIT
//! engine). The cache
//! holds at most [`KernelCache::CAPACITY`] entries and evicts the oldest;
//! callers hold an `Arc` to the entry they run, so eviction never frees
//! code that is running.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tdl_rt::rows::RopeTables;

use crate::jit::Jitted;
use crate::{HostTarget, LlvmError};

#[derive(Default)]
struct Entries {
    map: HashMap<String, Arc<Jitted>>,
    order: VecDeque<String>,
}

/// The compiled kernels of one [`crate::cpu::CpuHooks`], and the last few
/// rope tables (computing one costs more than applying it).
#[derive(Default)]
pub struct KernelCache {
    entries: Mutex<Entries>,
    rope: RopeTables,
}

impl std::fmt::Debug for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCache").field("entries", &self.len()).finish()
    }
}

impl KernelCache {
    /// The most entries kept.
    pub const CAPACITY: usize = 256;

    pub fn new() -> KernelCache {
        KernelCache::default()
    }

    /// How many compiled kernels it holds.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or_else(|e| e.into_inner().map.len(), |e| e.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The compiled `text` (its function `entry`), compiling it on a miss.
    pub(crate) fn get(
        &self,
        text: &str,
        module_name: &str,
        entry: &str,
        host: &HostTarget,
    ) -> Result<Arc<Jitted>, LlvmError> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = e.map.get(text) {
            return Ok(c.clone());
        }
        let c = Arc::new(Jitted::compile(text, module_name, entry, host)?);
        while e.map.len() >= Self::CAPACITY {
            let Some(old) = e.order.pop_front() else { break };
            e.map.remove(&old);
        }
        e.map.insert(text.to_string(), c.clone());
        e.order.push_back(text.to_string());
        Ok(c)
    }

    /// The last few rope tables.
    pub(crate) fn rope_tables(&self) -> &RopeTables {
        &self.rope
    }
}
