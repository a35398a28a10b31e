#!/usr/bin/env python3
"""Runs the PTX that `cargo run -p tdl-mlir --example attention_ptx -- DIR` wrote
through the CUDA driver API (ctypes: needs libcuda, no CUDA toolkit) and compares
every output with a plain-Python attention. Usage: gpu-attention-check.py DIR"""
import ctypes as C, math, os, sys

def fill(n, seed):
    return [((i * 7919 + seed * 104729) % 1000) / 500.0 - 1.0 for i in range(n)]

def reference(q, k, v, hq, hk, T, S, d, dv, visible):
    out = [0.0] * (hq * T * dv)
    scale = 1 / math.sqrt(d)
    for h in range(hq):
        kh = h // (hq // hk)
        for r in range(T):
            ks = [j for j in range(S) if visible(r, j, T, S)]
            if not ks:
                continue
            qr = q[(h * T + r) * d:(h * T + r + 1) * d]
            sc = [scale * sum(a * b for a, b in zip(qr, k[(kh * S + j) * d:(kh * S + j + 1) * d])) for j in ks]
            mx = max(sc)
            e = [math.exp(x - mx) for x in sc]
            z = sum(e)
            for w, j in zip(e, ks):
                for x in range(dv):
                    out[(h * T + r) * dv + x] += w / z * v[(kh * S + j) * dv + x]
    return out

cu = C.CDLL("libcuda.so.1")
def ok(r, what):
    if r:
        s = C.c_char_p(); cu.cuGetErrorString(r, C.byref(s)); raise SystemExit(f"{what} failed: {r} {s.value}")
ok(cu.cuInit(0), "cuInit")
dev = C.c_int(); ok(cu.cuDeviceGet(C.byref(dev), 0), "cuDeviceGet")
ctx = C.c_void_p(); ok(cu.cuDevicePrimaryCtxRetain(C.byref(ctx), dev), "ctx"); ok(cu.cuCtxSetCurrent(ctx), "setctx")
name = C.create_string_buffer(100); cu.cuDeviceGetName(name, 100, dev); print("device:", name.value.decode())
def load(path):
    log = C.create_string_buffer(8192)
    opts = (C.c_int * 2)(5, 6)
    vals = (C.c_void_p * 2)(C.cast(log, C.c_void_p), C.c_void_p(8192))
    mod = C.c_void_p(); data = open(path, "rb").read() + b"\0"
    r = cu.cuModuleLoadDataEx(C.byref(mod), data, 2, opts, vals)
    if r: print("JIT log:", log.value.decode()); ok(r, f"cuModuleLoadDataEx({path})")
    f = C.c_void_p(); ok(cu.cuModuleGetFunction(C.byref(f), mod, b"attn"), "cuModuleGetFunction"); return f
def dalloc(host):
    p = C.c_uint64(); ok(cu.cuMemAlloc_v2(C.byref(p), max(4, 4 * len(host))), "cuMemAlloc")
    buf = (C.c_float * len(host))(*host); ok(cu.cuMemcpyHtoD_v2(p, buf, 4 * len(host)), "HtoD"); return p
def desc(p, a, b, c):  # memref<?x?xCxf32>: allocated, aligned, offset, 3 sizes, 3 strides
    return [p.value, p.value, 0, a, b, c, b * c, c, 1]
worst, failed, runs = 0.0, 0, 0
d0 = sys.argv[1]
for line in open(os.path.join(d0, "manifest.tsv")):
    file, tq, d, dv, pred = line.rstrip("\n").split("\t")
    tq, d, dv = int(tq), int(d), int(dv)
    visible = eval("lambda q, k, T, S: " + pred)
    f = load(os.path.join(d0, file))
    for (hq, hk, T, S) in ((2, 2, 37, 37), (4, 2, 5, 70), (2, 1, 130, 33), (1, 1, 1, 1)):
        q, k, v = fill(hq * T * d, 1), fill(hk * S * d, 2), fill(hk * S * dv, 3)
        dq, dk, dv_, do = dalloc(q), dalloc(k), dalloc(v), dalloc([float("nan")] * (hq * T * dv))
        params = desc(dq, hq, T, d) + desc(dk, hk, S, d) + desc(dv_, hk, S, dv) + desc(do, hq, T, dv)
        cvals = [C.c_uint64(x) for x in params]
        argv = (C.c_void_p * len(cvals))(*[C.cast(C.pointer(x), C.c_void_p) for x in cvals])
        ok(cu.cuLaunchKernel(f, (T + tq - 1) // tq, hq, 1, tq, 1, 1, 0, None, argv, None), "cuLaunchKernel")
        ok(cu.cuCtxSynchronize(), "sync")
        out = (C.c_float * (hq * T * dv))(); ok(cu.cuMemcpyDtoH_v2(out, do, 4 * hq * T * dv), "DtoH")
        ref = reference(q, k, v, hq, hk, T, S, d, dv, visible)
        err = max(abs(a - b) if not math.isnan(a) else float("inf") for a, b in zip(out, ref))
        worst = max(worst, err); runs += 1
        good = err <= 1e-4
        failed += not good
        print(f"{file} Hq={hq} Hk={hk} T={T} S={S}: max_abs_err={err:.3g} {'PASS' if good else 'FAIL'}")
        for p in (dq, dk, dv_, do): cu.cuMemFree_v2(p)
print(f"{runs - failed} of {runs} pass, worst max_abs_err={worst:.3g}")
sys.exit(1 if failed else 0)
