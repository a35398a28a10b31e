/* Runs causal attention from C through the shared library tdlc compiles
 * from examples/causal_attention.tdl — no Rust, no LLVM at run time.
 *
 *   tdlc compile examples/causal_attention.tdl --emit so -o build/libcausal_attention.so
 *       (also writes build/causal_attention.h)
 *   cc -O2 -Ibuild examples/c/run_attention.c -Lbuild -lcausal_attention \
 *      -Wl,-rpath,"$PWD/build" -o build/run_attention
 *   build/run_attention 8 1000            # H = 8 heads, T = S = 1000
 *   build/run_attention 2 37 out.f32      # also writes the output as raw floats
 *
 * One library serves every H and T: the sizes are arguments of the call.
 * The inputs are a fixed pattern (see fill), so other programs can rebuild
 * them and check the output.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "causal_attention.h"

/* x[i] = ((i * 7919 + seed * 104729) mod 1000) / 1000 - 0.5, exact in float. */
static void fill(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)((i * 7919u + seed * 104729u) % 1000u) / 1000.0f - 0.5f;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s H T [OUT.f32]\n", argv[0]);
        return 2;
    }
    const int64_t h = atoll(argv[1]), t = atoll(argv[2]), d = 64;
    if (h <= 0 || t <= 0) {
        fprintf(stderr, "H and T must be positive\n");
        return 2;
    }
    /* The dimension symbols in the order the header lists them: H, S, T. */
    const int64_t dims[3] = {h, t, t};
    const size_t n = (size_t)(h * t * d);
    float *q = malloc(n * sizeof *q), *k = malloc(n * sizeof *k), *v = malloc(n * sizeof *v);
    float *out = malloc(n * sizeof *out);
    if (!q || !k || !v || !out) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    fill(q, n, 1);
    fill(k, n, 2);
    fill(v, n, 3);

    const void *inputs[3] = {q, k, v};
    const size_t input_lens[3] = {n, n, n};
    void *outputs[1] = {out};
    size_t output_lens[1] = {n};
    if (tdl_run_causal_attention(dims, inputs, input_lens, outputs, output_lens) != 0) {
        fprintf(stderr, "error: %s\n", tdl_last_error());
        return 1;
    }

    /* A buffer of the wrong size is refused before anything is written. */
    output_lens[0] = n - 1;
    if (tdl_run_causal_attention(dims, inputs, input_lens, outputs, output_lens) == 0) {
        fprintf(stderr, "error: a short output buffer was accepted\n");
        return 1;
    }
    printf("short output refused: %s\n", tdl_last_error());

    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += out[i];
    }
    printf("H=%lld T=%lld: out[0]=%.6f sum=%.6f\n", (long long)h, (long long)t, out[0], sum);
    if (argc > 3) {
        FILE *f = fopen(argv[3], "wb");
        if (!f || fwrite(out, sizeof *out, n, f) != n || fclose(f) != 0) {
            fprintf(stderr, "error: cannot write %s\n", argv[3]);
            return 1;
        }
    }
    free(q);
    free(k);
    free(v);
    free(out);
    return 0;
}
