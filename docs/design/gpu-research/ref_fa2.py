#!/usr/bin/env python3
"""Plain-list reference for gen_fa2.py's driver; compares with printMemrefF32 output on stdin."""
import math, re, sys
off = int(sys.argv[1]); D = 16
H, T, S = (int(x) for x in sys.argv[2:5]) if len(sys.argv) > 4 else (2, 37, 37)
def fill(a, b, c, N):
    return [[[(((h*a + i*b + d*c) % 23) - 11) / 8 for d in range(D)] for i in range(N)] for h in range(H)]
Q, K, V = fill(131, 17, 7, T), fill(71, 5, 3, S), fill(43, 13, 19, S)
ref = []
for h in range(H):
    for r in range(T):
        ks = [k for k in range(S) if k + off <= r]
        if not ks:
            ref += [0.0] * D; continue
        s = {k: 0.25 * sum(Q[h][r][d] * K[h][k][d] for d in range(D)) for k in ks}
        mx = max(s.values()); e = {k: math.exp(v - mx) for k, v in s.items()}; z = sum(e.values())
        ref += [sum(e[k] * V[h][k][d] for k in ks) / z for d in range(D)]
txt = sys.stdin.read()
got = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", txt[txt.index("data ="):])]
assert len(got) == len(ref), (len(got), len(ref))
err = max(abs(a - b) for a, b in zip(got, ref))
zero_rows = [r for r in range(T) if all(got[r*D + d] == 0.0 for d in range(D))]
print(f"n={len(got)} max_abs_err={err:.3g} rows_all_zero(h=0)={zero_rows} -> {'PASS' if err < 1e-4 else 'FAIL'}")
