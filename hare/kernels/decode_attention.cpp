// Hare's CPU kernel for one decoding step of attention: every row's single new query against a prefix of
// keys/values shared by all rows (the prompt, stored once) followed by the row's own keys/values.
//
// The same softmax attention as over the concatenated keys, in float32, read straight from the KV cache's
// strided views: no concatenation, no second pass to merge two partial softmaxes, one pass over each key and
// value row. Decoding at a small batch is bound by reading the cache; PyTorch's general kernels spend most of
// their time per (row, head) on set-up and single-lane reductions, so this one exists.
//
// The cache (keys and values, shared and own) is float32, or bfloat16 (half the bytes to read: the fast path's
// cache), widened to float32 as it is read; the query, the scores, the softmax and the sums stay float32.
//
// Portable C++ with GCC/Clang vector extensions (16-float vectors: one AVX-512 register, two AVX2 ones, four
// NEON ones) for head sizes that are multiples of 16 up to 128; other sizes take plain loops. Built on first use by
// hare/kernels/__init__.py (the C++ compiler against the installed PyTorch, cached per machine) and registered
// as torch.ops.hare.decode_attention (and decode_attention_qkv: the same step from the fused projection, the new
// key and value written into the cache first).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using namespace hare_vec;

// Lane r of the result is the sum of a[r]'s 16 lanes (four rounds of pairwise shuffles: 15 adds for 16 sums).
inline v16 transpose_sum(const v16* a) {
  v16 r1[8], r2[4], r3[2];
  for (int p = 0; p < 8; ++p)
    r1[p] = __builtin_shufflevector(a[2 * p], a[2 * p + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
            __builtin_shufflevector(a[2 * p], a[2 * p + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int p = 0; p < 4; ++p)
    r2[p] = __builtin_shufflevector(r1[2 * p], r1[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
            __builtin_shufflevector(r1[2 * p], r1[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int p = 0; p < 2; ++p)
    r3[p] = __builtin_shufflevector(r2[2 * p], r2[2 * p + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
            __builtin_shufflevector(r2[2 * p], r2[2 * p + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(r3[0], r3[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(r3[0], r3[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// a cache element: float32, or bfloat16 held as its 16 bits
inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) { return bf16_to_float(x); }
inline v16 load_kv(const float* p) { return load(p); }
inline v16 load_kv(const uint16_t* p) { return load_bf16(p); }

template <typename T = float>
struct View {  // a float32 (T = float) or bfloat16 (T = uint16_t) tensor's data and strides (elements), its last dimension contiguous
  const T* data;
  std::vector<int64_t> stride;
  explicit View(const at::Tensor& t) : data(static_cast<const T*>(t.const_data_ptr())), stride(t.strides().vec()) {}
};

// Any head size, plain loops: one (row, head) item at a time, the shared positions then the own ones.
template <typename T>
void run_plain(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pk,
               const at::Tensor& pv, double scale, at::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(2), own = k.size(2), shared = pk.size(1);
  const View<float> Q(q);
  const View<T> K(k), V(v), PK(pk), PV(pv);
  float* const O = out.data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w(static_cast<size_t>(shared + own));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / heads, h = item % heads;
      const float* qp = Q.data + b * Q.stride[0] + h * Q.stride[1];
      auto key = [&](int64_t j) {
        return j < shared ? PK.data + h * PK.stride[0] + j * PK.stride[1]
                          : K.data + b * K.stride[0] + h * K.stride[1] + (j - shared) * K.stride[2];
      };
      auto value = [&](int64_t j) {
        return j < shared ? PV.data + h * PV.stride[0] + j * PV.stride[1]
                          : V.data + b * V.stride[0] + h * V.stride[1] + (j - shared) * V.stride[2];
      };
      float m = -INFINITY;
      for (int64_t j = 0; j < shared + own; ++j) {
        const T* kr = key(j);
        float a = 0.0f;
        for (int64_t i = 0; i < d; ++i) a += qp[i] * to_float(kr[i]);
        w[j] = static_cast<float>(scale) * a;
        m = std::max(m, w[j]);
      }
      float total = 0.0f;
      for (int64_t j = 0; j < shared + own; ++j) total += (w[j] = std::exp(w[j] - m));
      float* o = O + item * d;
      std::fill(o, o + d, 0.0f);
      for (int64_t j = 0; j < shared + own; ++j) {
        const T* vr = value(j);
        for (int64_t i = 0; i < d; ++i) o[i] += w[j] * to_float(vr[i]);
      }
      for (int64_t i = 0; i < d; ++i) o[i] /= total;
    }
  });
}

// how many positions ahead the position-major kernel asks for the cache's rows (into the outer caches): the
// hardware prefetcher does not follow a thread's runs across page boundaries on its own
constexpr int64_t kAhead = 1;

// how much one pass over the positions takes, in 16-float vectors per lane times lanes (whole groups of 16
// lanes, at least one): 256 is 64 lanes of head size 64, 16 KB of queries and 16 KB of sums, a quarter of
// hare-mini's 96 rows x 4 heads (measured on an AMX Xeon: 15-20 % faster than one pass over everything at
// that batch, a little faster at the official model's 16 x 16); a -D at build time overrides it
#ifndef HARE_ATTN_CHUNK
#define HARE_ATTN_CHUNK 256
#endif
constexpr int64_t kChunkLanes = HARE_ATTN_CHUNK;

// Head sizes that are multiples of 16 (up to 128), vectorised. Positions outermost: with the cache stored
// position-major (every row's and head's key of one position side by side, as Hare's KV cache is), each
// thread reads it in long contiguous runs. A thread takes groups of 16 (row, head) items, row-major, one item
// per vector lane for the scores and the softmax; any strides work, other layouts just read less smoothly.
template <int NV, typename T>
void run_position_major(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pk,
                        const at::Tensor& pv, double scale, at::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(2), own = k.size(2), shared = pk.size(1);
  const int64_t items = batch * heads, groups = (items + 15) / 16, n = shared + own;
  const View<float> Q(q);
  const View<T> K(k), V(v), PK(pk), PV(pv);
  float* const O = out.data_ptr<float>();
  const float s = static_cast<float>(scale);
  // Each thread walks its groups a chunk at a time, every position for one chunk before the next: the chunk's
  // queries and sums (lanes x head size floats each) stay in the core's first cache, which a thread's whole share
  // at a large batch (96 rows x 4 heads: 48 KB each) does not fit. Lanes are independent, so the order of the
  // chunks changes no result.
  const int64_t chunk = std::max<int64_t>(1, kChunkLanes / (16 * NV));
  at::parallel_for(0, groups, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t g0 = t0; g0 < t1; g0 += chunk) {
      const int64_t g1 = std::min(t1, g0 + chunk);
      const int64_t first = g0 * 16, lanes = (g1 - g0) * 16;  // this chunk's items: first .. first + lanes - 1
      // per lane: the address offsets of its item (lanes past the last item repeat it and are not written)
      std::vector<int64_t> q_off(lanes), k_off(lanes), v_off(lanes), p_off(lanes);
      for (int64_t i = 0; i < lanes; ++i) {
        const int64_t item = std::min(first + i, items - 1), b = item / heads, h = item % heads;
        q_off[i] = b * Q.stride[0] + h * Q.stride[1];
        k_off[i] = b * K.stride[0] + h * K.stride[1];
        v_off[i] = b * V.stride[0] + h * V.stride[1];
        p_off[i] = h * PK.stride[0];
      }
      std::vector<v16> qs(static_cast<size_t>(lanes * NV)), acc(static_cast<size_t>(lanes * NV), v16{});
      for (int64_t i = 0; i < lanes; ++i)
        for (int c = 0; c < NV; ++c) qs[i * NV + c] = load(Q.data + q_off[i] + 16 * c);
      std::vector<float> wt(static_cast<size_t>(n * lanes));  // weights, position-major: wt[j * lanes + lane]
      // scores of position j for every lane: rows at base + offsets[lane]
      auto scores = [&](const T* base, const int64_t* offsets, float* dst, int64_t ahead) {
        for (int64_t i0 = 0; i0 < lanes; i0 += 16) {
          v16 dots[16];
          for (int r = 0; r < 16; ++r) {
            const T* row = base + offsets[i0 + r];
            if (ahead) for (int c = 0; c < NV; ++c) __builtin_prefetch(row + ahead + 16 * c, 0, 1);
            const v16* qv = &qs[(i0 + r) * NV];
            v16 a = qv[0] * load_kv(row);
            for (int c = 1; c < NV; ++c) a += qv[c] * load_kv(row + 16 * c);
            dots[r] = a;
          }
          store(dst + i0, transpose_sum(dots) * s);
        }
      };
      for (int64_t j = 0; j < shared; ++j) scores(PK.data + j * PK.stride[1], p_off.data(), &wt[j * lanes], 0);
      for (int64_t j = 0; j < own; ++j)
        scores(K.data + j * K.stride[2], k_off.data(), &wt[(shared + j) * lanes], j + kAhead < own ? kAhead * K.stride[2] : 0);
      // softmax per lane, over the positions
      for (int64_t i0 = 0; i0 < lanes; i0 += 16) {
        v16 m = load(&wt[i0]);
        for (int64_t j = 1; j < n; ++j) {
          const v16 x = load(&wt[j * lanes + i0]);
          m = x > m ? x : m;
        }
        v16 total{};
        for (int64_t j = 0; j < n; ++j) {
          float* w = &wt[j * lanes + i0];
          const v16 x = load(w) - m;
          const v16 e = exp_nonpositive(x);
          store(w, e);
          total += e;
        }
        const v16 inv = 1.0f / total;
        for (int64_t j = 0; j < n; ++j) store(&wt[j * lanes + i0], load(&wt[j * lanes + i0]) * inv);
      }
      // weighted sums of the values, position by position
      auto accumulate = [&](const T* base, const int64_t* offsets, const float* w, int64_t ahead) {
        for (int64_t i = 0; i < lanes; ++i) {
          const T* row = base + offsets[i];
          if (ahead) for (int c = 0; c < NV; ++c) __builtin_prefetch(row + ahead + 16 * c, 0, 1);
          const v16 wi = splat(w[i]);
          v16* a = &acc[i * NV];
          for (int c = 0; c < NV; ++c) a[c] += wi * load_kv(row + 16 * c);
        }
      };
      for (int64_t j = 0; j < shared; ++j) accumulate(PV.data + j * PV.stride[1], p_off.data(), &wt[j * lanes], 0);
      for (int64_t j = 0; j < own; ++j) accumulate(V.data + j * V.stride[2], v_off.data(), &wt[(shared + j) * lanes], j + kAhead < own ? kAhead * V.stride[2] : 0);
      for (int64_t i = 0; i < lanes && first + i < items; ++i)
        for (int c = 0; c < NV; ++c) store(O + (first + i) * d + 16 * c, acc[i * NV + c]);
    }
  });
}

void check(const at::Tensor& t, int64_t dims, const char* name, bool bf16_ok = false) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || (bf16_ok && t.scalar_type() == at::kBFloat16)),
              name, bf16_ok ? " must be a float32 or bfloat16 CPU tensor" : " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions, got ", t.dim());
  TORCH_CHECK(t.numel() == 0 || t.stride(dims - 1) == 1, name, "'s last dimension must be contiguous");
}

template <typename T>
void dispatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& prefix_k,
              const at::Tensor& prefix_v, double scale, at::Tensor& out) {
  switch (q.size(2)) {  // vectorised for head sizes that are multiples of 16 up to 128 (GPT-2-style models use 64)
    case 16: run_position_major<1, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    case 32: run_position_major<2, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    case 48: run_position_major<3, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    case 64: run_position_major<4, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    case 80: run_position_major<5, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    case 96: run_position_major<6, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    case 112: run_position_major<7, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    case 128: run_position_major<8, T>(q, k, v, prefix_k, prefix_v, scale, out); break;
    default: run_plain<T>(q, k, v, prefix_k, prefix_v, scale, out);
  }
}

// q: (batch, heads, d); k, v: (batch, heads, own, d); prefix_k, prefix_v: (heads, shared, d), shared >= 0;
// returns (batch, heads, d), contiguous: softmax(scale q.k) v over the shared then the own positions.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& prefix_k, const at::Tensor& prefix_v, double scale) {
  check(q, 3, "q");
  check(k, 4, "k", true);
  check(v, 4, "v", true);
  check(prefix_k, 3, "prefix_k", true);
  check(prefix_v, 3, "prefix_v", true);
  const bool bf16 = k.scalar_type() == at::kBFloat16;
  TORCH_CHECK(v.scalar_type() == k.scalar_type() && prefix_k.scalar_type() == k.scalar_type() &&
                  prefix_v.scalar_type() == k.scalar_type(),
              "k, v, prefix_k and prefix_v must have one dtype (float32 or bfloat16)");
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(2);
  TORCH_CHECK(k.size(0) == batch && k.size(1) == heads && k.size(3) == d && v.sizes() == k.sizes(),
              "k and v must be (batch, heads, own, d) matching q");
  TORCH_CHECK(prefix_k.size(0) == heads && prefix_k.size(2) == d && prefix_v.sizes() == prefix_k.sizes(),
              "prefix_k and prefix_v must be (heads, shared, d) matching q");
  TORCH_CHECK(prefix_k.size(1) + k.size(2) > 0, "there must be at least one key");
  at::Tensor out = at::empty({batch, heads, d}, q.options());
  if (batch * heads == 0) return out;
  if (bf16)
    dispatch<uint16_t>(q, k, v, prefix_k, prefix_v, scale, out);
  else
    dispatch<float>(q, k, v, prefix_k, prefix_v, scale, out);
  return out;
}

// One decoding step straight from the fused projection: qkv (batch, 3 * heads * d), rows contiguous, holds each
// row's new query, key and value; k_cache, v_cache: (capacity, batch, heads, d) contiguous, one layer of the
// position-major KV cache (each row's own positions). Writes the new key and value at `position`, then attends
// over the shared prefix (heads, shared, d) and own positions 0 .. position. Returns (batch, heads * d). (The
// split, the cache write, the views and the reshape around decode_attention, in one call.)
at::Tensor decode_attention_qkv(const at::Tensor& qkv, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                int64_t position, const at::Tensor& prefix_k, const at::Tensor& prefix_v,
                                int64_t heads, double scale) {
  check(qkv, 2, "qkv");
  check(k_cache, 4, "k_cache", true);
  check(v_cache, 4, "v_cache", true);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.sizes() == v_cache.sizes() &&
                  k_cache.scalar_type() == v_cache.scalar_type(),
              "k_cache and v_cache must be contiguous (capacity, batch, heads, d) tensors of one shape and dtype");
  const int64_t batch = qkv.size(0), d = k_cache.size(3);
  TORCH_CHECK(heads > 0 && k_cache.size(1) == batch && k_cache.size(2) == heads && qkv.size(1) == 3 * heads * d,
              "qkv must be (batch, 3 * heads * d) matching the cache");
  TORCH_CHECK(position >= 0 && position < k_cache.size(0), "position ", position, " is outside the cache's ",
              k_cache.size(0), " positions");
  const int64_t width = heads * d;
  auto part = [&](int64_t i) { return qkv.narrow(1, i * width, width).view({batch, heads, d}); };
  // the new key and value into the cache's slot `position` (contiguous: batch rows of heads * d), converted to
  // bfloat16 there as torch does (nearest, ties to even); in place of two copy_ calls, whose dispatch costs more
  // than the copy at a decode step's size
  const float* const src = qkv.const_data_ptr<float>();
  const int64_t ld = qkv.stride(0);
  for (int w = 1; w <= 2; ++w) {
    const at::Tensor& cache = w == 1 ? k_cache : v_cache;  // (Tensor(a!): written through its data pointer)
    for (int64_t b = 0; b < batch; ++b) {
      const float* from = src + b * ld + w * width;
      if (cache.scalar_type() == at::kFloat) {
        std::memcpy(cache.data_ptr<float>() + (position * batch + b) * width, from, width * sizeof(float));
      } else {
        uint16_t* to = static_cast<uint16_t*>(cache.data_ptr()) + (position * batch + b) * width;
        for (int64_t i = 0; i < width; ++i) to[i] = float_to_bf16(from[i]);
      }
    }
  }
  const at::Tensor k = k_cache.narrow(0, 0, position + 1).permute({1, 2, 0, 3});
  const at::Tensor v = v_cache.narrow(0, 0, position + 1).permute({1, 2, 0, 3});
  return decode_attention(part(0), k, v, prefix_k, prefix_v, scale).view({batch, width});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hare, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor prefix_k, Tensor prefix_v, float scale) -> Tensor");
  m.impl("decode_attention", c10::DispatchKey::CPU, TORCH_FN(decode_attention));
  m.def("decode_attention_qkv(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, int position, Tensor prefix_k, "
        "Tensor prefix_v, int heads, float scale) -> Tensor");
  m.impl("decode_attention_qkv", c10::DispatchKey::CPU, TORCH_FN(decode_attention_qkv));
}
