#!/usr/bin/env python3
"""Run the MLIR-generated FA2 PTX (gen_fa2v.py gpufunc) through the CUDA driver (ctypes, no toolkit)
and compare with a plain-Python reference.  Usage: python3 device_check.py DIR_WITH_PTX"""
import ctypes as C, math, os, sys, random
D = 16
def fill(H, N, a, b, c):
    return [float((((h*a + i*b + d*c) % 23) - 11) / 8) for h in range(H) for i in range(N) for d in range(D)]
def reference(Q, K, V, H, T, S, off):
    out = []
    for h in range(H):
        for r in range(T):
            ks = [k for k in range(S) if k + off <= r]
            if not ks: out += [0.0]*D; continue
            q = Q[(h*T + r)*D:(h*T + r + 1)*D]
            s = {k: 0.25*sum(q[d]*K[(h*S + k)*D + d] for d in range(D)) for k in ks}
            mx = max(s.values()); e = {k: math.exp(v - mx) for k, v in s.items()}; z = sum(e.values())
            out += [sum(e[k]*V[(h*S + k)*D + d] for k in ks)/z for d in range(D)]
    return out
cu = C.CDLL("libcuda.so.1")
def ok(r, what):
    if r:
        s = C.c_char_p(); cu.cuGetErrorString(r, C.byref(s)); raise SystemExit(f"{what} failed: {r} {s.value}")
ok(cu.cuInit(0), "cuInit")
dev = C.c_int(); ok(cu.cuDeviceGet(C.byref(dev), 0), "cuDeviceGet")
ctx = C.c_void_p(); ok(cu.cuDevicePrimaryCtxRetain(C.byref(ctx), dev), "ctx"); ok(cu.cuCtxSetCurrent(ctx), "setctx")
name = C.create_string_buffer(100); cu.cuDeviceGetName(name, 100, dev); print("device:", name.value.decode())
def load(ptx_path, fname):
    log = C.create_string_buffer(8192)
    opts = (C.c_int*2)(5, 6)                      # CU_JIT_ERROR_LOG_BUFFER, ..._SIZE_BYTES
    vals = (C.c_void_p*2)(C.cast(log, C.c_void_p), C.c_void_p(8192))
    mod = C.c_void_p(); data = open(ptx_path, "rb").read() + b"\0"
    r = cu.cuModuleLoadDataEx(C.byref(mod), data, 2, opts, vals)
    if r: print("JIT log:", log.value.decode()); ok(r, f"cuModuleLoadDataEx({ptx_path})")
    f = C.c_void_p(); ok(cu.cuModuleGetFunction(C.byref(f), mod, fname.encode()), "cuModuleGetFunction"); return f
def dalloc(host):
    p = C.c_uint64(); ok(cu.cuMemAlloc_v2(C.byref(p), max(4, 4*len(host))), "cuMemAlloc")
    buf = (C.c_float*len(host))(*host); ok(cu.cuMemcpyHtoD_v2(p, buf, 4*len(host)), "HtoD"); return p
def desc(p, H, N):   # memref<?x?x16xf32> -> 9 u64 params: alloc, aligned, offset, sizes[3], strides[3]
    return [p.value, p.value, 0, H, N, D, N*D, D, 1]
worst = 0.0
for off in (0, 1, 20, -1000000):
    f = load(os.path.join(sys.argv[1], f"fa2_off{off}.ptx"), "fa2")
    for (H, T, S) in ((2, 37, 37), (3, 37, 50), (3, 50, 37), (1, 1, 1), (2, 16, 16), (2, 200, 200)):
        Q, K, V = fill(H, T, 131, 17, 7), fill(H, S, 71, 5, 3), fill(H, S, 43, 13, 19)
        dq, dk, dv, do = dalloc(Q), dalloc(K), dalloc(V), dalloc([float("nan")]*(H*T*D))
        params = desc(dq, H, T) + desc(dk, H, S) + desc(dv, H, S) + desc(do, H, T)
        cvals = [C.c_uint64(x) for x in params]
        argv = (C.c_void_p*len(cvals))(*[C.cast(C.pointer(v), C.c_void_p) for v in cvals])
        ok(cu.cuLaunchKernel(f, (T + 15)//16, H, 1, 16, 1, 1, 0, None, argv, None), "cuLaunchKernel")
        ok(cu.cuCtxSynchronize(), "sync")
        out = (C.c_float*(H*T*D))(); ok(cu.cuMemcpyDtoH_v2(out, do, 4*H*T*D), "DtoH")
        ref = reference(Q, K, V, H, T, S, off)
        err = max(abs(a - b) if not math.isnan(a) else float("inf") for a, b in zip(out, ref))
        worst = max(worst, err)
        print(f"off={off:>8} H={H} T={T} S={S}: max_abs_err={err:.3g} {'PASS' if err < 1e-4 else 'FAIL'}")
        for p in (dq, dk, dv, do): cu.cuMemFree_v2(p)
print("ALL PASS" if worst < 1e-4 else "SOME FAIL", f"worst={worst:.3g}")
