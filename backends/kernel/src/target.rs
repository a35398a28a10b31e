//! Target descriptions and the cost model that chooses tile sizes.
//!
//! A [`Target`] is either the CPU (usually the host, read from the machine by
//! [`Target::host`]) or a GPU preset ([`Target::gpu`]: `sm_80`, `sm_90`). The
//! lowering asks it for the tile sizes of attention and matmul kernels and
//! for the attention's [`KvSplit`]; [`resolve_kv_split`] turns a split into a
//! number of chunks once the sizes are bound.
//!
//! Every choice below is deterministic, at least 1, and never panics: zero
//! (unknown) cache sizes fall back to 32 KiB (L1d), 1 MiB (L2) and 8 MiB (L3),
//! a zero vector width to 128 bits, zero cores or SMs to 1, a zero element
//! size to 1 byte, and all costs are computed in `u128` so that no head
//! dimension overflows them.
//!
//! # Attention tiles ([`Target::attention_tiles`])
//!
//! The head dimensions are `d` (of Q and K) and `dv` (of V and the output);
//! `None` (a symbolic dimension) is taken as 128, `Some(0)` as 1.
//!
//! **CPU.** One step of the FlashAttention-2 loop, a `(q-tile, kv-tile)`
//! pair, touches (in `f32`, the compute type, so 4 bytes per element)
//!
//! ```text
//! ws(tq, tk) = 4 · (tq·d + tk·(d + dv) + tq·tk + tq·dv)   bytes
//!                   Q      K and V       S/P     O
//! ```
//!
//! and the pair must fit in half of L2 (the other half is left to the
//! streams of the next K/V tiles and everything else). Candidates are
//! `tile_q ∈ {16, 32, 64, 128}` × `tile_k ∈ {16, 32, 64, 128, 256}`,
//! restricted to multiples of the vector lanes (`vector_bits / 32`) when any
//! such pair fits (the candidates are multiples of 16, so this only bites for
//! vectors wider than 512 bits). Among the pairs that fit, the model takes the
//! one with the highest arithmetic intensity, flops per byte loaded from
//! memory in a step:
//!
//! ```text
//! flops = 2·tq·tk·d (S = Q·Kᵀ) + 2·tq·tk·dv (O += P·V)
//! bytes = tk·(d + dv)·elem_bytes (the K and V tiles; Q and O stay resident)
//! intensity = flops / bytes = 2·tq / elem_bytes
//! ```
//!
//! The intensity only depends on `tile_q` (each K/V tile is reused by every
//! query row of the q-tile), so the choice is: the largest `tile_q` that fits
//! with some `tile_k`, then the largest `tile_k` that fits with it (ties go to
//! the larger `tile_k`, then the larger `tile_q`). `tile_k` is at most
//! `8 × lanes` (64 with AVX2, 128 with AVX-512): one row of the score tile
//! then stays in 8 vector registers while the CPU kernel's `Q·Kᵀ` update
//! streams the packed K tile (measured on this AVX2 machine, dense causal
//! H=8 D=64 T=1024, useful GFLOP/s: 128×64 73 and 64×64 80, against 128×128
//! 44 and 64×128 48). If no
//! pair fits (a huge head dimension or a tiny L2) the tiles are `(16, 16)`.
//!
//! For example with a 512 KiB L2 (budget 256 KiB = 65536 floats) and
//! 256-bit vectors: `d = dv = 64`, `d = dv = 128` (or symbolic) and
//! `d = dv = 1` all give `(128, 64)` (at `d = 128`: 57344 floats;
//! `tile_k = 128` would need 81920 anyway).
//!
//! **GPU.** One thread block owns a q-tile; Q stays in shared memory and the
//! K and V tiles are double-buffered (2 stages), all in the element type:
//!
//! ```text
//! smem(tq, tk) = elem_bytes · (tq·d + 2·tk·(d + dv))
//! ```
//!
//! Candidates are `tile_q ∈ {64, 128}` × `tile_k ∈ {32, 64, 128}`; among
//! those fitting the per-block shared memory the model maximises
//! `tile_q · tile_k` (work per block), ties going to the larger `tile_q`
//! (more reuse of each K/V tile). If none fits, `(64, 32)`, the smallest.
//! For `d = dv = 64` on `sm_90` (227 KiB) this is `(128, 128)` in both `f16`
//! (80 KiB) and `f32` (160 KiB); for `d = dv = 128` it is `(128, 128)` in
//! `f16` (160 KiB) and `(128, 64)` in `f32` (192 KiB).
//!
//! # Matmul tiles ([`Target::matmul_tiles`])
//!
//! **CPU.** `tile_m, tile_n ∈ {16, 32, 64, 128}`, `tile_k ∈ {32, 64, 128,
//! 256}`. The `f32` accumulator tile `C` (`4·tile_m·tile_n` bytes) must fit
//! in half of L1d (it is the register-blocked micro-tile's home), and the
//! A panel (`tile_m × tile_k`) plus the B panel (`tile_k × tile_n`), in the
//! element type, must fit in half of L2. `tile_n` is a multiple of the vector
//! lanes when possible. Among the fitting triples the model maximises the
//! panel's arithmetic intensity `2·m·n·k / (elem·k·(m + n))`, i.e.
//! `m·n / (m + n)`, ties going to the larger `tile_k`, then `tile_n`, then
//! `tile_m`; with nothing fitting, `(16, 16, 32)`. A 32 KiB L1d and 512 KiB
//! L2 give `(64, 64, 256)`.
//!
//! **GPU.** `(tile_m, tile_n) ∈ {128, 64}²` with `tile_k = 32`, the A and B
//! tiles double-buffered in shared memory (`2·elem·32·(m + n)` bytes),
//! maximising `m·n`, ties to the larger `tile_n`; with nothing fitting,
//! `(64, 64, 32)`. Both presets give `(128, 128, 32)`.
//!
//! # KV splits ([`Target::kv_split`], [`resolve_kv_split`])
//!
//! A target asks for [`KvSplit::Auto`] with its workers (cores, or SMs), at
//! most 16 splits on a CPU and 64 on a GPU, and at least 2 kv-tiles per
//! split; see [`resolve_kv_split`] for how it is resolved.

use crate::ir::KvSplit;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Fallback L1 data cache size, when unknown (zero or unreadable).
const FALLBACK_L1D: usize = 32 * KIB;
/// Fallback L2 cache size, when unknown.
const FALLBACK_L2: usize = MIB;
/// Fallback L3 cache size, when unknown.
const FALLBACK_L3: usize = 8 * MIB;
/// Fallback vector width in bits, when unknown.
const FALLBACK_VECTOR_BITS: usize = 128;
/// A symbolic head dimension is costed as this.
const SYMBOLIC_HEAD_DIM: usize = 128;

/// What kind of machine a [`Target`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// A multi-core CPU with SIMD vectors.
    Cpu(CpuInfo),
    /// An NVIDIA GPU.
    Gpu(GpuInfo),
}

/// A CPU: its caches, vector width and cores. Zero fields mean "unknown"
/// and fall back to the defaults of the module docs in the cost model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// L1 data cache per core, in bytes.
    pub l1d_bytes: usize,
    /// L2 cache, in bytes.
    pub l2_bytes: usize,
    /// L3 (last-level) cache, in bytes.
    pub l3_bytes: usize,
    /// The widest usable SIMD vector, in bits (128, 256, 512).
    pub vector_bits: usize,
    /// Hardware threads available to the process.
    pub cores: usize,
    /// A human-readable name, e.g. `"host x86_64 avx2+fma"`.
    pub name: String,
}

/// An NVIDIA GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// The compute capability, `sm_80` or `sm_90`.
    pub chip: String,
    /// Shared memory usable by one thread block (with the opt-in), in bytes.
    pub smem_bytes: usize,
    /// 32-bit registers per SM.
    pub regs_per_sm: usize,
    /// Streaming multiprocessors.
    pub sms: usize,
}

/// The machine a program is compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// CPU or GPU, with its parameters.
    pub kind: TargetKind,
}

/// The GPU presets: chip, description, shared memory per block, registers
/// per SM, SMs.
const GPU_PRESETS: &[(&str, &str, usize, usize, usize)] =
    &[("sm_80", "A100", 164 * KIB, 65536, 108), ("sm_90", "H100", 227 * KIB, 65536, 132)];

impl Target {
    /// The host CPU: cache sizes from
    /// `/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size}`
    /// (32 KiB / 1 MiB / 8 MiB where unreadable), the available parallelism
    /// (1 if unknown) and the widest vector the CPU supports (AVX-512: 512,
    /// AVX2: 256, otherwise 128 bits). Never panics.
    pub fn host() -> Target {
        let (l1d, l2, l3) = host_caches();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let (vector_bits, features) = host_vector();
        let name = if features.is_empty() {
            format!("host {}", std::env::consts::ARCH)
        } else {
            format!("host {} {}", std::env::consts::ARCH, features)
        };
        Target::cpu(CpuInfo {
            l1d_bytes: l1d.unwrap_or(FALLBACK_L1D),
            l2_bytes: l2.unwrap_or(FALLBACK_L2),
            l3_bytes: l3.unwrap_or(FALLBACK_L3),
            vector_bits,
            cores: cores.max(1),
            name,
        })
    }

    /// A CPU target with the given parameters.
    pub fn cpu(info: CpuInfo) -> Target {
        Target { kind: TargetKind::Cpu(info) }
    }

    /// A GPU preset: `sm_80` (A100: 164 KiB shared memory per block, 65536
    /// registers per SM, 108 SMs) or `sm_90` (H100: 227 KiB, 65536, 132).
    /// Any other chip is an error naming the known ones.
    pub fn gpu(chip: &str) -> Result<Target, String> {
        match GPU_PRESETS.iter().find(|p| p.0 == chip) {
            Some(&(chip, _, smem_bytes, regs_per_sm, sms)) => {
                Ok(Target { kind: TargetKind::Gpu(GpuInfo { chip: chip.to_string(), smem_bytes, regs_per_sm, sms }) })
            }
            None => {
                let known: Vec<String> = GPU_PRESETS.iter().map(|p| format!("{} ({})", p.0, p.1)).collect();
                Err(format!("unknown GPU chip `{chip}`; known chips: {}", known.join(", ")))
            }
        }
    }

    /// One deterministic line, e.g. `cpu host x86_64 avx2+fma: 2 cores,
    /// 256-bit vectors, L1d 32 KiB, L2 512 KiB, L3 32 MiB` or `gpu sm_90:
    /// 132 SMs, 227 KiB shared memory per block, 65536 registers per SM`.
    pub fn describe(&self) -> String {
        match &self.kind {
            TargetKind::Cpu(c) => {
                let name = if c.name.is_empty() { String::new() } else { format!(" {}", c.name) };
                format!(
                    "cpu{name}: {} cores, {}-bit vectors, L1d {}, L2 {}, L3 {}",
                    c.cores,
                    c.vector_bits,
                    fmt_bytes(c.l1d_bytes),
                    fmt_bytes(c.l2_bytes),
                    fmt_bytes(c.l3_bytes)
                )
            }
            TargetKind::Gpu(g) => format!(
                "gpu {}: {} SMs, {} shared memory per block, {} registers per SM",
                g.chip,
                g.sms,
                fmt_bytes(g.smem_bytes),
                g.regs_per_sm
            ),
        }
    }

    /// The parallel workers: cores on a CPU, SMs on a GPU (at least 1).
    pub fn workers(&self) -> usize {
        match &self.kind {
            TargetKind::Cpu(c) => c.cores.max(1),
            TargetKind::Gpu(g) => g.sms.max(1),
        }
    }

    /// `(tile_q, tile_k)` for an attention with head dimensions `d` (Q, K)
    /// and `dv` (V, output), `None` when symbolic, and elements of
    /// `elem_bytes`; see the module docs for the model.
    pub fn attention_tiles(&self, d: Option<usize>, dv: Option<usize>, elem_bytes: usize) -> (usize, usize) {
        let d = head_dim(d);
        let dv = head_dim(dv);
        let elem = elem_bytes.max(1) as u128;
        match &self.kind {
            TargetKind::Cpu(c) => cpu_attention_tiles(c, d, dv, elem),
            TargetKind::Gpu(g) => gpu_attention_tiles(g, d, dv, elem),
        }
    }

    /// `(tile_m, tile_n, tile_k)` for a matmul with elements of
    /// `elem_bytes`; see the module docs for the model.
    pub fn matmul_tiles(&self, elem_bytes: usize) -> (usize, usize, usize) {
        let elem = elem_bytes.max(1) as u128;
        match &self.kind {
            TargetKind::Cpu(c) => cpu_matmul_tiles(c, elem),
            TargetKind::Gpu(g) => gpu_matmul_tiles(g, elem),
        }
    }

    /// The attention's KV split: [`KvSplit::Auto`] over [`Target::workers`]
    /// with at most 16 (CPU) or 64 (GPU) splits of at least 2 kv-tiles.
    pub fn kv_split(&self) -> KvSplit {
        let max_splits = match self.kind {
            TargetKind::Cpu(_) => 16,
            TargetKind::Gpu(_) => 64,
        };
        KvSplit::Auto { workers: self.workers(), max_splits, min_tiles: 2 }
    }
}

/// Resolves a [`KvSplit`] at run time into a number of splits (at least 1):
/// `programs` is the number of `(lead, q-tile)` programs (lead · q-tiles),
/// `visited_tiles` the visited kv-tiles of the busiest program.
///
/// * `None`: 1.
/// * `Fixed(n)`: `n`, clamped to `1..=max(visited_tiles, 1)`.
/// * `Auto { workers, max_splits, min_tiles }`: 1 when `programs ≥ workers`
///   (the programs alone occupy the workers); otherwise
///   `min(max_splits, ceil(workers / programs), visited_tiles / min_tiles)`,
///   at least 1 (a zero `programs` or `min_tiles` counts as 1).
pub fn resolve_kv_split(split: KvSplit, programs: usize, visited_tiles: usize) -> usize {
    match split {
        KvSplit::None => 1,
        KvSplit::Fixed(n) => n.clamp(1, visited_tiles.max(1)),
        KvSplit::Auto { workers, max_splits, min_tiles } => {
            let programs = programs.max(1);
            if programs >= workers {
                return 1;
            }
            let per_program = workers.div_ceil(programs);
            let by_tiles = visited_tiles / min_tiles.max(1);
            max_splits.min(per_program).min(by_tiles).max(1)
        }
    }
}

/// A head dimension for the cost model: symbolic → 128, at least 1.
fn head_dim(d: Option<usize>) -> u128 {
    d.unwrap_or(SYMBOLIC_HEAD_DIM).max(1) as u128
}

/// `x`, or `fallback` when `x` is 0 (unknown).
fn or_fallback(x: usize, fallback: usize) -> usize {
    if x == 0 {
        fallback
    } else {
        x
    }
}

/// `f32` lanes of the CPU's vectors (at least 1).
fn cpu_lanes(c: &CpuInfo) -> usize {
    (or_fallback(c.vector_bits, FALLBACK_VECTOR_BITS) / 32).max(1)
}

/// The CPU attention working set of one `(q-tile, kv-tile)` step, in bytes.
fn cpu_attention_bytes(tq: usize, tk: usize, d: u128, dv: u128) -> u128 {
    let (tq, tk) = (tq as u128, tk as u128);
    4 * (tq * d + tk * (d + dv) + tq * tk + tq * dv)
}

/// The budget of the CPU attention working set: half of L2.
fn cpu_attention_budget(c: &CpuInfo) -> u128 {
    (or_fallback(c.l2_bytes, FALLBACK_L2) / 2) as u128
}

const CPU_ATTENTION_TQ: [usize; 4] = [16, 32, 64, 128];
const CPU_ATTENTION_TK: [usize; 5] = [16, 32, 64, 128, 256];

fn cpu_attention_tiles(c: &CpuInfo, d: u128, dv: u128, elem: u128) -> (usize, usize) {
    let budget = cpu_attention_budget(c);
    let lanes = cpu_lanes(c);
    // One row of the score tile stays in 8 vector registers while the
    // QKᵀ update streams the packed K tile (measured with the LLVM kernel on
    // this AVX2 machine, dense causal H=8 D=64 T=1024, useful GFLOP/s:
    // 128×64 73, 64×64 80 against 128×128 44, 64×128 48).
    let reg_tk = (8 * lanes).max(16);
    // (intensity numerator, denominator, tile_k, tile_q) of the best pair.
    let pick = |aligned_only: bool| -> Option<(usize, usize)> {
        let mut best: Option<(u128, u128, usize, usize)> = None;
        for &tq in &CPU_ATTENTION_TQ {
            for &tk in &CPU_ATTENTION_TK {
                if aligned_only && (tq % lanes != 0 || tk % lanes != 0) {
                    continue;
                }
                if tk > reg_tk {
                    continue;
                }
                if cpu_attention_bytes(tq, tk, d, dv) > budget {
                    continue;
                }
                // flops = 2·tq·tk·(d + dv), bytes = tk·(d + dv)·elem; the
                // common factor d + dv is cancelled so nothing overflows.
                let flops = 2 * (tq as u128) * (tk as u128);
                let bytes = (tk as u128) * elem;
                let better = match best {
                    None => true,
                    Some((bf, bb, btk, btq)) => {
                        // flops/bytes vs bf/bb, exactly; then tile_k, tile_q.
                        let (lhs, rhs) = (flops * bb, bf * bytes);
                        lhs > rhs || (lhs == rhs && (tk, tq) > (btk, btq))
                    }
                };
                if better {
                    best = Some((flops, bytes, tk, tq));
                }
            }
        }
        best.map(|(_, _, tk, tq)| (tq, tk))
    };
    pick(true).or_else(|| pick(false)).unwrap_or((16, 16))
}

/// The GPU attention's shared memory: Q once, K and V double-buffered.
fn gpu_attention_bytes(tq: usize, tk: usize, d: u128, dv: u128, elem: u128) -> u128 {
    let (tq, tk) = (tq as u128, tk as u128);
    // Saturating: `d` and `elem` may both be near `usize::MAX`.
    elem.saturating_mul(tq * d + 2 * tk * (d + dv))
}

fn gpu_attention_tiles(g: &GpuInfo, d: u128, dv: u128, elem: u128) -> (usize, usize) {
    let budget = g.smem_bytes as u128;
    let mut best: Option<(usize, usize)> = None;
    for tq in [64, 128] {
        for tk in [32, 64, 128] {
            if gpu_attention_bytes(tq, tk, d, dv, elem) > budget {
                continue;
            }
            let better = match best {
                None => true,
                Some((bq, bk)) => (tq * tk, tq) > (bq * bk, bq),
            };
            if better {
                best = Some((tq, tk));
            }
        }
    }
    best.unwrap_or((64, 32))
}

/// The CPU matmul's `(C tile bytes, A + B panel bytes)`.
fn cpu_matmul_bytes(tm: usize, tn: usize, tk: usize, elem: u128) -> (u128, u128) {
    let (tm, tn, tk) = (tm as u128, tn as u128, tk as u128);
    (4 * tm * tn, elem * tk * (tm + tn))
}

const CPU_MATMUL_MN: [usize; 4] = [16, 32, 64, 128];
const CPU_MATMUL_K: [usize; 4] = [32, 64, 128, 256];

fn cpu_matmul_tiles(c: &CpuInfo, elem: u128) -> (usize, usize, usize) {
    let l1_budget = (or_fallback(c.l1d_bytes, FALLBACK_L1D) / 2) as u128;
    let l2_budget = (or_fallback(c.l2_bytes, FALLBACK_L2) / 2) as u128;
    let lanes = cpu_lanes(c);
    let pick = |aligned_only: bool| -> Option<(usize, usize, usize)> {
        // (m·n, m + n, tile_k, tile_n, tile_m) of the best triple.
        let mut best: Option<(u128, u128, usize, usize, usize)> = None;
        for &tm in &CPU_MATMUL_MN {
            for &tn in &CPU_MATMUL_MN {
                if aligned_only && tn % lanes != 0 {
                    continue;
                }
                for &tk in &CPU_MATMUL_K {
                    let (c_bytes, panel_bytes) = cpu_matmul_bytes(tm, tn, tk, elem);
                    if c_bytes > l1_budget || panel_bytes > l2_budget {
                        continue;
                    }
                    let (num, den) = ((tm * tn) as u128, (tm + tn) as u128);
                    let better = match best {
                        None => true,
                        Some((bn, bd, btk, btn, btm)) => {
                            let (lhs, rhs) = (num * bd, bn * den);
                            lhs > rhs || (lhs == rhs && (tk, tn, tm) > (btk, btn, btm))
                        }
                    };
                    if better {
                        best = Some((num, den, tk, tn, tm));
                    }
                }
            }
        }
        best.map(|(_, _, tk, tn, tm)| (tm, tn, tk))
    };
    pick(true).or_else(|| pick(false)).unwrap_or((16, 16, 32))
}

fn gpu_matmul_tiles(g: &GpuInfo, elem: u128) -> (usize, usize, usize) {
    let budget = g.smem_bytes as u128;
    let tk = 32;
    let mut best: Option<(usize, usize)> = None;
    for tm in [64, 128] {
        for tn in [64, 128] {
            if 2 * elem * (tk as u128) * ((tm + tn) as u128) > budget {
                continue;
            }
            let better = match best {
                None => true,
                Some((bm, bn)) => (tm * tn, tn) > (bm * bn, bn),
            };
            if better {
                best = Some((tm, tn));
            }
        }
    }
    let (tm, tn) = best.unwrap_or((64, 64));
    (tm, tn, tk)
}

/// `n` bytes as `N MiB`, `N KiB` or `N B` (the largest exact unit).
fn fmt_bytes(n: usize) -> String {
    if n >= MIB && n & (MIB - 1) == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n & (KIB - 1) == 0 {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} B")
    }
}

/// A cache size as sysfs writes it: `32K`, `512K`, `32768K`, `8M`, `1G`,
/// or plain bytes. `None` for anything else or zero.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, ch)| !ch.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let mult = match unit {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => KIB,
        "M" | "MB" | "MiB" => MIB,
        "G" | "GB" | "GiB" => 1024 * MIB,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

/// The host's (L1d, L2, L3) from sysfs, each `None` when unreadable.
fn host_caches() -> (Option<usize>, Option<usize>, Option<usize>) {
    let (mut l1d, mut l2, mut l3) = (None, None, None);
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return (l1d, l2, l3);
    };
    let mut dirs: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("index")))
        .collect();
    dirs.sort();
    for dir in dirs {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok().map(|s| s.trim().to_string());
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        if kind != "Data" && kind != "Unified" {
            continue;
        }
        let Some(bytes) = parse_cache_size(&size) else {
            continue;
        };
        let slot = match level.as_str() {
            "1" => &mut l1d,
            "2" => &mut l2,
            "3" => &mut l3,
            _ => continue,
        };
        slot.get_or_insert(bytes);
    }
    (l1d, l2, l3)
}

/// The host's widest vector in bits and a feature string for its name.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn host_vector() -> (usize, String) {
    let fma = if std::is_x86_feature_detected!("fma") { "+fma" } else { "" };
    if std::is_x86_feature_detected!("avx512f") {
        (512, format!("avx512f{fma}"))
    } else if std::is_x86_feature_detected!("avx2") {
        (256, format!("avx2{fma}"))
    } else {
        (128, "sse2".to_string())
    }
}

/// The host's widest vector in bits and a feature string for its name.
#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn host_vector() -> (usize, String) {
    (FALLBACK_VECTOR_BITS, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L1d 32 KiB, L2 512 KiB, L3 32 MiB, AVX2, 2 cores.
    fn fixed() -> CpuInfo {
        CpuInfo {
            l1d_bytes: 32 * KIB,
            l2_bytes: 512 * KIB,
            l3_bytes: 32 * MIB,
            vector_bits: 256,
            cores: 2,
            name: "test avx2".to_string(),
        }
    }

    #[test]
    fn host_is_plausible() {
        let t = Target::host();
        let TargetKind::Cpu(c) = &t.kind else { panic!("host is a CPU") };
        assert!(c.cores >= 1);
        assert!([128, 256, 512].contains(&c.vector_bits));
        assert!(c.l1d_bytes > 0 && c.l2_bytes > 0 && c.l3_bytes > 0);
        assert!(t.workers() >= 1);
        assert_eq!(t.describe(), Target::host().describe());
        let (tq, tk) = t.attention_tiles(Some(64), Some(64), 4);
        assert!(tq >= 1 && tk >= 1);
    }

    #[test]
    fn describe_is_deterministic() {
        let t = Target::cpu(fixed());
        assert_eq!(t.describe(), "cpu test avx2: 2 cores, 256-bit vectors, L1d 32 KiB, L2 512 KiB, L3 32 MiB");
        assert_eq!(t.describe(), Target::cpu(fixed()).describe());
        let g = Target::gpu("sm_90").unwrap();
        assert_eq!(g.describe(), "gpu sm_90: 132 SMs, 227 KiB shared memory per block, 65536 registers per SM");
        assert_eq!(fmt_bytes(1000), "1000 B");
    }

    #[test]
    fn fixed_cpu_tiles() {
        let t = Target::cpu(fixed());
        // Budget: L2 / 2 = 256 KiB = 65536 floats. The intensity is
        // 2·tile_q / elem, so the largest tile_q that fits wins, then the
        // largest tile_k with it.
        // d = dv = 64, tile_q = 128: 128·64 (Q) + tk·128 (K, V) + 128·tk (S)
        // + 128·64 (O) = 16384 + 256·tk ≤ 65536 → tk ≤ 192, capped at
        // 8 × 8 lanes = 64.
        assert_eq!(t.attention_tiles(Some(64), Some(64), 4), (128, 64));
        assert_eq!(t.attention_tiles(Some(64), Some(64), 2), (128, 64));
        // d = dv = 128 (and symbolic, costed as 128), tile_q = 128:
        // 16384 + tk·256 + 128·tk + 16384 = 32768 + 384·tk ≤ 65536 → tk ≤ 85 → 64.
        assert_eq!(t.attention_tiles(Some(128), Some(128), 4), (128, 64));
        assert_eq!(t.attention_tiles(None, None, 4), (128, 64));
        // d = dv = 1: (128, 256) would fit, the register cap gives (128, 64).
        assert_eq!(t.attention_tiles(Some(1), Some(1), 4), (128, 64));
        // 512-bit vectors: the cap is 128.
        let wide = Target::cpu(CpuInfo { vector_bits: 512, ..fixed() });
        assert_eq!(wide.attention_tiles(Some(64), Some(64), 4), (128, 128));
        // d = dv = 1000: (16, 16) is 16000 + 32000 + 256 + 16000 = 64256
        // floats (fits); (32, 16) and (16, 32) need 96512.
        assert_eq!(t.attention_tiles(Some(1000), Some(1000), 4), (16, 16));
        // Matmul: C tile ≤ L1 / 2 = 16 KiB → m·n ≤ 4096; m·n / (m + n) is
        // best at 64×64 (32, vs 25.6 for 128×32); A + B panels
        // 4·k·128 ≤ 256 KiB for every k ≤ 256 → k = 256.
        assert_eq!(t.matmul_tiles(4), (64, 64, 256));
        assert_eq!(t.matmul_tiles(2), (64, 64, 256));
        assert_eq!(t.workers(), 2);
        assert_eq!(t.kv_split(), KvSplit::Auto { workers: 2, max_splits: 16, min_tiles: 2 });
    }

    #[test]
    fn tiles_fit_the_budget() {
        let small = CpuInfo { l2_bytes: 64 * KIB, l1d_bytes: 4 * KIB, ..fixed() };
        let zero = CpuInfo { l1d_bytes: 0, l2_bytes: 0, l3_bytes: 0, vector_bits: 0, cores: 0, name: String::new() };
        let wide = CpuInfo { vector_bits: 2048, ..fixed() };
        let tiny = CpuInfo { l1d_bytes: 1, l2_bytes: 1, ..fixed() };
        for info in [fixed(), small, zero, wide, tiny] {
            let t = Target::cpu(info.clone());
            assert!(t.workers() >= 1);
            let budget = cpu_attention_budget(&info);
            for d in [Some(1), Some(16), Some(64), Some(128), Some(256), Some(1000), None, Some(0), Some(usize::MAX)] {
                for elem in [0, 2, 4] {
                    let (tq, tk) = t.attention_tiles(d, d, elem);
                    assert!(tq >= 1 && tk >= 1);
                    let (hd, hdv) = (head_dim(d), head_dim(d));
                    let fits = cpu_attention_bytes(tq, tk, hd, hdv) <= budget;
                    assert!(fits || (tq, tk) == (16, 16), "{info:?} d={d:?}: ({tq}, {tk})");
                }
            }
            for elem in [0, 2, 4, 8] {
                let (m, n, k) = t.matmul_tiles(elem);
                assert!(m >= 1 && n >= 1 && k >= 1);
                let (c, p) = cpu_matmul_bytes(m, n, k, elem.max(1) as u128);
                let fits = c <= (or_fallback(info.l1d_bytes, FALLBACK_L1D) / 2) as u128
                    && p <= (or_fallback(info.l2_bytes, FALLBACK_L2) / 2) as u128;
                assert!(fits || (m, n, k) == (16, 16, 32), "{info:?}: ({m}, {n}, {k})");
            }
        }
        // 2048-bit vectors: 64 lanes, tiles aligned to them where they fit.
        let (tq, tk) = Target::cpu(CpuInfo { vector_bits: 2048, ..fixed() }).attention_tiles(Some(64), Some(64), 4);
        assert_eq!((tq % 64, tk % 64), (0, 0));
        for chip in ["sm_80", "sm_90"] {
            let t = Target::gpu(chip).unwrap();
            let TargetKind::Gpu(g) = &t.kind else { panic!("a GPU") };
            for d in [Some(1), Some(16), Some(64), Some(128), Some(256), Some(1000), None] {
                for elem in [2, 4] {
                    let (tq, tk) = t.attention_tiles(d, d, elem);
                    let fits =
                        gpu_attention_bytes(tq, tk, head_dim(d), head_dim(d), elem as u128) <= g.smem_bytes as u128;
                    assert!(fits || (tq, tk) == (64, 32), "{chip} d={d:?}: ({tq}, {tk})");
                }
            }
        }
    }

    #[test]
    fn gpu_presets() {
        let t = Target::gpu("sm_90").unwrap();
        assert_eq!(t.workers(), 132);
        // d = 64: 128×128 needs 2·(8192 + 2·128·128) = 80 KiB in f16 and
        // 160 KiB in f32, both within 227 KiB.
        assert_eq!(t.attention_tiles(Some(64), Some(64), 2), (128, 128));
        assert_eq!(t.attention_tiles(Some(64), Some(64), 4), (128, 128));
        // d = 128 in f32: 128×128 needs 320 KiB, 128×64 192 KiB.
        assert_eq!(t.attention_tiles(Some(128), Some(128), 4), (128, 64));
        assert_eq!(t.attention_tiles(Some(128), Some(128), 2), (128, 128));
        assert_eq!(t.matmul_tiles(2), (128, 128, 32));
        assert_eq!(t.kv_split(), KvSplit::Auto { workers: 132, max_splits: 64, min_tiles: 2 });
        let a = Target::gpu("sm_80").unwrap();
        assert_eq!(a.workers(), 108);
        assert_eq!(a.matmul_tiles(4), (128, 128, 32));
        // Absurd sizes fall back instead of overflowing.
        assert_eq!(t.attention_tiles(Some(usize::MAX), Some(usize::MAX), usize::MAX), (64, 32));
        assert_eq!(t.matmul_tiles(usize::MAX), (64, 64, 32));
        let c = Target::cpu(fixed());
        assert_eq!(c.attention_tiles(Some(64), Some(64), usize::MAX), (128, 64));
        assert_eq!(c.attention_tiles(Some(usize::MAX), None, usize::MAX), (16, 16));
        assert_eq!(c.matmul_tiles(usize::MAX), (16, 16, 32));
        let err = Target::gpu("sm_999").unwrap_err();
        assert!(err.contains("sm_999") && err.contains("sm_80") && err.contains("sm_90"), "{err}");
    }

    #[test]
    fn kv_split_resolution() {
        let auto = KvSplit::Auto { workers: 2, max_splits: 16, min_tiles: 2 };
        assert_eq!(resolve_kv_split(auto, 1000, 100), 1);
        assert_eq!(resolve_kv_split(auto, 2, 100), 1);
        assert_eq!(resolve_kv_split(auto, 1, 100), 2);
        assert_eq!(resolve_kv_split(auto, 1, 3), 1);
        let gpu = KvSplit::Auto { workers: 132, max_splits: 64, min_tiles: 2 };
        assert_eq!(resolve_kv_split(gpu, 1, 1000), 64);
        assert_eq!(resolve_kv_split(gpu, 8, 1000), 17);
        assert_eq!(resolve_kv_split(gpu, 8, 10), 5);
        assert_eq!(resolve_kv_split(KvSplit::Fixed(4), 1, 2), 2);
        assert_eq!(resolve_kv_split(KvSplit::Fixed(4), 1, 100), 4);
        assert_eq!(resolve_kv_split(KvSplit::None, 1, 100), 1);
        // Never 0.
        for split in [
            KvSplit::None,
            KvSplit::Fixed(0),
            KvSplit::Fixed(3),
            KvSplit::Auto { workers: 0, max_splits: 0, min_tiles: 0 },
            auto,
            gpu,
        ] {
            for programs in [0, 1, 2, 1000] {
                for visited in [0, 1, 2, 100] {
                    assert!(resolve_kv_split(split, programs, visited) >= 1);
                }
            }
        }
    }

    #[test]
    fn parses_sysfs_sizes() {
        assert_eq!(parse_cache_size("32K\n"), Some(32 * KIB));
        assert_eq!(parse_cache_size("32768K"), Some(32 * MIB));
        assert_eq!(parse_cache_size("8M"), Some(8 * MIB));
        assert_eq!(parse_cache_size("0K"), None);
        assert_eq!(parse_cache_size("abc"), None);
        assert_eq!(parse_cache_size(""), None);
    }
}
