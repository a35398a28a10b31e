//! Shared by the test binaries: hand-written PTX kernels and the checks
//! that run them on an opened device (a real one, or the mock driver).

#![allow(dead_code)]

use tdl_cuda::{Cuda, CudaError, KernelArg};

/// `y[i] = a*x[i] + y[i]` for i < n, with raw pointers; and the same over
/// 1-D memrefs (allocated, aligned, offset, size, stride each), i < y's size;
/// and a kernel echoing each thread's index through the top of 64 KiB of
/// dynamic shared memory.
pub const PTX: &str = r#"
.version 7.0
.target sm_80
.address_size 64

.extern .shared .align 4 .b8 dyn_smem[];

.visible .entry saxpy(
    .param .u64 saxpy_x,
    .param .u64 saxpy_y,
    .param .f32 saxpy_a,
    .param .u64 saxpy_n
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .f32 %f<5>;
    .reg .b64 %rd<12>;

    ld.param.u64 %rd1, [saxpy_x];
    ld.param.u64 %rd2, [saxpy_y];
    ld.param.f32 %f1, [saxpy_a];
    ld.param.u64 %rd3, [saxpy_n];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd4, %r1, %r2;
    cvt.u64.u32 %rd5, %r3;
    add.s64 %rd6, %rd4, %rd5;
    setp.ge.s64 %p1, %rd6, %rd3;
    @%p1 bra SAXPY_DONE;
    cvta.to.global.u64 %rd7, %rd1;
    cvta.to.global.u64 %rd8, %rd2;
    shl.b64 %rd9, %rd6, 2;
    add.s64 %rd10, %rd7, %rd9;
    add.s64 %rd11, %rd8, %rd9;
    ld.global.f32 %f2, [%rd10];
    ld.global.f32 %f3, [%rd11];
    fma.rn.f32 %f4, %f1, %f2, %f3;
    st.global.f32 [%rd11], %f4;
SAXPY_DONE:
    ret;
}

.visible .entry saxpy_memref(
    .param .f32 sm_a,
    .param .u64 sm_x_alloc,
    .param .u64 sm_x_align,
    .param .u64 sm_x_off,
    .param .u64 sm_x_size,
    .param .u64 sm_x_stride,
    .param .u64 sm_y_alloc,
    .param .u64 sm_y_align,
    .param .u64 sm_y_off,
    .param .u64 sm_y_size,
    .param .u64 sm_y_stride
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .f32 %f<5>;
    .reg .b64 %rd<20>;

    ld.param.f32 %f1, [sm_a];
    ld.param.u64 %rd1, [sm_x_align];
    ld.param.u64 %rd2, [sm_x_off];
    ld.param.u64 %rd3, [sm_x_stride];
    ld.param.u64 %rd4, [sm_y_align];
    ld.param.u64 %rd5, [sm_y_off];
    ld.param.u64 %rd6, [sm_y_size];
    ld.param.u64 %rd7, [sm_y_stride];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd8, %r1, %r2;
    cvt.u64.u32 %rd9, %r3;
    add.s64 %rd10, %rd8, %rd9;
    setp.ge.s64 %p1, %rd10, %rd6;
    @%p1 bra MEMREF_DONE;
    mad.lo.s64 %rd11, %rd10, %rd3, %rd2;
    mad.lo.s64 %rd12, %rd10, %rd7, %rd5;
    cvta.to.global.u64 %rd13, %rd1;
    cvta.to.global.u64 %rd14, %rd4;
    shl.b64 %rd15, %rd11, 2;
    shl.b64 %rd16, %rd12, 2;
    add.s64 %rd17, %rd13, %rd15;
    add.s64 %rd18, %rd14, %rd16;
    ld.global.f32 %f2, [%rd17];
    ld.global.f32 %f3, [%rd18];
    fma.rn.f32 %f4, %f1, %f2, %f3;
    st.global.f32 [%rd18], %f4;
MEMREF_DONE:
    ret;
}

.visible .entry shared_echo(
    .param .u64 se_y
)
{
    .reg .b32 %r<7>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<5>;

    ld.param.u64 %rd1, [se_y];
    mov.u32 %r1, %tid.x;
    shl.b32 %r2, %r1, 2;
    mov.u32 %r3, 65532;
    sub.s32 %r4, %r3, %r2;
    mov.u32 %r5, dyn_smem;
    add.s32 %r6, %r5, %r4;
    cvt.rn.f32.u32 %f1, %r1;
    st.shared.f32 [%r6], %f1;
    bar.sync 0;
    ld.shared.f32 %f2, [%r6];
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.f32 [%rd4], %f2;
    ret;
}
"#;

/// Runs every kernel of [`PTX`] and the error paths, checking the numbers.
pub fn run_kernels(gpu: &Cuda) {
    let module = gpu.load_ptx(PTX).unwrap_or_else(|e| panic!("{e}"));
    let saxpy = module.function("saxpy").unwrap();

    // Pointer arguments, n not a multiple of the block.
    let n = 1000usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let y0: Vec<f32> = (0..n).map(|i| 3.0 - i as f32).collect();
    let (dx, dy) = (gpu.upload(&x).unwrap(), gpu.upload(&y0).unwrap());
    assert_eq!((dx.len(), dy.len()), (n, n));
    let args = [KernelArg::Ptr(&dx), KernelArg::Ptr(&dy), KernelArg::F32(2.0), KernelArg::I64(n as i64)];
    gpu.launch(&saxpy, [(n as u32).div_ceil(128), 1, 1], [128, 1, 1], 0, &args).unwrap();
    let mut out = vec![0f32; n];
    gpu.download(&dy, &mut out).unwrap();
    for i in 0..n {
        assert_eq!(out[i], 2.0 * x[i] + y0[i], "saxpy at {i}");
    }

    // Memref arguments: x viewed with offset 2 and stride 2, y contiguous.
    let saxpy_memref = module.function("saxpy_memref").unwrap();
    let m = 300usize;
    let xs: Vec<f32> = (0..2 * m + 2).map(|i| i as f32).collect();
    let dxs = gpu.upload(&xs).unwrap();
    let dym = gpu.alloc(m).unwrap();
    let mut zeros = vec![1f32; m];
    gpu.download(&dym, &mut zeros).unwrap();
    assert!(zeros.iter().all(|v| *v == 0.0), "alloc zeroes");
    let args = [
        KernelArg::F32(-1.5),
        KernelArg::MemRef { buf: &dxs, elem_bytes: 4, offset: 2, sizes: vec![m as i64], strides: vec![2] },
        KernelArg::memref(&dym, &[m as i64]),
    ];
    gpu.launch(&saxpy_memref, [3, 1, 1], [128, 1, 1], 0, &args).unwrap();
    let mut out = vec![0f32; m];
    gpu.download(&dym, &mut out).unwrap();
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, -1.5 * xs[2 + 2 * i], "saxpy_memref at {i}");
    }

    // More than 48 KiB of dynamic shared memory.
    if gpu.max_shared_bytes() >= 65536 {
        let echo = module.function("shared_echo").unwrap();
        let dout = gpu.alloc(256).unwrap();
        gpu.launch(&echo, [1, 1, 1], [256, 1, 1], 65536, &[KernelArg::Ptr(&dout)]).unwrap();
        let mut out = vec![0f32; 256];
        gpu.download(&dout, &mut out).unwrap();
        assert!(out.iter().enumerate().all(|(i, v)| *v == i as f32), "{out:?}");
    }

    // Timing.
    let args = [KernelArg::Ptr(&dx), KernelArg::Ptr(&dy), KernelArg::F32(1.0), KernelArg::I64(n as i64)];
    let ms = gpu
        .time_ms(|| {
            for _ in 0..10 {
                gpu.launch(&saxpy, [8, 1, 1], [128, 1, 1], 0, &args)?;
            }
            Ok(())
        })
        .unwrap();
    assert!(ms.is_finite() && ms >= 0.0, "{ms}");

    // From another thread.
    std::thread::scope(|s| {
        s.spawn(|| {
            let b = gpu.upload_i32(&[1, -2, 3]).unwrap();
            let mut back = [0i32; 3];
            gpu.download_i32(&b, &mut back).unwrap();
            assert_eq!(back, [1, -2, 3]);
            gpu.launch(&saxpy, [1, 1, 1], [32, 1, 1], 0, &args).unwrap();
            gpu.synchronize().unwrap();
        });
    });

    // Empty buffers.
    let empty = gpu.alloc(0).unwrap();
    assert!(empty.is_empty());
    gpu.download(&empty, &mut []).unwrap();
    assert!(gpu.upload(&[]).unwrap().is_empty());

    // Usage errors, before the driver sees anything.
    let usage = |r: Result<(), CudaError>| matches!(r, Err(CudaError::Usage(_)));
    assert!(usage(gpu.launch(&saxpy, [0, 1, 1], [32, 1, 1], 0, &args)));
    assert!(usage(gpu.launch(&saxpy, [1, 1, 1], [2048, 1, 1], 0, &args)));
    assert!(usage(gpu.launch(&saxpy, [1, 1, 1], [32, 32, 2], 0, &args)));
    assert!(usage(gpu.launch(&saxpy, [1, 1, 1], [32, 1, 1], u32::MAX, &args)));
    assert!(usage(gpu.download(&dy, &mut [0.0; 3])));
    let past_end = [KernelArg::MemRef { buf: &dym, elem_bytes: 4, offset: 1, sizes: vec![m as i64], strides: vec![1] }];
    assert!(usage(gpu.launch(&saxpy_memref, [1, 1, 1], [32, 1, 1], 0, &past_end)));
    if gpu.driver_version() >= 12040 {
        // cuFuncGetParamInfo: a wrong argument list is refused, not launched.
        let too_few = [KernelArg::Ptr(&dx), KernelArg::Ptr(&dy), KernelArg::F32(2.0)];
        assert!(usage(gpu.launch(&saxpy, [1, 1, 1], [32, 1, 1], 0, &too_few)));
        let wrong_size = [KernelArg::Ptr(&dx), KernelArg::Ptr(&dy), KernelArg::F32(2.0), KernelArg::I32(3)];
        assert!(usage(gpu.launch(&saxpy, [1, 1, 1], [32, 1, 1], 0, &wrong_size)));
    }

    // Driver errors name the call.
    let err = gpu.load_ptx("this is not PTX").unwrap_err();
    assert!(matches!(err, CudaError::Driver { call: "cuModuleLoadDataEx", .. }), "{err}");
    eprintln!("bad PTX: {err}");
    let err = module.function("no_such_kernel").unwrap_err();
    assert!(matches!(err, CudaError::Driver { call: "cuModuleGetFunction", .. }), "{err}");
    assert!(err.to_string().contains("no_such_kernel"), "{err}");
    gpu.synchronize().unwrap();
}
