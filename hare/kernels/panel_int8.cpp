// Hare's CPU kernel for int8 linear layers (the fast path's GPT, above all its decode step over few rows, and its
// diffusion decoder): y = x W^T + b with W stored as int8, one float scale per output column, and x quantised
// per row on the fly.
//
// At 16 rows a decode-step linear reads each weight once, so int8 weights take a quarter of float32's time
// from memory. PyTorch's dynamic int8 linear (fbgemm / oneDNN) reaches about half of the memory's bandwidth
// there on this project's Xeon (11 of 23 GB/s). This kernel keeps panel_linear.cpp's plan — the weight packed
// once into 16-column panels, streamed once per call in one sequential run per thread, register tiles of rows
// x panels — with int8 arithmetic:
//
// - `panel_pack_int8(weight)`: weight (N, K) float32 -> (panels, scales, sums). Each output column n gets the
//   symmetric scale s_n = max_k |W[n, k]| / 127 and the int8 values q = round(W / s_n) (|q| <= 127). `panels`
//   (ceil(N / 16), ceil(K / 4), 16, 4) int8: for every quad of 4 inputs, the 16 columns' 4 values side by
//   side (one 64-byte line per quad and panel; zero past N and K). `scales` (P * 16) float32 (1 past N);
//   `sums` (P * 16) int32, each column's sum of q (for the unsigned inputs below).
// - `panel_linear_int8(x, panels, scales, sums, bias, N, gelu_tanh, variant)`: x (M, K) float32 -> (M, N).
//   Each row r is quantised symmetrically, t_r = max_k |x[r, k]| / 127, u = round(x / t_r); the products
//   sum_k u q run exactly in int32, and y[r, n] = t_r s_n sum + b_n (then GELU-tanh; a residual last).
//   What it fuses (a LayerNorm of x before quantising, a residual) is panel_linear_fused's (`Fused`).
// - `panel_unpack_int8(panels, scales, N, K)`: the dequantised (N, K) float32 weight (s_n q), for tests.
//
// Variants, picked at run time from what the CPU reports (or named, for the tests); all give the same
// integer sums, so the same outputs to the rounding of the final float scaling:
//   "amx-int8":    AMX's tiles (where built with -march=native on a CPU that has them and Linux grants their
//                  use): tdpbusd, the same unsigned x signed byte products as vpdpbusd, 16 rows x 64 inputs x
//                  16 columns per instruction; tiles of up to 16 rows x 3 panels, the rows stored row-major in
//                  blocks of 64 inputs. At 16 rows it streams the weights at the memory's pace (vpdpbusd's
//                  arithmetic does not keep up there), over many rows it does ~1.5-2x vpdpbusd's work per second;
//   "avx512-vnni": vpdpbusd, 4 products of an unsigned and a signed byte summed into each int32 lane: the row's
//                  values are stored as u + 128 (unsigned) and 128 sum_k q is taken off the sums afterwards;
//                  tiles of up to 16 rows x 1 panel over at most 16 rows, else 8 rows x 3 panels (24
//                  accumulators);
//   "avx2":        vpmaddwd on the bytes widened to int16 (no saturation: AVX2's byte multiply-add,
//                  vpmaddubsw, saturates its int16 pairs at full 8-bit range), tiles of up to 3 rows x 1 panel;
//   "generic":     plain loops on int32 (any CPU, the compiler's vectoriser), up to 4 rows x 1 panel.
// The sums are exact: |u q| <= 127 * 255 per product, 32-bit sums hold K up to 65 000 (checked).
// Built on first use by hare/kernels/__init__.py and registered as torch.ops.hare.panel_pack_int8,
// panel_linear_int8, panel_unpack_int8 and panel_int8_variants (the variants this CPU runs, best first).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kQuad = 4;                         // inputs per group of bytes summed into one int32 lane
constexpr int64_t kQuadBytes = kPanel * kQuad;       // one quad of one panel: 64 bytes, a cache line
constexpr int64_t kPrefetchBytes = 64 * 32;          // each panel's stream is asked for 32 lines ahead
constexpr int64_t kMaxK8 = 65000;                    // int32 sums stay exact up to this many inputs

// 16 outputs from their int32 sums (16 values at `sum`), columns col .. col + 15: t_r s_n (sum - offset z_n) + b_n,
// t the row's scale, offset the inputs' shift (128 for unsigned bytes), z the columns' weight sums. Every variant
// scales its sums with this, so that the same sums give the same floats.
inline v16 dequantize(const int32_t* sum, float t, int64_t col, const float* S, const int32_t* Z, int32_t offset,
                      const float* BP) {
  i16v sums, zero_point;
  std::memcpy(&sums, sum, sizeof(sums));
  std::memcpy(&zero_point, Z + col, sizeof(zero_point));
  return (t * load(S + col)) * __builtin_convertvector(sums - offset * zero_point, v16) + load(BP + col);
}

// The rows' quantised values, k-major in groups of 16 rows as panel_linear's transposed x: element
// (g Q + quad) 16 + r holds row 16g + r's quad of inputs. For "avx512-vnni" a uint32 of four bytes u + 128,
// otherwise a uint64 of four int16 u. Lanes of rows past M are never read.
// For "amx-int8" (kAmxBlocks) the bytes u + 128, row-major in blocks of 16 quads (64 inputs): block b of group g
// is one 16 x 64-byte tile at byte (g QP + 16 b) 64, row r's 64 inputs at + 64 r, where QP is the quads rounded
// up to whole blocks.
enum class RowCode { kUnsignedBytes, kInt16, kAmxBlocks };

// One tile: MR rows times NP consecutive panels over `quads` quads. `xq` points at this tile's first row in its
// group's (first quad's) line, `w` at the first panel's first quad (the next panels every `panel_stride`
// bytes). The int32 sums go to `c` (row stride ldc, NP * 16 columns): stored when `first`, else added.
typedef void (*Int8TileFn)(const void* xq, const int8_t* w, int64_t panel_stride, int64_t quads, int32_t* c,
                           int64_t ldc, bool first);

template <template <int, int, bool> class Tile, int MaxRows, int MaxPanels>
using Int8Tables = Tables<Int8TileFn, Tile, MaxRows, MaxPanels>;  // panel_linear.cpp's tables of tiles

// -- generic: int32 loops over int16 row values ----------------------------------------------------------------
template <int MR, int NP, bool PF>
struct GenericInt8Tile {
  static void run(const void* xq_, const int8_t* w, int64_t ps, int64_t quads, int32_t* c, int64_t ldc,
                  bool first) {
    static_assert(NP == 1, "one panel per generic tile");
    const int16_t* xq = static_cast<const int16_t*>(xq_);  // 4 int16 per row and quad, rows 16 apart
    int32_t acc[MR][kPanel] = {};
    for (int64_t q = 0; q < quads; ++q) {
      const int8_t* wq = w + q * kQuadBytes;
      if (PF) __builtin_prefetch(wq + kPrefetchBytes, 0, 3);
      for (int r = 0; r < MR; ++r) {
        const int16_t* a = xq + (q * 16 + r) * kQuad;
        for (int64_t j = 0; j < kPanel; ++j)
          acc[r][j] += a[0] * wq[4 * j] + a[1] * wq[4 * j + 1] + a[2] * wq[4 * j + 2] + a[3] * wq[4 * j + 3];
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int64_t j = 0; j < kPanel; ++j) c[r * ldc + j] = (first ? 0 : c[r * ldc + j]) + acc[r][j];
  }
};
constexpr int kGenericInt8Rows = 4;
using GenericInt8Tables = Int8Tables<GenericInt8Tile, kGenericInt8Rows, 1>;

#if HARE_X86
// -- AVX-512 VNNI: per quad, one 64-byte weight line per panel and one 4-byte broadcast per row; vpdpbusd adds
// the 4 products of each lane into its int32 sum -----------------------------------------------------------------
// acc += the 4-byte dot products of a's unsigned and b's signed bytes, in place. (As inline assembly: GCC
// compiles _mm512_dpbusd_epi32 into a register copy per call, and at 24 accumulators into spills to the stack.)
__attribute__((target("avx512f,avx512vnni"))) inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

template <int MR, int NP, bool PF>
struct VnniTile {
  __attribute__((target("avx512f,avx512bw,avx512vnni"))) static void run(const void* xq_, const int8_t* w,
                                                                          int64_t ps, int64_t quads, int32_t* c,
                                                                          int64_t ldc, bool first) {
    const uint32_t* xq = static_cast<const uint32_t*>(xq_);
    __m512i acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP; ++j)
        acc[r][j] = first ? _mm512_setzero_si512() : _mm512_loadu_si512(c + r * ldc + 16 * j);
    for (int64_t q = 0; q < quads; ++q) {
      __m512i b[NP];
      for (int j = 0; j < NP; ++j) {
        const int8_t* wq = w + j * ps + q * kQuadBytes;
        if (PF) _mm_prefetch(reinterpret_cast<const char*>(wq + kPrefetchBytes), _MM_HINT_T0);
        b[j] = _mm512_loadu_si512(wq);
      }
      for (int r = 0; r < MR; ++r) {
        const __m512i a = _mm512_set1_epi32(static_cast<int>(xq[16 * q + r]));
        for (int j = 0; j < NP; ++j) acc[r][j] = dpbusd(acc[r][j], a, b[j]);
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP; ++j) _mm512_storeu_si512(c + r * ldc + 16 * j, acc[r][j]);
  }
};
constexpr int kVnniRows = 8;
using VnniTables = Int8Tables<VnniTile, kVnniRows, 3>;
// up to 16 rows (a decode step): one panel at a time for all of them, so that each weight line is loaded once,
// from memory, for 16 vpdpbusd (8 x 3 tiles make a second pass over rows 8-15 from L2: ~15 % slower here)
constexpr int kVnniFewRows = 16;
using VnniFewRowTables = Int8Tables<VnniTile, kVnniFewRows, 1>;

#if HARE_AMX_INT8
// -- AMX int8 tiles: per block of 64 inputs, one tile of the rows' bytes (MR x 64, RowCode::kAmxBlocks) times each
// panel's 16 quads x 16 columns (a panel's 1 KB block is a tile of 16 rows of 64 bytes as it is stored), tdpbusd
// adding into an MR x 16 int32 tile per panel: the same unsigned x signed byte products as vpdpbusd, so the same
// sums. Tiles 0-2: the sums, 3: the rows, 4-6: the panels. The tile shapes are set per call (a block of fewer
// than 16 quads at the end of K gets its own (AmxConfig: panel_linear.cpp).

template <int MR, int NP, bool PF>
struct AmxTile {
  __attribute__((target("amx-tile,amx-int8"))) static void configure(int64_t quads) {
    AmxConfig cfg;
    for (int j = 0; j < NP; ++j) {
      cfg.rows[j] = MR, cfg.colsb[j] = 64;
      cfg.rows[4 + j] = static_cast<uint8_t>(quads), cfg.colsb[4 + j] = 64;
    }
    cfg.rows[3] = MR, cfg.colsb[3] = static_cast<uint16_t>(4 * quads);
    alignas(64) AmxConfig now;
    _tile_storeconfig(&now);
    if (std::memcmp(&now, &cfg, sizeof(cfg)) != 0) _tile_loadconfig(&cfg);
  }
  __attribute__((target("amx-tile,amx-int8"))) static void load_sums(const int32_t* c, int64_t ldc, bool zero) {
    const int64_t stride = ldc * 4;
    if (zero) {
      _tile_zero(0);
      if constexpr (NP >= 2) _tile_zero(1);
      if constexpr (NP >= 3) _tile_zero(2);
    } else {
      _tile_loadd(0, c, stride);
      if constexpr (NP >= 2) _tile_loadd(1, c + 16, stride);
      if constexpr (NP >= 3) _tile_loadd(2, c + 32, stride);
    }
  }
  __attribute__((target("amx-tile,amx-int8"))) static void store_sums(int32_t* c, int64_t ldc) {
    const int64_t stride = ldc * 4;
    _tile_stored(0, c, stride);
    if constexpr (NP >= 2) _tile_stored(1, c + 16, stride);
    if constexpr (NP >= 3) _tile_stored(2, c + 32, stride);
  }
  __attribute__((target("amx-tile,amx-int8"))) static void block(const uint8_t* a, const int8_t* w, int64_t ps) {
    _tile_loadd(3, a, 64);
    _tile_loadd(4, w, 64);
    _tile_dpbusd(0, 3, 4);
    if constexpr (NP >= 2) {
      _tile_loadd(5, w + ps, 64);
      _tile_dpbusd(1, 3, 5);
    }
    if constexpr (NP >= 3) {
      _tile_loadd(6, w + 2 * ps, 64);
      _tile_dpbusd(2, 3, 6);
    }
  }
  __attribute__((target("amx-tile,amx-int8"))) static void run(const void* xq_, const int8_t* w, int64_t ps,
                                                             int64_t quads, int32_t* c, int64_t ldc, bool first) {
    const uint8_t* xq = static_cast<const uint8_t*>(xq_);
    const int64_t blocks = quads / 16, tail = quads % 16;
    constexpr int64_t kBlockBytes = 16 * kQuadBytes;  // 1 KB: a block of 16 quads, of the rows or of a panel
    if (blocks > 0) {
      configure(16);
      load_sums(c, ldc, first);
      for (int64_t b = 0; b < blocks; ++b) {
        if (PF)
          for (int j = 0; j < NP; ++j)
            for (int64_t line = 0; line < 16; ++line)
              _mm_prefetch(reinterpret_cast<const char*>(w + j * ps + (b + 2) * kBlockBytes + 64 * line), _MM_HINT_T0);
        block(xq + b * kBlockBytes, w + b * kBlockBytes, ps);
      }
      store_sums(c, ldc);
    }
    if (tail > 0) {
      configure(tail);
      load_sums(c, ldc, first && blocks == 0);
      block(xq + blocks * kBlockBytes, w + blocks * kBlockBytes, ps);
      store_sums(c, ldc);
    }
  }
};
using AmxTables = Int8Tables<AmxTile, 16, 3>;

// Over many rows (more than one group of 16) with K a whole number of 64-input blocks: 2 x 2 tiles of sums (32 rows
// x 32 columns) held in the tile registers over all of K, two row tiles and two panel tiles loaded per block for
// four tdpbusd (the few-row tiles load 4 for 3, and slice K). Each thread takes pairs of panels; a pair's weights
// (2 x K bytes x 16) stay in cache while every pair of row groups passes. Then the sums to floats (as the other
// variants: t_r s_n (sum - 128 z_n) + b_n), GELU, the residual. XQ: the rows as quantize_rows' kAmxBlocks.
__attribute__((target("amx-tile,amx-int8"))) void amx_many_rows(
    const uint8_t* XQ, const int8_t* PW, int64_t quads, int64_t m, int64_t n, int64_t n_panels, const float* TS,
    const float* S, const int32_t* Z, const float* BP, bool gelu_tanh, const float* R, int64_t ldr, float* Y) {
  const int64_t groups = (m + 15) / 16, blocks = quads / 16, panel_bytes = quads * kQuadBytes;
  at::parallel_for(0, (n_panels + 1) / 2, 1, [&](int64_t pair0, int64_t pair1) {
    AmxConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    alignas(64) int32_t sums[32 * 32];
    alignas(64) float tile[32 * 32];
    for (int64_t pair = pair0; pair < pair1; ++pair) {
      const int64_t p = 2 * pair;
      const bool two_panels = p + 1 < n_panels;
      const int8_t* w0 = PW + p * panel_bytes;
      const int8_t* w1 = w0 + panel_bytes;
      for (int64_t g = 0; g < groups; g += 2) {
        const bool two_groups = g + 1 < groups;
        const uint8_t* a0 = XQ + g * quads * 64;
        const uint8_t* a1 = a0 + quads * 64;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t at = b * 1024;
          _tile_loadd(4, a0 + at, 64);
          _tile_loadd(6, w0 + at, 64);
          _tile_dpbusd(0, 4, 6);
          if (two_panels) {
            _tile_loadd(7, w1 + at, 64);
            _tile_dpbusd(1, 4, 7);
          }
          if (two_groups) {
            _tile_loadd(5, a1 + at, 64);
            _tile_dpbusd(2, 5, 6);
            if (two_panels) _tile_dpbusd(3, 5, 7);
          }
        }
        _tile_stored(0, sums, 128);
        _tile_stored(1, sums + 16, 128);
        _tile_stored(2, sums + 16 * 32, 128);
        _tile_stored(3, sums + 16 * 32 + 16, 128);
        const int64_t rows = std::min<int64_t>(32, m - 16 * g), cols = std::min<int64_t>(32, n - kPanel * p);
        const int64_t width = two_panels ? 32 : 16;  // whole panels: the padded bias, scales and sums cover them
        for (int64_t r = 0; r < rows; ++r) {
          const float t = TS[16 * g + r];
          for (int64_t j = 0; j < width; j += 16)
            store(tile + r * 32 + j, dequantize(sums + r * 32 + j, t, kPanel * p + j, S, Z, 128, BP));
        }
        if (gelu_tanh) gelu_tanh_rows(tile, 32, rows, width);
        if (R) add_residual_rows(tile, 32, static_cast<int>(rows), cols, R + 16 * g * ldr + kPanel * p, ldr);
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(Y + (16 * g + r) * n + kPanel * p, tile + r * 32, cols * sizeof(float));
      }
    }
  });
}
#endif

// -- AVX2: each 16-byte quarter of a quad's line (4 columns x 4 inputs) widened to int16 and multiplied with the
// row's 4 int16 values (broadcast) by vpmaddwd: lanes 2c and 2c + 1 hold column c's two partial sums --------------
template <int MR, int NP, bool PF>
struct Avx2Int8Tile {
  static_assert(NP == 1, "one panel per AVX2 tile");
  __attribute__((target("avx2,fma"))) static void run(const void* xq_, const int8_t* w, int64_t ps,
                                                      int64_t quads, int32_t* c, int64_t ldc, bool first) {
    const int64_t* xq = static_cast<const int64_t*>(xq_);
    __m256i acc[MR][4];
    for (int r = 0; r < MR; ++r)
      for (int h = 0; h < 4; ++h) acc[r][h] = _mm256_setzero_si256();
    for (int64_t q = 0; q < quads; ++q) {
      const int8_t* wq = w + q * kQuadBytes;
      if (PF) _mm_prefetch(reinterpret_cast<const char*>(wq + kPrefetchBytes), _MM_HINT_T0);
      for (int half = 0; half < 2; ++half) {  // columns 8 half .. 8 half + 7, two quarters
        const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + 32 * half)));
        const __m256i w1 =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + 32 * half + 16)));
        for (int r = 0; r < MR; ++r) {
          const __m256i a = _mm256_set1_epi64x(xq[16 * q + r]);
          acc[r][2 * half] = _mm256_add_epi32(acc[r][2 * half], _mm256_madd_epi16(a, w0));
          acc[r][2 * half + 1] = _mm256_add_epi32(acc[r][2 * half + 1], _mm256_madd_epi16(a, w1));
        }
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int half = 0; half < 2; ++half) {
        // pairwise sums: (c0 c1 c4 c5 | c2 c3 c6 c7) of the quarters' columns, then in column order
        const __m256i pairs = _mm256_hadd_epi32(acc[r][2 * half], acc[r][2 * half + 1]);
        __m256i sum = _mm256_permute4x64_epi64(pairs, 0xD8);
        int32_t* dst = c + r * ldc + 8 * half;
        if (!first) sum = _mm256_add_epi32(sum, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dst)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), sum);
      }
  }
};
constexpr int kAvx2Int8Rows = 3;
using Avx2Int8Tables = Int8Tables<Avx2Int8Tile, kAvx2Int8Rows, 1>;
#endif

struct Int8Variant {
  const char* name;
  const Int8TileFn* table;
  int max_rows;
  int max_panels;
  RowCode code;
  Int8TileFn tile(int mr, int np, bool prefetch) const {
    return table[((prefetch ? kMaxPanels : 0) + np - 1) * max_rows + mr - 1];
  }
};

std::vector<std::string> panel_int8_variants() { return runnable_of({"amx-int8", "avx512-vnni", "avx2", "generic"}); }

Int8Variant pick_int8(const std::string& name) {
  if (name.empty()) {
    static const Int8Variant best = pick_int8(panel_int8_variants().front());
    return best;
  }
  const std::vector<std::string> all = panel_int8_variants();
  TORCH_CHECK(std::find(all.begin(), all.end(), name) != all.end(), "panel_linear_int8 variant '", name, "' is unknown or this CPU cannot run it");
#if HARE_X86
#if HARE_AMX_INT8
  if (name == "amx-int8") return {"amx-int8", AmxTables::value[0][0].data(), 16, 3, RowCode::kAmxBlocks};
#endif
  if (name == "avx512-vnni") return {"avx512-vnni", VnniTables::value[0][0].data(), kVnniRows, 3, RowCode::kUnsignedBytes};
  if (name == "avx2") return {"avx2", Avx2Int8Tables::value[0][0].data(), kAvx2Int8Rows, 1, RowCode::kInt16};
#endif
  return {"generic", GenericInt8Tables::value[0][0].data(), kGenericInt8Rows, 1, RowCode::kInt16};
}

// Rows of x (layer-normed first when `norm` has moments) quantised as the variant reads them (RowCode), in
// `buffer`; their scales t_r in `row_scale` (NaN for a row with a non-finite value: its outputs are NaN, as a
// float product's). 16 lanes at a time; the rounding is to nearest, ties to even (as torch.round).
void quantize_rows(const float* x, int64_t lda, int64_t m, int64_t k_size, const RowNorm& norm, RowCode code,
                   std::vector<uint8_t>& buffer, std::vector<float>& row_scale) {
  const int64_t quads = (k_size + kQuad - 1) / kQuad, groups = (m + 15) / 16;
  const int64_t width = code == RowCode::kInt16 ? 8 : 4;  // bytes per row and quad
  const int64_t padded = (k_size + 15) / 16 * 16, block_quads = (quads + 15) / 16 * 16;
  buffer.resize(static_cast<size_t>(groups * (code == RowCode::kAmxBlocks ? block_quads : quads) * 16 * width));
  row_scale.resize(static_cast<size_t>(m));
  const bool normed = !norm.mean.empty();
  const v16 infinity = splat(INFINITY);
  // rows in parallel when there are many (the diffusion decoder's products: hundreds of rows, done once each)
  at::parallel_for(0, m, 32, [&](int64_t r_begin, int64_t r_end) {
    thread_local std::vector<float> row_buffer;
    thread_local std::vector<int32_t> values;
    row_buffer.assign(static_cast<size_t>(padded), 0.0f);
    values.resize(static_cast<size_t>(padded));
    float* const row = row_buffer.data();
    for (int64_t r = r_begin; r < r_end; ++r) {
      const float* src = x + r * lda;
      std::memcpy(row, src, k_size * sizeof(float));
      v16 amax{};
      i16v bad{};
      for (int64_t k = 0; k < padded; k += 16) {
        v16 v = load(row + k);
        if (normed) {
          v = (v - norm.mean[r]) * norm.rstd[r];
          if (norm.weight) {
            v16 w{};
            std::memcpy(&w, norm.weight + k, std::min<int64_t>(16, k_size - k) * sizeof(float));
            v = v * w;
          }
          if (norm.bias) {
            v16 b{};
            std::memcpy(&b, norm.bias + k, std::min<int64_t>(16, k_size - k) * sizeof(float));
            v = v + b;
          }
          if (k + 16 > k_size)  // lanes past K: zero (the norm's shift would make them nonzero)
            for (int64_t i = k_size - k; i < 16; ++i) v[i] = 0.0f;
          store(row + k, v);
        }
        const v16 a = v < 0.0f ? -v : v;
        bad |= (v != v) | (a == infinity);
        amax = a > amax ? a : amax;
      }
      float top = 0.0f;
      bool finite = true;
      for (int i = 0; i < 16; ++i) {
        top = std::max(top, amax[i]);
        finite = finite && bad[i] == 0;
      }
      const float scale = finite && top > 0.0f ? top / 127.0f : 1.0f;
      uint8_t* const amx_row = buffer.data() + (r / 16) * block_quads * 64 + (r % 16) * 64;  // (kAmxBlocks)
      row_scale[r] = finite ? scale : NAN;
      const float inverse = 1.0f / scale;
      const v16 magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds |v| < 2^22 to an integer
      for (int64_t k = 0; k < padded; k += 16) {
        v16 v = load(row + k) * inverse;
        v = v > 127.0f ? splat(127.0f) : v;
        v = v < -127.0f ? splat(-127.0f) : v;
        v = v == v ? v : splat(0.0f);
        const v16 rounded = (v + magic) - magic;
        const i16v q = __builtin_convertvector(rounded, i16v);
        if (code == RowCode::kAmxBlocks) {  // straight into the row's block: 16 bytes u + 128, side by side
          typedef uint8_t u8x16 __attribute__((vector_size(16)));
          const u8x16 bytes = __builtin_convertvector(q + 128, u8x16);
          std::memcpy(amx_row + (k / 64) * 1024 + k % 64, &bytes, sizeof(bytes));
        } else {
          std::memcpy(values.data() + k, &q, sizeof(q));
        }
      }
      // (kAmxBlocks: written above, 16 inputs at a time; past K, up to the 16-input boundary, the bytes of zero,
      // never read)
      uint8_t* base = buffer.data() + ((r / 16) * quads * 16 + r % 16) * width;
      const int32_t* qv = values.data();
      if (code == RowCode::kUnsignedBytes) {
        for (int64_t q = 0; q < quads; ++q) {
          const uint32_t packed = static_cast<uint32_t>(qv[4 * q] + 128) | static_cast<uint32_t>(qv[4 * q + 1] + 128) << 8 |
                                  static_cast<uint32_t>(qv[4 * q + 2] + 128) << 16 |
                                  static_cast<uint32_t>(qv[4 * q + 3] + 128) << 24;
          std::memcpy(base + q * 16 * width, &packed, 4);
        }
      } else if (code == RowCode::kInt16) {
        for (int64_t q = 0; q < quads; ++q) {
          const int16_t four[4] = {static_cast<int16_t>(qv[4 * q]), static_cast<int16_t>(qv[4 * q + 1]),
                                   static_cast<int16_t>(qv[4 * q + 2]), static_cast<int16_t>(qv[4 * q + 3])};
          std::memcpy(base + q * 16 * width, four, 8);
        }
      }
    }
  });
}

void check_panels_int8(const at::Tensor& panels, const at::Tensor& scales, const at::Tensor* sums) {
  TORCH_CHECK(panels.device().is_cpu() && panels.scalar_type() == at::kChar && panels.dim() == 4 &&
                  panels.size(2) == kPanel && panels.size(3) == kQuad && panels.is_contiguous(),
              "panels must be a contiguous (panels, quads, 16, 4) int8 tensor from panel_pack_int8");
  const int64_t cols = panels.size(0) * kPanel;
  TORCH_CHECK(scales.device().is_cpu() && scales.scalar_type() == at::kFloat && scales.dim() == 1 &&
                  scales.size(0) == cols && scales.is_contiguous(),
              "scales must be the (panels * 16,) float32 tensor from panel_pack_int8");
  TORCH_CHECK(!sums || (sums->device().is_cpu() && sums->scalar_type() == at::kInt && sums->dim() == 1 &&
                        sums->size(0) == cols && sums->is_contiguous()),
              "sums must be the (panels * 16,) int32 tensor from panel_pack_int8");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> panel_pack_int8(const at::Tensor& weight) {
  check_cpu_float(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight must be (out_features, in_features)");
  const int64_t n = weight.size(0), k_size = weight.size(1), n_panels = (n + kPanel - 1) / kPanel;
  TORCH_CHECK(k_size <= kMaxK8, "int8 panels hold at most ", kMaxK8, " inputs (got ", k_size, ")");
  const int64_t quads = (k_size + kQuad - 1) / kQuad;
  at::Tensor panels = at::zeros({n_panels, quads, kPanel, kQuad}, weight.options().dtype(at::kChar));
  at::Tensor scales = at::ones({n_panels * kPanel}, weight.options());
  at::Tensor sums = at::zeros({n_panels * kPanel}, weight.options().dtype(at::kInt));
  const at::Tensor w = weight.contiguous();
  const float* W = w.data_ptr<float>();
  int8_t* const P = panels.data_ptr<int8_t>();
  float* const S = scales.data_ptr<float>();
  int32_t* const Z = sums.data_ptr<int32_t>();
  at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t col = n0; col < n1; ++col) {
      const float* row = W + col * k_size;
      float amax = 0.0f;
      for (int64_t k = 0; k < k_size; ++k) amax = std::max(amax, std::fabs(row[k]));
      TORCH_CHECK(std::isfinite(amax), "weight row ", col, " is not finite");
      const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
      S[col] = scale;
      int8_t* dst = P + (col / kPanel) * quads * kQuadBytes + (col % kPanel) * kQuad;
      int32_t total = 0;
      for (int64_t k = 0; k < k_size; ++k) {
        const int32_t q = static_cast<int32_t>(std::clamp(std::nearbyint(row[k] / scale), -127.0f, 127.0f));
        dst[(k / kQuad) * kQuadBytes + k % kQuad] = static_cast<int8_t>(q);
        total += q;
      }
      Z[col] = total;
    }
  });
  return {panels, scales, sums};
}

at::Tensor panel_unpack_int8(const at::Tensor& panels, const at::Tensor& scales, int64_t n, int64_t k_size) {
  check_panels_int8(panels, scales, nullptr);
  TORCH_CHECK(n >= 0 && (n + kPanel - 1) / kPanel == panels.size(0), "out_features ", n, " does not fit ",
              panels.size(0), " panels");
  TORCH_CHECK(k_size >= 0 && (k_size + kQuad - 1) / kQuad == panels.size(1), "in_features ", k_size,
              " does not fit ", panels.size(1), " quads");
  at::Tensor out = at::empty({n, k_size}, scales.options());
  const int8_t* P = panels.data_ptr<int8_t>();
  const float* S = scales.data_ptr<float>();
  float* W = out.data_ptr<float>();
  const int64_t quads = panels.size(1);
  for (int64_t col = 0; col < n; ++col)
    for (int64_t k = 0; k < k_size; ++k)
      W[col * k_size + k] =
          S[col] * P[(col / kPanel) * quads * kQuadBytes + (k / kQuad) * kQuadBytes + (col % kPanel) * kQuad + k % kQuad];
  return out;
}

at::Tensor panel_linear_int8_fused(const at::Tensor& x, const at::Tensor& panels, const at::Tensor& scales,
                                   const at::Tensor& sums, const std::optional<at::Tensor>& bias, int64_t n,
                                   bool gelu_tanh, const std::string& variant, const Fused& fused) {
  check_cpu_float(x, "x");
  check_panels_int8(panels, scales, &sums);
  TORCH_CHECK(x.dim() == 2, "x must be (rows, in_features)");
  const int64_t m = x.size(0), k_size = x.size(1), n_panels = panels.size(0), quads = panels.size(1);
  TORCH_CHECK((k_size + kQuad - 1) / kQuad == quads, "x has ", k_size, " features, the panels ", quads, " quads");
  thread_local RowNorm norm;
  const FusedArgs args = check_fused(x, n, n_panels, bias, fused, norm);  // (R, ldr: the residual)
  const float* const R = args.residual;
  Int8Variant v = pick_int8(variant);
#if HARE_X86
  if (v.code == RowCode::kUnsignedBytes && m <= kVnniFewRows)
    v = {v.name, VnniFewRowTables::value[0][0].data(), kVnniFewRows, 1, v.code};
#endif
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return out;
  float* const Y = out.data_ptr<float>();
  if (k_size == 0) {  // no inputs: the bias alone (then GELU, the residual)
    bias_alone(Y, m, n, args.bias, gelu_tanh, R, args.ldr);
    return out;
  }
  const int64_t lda = m > 1 ? x.stride(0) : k_size;
  if (fused.eps >= 0.0) row_moments(x.data_ptr<float>(), lda, m, k_size, fused.eps, norm);
  thread_local std::vector<uint8_t> xq_buffer;
  thread_local std::vector<float> row_scale;
  quantize_rows(x.data_ptr<float>(), lda, m, k_size, norm, v.code, xq_buffer, row_scale);
  const uint8_t* const XQ = xq_buffer.data();
  const float* const TS = row_scale.data();
  const int64_t row_bytes = v.code == RowCode::kInt16 ? 8 : 4;
  const bool amx = v.code == RowCode::kAmxBlocks;
  const int64_t block_quads = (quads + 15) / 16 * 16;
  const float* const S = scales.data_ptr<float>();
  const int32_t* const Z = sums.data_ptr<int32_t>();
  const int8_t* const PW = panels.data_ptr<int8_t>();
  const int32_t offset = v.code == RowCode::kInt16 ? 0 : 128;  // the inputs' shift, taken off per column
  const float* const BP = padded_bias(args.bias, n, n_panels);
#if HARE_AMX_INT8
  if (amx && m > 16 && quads % 16 == 0) {
    amx_many_rows(XQ, PW, quads, m, n, n_panels, TS, S, Z, BP, gelu_tanh, R, args.ldr, Y);
    return out;
  }
#endif
  const int64_t panel_bytes = quads * kQuadBytes;
  const int64_t groups = (m + 15) / 16, pass = v.max_rows;
  // as panel_linear: the whole of K per tile over few rows, else K in slices whose tile of panels stays in L1
  // (AMX: slices of whole 64-input blocks, 128 quads x 3 panels = 24 KB of weights)
  const int64_t qc_block = m <= pass ? quads : std::min<int64_t>(quads, amx ? 128 : 256 / v.max_panels);
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, panel_bytes));
  at::parallel_for(0, n_panels, grain, [&](int64_t p0, int64_t p1) {
    alignas(64) int32_t tmp[16 * kPanel * kMaxPanels];  // tiles that reach past N
    auto tiles = [&](int64_t p, int64_t np, int64_t q0, int64_t qc, int64_t g, bool prefetch) {
      const bool first = q0 == 0, last = q0 + qc == quads;
      // the int32 sums live in the output's own memory until the last slice turns them into floats
      row_tiles(Y, n, m, p, np, g, pass, first, tmp, [&](int32_t* c, int64_t ldc, int64_t s, int mr, int64_t cols) {
        const Int8TileFn tile = v.tile(mr, static_cast<int>(np), prefetch && s == 0);
        const uint8_t* xq = amx ? XQ + (g * block_quads + q0) * 64 : XQ + ((g * quads + q0) * 16 + s) * row_bytes;
        tile(xq, PW + p * panel_bytes + q0 * kQuadBytes, panel_bytes, qc, c, ldc, first);
        if (!last) return;
        for (int r = 0; r < mr; ++r) {  // the sums to floats in place, 16 columns at a time (c holds the tile's width)
          const float t = TS[16 * g + s + r];
          for (int64_t j = 0; j < np * kPanel; j += 16) {
            const v16 y = dequantize(c + r * ldc + j, t, kPanel * p + j, S, Z, offset, BP);
            std::memcpy(c + r * ldc + j, &y, sizeof(y));
          }
        }
        float* const cf = reinterpret_cast<float*>(c);  // floats from here on
        if (gelu_tanh) gelu_tanh_rows(cf, ldc, mr, np * kPanel);
        if (R) add_residual_rows(cf, ldc, mr, cols, R + (16 * g + s) * args.ldr + kPanel * p, args.ldr);
      });
    };
    walk_tiles(p0, p1, v.max_panels, quads, qc_block, m, groups, tiles);  // (K in quads)
  });
  return out;
}

at::Tensor panel_linear_int8(const at::Tensor& x, const at::Tensor& panels, const at::Tensor& scales,
                             const at::Tensor& sums, const std::optional<at::Tensor>& bias, int64_t n, bool gelu_tanh,
                             const std::string& variant) {
  return panel_linear_int8_fused(x, panels, scales, sums, bias, n, gelu_tanh, variant, Fused{});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("panel_pack_int8(Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.impl("panel_pack_int8", c10::DispatchKey::CPU, TORCH_FN(panel_pack_int8));
  m.def("panel_unpack_int8(Tensor panels, Tensor scales, int out_features, int in_features) -> Tensor");
  m.impl("panel_unpack_int8", c10::DispatchKey::CPU, TORCH_FN(panel_unpack_int8));
  m.def("panel_linear_int8(Tensor x, Tensor panels, Tensor scales, Tensor sums, Tensor? bias, int out_features, "
        "bool gelu_tanh, str variant) -> Tensor");
  m.impl("panel_linear_int8", c10::DispatchKey::CPU, TORCH_FN(panel_linear_int8));
  m.def("panel_int8_variants() -> str[]", TORCH_FN(panel_int8_variants));
}
