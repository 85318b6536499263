// Attention ops: schemas, input checks, work splitting and the flash-attention
// driver (which calls oneDNN's AMX brgemm for bf16). The arithmetic that
// depends on the ISA is in cpu/kernels/attention.cpp.
//
//   ipex::reshape_and_cache        write token K/V rows into paged caches
//   ipex::paged_attention_decode   one query token per sequence vs its paged cache
//   ipex::iakv_attention           IndirectAccessKVCache attention (beam history walk)
//   ipex::varlen_attention         packed variable-length (flash) attention
#include "cpu/isa.h"
#include "cpu/kernels/attention_kernels.h"
#include "ops/op_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

TORCH_LIBRARY_FRAGMENT(ipex, m) {
  // key/value [num_tokens, num_kv_heads, head_size] -> caches [num_blocks, block_size, num_kv_heads,
  // head_size] at slot_mapping[i] (block = slot // block_size, row = slot % block_size); slot -1 (padding) skips.
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
        "Tensor slot_mapping) -> ()");
  // out[s] = softmax(scale * q[s] K^T + alibi) V over the first context_lens[s] tokens of sequence s,
  // read through block_tables; query head h reads kv head head_mapping[h]. sliding_window > 0 keeps
  // only the last sliding_window tokens.
  m.def("paged_attention_decode(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
        "Tensor head_mapping, float scale, Tensor block_tables, Tensor context_lens, int block_size, "
        "int max_context_len, Tensor? alibi_slopes=None, int sliding_window=-1) -> ()");
  // query [B, S, H, D] at positions offset..offset+S-1; caches [max_seq, B, Hkv, D] hold positions
  // 0..offset+S-1; a position t < offset of beam b lives in the beam slot found by walking
  // beam_idx[t] back from the current beam. attn_bias (fp32, broadcastable to [B, H, S, >=offset+S])
  // is added to the scaled scores.
  m.def("iakv_attention(Tensor query, Tensor key_cache, Tensor value_cache, Tensor beam_idx, int offset, "
        "float scale, Tensor? attn_bias=None, bool is_causal=True) -> Tensor");
  // The same with the offset in a one-element integer tensor (the cache's fill level), so
  // that a compiled decode step keeps one graph as the sequence grows (an int argument
  // would be a constant of the graph).
  m.def("iakv_attention.offset_tensor(Tensor query, Tensor key_cache, Tensor value_cache, Tensor beam_idx, "
        "Tensor offset, float scale, Tensor? attn_bias=None, bool is_causal=True) -> Tensor");
  // Packed sequences: query [Tq, H, D], key/value [Tk, Hkv, D], sequence i is rows
  // seqlen[i]..seqlen[i+1]-1. Causal masking is top-left aligned like
  // scaled_dot_product_attention(is_causal=True): query row r sees key rows 0..r of its sequence.
  m.def("varlen_attention(Tensor query, Tensor key, Tensor value, Tensor(a!) out, Tensor seqlen_q, "
        "Tensor seqlen_k, int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool is_causal) -> ()");
}

namespace ipex::core {
namespace {

namespace K = ::ipex::core::kernels;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ------------------------------------------------------------------ checks ---

void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is on ", t.device(),
              " but this kernel runs on CPU; move it with .cpu() (or use the backend of that device)");
}

void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                      const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
              " must equal ", ref_name, " dtype ", ref.scalar_type(), "; cast one of them");
}

void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* layout) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", layout, "; got shape ", t.sizes());
}

void check_index_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", name,
              " must be int32 or int64; got ", t.scalar_type());
}

// An int32 / int64 tensor (up to 2-D) read in place: index tensors are read
// every decode step of every layer, so no conversion copies.
struct Ints {
  const char* p;
  bool wide;
  int64_t s0, s1;
  explicit Ints(const at::Tensor& t)
      : p(static_cast<const char*>(t.data_ptr())),
        wide(t.scalar_type() == at::kLong),
        s0(t.dim() > 0 ? t.stride(0) : 0),
        s1(t.dim() > 1 ? t.stride(1) : 0) {}
  int64_t operator()(int64_t i, int64_t j = 0) const {
    const int64_t o = i * s0 + j * s1;
    return wide ? reinterpret_cast<const int64_t*>(p)[o] : reinterpret_cast<const int32_t*>(p)[o];
  }
};

std::vector<int64_t> to_i64(const at::Tensor& t) {
  Ints v(t);
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = v(i);
  return out;
}

// Unit stride on the last dimension, copying only when the layout lacks it.
at::Tensor inner_contiguous(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

// ------------------------------------------------------------- scheduling ---

// Tasks of very different cost (ragged sequences, causal triangles): each
// thread pulls the next task, so nobody idles while work is left. The caller
// orders tasks largest first.
// `release_tiles`: the tasks used AMX tiles directly, so each worker resets
// oneDNN's record of the loaded tile configuration afterwards (its brgemm
// would otherwise run on ours).
template <typename Fn>
void run_dynamic(int64_t n_tasks, const Fn& fn, bool release_tiles = false) {
  if (n_tasks <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), n_tasks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    bool any = false;
    for (int64_t i = next.fetch_add(1); i < n_tasks; i = next.fetch_add(1)) {
      fn(i);
      any = true;
    }
    if (any && release_tiles) at::native::cpublas::brgemm_release();
  });
}

// ------------------------------------------------------------ decode driver ---

struct DecodeRow {
  const void* q;
  int64_t q_head_stride;
  int64_t first;      // first visible token position
  int64_t last;       // one past the last visible token position
  float alibi_offset; // alibi term is slope * (t + alibi_offset)
  const float* bias;  // at token 0 of this row, or null
  int64_t bias_head_stride;
  int64_t bias_tok_stride;
  void* out;
  int64_t out_head_stride;
};

// `offsets(row, t_begin, n, k_off, v_off)` fills the element offsets of tokens
// t_begin..t_begin+n-1 of `row` from the cache bases. `rows_per_task`: up to this many
// consecutive rows share a task (the same token range of each, read in step by the kernel;
// see attn_decode_partial), for caches whose rows of one position lie side by side.
template <typename OffsetsFn>
void run_decode(const K::DecodeArgs& args, const std::vector<DecodeRow>& rows, const float* alibi_slopes,
                const OffsetsFn& offsets, int64_t rows_per_task = 1) {
  const int64_t H = args.num_heads, D = args.head_dim;
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  int64_t total = 0;
  for (const auto& r : rows) total += std::max<int64_t>(0, r.last - r.first);
  // Split long contexts (flash-decoding): enough partitions for every thread
  // to stay busy, each long enough that the final merge is noise.
  const int64_t threads = at::get_num_threads();
  const int64_t part_len = round_up(std::max<int64_t>(256, ceil_div(total, 8 * threads)), 16);

  // A part: one row's tokens [t_begin, t_begin + n), with its own slot of partial results.
  struct Part { int64_t row, t_begin, n, slot; };
  std::vector<Part> parts_of;
  std::vector<int64_t> row_first_slot(n_rows + 1, 0);
  int64_t slots = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    row_first_slot[r] = slots;
    for (int64_t t = rows[r].first; t < rows[r].last; t += part_len) {
      parts_of.push_back({r, t, std::min(part_len, rows[r].last - t), slots++});
    }
  }
  row_first_slot[n_rows] = slots;
  // A task: the parts at one t_begin of up to rows_per_task consecutive rows (of one row group).
  struct Task { int64_t first_part, count, work; };
  std::vector<Task> tasks;
  {
    // Rows share tasks only while there are at least two tasks per thread.
    const int64_t rpt = std::clamp<int64_t>(static_cast<int64_t>(parts_of.size()) / (2 * threads), 1,
                                            std::max<int64_t>(rows_per_task, 1));
    std::stable_sort(parts_of.begin(), parts_of.end(), [rpt](const Part& a, const Part& b) {
      return std::make_pair(a.row / rpt, a.t_begin) < std::make_pair(b.row / rpt, b.t_begin);
    });
    for (int64_t i = 0; i < static_cast<int64_t>(parts_of.size());) {
      int64_t j = i, work = 0;
      while (j < static_cast<int64_t>(parts_of.size()) && parts_of[j].row / rpt == parts_of[i].row / rpt &&
             parts_of[j].t_begin == parts_of[i].t_begin) {
        work += parts_of[j++].n;
      }
      tasks.push_back({i, j - i, work});
      i = j;
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.work > b.work; });

  const int64_t part_stride = H * (D + 2);
  std::unique_ptr<float[]> parts(new float[std::max<int64_t>(slots, 1) * part_stride]);
  // The task that completes a row's last partition merges the row: one
  // parallel region per call (each region can cost a scheduler slice on a
  // busy machine while a descheduled worker reaches the barrier).
  std::unique_ptr<std::atomic<int64_t>[]> pending(new std::atomic<int64_t>[std::max<int64_t>(n_rows, 1)]);
  for (int64_t r = 0; r < n_rows; ++r) pending[r].store(row_first_slot[r + 1] - row_first_slot[r]);
  auto partial = IPEX_PICK_ISA_KERNEL(attn_decode_partial);
  auto combine = IPEX_PICK_ISA_KERNEL(attn_decode_combine);
  auto merge_row = [&](int64_t r) {
    K::DecodeCombine c{};
    c.dtype = args.dtype;
    c.num_heads = H;
    c.head_dim = D;
    c.parts = parts.get() + row_first_slot[r] * part_stride;
    c.num_parts = row_first_slot[r + 1] - row_first_slot[r];
    c.part_stride = part_stride;
    c.out = rows[r].out;
    c.out_head_stride = rows[r].out_head_stride;
    combine(c);  // no parts (empty context): zeros
  };
  for (int64_t r = 0; r < n_rows; ++r) {
    if (row_first_slot[r + 1] == row_first_slot[r]) merge_row(r);
  }
  run_dynamic(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const Task& task = tasks[i];
    thread_local std::vector<int64_t> offs;
    thread_local std::vector<K::DecodeTask> dts;
    int64_t n_offs = 0;
    for (int64_t x = 0; x < task.count; ++x) n_offs += 2 * parts_of[task.first_part + x].n;
    offs.resize(n_offs);
    dts.assign(task.count, K::DecodeTask{});
    int64_t* o = offs.data();
    for (int64_t x = 0; x < task.count; ++x) {
      const Part& pt = parts_of[task.first_part + x];
      const DecodeRow& row = rows[pt.row];
      offsets(pt.row, pt.t_begin, pt.n, o, o + pt.n);
      float* part = parts.get() + pt.slot * part_stride;
      K::DecodeTask& dt = dts[x];
      dt.q = row.q;
      dt.q_head_stride = row.q_head_stride;
      dt.k_off = o;
      dt.v_off = o + pt.n;
      dt.n = pt.n;
      dt.alibi_slopes = alibi_slopes;
      dt.alibi_offset = static_cast<float>(pt.t_begin) + row.alibi_offset;
      dt.bias = row.bias ? row.bias + pt.t_begin * row.bias_tok_stride : nullptr;
      dt.bias_head_stride = row.bias_head_stride;
      dt.bias_tok_stride = row.bias_tok_stride;
      dt.m = part;
      dt.l = part + H;
      dt.acc = part + 2 * H;
      o += 2 * pt.n;
    }
    partial(args, dts.data(), task.count);
    for (int64_t x = 0; x < task.count; ++x) {
      const int64_t r = parts_of[task.first_part + x].row;
      if (pending[r].fetch_sub(1, std::memory_order_acq_rel) == 1) merge_row(r);
    }
  }, args.amx);
}

bool use_bf16_dot(c10::ScalarType dt) { return dt == at::kBFloat16 && active_isa() >= IsaLevel::kAvx512Bf16; }

// Query heads grouped by the kv head they read (CSR), for kernels that read
// each kv row once for all of its query heads.
struct HeadGroups {
  std::vector<int32_t> offsets, heads;
};

HeadGroups group_heads(const std::vector<int64_t>& head_to_kv, int64_t num_kv_heads) {
  HeadGroups g;
  g.offsets.assign(num_kv_heads + 1, 0);
  for (int64_t kv : head_to_kv) g.offsets[kv + 1]++;
  for (int64_t i = 0; i < num_kv_heads; ++i) g.offsets[i + 1] += g.offsets[i];
  g.heads.resize(head_to_kv.size());
  std::vector<int32_t> fill(g.offsets.begin(), g.offsets.end() - 1);
  for (size_t h = 0; h < head_to_kv.size(); ++h) g.heads[fill[head_to_kv[h]]++] = static_cast<int32_t>(h);
  return g;
}

std::vector<int64_t> contiguous_groups(int64_t num_heads, int64_t num_kv_heads) {
  std::vector<int64_t> m(num_heads);
  const int64_t group = num_heads / num_kv_heads;
  for (int64_t h = 0; h < num_heads; ++h) m[h] = h / group;
  return m;
}

// Shared by the paged and IAKV decodes: caches with kv heads on dim 2.
K::DecodeArgs decode_args(const at::Tensor& query, const at::Tensor& kc, const at::Tensor& vc, const HeadGroups& g,
                          double scale) {
  K::DecodeArgs args{};
  args.dtype = query.scalar_type();
  args.head_dim = query.size(-1);
  args.num_heads = query.size(-2);
  args.num_kv_heads = kc.size(2);
  args.group_offsets = g.offsets.data();
  args.group_heads = g.heads.data();
  args.k_base = kc.data_ptr();
  args.k_head_stride = kc.stride(2);
  args.v_base = vc.data_ptr();
  args.v_head_stride = vc.stride(2);
  args.scale = static_cast<float>(scale);
  args.bf16_dot = use_bf16_dot(args.dtype);
  // AMX tiles only where a kv head serves at least kAmxDecodeMinGroup query heads (the tiles' rows): with
  // fewer, most of each 16-row tile is empty and the AVX512-BF16 loop reads the cache faster. Intel Xeon with
  // AMX, bf16, cold caches, interleaved, AMX -> AVX512-BF16 loop: paged b8 h32 ctx2048 MHA 9.97 -> 5.48 ms
  // (AMX was 0.73x stock SDPA), group 4 3.80 -> 3.60 ms, IAKV 4 beams ctx1024 group 4 1.34 -> 1.06 ms; group 8
  // (2.21 against 2.63 ms) and group 16 (1.43 against 2.67 ms) are faster on AMX.
  constexpr int64_t kAmxDecodeMinGroup = 8;
  args.amx = args.bf16_dot && active_isa() >= IsaLevel::kAmx && args.head_dim % 32 == 0 &&
             args.num_heads >= kAmxDecodeMinGroup * args.num_kv_heads;
  return args;
}

// ------------------------------------------------------------- flash driver ---

struct FlashSeq {
  // element offsets of token 0 (head 0) of the sequence in q / k / v / out
  int64_t q_off, k_off, v_off, o_off;
  int64_t q_len, k_len;
};

struct FlashProblem {
  c10::ScalarType dtype;
  int64_t H, Hkv, D;
  const void* q; int64_t q_tok, q_head;
  const void* k; int64_t k_tok, k_head;
  const void* v; int64_t v_tok, v_head;
  void* out; int64_t o_tok, o_head;
  float scale;
  bool causal;        // top-left: query row r sees key rows 0..r
  const float* bias;  // [seq, head, q row, k col] with the strides below, or null
  int64_t bias_seq, bias_head, bias_row, bias_col;
  std::vector<FlashSeq> seqs;
};

// AMX tiles through oneDNN: bf16 with head_dim in 64-column chunks.
bool use_brgemm(const FlashProblem& p) {
  return p.dtype == at::kBFloat16 && p.D % 64 == 0 && active_isa() >= IsaLevel::kAmx &&
         at::native::cpublas::could_pack(at::kBFloat16);
}

constexpr int64_t kQBlock = 64;
constexpr int64_t kWidthStep = 128;  // kv_block is a multiple of it

// One (sequence, kv head, query rows) task: pack the K/V rows it needs once,
// then for every query head of the group run the blocked online softmax.
struct FlashWorker {
  const FlashProblem& p;
  bool amx;
  int64_t kv_block, dp, esz;
  decltype(IPEX_PICK_ISA_KERNEL(attn_pack)) pack = IPEX_PICK_ISA_KERNEL(attn_pack);
  decltype(IPEX_PICK_ISA_KERNEL(attn_gemm_f32)) gemm = IPEX_PICK_ISA_KERNEL(attn_gemm_f32);
  decltype(IPEX_PICK_ISA_KERNEL(attn_softmax_block)) softmax = IPEX_PICK_ISA_KERNEL(attn_softmax_block);
  decltype(IPEX_PICK_ISA_KERNEL(attn_finalize)) finalize = IPEX_PICK_ISA_KERNEL(attn_finalize);

  void run(int64_t seq, int64_t kvh, int64_t q_lo, int64_t q_hi) const {
    // Grow-only per-thread buffers (every layer of every forward calls this).
    thread_local ScratchBuffer kbuf, vbuf, fbuf;
    const FlashSeq& sq = p.seqs[seq];
    const int64_t D = p.D, G = p.H / p.Hkv, lds = kv_block;
    const int64_t kv_need = p.causal ? std::min(sq.k_len, q_hi) : sq.k_len;
    // brgemm widths come in steps of 128 keys, so a few JIT kernels serve every
    // causal block (oneDNN generates one per shape); padding keys are zeros.
    const int64_t kv_pad = round_up(std::max<int64_t>(kv_need, 1), kWidthStep);

    float* S = fbuf.get<float>(2 * kQBlock * lds + kQBlock * dp + 2 * kQBlock);
    void* P = S + kQBlock * lds;
    float* acc = S + 2 * kQBlock * lds;
    float* row_max = acc + kQBlock * dp;
    float* row_sum = row_max + kQBlock;
    // bf16 VNNI chunks take D * kv_pad halves; fp32 K^T / V take D * kv_pad / kv_pad * dp floats.
    float* kpack = kbuf.get<float>(amx ? D * kv_pad / 2 : D * kv_pad);
    float* vpack = vbuf.get<float>(amx ? D * kv_pad / 2 : kv_pad * dp);
    const char* ksrc = static_cast<const char*>(p.k) + (sq.k_off + kvh * p.k_head) * esz;
    const char* vsrc = static_cast<const char*>(p.v) + (sq.v_off + kvh * p.v_head) * esz;
    if (kv_need > 0) {
      pack({amx ? K::PackKind::kVnniKt : K::PackKind::kF32Kt, p.dtype, ksrc, p.k_tok, kv_need, D, kpack, kv_pad});
      pack({amx ? K::PackKind::kVnniV : K::PackKind::kF32V, p.dtype, vsrc, p.v_tok, kv_need, D, vpack, kv_pad});
    }
    const auto* kq = reinterpret_cast<const at::BFloat16*>(kpack);
    const auto* vq = reinterpret_cast<const at::BFloat16*>(vpack);

    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kvh * G + g;
      for (int64_t m0 = q_lo; m0 < q_hi; m0 += kQBlock) {
        const int64_t mb = std::min(kQBlock, q_hi - m0);
        const char* qrow = static_cast<const char*>(p.q) + (sq.q_off + m0 * p.q_tok + h * p.q_head) * esz;
        const int64_t kv_end = p.causal ? std::min(kv_need, m0 + mb) : kv_need;
        std::fill(row_max, row_max + mb, kNegInf);
        std::fill(row_sum, row_sum + mb, 0.f);
        bool first = true;
        for (int64_t n0 = 0; n0 < kv_end; n0 += kv_block) {
          const int64_t nb = std::min(kv_block, kv_end - n0);
          const int64_t n_pad = round_up(nb, amx ? kWidthStep : 16);
          if (amx) {
            at::native::cpublas::brgemm(mb, n_pad, D, p.q_tok, kv_pad, lds, false,
                                        reinterpret_cast<const at::BFloat16*>(qrow), kq + 2 * n0, S);
          } else {
            gemm({p.dtype, mb, nb, D, qrow, p.q_tok, kpack + n0, kv_pad, S, lds, false});
          }
          K::SoftmaxBlock sb{};
          sb.m_rows = mb;
          sb.n_cols = nb;
          sb.n_pad = n_pad;
          sb.s = S;
          sb.lds = lds;
          sb.scale = p.scale;
          sb.causal = p.causal && n0 + nb - 1 > m0;
          sb.row_limit0 = m0 - n0;
          if (p.bias != nullptr) {
            sb.bias = p.bias + seq * p.bias_seq + h * p.bias_head + m0 * p.bias_row + n0 * p.bias_col;
            sb.bias_row_stride = p.bias_row;
            sb.bias_col_stride = p.bias_col;
          }
          sb.row_max = row_max;
          sb.row_sum = row_sum;
          sb.acc = acc;
          sb.ld_acc = dp;
          sb.head_dim = D;
          sb.first_block = first;
          sb.p = P;
          sb.p_bf16 = amx;
          sb.ldp = lds;
          softmax(sb);
          if (amx) {
            at::native::cpublas::brgemm(mb, D, n_pad, lds, D, dp, !first, static_cast<const at::BFloat16*>(P),
                                        vq + n0 * D, acc);
          } else {
            gemm({at::kFloat, mb, D, nb, P, lds, vpack + n0 * dp, dp, acc, dp, !first});
          }
          first = false;
        }
        if (first) std::fill(row_sum, row_sum + mb, 0.f);  // no visible keys: zeros
        char* orow = static_cast<char*>(p.out) + (sq.o_off + m0 * p.o_tok + h * p.o_head) * esz;
        finalize({p.dtype, mb, D, acc, dp, row_sum, orow, p.o_tok});
      }
    }
  }
};

// The tensor part of a flash problem: q/out rows along dim `q_tok_dim`, k/v rows
// along `k_tok_dim`, heads on dim -2, head_dim last (unit stride).
FlashProblem flash_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                           int64_t q_tok_dim, int64_t k_tok_dim, double scale, bool causal) {
  FlashProblem p{};
  p.dtype = q.scalar_type();
  p.H = q.size(-2); p.Hkv = k.size(-2); p.D = q.size(-1);
  p.q = q.data_ptr(); p.q_tok = q.stride(q_tok_dim); p.q_head = q.stride(-2);
  p.k = k.data_ptr(); p.k_tok = k.stride(k_tok_dim); p.k_head = k.stride(-2);
  p.v = v.data_ptr(); p.v_tok = v.stride(k_tok_dim); p.v_head = v.stride(-2);
  p.out = out.data_ptr(); p.o_tok = out.stride(q_tok_dim); p.o_head = out.stride(-2);
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  return p;
}

void run_flash(const FlashProblem& p) {
  FlashWorker w{p, use_brgemm(p), 0, round_up(p.D, 16), static_cast<int64_t>(c10::elementSize(p.dtype))};
  // AMX: whole rows of scores up to 2048 keys (exact softmax, one QK and one
  // PV brgemm per query block); the fp32 micro-kernel prefers L1/L2-sized blocks.
  w.kv_block = w.amx ? 2048 : 256;

  // Tasks: (sequence, kv head, query rows). Split the query rows only when
  // there are too few (sequence, kv head) pairs to keep every thread busy.
  const int64_t threads = at::get_num_threads();
  const int64_t pairs = static_cast<int64_t>(p.seqs.size()) * p.Hkv;
  struct Task { int64_t seq, kvh, q_lo, q_hi; double cost; };
  std::vector<Task> tasks;
  for (int64_t s = 0; s < static_cast<int64_t>(p.seqs.size()); ++s) {
    const auto& sq = p.seqs[s];
    if (sq.q_len == 0) continue;
    int64_t splits = pairs >= 4 * threads ? 1 : ceil_div(4 * threads, std::max<int64_t>(pairs, 1));
    splits = std::max<int64_t>(1, std::min(splits, ceil_div(sq.q_len, kQBlock)));
    const int64_t rows_per = round_up(ceil_div(sq.q_len, splits), kQBlock);
    for (int64_t h = 0; h < p.Hkv; ++h) {
      for (int64_t lo = 0; lo < sq.q_len; lo += rows_per) {
        const int64_t hi = std::min(sq.q_len, lo + rows_per);
        const double kv = p.causal ? std::min<double>(sq.k_len, (lo + hi) / 2.0) : sq.k_len;
        tasks.push_back({s, h, lo, hi, (hi - lo) * (kv + 64)});
      }
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  if (n_tasks == 0) return;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, n_tasks), 1, [&](int64_t, int64_t) {
    bool any = false;
    for (int64_t i = next.fetch_add(1); i < n_tasks; i = next.fetch_add(1)) {
      w.run(tasks[i].seq, tasks[i].kvh, tasks[i].q_lo, tasks[i].q_hi);
      any = true;
    }
    if (any && w.amx) at::native::cpublas::brgemm_release();
  });
}

// ---------------------------------------------------------------- the ops ---

void reshape_and_cache_cpu(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  const char* op = "ipex::reshape_and_cache";
  check_dim(op, "key", key, 3, "[num_tokens, num_kv_heads, head_size]");
  check_dim(op, "key_cache", key_cache, 4, "[num_blocks, block_size, num_kv_heads, head_size]");
  check_dim(op, "slot_mapping", slot_mapping, 1, "[num_tokens]");
  for (const auto* t : {&key, &value, &key_cache, &value_cache, &slot_mapping}) check_cpu(op, "every input", *t);
  check_float_input(op, "key", key);
  check_same_dtype(op, "value", value, key, "key");
  check_same_dtype(op, "key_cache", key_cache, key, "key");
  check_same_dtype(op, "value_cache", value_cache, key, "key");
  check_index_dtype(op, "slot_mapping", slot_mapping);
  check_writable(op, "key_cache", key_cache);
  check_writable(op, "value_cache", value_cache);
  TORCH_CHECK(value.sizes() == key.sizes(), op, ": value shape ", value.sizes(), " must equal key shape ",
              key.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, ": value_cache shape ", value_cache.sizes(),
              " must equal key_cache shape ", key_cache.sizes());
  TORCH_CHECK(key.size(1) == key_cache.size(2) && key.size(2) == key_cache.size(3), op,
              ": key rows [num_kv_heads, head_size] = ", key.sizes().slice(1), " do not match the cache's ",
              key_cache.sizes().slice(2), " (caches are [num_blocks, block_size, num_kv_heads, head_size])");
  TORCH_CHECK(slot_mapping.size(0) == key.size(0), op, ": slot_mapping has ", slot_mapping.size(0),
              " entries but key has ", key.size(0), " tokens; give one slot per token");
  TORCH_CHECK(key_cache.stride(3) == 1 && value_cache.stride(3) == 1, op,
              ": the caches need unit stride along head_size (they are written in place, so no copy "
              "can be made); allocate them contiguous");
  TORCH_CHECK(key_cache.size(1) > 0, op, ": key_cache.size(1) (block_size) is 0; a cache block needs at least one "
              "token row ([num_blocks, block_size, num_kv_heads, head_size])");
  const int64_t capacity = key_cache.size(0) * key_cache.size(1);
  auto slots = to_i64(slot_mapping);
  for (size_t i = 0; i < slots.size(); ++i) {
    TORCH_CHECK(slots[i] < capacity, op, ": slot_mapping[", i, "] = ", slots[i], " is past the cache's ",
                capacity, " slots (num_blocks * block_size); slots must be < ", capacity,
                " (-1 marks a padding token, which is skipped)");
    TORCH_CHECK(slots[i] >= -1, op, ": slot_mapping[", i, "] = ", slots[i], " is negative; slots are in [0, ",
                capacity, "), or -1 for a padding token (skipped)");
  }
  auto k = inner_contiguous(key);
  auto v = inner_contiguous(value);
  const int64_t H = key.size(1), D = key.size(2), bs = key_cache.size(1);
  const int64_t esz = key.element_size();
  const char* kp = static_cast<const char*>(k.data_ptr());
  const char* vp = static_cast<const char*>(v.data_ptr());
  char* kc = static_cast<char*>(key_cache.data_ptr());
  char* vc = static_cast<char*>(value_cache.data_ptr());
  auto k_src = [&](int64_t i, int64_t h) { return kp + (i * k.stride(0) + h * k.stride(1)) * esz; };
  auto v_src = [&](int64_t i, int64_t h) { return vp + (i * v.stride(0) + h * v.stride(1)) * esz; };
  auto k_dst = [&](int64_t blk, int64_t row, int64_t h) {
    return kc + (blk * key_cache.stride(0) + row * key_cache.stride(1) + h * key_cache.stride(2)) * esz;
  };
  auto v_dst = [&](int64_t blk, int64_t row, int64_t h) {
    return vc + (blk * value_cache.stride(0) + row * value_cache.stride(1) + h * value_cache.stride(2)) * esz;
  };
  // The rows of the token kPrefetchTokens ahead are asked for while this one is copied (its source lines,
  // and its cache lines for writing): the hardware prefetchers lose the scattered slots' stream. Intel
  // Xeon, 2048 tokens h8 d128 bf16, cold: 0.97-1.00 ms (63-65% of copy bandwidth) without, 0.93 with 2
  // tokens ahead, 0.88-0.89 (71-72%) with 6, the same with 12.
  constexpr int64_t kPrefetchTokens = 6;
  const int64_t row_bytes = D * esz;
  auto prefetch_token = [&](int64_t i) {
    const int64_t slot = slots[i];
    if (slot < 0) return;
    const int64_t blk = slot / bs, row = slot % bs;
    for (int64_t h = 0; h < H; ++h) {
      const char* ks = k_src(i, h);
      const char* vs = v_src(i, h);
      char* kd = k_dst(blk, row, h);
      char* vd = v_dst(blk, row, h);
      for (int64_t off = 0; off < row_bytes; off += 64) {
        __builtin_prefetch(ks + off, 0, 3);
        __builtin_prefetch(vs + off, 0, 3);
        __builtin_prefetch(kd + off, 1, 3);
        __builtin_prefetch(vd + off, 1, 3);
      }
    }
  };
  at::parallel_for(0, static_cast<int64_t>(slots.size()), 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (i + kPrefetchTokens < e) prefetch_token(i + kPrefetchTokens);
      const int64_t slot = slots[i];
      if (slot < 0) continue;
      const int64_t blk = slot / bs, row = slot % bs;
      for (int64_t h = 0; h < H; ++h) {
        std::memcpy(k_dst(blk, row, h), k_src(i, h), row_bytes);
        std::memcpy(v_dst(blk, row, h), v_src(i, h), row_bytes);
      }
    }
  });
}

// `out` with unit inner stride to write into, and whether it must be copied back.
std::pair<at::Tensor, bool> writable(const at::Tensor& out) {
  if (out.size(-1) <= 1 || out.stride(-1) == 1) return {out, false};
  return {empty_output(out.sizes(), out.options()), true};
}

void paged_attention_decode_cpu(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                                const at::Tensor& value_cache, const at::Tensor& head_mapping, double scale,
                                const at::Tensor& block_tables, const at::Tensor& context_lens,
                                int64_t block_size, int64_t max_context_len,
                                const std::optional<at::Tensor>& alibi_slopes, int64_t sliding_window) {
  const char* op = "ipex::paged_attention_decode";
  check_dim(op, "query", query, 3, "[num_seqs, num_heads, head_size]");
  check_dim(op, "out", out, 3, "[num_seqs, num_heads, head_size]");
  check_dim(op, "key_cache", key_cache, 4, "[num_blocks, block_size, num_kv_heads, head_size]");
  check_dim(op, "value_cache", value_cache, 4, "[num_blocks, block_size, num_kv_heads, head_size]");
  check_dim(op, "head_mapping", head_mapping, 1, "[num_heads]");
  check_dim(op, "block_tables", block_tables, 2, "[num_seqs, max_num_blocks_per_seq]");
  check_dim(op, "context_lens", context_lens, 1, "[num_seqs]");
  for (const auto* t : {&out, &query, &key_cache, &value_cache, &head_mapping, &block_tables, &context_lens}) {
    check_cpu(op, "every input", *t);
  }
  check_float_input(op, "query", query);
  check_same_dtype(op, "out", out, query, "query");
  check_writable(op, "out", out);
  check_same_dtype(op, "key_cache", key_cache, query, "query");
  check_same_dtype(op, "value_cache", value_cache, query, "query");
  check_index_dtype(op, "head_mapping", head_mapping);
  check_index_dtype(op, "block_tables", block_tables);
  check_index_dtype(op, "context_lens", context_lens);
  const int64_t S = query.size(0), H = query.size(1), D = query.size(2);
  const int64_t num_blocks = key_cache.size(0), Hkv = key_cache.size(2);
  TORCH_CHECK(out.sizes() == query.sizes(), op, ": out shape ", out.sizes(), " must equal query shape ",
              query.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, ": value_cache shape ", value_cache.sizes(),
              " must equal key_cache shape ", key_cache.sizes());
  TORCH_CHECK(key_cache.size(3) == D, op, ": key_cache head_size ", key_cache.size(3),
              " must equal query head_size ", D, " (caches are [num_blocks, block_size, num_kv_heads, head_size])");
  TORCH_CHECK(block_size > 0, op, ": block_size must be positive; got ", block_size);
  TORCH_CHECK(key_cache.size(1) == block_size, op, ": block_size=", block_size, " but key_cache.size(1) is ",
              key_cache.size(1), "; caches are [num_blocks, block_size, num_kv_heads, head_size]");
  TORCH_CHECK(head_mapping.size(0) == H, op, ": head_mapping has ", head_mapping.size(0),
              " entries; it needs one kv head index per query head (", H, ")");
  TORCH_CHECK(block_tables.size(0) == S && context_lens.size(0) == S, op, ": block_tables rows (",
              block_tables.size(0), ") and context_lens entries (", context_lens.size(0),
              ") must both equal the number of sequences (", S, ")");
  auto head_map = to_i64(head_mapping);
  for (int64_t h = 0; h < H; ++h) {
    TORCH_CHECK(head_map[h] >= 0 && head_map[h] < Hkv, op, ": head_mapping[", h, "] = ", head_map[h],
                " is not a kv head of the cache (0..", Hkv - 1, ")");
  }
  auto ctx = to_i64(context_lens);
  const Ints bt(block_tables);
  const int64_t max_blocks = block_tables.size(1);
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(ctx[s] >= 0, op, ": context_lens[", s, "] = ", ctx[s], " is negative; each must be >= 0");
    TORCH_CHECK(ctx[s] <= max_blocks * block_size, op, ": context_lens[", s, "] = ", ctx[s],
                " exceeds what block_tables can address (", max_blocks, " blocks x ", block_size,
                " tokens = ", max_blocks * block_size, ")");
    TORCH_CHECK(ctx[s] <= max_context_len, op, ": context_lens[", s, "] = ", ctx[s], " exceeds max_context_len=",
                max_context_len, "; pass max_context_len = context_lens.max()");
    for (int64_t b = 0; b < ceil_div(ctx[s], block_size); ++b) {
      const int64_t blk = bt(s, b);
      TORCH_CHECK(blk >= 0 && blk < num_blocks, op, ": block_tables[", s, ", ", b, "] = ", blk,
                  " is not a block of the cache (0..", num_blocks - 1, ")");
    }
  }
  std::vector<float> slopes;
  if (alibi_slopes.has_value()) {
    const auto& a = *alibi_slopes;
    check_cpu(op, "alibi_slopes", a);
    TORCH_CHECK(a.numel() == H && a.is_floating_point(), op, ": alibi_slopes must hold one float per query head (",
                H, "); got ", a.scalar_type(), " of shape ", a.sizes());
    auto af = a.to(at::kFloat).contiguous();
    slopes.assign(af.data_ptr<float>(), af.data_ptr<float>() + H);
  }
  if (S == 0 || H == 0) return;
  auto q = inner_contiguous(query);
  auto kc = inner_contiguous(key_cache);
  auto vc = inner_contiguous(value_cache);
  auto [o, copy_back] = writable(out);
  auto groups = group_heads(head_map, Hkv);

  const K::DecodeArgs args = decode_args(q, kc, vc, groups, scale);

  const int64_t esz = query.element_size();
  std::vector<DecodeRow> rows(S);
  for (int64_t s = 0; s < S; ++s) {
    DecodeRow& r = rows[s];
    r.q = static_cast<const char*>(q.data_ptr()) + s * q.stride(0) * esz;
    r.q_head_stride = q.stride(1);
    r.last = ctx[s];
    r.first = sliding_window > 0 ? std::max<int64_t>(0, ctx[s] - sliding_window) : 0;
    r.alibi_offset = -static_cast<float>(ctx[s] - 1);  // vLLM: slope * (t - context_len + 1)
    r.bias = nullptr;
    r.out = static_cast<char*>(o.data_ptr()) + s * o.stride(0) * esz;
    r.out_head_stride = o.stride(1);
  }
  const int64_t ks0 = kc.stride(0), ks1 = kc.stride(1), vs0 = vc.stride(0), vs1 = vc.stride(1);
  run_decode(args, rows, slopes.empty() ? nullptr : slopes.data(),
             [&](int64_t s, int64_t t0, int64_t n, int64_t* k_off, int64_t* v_off) {
               for (int64_t i = 0; i < n; ++i) {
                 const int64_t t = t0 + i, blk = bt(s, t / block_size), row = t % block_size;
                 k_off[i] = blk * ks0 + row * ks1;
                 v_off[i] = blk * vs0 + row * vs1;
               }
             });
  if (copy_back) const_cast<at::Tensor&>(out).copy_(o);
}

// fp32 bias broadcastable to [B, H, S, >=L]: element strides, 0 on broadcast dims.
std::array<int64_t, 4> bias_strides(const char* op, const at::Tensor& bias, int64_t B, int64_t H, int64_t S,
                                    int64_t L) {
  check_dim(op, "attn_bias", bias, 4, "[batch or 1, heads or 1, query_len or 1, key_len]");
  TORCH_CHECK(bias.scalar_type() == at::kFloat, op, ": attn_bias must be float32; got ", bias.scalar_type(),
              " (convert masks with mask.float() or build an additive bias)");
  const int64_t want[3] = {B, H, S};
  std::array<int64_t, 4> st{};
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(bias.size(d) == want[d] || bias.size(d) == 1, op, ": attn_bias shape ", bias.sizes(),
                " does not broadcast to [", B, ", ", H, ", ", S, ", ", L, "] (dim ", d, " must be 1 or ", want[d],
                ")");
    st[d] = bias.size(d) == 1 ? 0 : bias.stride(d);
  }
  TORCH_CHECK(bias.size(3) >= L, op, ": attn_bias covers ", bias.size(3), " key positions but there are ", L,
              "; pass a mask over every cached position");
  st[3] = bias.stride(3);
  return st;
}

// Query rows an IAKV decode task reads in step (see run_decode), on the AVX512-BF16 loop (the other
// decode kernels take rows one after another, so for them a task is one row): with one new token per
// beam these are beams, whose cache rows of one position are adjacent (8 of them: 8 * kv_heads *
// head_dim contiguous elements); with several new tokens, consecutive rows are one beam's query
// positions, which read the same cache rows.
constexpr int64_t kIakvRowsPerTask = 8;

at::Tensor iakv_attention_cpu(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                              const at::Tensor& beam_idx, int64_t offset, double scale,
                              const std::optional<at::Tensor>& attn_bias, bool is_causal) {
  const char* op = "ipex::iakv_attention";
  check_dim(op, "query", query, 4, "[beam*batch, seq_len, num_heads, head_dim]");
  check_dim(op, "key_cache", key_cache, 4, "[max_seq, beam*batch, num_kv_heads, head_dim]");
  check_dim(op, "value_cache", value_cache, 4, "[max_seq, beam*batch, num_kv_heads, head_dim]");
  check_dim(op, "beam_idx", beam_idx, 2, "[max_seq, beam*batch]");
  for (const auto* t : {&query, &key_cache, &value_cache, &beam_idx}) check_cpu(op, "every input", *t);
  check_float_input(op, "query", query);
  check_same_dtype(op, "key_cache", key_cache, query, "query");
  check_same_dtype(op, "value_cache", value_cache, query, "query");
  check_index_dtype(op, "beam_idx", beam_idx);
  const int64_t B = query.size(0), S = query.size(1), H = query.size(2), D = query.size(3);
  const int64_t Hkv = key_cache.size(2), L = offset + S;
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, ": value_cache shape ", value_cache.sizes(),
              " must equal key_cache shape ", key_cache.sizes());
  TORCH_CHECK(key_cache.size(1) == B && key_cache.size(3) == D, op, ": key_cache ", key_cache.sizes(),
              " does not match query ", query.sizes(), " (need [max_seq, ", B, ", num_kv_heads, ", D, "])");
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, op, ": num_heads (", H, ") must be a multiple of num_kv_heads (", Hkv, ")");
  TORCH_CHECK(offset >= 0, op, ": offset (the number of tokens already in the cache) must be >= 0; got ", offset);
  TORCH_CHECK(L <= key_cache.size(0), op, ": offset ", offset, " + seq_len ", S,
              " exceeds the cache's ", key_cache.size(0), " positions; grow the cache first");
  TORCH_CHECK(beam_idx.size(1) == B && beam_idx.size(0) >= offset, op, ": beam_idx must be [>= ", offset, ", ", B,
              "]; got ", beam_idx.sizes());
  auto out = empty_output({B, S, H, D}, query.options());
  if (B == 0 || S == 0 || H == 0) return out;

  std::array<int64_t, 4> bst{};
  at::Tensor bias;
  if (attn_bias.has_value()) {
    check_cpu(op, "attn_bias", *attn_bias);
    bst = bias_strides(op, *attn_bias, B, H, S, L);
    bias = *attn_bias;
  }
  auto q = inner_contiguous(query);
  auto kc = inner_contiguous(key_cache);
  auto vc = inner_contiguous(value_cache);
  const int64_t esz = query.element_size();
  const float* bias_p = bias.defined() ? bias.data_ptr<float>() : nullptr;

  if (offset == 0 && S > 1) {
    // Prompt: every position is in the beam's own slot, so this is plain
    // (flash) attention over the cache rows just written.
    FlashProblem p = flash_problem(q, kc, vc, out, 1, 0, scale, is_causal);
    p.bias = bias_p;
    p.bias_seq = bst[0]; p.bias_head = bst[1]; p.bias_row = bst[2]; p.bias_col = bst[3];
    for (int64_t b = 0; b < B; ++b) {
      p.seqs.push_back({b * q.stride(0), b * kc.stride(1), b * vc.stride(1), b * out.stride(0), S, S});
    }
    run_flash(p);
    return out;
  }

  // Which beam slot holds position t < offset for each current beam: walk
  // the history back from the newest step (slot_{t} = beam_idx[t][slot_{t+1}]).
  // Read through its strides: a history without beams (an expanded arange, as ipex's
  // attention passes for greedy decode) is not copied.
  auto hist = beam_idx.narrow(0, 0, offset).to(at::kLong);
  const int64_t* hp = hist.data_ptr<int64_t>();
  const int64_t hs0 = hist.stride(0), hs1 = hist.stride(1);
  std::vector<int64_t> slot(static_cast<size_t>(B * offset));
  for (int64_t b = 0; b < B; ++b) {
    int64_t cur = b;
    for (int64_t t = offset - 1; t >= 0; --t) {
      const int64_t nxt = hp[t * hs0 + cur * hs1];
      TORCH_CHECK(nxt >= 0 && nxt < B, op, ": beam_idx[", t, ", ", cur, "] = ", nxt,
                  " is not a beam index (0..", B - 1, "); reorder with beam indices of this batch");
      cur = nxt;
      slot[b * offset + t] = cur;
    }
  }

  const auto groups = group_heads(contiguous_groups(H, Hkv), Hkv);
  const K::DecodeArgs args = decode_args(q, kc, vc, groups, scale);
  std::vector<DecodeRow> rows(B * S);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      DecodeRow& r = rows[b * S + s];
      r.q = static_cast<const char*>(q.data_ptr()) + (b * q.stride(0) + s * q.stride(1)) * esz;
      r.q_head_stride = q.stride(2);
      r.first = 0;
      r.last = is_causal ? offset + s + 1 : L;
      r.alibi_offset = 0.f;
      r.bias = bias_p ? bias_p + b * bst[0] + s * bst[2] : nullptr;
      r.bias_head_stride = bst[1];
      r.bias_tok_stride = bst[3];
      r.out = static_cast<char*>(out.data_ptr()) + (b * out.stride(0) + s * out.stride(1)) * esz;
      r.out_head_stride = out.stride(2);
    }
  }
  const int64_t ks0 = kc.stride(0), ks1 = kc.stride(1), vs0 = vc.stride(0), vs1 = vc.stride(1);
  run_decode(args, rows, nullptr, [&](int64_t row, int64_t t0, int64_t n, int64_t* k_off, int64_t* v_off) {
    const int64_t b = row / S;
    const int64_t* sl = slot.data() + b * offset;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = t0 + i, beam = t < offset ? sl[t] : b;
      k_off[i] = t * ks0 + beam * ks1;
      v_off[i] = t * vs0 + beam * vs1;
    }
  }, args.bf16_dot && !args.amx ? kIakvRowsPerTask : 1);
  return out;
}

at::Tensor iakv_attention_offset_tensor_cpu(const at::Tensor& query, const at::Tensor& key_cache,
                                            const at::Tensor& value_cache, const at::Tensor& beam_idx,
                                            const at::Tensor& offset, double scale,
                                            const std::optional<at::Tensor>& attn_bias, bool is_causal) {
  const char* op = "ipex::iakv_attention.offset_tensor";
  check_cpu(op, "offset", offset);
  TORCH_CHECK(offset.numel() == 1 && !offset.is_floating_point() && !offset.is_complex(), op,
              ": offset must be a one-element integer tensor (the number of cached positions before the query); got ",
              offset.scalar_type(), " of shape ", offset.sizes());
  return iakv_attention_cpu(query, key_cache, value_cache, beam_idx, offset.item<int64_t>(), scale, attn_bias,
                            is_causal);
}

void varlen_attention_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& out, const at::Tensor& seqlen_q, const at::Tensor& seqlen_k,
                          int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, bool is_causal) {
  const char* op = "ipex::varlen_attention";
  check_dim(op, "query", query, 3, "[total_q_tokens, num_heads, head_size]");
  check_dim(op, "key", key, 3, "[total_k_tokens, num_kv_heads, head_size]");
  check_dim(op, "value", value, 3, "[total_k_tokens, num_kv_heads, head_size]");
  check_dim(op, "out", out, 3, "[total_q_tokens, num_heads, head_size]");
  check_dim(op, "seqlen_q", seqlen_q, 1, "[batch + 1] (cumulative sequence starts)");
  check_dim(op, "seqlen_k", seqlen_k, 1, "[batch + 1] (cumulative sequence starts)");
  for (const auto* t : {&query, &key, &value, &out, &seqlen_q, &seqlen_k}) check_cpu(op, "every input", *t);
  check_float_input(op, "query", query);
  check_writable(op, "out", out);
  check_same_dtype(op, "key", key, query, "query");
  check_same_dtype(op, "value", value, query, "query");
  check_same_dtype(op, "out", out, query, "query");
  check_index_dtype(op, "seqlen_q", seqlen_q);
  check_index_dtype(op, "seqlen_k", seqlen_k);
  const int64_t H = query.size(1), D = query.size(2), Hkv = key.size(1);
  TORCH_CHECK(out.sizes() == query.sizes(), op, ": out shape ", out.sizes(), " must equal query shape ",
              query.sizes());
  TORCH_CHECK(value.sizes() == key.sizes(), op, ": value shape ", value.sizes(), " must equal key shape ",
              key.sizes());
  TORCH_CHECK(key.size(2) == D, op, ": key head_size ", key.size(2), " must equal query head_size ", D);
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, op, ": num_heads (", H, ") must be a multiple of num_kv_heads (", Hkv, ")");
  TORCH_CHECK(seqlen_q.size(0) == seqlen_k.size(0) && seqlen_q.size(0) >= 1, op,
              ": seqlen_q and seqlen_k must both be [batch + 1]; got ", seqlen_q.sizes(), " and ", seqlen_k.sizes());
  auto cq = to_i64(seqlen_q);
  auto ck = to_i64(seqlen_k);
  const int64_t batch = static_cast<int64_t>(cq.size()) - 1;
  for (int64_t i = 0; i < batch; ++i) {
    TORCH_CHECK(cq[i] >= 0 && cq[i] <= cq[i + 1] && ck[i] >= 0 && ck[i] <= ck[i + 1], op,
                ": seqlen_q / seqlen_k must be non-decreasing cumulative starts from >= 0; got ", cq, " and ", ck);
    TORCH_CHECK(cq[i + 1] - cq[i] <= max_seqlen_q && ck[i + 1] - ck[i] <= max_seqlen_k, op, ": sequence ", i,
                " has ", cq[i + 1] - cq[i], " query / ", ck[i + 1] - ck[i], " key tokens, more than max_seqlen_q=",
                max_seqlen_q, " / max_seqlen_k=", max_seqlen_k);
  }
  TORCH_CHECK(cq[batch] <= query.size(0) && ck[batch] <= key.size(0), op, ": seqlen_q / seqlen_k end at ",
              cq[batch], " / ", ck[batch], " but query / key hold ", query.size(0), " / ", key.size(0), " tokens");
  if (batch == 0 || H == 0) return;
  auto q = inner_contiguous(query);
  auto k = inner_contiguous(key);
  auto v = inner_contiguous(value);
  auto [o, copy_back] = writable(out);
  FlashProblem p = flash_problem(q, k, v, o, 0, 0, softmax_scale, is_causal);
  for (int64_t i = 0; i < batch; ++i) {
    p.seqs.push_back({cq[i] * q.stride(0), ck[i] * k.stride(0), ck[i] * v.stride(0), cq[i] * o.stride(0),
                      cq[i + 1] - cq[i], ck[i + 1] - ck[i]});
  }
  run_flash(p);
  if (copy_back) const_cast<at::Tensor&>(out).copy_(o);
}

}  // namespace

TORCH_LIBRARY_IMPL(ipex, CPU, m) {
  m.impl("reshape_and_cache", &reshape_and_cache_cpu);
  m.impl("paged_attention_decode", &paged_attention_decode_cpu);
  m.impl("iakv_attention", &iakv_attention_cpu);
  m.impl("iakv_attention.offset_tensor", &iakv_attention_offset_tensor_cpu);
  m.impl("varlen_attention", &varlen_attention_cpu);
}

}  // namespace ipex::core
