// Hare's CPU kernel for UniVNet's location-variable convolution (hare.models.vocoder): every `hop`-sample
// segment of the signal convolved (3 taps, 'same' padding across segment borders) with its own kernel.
// Per segment a (out x in*3) by (in*3 x hop) product, register-blocked over 8 output channels and 16 samples,
// read straight from the signal: no unfolded copy of it (three times its size) as the einsum formulation makes.
//
// Built on first use by hare/kernels/__init__.py and registered as torch.ops.hare.location_variable_conv.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "vec.h"

#include <vector>

namespace {

using namespace hare_vec;

// x: (batch, in, frames * hop); kernel: (batch, in, out, 3, frames); bias: (batch, out, frames), any strides.
// Returns y (batch, out, frames * hop), contiguous: y[o, f*hop + s] = bias[o, f] +
// sum_{i,k} x[i, f*hop + s + k - 1] * kernel[i, o, k, f], x taken as zero outside the signal.
at::Tensor location_variable_conv(const at::Tensor& x, const at::Tensor& kernel, const at::Tensor& bias,
                                  int64_t hop) {
  for (const auto* t : {&x, &kernel, &bias})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat, "inputs must be float32 CPU tensors");
  TORCH_CHECK(x.dim() == 3 && kernel.dim() == 5 && bias.dim() == 3, "x, kernel, bias must be 3-, 5- and 3-D");
  const int64_t batch = x.size(0), in = x.size(1), length = x.size(2);
  const int64_t out = kernel.size(2), taps = kernel.size(3), frames = kernel.size(4);
  TORCH_CHECK(taps == 3, "the kernel must have 3 taps");
  TORCH_CHECK(hop > 0 && length == frames * hop, "x's length must be frames x hop");
  TORCH_CHECK(kernel.size(0) == batch && kernel.size(1) == in && bias.size(0) == batch && bias.size(1) == out &&
                  bias.size(2) == frames,
              "kernel must be (batch, in, out, 3, frames) and bias (batch, out, frames)");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({batch, out, length}, x.options());
  const float* X = xc.data_ptr<float>();
  const float* Kp = kernel.data_ptr<float>();
  const float* Bp = bias.data_ptr<float>();
  float* const Y = y.data_ptr<float>();
  const auto ks = kernel.strides();
  const auto bs = bias.strides();
  const int64_t depth = in * 3;
  at::parallel_for(0, batch * frames, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w(static_cast<size_t>(out * depth));  // this segment's kernel, (out, in * 3) contiguous
    std::vector<float> pad(static_cast<size_t>(depth * (hop + 2)));  // segment rows with their border samples
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / frames, f = item % frames;
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i)
          for (int64_t k = 0; k < 3; ++k)
            w[o * depth + i * 3 + k] = Kp[b * ks[0] + i * ks[1] + o * ks[2] + k * ks[3] + f * ks[4]];
      // row (i, k) of the segment's input: x[i, f*hop + k - 1 ...], the first and last sample may lie outside
      for (int64_t i = 0; i < in; ++i) {
        const float* xi = X + (b * in + i) * length;
        float* p = pad.data() + i * (hop + 2);
        for (int64_t s = -1; s <= hop; ++s) {
          const int64_t t = f * hop + s;
          p[s + 1] = (t >= 0 && t < length) ? xi[t] : 0.0f;
        }
      }
      float* yb = Y + b * out * length + f * hop;
      int64_t o0 = 0;
      for (; o0 + 8 <= out && hop % 16 == 0; o0 += 8) {
        for (int64_t s0 = 0; s0 < hop; s0 += 16) {
          v16 acc[8];
          for (int r = 0; r < 8; ++r) acc[r] = splat(Bp[b * bs[0] + (o0 + r) * bs[1] + f * bs[2]]);
          for (int64_t i = 0; i < in; ++i) {
            const float* p = pad.data() + i * (hop + 2) + s0;
            for (int64_t k = 0; k < 3; ++k) {
              const v16 xv = load(p + k);
              const float* wk = w.data() + o0 * depth + i * 3 + k;
              for (int r = 0; r < 8; ++r) acc[r] += wk[r * depth] * xv;
            }
          }
          for (int r = 0; r < 8; ++r) store(yb + (o0 + r) * length + s0, acc[r]);
        }
      }
      for (int64_t o = o0; o < out; ++o) {  // what the blocked loop did not take: plain loops
        const float bo = Bp[b * bs[0] + o * bs[1] + f * bs[2]];
        for (int64_t s = 0; s < hop; ++s) {
          float a = bo;
          for (int64_t i = 0; i < in; ++i)
            for (int64_t k = 0; k < 3; ++k) a += w[o * depth + i * 3 + k] * pad[i * (hop + 2) + s + k];
          yb[o * length + s] = a;
        }
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("location_variable_conv(Tensor x, Tensor kernel, Tensor bias, int hop) -> Tensor");
  m.impl("location_variable_conv", c10::DispatchKey::CPU, TORCH_FN(location_variable_conv));
}
