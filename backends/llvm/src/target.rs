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

    /// The host with `--target-cpu` / `--target-features` applied, as rustc
    /// applies `-C target-cpu` / `-C target-feature`:
    ///
    /// * `cpu`: an LLVM CPU name (`znver3`, `skylake-avx512`, `x86-64`,
    ///   `x86-64-v3`, …) or `native` (the host's). Another CPU starts from
    ///   that CPU's own features (none of the host's); LLVM warns on stderr
    ///   about a name it does not know and falls back to a generic CPU.
    /// * `features`: comma-separated `+feature` / `-feature`, applied on top
    ///   (the last mention of a feature wins).
    ///
    /// The vector width follows the resulting features (512 with `avx512f`,
    /// 256 with `avx2`, else 128); for a named CPU without explicit vector
    /// features it is read from the CPU's name (AVX-512 and AVX2 families).
    pub fn with_overrides(&self, cpu: Option<&str>, features: Option<&str>) -> Result<HostTarget, LlvmError> {
        let mut t = self.clone();
        if let Some(c) = cpu {
            let ok = !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
            if !ok {
                return Err(LlvmError::InvalidTarget(format!(
                    "--target-cpu `{c}`: expected an LLVM CPU name such as znver3, skylake-avx512, x86-64-v3 or native"
                )));
            }
            if c != "native" {
                t.cpu = c.to_string();
                t.features = String::new();
            }
        }
        if let Some(f) = features {
            for item in f.split(',').filter(|x| !x.trim().is_empty()) {
                let item = item.trim();
                let name = item.strip_prefix('+').or_else(|| item.strip_prefix('-')).unwrap_or("");
                if name.is_empty() || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
                    return Err(LlvmError::InvalidTarget(format!(
                        "--target-features `{item}`: expected +feature or -feature (e.g. +avx2,-avx512f)"
                    )));
                }
                if !t.features.is_empty() {
                    t.features.push(',');
                }
                t.features.push_str(item);
            }
        }
        t.vector_width_bits = if t.cpu == self.cpu && cpu.is_none_or(|c| c == "native") {
            vector_width_for_features(&t.features)
        } else {
            // The named CPU's family, then each explicit feature in order.
            t.features.split(',').map(str::trim).fold(vector_width_for_cpu(&t.cpu), |w, f| match f {
                "+avx512f" => 512,
                "-avx512f" => w.min(256),
                "+avx2" => w.max(256),
                "-avx2" | "-avx" => 128,
                _ => w,
            })
        };
        Ok(t)
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

/// Whether `feature` is on: its last mention in the list is `+feature`.
fn has_feature(features: &str, feature: &str) -> bool {
    features
        .split(',')
        .filter_map(|f| {
            let f = f.trim();
            f.strip_prefix('+').map(|n| (n, true)).or_else(|| f.strip_prefix('-').map(|n| (n, false)))
        })
        .rfind(|(n, _)| *n == feature)
        .is_some_and(|(_, on)| on)
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

/// The vector width of a named x86 CPU's family: AVX-512 parts 512, AVX2
/// parts 256, the rest 128 (when unsure, the narrower).
fn vector_width_for_cpu(cpu: &str) -> u32 {
    const AVX512: [&str; 12] = [
        "x86-64-v4",
        "skylake-avx512",
        "cascadelake",
        "cooperlake",
        "cannonlake",
        "icelake-client",
        "icelake-server",
        "tigerlake",
        "rocketlake",
        "sapphirerapids",
        "znver4",
        "znver5",
    ];
    const AVX2: [&str; 11] = [
        "x86-64-v3",
        "haswell",
        "broadwell",
        "skylake",
        "alderlake",
        "raptorlake",
        "meteorlake",
        "znver1",
        "znver2",
        "znver3",
        "arrowlake",
    ];
    if AVX512.contains(&cpu) || cpu.starts_with("graniterapids") || cpu.starts_with("emeraldrapids") {
        512
    } else if AVX2.contains(&cpu) {
        256
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostTarget {
        HostTarget {
            triple: "x86_64-unknown-linux-gnu".into(),
            cpu: "znver3".into(),
            features: "+avx2,+fma,+sse4.2,-avx512f".into(),
            vector_width_bits: 256,
        }
    }

    #[test]
    fn overrides_follow_rustc() {
        let h = host();
        assert_eq!(h.with_overrides(None, None).unwrap(), h);
        assert_eq!(h.with_overrides(Some("native"), None).unwrap(), h);
        let sse = h.with_overrides(None, Some("-avx2,-avx,-fma")).unwrap();
        assert_eq!(sse.cpu, "znver3");
        assert_eq!(sse.features, "+avx2,+fma,+sse4.2,-avx512f,-avx2,-avx,-fma");
        assert_eq!(sse.vector_width_bits, 128);
        assert!(!sse.has_feature("avx2") && sse.has_feature("sse4.2"));
        let v4 = h.with_overrides(Some("x86-64-v4"), None).unwrap();
        assert_eq!((v4.features.as_str(), v4.vector_width_bits), ("", 512));
        let skx = h.with_overrides(Some("skylake-avx512"), Some("-avx512f")).unwrap();
        assert_eq!(skx.vector_width_bits, 256);
        let generic = h.with_overrides(Some("x86-64"), None).unwrap();
        assert_eq!(generic.vector_width_bits, 128);
        let wide = h.with_overrides(Some("x86-64"), Some("+avx512f")).unwrap();
        assert_eq!(wide.vector_width_bits, 512);
    }

    #[test]
    fn malformed_overrides_are_errors() {
        let h = host();
        for (cpu, f) in
            [(Some(""), None), (Some("zn ver3"), None), (None, Some("avx2")), (None, Some("+")), (None, Some("+a;b"))]
        {
            let e = h.with_overrides(cpu, f).expect_err("refused");
            assert!(e.to_string().contains("--target-"), "{e}");
        }
    }
}
