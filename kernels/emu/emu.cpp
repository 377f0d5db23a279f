// emu.cpp: the scheduler of the host CUDA emulation (see shim.h for the model). emu_launch runs
// the blocks of a grid one after the other in blockIdx order (x fastest); inside a block every
// thread is a ucontext fiber, resumed until it waits at a barrier or exits, warp by warp: one
// warp runs as far as it can before the next (warp 0 and lane 0 first, or the last warp and lane
// first under EMU_ORDER=reverse). A pass
// over the block's live fibers in which no barrier saw an arrival and no fiber exited is a
// deadlock (reported, never hung). Under AddressSanitizer the fiber switches are announced
// (__sanitizer_start/finish_switch_fiber) so that ASan keeps checking the fiber stacks.
#include <stdarg.h>

#include "shim.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

ucontext_t emu_sched;
Fiber* emu_cur;
Barrier emu_block_bar;
Barrier emu_warp_bar[32];
WarpXchg emu_xchg[32];
dim3 blockIdx, blockDim, gridDim;

static std::function<void()>* emu_body;
// EMU_ORDER=reverse resumes the warps (and lanes) of a block from the last to the first: with
// both orders, a missing barrier between a writer and a reader in different warps shows whichever
// of the two comes first.
static const bool emu_reverse = getenv("EMU_ORDER") && strcmp(getenv("EMU_ORDER"), "reverse") == 0;
static unsigned long emu_progress;
static unsigned long emu_block_serial;
static const void* emu_sched_stack;  // ASan: the scheduler's stack, as seen from a fiber
static size_t emu_sched_stack_size;

struct SharedVar {
    char* p;
    size_t n;
    unsigned long poisoned_in;  // block serial of the last poisoning
};
static std::vector<SharedVar> emu_shared;

void emu_fatal(const char* fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "EMU FATAL");
    if (emu_cur)
        fprintf(stderr, " (block %u,%u,%u thread %u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z,
                emu_cur->tid.x, emu_cur->tid.y, emu_cur->tid.z);
    fprintf(stderr, ": ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    _Exit(70);
}

static void to_scheduler(bool dying) {
#if EMU_ASAN
    void* fake = nullptr;  // this fiber's fake stack, kept on its own stack across the switch
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, emu_sched_stack, emu_sched_stack_size);
#endif
    (void)dying;
    if (!dying) {
        swapcontext(&emu_cur->ctx, &emu_sched);
#if EMU_ASAN
        __sanitizer_finish_switch_fiber(fake, &emu_sched_stack, &emu_sched_stack_size);
#endif
    }
}

static void release(Barrier& b) {
    b.res = b.acc;
    b.acc = 0;
    b.arrived = 0;
    b.gen++;
    emu_progress++;
}

static const char* site_name(int site, char* buf, size_t n) {
    if (site >= 0) snprintf(buf, n, "line %d", site);
    else snprintf(buf, n, "a warp collective (kind %d)", -site);
    return buf;
}

void emu_wait(Barrier& b, int site, const char* what) {
    if (b.arrived == 0) {
        b.site = site;
    } else if (b.site != site) {
        char x[64], y[64];
        emu_fatal("%s at %s while other threads wait at %s (divergent barrier)", what,
                  site_name(site, x, sizeof x), site_name(b.site, y, sizeof y));
    }
    const unsigned long g = b.gen;
    b.arrived++;
    emu_progress++;
    if (b.arrived == b.expected) {
        release(b);
        return;
    }
    while (b.gen == g) to_scheduler(false);
}

void emu_shared_poison(void* p, size_t n) {
    for (auto& v : emu_shared) {
        if (v.p == p) {
            if (v.poisoned_in != emu_block_serial) {
                memset(p, 0xff, n);
                v.poisoned_in = emu_block_serial;
            }
            return;
        }
    }
    emu_shared.push_back({(char*)p, n, emu_block_serial});
    memset(p, 0xff, n);
    size_t total = 0;
    for (auto& v : emu_shared) total += v.n;
    if (total > 48 * 1024) emu_fatal("static shared memory of the kernel is %zu bytes (> 48 KiB)", total);
}

bool emu_in_shared(const void* p, size_t n) {
    const char* c = (const char*)p;
    for (auto& v : emu_shared)
        if (c >= v.p && c + n <= v.p + v.n) return true;
    return false;
}

static void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &emu_sched_stack, &emu_sched_stack_size);
#endif
    (*emu_body)();
    Fiber* f = emu_cur;
    f->groups.clear();
    f->open.clear();
    f->done = true;
    emu_progress++;
    Barrier& wb = emu_warp_bar[f->warp];
    if (emu_block_bar.arrived > 0)
        emu_fatal("thread exits while %d threads wait at a block barrier (line %d)",
                  emu_block_bar.arrived, emu_block_bar.site);
    if (wb.arrived > 0)
        emu_fatal("lane exits while %d lanes of its warp wait at a warp barrier / collective",
                  wb.arrived);
    emu_block_bar.expected--;
    wb.expected--;
    to_scheduler(true);
}

void emu_launch(dim3 grid, dim3 block, std::function<void()> body) {
    const unsigned long n = (unsigned long)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || n > 1024 || block.z > 64)
        emu_fatal("launch: invalid block (%u,%u,%u)", block.x, block.y, block.z);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
        grid.z > 65535)
        emu_fatal("launch: invalid grid (%u,%u,%u)", grid.x, grid.y, grid.z);
    gridDim = grid;
    blockDim = block;
    emu_body = &body;
    emu_shared.clear();
    std::vector<Fiber> fs(n);
    for (auto& f : fs) f.stack.resize(128 * 1024);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx.x = bx;
                blockIdx.y = by;
                blockIdx.z = bz;
                emu_block_serial++;
                emu_block_bar = Barrier{};
                emu_block_bar.expected = (int)n;
                const int nw = (int)((n + 31) / 32);
                for (int w = 0; w < nw; ++w) {
                    emu_warp_bar[w] = Barrier{};
                    emu_warp_bar[w].expected = (int)min<unsigned long>(32, n - 32 * w);
                }
                for (unsigned long i = 0; i < n; ++i) {
                    Fiber& f = fs[i];
                    f.flat = (int)i;
                    f.lane = (int)(i & 31);
                    f.warp = (int)(i >> 5);
                    f.done = false;
                    f.ncoll = 0;
                    f.open.clear();
                    f.groups.clear();
                    f.tid.x = i % block.x;
                    f.tid.y = (i / block.x) % block.y;
                    f.tid.z = i / (block.x * block.y);
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = &emu_sched;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                // Warp by warp (warp 0 first, or the last first under EMU_ORDER=reverse): each
                // warp runs as far as it can (through its own warp barriers and collectives)
                // before the next one starts, so one warp gets ahead of the others up to the
                // next block barrier.
                const unsigned long nwarps = (n + 31) / 32;
                for (;;) {
                    bool alive = false;
                    const unsigned long before = emu_progress;
                    for (unsigned long wj = 0; wj < nwarps; ++wj) {
                        const unsigned long w = emu_reverse ? nwarps - 1 - wj : wj;
                        const unsigned long l0 = 32 * w, l1 = min<unsigned long>(n, l0 + 32);
                        for (;;) {
                            const unsigned long wbefore = emu_progress;
                            bool any = false;
                            for (unsigned long j = l0; j < l1; ++j) {
                                const unsigned long i = emu_reverse ? l1 - 1 - (j - l0) : j;
                                if (fs[i].done) continue;
                                any = alive = true;
                                emu_cur = &fs[i];
#if EMU_ASAN
                                void* fake = nullptr;
                                __sanitizer_start_switch_fiber(&fake, fs[i].stack.data(), fs[i].stack.size());
#endif
                                swapcontext(&emu_sched, &fs[i].ctx);
#if EMU_ASAN
                                __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
                            }
                            if (!any || emu_progress == wbefore) break;
                        }
                    }
                    if (!alive) break;
                    if (emu_progress == before) {
                        emu_cur = nullptr;
                        emu_fatal("deadlock in block (%u,%u,%u): every live thread waits (block barrier: "
                                  "%d of %d arrived, line %d)",
                                  bx, by, bz, emu_block_bar.arrived, emu_block_bar.expected,
                                  emu_block_bar.site);
                    }
                }
            }
    emu_cur = nullptr;
}
