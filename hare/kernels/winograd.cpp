// Hare's CPU kernels for the input and output transforms of Winograd's F(4,3) 1-D convolution
// (hare.models.packed.WinogradConv1d): each one pass over time-major rows, in place of some twenty
// elementwise PyTorch operations on strided views. The six matrix products between them stay on oneDNN.
//
// Built on first use by hare/kernels/__init__.py and registered as torch.ops.hare.winograd_input and
// torch.ops.hare.winograd_output.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

// x: (batch, frames, channels) time-major, channels contiguous. Returns (6, batch * tiles, channels), tiles =
// ceil(frames / 4): for tile i of a batch row, with d0..d5 = x[4i-1 .. 4i+4] (zero outside the row),
// B^T d = (4d0 - 5d2 + d4, -4d1 - 4d2 + d3 + d4, 4d1 - 4d2 - d3 + d4, -2d1 - d2 + 2d3 + d4, 2d1 - d2 - 2d3 + d4,
// 4d1 - 5d3 + d5).
at::Tensor winograd_input(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "x must be a float32 CPU tensor");
  TORCH_CHECK(x.dim() == 3, "x must be (batch, frames, channels)");
  TORCH_CHECK(x.size(2) == 0 || x.stride(2) == 1, "x's channels must be contiguous");
  const int64_t batch = x.size(0), frames = x.size(1), c = x.size(2), tiles = (frames + 3) / 4;
  at::Tensor out = at::empty({6, batch * tiles, c}, x.options());
  const float* X = x.data_ptr<float>();
  float* const V = out.data_ptr<float>();
  const int64_t sb = x.stride(0), st = x.stride(1), plane = batch * tiles * c;
  at::parallel_for(0, batch * tiles, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> zeros(static_cast<size_t>(c), 0.0f);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / tiles, i = row % tiles;
      const float* d[6];
      for (int j = 0; j < 6; ++j) {
        const int64_t t = 4 * i - 1 + j;
        d[j] = (t >= 0 && t < frames) ? X + b * sb + t * st : zeros.data();
      }
      float* v = V + row * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        const float d0 = d[0][k], d1 = d[1][k], d2 = d[2][k], d3 = d[3][k], d4 = d[4][k], d5 = d[5][k];
        const float a1 = d4 - 4.0f * d2, b1 = d3 - 4.0f * d1, a2 = d4 - d2, b2 = d3 - d1;
        v[k] = 4.0f * d0 - 5.0f * d2 + d4;
        v[plane + k] = a1 + b1;
        v[2 * plane + k] = a1 - b1;
        v[3 * plane + k] = a2 + 2.0f * b2;
        v[4 * plane + k] = a2 - 2.0f * b2;
        v[5 * plane + k] = 4.0f * d1 - 5.0f * d3 + d5;
      }
    }
  });
  return out;
}

// m: six (batch * tiles, channels) products; returns y (batch, frames, channels) time-major: for each tile,
// with p = m1 + m2, q = m1 - m2, r = m3 + m4, s = m3 - m4,
// A^T m = (m0 + p + r, q + 2s, p + 4r, q + 8s + m5) as its four frames (the last tile cut at `frames`),
// plus the bias and a residual (batch, frames, channels) if they are given.
at::Tensor winograd_output(at::TensorList m, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, int64_t batch, int64_t frames) {
  TORCH_CHECK(m.size() == 6, "winograd_output takes six products");
  const int64_t tiles = (frames + 3) / 4;
  TORCH_CHECK(batch >= 0 && frames >= 0, "batch and frames must not be negative");
  const int64_t c = m[0].size(-1);
  for (const auto& t : m) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "the products must be float32 CPU tensors");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == batch * tiles && t.size(1) == c && t.is_contiguous(),
                "each product must be a contiguous (batch * tiles, channels) tensor");
  }
  const float* B = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == c && bias->is_contiguous(),
                "bias must be a contiguous float32 (channels,) tensor");
    B = bias->data_ptr<float>();
  }
  const float* R = nullptr;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->is_contiguous() && residual->dim() == 3 &&
                    residual->size(0) == batch && residual->size(1) == frames && residual->size(2) == c,
                "residual must be a contiguous float32 (batch, frames, channels) tensor");
    R = residual->data_ptr<float>();
  }
  at::Tensor out = at::empty({batch, frames, c}, m[0].options());
  const float* M[6];
  for (int j = 0; j < 6; ++j) M[j] = m[j].data_ptr<float>();
  float* const Y = out.data_ptr<float>();
  at::parallel_for(0, batch * tiles, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> spill(static_cast<size_t>(3 * c));  // frames of the last tile past the row's end
    std::vector<float> zeros(static_cast<size_t>(c), 0.0f);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / tiles, i = row % tiles, valid = std::min<int64_t>(4, frames - 4 * i);
      float* y[4];
      const float* res[4];
      for (int j = 0; j < 4; ++j) {
        y[j] = j < valid ? Y + (b * frames + 4 * i + j) * c : spill.data() + (j - 1) * c;
        res[j] = R && j < valid ? R + (b * frames + 4 * i + j) * c : zeros.data();
      }
      const float *m0 = M[0] + row * c, *m1 = M[1] + row * c, *m2 = M[2] + row * c, *m3 = M[3] + row * c,
                  *m4 = M[4] + row * c, *m5 = M[5] + row * c;
      float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
      const float *r0 = res[0], *r1 = res[1], *r2 = res[2], *r3 = res[3];
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        const float p = m1[k] + m2[k], q = m1[k] - m2[k], r = m3[k] + m4[k], s = m3[k] - m4[k];
        const float bk = B ? B[k] : 0.0f;
        y0[k] = (m0[k] + p + r + bk) + r0[k];
        y1[k] = (q + 2.0f * s + bk) + r1[k];
        y2[k] = (p + 4.0f * r + bk) + r2[k];
        y3[k] = (q + 8.0f * s + m5[k] + bk) + r3[k];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("winograd_input(Tensor x) -> Tensor");
  m.def("winograd_output(Tensor[] m, Tensor? bias, Tensor? residual, int batch, int frames) -> Tensor");
  m.impl("winograd_input", c10::DispatchKey::CPU, TORCH_FN(winograd_input));
  m.impl("winograd_output", c10::DispatchKey::CPU, TORCH_FN(winograd_output));
}
