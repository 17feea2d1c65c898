// Hare's CPU kernel for one decoding step of a whole GPT-2 block (pre-LayerNorm attention, then the 4x GELU-tanh
// MLP) over every row: the block in one call instead of about thirty operations from Python.
//
// The same computation as Block.forward's: each LayerNorm is applied as the following linear layer transposes its
// input (panel_linear's RowNorm: float sums per row, as PyTorch's to float rounding) and each residual is added in
// the last tile of the linear before it, so that the block reads its small activations once. Those are out of
// every cache by then (each layer streams ~50 MB of weights), and as separate PyTorch operations the norms,
// additions and the Python between them cost several milliseconds of a ~100 ms step that should be all
// weight reads. The linears are Hare's few-row kernels (float32 panels, or int8 ones on the fast path), the
// attention decode_attention_qkv.
//
// Built on first use by hare/kernels/__init__.py and registered as torch.ops.hare.gpt_block_decode.

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

namespace {

// One of the block's linears, float32 or int8 panels: `weights` is [panels] (panel_pack) or [panels, scales, sums]
// (panel_pack_int8).
at::Tensor block_linear(const at::Tensor& x, at::TensorList weights, const std::optional<at::Tensor>& bias, int64_t n,
                        bool gelu_tanh, const Fused& fused) {
  if (weights.size() == 1) return panel_linear_fused(x, weights[0], bias, n, gelu_tanh, "", fused);
  TORCH_CHECK(weights.size() == 3, "a block linear's weights are [panels] or [int8 panels, scales, sums]");
  return panel_linear_int8_fused(x, weights[0], weights[1], weights[2], bias, n, gelu_tanh, "", fused);
}

// x (batch, dim): one new position per row. ln*: the two LayerNorms' weights and biases (eps); *_panels, *_bias:
// the four linears' packed weights (block_linear: float32 or int8 panels, each on its own; qkv dim -> 3 dim,
// attn_out dim -> dim, fc dim -> 4 dim, proj 4 dim -> dim);
// k_cache, v_cache, position, prefix_k, prefix_v, heads: as decode_attention_qkv (the new key and value are written
// at `position`). Returns the block's output (batch, dim).
at::Tensor gpt_block_decode(const at::Tensor& x, const at::Tensor& ln1_weight, const at::Tensor& ln1_bias,
                            const at::Tensor& ln2_weight, const at::Tensor& ln2_bias, double eps,
                            at::TensorList qkv_panels, const std::optional<at::Tensor>& qkv_bias,
                            at::TensorList out_panels, const std::optional<at::Tensor>& out_bias,
                            at::TensorList fc_panels, const std::optional<at::Tensor>& fc_bias,
                            at::TensorList proj_panels, const std::optional<at::Tensor>& proj_bias,
                            const at::Tensor& k_cache, const at::Tensor& v_cache, int64_t position,
                            const at::Tensor& prefix_k, const at::Tensor& prefix_v, int64_t heads) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2,
              "x must be a (batch, dim) float32 CPU tensor");
  const int64_t dim = x.size(1);
  TORCH_CHECK(heads > 0 && dim % heads == 0, "dim (", dim, ") must be divisible by heads (", heads, ")");
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim / heads));
  // the norms fused into the transposition of the linears' inputs, the residuals into their last tile
  const at::Tensor qkv = block_linear(x, qkv_panels, qkv_bias, 3 * dim, false, {&ln1_weight, &ln1_bias, eps});
  const at::Tensor h = decode_attention_qkv(qkv, k_cache, v_cache, position, prefix_k, prefix_v, heads, scale);
  const at::Tensor x1 = block_linear(h, out_panels, out_bias, dim, false, {.residual = &x});
  const at::Tensor m = block_linear(x1, fc_panels, fc_bias, 4 * dim, true, {&ln2_weight, &ln2_bias, eps});
  return block_linear(m, proj_panels, proj_bias, dim, false, {.residual = &x1});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("gpt_block_decode(Tensor x, Tensor ln1_weight, Tensor ln1_bias, Tensor ln2_weight, Tensor ln2_bias, "
        "float eps, Tensor[] qkv_panels, Tensor? qkv_bias, Tensor[] out_panels, Tensor? out_bias, Tensor[] fc_panels, "
        "Tensor? fc_bias, Tensor[] proj_panels, Tensor? proj_bias, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "int position, Tensor prefix_k, Tensor prefix_v, int heads) -> Tensor");
  m.impl("gpt_block_decode", c10::DispatchKey::CPU, TORCH_FN(gpt_block_decode));
}
