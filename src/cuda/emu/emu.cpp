// The fiber runtime behind emu.h (see there for the model).
#include "emu.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

namespace emu {
namespace {

constexpr size_t kStack = 256 * 1024;

struct Barrier {
    int size = 0;
    int count = 0;
    long gen = 0;
};

// A cp.async copy not landed yet: it belongs to commit group `group` of its thread.
struct Copy {
    void* dst;
    const void* src;
    bool pred;
    long group;
};

struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    int tid = 0;
    bool done = false;
    std::vector<Copy> pending;  // cp.async copies issued, not landed (schedule: at the wait)
    long committed = 0;         // commit groups closed so far; the open group's index
    long block_wait = -1;       // the generation of __syncthreads it waits at, or -1
};

// The schedule of the next launches (set under the Rust side's launch lock).
struct Schedule {
    int order = 0;  // 0 forward, 1 reverse, 2 shuffled every round
    uint64_t seed = 0;
    bool cp_async_at_wait = false;
    bool warp_at_a_time = false;  // a warp runs until its lanes reach __syncthreads before the next
};
Schedule schedule;

uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void land(const Copy& c) {
    if (c.pred) std::memcpy(c.dst, c.src, 16);
    else std::memset(c.dst, 0, 16);
}

struct MmaBuf {
    uint32_t a[32][4];
    uint32_t b[32][2];
};

struct Runtime {
    ucontext_t sched;
    std::vector<Fiber> fibers;
    int cur = 0;
    unsigned bx = 0, by = 0, bz = 0, gx = 0, block = 0;
    Barrier block_bar;
    std::vector<Barrier> warp_bar;
    std::vector<uint32_t> xchg;  // [warp][32]
    std::vector<MmaBuf> mma;     // [warp]
    std::vector<const void*> rows;  // [warp][32]: ldmatrix row addresses
    long progress = 0;
    const std::function<void()>* body = nullptr;
};

thread_local Runtime* rt = nullptr;

void yield() { swapcontext(&rt->fibers[rt->cur].ctx, &rt->sched); }

void arrive(Barrier& b) {
    long g = b.gen;
    rt->progress++;
    if (++b.count == b.size) {
        b.count = 0;
        b.gen++;
        return;
    }
    while (b.gen == g) yield();
}

void trampoline() {
    (*rt->body)();
    Fiber& f = rt->fibers[rt->cur];
    for (const Copy& c : f.pending) land(c);  // copies never waited for still land
    f.pending.clear();
    f.done = true;
    rt->progress++;
    // returning switches to uc_link (the scheduler)
}

int lane() { return rt->fibers[rt->cur].tid % 32; }
int warp() { return rt->fibers[rt->cur].tid / 32; }

}  // namespace

void launch(unsigned gx, unsigned gy, unsigned gz, unsigned block, const std::function<void()>& body) {
    if (block == 0 || block % 32 != 0 || block > 1024) {
        std::fprintf(stderr, "emu: block of %u threads (must be a multiple of 32, at most 1024)\n", block);
        std::abort();
    }
    Runtime r;
    Runtime* saved = rt;
    rt = &r;
    r.block = block;
    r.gx = gx;
    r.body = &body;
    r.fibers.resize(block);
    for (unsigned i = 0; i < block; i++) r.fibers[i].stack.reset(new char[kStack]);
    unsigned warps = block / 32;
    r.warp_bar.resize(warps);
    r.xchg.assign(warps * 32, 0);
    r.mma.resize(warps);
    r.rows.assign(warps * 32, nullptr);
    std::vector<unsigned> order(block), warp_order(warps);
    uint64_t rng = schedule.seed;
    // order[0..n]: 0..n forward, reversed, or a fresh random permutation (the schedule's order)
    auto permute = [](std::vector<unsigned>& v, unsigned n, uint64_t& rng) {
        for (unsigned i = 0; i < n; i++) v[i] = schedule.order == 1 ? n - 1 - i : i;
        if (schedule.order == 2)
            for (unsigned i = n - 1; i > 0; i--) std::swap(v[i], v[splitmix64(rng) % (i + 1)]);
    };
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                r.bx = x;
                r.by = y;
                r.bz = z;
                r.block_bar = Barrier{(int)block, 0, 0};
                for (auto& w : r.warp_bar) w = Barrier{32, 0, 0};
                for (unsigned i = 0; i < block; i++) {
                    Fiber& f = r.fibers[i];
                    f.tid = (int)i;
                    f.done = false;
                    f.pending.clear();
                    f.committed = 0;
                    f.block_wait = -1;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.get();
                    f.ctx.uc_stack.ss_size = kStack;
                    f.ctx.uc_link = &r.sched;
                    makecontext(&f.ctx, trampoline, 0);
                }
                unsigned alive = block;
                // One fiber's turn: run it until its next yield.
                auto run = [&](unsigned i) {
                    r.cur = (int)i;
                    swapcontext(&r.sched, &r.fibers[i].ctx);
                    if (r.fibers[i].done) alive--;
                };
                while (alive > 0) {
                    long before = r.progress;
                    if (!schedule.warp_at_a_time) {
                        permute(order, block, rng);
                        for (unsigned o = 0; o < block; o++)
                            if (!r.fibers[order[o]].done) run(order[o]);
                    } else {
                        // Each warp in turn runs until all its lanes are done or parked at
                        // __syncthreads; the last warp to arrive there runs on past it.
                        permute(warp_order, warps, rng);
                        for (unsigned wo = 0; wo < warps; wo++) {
                            const unsigned w = warp_order[wo];
                            for (;;) {
                                long wbefore = r.progress;
                                permute(order, 32, rng);
                                for (unsigned o = 0; o < 32; o++) {
                                    const unsigned i = w * 32 + order[o];
                                    const Fiber& f = r.fibers[i];
                                    if (f.done || (f.block_wait >= 0 && f.block_wait == r.block_bar.gen)) continue;
                                    run(i);
                                }
                                if (r.progress == wbefore) break;
                            }
                        }
                    }
                    if (alive > 0 && r.progress == before) {
                        std::fprintf(stderr, "emu: deadlock in block (%u,%u,%u): a barrier some threads never reach\n", x, y, z);
                        std::abort();
                    }
                }
            }
    rt = saved;
}

int thread_x() { return rt->fibers[rt->cur].tid; }
int block_x() { return (int)rt->bx; }
int block_y() { return (int)rt->by; }
int block_z() { return (int)rt->bz; }
int block_dim_x() { return (int)rt->block; }
int grid_dim_x() { return (int)rt->gx; }
void sync_block() {
    Fiber& f = rt->fibers[rt->cur];
    f.block_wait = rt->block_bar.gen;
    arrive(rt->block_bar);
    rt->fibers[rt->cur].block_wait = -1;
}

uint32_t warp_exchange(uint32_t v, int src_lane) {
    const int w = warp();
    uint32_t* x = &rt->xchg[w * 32];
    x[lane()] = v;
    arrive(rt->warp_bar[w]);
    uint32_t r = x[src_lane & 31];
    arrive(rt->warp_bar[w]);
    return r;
}

void warp_mma16816(float* d, const uint32_t* a, const uint32_t* b, bool bf16) {
    const int w = warp(), l = lane();
    MmaBuf& m = rt->mma[w];
    for (int i = 0; i < 4; i++) m.a[l][i] = a[i];
    for (int i = 0; i < 2; i++) m.b[l][i] = b[i];
    arrive(rt->warp_bar[w]);
    auto val = [bf16](uint32_t word, int half) {
        uint16_t h = (uint16_t)(word >> (16 * half));
        return bf16 ? bf16_to_f32(h) : f16_to_f32(h);
    };
    // Element (row, k) of A lives in lane (row % 8) * 4 + (k % 8) / 2, element index
    // i = (k & 1) | (row / 8) << 1 | (k / 8) << 2 of that lane's a0..a7 (two per register).
    auto A = [&](int row, int k) {
        int src = (row % 8) * 4 + (k % 8) / 2;
        int i = (k & 1) | ((row / 8) << 1) | ((k / 8) << 2);
        return val(m.a[src][i >> 1], i & 1);
    };
    // Element (k, col) of B: lane col * 4 + (k % 8) / 2, index i = (k & 1) | (k / 8) << 1.
    auto B = [&](int k, int col) {
        int src = col * 4 + (k % 8) / 2;
        int i = (k & 1) | ((k / 8) << 1);
        return val(m.b[src][i >> 1], i & 1);
    };
    const int g = l / 4, t = l % 4;
    float out[4];
    for (int i = 0; i < 4; i++) {
        int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        float acc = 0.f;
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        out[i] = acc;
    }
    arrive(rt->warp_bar[w]);
    for (int i = 0; i < 4; i++) d[i] += out[i];
}

void warp_ldmatrix(uint32_t* r, const void* row, bool trans, int n_matrices) {
    const int w = warp(), l = lane();
    const void** rows = &rt->rows[w * 32];
    if (l < 8 * n_matrices && (reinterpret_cast<uintptr_t>(row) & 15) != 0) {
        std::fprintf(stderr, "emu: ldmatrix row address %p is not 16-byte aligned\n", row);
        std::abort();
    }
    rows[l] = row;
    arrive(rt->warp_bar[w]);
    // element (i, j) of matrix m: the j-th 16-bit value of the row given by lane 8 m + i
    auto at = [&](int m, int i, int j) {
        uint16_t h;
        std::memcpy(&h, static_cast<const char*>(rows[8 * m + i]) + 2 * j, 2);
        return (uint32_t)h;
    };
    const int g = l / 4, t = l % 4;
    uint32_t out[4];
    for (int m = 0; m < n_matrices; m++)
        out[m] = trans ? (at(m, 2 * t, g) | at(m, 2 * t + 1, g) << 16) : (at(m, g, 2 * t) | at(m, g, 2 * t + 1) << 16);
    arrive(rt->warp_bar[w]);
    for (int m = 0; m < n_matrices; m++) r[m] = out[m];
}

void cp_async16(void* dst, const void* src, bool pred) {
    Fiber& f = rt->fibers[rt->cur];
    const Copy c{dst, src, pred, f.committed};
    if (schedule.cp_async_at_wait) f.pending.push_back(c);
    else land(c);
}

void cp_async_commit() { rt->fibers[rt->cur].committed++; }

// wait_group n: every committed group but the newest n has landed (the open group is not waited for).
void cp_async_wait(int n) {
    Fiber& f = rt->fibers[rt->cur];
    const long upto = f.committed - n;
    std::vector<Copy> keep;
    for (const Copy& c : f.pending) {
        if (c.group < upto) land(c);
        else keep.push_back(c);
    }
    f.pending.swap(keep);
}

void set_schedule(int order, uint64_t seed, int cp_async_at_wait, int warp_at_a_time) {
    schedule = Schedule{order, seed, cp_async_at_wait != 0, warp_at_a_time != 0};
}

}  // namespace emu

extern "C" void rho_emu_set_schedule(int order, uint64_t seed, int cp_async_at_wait, int warp_at_a_time) {
    emu::set_schedule(order, seed, cp_async_at_wait, warp_at_a_time);
}

// The emulator's element conversions, for tests against the `half` crate.
extern "C" uint16_t rho_emu_f32_to_bf16(float x) { return emu::f32_to_bf16(x); }
extern "C" float rho_emu_bf16_to_f32(uint16_t x) { return emu::bf16_to_f32(x); }
extern "C" uint16_t rho_emu_f32_to_f16(float x) { return emu::f32_to_f16(x); }
extern "C" float rho_emu_f16_to_f32(uint16_t x) { return emu::f16_to_f32(x); }
