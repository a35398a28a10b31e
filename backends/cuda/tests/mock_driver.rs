//! The GPU code paths against a mock driver (`tests/mock/libcuda_mock.c`,
//! compiled here with the system C compiler; skipped where there is none),
//! loaded through `$TDL_CUDA_DRIVER`: checks the FFI plumbing and that every
//! allocation, module, event and context reference is released, on machines
//! without a GPU. The environment is process-global: one test per binary.

mod common;

use tdl_cuda::{Cuda, DRIVER_ENV};

#[test]
fn the_gpu_paths_against_a_mock_driver() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mock/libcuda_mock.c");
    let lib = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("libcuda_mock.so");
    let compiled = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(src)
        .status();
    if !matches!(compiled, Ok(s) if s.success()) || cfg!(not(target_os = "linux")) {
        eprintln!("skipped: no C compiler to build the mock driver ({compiled:?})");
        return;
    }
    std::env::set_var(DRIVER_ENV, &lib);
    {
        let gpu = Cuda::open(0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gpu.device_name(), "Mock GPU");
        assert_eq!(gpu.compute_capability(), (9, 0));
        assert_eq!(gpu.driver_version(), 13000);
        assert_eq!(gpu.max_shared_bytes(), 232448);
        common::run_kernels(&gpu);
    }
    // SAFETY: the mock is already loaded (by `Cuda::open`); it has no initialisers.
    let mock = unsafe { libloading::Library::new(&lib) }.unwrap();
    let count = |name: &[u8]| {
        // SAFETY: the mock's counters are `int f(void)`.
        let f = unsafe { mock.get::<unsafe extern "C" fn() -> i32>(name) }.unwrap();
        // SAFETY: as above.
        unsafe { f() }
    };
    assert_eq!(count(b"mock_live_allocs\0"), 0, "buffers not freed");
    assert_eq!(count(b"mock_live_events\0"), 0, "events not destroyed");
    assert_eq!(count(b"mock_live_modules\0"), 0, "modules not unloaded");
    assert_eq!(count(b"mock_retained\0"), 0, "primary context not released");
}
