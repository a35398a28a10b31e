//! `$TDL_CUDA_DRIVER` naming a library that does not exist: `Cuda::open`
//! fails with "no CUDA driver found" and the path, on every machine (GPU or
//! not), without panicking. The environment is process-global, so this
//! binary has a single test that sets it before anything reads it.

use tdl_cuda::{Cuda, CudaError, DRIVER_ENV};

#[test]
fn a_missing_driver_library_is_a_clear_error() {
    let path = "/nonexistent/libcuda.so";
    std::env::set_var(DRIVER_ENV, path);
    for ordinal in [0, 1, usize::MAX] {
        let err = Cuda::open(ordinal).expect_err("no driver at that path");
        let text = err.to_string();
        assert!(matches!(err, CudaError::NoDriver(_)), "{err:?}");
        assert!(text.starts_with("no CUDA driver found"), "{text}");
        assert!(text.contains(path), "{text}");
        assert!(text.contains(DRIVER_ENV), "{text}");
        assert!(text.contains("--backend gpu needs an NVIDIA GPU and its driver"), "{text}");
        // Only that path is tried.
        assert!(!text.contains("libcuda.so.1"), "{text}");
    }
    // A path that exists but is not a driver library: a loader error, still NoDriver.
    let not_a_library = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
    std::env::set_var(DRIVER_ENV, &not_a_library);
    let text = Cuda::open(0).expect_err("not a library").to_string();
    assert!(text.starts_with("no CUDA driver found") && text.contains(&not_a_library), "{text}");
    // A library that loads but is not the driver (no cuInit): NoDriver, naming the symbol.
    if let Some(libc) = ["libc.so.6", "libc.so"].into_iter().find(|n| {
        // SAFETY: libc is already loaded in this process; opening it again runs no initialisers.
        unsafe { libloading::Library::new(n) }.is_ok()
    }) {
        std::env::set_var(DRIVER_ENV, libc);
        let text = Cuda::open(0).expect_err("libc is no driver").to_string();
        assert!(text.starts_with("no CUDA driver found") && text.contains("lacks cuInit"), "{text}");
    }
}
