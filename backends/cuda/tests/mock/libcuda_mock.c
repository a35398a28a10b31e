/* A stand-in for libcuda in host memory, for tests/mock_driver.rs: it checks
 * tdl-cuda's FFI plumbing (signatures, the JIT log options, the kernelParams
 * array, the MemRef expansion, the shared-memory attribute, events, and that
 * every allocation, module, event and context reference is released) on
 * machines without a GPU. Its "kernels" are C versions of the PTX in
 * tests/common/mod.rs; any other function whose name starts with `tdl_`
 * (tdlc's generated kernels) loads and launches as a no-op without
 * parameter information, so tdlc's `--backend gpu` plumbing (plans,
 * uploads, argument checks, downloads) can run against it too. It says
 * nothing about the PTX itself or the real driver. Device pointers are
 * host addresses. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef struct { const char *name; int n; size_t sizes[16]; int maxdyn; } Fn;
static Fn fns[] = {
    {"saxpy", 4, {8, 8, 4, 8}, 48 * 1024},
    {"saxpy_memref", 11, {4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8}, 48 * 1024},
    {"shared_echo", 1, {8}, 48 * 1024},
    {"tdl_*", 0, {0}, 48 * 1024},
};
static int ctx_token, inited, retained, live_allocs, live_events, live_modules;

/* Counters the test reads after dropping everything. */
int mock_retained(void) { return retained; }
int mock_live_allocs(void) { return live_allocs; }
int mock_live_events(void) { return live_events; }
int mock_live_modules(void) { return live_modules; }

CUresult cuInit(unsigned flags) { if (flags) return 1; inited = 1; return 0; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuGetErrorName(CUresult e, const char **s) {
    switch (e) {
    case 1: *s = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 218: *s = "CUDA_ERROR_INVALID_PTX"; return 0;
    case 500: *s = "CUDA_ERROR_NOT_FOUND"; return 0;
    default: return 1;
    }
}
CUresult cuGetErrorString(CUresult e, const char **s) {
    *s = e == 218 ? "a PTX JIT compilation failed" : e == 500 ? "named symbol not found" : "mock error";
    return 0;
}
CUresult cuDeviceGetCount(int *c) { if (!inited) return 3; *c = 1; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { if (ordinal != 0) return 101; *d = 0; return 0; }
CUresult cuDeviceGetName(char *name, int len, int d) { snprintf(name, (size_t)len, "Mock GPU"); return 0; }
CUresult cuDeviceGetAttribute(int *v, int a, int d) {
    switch (a) {
    case 1: case 2: case 3: *v = 1024; return 0;
    case 4: *v = 64; return 0;
    case 5: *v = 2147483647; return 0;
    case 6: case 7: *v = 65535; return 0;
    case 75: *v = 9; return 0;
    case 76: *v = 0; return 0;
    case 97: *v = 232448; return 0;
    default: return 1;
    }
}
CUresult cuDevicePrimaryCtxRetain(void **c, int d) { retained++; *c = &ctx_token; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { retained--; return 0; }
CUresult cuCtxSetCurrent(void *c) { return c == &ctx_token ? 0 : 201; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuModuleLoadDataEx(void **m, const void *image, unsigned n, int *opts, void **vals) {
    if (n != 2 || opts[0] != 5 || opts[1] != 6) return 1;
    if (!strstr((const char *)image, ".version")) {
        snprintf((char *)vals[0], (size_t)(uintptr_t)vals[1], "ptxas fatal   : Parsing error near 'this': syntax error");
        return 218;
    }
    live_modules++;
    *m = fns;
    return 0;
}
CUresult cuModuleUnload(void *m) { live_modules--; return 0; }
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(fns[i].name, name)) { *f = &fns[i]; return 0; }
    if (!strncmp(name, "tdl_", 4)) { *f = &fns[3]; return 0; }
    return 500;
}
CUresult cuFuncSetAttribute(void *f, int a, int v) { if (a != 8) return 1; ((Fn *)f)->maxdyn = v; return 0; }
CUresult cuFuncGetParamInfo(void *f, size_t i, size_t *offset, size_t *size) {
    Fn *fn = f;
    if (i >= (size_t)fn->n) return 1;
    *offset = 0;
    if (size) *size = fn->sizes[i];
    return 0;
}
CUresult cuMemAlloc_v2(uint64_t *p, size_t bytes) {
    if (!bytes) return 1;
    void *m = malloc(bytes);
    memset(m, 0xAB, bytes); /* not zero: alloc must clear it */
    *p = (uint64_t)(uintptr_t)m;
    live_allocs++;
    return 0;
}
CUresult cuMemFree_v2(uint64_t p) { free((void *)(uintptr_t)p); live_allocs--; return 0; }
CUresult cuMemsetD8_v2(uint64_t p, unsigned char c, size_t n) { memset((void *)(uintptr_t)p, c, n); return 0; }
CUresult cuMemcpyHtoD_v2(uint64_t d, const void *s, size_t n) { memcpy((void *)(uintptr_t)d, s, n); return 0; }
CUresult cuMemcpyDtoH_v2(void *d, uint64_t s, size_t n) { memcpy(d, (void *)(uintptr_t)s, n); return 0; }

#define P(i, T) (*(T *)params[i])
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
    Fn *fn = f;
    long threads = (long)gx * bx;
    if (stream || extra || shared > (unsigned)fn->maxdyn) return 1;
    if (fn == &fns[3]) return params ? 0 : 1; /* a tdlc kernel: no-op */
    if (fn == &fns[0]) {
        float *x = (float *)(uintptr_t)P(0, uint64_t), *y = (float *)(uintptr_t)P(1, uint64_t);
        float a = P(2, float);
        int64_t n = P(3, int64_t);
        for (long i = 0; i < threads && i < n; i++) y[i] = a * x[i] + y[i];
    } else if (fn == &fns[1]) {
        if (P(1, uint64_t) != P(2, uint64_t) || P(6, uint64_t) != P(7, uint64_t)) return 1;
        float a = P(0, float);
        float *x = (float *)(uintptr_t)P(2, uint64_t), *y = (float *)(uintptr_t)P(7, uint64_t);
        int64_t xo = P(3, int64_t), xs = P(5, int64_t), yo = P(8, int64_t), yn = P(9, int64_t), ys = P(10, int64_t);
        for (long i = 0; i < threads && i < yn; i++) y[yo + i * ys] = a * x[xo + i * xs] + y[yo + i * ys];
    } else {
        float *y = (float *)(uintptr_t)P(0, uint64_t);
        if (shared < 65536) return 1;
        for (unsigned i = 0; i < bx; i++) y[i] = (float)i;
    }
    return 0;
}
CUresult cuEventCreate(void **e, unsigned flags) { *e = malloc(8); live_events++; return 0; }
CUresult cuEventRecord(void *e, void *stream) { return stream ? 1 : 0; }
CUresult cuEventSynchronize(void *e) { return 0; }
CUresult cuEventElapsedTime(float *ms, void *start, void *end) { *ms = 0.25f; return 0; }
CUresult cuEventDestroy_v2(void *e) { free(e); live_events--; return 0; }
