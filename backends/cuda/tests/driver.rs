//! `Cuda::open` with the default driver search, asserting something real on
//! both kinds of machine: where `libcuda` cannot be loaded, the error is
//! "no CUDA driver found"; where it can, `open` succeeds (or reports a driver
//! error, e.g. no device) and hand-written PTX kernels are run and checked:
//! a pointer-argument saxpy, a memref-argument saxpy in MLIR's gpu-to-nvvm
//! ABI, a launch with more than 48 KiB of dynamic shared memory, timing, use
//! from another thread, and the usage/driver errors.

mod common;

use tdl_cuda::{Cuda, CudaError, DRIVER_ENV};

fn driver_loadable() -> bool {
    let names: &[&str] = if cfg!(windows) { &["nvcuda.dll"] } else { &["libcuda.so.1", "libcuda.so"] };
    names.iter().any(|n| {
        // SAFETY: the NVIDIA driver library's initialisers are sound to run.
        unsafe { libloading::Library::new(n) }.is_ok()
    })
}

#[test]
fn open_with_the_default_driver_search() {
    // The only test of this binary: nothing else reads the environment.
    std::env::remove_var(DRIVER_ENV);
    if !driver_loadable() {
        let err = Cuda::open(0).expect_err("no libcuda on this machine");
        let text = err.to_string();
        assert!(matches!(err, CudaError::NoDriver(_)), "{err:?}");
        assert!(text.starts_with("no CUDA driver found"), "{text}");
        assert!(text.contains("libcuda.so.1") || cfg!(windows), "{text}");
        assert!(text.ends_with("--backend gpu needs an NVIDIA GPU and its driver"), "{text}");
        eprintln!("no CUDA driver here: {text}");
        return;
    }
    let gpu = match Cuda::open(0) {
        Ok(gpu) => gpu,
        Err(err @ CudaError::Driver { .. }) => {
            eprintln!("libcuda loads but no usable device: {err}");
            return;
        }
        Err(err) => panic!("libcuda loads, yet: {err}"),
    };
    eprintln!(
        "{} sm_{}{} driver {}",
        gpu.device_name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        gpu.driver_version()
    );
    assert!(!gpu.device_name().is_empty());
    assert!(gpu.compute_capability().0 >= 3);
    assert!(gpu.driver_version() >= 3000);
    assert!(matches!(Cuda::open(usize::MAX), Err(CudaError::Usage(_))));
    common::run_kernels(&gpu);
}
