// Hare's CPU kernel for GroupNorm over time-major rows, with the diffusion decoder's per-row scale/shift and
// SiLU fused in: y = silu((GN(x) * weight + bias) * (1 + scale) + shift). PyTorch's GroupNorm is fast on
// channel-major (batch, channels, frames) tensors only; the packed diffusion decoder keeps its activations
// time-major (its matrix products read and write rows of channels), so this one pass replaces a transposing
// copy, the norm and three elementwise passes.
//
// Built on first use by hare/kernels/__init__.py and registered as torch.ops.hare.group_norm_time_major.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "vec.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace {

using namespace hare_vec;

const float* optional_vector(const std::optional<at::Tensor>& t, int64_t rows, int64_t c, const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(rows == 0 ? (t->dim() == 1 && t->size(0) == c) : (t->dim() == 2 && t->size(0) == rows && t->size(1) == c),
              name, rows == 0 ? " must be (channels,)" : " must be (batch, channels)");
  return t->data_ptr<float>();
}

// x: (batch, frames, channels) contiguous float32; weight, bias: (channels,) or None; scale, shift:
// (batch, channels) or None (both or neither). Returns y of x's shape, contiguous.
at::Tensor group_norm_time_major(const at::Tensor& x, int64_t groups, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& shift, double eps, bool silu) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "x must be a float32 CPU tensor");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "x must be a contiguous (batch, frames, channels) tensor");
  const int64_t batch = x.size(0), frames = x.size(1), c = x.size(2);
  TORCH_CHECK(groups > 0 && c % groups == 0, "channels (", c, ") must be divisible by groups (", groups, ")");
  const float* W = optional_vector(weight, 0, c, "weight");
  const float* Bi = optional_vector(bias, 0, c, "bias");
  const float* S = optional_vector(scale, batch, c, "scale");
  const float* Sh = optional_vector(shift, batch, c, "shift");
  TORCH_CHECK((S == nullptr) == (Sh == nullptr), "scale and shift go together");
  const int64_t per_group = c / groups;
  const float* X = x.data_ptr<float>();
  at::Tensor out = at::empty_like(x);
  float* const Y = out.data_ptr<float>();
  if (x.numel() == 0) return out;

  // per (row, channel): y = x * a + b, from each group's mean and variance: two passes over the rows (the sums,
  // then the squared deviations from the group means), each split over the threads by frames, with per-channel
  // float sums per thread combined in double
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(frames, at::get_num_threads()));
  std::vector<float> partial(static_cast<size_t>(chunks * c)), center(static_cast<size_t>(c));
  std::vector<double> total(static_cast<size_t>(c));
  auto channel_sums = [&](int64_t n, bool squares) {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        float* acc = partial.data() + ch * c;
        std::fill(acc, acc + c, 0.0f);
        for (int64_t t = frames * ch / chunks; t < frames * (ch + 1) / chunks; ++t) {
          const float* row = X + (n * frames + t) * c;
          int64_t k = 0;
          for (; k + 16 <= c; k += 16) {
            const v16 v = squares ? load(row + k) - load(center.data() + k) : load(row + k);
            store(acc + k, load(acc + k) + (squares ? v * v : v));
          }
          for (; k < c; ++k) {
            const float v = squares ? row[k] - center[k] : row[k];
            acc[k] += squares ? v * v : v;
          }
        }
      }
    });
    std::fill(total.begin(), total.end(), 0.0);
    for (int64_t ch = 0; ch < chunks; ++ch)
      for (int64_t k = 0; k < c; ++k) total[k] += partial[ch * c + k];
  };
  auto group_total = [&](int64_t g) {
    double sum = 0.0;
    for (int64_t k = g * per_group; k < (g + 1) * per_group; ++k) sum += total[k];
    return sum;
  };
  std::vector<float> a(static_cast<size_t>(batch * c)), b(static_cast<size_t>(batch * c));
  const double count = static_cast<double>(frames * per_group);
  std::vector<double> mean(static_cast<size_t>(groups));
  for (int64_t n = 0; n < batch; ++n) {
    channel_sums(n, false);
    for (int64_t g = 0; g < groups; ++g) {
      mean[g] = group_total(g) / count;
      std::fill(center.begin() + g * per_group, center.begin() + (g + 1) * per_group, static_cast<float>(mean[g]));
    }
    channel_sums(n, true);
    for (int64_t g = 0; g < groups; ++g) {
      // the deviations were taken from the float-rounded mean: correct for that rounding exactly
      const double shift_error = static_cast<double>(center[g * per_group]) - mean[g];
      const double var = std::max(group_total(g) / count - shift_error * shift_error, 0.0);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps)), m = static_cast<float>(mean[g]);
      for (int64_t k = g * per_group; k < (g + 1) * per_group; ++k) {
        const float w = W ? W[k] : 1.0f, bb = Bi ? Bi[k] : 0.0f;
        const float gain = S ? 1.0f + S[n * c + k] : 1.0f, offset = Sh ? Sh[n * c + k] : 0.0f;
        a[n * c + k] = rstd * w * gain;
        b[n * c + k] = (bb - m * rstd * w) * gain + offset;
      }
    }
  }

  at::parallel_for(0, batch * frames, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / frames;
      const float *xr = X + r * c, *ar = a.data() + n * c, *br = b.data() + n * c;
      float* yr = Y + r * c;
      int64_t k = 0;
      for (; k + 16 <= c; k += 16) {
        const v16 y = load(xr + k) * load(ar + k) + load(br + k);
        store(yr + k, silu ? y * sigmoid(y) : y);
      }
      for (; k < c; ++k) {
        const float y = xr[k] * ar[k] + br[k];
        yr[k] = silu ? y / (1.0f + std::exp(-y)) : y;
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("group_norm_time_major(Tensor x, int groups, Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, "
        "float eps, bool silu) -> Tensor");
  m.impl("group_norm_time_major", c10::DispatchKey::CPU, TORCH_FN(group_norm_time_major));
}
