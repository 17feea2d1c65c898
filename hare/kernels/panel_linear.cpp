// Hare's CPU kernel for float32 linear layers over few rows: y = x W^T + b (optionally GELU-tanh of it), with
// W pre-packed once into column panels.
//
// At 16 rows (the GPT's decode step over 16 candidates) a linear layer reads each weight once and does 32
// flops per 4-byte weight: it is bound by memory bandwidth, not arithmetic. oneDNN's small-row fp32 kernels
// reach about 60-80 GFLOP/s there, well under what the memory allows (~170 GFLOP/s at 21 GB/s). This one
// streams the weight exactly once per call, in one sequential run per thread:
//
// - `panel_pack(weight)`: weight (N, K) -> panels (ceil(N / 16), K, 16): panel p holds output columns
//   16p .. 16p + 15, k-major, so that one 64-byte cache line is those 16 columns' weights for one input k
//   (columns past N are zero);
// - `panel_linear(x, panels, bias, N, gelu_tanh, variant)`: x (M, K) -> (M, N). x is first transposed into
//   groups of 16 rows, k-major (one line holds 16 rows' values of one k); each thread then takes a contiguous
//   range of panels and walks them a tile at a time: up to 8 rows x 3 panels (48 columns) of sums held in
//   registers while it walks K, per k three lines of weights (each panel's stream prefetched ahead) times each
//   row's value, broadcast. A second tile of rows rereads those weights from cache, not memory. Over 32 rows
//   the product is blocked over K and rows (GotoBLAS-style: a tile's K-slice of panels stays in L1 while every
//   row group of a 64-row block uses it);
// - `panel_unpack(panels, N)`: the (N, K) weight back (for products over many rows, where PyTorch's BLAS is
//   faster than this kernel).
//
// Variants, picked at run time from what the CPU reports (or named, for the tests):
//   "avx512": intrinsics on 16-float registers, tiles of up to 8 rows x 3 panels (24 accumulators), and over 9
//             to 16 rows one tile of 16 rows x 1 panel (each weight line used by every row as it arrives);
//   "avx2":   intrinsics on 8-float registers (AVX2 + FMA), tiles of up to 6 rows x 1 panel (12 accumulators);
//   "generic": GCC/Clang vector extensions (any CPU, NEON included), up to 6 rows x 1 panel.
// All compute each output's sum in the same order (k ascending, from the bias), so they agree to the rounding
// of a fused vs a separate multiply-add. Built on first use by hare/kernels/__init__.py and registered as
// torch.ops.hare.panel_pack, panel_linear, panel_unpack and panel_linear_variants (the variants this CPU runs,
// best first).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "vec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define HARE_X86 1
#else
#define HARE_X86 0
#endif
// the AMX-int8 variant is built: the compiler targets AMX-INT8 (-march=native on such a CPU) and Linux, whose
// arch_prctl grants the tiles
#if HARE_X86 && defined(__AMX_INT8__) && defined(__linux__)
#define HARE_AMX_INT8 1
#else
#define HARE_AMX_INT8 0
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace hare_vec;

constexpr int64_t kPanel = 16;           // output columns per panel (one 64-byte line of float32)
constexpr int64_t kPrefetch = 16 * 32;   // floats ahead each panel's stream is asked for: 32 lines, 2 KB
// the AVX-512 tiles ask for each panel's stream twice: 64 lines (4 KB) ahead into L1 and 512 lines (32 KB) ahead
// into L2, so that more of the stream is in flight than L1's fill buffers hold (measured on an AMX Xeon, 16 rows:
// 15.5-21 GB/s with the one 2 KB prefetch, 17-24 GB/s with these two, the memory reading 23-28 GB/s then)
constexpr int64_t kPrefetchNear = 16 * 64, kPrefetchFar = 16 * 512;
constexpr int64_t kMaxPanels = 3;        // panels per tile, at most

// One tile: MR rows of x times NP consecutive panels' K-slices. Line k of `xt` holds 16 rows' values of input
// k (this tile's rows start at lane 0 of `xt`); `w` is the first panel's slice, the next ones follow every
// `panel_stride` floats. `c` (row stride ldc, NP * 16 columns) receives the sums, started from `init` (NP * 16
// values, the same for every row) when given, else from what `c` holds. With PF, each panel's stream is
// prefetched kPrefetch floats ahead (the weights come from memory); without, the slice is already in cache.
typedef void (*TileFn)(const float* xt, const float* w, int64_t panel_stride, int64_t kc, float* c, int64_t ldc,
                       const float* init);

// a variant's tiles (functions of type Fn): [prefetch][np - 1][mr - 1]
template <typename Fn, int MaxRows>
using TileTable = std::array<std::array<std::array<Fn, MaxRows>, kMaxPanels>, 2>;

// tables of Tile<MR, NP, PF>::run for MR = 1 .. MaxRows, NP = 1 .. MaxPanels (tiles past MaxPanels repeat it)
template <typename Fn, template <int, int, bool> class Tile, int MaxRows, int MaxPanels>
struct Tables {
  template <int NP, bool PF, size_t... I>
  static constexpr std::array<Fn, MaxRows> rows(std::index_sequence<I...>) {
    return {&Tile<static_cast<int>(I) + 1, NP, PF>::run...};
  }
  template <bool PF>
  static constexpr std::array<std::array<Fn, MaxRows>, kMaxPanels> panels() {
    constexpr auto seq = std::make_index_sequence<MaxRows>{};
    return {rows<1, PF>(seq), rows<std::min(2, MaxPanels), PF>(seq), rows<std::min(3, MaxPanels), PF>(seq)};
  }
  static constexpr TileTable<Fn, MaxRows> value = {panels<false>(), panels<true>()};
};

// -- generic: GCC/Clang vector extensions (one 16-float vector per row and panel) ----------------------------
template <int MR, int NP, bool PF>
struct GenericTile {
  static void run(const float* xt, const float* w, int64_t ps, int64_t kc, float* c, int64_t ldc,
                  const float* init) {
    v16 acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP; ++j) acc[r][j] = load(init ? init + 16 * j : c + r * ldc + 16 * j);
    for (int64_t k = 0; k < kc; ++k) {
      v16 b[NP];
      for (int j = 0; j < NP; ++j) {
        if (PF) __builtin_prefetch(w + j * ps + 16 * k + kPrefetch, 0, 3);
        b[j] = load(w + j * ps + 16 * k);
      }
      for (int r = 0; r < MR; ++r) {
        const v16 a = splat(xt[16 * k + r]);
        for (int j = 0; j < NP; ++j) acc[r][j] += a * b[j];
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP; ++j) store(c + r * ldc + 16 * j, acc[r][j]);
  }
};
constexpr int kGenericRows = 6;  // 6 x 16-float accumulators: within 16 AVX2 or 32 NEON registers
using GenericTables = Tables<TileFn, GenericTile, kGenericRows, 1>;

#if HARE_X86
// -- AVX-512: one register per row and panel; 8 rows x 3 panels = 24 accumulators, 3 weight registers and a
// broadcast: per input k, 11 loads for 24 FMAs ---------------------------------------------------------------
template <int MR, int NP, bool PF>
struct Avx512Tile {
  __attribute__((target("avx512f"))) static void run(const float* xt, const float* w, int64_t ps, int64_t kc,
                                                      float* c, int64_t ldc, const float* init) {
    __m512 acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_loadu_ps(init ? init + 16 * j : c + r * ldc + 16 * j);
    for (int64_t k = 0; k < kc; ++k) {
      __m512 b[NP];
      for (int j = 0; j < NP; ++j) {
        if (PF) {
          _mm_prefetch(reinterpret_cast<const char*>(w + j * ps + 16 * k + kPrefetchNear), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w + j * ps + 16 * k + kPrefetchFar), _MM_HINT_T1);
        }
        b[j] = _mm512_loadu_ps(w + j * ps + 16 * k);
      }
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(xt[16 * k + r]);
        for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP; ++j) _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);
  }
};
constexpr int kAvx512Rows = 8;
using Avx512Tables = Tables<TileFn, Avx512Tile, kAvx512Rows, 3>;

// 9 to 16 rows (the decode step's candidates) as one tile of one panel: every weight line read once and used by
// every row at once (16 accumulators), so the memory stream and the arithmetic overlap, where two passes of 8
// rows x 3 panels would stream the weights in the first and only compute in the second.
template <size_t... I>
constexpr std::array<TileFn, sizeof...(I)> single_panel_tiles(std::index_sequence<I...>) {
  return {&Avx512Tile<static_cast<int>(I) + 1, 1, true>::run...};
}
constexpr std::array<TileFn, 16> kAvx512SinglePanel = single_panel_tiles(std::make_index_sequence<16>{});

// -- AVX2 + FMA: two 8-float registers per row of one panel; 6 rows = 12 accumulators of 16 registers (where
// the library is built for an AVX-512 CPU, the compiler may still encode these 8-wide operations with AVX-512's
// encodings and extra registers) ------------------------------------------------------------------------------
template <int MR, int NP, bool PF>
struct Avx2Tile {
  static_assert(NP == 1, "one panel per AVX2 tile");
  __attribute__((target("avx2,fma"))) static void run(const float* xt, const float* w, int64_t ps, int64_t kc,
                                                      float* c, int64_t ldc, const float* init) {
    __m256 acc[MR][2];
    for (int r = 0; r < MR; ++r)
      for (int h = 0; h < 2; ++h) acc[r][h] = _mm256_loadu_ps((init ? init : c + r * ldc) + 8 * h);
    for (int64_t k = 0; k < kc; ++k) {
      if (PF) _mm_prefetch(reinterpret_cast<const char*>(w + 16 * k + kPrefetch), _MM_HINT_T0);
      __m256 b[2];
      for (int h = 0; h < 2; ++h) b[h] = _mm256_loadu_ps(w + 16 * k + 8 * h);
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_set1_ps(xt[16 * k + r]);  // (not _mm256_broadcast_ss: GCC spills around it)
        for (int h = 0; h < 2; ++h) acc[r][h] = _mm256_fmadd_ps(a, b[h], acc[r][h]);
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(c + r * ldc + 8 * h, acc[r][h]);
  }
};
constexpr int kAvx2Rows = 6;
using Avx2Tables = Tables<TileFn, Avx2Tile, kAvx2Rows, 1>;
#endif

struct Variant {
  const char* name;
  const TileFn* table;  // table[(prefetch * kMaxPanels + np - 1) * max_rows + mr - 1]
  int max_rows;         // rows per tile
  int max_panels;       // panels per tile
  TileFn tile(int mr, int np, bool prefetch) const {
    return table[((prefetch ? kMaxPanels : 0) + np - 1) * max_rows + mr - 1];
  }
};

#if HARE_X86 && defined(__linux__)
// AMX's tiles with one of their arithmetic extensions (`feature`: CPUID.7.0:EDX bit 25 AMX-INT8, 22 AMX-BF16):
// the CPU reports AMX-TILE (bit 24) and it, the OS saves the tile state (XCR0 bits 17 and 18) and grants this
// process its use (Linux asks for it once: arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA; without it the first
// tile instruction faults; asking again is harmless).
bool amx_tiles_ready(unsigned feature) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << feature))) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE: xgetbv is usable
  unsigned lo = 0, hi = 0;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

// the 64-byte tile configuration ldtilecfg reads (palette 1): each tile's rows and bytes per row
struct AmxConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
#endif

#if HARE_AMX_INT8
// AMX's int8 tiles (amx_tiles_ready), decided once per process
bool amx_int8_ready() {
  static const bool ready = amx_tiles_ready(25);
  return ready;
}
#endif

// whether this CPU runs a kernel variant (the few-row kernels' names; also panel_int8.cpp's), from what it reports
bool runnable(const std::string& name) {
  if (name == "generic") return true;
#if HARE_X86
  __builtin_cpu_init();
  if (name == "avx512") return __builtin_cpu_supports("avx512f");
  if (name == "avx512-vnni")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#if HARE_AMX_INT8
  if (name == "amx-int8") return amx_int8_ready();
#endif
#endif
  return false;
}

// those of `names` (best first) this CPU can run
std::vector<std::string> runnable_of(std::initializer_list<const char*> names) {
  std::vector<std::string> out;
  for (const char* name : names)
    if (runnable(name)) out.emplace_back(name);
  return out;
}

std::vector<std::string> panel_linear_variants() { return runnable_of({"avx512", "avx2", "generic"}); }

Variant pick(const std::string& name) {
  if (name.empty()) {  // the best, decided once per process
    static const Variant best = pick(panel_linear_variants().front());
    return best;
  }
  const std::string& chosen = name;
  const std::vector<std::string> all = panel_linear_variants();
  TORCH_CHECK(std::find(all.begin(), all.end(), chosen) != all.end(), "panel_linear variant '", chosen,
              "' is unknown or this CPU cannot run it");
#if HARE_X86
  if (chosen == "avx512") return {"avx512", Avx512Tables::value[0][0].data(), kAvx512Rows, 3};
  if (chosen == "avx2") return {"avx2", Avx2Tables::value[0][0].data(), kAvx2Rows, 1};
#endif
  return {"generic", GenericTables::value[0][0].data(), kGenericRows, 1};
}

// One round of a 16x16 transpose in registers: rows i and i + S (bit S of i clear) swap their off-diagonal
// S-wide blocks. After the rounds S = 8, 4, 2, 1, row i holds what column i held.
template <int S>
inline void swap_blocks(v16* a) {
  for (int i = 0; i < 16; ++i) {
    if (i & S) continue;
    const v16 p = a[i], q = a[i + S];
    if constexpr (S == 8) {
      a[i] = __builtin_shufflevector(p, q, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
      a[i + S] = __builtin_shufflevector(p, q, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    } else if constexpr (S == 4) {
      a[i] = __builtin_shufflevector(p, q, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
      a[i + S] = __builtin_shufflevector(p, q, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    } else if constexpr (S == 2) {
      a[i] = __builtin_shufflevector(p, q, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
      a[i + S] = __builtin_shufflevector(p, q, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    } else {
      a[i] = __builtin_shufflevector(p, q, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
      a[i + S] = __builtin_shufflevector(p, q, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    }
  }
}

inline void transpose16(v16* a) {
  swap_blocks<8>(a);
  swap_blocks<4>(a);
  swap_blocks<2>(a);
  swap_blocks<1>(a);
}

// A LayerNorm a product may start with (gpt_block.cpp): each row's mean and 1 / sqrt(variance + eps), and the
// norm's weight and bias (each optional). Empty `mean`: no norm.
struct RowNorm {
  const float* weight = nullptr;
  const float* bias = nullptr;
  std::vector<float> mean, rstd;
};

// The rows' moments in two passes (the sum, then the squared deviations from the mean), 16 lanes wide in float,
// the lanes summed in double.
void row_moments(const float* x, int64_t lda, int64_t m, int64_t k_size, double eps, RowNorm& norm) {
  norm.mean.resize(static_cast<size_t>(m));
  norm.rstd.resize(static_cast<size_t>(m));
  auto total = [k_size](const float* row, auto term) {
    v16 acc{};
    int64_t k = 0;
    for (; k + 16 <= k_size; k += 16) acc += term(load(row + k));
    double sum = 0.0;
    for (int i = 0; i < 16; ++i) sum += acc[i];
    for (; k < k_size; ++k) sum += term(splat(row[k]))[0];
    return sum;
  };
  const double count = static_cast<double>(std::max<int64_t>(k_size, 1));
  for (int64_t r = 0; r < m; ++r) {
    const float* row = x + r * lda;
    const float mean = static_cast<float>(total(row, [](v16 v) { return v; }) / count);
    const double var = total(row, [mean](v16 v) { return (v - mean) * (v - mean); }) / count;
    norm.mean[r] = mean;
    norm.rstd[r] = static_cast<float>(1.0 / std::sqrt(var + eps));
  }
}

// Rows 16g .. 16g + 15 of x, k-major: xt[(g K + k) 16 + r] = x[16g + r, k] (lanes of rows past M are left
// unset: no tile reads them), layer-normed on the way when `norm` has moments.
void transpose_rows(const float* x, int64_t lda, int64_t m, int64_t k_size, float* xt, const RowNorm& norm) {
  const bool normed = !norm.mean.empty();
  auto value = [&](int64_t row, int64_t k) {
    const float v = x[row * lda + k];
    if (!normed) return v;
    const float y = (v - norm.mean[row]) * norm.rstd[row];
    return (norm.weight ? y * norm.weight[k] : y) + (norm.bias ? norm.bias[k] : 0.0f);
  };
  for (int64_t g = 0; 16 * g < m; ++g) {
    const int64_t rows = std::min<int64_t>(16, m - 16 * g);
    const float* xg = x + 16 * g * lda;
    float* dst = xt + g * k_size * 16;
    int64_t k0 = 0;
    if (rows == 16) {  // whole 16x16 blocks through registers
      for (; k0 + 16 <= k_size; k0 += 16) {
        v16 a[16];
        for (int r = 0; r < 16; ++r) a[r] = load(xg + r * lda + k0);
        if (normed) {
          const v16 w = norm.weight ? load(norm.weight + k0) : splat(1.0f);
          const v16 b = norm.bias ? load(norm.bias + k0) : splat(0.0f);
          for (int r = 0; r < 16; ++r) a[r] = (a[r] - norm.mean[16 * g + r]) * norm.rstd[16 * g + r] * w + b;
        }
        transpose16(a);
        for (int r = 0; r < 16; ++r) store(dst + (k0 + r) * 16, a[r]);
      }
    }
    for (int64_t k = k0; k < k_size; ++k)
      for (int64_t r = 0; r < rows; ++r) dst[k * 16 + r] = value(16 * g + r, k);
  }
}

// GELU with the tanh approximation, 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), written as
// x sigmoid(2u) (the same function), on `rows` rows of `width` values, a multiple of 16 (row stride ld).
void gelu_tanh_rows(float* c, int64_t ld, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < width; j += 16) {
      const v16 x = load(c + r * ld + j);
      const v16 u2 = (x + x * x * x * 0.044715f) * 1.5957691216057308f;  // 2 sqrt(2/pi)
      store(c + r * ld + j, x * sigmoid(u2));
    }
}

void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor");
}

// weight (N, K), any strides -> panels (ceil(N / 16), K, 16), contiguous: panels[p, k, j] = weight[16p + j, k]
// (0 past N).
at::Tensor panel_pack(const at::Tensor& weight) {
  check_cpu_float(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight must be (out_features, in_features)");
  const int64_t n = weight.size(0), k_size = weight.size(1), panels = (n + kPanel - 1) / kPanel;
  at::Tensor out = at::zeros({panels, k_size, kPanel}, weight.options());
  const at::Tensor w = weight.contiguous();
  const float* W = w.data_ptr<float>();
  float* const P = out.data_ptr<float>();
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t j = 0; j < kPanel && kPanel * p + j < n; ++j) {
        const float* row = W + (kPanel * p + j) * k_size;
        float* dst = P + p * k_size * kPanel + j;
        for (int64_t k = 0; k < k_size; ++k) dst[k * kPanel] = row[k];
      }
  });
  return out;
}

// panels (P, K, 16) from panel_pack -> the (n, K) weight they hold, contiguous (for large products, which
// PyTorch's BLAS runs better than the few-row kernel).
at::Tensor panel_unpack(const at::Tensor& panels, int64_t n) {
  check_cpu_float(panels, "panels");
  TORCH_CHECK(panels.dim() == 3 && panels.size(2) == kPanel && panels.is_contiguous(),
              "panels must be a contiguous (panels, in_features, 16) tensor from panel_pack");
  const int64_t n_panels = panels.size(0), k_size = panels.size(1);
  TORCH_CHECK(n >= 0 && (n + kPanel - 1) / kPanel == n_panels, "out_features ", n, " does not fit ", n_panels,
              " panels");
  at::Tensor out = at::empty({n, k_size}, panels.options());
  const float* P = panels.data_ptr<float>();
  float* const W = out.data_ptr<float>();
  at::parallel_for(0, n_panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* src = P + p * k_size * kPanel;
      const int64_t rows = std::min(kPanel, n - kPanel * p);
      float* dst = W + kPanel * p * k_size;
      int64_t k0 = 0;
      for (; k0 + 16 <= k_size; k0 += 16) {  // 16x16 blocks through registers
        v16 a[16];
        for (int r = 0; r < 16; ++r) a[r] = load(src + (k0 + r) * kPanel);
        transpose16(a);
        for (int64_t j = 0; j < rows; ++j) store(dst + j * k_size + k0, a[j]);
      }
      for (int64_t k = k0; k < k_size; ++k)
        for (int64_t j = 0; j < rows; ++j) dst[j * k_size + k] = src[k * kPanel + j];
    }
  });
  return out;
}

// x (M, K), rows any stride, each row contiguous; panels from panel_pack of an (N, K) weight; bias (N,) or
// None. Returns y (M, N) contiguous: x W^T + bias, GELU-tanh of it with `gelu_tanh`. `variant`: "" picks the
// best this CPU runs, else "avx512", "avx2" or "generic".
// What else a product may fuse (gpt_block.cpp): a LayerNorm of x first (`norm_weight`, `norm_bias`, `eps`; eps < 0:
// none) and a residual (M, N), rows contiguous, added to the result last.
struct Fused {
  const at::Tensor* norm_weight = nullptr;
  const at::Tensor* norm_bias = nullptr;
  double eps = -1.0;
  const at::Tensor* residual = nullptr;
};

// The order in which a thread runs `tiles(p, np, k0, kc, g, prefetch)` over its panels p0 .. p1 - 1 (np at a time,
// at most max_panels), the K range in slices of kc_block and the groups of 16 rows: with up to 32 rows, each
// tile of panels over every slice and row group before the next (the weights read from memory once, in order;
// the first row group prefetches them); with more, GotoBLAS's order: per K slice, blocks of 4 row groups whose
// slices stay in L2 while every panel passes.
template <typename TilesFn>
void walk_tiles(int64_t p0, int64_t p1, int64_t max_panels, int64_t k_size, int64_t kc_block, int64_t m,
                int64_t groups, TilesFn& tiles) {
  if (m <= 32) {
    for (int64_t p = p0; p < p1; p += max_panels) {
      const int64_t np = std::min<int64_t>(max_panels, p1 - p);
      for (int64_t k0 = 0; k0 < k_size; k0 += kc_block)
        for (int64_t g = 0; g < groups; ++g) tiles(p, np, k0, std::min(kc_block, k_size - k0), g, g == 0);
    }
    return;
  }
  constexpr int64_t group_block = 4;
  for (int64_t k0 = 0; k0 < k_size; k0 += kc_block)
    for (int64_t g0 = 0; g0 < groups; g0 += group_block)
      for (int64_t p = p0; p < p1; p += max_panels) {
        const int64_t np = std::min<int64_t>(max_panels, p1 - p);
        for (int64_t g = g0; g < std::min(groups, g0 + group_block); ++g)
          tiles(p, np, k0, std::min(kc_block, k_size - k0), g, false);
      }
}

// The bias (N,) zero-padded to whole panels (zero throughout without one), in a buffer of the calling thread
// reused from call to call (a decode step makes over a hundred calls: allocations would cost more than the
// smallest products). Valid until the thread's next call.
const float* padded_bias(const float* bias, int64_t n, int64_t n_panels) {
  thread_local std::vector<float> pad;
  pad.assign(static_cast<size_t>(n_panels * kPanel), 0.0f);
  if (bias) std::copy(bias, bias + n, pad.begin());
  return pad.data();
}

// A product with no inputs (K = 0): y (M, N) = the bias alone (0 without one), GELU-tanh of it with `gelu_tanh`,
// plus the residual (row stride ldr) when given.
void bias_alone(float* y, int64_t m, int64_t n, const float* bias, bool gelu_tanh, const float* residual,
                int64_t ldr) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const float b = bias ? bias[j] : 0.0f, u = 0.7978845608028654f * (b + 0.044715f * b * b * b);
      y[r * n + j] = (gelu_tanh ? 0.5f * b * (1.0f + std::tanh(u)) : b) + (residual ? residual[r * ldr + j] : 0.0f);
    }
}

// c (mr rows of `cols` values, row stride ldc) += the residual's matching rows (row stride ldr).
void add_residual_rows(float* c, int64_t ldc, int mr, int64_t cols, const float* residual, int64_t ldr) {
  for (int r = 0; r < mr; ++r)
    for (int64_t j = 0; j < cols; ++j) c[r * ldc + j] += residual[r * ldr + j];
}

// The row tiles of one `tiles` call of walk_tiles: rows 16g .. 16g + 15 of panels p .. p + np - 1, `pass` rows at
// a time. `body(c, ldc, s, mr, cols)` sums rows 16g + s .. + mr - 1 into c (row stride ldc): the output's own
// rows, or `tmp` where the tile reaches past N (copied in unless `first`, and back out after). T is the sums'
// 4-byte type (float, or int32 sums held in the float output's memory until they are scaled).
template <typename T, typename Body>
void row_tiles(float* y, int64_t n, int64_t m, int64_t p, int64_t np, int64_t g, int64_t pass, bool first, T* tmp,
               Body&& body) {
  static_assert(sizeof(T) == sizeof(float), "4-byte sums");
  const int64_t cols = std::min(np * kPanel, n - kPanel * p), rows = std::min<int64_t>(16, m - 16 * g);
  const bool partial = cols < np * kPanel;
  for (int64_t s = 0; s < rows; s += pass) {
    const int mr = static_cast<int>(std::min(pass, rows - s));
    float* const dst = y + (16 * g + s) * n + kPanel * p;
    T* c = reinterpret_cast<T*>(dst);
    int64_t ldc = n;
    if (partial) {
      c = tmp;
      ldc = kPanel * kMaxPanels;
      if (!first)
        for (int r = 0; r < mr; ++r) std::memcpy(c + r * ldc, dst + r * n, cols * sizeof(float));
    }
    body(c, ldc, s, mr, cols);
    if (partial)
      for (int r = 0; r < mr; ++r) std::memcpy(dst + r * n, c + r * ldc, cols * sizeof(float));
  }
}

// A product's bias (N,) or nullptr, its residual (M, N) or nullptr (row stride ldr), each checked, and `norm` set
// to the fused LayerNorm's weight and bias (its moments cleared; eps >= 0 asks the caller to compute them).
struct FusedArgs {
  const float* bias = nullptr;
  const float* residual = nullptr;
  int64_t ldr = 0;
};

FusedArgs check_fused(const at::Tensor& x, int64_t n, int64_t n_panels, const std::optional<at::Tensor>& bias,
                      const Fused& fused, RowNorm& norm) {
  const int64_t m = x.size(0), k_size = x.size(1);
  TORCH_CHECK(n >= 0 && (n + kPanel - 1) / kPanel == n_panels, "out_features ", n, " does not fit ", n_panels,
              " panels");
  TORCH_CHECK(k_size <= 1 || x.stride(1) == 1, "x's rows must be contiguous");
  FusedArgs out;
  if (bias.has_value() && bias->defined()) {
    check_cpu_float(*bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(), "bias must be (out_features,)");
    out.bias = bias->data_ptr<float>();
  }
  norm.mean.clear();
  norm.weight = norm.bias = nullptr;
  for (const at::Tensor* t : {fused.norm_weight, fused.norm_bias})
    if (t && t->defined()) {
      check_cpu_float(*t, "the norm's weight and bias");
      TORCH_CHECK(t->dim() == 1 && t->size(0) == k_size && t->is_contiguous(), "the norm's weight and bias must be (",
                  k_size, ",)");
    }
  if (fused.norm_weight && fused.norm_weight->defined()) norm.weight = fused.norm_weight->data_ptr<float>();
  if (fused.norm_bias && fused.norm_bias->defined()) norm.bias = fused.norm_bias->data_ptr<float>();
  if (fused.residual) {
    check_cpu_float(*fused.residual, "residual");
    TORCH_CHECK(fused.residual->dim() == 2 && fused.residual->size(0) == m && fused.residual->size(1) == n &&
                    (n <= 1 || fused.residual->stride(1) == 1),
                "the residual must be (rows, out_features), rows contiguous");
    out.residual = fused.residual->data_ptr<float>();
    out.ldr = m > 1 ? fused.residual->stride(0) : n;
  }
  return out;
}

at::Tensor panel_linear_fused(const at::Tensor& x, const at::Tensor& panels, const std::optional<at::Tensor>& bias,
                              int64_t n, bool gelu_tanh, const std::string& variant, const Fused& fused) {
  check_cpu_float(x, "x");
  check_cpu_float(panels, "panels");
  TORCH_CHECK(x.dim() == 2, "x must be (rows, in_features)");
  TORCH_CHECK(panels.dim() == 3 && panels.size(2) == kPanel && panels.is_contiguous(),
              "panels must be a contiguous (panels, in_features, 16) tensor from panel_pack");
  const int64_t m = x.size(0), k_size = x.size(1), n_panels = panels.size(0);
  TORCH_CHECK(panels.size(1) == k_size, "x has ", k_size, " features, the panels ", panels.size(1));
  thread_local RowNorm norm;  // per calling thread, reused (as the buffers below)
  const FusedArgs args = check_fused(x, n, n_panels, bias, fused, norm);
  const float* const B = args.bias;
  const float* const R = args.residual;
  const int64_t ldr = args.ldr;
  const Variant v = pick(variant);
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return out;
  float* const Y = out.data_ptr<float>();
  if (k_size == 0) {  // no inputs: the bias alone
    bias_alone(Y, m, n, B, gelu_tanh, R, ldr);
    return out;
  }
  // (the worker threads read the calling thread's buffers: their own thread_local ones are other ones)
  const float* const BP = padded_bias(B, n, n_panels);
  thread_local std::vector<float> xt_buffer;  // per calling thread, reused from call to call
  const int64_t groups = (m + 15) / 16;
  xt_buffer.resize(static_cast<size_t>(groups * k_size * 16));  // lanes of rows past M are never read
  float* const XT = xt_buffer.data();
  const int64_t lda = m > 1 ? x.stride(0) : k_size;
  if (fused.eps >= 0.0) row_moments(x.data_ptr<float>(), lda, m, k_size, fused.eps, norm);
  transpose_rows(x.data_ptr<float>(), lda, m, k_size, XT, norm);
  const float* const PW = panels.data_ptr<float>();
#if HARE_X86
  const bool single_panel = std::string(v.name) == "avx512" && m > v.max_rows && m <= 16;
#else
  const bool single_panel = false;
#endif
  const int64_t pass = single_panel ? 16 : v.max_rows;
  const int64_t max_panels = single_panel ? 1 : v.max_panels;
  // Over at most one tile's rows: the whole of K per tile, the sums never leave the registers. Otherwise K in
  // slices whose tile of panels fits L1 (24 KB) next to the rows' slices, so that the row tiles after the first
  // read the weights from L1: with up to 32 rows each thread finishes its panels one tile at a time (its weight
  // reads stay sequential, every weight read from memory once); with more, in blocks of 64 rows whose
  // transposed slices stay in L2 while every panel passes (GotoBLAS's order).
  const int64_t kc_block = m <= pass ? k_size : std::min<int64_t>(k_size, 384 / max_panels);
  // at least ~256 KB of weights per thread: smaller products run on the calling thread alone
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / (k_size * kPanel * 4));
  at::parallel_for(0, n_panels, grain, [&](int64_t p0, int64_t p1) {
    alignas(64) float tmp[16 * kPanel * kMaxPanels];  // tiles that reach past N
    // rows 16g.. of panels p .. p + np - 1, inputs k0 .. k0 + kc - 1
    auto tiles = [&](int64_t p, int64_t np, int64_t k0, int64_t kc, int64_t g, bool prefetch) {
      const bool first = k0 == 0, last = k0 + kc == k_size;
      row_tiles(Y, n, m, p, np, g, pass, first, tmp, [&](float* c, int64_t ldc, int64_t s, int mr, int64_t cols) {
        // the first tile over these weights prefetches them (they come from memory); the others find them cached
#if HARE_X86
        const TileFn tile = single_panel ? kAvx512SinglePanel[mr - 1]
                                         : v.tile(mr, static_cast<int>(np), prefetch && s == 0);
#else
        const TileFn tile = v.tile(mr, static_cast<int>(np), prefetch && s == 0);
#endif
        tile(XT + (g * k_size + k0) * 16 + s, PW + (p * k_size + k0) * kPanel, k_size * kPanel, kc, c, ldc,
             first ? BP + kPanel * p : nullptr);
        if (last && gelu_tanh) gelu_tanh_rows(c, ldc, mr, np * kPanel);
        if (last && R) add_residual_rows(c, ldc, mr, cols, R + (16 * g + s) * ldr + kPanel * p, ldr);
      });
    };
    walk_tiles(p0, p1, max_panels, k_size, kc_block, m, groups, tiles);
  });
  return out;
}

at::Tensor panel_linear(const at::Tensor& x, const at::Tensor& panels, const std::optional<at::Tensor>& bias,
                        int64_t n, bool gelu_tanh, const std::string& variant) {
  return panel_linear_fused(x, panels, bias, n, gelu_tanh, variant, Fused{});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("panel_pack(Tensor weight) -> Tensor");
  m.impl("panel_pack", c10::DispatchKey::CPU, TORCH_FN(panel_pack));
  m.def("panel_unpack(Tensor panels, int out_features) -> Tensor");
  m.impl("panel_unpack", c10::DispatchKey::CPU, TORCH_FN(panel_unpack));
  m.def("panel_linear(Tensor x, Tensor panels, Tensor? bias, int out_features, bool gelu_tanh, str variant) -> Tensor");
  m.impl("panel_linear", c10::DispatchKey::CPU, TORCH_FN(panel_linear));
  m.def("panel_linear_variants() -> str[]", TORCH_FN(panel_linear_variants));
}
