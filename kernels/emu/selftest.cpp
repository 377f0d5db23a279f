// selftest.cpp: the emulation's own primitives, on small kernels written here (no xform):
// shuffles (idx / xor / down / up, widths 32 and 8) against CUDA's documented semantics,
// ballot / any / all, __syncthreads_or, shared memory poisoned at every block start, cp.async
// landing only at the wait, the mma / ldmatrix fragment layouts against a plain 16x8x16
// product, and the strict failures (each in a child process, which must exit with status 70):
// a deadlock, __syncthreads at two source lines, a thread exiting while others wait, a shuffle
// with a lane gone, ldmatrix outside shared memory, an invalid launch.
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static void test_shuffles() {
    std::vector<int> out(64 * 8, -1);
    dim3 g, b;
    b.x = 64;
    emu_launch(g, b, [&] {
        const int t = threadIdx.x, l = t & 31;
        int* o = &out[t * 8];
        o[0] = __shfl_sync(0xffffffffu, 100 + t, 5);
        o[1] = __shfl_xor_sync(0xffffffffu, 100 + t, 3);
        o[2] = __shfl_down_sync(0xffffffffu, 100 + t, 4);
        o[3] = __shfl_up_sync(0xffffffffu, 100 + t, 4);
        o[4] = __shfl_sync(0xffffffffu, 100 + t, 3, 8);
        o[5] = __shfl_down_sync(0xffffffffu, 100 + t, 2, 8);
        o[6] = (int)__ballot_sync(0xffffffffu, l % 3 == 0);
        o[7] = __any_sync(0xffffffffu, l == 31) + 2 * __all_sync(0xffffffffu, l < 31);
    });
    int bad = 0;
    unsigned ball = 0;
    for (int l = 0; l < 32; l += 3) ball |= 1u << l;
    for (int t = 0; t < 64; ++t) {
        const int l = t & 31, w = t - l;
        const int* o = &out[t * 8];
        bad += o[0] != 100 + w + 5;
        bad += o[1] != 100 + w + (l ^ 3);
        bad += o[2] != 100 + (l + 4 < 32 ? t + 4 : t);
        bad += o[3] != 100 + (l >= 4 ? t - 4 : t);
        bad += o[4] != 100 + w + (l & ~7) + 3;
        bad += o[5] != 100 + ((l & 7) + 2 < 8 ? t + 2 : t);
        bad += (unsigned)o[6] != ball;
        bad += o[7] != 1;
    }
    CHECK(bad == 0, "shuffles / votes: %d wrong", bad);
}

static void test_block() {
    // Block 0 writes shared then reads it; block 1 reads before writing: it must see poison
    // (0xff bytes), not block 0's values. __syncthreads_or over the block.
    std::vector<float> seen(2 * 64);
    std::vector<int> ors(2 * 64);
    dim3 g, b;
    g.x = 2;
    b.x = 64;
    emu_launch(g, b, [&] {
        __shared__ float s[64];
        emu_shared_poison(&s, sizeof(s));
        const int t = threadIdx.x;
        if (blockIdx.x == 0) {
            s[t] = 1.0f;
            __syncthreads();
        } else {
            __syncthreads();
        }
        seen[blockIdx.x * 64 + t] = s[(t + 1) % 64];
        ors[blockIdx.x * 64 + t] = __syncthreads_or(blockIdx.x == 1 && t == 63);
    });
    int bad = 0;
    for (int t = 0; t < 64; ++t) {
        bad += seen[t] != 1.0f;
        bad += bits(seen[64 + t]) != 0xffffffffu;
        bad += ors[t] != 0 || ors[64 + t] != 1;
    }
    CHECK(bad == 0, "shared poison / __syncthreads_or: %d wrong", bad);
}

static void test_mma() {
    // A 16x16, B 16x8 bf16 in shared memory; A fragments through ldmatrix (as matmul.cu), B
    // fragments built from the PTX layout; D against a plain double product.
    float A[16][16], B[16][8], C[16][8];
    for (auto& r : A) for (float& v : r) v = bf16f(ref_bf16(rnd()));
    for (auto& r : B) for (float& v : r) v = bf16f(ref_bf16(rnd()));
    for (auto& r : C) for (float& v : r) v = rnd();
    float D[16][8];
    dim3 g, b;
    b.x = 32;
    emu_launch(g, b, [&] {
        __shared__ __align__(16) bf16 sa[16][24];
        emu_shared_poison(&sa, sizeof(sa));
        const int l = threadIdx.x, gid = l >> 2, tig = l & 3;
        for (int k = 0; k < 16; ++k) sa[l & 15][k] = bf16{ref_bf16(A[l & 15][k])};
        __syncwarp();
        uint32_t a[4];
        emu_ldmatrix_x4(a, &sa[l & 15][(l >> 4) * 8]);
        auto pk = [](float lo, float hi) { return (uint32_t)ref_bf16(lo) | ((uint32_t)ref_bf16(hi) << 16); };
        const uint32_t b0 = pk(B[2 * tig][gid], B[2 * tig + 1][gid]);
        const uint32_t b1 = pk(B[2 * tig + 8][gid], B[2 * tig + 9][gid]);
        float c[4] = {C[gid][2 * tig], C[gid][2 * tig + 1], C[gid + 8][2 * tig], C[gid + 8][2 * tig + 1]};
        emu_mma(c, a, b0, b1);
        D[gid][2 * tig] = c[0];
        D[gid][2 * tig + 1] = c[1];
        D[gid + 8][2 * tig] = c[2];
        D[gid + 8][2 * tig + 1] = c[3];
    });
    int bad = 0;
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            double s = C[m][n];
            for (int k = 0; k < 16; ++k) s += (double)A[m][k] * B[k][n];
            bad += D[m][n] != (float)s;
        }
    CHECK(bad == 0, "ldmatrix + mma fragment layouts: %d of 128 wrong", bad);
}

static void test_cp_async() {
    std::vector<float> src(32 * 4), got(32 * 2);
    for (size_t i = 0; i < src.size(); ++i) src[i] = (float)i;
    dim3 g, b;
    b.x = 32;
    emu_launch(g, b, [&] {
        __shared__ __align__(16) float s[32 * 4];
        emu_shared_poison(&s, sizeof(s));
        const int l = threadIdx.x;
        emu_cp_async(&s[4 * l], &src[4 * l], true);
        emu_cp_commit();
        got[2 * l] = s[4 * l];  // before the wait: still poison
        emu_cp_wait(0);
        got[2 * l + 1] = s[4 * l];
    });
    int bad = 0;
    for (int l = 0; l < 32; ++l) bad += bits(got[2 * l]) != 0xffffffffu || got[2 * l + 1] != 4.0f * l;
    CHECK(bad == 0, "cp.async: %d wrong", bad);
}

// Runs `f` in a child; true when the child died through emu_fatal (status 70).
template <class F> static bool fatal_in_child(F f) {
    fflush(stdout);
    const pid_t p = fork();
    if (p == 0) {
        freopen("/dev/null", "w", stderr);
        f();
        _exit(0);
    }
    int st = 0;
    waitpid(p, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 70;
}

static void test_strict() {
    dim3 g, b;
    b.x = 64;
    CHECK(fatal_in_child([&] {
              emu_launch(g, b, [&] {
                  // warp 0 and lane 63 at the block barrier, lanes 32..62 at their warp's
                  if (threadIdx.x < 32 || threadIdx.x == 63) __syncthreads(); else __syncwarp();
              });
          }),
          "a deadlock is not reported");
    CHECK(fatal_in_child([&] {
              emu_launch(g, b, [&] {
                  if (threadIdx.x < 32) __syncthreads();
                  else __syncthreads();
              });
          }),
          "__syncthreads at two lines is not reported");
    CHECK(fatal_in_child([&] {
              emu_launch(g, b, [&] {
                  if (threadIdx.x == 40) return;
                  __syncthreads();
              });
          }),
          "a thread exiting while others wait is not reported");
    CHECK(fatal_in_child([&] {
              emu_launch(g, b, [&] {
                  if (threadIdx.x == 3) return;
                  (void)__shfl_xor_sync(0xffffffffu, 1, 1);
              });
          }),
          "a shuffle with a lane gone is not reported");
    CHECK(fatal_in_child([&] {
              emu_launch(g, b, [&] {
                  __shared__ __align__(16) bf16 s[64];
                  emu_shared_poison(&s, sizeof(s));
                  static __align__(16) bf16 not_shared[32][8];
                  uint32_t r[4];
                  emu_ldmatrix_x4(r, not_shared[threadIdx.x & 31]);
              });
          }),
          "ldmatrix from outside shared memory is not reported");
    dim3 big;
    big.x = 2048;
    CHECK(fatal_in_child([&] { emu_launch(g, big, [] {}); }), "a block of 2048 threads is not reported");
    dim3 g0;
    g0.y = 0;
    CHECK(fatal_in_child([&] { emu_launch(g0, b, [] {}); }), "an empty grid is not reported");
}

int main() {
    test_shuffles();
    test_block();
    test_mma();
    test_cp_async();
    test_strict();
    return finish("selftest");
}
