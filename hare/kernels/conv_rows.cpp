// Hare's CPU kernel for a bfloat16 convolution over time-major rows on AMX's bf16 tiles, without gathering the
// taps: out[t] = bias + residual[t] + sum_j f(x[t + j dilation - padding]) W_j for t < out_rows, x (frames, in)
// and out (out_rows, out) time-major, rows of x outside it zeros, f the leaky ReLU of `slope` (or nothing).
//
// hare-mini's HiFi-GAN vocoder (`hare.models.hifigan`, time-major in bf16) spent about a third of its time
// gathering each block's taps side by side (`row_taps`, an im2col of kernel x in values per row) for oneDNN's
// matrix product to read back. Here the product reads the taps where they are: an AMX tile is 16 rows of 64
// bytes loaded at any stride, so the tile of tap j and input channels 32b .. 32b + 31 for output rows t .. t + 15
// is 16 rows of the (activated, zero-padded) input starting at row t + j dilation, channel 32b. Tiles: 0-3 the
// sums (32 rows x 32 columns in float32, kept over all of K), 4-5 two row tiles, 6-7 two weight tiles: four
// tdpbf16ps per 32-input block. Each thread takes blocks of 32 output rows; the sums then get the bias and the
// residual in float32 and are rounded to bfloat16 once (oneDNN's path rounds the residual plus bias first).
//
// - `conv_rows_pack_bf16(weight_t)`: weight_t (K, N) bf16 with K = kernel x in (row j in + i: tap j, input i)
//   -> (K / 32, N / 16, 16, 32) bf16, each 32-input block of each 16-column panel in the tiles' pair-interleaved
//   layout (row p holds inputs 2p and 2p + 1 of each column side by side).
// - `conv_rows_bf16(x, packed, bias, residual, kernel, dilation, padding, out_rows, leaky, slope)` -> (out_rows,
//   N) bf16. Needs in % 32 == 0 and N % 32 == 0 (the caller falls back to row_taps otherwise).
// - `conv_rows_bf16_ready()`: whether this CPU and OS run it (AMX-TILE and AMX-BF16 reported, the tiles granted).
//
// Measured on an AMX Xeon (2 cores): hare-mini's vocoder on a 287-frame mel 0.60 s with row_taps and oneDNN,
// 0.38-0.41 s with this kernel (docs/benchmarks.md). Built on first use with the rest of the library by
// hare/kernels/__init__.py (the tile code only where the compiler targets AMX-BF16: elsewhere
// conv_rows_bf16_ready() is false) and registered as torch.ops.hare.conv_rows_*.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>

#if HARE_X86 && defined(__AMX_BF16__) && defined(__linux__)
#define HARE_AMX_BF16 1
#else
#define HARE_AMX_BF16 0
#endif

namespace {

#if HARE_AMX_BF16
// AMX's bf16 tiles (panel_linear.cpp's amx_tiles_ready: CPUID.7.0:EDX bit 22), decided once per process; the
// tile configuration is panel_linear.cpp's AmxConfig
bool amx_bf16_ready() {
  static const bool ready = amx_tiles_ready(22);
  return ready;
}

// The float32 sums of output rows r0 .. r0 + 31 and the 32 columns of panel pair `pair` into sums (32 x 32):
// XA the activated, padded input (row stride c; every tile load in bounds), PW the packed weight
__attribute__((target("amx-tile,amx-bf16"))) void amx_block(const uint16_t* XA, int64_t c, const uint16_t* PW,
                                                             int64_t k_blocks, int64_t n_panels, int64_t dilation,
                                                             int64_t r0, int64_t pair, float* sums) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t stride = c * 2;
  const int64_t c_blocks = c / 32;
  for (int64_t kb = 0; kb < k_blocks; ++kb) {
    const int64_t j = kb / c_blocks, cb = kb % c_blocks;
    const uint16_t* a = XA + (r0 + j * dilation) * c + 32 * cb;
    const uint16_t* w = PW + (kb * n_panels + 2 * pair) * 512;
    _tile_loadd(4, a, stride);
    _tile_loadd(5, a + 16 * c, stride);
    _tile_loadd(6, w, 64);
    _tile_loadd(7, w + 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, sums, 128);
  _tile_stored(1, sums + 16, 128);
  _tile_stored(2, sums + 16 * 32, 128);
  _tile_stored(3, sums + 16 * 32 + 16, 128);
}

// 16 bf16 values <-> float32 (vcvtneps2bf16 rounds to nearest even and keeps NaNs quiet NaNs, as
// c10::BFloat16 does)
__attribute__((target("avx512f,avx512bf16"))) inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
      reinterpret_cast<const __m256i*>(p))), 16));
}
__attribute__((target("avx512f,avx512bf16"))) inline void store16(uint16_t* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

// dst = the leaky ReLU of src (c values, c a multiple of 32): positive values kept as they are, others
// rounded from their float32 product with the slope, as torch's bf16 leaky_relu
__attribute__((target("avx512f,avx512bf16"))) void leaky_row(const uint16_t* src, uint16_t* dst, int64_t c, float slope) {
  const __m512 k = _mm512_set1_ps(slope), zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < c; i += 16) {
    const __m512 v = load16(src + i);
    const __mmask16 pos = _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
    store16(dst + i, _mm512_mask_blend_ps(pos, _mm512_mul_ps(v, k), v));
  }
}

// out rows = bf16(sums + bias + residual) for the block's `rows` rows x 32 columns (sums 32 floats per row)
__attribute__((target("avx512f,avx512bf16"))) void finish(const float* sums, int64_t rows, const float* bias,
                                                            const uint16_t* residual, int64_t ld, uint16_t* out) {
  const __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + 16);
  for (int64_t r = 0; r < rows; ++r) {
    __m512 v0 = _mm512_add_ps(_mm512_load_ps(sums + 32 * r), b0);
    __m512 v1 = _mm512_add_ps(_mm512_load_ps(sums + 32 * r + 16), b1);
    if (residual) {
      v0 = _mm512_add_ps(v0, load16(residual + r * ld));
      v1 = _mm512_add_ps(v1, load16(residual + r * ld + 16));
    }
    store16(out + r * ld, v0);
    store16(out + r * ld + 16, v1);
  }
}
#endif

bool conv_rows_bf16_ready() {
#if HARE_AMX_BF16
  return amx_bf16_ready();
#else
  return false;
#endif
}

at::Tensor conv_rows_pack_bf16(const at::Tensor& weight_t) {
  TORCH_CHECK(weight_t.device().is_cpu() && weight_t.scalar_type() == at::kBFloat16 && weight_t.dim() == 2,
              "conv_rows_pack_bf16: weight_t must be a (K, N) bfloat16 CPU tensor");
  const int64_t K = weight_t.size(0), N = weight_t.size(1);
  TORCH_CHECK(K % 32 == 0 && N % 32 == 0, "conv_rows_pack_bf16: K (", K, ") and N (", N,
              ") must be multiples of 32");
  const at::Tensor w = weight_t.contiguous();
  at::Tensor packed = at::empty({K / 32, N / 16, 16, 32}, w.options());
  const uint16_t* W = reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>());
  uint16_t* P = reinterpret_cast<uint16_t*>(packed.data_ptr<at::BFloat16>());
  for (int64_t kb = 0; kb < K / 32; ++kb)
    for (int64_t np = 0; np < N / 16; ++np)
      for (int64_t p = 0; p < 16; ++p)
        for (int64_t n = 0; n < 16; ++n)
          for (int64_t e = 0; e < 2; ++e)
            P[((kb * (N / 16) + np) * 16 + p) * 32 + 2 * n + e] = W[(32 * kb + 2 * p + e) * N + 16 * np + n];
  return packed;
}

at::Tensor conv_rows_bf16(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias,
                          const std::optional<at::Tensor>& residual, int64_t kernel, int64_t dilation,
                          int64_t padding, int64_t out_rows, bool leaky, double slope) {
  TORCH_CHECK(conv_rows_bf16_ready(), "conv_rows_bf16: this CPU (or its OS) does not run AMX bf16 tiles");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.is_contiguous(),
              "conv_rows_bf16: x must be a contiguous (frames, channels) bfloat16 CPU tensor");
  const int64_t frames = x.size(0), c = x.size(1);
  TORCH_CHECK(c % 32 == 0, "conv_rows_bf16: the input channels (", c, ") must be a multiple of 32");
  TORCH_CHECK(kernel >= 1 && dilation >= 1 && padding >= 0 && out_rows >= 0,
              "conv_rows_bf16: kernel and dilation must be positive, padding and out_rows not negative");
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() && packed.dim() == 4 &&
                  packed.size(0) * 32 == kernel * c && packed.size(2) == 16 && packed.size(3) == 32 &&
                  packed.size(1) % 2 == 0,
              "conv_rows_bf16: packed must be conv_rows_pack_bf16 of a (kernel x channels, N) weight");
  const int64_t n_panels = packed.size(1), N = 16 * n_panels;
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.dim() == 1 && bias.size(0) == N && bias.is_contiguous(),
              "conv_rows_bf16: bias must be a contiguous (N,) float32 tensor");
  if (residual.has_value())
    TORCH_CHECK(residual->scalar_type() == at::kBFloat16 && residual->dim() == 2 && residual->size(0) == out_rows &&
                    residual->size(1) == N && residual->is_contiguous(),
                "conv_rows_bf16: residual must be a contiguous (out_rows, N) bfloat16 tensor");
  at::Tensor out = at::empty({out_rows, N}, x.options());
  if (out_rows == 0) return out;
#if HARE_AMX_BF16
  const int64_t row_blocks = (out_rows + 31) / 32;
  // the activated input, zero-padded: row r is f(x[r - padding]); enough rows for every tile of the last block
  const int64_t padded = row_blocks * 32 + (kernel - 1) * dilation;
  std::unique_ptr<uint16_t[]> xa(new uint16_t[static_cast<size_t>(padded * c)]);  // every row written below
  const uint16_t* X = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>());
  const float s = static_cast<float>(slope);
  at::parallel_for(0, padded, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      uint16_t* dst = xa.get() + r * c;
      const int64_t src = r - padding;
      if (src < 0 || src >= frames) {
        std::memset(dst, 0, sizeof(uint16_t) * c);
      } else if (!leaky) {
        std::memcpy(dst, X + src * c, sizeof(uint16_t) * c);
      } else {
        leaky_row(X + src * c, dst, c, s);
      }
    }
  });
  const uint16_t* PW = reinterpret_cast<const uint16_t*>(packed.const_data_ptr<at::BFloat16>());
  const float* B = bias.const_data_ptr<float>();
  const uint16_t* R = residual.has_value() ? reinterpret_cast<const uint16_t*>(residual->const_data_ptr<at::BFloat16>())
                                           : nullptr;
  uint16_t* O = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t k_blocks = kernel * c / 32, pairs = n_panels / 2;
  at::parallel_for(0, row_blocks, 1, [&](int64_t b0, int64_t b1) {
    AmxConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    alignas(64) float sums[32 * 32];
    for (int64_t rb = b0; rb < b1; ++rb) {
      const int64_t r0 = rb * 32, rows = std::min<int64_t>(32, out_rows - r0);
      for (int64_t pair = 0; pair < pairs; ++pair) {
        amx_block(xa.get(), c, PW, k_blocks, n_panels, dilation, r0, pair, sums);
        finish(sums, rows, B + 32 * pair, R ? R + r0 * N + 32 * pair : nullptr, N, O + r0 * N + 32 * pair);
      }
    }
    _tile_release();
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("conv_rows_pack_bf16(Tensor weight_t) -> Tensor");
  m.impl("conv_rows_pack_bf16", c10::DispatchKey::CPU, TORCH_FN(conv_rows_pack_bf16));
  m.def("conv_rows_bf16(Tensor x, Tensor packed, Tensor bias, Tensor? residual, int kernel, int dilation, "
        "int padding, int out_rows, bool leaky, float slope) -> Tensor");
  m.impl("conv_rows_bf16", c10::DispatchKey::CPU, TORCH_FN(conv_rows_bf16));
  m.def("conv_rows_bf16_ready() -> bool", TORCH_FN(conv_rows_bf16_ready));
}
