// shim.h: the subset of CUDA that kernels/*.cu use, emulated on the host so that the very same
// kernel source (rewritten by xform.py: inline-asm helper bodies replaced by the emu_* calls
// below, <cuda_bf16.h> replaced by this file) compiles with g++ and runs on a CPU.
//
// Model (emu.cpp): every GPU thread of a block is a ucontext fiber; one block runs at a time,
// its fibers round-robin, each until it reaches a barrier or exits. __syncthreads /
// __syncthreads_or / __syncwarp are barriers; __shfl_*_sync, ldmatrix, mma and cp.async are
// warp collectives (every lane deposits its operand, a warp barrier, every lane reads) modelled
// from the PTX ISA fragment layouts. The emulation is strict where the hardware is undefined:
// it aborts with a message on a deadlock, on __syncthreads reached at different source lines
// by threads of one block (or a thread exiting while others wait at one), on a warp collective
// with a missing or diverged lane, on ldmatrix / cp.async addresses that are misaligned or not
// in shared memory, and on launches outside CUDA's limits. Shared memory (`__shared__`, made
// function-static; xform.py adds a poison call after each declaration) is filled with 0xff
// bytes (NaN for f32 and bf16) at the start of every block, so a read of shared data that no
// thread of the block wrote shows up as NaN; cp.async copies land only at the latest moment
// cp.async.wait_group allows, their destination poisoned meanwhile.
//
// Math: expf, sincosf, sqrtf, rsqrtf, fmaf, fmaxf come from the host libm (and rsqrtf is
// 1/sqrtf). CUDA's device math library may differ from glibc by an ulp (expf, sincosf), and
// nvcc contracts a*b+c into fma where g++ here does not (-ffp-contract=off), so the tests
// compare against references with tolerances wherever device math is involved; bitwise
// comparisons are used only for invariance (a row alone vs in a batch, gemm vs gemv, the same
// emulated arithmetic on both sides) and for pure data movement. mma accumulates its 16
// products and C in double and rounds once: the real tensor core's rounding is not modelled.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>
using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

[[noreturn]] void emu_fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- vector types ----
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
static inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
static inline float2 make_float2(float a, float b) { return {a, b}; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
static inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
// Misaligned vector loads fault on the GPU: checked here for every __ldg (and, in the ASan build,
// for every typed access by -fsanitize=alignment; the vector types carry CUDA's alignments).
template <class T> static inline T __ldg(const T* p) {
    if ((uintptr_t)p % alignof(T) != 0) emu_fatal("__ldg: %p misaligned for a %zu-byte type", (const void*)p, alignof(T));
    return *p;
}

// ---- scalar intrinsics ----
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// ---- bf16 (cuda_bf16.h) ----
struct __nv_bfloat16 {
    unsigned short v;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
// RNE; NaN -> canonical 0x7fff (as cuda_bf16.hpp).
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(unsigned short)0x7fff};
    const uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
    return {(unsigned short)(r >> 16)};
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((uint32_t)b.v << 16); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.v; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
static inline float2 __bfloat1622float2(__nv_bfloat162 p) {
    return {__bfloat162float(p.x), __bfloat162float(p.y)};
}
static inline float __low2float(__nv_bfloat162 p) { return __bfloat162float(p.x); }
static inline float __high2float(__nv_bfloat162 p) { return __bfloat162float(p.y); }
static inline float bf16_to_float(unsigned short b) { return __uint_as_float((uint32_t)b << 16); }

// ---- fibers and barriers (state in emu.cpp) ----
struct Barrier {
    int expected = 0, arrived = 0;
    unsigned long gen = 0;
    int site = 0;  // source line of the first arriver (all arrivers must agree)
    int acc = 0, res = 0;  // __syncthreads_or
};
struct CpCopy {
    void* s;
    const void* g;
    bool valid;
};
struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    dim3 tid;
    int flat, lane, warp;
    bool done;
    unsigned long ncoll;  // warp collectives this thread has entered
    std::vector<CpCopy> open;
    std::vector<std::vector<CpCopy>> groups;
};
// One warp's exchange area of a collective: each lane deposits its operand here.
struct WarpXchg {
    uint64_t val[32];
    const void* p[32];
    uint32_t a[32][4];
    uint32_t b[32][2];
    float c[32][4];
    int kind[32];
    unsigned long n[32];
};

extern ucontext_t emu_sched;
extern Fiber* emu_cur;
extern Barrier emu_block_bar;
extern Barrier emu_warp_bar[32];
extern WarpXchg emu_xchg[32];
extern dim3 blockIdx, blockDim, gridDim;
#define threadIdx (emu_cur->tid)
#define warpSize 32

void emu_wait(Barrier& b, int site, const char* what);
void emu_shared_poison(void* p, size_t n);
bool emu_in_shared(const void* p, size_t n);
void emu_launch(dim3 grid, dim3 block, std::function<void()> body);

#define __syncthreads() emu_wait(emu_block_bar, __LINE__, "__syncthreads")
static inline int emu_syncthreads_or(int v, int site) {
    emu_block_bar.acc |= (v != 0);
    emu_wait(emu_block_bar, site, "__syncthreads_or");
    return emu_block_bar.res;
}
#define __syncthreads_or(v) emu_syncthreads_or((v), __LINE__)
static inline void emu_syncwarp(int site, unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu_fatal("__syncwarp with a partial mask %#x is not emulated", mask);
    emu_wait(emu_warp_bar[emu_cur->warp], site, "__syncwarp");
}
#define __syncwarp(...) emu_syncwarp(__LINE__, ##__VA_ARGS__)

// Collective kinds (negative barrier sites, distinct from source lines).
enum { EMU_SHFL = 1, EMU_LDMATRIX = 2, EMU_MMA = 3, EMU_VOTE = 4 };

// Entry of a warp collective: all 32 lanes must be live (full mask), every lane deposits.
static inline WarpXchg& emu_coll_enter(unsigned mask, int kind) {
    if (mask != 0xffffffffu) emu_fatal("warp collective with partial mask %#x not emulated", mask);
    if (emu_warp_bar[emu_cur->warp].expected != 32)
        emu_fatal("warp collective (kind %d) in warp %d with %d live lanes (full mask needs 32)",
                  kind, emu_cur->warp, emu_warp_bar[emu_cur->warp].expected);
    WarpXchg& d = emu_xchg[emu_cur->warp];
    const int l = emu_cur->lane;
    d.kind[l] = kind;
    d.n[l] = ++emu_cur->ncoll;
    return d;
}
// After the deposit barrier: lane `src` must be in the same collective.
static inline void emu_coll_check(const WarpXchg& d, int src) {
    const int l = emu_cur->lane;
    if (d.kind[src] != d.kind[l] || d.n[src] != d.n[l])
        emu_fatal("warp %d: lanes %d and %d are in different collectives (divergence)",
                  emu_cur->warp, l, src);
}

// mode 0: idx, 1: xor, 2: down, 3: up (CUDA semantics, width a power of 2 <= 32).
template <class T>
static inline T emu_shfl(unsigned mask, T v, int arg, int width, int mode) {
    static_assert(sizeof(T) <= 8, "shfl of a type wider than 8 bytes");
    WarpXchg& d = emu_coll_enter(mask, EMU_SHFL);
    const int l = emu_cur->lane;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    d.val[l] = bits;
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_SHFL, "shfl");
    const int base = l & ~(width - 1);
    int src = l;
    switch (mode) {
        case 0: src = base + (arg & (width - 1)); break;
        case 1: src = l ^ arg; if (src >= base + width) src = l; break;
        case 2: src = l + arg; if (src >= base + width) src = l; break;
        default: src = l - arg; if (src < base) src = l; break;
    }
    emu_coll_check(d, src);
    T r;
    memcpy(&r, &d.val[src], sizeof(T));
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_SHFL, "shfl");
    return r;
}
template <class T> static inline T __shfl_sync(unsigned m, T v, int src, int w = 32) { return emu_shfl(m, v, src, w, 0); }
template <class T> static inline T __shfl_xor_sync(unsigned m, T v, int x, int w = 32) { return emu_shfl(m, v, x, w, 1); }
template <class T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) { return emu_shfl(m, v, (int)d, w, 2); }
template <class T> static inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) { return emu_shfl(m, v, (int)d, w, 3); }

// Warp votes (full mask): __ballot_sync bit l = lane l's predicate; __any_sync / __all_sync.
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    WarpXchg& d = emu_coll_enter(mask, EMU_VOTE);
    const int l = emu_cur->lane;
    d.val[l] = pred != 0;
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_VOTE, "vote");
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) {
        emu_coll_check(d, i);
        r |= (unsigned)d.val[i] << i;
    }
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_VOTE, "vote");
    return r;
}
static inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: matrix i's 8 rows are addressed by lanes 8i..8i+7;
// register i of lane l receives row l/4, b16 columns 2(l%4), 2(l%4)+1 of matrix i.
static inline void emu_ldmatrix_x4(uint32_t r[4], const void* p) {
    WarpXchg& d = emu_coll_enter(0xffffffffu, EMU_LDMATRIX);
    const int l = emu_cur->lane;
    if (((uintptr_t)p & 15) != 0) emu_fatal("ldmatrix: lane %d row address %p not 16-byte aligned", l, p);
    if (!emu_in_shared(p, 16)) emu_fatal("ldmatrix: lane %d row address %p not in shared memory", l, p);
    d.p[l] = p;
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_LDMATRIX, "ldmatrix");
    for (int i = 0; i < 4; ++i) {
        const int src = 8 * i + (l >> 2);
        emu_coll_check(d, src);
        memcpy(&r[i], (const char*)d.p[src] + 4 * (l & 3), 4);
    }
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_LDMATRIX, "ldmatrix");
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, c = A·B + c. Fragments (g = lane/4,
// t = lane%4): a0a1 A[g][2t..], a2a3 A[g+8][2t..], a4a5 A[g][2t+8..], a6a7 A[g+8][2t+8..];
// b0b1 B[2t..][g], b2b3 B[2t+8..][g]; c0c1 C[g][2t..], c2c3 C[g+8][2t..]. Each D element is
// C + the 16 products summed in double, rounded once to f32.
static inline void emu_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    WarpXchg& d = emu_coll_enter(0xffffffffu, EMU_MMA);
    const int l = emu_cur->lane;
    for (int q = 0; q < 4; ++q) {
        d.a[l][q] = a[q];
        d.c[l][q] = c[q];
    }
    d.b[l][0] = b0;
    d.b[l][1] = b1;
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_MMA, "mma");
    float A[16][16], B[16][8], C[16][8];
    for (int ln = 0; ln < 32; ++ln) {
        emu_coll_check(d, ln);
        const int g = ln >> 2, t = ln & 3;
        for (int j = 0; j < 2; ++j) {
            A[g][2 * t + j] = bf16_to_float((d.a[ln][0] >> (16 * j)) & 0xffff);
            A[g + 8][2 * t + j] = bf16_to_float((d.a[ln][1] >> (16 * j)) & 0xffff);
            A[g][2 * t + 8 + j] = bf16_to_float((d.a[ln][2] >> (16 * j)) & 0xffff);
            A[g + 8][2 * t + 8 + j] = bf16_to_float((d.a[ln][3] >> (16 * j)) & 0xffff);
            B[2 * t + j][g] = bf16_to_float((d.b[ln][0] >> (16 * j)) & 0xffff);
            B[2 * t + 8 + j][g] = bf16_to_float((d.b[ln][1] >> (16 * j)) & 0xffff);
            C[g][2 * t + j] = d.c[ln][j];
            C[g + 8][2 * t + j] = d.c[ln][2 + j];
        }
    }
    const int g = l >> 2, t = l & 3;
    for (int q = 0; q < 4; ++q) {
        const int m = g + (q >> 1) * 8, n = 2 * t + (q & 1);
        double s = C[m][n];
        for (int k = 0; k < 16; ++k) s += (double)A[m][k] * (double)B[k][n];
        c[q] = (float)s;
    }
    emu_wait(emu_warp_bar[emu_cur->warp], -EMU_MMA, "mma");
}

// cp.async.cg.shared.global 16 bytes (src-size 0 when !valid: zeros, nothing read). The copy
// lands only when cp.async.wait_group lets it (latest moment); the destination reads as 0xff
// bytes meanwhile.
static inline void emu_cp_do(const CpCopy& c) {
    if (c.valid) memcpy(c.s, c.g, 16);
    else memset(c.s, 0, 16);
}
static inline void emu_cp_async(void* s, const void* g, bool valid) {
    if (((uintptr_t)s & 15) || ((uintptr_t)g & 15)) emu_fatal("cp.async: misaligned address (%p <- %p)", s, g);
    if (!emu_in_shared(s, 16)) emu_fatal("cp.async: destination %p not in shared memory", s);
    memset(s, 0xff, 16);
    emu_cur->open.push_back({s, g, valid});
}
static inline void emu_cp_commit() {
    emu_cur->groups.push_back(emu_cur->open);
    emu_cur->open.clear();
}
static inline void emu_cp_wait(size_t n) {
    auto& G = emu_cur->groups;
    while (G.size() > n) {
        for (auto& c : G.front()) emu_cp_do(c);
        G.erase(G.begin());
    }
}
static inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
