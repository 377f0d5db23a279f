#!/usr/bin/env python3
"""mutate.py: proves the emulated kernel tests can fail. Each mutation below breaks one kernel
file on purpose (a wrong index or bound, the kind of bug the tests exist for) in a copy of
kernels/, runs scripts/emu-kernels.sh on that file only (EMU_KERNELS=copy) and expects it to
fail. Prints CAUGHT (with the build that caught it: plain emulation and/or ASan) or MISSED per
mutation; exits non-zero if any mutation is missed or no longer applies (its text must occur
exactly once in the kernel). Not part of `make test` (about 20 s per mutation on 2 cores):
run `python3 kernels/emu/mutate.py [SUBSTRING]` after changing a kernel or a test.
Python 3 standard library only.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (kernel file, exact original text, mutated text, what it breaks)
MUTATIONS = [
    ("norm.cu", "        red[warp] = v;\n    }\n    __syncthreads();", "        red[warp] = v;\n    }",
     "missing barrier before warp 0 reads the warp sums"),
    ("norm.cu", "const float* xr = x + (long long)t * dim;",
     "const float* xr = x + (long long)t * (dim - 1);", "rms_norm row offset"),
    ("norm.cu", "float w = lane < nwarps ? red[lane] : 0.0f;",
     "float w = lane <= nwarps ? red[lane] : 0.0f;", "block sum reads an unwritten warp slot"),
    ("norm.cu", "    ss = block_sum_fixed(ss, red);\n    const float r = 1.0f / sqrtf(ss / (float)dim + eps);",
     "    if (threadIdx.x == 200) return;\n    ss = block_sum_fixed(ss, red);\n    const float r = 1.0f / sqrtf(ss / (float)dim + eps);",
     "a thread leaves before the block's shuffles and barriers"),
    ("rope.cu", "const float x2 = v[i + half];", "const float x2 = v[i + half - 1];",
     "rope pair index"),
    ("activation.cu", "const float u = gu[base + inter + j];",
     "const float u = gu[base + inter + j - 1];", "silu_mul up index"),
    ("activation.cu", "    y[(long long)t * stride + col + j] += bias[j];",
     "    y[(long long)t * stride + j] += bias[j];", "add_bias ignores col"),
    ("embedding.cu", "(long long)id < table_rows ? table[", "(long long)id <= table_rows ? table[",
     "f32 embedding bound off by one"),
    ("sampling.cu", "(long long)r < x_rows ? x[", "(long long)r <= x_rows ? x[",
     "gather_rows bound off by one"),
    ("attention.cu", "const int kvh = h / group;", "const int kvh = h % n_kv_heads;",
     "GQA head mapping"),
    ("attention.cu", "lo = pos + 1 - window;", "lo = pos - window;", "window start"),
    ("attention.cu", "const unsigned blk = table[pu / bs];",
     "const unsigned blk = table[(pu + 1) / bs];", "paged position -> block"),
    ("attention.cu", "for (int i = j; i < hp; i += 4) {", "for (int i = j; i < hp - 1; i += 4) {",
     "score skips the last dim pair"),
    ("attention.cu", "if (k < LPX_ATT_CHUNK) {\n            reinterpret_cast<uint4*>(sm.k + k * rs)[u] = st.k[i];",
     "if (k < LPX_ATT_CHUNK - 1) {\n            reinterpret_cast<uint4*>(sm.k + k * rs)[u] = st.k[i];",
     "16-byte path drops the chunk's last key tile row"),
    ("attention.cu", "        __syncthreads();  // scores visible\n", "",
     "missing barrier between the scores and the softmax"),
    ("matmul.cu", "const int b_row = (lane & 7) + ((lane >> 4) << 3);",
     "const int b_row = (lane & 7) + (((lane >> 3) & 1) << 3);", "gemm_bf16 B ldmatrix rows"),
    ("matmul.cu", "bf16 (*stage)[GV_LD] = ring[b % GV_NST];",
     "bf16 (*stage)[GV_LD] = ring[(b + 1) % GV_NST];", "gemv ring stage"),
    ("matmul.cu", "const bool vec = (in % 8 == 0) && ((reinterpret_cast<uintptr_t>(x) & 15) == 0) &&\n                     ((reinterpret_cast<uintptr_t>(w) & 15) == 0);\n    if (vec)\n        gemm_bf16_tile",
     "const bool vec = (in % 8 == 0) && ((reinterpret_cast<uintptr_t>(w) & 15) == 0);\n    if (vec)\n        gemm_bf16_tile",
     "gemm_bf16 vector loads without the x alignment check"),
    ("matmul.cu", "    sx[c + 3][r] = xv.w;", "    sx[c + 2][r] = xv.w;", "gemm_f32 x tile column"),
    ("lora.cu", "const int t = seg_rows[c + (r < nr ? r : 0)];\n            xoff[r]",
     "const int t = seg_rows[c + r];\n            xoff[r]", "shrink reads seg_rows past a short chunk"),
    ("lora.cu", "        __syncthreads();  // part[] is rewritten by the next chunk\n", "",
     "missing barrier before part[] is rewritten"),
    ("lora.cu", "        int kk = 0;\n        if (vec) {", "        int kk = 1;\n        if (vec) {",
     "expand skips k = 0"),
    ("lora.cu", "(unsigned short)(w[q >> 1] >> (16 * (q & 1)));",
     "(unsigned short)(w[q >> 1] >> (16 * ((q & 1) ^ 1)));",
     "expand's 16-byte B loads swap the two weights of a word"),
    ("lora.cu", "const bool vec = (rank & 7) == 0 && (reinterpret_cast<uintptr_t>(b) & 15) == 0;",
     "const bool vec = (rank & 7) == 0;", "expand's 16-byte B loads without the alignment check"),
    ("lora.cu", "arena + seg_b_off[g] + (long long)o * rank);", "arena + seg_b_off[g] + (long long)o * kn);",
     "expand's B row stride is the summed rank, not the stored rank"),
    ("lora.cu", "__bfloat162float(__ushort_as_bfloat16(__ldg(a + i)))",
     "__bfloat162float(__ushort_as_bfloat16(__ldg(a + i) & 0xff80))", "shrink drops A's low mantissa bits"),
]


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    missed = 0
    for f, old, new, what in MUTATIONS:
        if only and only not in f and only not in what:
            continue
        src = open(os.path.join(ROOT, "kernels", f)).read()
        n = src.count(old)
        if n != 1:
            print("STALE   %-14s %s: the original text occurs %d times" % (f, what, n))
            missed += 1
            continue
        with tempfile.TemporaryDirectory() as d:
            for g in os.listdir(os.path.join(ROOT, "kernels")):
                if g.endswith(".cu"):
                    shutil.copy(os.path.join(ROOT, "kernels", g), d)
            open(os.path.join(d, f), "w").write(src.replace(old, new))
            env = dict(os.environ, EMU_KERNELS=d)
            r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "emu-kernels.sh"), f[:-3]],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = r.stdout
        by = [m for m in ("plain", "asan") if re.search(r"\[%s\] FAIL" % m, out)]
        first = next((l for l in out.splitlines()
                      if l.startswith(("FAIL", "EMU FATAL")) or "ERROR: AddressSanitizer" in l
                      or "Segmentation" in l), "")
        if r.returncode != 0:
            print("CAUGHT  %-14s %-48s by %s: %s" % (f, what, "+".join(by) or "build", first[:110]))
        else:
            print("MISSED  %-14s %s" % (f, what))
            missed += 1
    print("mutate: %s" % ("every mutation caught" if missed == 0 else "%d missed or stale" % missed))
    return 1 if missed else 0


sys.exit(main())
