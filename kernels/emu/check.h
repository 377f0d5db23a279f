// check.h: what every emulated kernel test (kernels/emu/test_*.cpp, one program per kernel file)
// shares: a seeded generator, CHECK counting, exact-size buffers (AddressSanitizer catches a
// read or write one element past them), the output poison that proves every element is
// written, an RNE f32 -> bf16 reference written independently of shim.h, and the summary line
// scripts/emu-kernels.sh prints.
#pragma once
#include <chrono>
#include <random>

#include "shim.h"

typedef __nv_bfloat16 bf16;

static std::mt19937 emu_rng(20261206);
static float rnd(float lo = -1.f, float hi = 1.f) { return std::uniform_real_distribution<float>(lo, hi)(emu_rng); }
static int rndi(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(emu_rng); }
static int cdiv(long long a, long long b) { return (int)((a + b - 1) / b); }

static long emu_checks = 0, emu_fails = 0;
#define CHECK(c, ...)                                                        \
    do {                                                                     \
        emu_checks++;                                                        \
        if (!(c)) {                                                          \
            if (emu_fails++ < 40) {                                          \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                  \
                printf(__VA_ARGS__);                                         \
                printf("\n");                                                \
            }                                                                \
        }                                                                    \
    } while (0)

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static bool same_bits(float a, float b) { return bits(a) == bits(b); }

// The poison outputs are filled with before a launch: a NaN no kernel produces (kernels write
// the canonical 0x7fc00000), so "still poison" means "never written".
static const uint32_t POISON = 0x7fa00badu;
static bool is_poison(float f) { return bits(f) == POISON; }
static const float CANON_NAN = from_bits(0x7fc00000u);

// An exact-size device buffer of n elements, optionally starting `off` elements into its
// allocation (to break 16-byte alignment on purpose). Nothing follows the last element.
template <class T> struct Buf {
    std::vector<T> v;
    T* p;
    size_t n;
    Buf(size_t n_, size_t off = 0) : v(n_ + off), p(v.data() + off), n(n_) {}
    T& operator[](size_t i) { return p[i]; }
    const T& operator[](size_t i) const { return p[i]; }
    void fill(T x) { std::fill(p, p + n, x); }
};
static void poison(Buf<float>& b) { b.fill(from_bits(POISON)); }

// f32 -> bf16 round-to-nearest-even computed by comparing the two candidates in double (not
// the shim's bit trick): NaN -> a NaN, overflow past the largest bf16 -> inf.
static uint16_t ref_bf16(float f) {
    if (std::isnan(f)) return 0x7fc0;
    uint32_t u = bits(f);
    const uint32_t sign = u & 0x80000000u;
    const uint32_t mag = u & 0x7fffffffu;
    const uint32_t lo = mag & 0xffff0000u;  // truncated toward zero
    if (lo == mag) return (uint16_t)(u >> 16);
    const uint32_t hi = lo + 0x10000u;  // next bf16 away from zero (may be inf)
    const double dv = fabs((double)f);
    const double dlo = (double)from_bits(lo), dhi = (double)from_bits(hi);
    uint32_t pick;
    if (hi >= 0x7f800000u) {
        // Past the largest finite bf16: halfway to 2^128 rounds up (to inf), as RNE does.
        const double limit = (double)from_bits(0x7f7f0000u) + ldexp(1.0, 127 - 8);
        pick = dv >= limit ? 0x7f800000u : lo;
    } else if (dv - dlo < dhi - dv) pick = lo;
    else if (dv - dlo > dhi - dv) pick = hi;
    else pick = ((lo >> 16) & 1) ? hi : lo;
    return (uint16_t)((sign | pick) >> 16);
}
static float bf16f(uint16_t b) { return from_bits((uint32_t)b << 16); }
static bf16 to_bf16(float f) { return bf16{ref_bf16(f)}; }

// |got - want| <= rel * |want| + abs (NaN only matches NaN).
static bool close(double got, double want, double rel, double abs_ = 0) {
    if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
    return fabs(got - want) <= rel * fabs(want) + abs_;
}

static std::chrono::steady_clock::time_point emu_t0 = std::chrono::steady_clock::now();
// Prints the one-line summary and returns the exit status.
static int finish(const char* name) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - emu_t0).count();
    printf("emu %-10s %s  %ld checks, %ld failed, %.1f s\n", name, emu_fails ? "FAIL" : "ok  ",
           emu_checks, emu_fails, s);
    return emu_fails ? 1 : 0;
}
