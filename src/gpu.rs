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
//! executor of each). Buffers move between host and device per kernel: a
//! correct first version, not a fast one; the device time of the launches
//! alone is measured with CUDA events ([`GpuHooks::take_device_ms`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use tdl_cuda::{Cuda, DeviceBuffer, GpuModule, KernelArg};
use tdl_kernel::interp::{AttentionArgs, ElementwiseArgs, F32Run, HookRun, Hooks, MatMulArgs, MoveArgs, RowArgs};
use tdl_kernel::ir::{AttentionKernel, ElementwiseKernel, MatMulKernel, MoveKernel, ReduceKernel, RowKernel};
use tdl_kernel::{F32Tensor, KernelStats};
use tdl_mlir::launch::{LaunchPlan, Param, PlanBuf};
use tdl_mlir::MlirError;

/// The executor name reports give the kernels run on the GPU.
pub const EXECUTOR: &str = "gpu (CUDA)";

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
}

impl GpuHooks {
    /// Opens device 0. Fails with "no CUDA driver found: …" without a
    /// driver, with the driver's error without a device.
    pub fn open() -> Result<GpuHooks, String> {
        let cuda = Cuda::open(0).map_err(|e| e.to_string())?;
        let (major, minor) = cuda.compute_capability();
        let chip = chip_for(major, minor)?;
        Ok(GpuHooks { cuda, chip, modules: RefCell::default(), device_ms: Cell::new(0.0) })
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

    /// Runs `plan` on the device; the output, row-major.
    fn run(&self, plan: &LaunchPlan<'_>) -> Result<Vec<f32>, String> {
        plan.validate().map_err(|e| e.to_string())?;
        let module = self.module(&plan.code.key, &plan.code.mlir_module)?;
        let functions = plan
            .steps
            .iter()
            .map(|s| module.function(&s.func).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, String>>()?;
        let bufs = plan.buffers.iter().map(|b| self.upload(b)).collect::<Result<Vec<DeviceBuffer>, String>>()?;
        let ms = self
            .cuda
            .time_ms(|| {
                for (s, f) in plan.steps.iter().zip(&functions) {
                    let args: Vec<KernelArg<'_>> = s.params.iter().map(|p| kernel_arg(p, &bufs)).collect();
                    self.cuda.launch(f, s.grid, s.block, s.shared_bytes, &args)?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        self.device_ms.set(self.device_ms.get() + f64::from(ms));
        let out = bufs.get(plan.output).ok_or("the plan's output buffer is missing")?;
        let mut data = vec![0f32; plan.output_shape.iter().product()];
        self.cuda.download(out, &mut data).map_err(|e| e.to_string())?;
        Ok(data)
    }

    fn upload(&self, b: &PlanBuf<'_>) -> Result<DeviceBuffer, String> {
        let r = match b {
            PlanBuf::F32(d) => self.cuda.upload(d),
            PlanBuf::I32(d) => self.cuda.upload_i32(d),
            // An i64 is two 32-bit words, low first (little-endian).
            PlanBuf::I64(d) => {
                let words: Vec<i32> = d.iter().flat_map(|&x| [x as i32, (x >> 32) as i32]).collect();
                self.cuda.upload_i32(&words)
            }
            PlanBuf::Zeroed(n) => self.cuda.alloc(*n),
        };
        r.map_err(|e| e.to_string())
    }

    /// A plan's result as a hook's: declined (`None`) when the code
    /// generator does not support the kernel.
    fn hook<T>(
        &self,
        plan: Result<Option<LaunchPlan<'_>>, MlirError>,
        wrap: impl FnOnce(Vec<f32>, Vec<usize>) -> T,
    ) -> Option<Result<T, String>> {
        match plan {
            Ok(Some(p)) => Some(self.run(&p).map(|d| wrap(d, p.output_shape.clone()))),
            Ok(None) | Err(MlirError::Unsupported(_)) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

/// A plan parameter as a kernel argument over the uploaded buffers.
fn kernel_arg<'b>(p: &Param, bufs: &'b [DeviceBuffer]) -> KernelArg<'b> {
    match p {
        Param::MemRef { buf, offset, sizes, strides } => {
            KernelArg::MemRef { buf: &bufs[*buf], offset: *offset, sizes: sizes.clone(), strides: strides.clone() }
        }
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

impl Hooks for GpuHooks {
    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        self.hook(tdl_mlir::attention::plan_attention(k, args), |data, shape| {
            (F32Tensor { shape, data }, EXECUTOR, KernelStats::default())
        })
    }

    fn matmul(&self, _k: &MatMulKernel, args: &MatMulArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::matmul::plan_matmul(args), |d, _| (d, EXECUTOR))
    }

    fn elementwise(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::elementwise::plan_elementwise(k, args), |d, _| (d, EXECUTOR))
    }

    fn reduce(&self, k: &ReduceKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::rows::plan_reduce(k, args), |d, _| (d, EXECUTOR))
    }

    fn row(&self, k: &RowKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::rows::plan_row(k, args), |d, _| (d, EXECUTOR))
    }

    fn movement(&self, k: &MoveKernel, args: &MoveArgs<'_>) -> Option<Result<F32Run, String>> {
        self.hook(tdl_mlir::movement::plan_move(k, args), |d, _| (d, EXECUTOR))
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
}
