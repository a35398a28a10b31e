//! Host target detection and target-machine creation.
//!
//! The CPU backend compiles for the machine it runs on: [`HostTarget::detect`]
//! asks LLVM for the host triple, CPU name and feature string, and derives the
//! preferred SIMD width from the features. [`HostTarget::function_attributes`]
//! gives the attributes every generated function should carry so that LLVM's
//! optimiser and code generator use that width (without
//! `"prefer-vector-width"="512"`, O3 picks 256-bit vectors even on AVX-512).

use std::sync::OnceLock;

use inkwell::{
    targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple},
    OptimizationLevel,
};

use crate::LlvmError;

/// Initialises LLVM's native target (target info, MC layer, asm printer and
/// parser) exactly once per process. Safe to call from any thread, any
/// number of times.
pub fn init_native_target() -> Result<(), LlvmError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| Target::initialize_native(&InitializationConfig::default()))
        .clone()
        .map_err(LlvmError::TargetInit)
}

/// The machine we compile for: the host, as LLVM sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTarget {
    /// LLVM target triple, e.g. `x86_64-pc-linux-gnu`.
    pub triple: String,
    /// LLVM CPU name, e.g. `sapphirerapids`, `znver4`.
    pub cpu: String,
    /// LLVM feature string, e.g. `+avx512f,+avx2,-amx-tile,...`.
    pub features: String,
    /// Preferred SIMD width in bits: 512 with AVX-512F, 256 with AVX2, else 128.
    pub vector_width_bits: u32,
}

impl HostTarget {
    /// Detects the host triple, CPU and features through LLVM.
    pub fn detect() -> Result<Self, LlvmError> {
        init_native_target()?;
        let triple = TargetMachine::get_default_triple().as_str().to_string_lossy().into_owned();
        let cpu = TargetMachine::get_host_cpu_name().to_string();
        let features = TargetMachine::get_host_cpu_features().to_string();
        let vector_width_bits = vector_width_for_features(&features);
        Ok(Self { triple, cpu, features, vector_width_bits })
    }

    /// The preferred SIMD width (bits) for an LLVM feature string:
    /// 512 if it enables `avx512f`, 256 if `avx2`, else 128.
    pub fn vector_width_for_features(features: &str) -> u32 {
        vector_width_for_features(features)
    }

    /// Whether the feature string enables `feature` (given without the `+`).
    pub fn has_feature(&self, feature: &str) -> bool {
        has_feature(&self.features, feature)
    }

    /// Number of `f32` lanes in one preferred vector.
    pub fn f32_lanes(&self) -> u32 {
        self.vector_width_bits / 32
    }

    /// The function attributes (key, value) every generated function should
    /// carry: `target-cpu`, `target-features` and `prefer-vector-width`.
    pub fn function_attributes(&self) -> [(&'static str, String); 3] {
        [
            ("target-cpu", self.cpu.clone()),
            ("target-features", self.features.clone()),
            ("prefer-vector-width", self.vector_width_bits.to_string()),
        ]
    }

    /// Creates an LLVM target machine for this target at the given
    /// optimisation level (position-independent code, default code model).
    pub fn target_machine(&self, level: OptimizationLevel) -> Result<TargetMachine, LlvmError> {
        init_native_target()?;
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple)
            .map_err(|m| LlvmError::UnknownTarget { triple: self.triple.clone(), message: m.to_string() })?;
        target
            .create_target_machine(&triple, &self.cpu, &self.features, level, RelocMode::PIC, CodeModel::Default)
            .ok_or_else(|| LlvmError::TargetMachine { triple: self.triple.clone(), cpu: self.cpu.clone() })
    }
}

fn has_feature(features: &str, feature: &str) -> bool {
    features.split(',').any(|f| f.strip_prefix('+') == Some(feature))
}

fn vector_width_for_features(features: &str) -> u32 {
    if has_feature(features, "avx512f") {
        512
    } else if has_feature(features, "avx2") {
        256
    } else {
        128
    }
}
