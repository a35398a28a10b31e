//! `--backend gpu`: the Kernel IR interpreter with the GPU kernels of
//! `tdl_mlir` as its hooks, run through the CUDA driver (`tdl_cuda`,
//! loaded at run time: on a machine without it, [`GpuHooks::open`] fails
//! with "no CUDA driver found").
//!
//! Each kernel the GPU code generator supports becomes a
//! [`tdl_mlir::launch::LaunchPlan`] — the same plan the host check runs —
//! whose `gpu.module` is lowered in process to PTX for the device's chip
//! (once per kernel code, cached), loaded by the driver, and launched with
//! the plan's buffers uploaded; the output is read back. Kernels the code
//! generator declines run in the interpreter (the run's report names the
//! executor of each). Every output is read back (the interpreter holds the
//! run's values on the host) and kept on the device until the next run, so
//! kernels reading it later upload nothing ([`Resident`]; graph inputs are
//! uploaded where a kernel reads them); [`GpuHooks::transfers`] counts the
//! bytes. The device time of the launches alone is measured with CUDA
//! events ([`GpuHooks::take_device_ms`]).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tdl_cuda::{Cuda, DeviceBuffer, GpuModule, KernelArg};
use tdl_kernel::interp::{
    AttentionArgs, ElementwiseArgs, F32Run, HookRun, Hooks, I32Run, MatMulArgs, MoveArgs, RowArgs,
};
use tdl_kernel::ir::{AttentionKernel, ElementwiseKernel, MatMulKernel, MoveKernel, ReduceKernel, RowKernel};
use tdl_kernel::{F32Tensor, KernelStats};
use tdl_mlir::host::PlanOutput;
use tdl_mlir::launch::{LaunchPlan, Param, PlanBuf, Store, LAMBDA_INDEX_ERROR};
use tdl_mlir::MlirError;

/// The executor name reports give the kernels run on the GPU.
pub const EXECUTOR: &str = "gpu (CUDA)";

/// 16-bit values as the 4-byte words `tdl_cuda` copies: two to a word,
/// the element at the lower address in the low half (little-endian), the
/// last word padded with 0.
pub fn pack_halves(d: &[u16]) -> Vec<i32> {
    d.chunks(2).map(|p| (u32::from(p[0]) | u32::from(p.get(1).copied().unwrap_or(0)) << 16) as i32).collect()
}

/// The first `n` 16-bit values of words packed as [`pack_halves`] packs them.
pub fn unpack_halves(words: &[i32], n: usize) -> Vec<u16> {
    words.iter().flat_map(|&w| [w as u16, (w as u32 >> 16) as u16]).take(n).collect()
}

/// The PTX chip for a device of compute capability `major.minor`: the
/// newest chip the code generator targets that the device runs (PTX is
/// compiled forward by the driver), or why there is none.
pub fn chip_for(major: u32, minor: u32) -> Result<&'static str, String> {
    match (major, minor) {
        (m, _) if m >= 9 => Ok("sm_90"),
        (8, _) => Ok("sm_80"),
        _ => Err(format!(
            "not supported yet: GPUs of compute capability {major}.{minor} (the GPU code generator targets sm_80 and newer)"
        )),
    }
}

/// The GPU executor: a device, the modules loaded so far, the device time
/// of the launches since the last [`GpuHooks::take_device_ms`].
pub struct GpuHooks {
    cuda: Cuda,
    chip: &'static str,
    modules: RefCell<HashMap<String, GpuModule>>,
    device_ms: Cell<f64>,
    /// The outputs this run's kernels left on the device, by the host
    /// tensor they were read back into (see [`Resident`]).
    resident: RefCell<ResidentSet<Rc<DeviceBuffer>>>,
    /// Bytes copied to the device, back, and not copied because the tensor
    /// was already there, since the run started.
    moved: Cell<Transfers>,
}

/// A host tensor a kernel output was read back into: its address, length
/// and how it is stored on the device. Within one run the interpreter
/// never changes or frees a value ([`Hooks::run_started`]), so a later
/// kernel reading the same slice reads the output's device buffer instead
/// of a new copy; the map is cleared when a run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Resident {
    addr: usize,
    len: usize,
    kind: Kind,
}

/// How a kept buffer's elements are stored: `i32`, or floats of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    I32,
    Float(Store),
}

impl Resident {
    fn of<T>(d: &[T], kind: Kind) -> Resident {
        Resident { addr: d.as_ptr() as usize, len: d.len(), kind }
    }
}

/// The outputs kept on the device, oldest first, at most
/// [`RESIDENT_BYTES`] of them (the oldest are dropped first).
struct ResidentSet<B> {
    map: HashMap<Resident, B>,
    order: std::collections::VecDeque<(Resident, u64)>,
    bytes: u64,
}

impl<B> Default for ResidentSet<B> {
    fn default() -> Self {
        ResidentSet { map: HashMap::new(), order: Default::default(), bytes: 0 }
    }
}

/// The most device memory kept outputs hold; beyond it the oldest are
/// freed (a later kernel reading one uploads it again).
pub const RESIDENT_BYTES: u64 = 4 << 30;

impl<B: Clone> ResidentSet<B> {
    fn get(&self, key: &Resident) -> Option<B> {
        self.map.get(key).cloned()
    }

    /// Keeps `buf` (`bytes` long) for `key`, dropping the oldest beyond
    /// [`RESIDENT_BYTES`].
    fn insert(&mut self, key: Resident, buf: B, bytes: u64) {
        if self.map.insert(key, buf).is_none() {
            self.order.push_back((key, bytes));
            self.bytes += bytes;
        }
        while self.bytes > RESIDENT_BYTES {
            let Some((old, b)) = self.order.pop_front() else { break };
            self.map.remove(&old);
            self.bytes -= b;
        }
    }

    fn clear(&mut self) {
        *self = ResidentSet::default();
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What moved between host and device since the run started, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    pub up: u64,
    pub down: u64,
    /// Inputs of kernels that were outputs of earlier ones, not copied.
    pub kept: u64,
}

impl GpuHooks {
    /// Opens device 0. Fails with "no CUDA driver found: …" without a
    /// driver, with the driver's error without a device.
    pub fn open() -> Result<GpuHooks, String> {
        let cuda = Cuda::open(0).map_err(|e| e.to_string())?;
        let (major, minor) = cuda.compute_capability();
        let chip = chip_for(major, minor)?;
        Ok(GpuHooks {
            cuda,
            chip,
            modules: RefCell::default(),
            device_ms: Cell::new(0.0),
            resident: RefCell::default(),
            moved: Cell::new(Transfers::default()),
        })
    }

    /// The chip the PTX is generated for (`sm_80`, `sm_90`).
    pub fn chip(&self) -> &'static str {
        self.chip
    }

    /// The device, its capability and the driver's version, in words.
    pub fn device(&self) -> String {
        let (major, minor) = self.cuda.compute_capability();
        let v = self.cuda.driver_version();
        format!(
            "{} (compute capability {major}.{minor}, PTX for {}, CUDA driver {}.{})",
            self.cuda.device_name(),
            self.chip,
            v / 1000,
            (v % 1000) / 10
        )
    }

    /// The bytes moved between host and device since the run started.
    pub fn transfers(&self) -> Transfers {
        self.moved.get()
    }

    fn count(&self, f: impl FnOnce(&mut Transfers)) {
        let mut t = self.moved.get();
        f(&mut t);
        self.moved.set(t);
    }

    /// The device time of the launches since the last call, in ms.
    pub fn take_device_ms(&self) -> f64 {
        self.device_ms.replace(0.0)
    }

    /// The module of `code`, lowered to PTX and loaded once.
    fn module(&self, key: &str, mlir: &str) -> Result<GpuModule, String> {
        if let Some(m) = self.modules.borrow().get(key) {
            return Ok(m.clone());
        }
        let ptx = ptx_of(mlir, self.chip).map_err(|e| format!("the GPU kernel does not lower to PTX: {e}"))?;
        let m = self.cuda.load_ptx(&ptx).map_err(|e| e.to_string())?;
        self.modules.borrow_mut().insert(key.to_string(), m.clone());
        Ok(m)
    }

    /// Runs `plan` on the device; the output, row-major (`f32`, or `i32`
    /// where [`LaunchPlan::output_is_i32`]). A set error flag is the
    /// lambdas' out-of-range error.
    fn run(&self, plan: &LaunchPlan<'_>) -> Result<PlanOutput, String> {
        plan.validate().map_err(|e| e.to_string())?;
        let module = self.module(&plan.code.key, &plan.code.mlir_module)?;
        let functions = plan
            .steps
            .iter()
            .map(|s| module.function(&s.func).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, String>>()?;
        // Only buffers the kernels only read may be outputs kept on the device.
        let read_only = |i: usize| i != plan.output && Some(i) != plan.error_flag;
        let bufs = plan
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| self.upload(b, read_only(i)))
            .collect::<Result<Vec<Rc<DeviceBuffer>>, String>>()?;
        let ms = self
            .cuda
            .time_ms(|| {
                for (s, f) in plan.steps.iter().zip(&functions) {
                    let args: Vec<KernelArg<'_>> =
                        s.params.iter().map(|p| kernel_arg(p, &plan.buffers, &bufs)).collect();
                    self.cuda.launch(f, s.grid, s.block, s.shared_bytes, &args)?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        self.device_ms.set(self.device_ms.get() + f64::from(ms));
        if let Some(e) = plan.error_flag {
            let flag = bufs.get(e).ok_or("the plan's error flag is missing")?;
            let mut v = [0i32];
            self.cuda.download_i32(flag, &mut v).map_err(|e| e.to_string())?;
            if v[0] != 0 {
                return Err(LAMBDA_INDEX_ERROR.to_string());
            }
        }
        let out = bufs.get(plan.output).ok_or("the plan's output buffer is missing")?;
        let n: usize = plan.output_shape.iter().product();
        self.count(|t| t.down += 4 * out.len() as u64);
        let store = plan.output_store();
        let (result, key) = if plan.output_is_i32() {
            let mut data = vec![0i32; n];
            self.cuda.download_i32(out, &mut data).map_err(|e| e.to_string())?;
            let key = Resident::of(&data, Kind::I32);
            (PlanOutput::I32(data), key)
        } else {
            let data = if store == Store::F32 {
                let mut data = vec![0f32; n];
                self.cuda.download(out, &mut data).map_err(|e| e.to_string())?;
                data
            } else {
                // 16-bit floats, two to a 4-byte word (low half first).
                let mut words = vec![0i32; n.div_ceil(2)];
                self.cuda.download_i32(out, &mut words).map_err(|e| e.to_string())?;
                store.widen_bits(&unpack_halves(&words, n))
            };
            let key = Resident::of(&data, Kind::Float(store));
            (PlanOutput::F32(data), key)
        };
        // The output stays on the device for the kernels that read it next:
        // the hook hands the data to the interpreter as the buffer's value
        // (moved, not copied), which it keeps unchanged until the run ends.
        if n > 0 {
            self.resident.borrow_mut().insert(key, Rc::clone(out), 4 * out.len() as u64);
        }
        Ok(result)
    }

    /// The device buffer of `b`: where `read_only`, an output of an earlier
    /// kernel of the run still on the device, else a new upload (or zeroed
    /// allocation; where the device is out of memory, after freeing the
    /// kept outputs).
    fn upload(&self, b: &PlanBuf<'_>, read_only: bool) -> Result<Rc<DeviceBuffer>, String> {
        let key = match b {
            PlanBuf::F32(Cow::Borrowed(d)) => Some(Resident::of(d, Kind::Float(Store::F32))),
            PlanBuf::Half(s, Cow::Borrowed(d)) => Some(Resident::of(d, Kind::Float(*s))),
            PlanBuf::I32(Cow::Borrowed(d)) => Some(Resident::of(d, Kind::I32)),
            _ => None,
        };
        if let Some(key) = key.filter(|_| read_only) {
            if let Some(buf) = self.resident.borrow().get(&key) {
                self.count(|t| t.kept += (b.len() * b.elem_bytes()) as u64);
                return Ok(buf);
            }
        }
        let buf = match self.copy_up(b) {
            Err(_) if !self.resident.borrow().is_empty() => {
                self.resident.borrow_mut().clear();
                self.copy_up(b)
            }
            r => r,
        }
        .map_err(|e| e.to_string())?;
        if !matches!(b, PlanBuf::Zeroed(_) | PlanBuf::ZeroedHalf(..)) {
            self.count(|t| t.up += 4 * buf.len() as u64);
        }
        Ok(Rc::new(buf))
    }

    /// A new device buffer holding `b`.
    fn copy_up(&self, b: &PlanBuf<'_>) -> Result<DeviceBuffer, tdl_cuda::CudaError> {
        match b {
            PlanBuf::F32(d) => self.cuda.upload(d),
            PlanBuf::I32(d) => self.cuda.upload_i32(d),
            // An i64 is two 32-bit words, low first (little-endian).
            PlanBuf::I64(d) => {
                let words: Vec<i32> = d.iter().flat_map(|&x| [x as i32, (x >> 32) as i32]).collect();
                self.cuda.upload_i32(&words)
            }
            PlanBuf::Zeroed(n) => self.cuda.alloc(*n),
            PlanBuf::Half(s, d) => self.cuda.upload_i32(&pack_halves(&s.narrow_bits(d))),
            PlanBuf::ZeroedHalf(_, n) => self.cuda.alloc(n.div_ceil(2)),
        }
    }

    /// A plan's result as a hook's: declined (`None`) when the code
    /// generator does not support the kernel.
    fn hook<T>(
        &self,
        plan: Result<Option<LaunchPlan<'_>>, MlirError>,
        wrap: impl FnOnce(PlanOutput, Vec<usize>) -> Result<T, String>,
    ) -> Option<Result<T, String>> {
        match plan {
            Ok(Some(p)) => Some(self.run(&p).and_then(|d| wrap(d, p.output_shape.clone()))),
            Ok(None) | Err(MlirError::Unsupported(_)) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

/// A plan parameter as a kernel argument over the uploaded buffers.
/// Parameter `p` as a driver argument: a memref over device buffer `buf`
/// counts its elements in the plan buffer's element size (2 bytes for
/// 16-bit floats, 8 for `i64`, 4 otherwise), as the kernel reads them.
fn kernel_arg<'b>(p: &Param, plan: &[PlanBuf<'_>], bufs: &'b [Rc<DeviceBuffer>]) -> KernelArg<'b> {
    match p {
        Param::MemRef { buf, offset, sizes, strides } => KernelArg::MemRef {
            buf: &bufs[*buf],
            elem_bytes: plan[*buf].elem_bytes(),
            offset: *offset,
            sizes: sizes.clone(),
            strides: strides.clone(),
        },
        Param::I64(v) => KernelArg::I64(*v),
        Param::I32(v) => KernelArg::I32(*v),
        Param::F32(v) => KernelArg::F32(*v),
    }
}

/// `mlir` (a `gpu.module`) verified and lowered in process to PTX for `chip`.
pub fn ptx_of(mlir: &str, chip: &str) -> Result<String, MlirError> {
    let pipeline = tdl_mlir::nvvm_pipeline(chip)?;
    let context = tdl_mlir::new_context();
    let mut module = tdl_mlir::parse_module(&context, mlir)?;
    tdl_mlir::verify_module(&module)?;
    tdl_mlir::run_pipeline(&mut module, &pipeline)?;
    tdl_mlir::extract_ptx(&module)
}

/// An `f32` output as a hook gives it back.
fn f32_run(out: PlanOutput, _shape: Vec<usize>) -> Result<F32Run, String> {
    match out {
        PlanOutput::F32(d) => Ok((d, EXECUTOR)),
        PlanOutput::I32(_) => Err("the GPU kernel wrote i32 values where f32 were expected".into()),
    }
}

/// An `i32` output as a hook gives it back.
fn i32_run(out: PlanOutput, _shape: Vec<usize>) -> Result<I32Run, String> {
    match out {
        PlanOutput::I32(d) => Ok((d, EXECUTOR)),
        PlanOutput::F32(_) => Err("the GPU kernel wrote f32 values where i32 were expected".into()),
    }
}

impl Hooks for GpuHooks {
    /// Forgets the outputs an earlier run left on the device, if any, and
    /// the transfer counts.
    fn run_started(&self) {
        self.resident.borrow_mut().clear();
        self.moved.set(Transfers::default());
    }

    /// Frees the outputs kept on the device (the counts stay for `--stats`).
    fn run_finished(&self) {
        self.resident.borrow_mut().clear();
    }

    fn run_report(&self) -> Vec<String> {
        let t = self.transfers();
        let mb = |b: u64| b as f64 / 1e6;
        vec![format!(
            "device transfers: {:.3} MB to the device, {:.3} MB back, {:.3} MB of kernel inputs already there (outputs of earlier kernels)",
            mb(t.up),
            mb(t.down),
            mb(t.kept)
        )]
    }

    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        // The schedule's counts (programs, tiles visited, KV splits) are the plan's.
        let plan = tdl_mlir::attention::plan_attention(k, args);
        let stats = match &plan {
            Ok(Some(p)) => p.stats.clone().unwrap_or_default(),
            _ => KernelStats::default(),
        };
        self.hook(plan, |out, shape| {
            let (data, _) = f32_run(out, Vec::new())?;
            Ok((F32Tensor { shape, data }, EXECUTOR, stats))
        })
    }

    fn matmul(&self, _k: &MatMulKernel, args: &MatMulArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::matmul::plan_matmul(args), f32_run)
    }

    fn elementwise(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::elementwise::plan_elementwise(k, args), f32_run)
    }

    fn elementwise_i32(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<I32Run, String>> {
        self.hook(tdl_mlir::elementwise::plan_elementwise(k, args), i32_run)
    }

    fn reduce(&self, k: &ReduceKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::rows::plan_reduce(k, args), f32_run)
    }

    fn reduce_i32(&self, k: &ReduceKernel, x: &[i32], shape: &[usize]) -> Option<Result<I32Run, String>> {
        self.hook(tdl_mlir::rows::plan_reduce_i32(k, x, shape), i32_run)
    }

    fn row(&self, k: &RowKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::rows::plan_row(k, args), f32_run)
    }

    fn movement(&self, k: &MoveKernel, args: &MoveArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::movement::plan_move(k, args), f32_run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chips_follow_the_compute_capability() {
        assert_eq!(chip_for(9, 0), Ok("sm_90"));
        assert_eq!(chip_for(10, 0), Ok("sm_90"));
        assert_eq!(chip_for(8, 6), Ok("sm_80"));
        assert!(chip_for(7, 5).unwrap_err().starts_with("not supported yet"));
    }

    #[test]
    fn kept_outputs_are_dropped_oldest_first_beyond_the_cap() {
        let key = |addr| Resident { addr, len: 1, kind: Kind::Float(Store::F32) };
        let mut set = ResidentSet::default();
        let gib = 1u64 << 30;
        for i in 0..4 {
            set.insert(key(i), i, gib);
        }
        assert_eq!(set.bytes, 4 * gib);
        assert_eq!(set.get(&key(0)), Some(0));
        set.insert(key(4), 4, gib / 2);
        assert_eq!(set.get(&key(0)), None, "the oldest goes first");
        assert_eq!(set.get(&key(1)), Some(1));
        assert_eq!(set.bytes, 3 * gib + gib / 2);
        // The same key again: kept once.
        set.insert(key(4), 4, gib / 2);
        assert_eq!(set.bytes, 3 * gib + gib / 2);
        // The kind is part of the key: an f32 view never finds a 16-bit output.
        assert_eq!(set.get(&Resident { addr: 1, len: 1, kind: Kind::Float(Store::F16) }), None);
        set.insert(key(9), 9, 5 * gib);
        assert!(set.is_empty() && set.bytes == 0, "a buffer above the cap is not kept");
        set.insert(key(1), 1, 1);
        set.clear();
        assert!(set.is_empty() && set.bytes == 0 && set.order.is_empty());
    }

    #[test]
    fn halves_pack_two_to_a_word_little_endian() {
        let d: Vec<u16> = vec![0x3c00, 0xbc00, 0x7bff, 0x0001, 0xffff];
        let w = pack_halves(&d);
        assert_eq!(w.len(), 3);
        // The bytes of the words are the bytes of the 16-bit values, in order.
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let want: Vec<u8> = d.iter().flat_map(|x| x.to_le_bytes()).chain([0, 0]).collect();
        assert_eq!(bytes, want);
        assert_eq!(unpack_halves(&w, 5), d);
        assert_eq!(unpack_halves(&w, 4), d[..4]);
    }
}
