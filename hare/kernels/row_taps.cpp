// Hare's CPU kernel gathering a convolution's input taps side by side for time-major rows (an im2col), with the
// leaky ReLU before the convolution fused in: out[r, j * c + i] = f(x[start + r + j * dilation - padding, i]),
// zero where that row is outside x, f the leaky ReLU of `slope` (or nothing). The bf16 time-major HiFi-GAN
// (`hare.models.hifigan._RowConv`) multiplies each block of these rows by its weight; gathering in one call
// replaces a padding copy, an activation pass and one strided copy per tap.
//
// Built on first use by hare/kernels/__init__.py and registered as torch.ops.hare.row_taps.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <memory>

namespace {

// float <-> bfloat16 bits as c10::BFloat16 converts them (round to nearest even, NaN kept a quiet NaN),
// written out so that the loops vectorise
inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

template <typename T>
void leaky_row(const T* src, T* dst, int64_t c, float slope);

template <>
void leaky_row<float>(const float* src, float* dst, int64_t c, float slope) {
  for (int64_t i = 0; i < c; ++i) dst[i] = src[i] > 0.0f ? src[i] : src[i] * slope;
}

template <>
void leaky_row<uint16_t>(const uint16_t* src, uint16_t* dst, int64_t c, float slope) {
  for (int64_t i = 0; i < c; ++i) {
    const float v = bf16_to_float(src[i]);
    dst[i] = v > 0.0f ? src[i] : float_to_bf16(v * slope);
  }
}

template <typename T>
void gather(const T* x, T* out, int64_t frames, int64_t c, int64_t start, int64_t rows, int64_t kernel,
            int64_t dilation, int64_t padding, bool leaky, float slope) {
  // With the leaky ReLU, the input rows the block reads are activated once into a scratch copy first (each
  // row is read by `kernel` taps: activating it once per tap cost as much again as the copies), then gathered
  // from there. The activation is elementwise, so the taps are what activating each copy gives.
  const int64_t lo = std::max<int64_t>(0, start - padding);
  const int64_t hi = std::min<int64_t>(frames, start + rows - 1 + (kernel - 1) * dilation - padding + 1);
  std::unique_ptr<T[]> scratch;
  const T* src = x;  // input row s at src + (s - first) * c
  int64_t first = 0;
  if (leaky && hi > lo) {
    scratch.reset(new T[static_cast<size_t>((hi - lo) * c)]);  // every row written here
    at::parallel_for(lo, hi, 64, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) leaky_row<T>(x + s * c, scratch.get() + (s - lo) * c, c, slope);
    });
    src = scratch.get(), first = lo;  // the activated rows lo .. hi - 1
  }
  at::parallel_for(0, rows, 32, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* row = out + r * kernel * c;
      for (int64_t j = 0; j < kernel; ++j) {
        const int64_t s = start + r + j * dilation - padding;
        T* dst = row + j * c;
        if (s < 0 || s >= frames) {
          std::memset(dst, 0, sizeof(T) * c);
        } else {
          std::memcpy(dst, src + (s - first) * c, sizeof(T) * c);
        }
      }
    }
  });
}

// x: (frames, c) contiguous float32 or bfloat16; out: (>= rows, kernel * c) of x's dtype, rows contiguous.
// Fills out's first `rows` rows; `slope` is used only with `leaky`.
void row_taps(const at::Tensor& x, int64_t start, int64_t rows, int64_t kernel, int64_t dilation, int64_t padding,
              bool leaky, double slope, at::Tensor& out) {
  TORCH_CHECK(x.device().is_cpu() && out.device().is_cpu(), "row_taps: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "row_taps: x must be a contiguous (frames, channels) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "row_taps: x must be float32 or bfloat16");
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), "row_taps: out must have x's dtype");
  const int64_t frames = x.size(0), c = x.size(1);
  TORCH_CHECK(kernel >= 1 && dilation >= 1 && rows >= 0, "row_taps: kernel and dilation must be positive");
  TORCH_CHECK(out.dim() == 2 && out.size(0) >= rows && out.size(1) == kernel * c && out.stride(1) == 1 &&
                  out.stride(0) == kernel * c,
              "row_taps: out must be a row-contiguous (>= rows, kernel * channels) tensor");
  if (rows == 0 || c == 0) return;
  if (x.scalar_type() == at::kFloat) {
    gather<float>(x.data_ptr<float>(), out.data_ptr<float>(), frames, c, start, rows, kernel, dilation, padding,
                  leaky, static_cast<float>(slope));
  } else {
    gather<uint16_t>(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                     reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), frames, c, start, rows, kernel,
                     dilation, padding, leaky, static_cast<float>(slope));
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("row_taps(Tensor x, int start, int rows, int kernel, int dilation, int padding, bool leaky, float slope, "
        "Tensor(a!) out) -> ()");
  m.impl("row_taps", c10::DispatchKey::CPU, TORCH_FN(row_taps));
}
