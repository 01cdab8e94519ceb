// Runs the CUDA kernels of csrc/cuda on the host (fiber emulator, include/) and compares them
// with the CPU backend (csrc/cpu) on random cases: dtypes (also mixed), vocab sizes 1..151936,
// unaligned rows and strides, NaN / -inf / +-0 / tied logits, every noise source, filters,
// mixture weights 0 / 1 / other, greedy targets, valid_lengths, out-of-range drafts, and SM
// counts that change the split plan. Tokens, targets and num_accepted must match exactly,
// log-probs to 2e-4 relative; L2 sizes that make the filter's blocks loop over several rows.
// The vocabulary-parallel partial ops too (run_partial): vocab offsets (also beyond 2^32 tokens),
// given thresholds, global draft ids inside and outside the slice; stats to 2e-4 relative.
// Per-row knobs (run_rows_case: temperature_rows, top_k_rows, top_p_rows, mixture_weight_rows):
// random mixes per row against the CPU backend (full and partial ops), and row b of the mixed
// batch against the scalar CUDA call with row b's knobs, both on the whole batch (bit for bit)
// and on row b alone (tokens exactly; values bit for bit when both calls run one split).
// Usage: test_vs_cpu [cases [seed [big]]]. Build: run.sh.
#include <immintrin.h>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>
#include "cuda_runtime.h"
#include "apd/apd.h"
#include "apd/knobs.h"
#include "kernels.cuh"

static std::mt19937_64 rng(12345);
static int failures = 0, checks = 0;
static double urand() { return std::uniform_real_distribution<double>(0, 1)(rng); }
static int64_t irand(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

static size_t esize(apd_dtype t) { return t == APD_FLOAT32 ? 4 : t == APD_FLOAT64 ? 8 : 2; }
static uint16_t to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}
static uint16_t to_f16(float f) { return _cvtss_sh(f, 0); }

struct Buf {
  std::vector<unsigned char> raw;
  unsigned char* p;
  explicit Buf(size_t bytes, size_t misalign = 0) : raw(bytes + 256 + misalign) {
    uintptr_t a = (reinterpret_cast<uintptr_t>(raw.data()) + 255) / 256 * 256;
    p = reinterpret_cast<unsigned char*>(a) + misalign;
  }
};

// logits [B, K, >= V] with row stride sk = V + pad, batch stride sb.
struct Logits {
  Buf buf;
  apd_logits l;
  Logits(apd_dtype dt, int64_t B, int64_t K, int64_t V, int64_t pad, int64_t misalign, const std::string& kind)
      : buf((size_t)(B * (K * (V + pad) + 3) + 8) * esize(dt), (size_t)misalign * esize(dt)) {
    const int64_t sk = V + pad, sb = K * sk + 3;
    l.data = buf.p; l.dtype = dt; l.stride_b = sb; l.stride_k = sk;
    const int64_t n = B * sb + 8;
    for (int64_t e = 0; e < n; ++e) {
      double x = std::normal_distribution<double>(0, kind == "flat" ? 0.5 : 3.0)(rng);
      if (kind == "peaky" && urand() < 0.002) x += 15;
      if (kind == "ties") x = std::round(x * 2) / 2;
      const double r = urand();
      float f = (float)x;
      if (kind != "clean") {
        if (r < 0.01) f = NAN;
        else if (r < 0.02) f = -INFINITY;
        else if (r < 0.025) f = -0.0f;
        else if (r < 0.03) f = 0.0f;
      }
      if (kind == "allneg" ) f = (r < 0.5) ? -INFINITY : NAN;
      if (dt == APD_FLOAT32) memcpy(buf.p + e * 4, &f, 4);
      else { uint16_t h = dt == APD_BFLOAT16 ? to_bf16(f) : to_f16(f); memcpy(buf.p + e * 2, &h, 2); }
    }
  }
};

static bool close(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= 2e-4 * std::max(1.0f, std::fabs(b));
}

static void fail(const std::string& what) {
  ++failures;
  if (failures < 40) printf("FAIL %s\n", what.c_str());
}

static bool same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

// Per-row knobs of a case (apd.h: *_rows); an empty vector leaves the scalar beside it in charge.
struct RowKnobs {
  std::vector<double> T, p, w;
  std::vector<int64_t> k;
};

static apd_filter make_filter(double T, int64_t topk, double topp, const RowKnobs* rk) {
  apd_filter f{};
  f.temperature = T; f.top_k = topk; f.top_p = topp;
  if (rk != nullptr) {
    if (!rk->T.empty()) f.temperature_rows = rk->T.data();
    if (!rk->k.empty()) f.top_k_rows = rk->k.data();
    if (!rk->p.empty()) f.top_p_rows = rk->p.data();
  }
  return f;
}
static const double* w_rows_of(const RowKnobs* rk) { return rk != nullptr && !rk->w.empty() ? rk->w.data() : nullptr; }

// Batch row b of a tensor / noise as a batch of one (the caller's view of a call on row b alone).
static apd_logits row_view(const apd_logits& l, int64_t b) {
  apd_logits r = l;
  r.data = static_cast<const unsigned char*>(l.data) + b * l.stride_b * (int64_t)esize(l.dtype);
  return r;
}
static apd_noise noise_view(const apd_noise& n, int64_t b) {
  apd_noise r = n;
  if (n.uniform != nullptr) {
    r.uniform = static_cast<const unsigned char*>(n.uniform) + b * n.uniform_stride_b * (int64_t)esize(n.uniform_dtype);
  } else if (n.seeds != nullptr) {
    if (n.seed_per_row) r.seeds = n.seeds + b;
    else { r.seeds = nullptr; r.seed_value = (int64_t)((uint64_t)n.seeds[0] + (uint64_t)b); }
  } else {
    r.seed_value = (int64_t)((uint64_t)n.seed_value + (uint64_t)b);
  }
  if (n.uniform == nullptr && n.offset_per_row) r.offset = n.offset + b, r.offset_per_row = 0;
  return r;
}

struct Noise {
  std::vector<int64_t> seeds, offs;
  int64_t off = 0;
  Buf* ubuf = nullptr;
  apd_noise n{};
};

static void make_noise(Noise& nz, int64_t B, int64_t K, int64_t V, int mode) {
  nz.n = apd_noise{};
  nz.seeds.resize(B);
  for (auto& s : nz.seeds) s = (int64_t)rng();
  nz.off = (int64_t)rng();
  switch (mode) {
    case 0: nz.n.seed_value = (int64_t)rng(); nz.n.offset_value = (int64_t)rng(); break;
    case 1:  // per-row seeds; one offset, or per-row offsets (a continuous-batching engine's rows) half the time
      nz.n.seeds = nz.seeds.data(); nz.n.seed_per_row = 1; nz.n.offset = &nz.off;
      if (B > 1 && rng() % 2) {
        nz.offs.resize(B);
        for (auto& o : nz.offs) o = (int64_t)(rng() % 1000);
        nz.n.offset = nz.offs.data(); nz.n.offset_per_row = 1;
      }
      break;
    case 2: nz.n.seeds = nz.seeds.data(); nz.n.seed_per_row = 0; nz.n.offset_value = 7; break;
    case 3: case 4: {
      const bool f64 = mode == 4;
      const int64_t sk = V + 5, sb = K * sk + 1;
      nz.ubuf = new Buf((size_t)(B * sb + 8) * (f64 ? 8 : 4));
      for (int64_t e = 0; e < B * sb + 8; ++e) {
        double u = std::min(std::max(urand(), 1e-7), 1 - 1e-7);
        if (f64) memcpy(nz.ubuf->p + e * 8, &u, 8); else { float f = (float)u; memcpy(nz.ubuf->p + e * 4, &f, 4); }
      }
      nz.n.uniform = nz.ubuf->p; nz.n.uniform_dtype = f64 ? APD_FLOAT64 : APD_FLOAT32;
      nz.n.uniform_stride_b = sb; nz.n.uniform_stride_k = sk;
      break;
    }
  }
}

static const char* dn(apd_dtype t) { return t == APD_FLOAT32 ? "f32" : t == APD_FLOAT16 ? "f16" : "bf16"; }

static bool stats_close(const float* c, const float* g, int n) {
  for (int f = 0; f < n; ++f)
    if (!close(c[f], g[f])) return false;
  return true;
}

static std::string stats_str(const float* c, const float* g, int n) {
  std::string out = "cpu=(";
  for (int f = 0; f < n; ++f) out += std::to_string(c[f]) + (f + 1 < n ? " " : ") gpu=(");
  for (int f = 0; f < n; ++f) out += std::to_string(g[f]) + (f + 1 < n ? " " : ") ");
  return out;
}

// The partial ops on the same logits, read as the slice [off, off + V) of a larger vocabulary:
// CPU vs emulated CUDA. Thresholds (when given) are values that hit ties of the "ties" logits,
// -inf (keep all) and +inf (keep none); drafts are the CPU drafts as global ids, a few outside
// the slice.
static void run_partial(const apd_logits& D, const apd_logits& A, int64_t B, int64_t K, int64_t V, double T,
                        int64_t topk, double topp, double w, bool greedy_target, const apd_noise& noise,
                        const int64_t* vl, const std::vector<int64_t>& drafts, unsigned char* wsp, size_t wsb,
                        const char* desc) {
  const double r = urand();
  const int64_t off = r < 0.3 ? 0 : r < 0.9 ? 4 * irand(1, 70) : (int64_t{1} << 33) + 4 * irand(0, 9);
  std::vector<float> thr(B * K);
  const bool given = urand() < 0.4;
  for (auto& t : thr) {
    const double q = urand();
    t = q < 0.1 ? -INFINITY : q < 0.15 ? INFINITY : (float)(0.5 * irand(-4, 6));
  }
  std::string d = std::string(desc) + " off=" + std::to_string(off) + " thr=" + std::to_string((int)given);
  apd_sample_draft_partial_args sa{};
  sa.batch = B; sa.window = K; sa.vocab = V; sa.vocab_offset = off; sa.dllm = D;
  sa.filter = apd_filter{T, topk, topp}; sa.noise = noise; sa.threshold = given ? thr.data() : nullptr;
  std::vector<int64_t> tok_c(B * K, -7), tok_g(B * K, -7);
  std::vector<float> st_c(B * K * APD_DRAFT_NSTATS), st_g(B * K * APD_DRAFT_NSTATS);
  sa.tokens = tok_c.data(); sa.stats = st_c.data();
  apd_status s1 = apd_sample_draft_partial_cpu(&sa);
  sa.tokens = tok_g.data(); sa.stats = st_g.data();
  apd_status s2 = apd_sample_draft_partial_cuda(&sa, wsp, wsb, nullptr);
  ++checks;
  if (s1 != APD_OK || s2 != APD_OK) { fail("status draft partial " + d); return; }
  for (int64_t r = 0; r < B * K; ++r) {
    const float* c = st_c.data() + r * APD_DRAFT_NSTATS;
    const float* g = st_g.data() + r * APD_DRAFT_NSTATS;
    if (tok_c[r] != tok_g[r] || tok_c[r] < off || tok_c[r] >= off + V) {
      fail("draft partial token r=" + std::to_string(r) + " cpu=" + std::to_string(tok_c[r]) + " gpu=" + std::to_string(tok_g[r]) + " " + d);
      break;
    }
    if (!stats_close(c, g, APD_DRAFT_NSTATS)) { fail("draft partial stats r=" + std::to_string(r) + " " + stats_str(c, g, APD_DRAFT_NSTATS) + d); break; }
  }
  std::vector<int64_t> draft(B * K);
  for (int64_t e = 0; e < B * K; ++e) {
    const double q = urand();
    draft[e] = q < 0.1 ? -1 : q < 0.2 ? off + V + irand(0, 5) : q < 0.25 ? off - 4 : off + drafts[e];
  }
  apd_mixture_accept_partial_args ma{};
  ma.batch = B; ma.window = K; ma.vocab = V; ma.vocab_offset = off; ma.dllm = D; ma.verifier = A;
  ma.draft_tokens = draft.data(); ma.draft_stride_b = K; ma.valid_lengths = vl; ma.mixture_weight = w;
  ma.greedy_target = greedy_target; ma.filter = apd_filter{T, topk, topp}; ma.noise = noise;
  ma.threshold = given ? thr.data() : nullptr;
  std::vector<int64_t> t_c(B * K, -9), t_g(B * K, -9);
  std::vector<float> m_c(B * K * APD_MIXTURE_NSTATS), m_g(B * K * APD_MIXTURE_NSTATS);
  ma.target_tokens = t_c.data(); ma.stats = m_c.data();
  s1 = apd_mixture_accept_partial_cpu(&ma);
  ma.target_tokens = t_g.data(); ma.stats = m_g.data();
  s2 = apd_mixture_accept_partial_cuda(&ma, wsp, wsb, nullptr);
  ++checks;
  if (s1 != APD_OK || s2 != APD_OK) { fail("status mix partial " + d); return; }
  for (int64_t r = 0; r < B * K; ++r) {
    const float* c = m_c.data() + r * APD_MIXTURE_NSTATS;
    const float* g = m_g.data() + r * APD_MIXTURE_NSTATS;
    if (t_c[r] != t_g[r] || (t_c[r] != -1 && (t_c[r] < off || t_c[r] >= off + V))) {
      fail("mix partial target r=" + std::to_string(r) + " cpu=" + std::to_string(t_c[r]) + " gpu=" + std::to_string(t_g[r]) + " " + d);
      break;
    }
    if (!stats_close(c, g, APD_MIXTURE_NSTATS)) { fail("mix partial stats r=" + std::to_string(r) + " " + stats_str(c, g, APD_MIXTURE_NSTATS) + d); break; }
  }
}

static void run_case(apd_dtype dt, apd_dtype dta, int64_t B, int64_t K, int64_t V, double T, int64_t topk, double topp,
                     double w, bool greedy_target, int noise_mode, int sms, const std::string& kind, bool use_vl,
                     int64_t pad, int64_t misalign, int l2_choice = 3) {
  // L2 sizes (the filter's grid): unknown (one block per row), tiny (one or a few blocks loop over
  // all rows), 64 KiB, an H100's.
  const int l2s[4] = {0, 2048, 64 << 10, 50 << 20};
  const int sms_choices[4] = {1, 3, 8, 132};
  int sms_idx = 0;
  while (sms_idx < 3 && sms_choices[sms_idx] != sms) ++sms_idx;
  char desc[512];
  snprintf(desc, sizeof desc, "%s/%s B=%ld K=%ld V=%ld T=%g k=%ld p=%g w=%g gt=%d noise=%d sms=%d l2=%d kind=%s vl=%d pad=%ld mis=%ld",
           dn(dt), dn(dta), (long)B, (long)K, (long)V, T, (long)topk, topp, w, (int)greedy_target, noise_mode, sms,
           l2s[l2_choice], kind.c_str(), (int)use_vl, (long)pad, (long)misalign);
  emu::g_sm_count = sms;
  emu::g_l2_bytes = l2s[l2_choice];
  emu::g_device = sms_idx * 4 + l2_choice;  // attributes are cached per device
  Logits D(dt, B, K, V, pad, misalign, kind);
  Logits A(dta, B, K, V, pad + 1, (misalign + 1) % 3, kind == "allneg" ? "normal" : kind);
  Noise nz;
  make_noise(nz, B, K, V, noise_mode);
  const size_t wsb = apd_workspace_bytes(B, K, V);
  Buf ws(wsb + 64);
  unsigned char* wsp = ws.p + irand(0, 3) * 8;  // unaligned workspace start
  // ---- sample_draft
  apd_sample_draft_args sa{};
  sa.batch = B; sa.window = K; sa.vocab = V; sa.dllm = D.l; sa.filter = apd_filter{T, topk, topp}; sa.noise = nz.n;
  std::vector<int64_t> tok_c(B * K, -7), tok_g(B * K, -7);
  std::vector<float> lp_c(B * K), lp_g(B * K);
  sa.tokens = tok_c.data(); sa.logprobs = lp_c.data();
  apd_status s1 = apd_sample_draft_cpu(&sa);
  sa.tokens = tok_g.data(); sa.logprobs = lp_g.data();
  apd_status s2 = apd_sample_draft_cuda(&sa, wsp, wsb, nullptr);
  ++checks;
  if (s1 != APD_OK || s2 != APD_OK) { fail(std::string("status draft ") + desc); return; }
  for (int64_t r = 0; r < B * K; ++r) {
    if (tok_c[r] != tok_g[r]) { fail(std::string("draft token r=") + std::to_string(r) + " cpu=" + std::to_string(tok_c[r]) + " gpu=" + std::to_string(tok_g[r]) + " " + desc); break; }
    if (!close(lp_c[r], lp_g[r])) { fail(std::string("draft logprob r=") + std::to_string(r) + " cpu=" + std::to_string(lp_c[r]) + " gpu=" + std::to_string(lp_g[r]) + " " + desc); break; }
  }
  // ---- mixture_accept: drafts = CPU drafts with a few out-of-range ones, strided
  const int64_t dsb = K + 2;
  std::vector<int64_t> draft(B * dsb, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < K; ++i) {
      int64_t t = tok_c[b * K + i];
      const double r = urand();
      if (r < 0.03) t = -1; else if (r < 0.06) t = V; else if (r < 0.1) t = irand(0, V - 1);
      draft[b * dsb + i] = t;
    }
  std::vector<int64_t> vl(B);
  for (auto& x : vl) x = irand(-1, K + 1);
  apd_mixture_accept_args ma{};
  ma.batch = B; ma.window = K; ma.vocab = V; ma.dllm = D.l; ma.verifier = A.l;
  ma.draft_tokens = draft.data(); ma.draft_stride_b = dsb; ma.valid_lengths = use_vl ? vl.data() : nullptr;
  ma.mixture_weight = w; ma.greedy_target = greedy_target; ma.filter = apd_filter{T, topk, topp}; ma.noise = nz.n;
  std::vector<int64_t> n_c(B, -9), n_g(B, -9), t_c(B * K, -9), t_g(B * K, -9);
  std::vector<float> ld_c(B * K), ld_g(B * K), la_c(B * K), la_g(B * K), lm_c(B * K), lm_g(B * K);
  ma.num_accepted = n_c.data(); ma.target_tokens = t_c.data(); ma.logp_dllm = ld_c.data(); ma.logp_verifier = la_c.data(); ma.logp_mixture = lm_c.data();
  s1 = apd_mixture_accept_cpu(&ma);
  ma.num_accepted = n_g.data(); ma.target_tokens = t_g.data(); ma.logp_dllm = ld_g.data(); ma.logp_verifier = la_g.data(); ma.logp_mixture = lm_g.data();
  s2 = apd_mixture_accept_cuda(&ma, wsp, wsb, nullptr);
  ++checks;
  if (s1 != APD_OK || s2 != APD_OK) { fail(std::string("status mix ") + desc); return; }
  for (int64_t b = 0; b < B; ++b)
    if (n_c[b] != n_g[b]) { fail("num_accepted b=" + std::to_string(b) + " cpu=" + std::to_string(n_c[b]) + " gpu=" + std::to_string(n_g[b]) + " " + desc); break; }
  for (int64_t r = 0; r < B * K; ++r) {
    if (t_c[r] != t_g[r]) { fail("target r=" + std::to_string(r) + " cpu=" + std::to_string(t_c[r]) + " gpu=" + std::to_string(t_g[r]) + " " + desc); break; }
    if (!close(ld_c[r], ld_g[r]) || !close(la_c[r], la_g[r]) || !close(lm_c[r], lm_g[r])) {
      char m[256]; snprintf(m, sizeof m, "mix logps r=%ld cpu=(%g %g %g) gpu=(%g %g %g) ", (long)r, ld_c[r], la_c[r], lm_c[r], ld_g[r], la_g[r], lm_g[r]);
      fail(m + std::string(desc)); break;
    }
  }
  run_partial(D.l, A.l, B, K, V, T, topk, topp, w, greedy_target, nz.n, use_vl ? vl.data() : nullptr, tok_c, wsp, wsb,
              desc);
  delete nz.ubuf;
}

// ---- per-row knobs -----------------------------------------------------------------------------
// One call of each op (CPU or emulated CUDA) on given inputs; outputs per row of the call.
struct OpIn {
  apd_logits D, A;
  int64_t B, K, V;
  apd_filter f;
  double w;
  const double* w_rows;
  bool gt;
  apd_noise noise;
  const int64_t* vl;     // [B] or null
  const int64_t* draft;  // [B, dsb] (global ids for the partial ops)
  int64_t dsb;
  int64_t off;        // partial ops: vocab_offset
  const float* thr;   // partial ops: [B * K] given thresholds or null
};
struct OpOut {
  apd_status sd = APD_OK, sm = APD_OK;
  std::vector<int64_t> tok, n, tgt;
  std::vector<float> lp, ld, la, lm;  // full ops
  std::vector<float> dst, mst;        // partial ops: stats
};

static OpOut full_ops(const OpIn& in, bool cuda, unsigned char* wsp, size_t wsb) {
  const int64_t R = in.B * in.K;
  OpOut o;
  o.tok.assign(R, -7); o.lp.assign(R, 0); o.n.assign(in.B, -9); o.tgt.assign(R, -9);
  o.ld.assign(R, 0); o.la.assign(R, 0); o.lm.assign(R, 0);
  apd_sample_draft_args sa{};
  sa.batch = in.B; sa.window = in.K; sa.vocab = in.V; sa.dllm = in.D; sa.filter = in.f; sa.noise = in.noise;
  sa.tokens = o.tok.data(); sa.logprobs = o.lp.data();
  o.sd = cuda ? apd_sample_draft_cuda(&sa, wsp, wsb, nullptr) : apd_sample_draft_cpu(&sa);
  apd_mixture_accept_args ma{};
  ma.batch = in.B; ma.window = in.K; ma.vocab = in.V; ma.dllm = in.D; ma.verifier = in.A;
  ma.draft_tokens = in.draft; ma.draft_stride_b = in.dsb; ma.valid_lengths = in.vl;
  ma.mixture_weight = in.w; ma.mixture_weight_rows = in.w_rows; ma.greedy_target = in.gt; ma.filter = in.f;
  ma.noise = in.noise;
  ma.num_accepted = o.n.data(); ma.target_tokens = o.tgt.data();
  ma.logp_dllm = o.ld.data(); ma.logp_verifier = o.la.data(); ma.logp_mixture = o.lm.data();
  o.sm = cuda ? apd_mixture_accept_cuda(&ma, wsp, wsb, nullptr) : apd_mixture_accept_cpu(&ma);
  return o;
}

static OpOut partial_ops(const OpIn& in, bool cuda, unsigned char* wsp, size_t wsb) {
  const int64_t R = in.B * in.K;
  OpOut o;
  o.tok.assign(R, -7); o.tgt.assign(R, -9);
  o.dst.assign(R * APD_DRAFT_NSTATS, 0); o.mst.assign(R * APD_MIXTURE_NSTATS, 0);
  apd_sample_draft_partial_args sa{};
  sa.batch = in.B; sa.window = in.K; sa.vocab = in.V; sa.vocab_offset = in.off; sa.dllm = in.D;
  sa.filter = in.f; sa.noise = in.noise; sa.threshold = in.thr;
  sa.tokens = o.tok.data(); sa.stats = o.dst.data();
  o.sd = cuda ? apd_sample_draft_partial_cuda(&sa, wsp, wsb, nullptr) : apd_sample_draft_partial_cpu(&sa);
  apd_mixture_accept_partial_args ma{};
  ma.batch = in.B; ma.window = in.K; ma.vocab = in.V; ma.vocab_offset = in.off; ma.dllm = in.D; ma.verifier = in.A;
  ma.draft_tokens = in.draft; ma.draft_stride_b = in.dsb; ma.valid_lengths = in.vl;
  ma.mixture_weight = in.w; ma.mixture_weight_rows = in.w_rows; ma.greedy_target = in.gt; ma.filter = in.f;
  ma.noise = in.noise; ma.threshold = in.thr;
  ma.target_tokens = o.tgt.data(); ma.stats = o.mst.data();
  o.sm = cuda ? apd_mixture_accept_partial_cuda(&ma, wsp, wsb, nullptr) : apd_mixture_accept_partial_cpu(&ma);
  return o;
}

// Rows [xb * K, xb * K + nb * K) of x against rows [yb * K, ...) of y: tokens, targets and
// num_accepted exactly, values bit for bit (bits) or to 2e-4 relative.
static void compare_ops(const OpOut& x, int64_t xb, const OpOut& y, int64_t yb, int64_t nb, int64_t K, bool partial,
                        bool bits, const std::string& what) {
  ++checks;
  if (x.sd != APD_OK || x.sm != APD_OK || y.sd != APD_OK || y.sm != APD_OK) {
    fail("status " + what + " " + apd_status_string(x.sd) + "/" + apd_status_string(x.sm) + " vs " +
         apd_status_string(y.sd) + "/" + apd_status_string(y.sm));
    return;
  }
  auto eq = [&](float a, float b) { return bits ? same_bits(a, b) : close(a, b); };
  for (int64_t q = 0; q < nb * K; ++q) {
    const int64_t rx = xb * K + q, ry = yb * K + q;
    const std::string at = " row " + std::to_string(q / K) + " i=" + std::to_string(q % K) + " " + what;
    if (x.tok[rx] != y.tok[ry]) { fail("draft token " + std::to_string(x.tok[rx]) + " vs " + std::to_string(y.tok[ry]) + at); return; }
    if (x.tgt[rx] != y.tgt[ry]) { fail("target " + std::to_string(x.tgt[rx]) + " vs " + std::to_string(y.tgt[ry]) + at); return; }
    if (partial) {
      for (int f = 0; f < APD_DRAFT_NSTATS; ++f)
        if (!eq(x.dst[rx * APD_DRAFT_NSTATS + f], y.dst[ry * APD_DRAFT_NSTATS + f])) {
          fail("draft stats " + stats_str(&x.dst[rx * APD_DRAFT_NSTATS], &y.dst[ry * APD_DRAFT_NSTATS], APD_DRAFT_NSTATS) + at);
          return;
        }
      for (int f = 0; f < APD_MIXTURE_NSTATS; ++f)
        if (!eq(x.mst[rx * APD_MIXTURE_NSTATS + f], y.mst[ry * APD_MIXTURE_NSTATS + f])) {
          fail("mix stats " + stats_str(&x.mst[rx * APD_MIXTURE_NSTATS], &y.mst[ry * APD_MIXTURE_NSTATS], APD_MIXTURE_NSTATS) + at);
          return;
        }
    } else {
      if (!eq(x.lp[rx], y.lp[ry])) { fail("draft logprob " + std::to_string(x.lp[rx]) + " vs " + std::to_string(y.lp[ry]) + at); return; }
      if (!eq(x.ld[rx], y.ld[ry]) || !eq(x.la[rx], y.la[ry]) || !eq(x.lm[rx], y.lm[ry])) {
        char m[200];
        snprintf(m, sizeof m, "mix logps (%g %g %g) vs (%g %g %g)", x.ld[rx], x.la[rx], x.lm[rx], y.ld[ry], y.la[ry], y.lm[ry]);
        fail(m + at);
        return;
      }
    }
  }
  if (!partial)
    for (int64_t q = 0; q < nb; ++q)
      if (x.n[xb + q] != y.n[yb + q]) {
        fail("num_accepted " + std::to_string(x.n[xb + q]) + " vs " + std::to_string(y.n[yb + q]) + " row " +
             std::to_string(q) + " " + what);
        return;
      }
}

// The inputs of row b alone (B = 1): views of row b's logits, noise, valid length, drafts and
// thresholds, row b's knobs as scalars (apd::row_filter, apd::row_mixture_weight).
static OpIn row_alone(const OpIn& in, int64_t b) {
  OpIn r = in;
  r.B = 1;
  r.D = row_view(in.D, b);
  r.A = row_view(in.A, b);
  r.f = apd::row_filter(in.f, b);
  r.w = apd::row_mixture_weight(in.w, in.w_rows, b);
  r.w_rows = nullptr;
  r.noise = noise_view(in.noise, b);
  r.vl = in.vl != nullptr ? in.vl + b : nullptr;
  r.draft = in.draft + b * in.dsb;
  r.thr = in.thr != nullptr ? in.thr + b * in.K : nullptr;
  return r;
}

// The whole batch with every row taking row b's knobs as scalars (same shapes, so the same split
// plan as the mixed call: row b must match it bit for bit).
static OpIn all_rows_like(const OpIn& in, int64_t b) {
  OpIn r = in;
  r.f = apd::row_filter(in.f, b);
  r.w = apd::row_mixture_weight(in.w, in.w_rows, b);
  r.w_rows = nullptr;
  return r;
}

// Random per-row knobs: each knob is per row with probability 0.6 (at least one is), with mixes
// of T = 0 beside T > 0, top_k 0 / 1 / small / V - 1 / >= V, top_p 1 / small / 0.9, w 0 / 1 /
// between; a replaced scalar holds an invalid value (it must be ignored).
static void run_rows_case(apd_dtype dt, apd_dtype dta, int64_t B, int64_t K, int64_t V, int noise_mode, int sms,
                          const std::string& kind, bool use_vl, int l2_choice) {
  const int l2s[4] = {0, 2048, 64 << 10, 50 << 20};
  emu::g_sm_count = sms;
  emu::g_l2_bytes = l2s[l2_choice];
  int sms_idx = 0;
  const int sms_choices[4] = {1, 3, 8, 132};
  while (sms_idx < 3 && sms_choices[sms_idx] != sms) ++sms_idx;
  emu::g_device = 16 + sms_idx * 4 + l2_choice;
  RowKnobs rk;
  bool on[4];
  do {
    for (bool& x : on) x = urand() < 0.6;
  } while (!(on[0] || on[1] || on[2] || on[3]));
  const double Ts[] = {0.0, 0.0, 1.0, 0.7, 2.5};
  const int64_t ks[] = {0, 0, 1, 5, 50, V - 1, V, V + 5};
  const double ps[] = {1.0, 1.0, 0.5, 0.9, 1e-6};
  const double wts[] = {0.0, 1.0, 0.3, 0.5, 0.9};
  double T = Ts[irand(0, 4)], topp = ps[irand(0, 4)], w = wts[irand(0, 4)];
  int64_t topk = std::max<int64_t>(0, ks[irand(0, 7)]);
  for (int64_t b = 0; b < B; ++b) {
    if (on[0]) rk.T.push_back(Ts[irand(0, 4)]);
    if (on[1]) rk.k.push_back(std::max<int64_t>(0, ks[irand(0, 7)]));
    if (on[2]) rk.p.push_back(ps[irand(0, 4)]);
    if (on[3]) rk.w.push_back(wts[irand(0, 4)]);
  }
  if (on[0]) T = -3.0;
  if (on[1]) topk = -2;
  if (on[2]) topp = 7.0;
  if (on[3]) w = NAN;
  const bool gt = urand() < 0.2;
  char desc[512];
  snprintf(desc, sizeof desc, "ROWS %s/%s B=%ld K=%ld V=%ld rows(T,k,p,w)=%d%d%d%d gt=%d noise=%d sms=%d l2=%d kind=%s vl=%d",
           dn(dt), dn(dta), (long)B, (long)K, (long)V, on[0], on[1], on[2], on[3], (int)gt, noise_mode, sms,
           l2s[l2_choice], kind.c_str(), (int)use_vl);
  std::string d = desc;
  for (int64_t b = 0; b < B; ++b) {
    char kb[160];
    snprintf(kb, sizeof kb, " [b%ld T=%g k=%ld p=%g w=%g]", (long)b, on[0] ? rk.T[b] : T, (long)(on[1] ? rk.k[b] : topk),
             on[2] ? rk.p[b] : topp, on[3] ? rk.w[b] : w);
    d += kb;
  }
  Logits D(dt, B, K, V, irand(0, 1) ? 0 : irand(1, 9), irand(0, 1) ? 0 : irand(1, 7), kind);
  Logits A(dta, B, K, V, 1, 1, kind == "allneg" ? "normal" : kind);
  Noise nz;
  make_noise(nz, B, K, V, noise_mode);
  const size_t wsb = apd_workspace_bytes(B, K, V);
  Buf ws(wsb + 64);
  unsigned char* wsp = ws.p + irand(0, 3) * 8;
  std::vector<int64_t> vl(B);
  for (auto& x : vl) x = irand(-1, K + 1);

  OpIn in{};
  in.D = D.l; in.A = A.l; in.B = B; in.K = K; in.V = V;
  in.f = make_filter(T, topk, topp, &rk);
  in.w = w; in.w_rows = w_rows_of(&rk); in.gt = gt; in.noise = nz.n; in.vl = use_vl ? vl.data() : nullptr;
  // Drafts: the CPU drafts (from a first CPU call), a few replaced.
  const int64_t dsb = K + 1;
  std::vector<int64_t> draft(B * dsb, 0);
  in.draft = draft.data(); in.dsb = dsb;
  const OpOut first = full_ops(in, false, wsp, wsb);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < K; ++i) {
      const double q = urand();
      draft[b * dsb + i] = q < 0.05 ? -1 : q < 0.1 ? irand(0, V - 1) : first.tok[b * K + i];
    }
  const bool one_split = V <= 2048;  // every plan has one split: row-alone values bit for bit
  {
    const OpOut c = full_ops(in, false, wsp, wsb), g = full_ops(in, true, wsp, wsb);
    compare_ops(c, 0, g, 0, B, K, false, false, "cpu vs cuda " + d);
    const int64_t b = irand(0, B - 1);
    const OpOut s = full_ops(all_rows_like(in, b), true, wsp, wsb);
    compare_ops(g, b, s, b, 1, K, false, true, "cuda mixed vs cuda scalar batch b=" + std::to_string(b) + " " + d);
    const OpOut a = full_ops(row_alone(in, b), true, wsp, wsb);
    compare_ops(g, b, a, 0, 1, K, false, one_split, "cuda mixed vs cuda row alone b=" + std::to_string(b) + " " + d);
  }
  // Partial ops: a slice offset, given thresholds sometimes, global drafts.
  {
    OpIn pin = in;
    const double r = urand();
    pin.off = r < 0.3 ? 0 : r < 0.9 ? 4 * irand(1, 70) : (int64_t{1} << 33) + 4 * irand(0, 9);
    std::vector<float> thr(B * K);
    for (auto& t : thr) {
      const double q = urand();
      t = q < 0.1 ? -INFINITY : q < 0.15 ? INFINITY : (float)(0.5 * irand(-4, 6));
    }
    pin.thr = urand() < 0.3 ? thr.data() : nullptr;
    std::vector<int64_t> gdraft(B * dsb);
    for (int64_t e = 0; e < B * dsb; ++e) gdraft[e] = draft[e] < 0 ? -1 : pin.off + draft[e];
    pin.draft = gdraft.data();
    const std::string pd = " off=" + std::to_string(pin.off) + " thr=" + std::to_string(pin.thr != nullptr) + " " + d;
    const OpOut c = partial_ops(pin, false, wsp, wsb), g = partial_ops(pin, true, wsp, wsb);
    compare_ops(c, 0, g, 0, B, K, true, false, "partial cpu vs cuda" + pd);
    const int64_t b = irand(0, B - 1);
    const OpOut s = partial_ops(all_rows_like(pin, b), true, wsp, wsb);
    compare_ops(g, b, s, b, 1, K, true, true, "partial cuda mixed vs cuda scalar batch b=" + std::to_string(b) + pd);
    const OpOut a = partial_ops(row_alone(pin, b), true, wsp, wsb);
    compare_ops(g, b, a, 0, 1, K, true, one_split, "partial cuda mixed vs cuda row alone b=" + std::to_string(b) + pd);
  }
  delete nz.ubuf;
}

// Out-of-range per-row values (device memory: unchecked by the CUDA entry points): the calls
// return APD_OK, never read outside the rows, and still produce tokens inside the vocabulary for
// every row.
static void rows_robustness_checks() {
  const int64_t B = 6, K = 2, V = 37;
  emu::g_sm_count = 3;
  emu::g_l2_bytes = 0;
  emu::g_device = 40;
  Logits D(APD_BFLOAT16, B, K, V, 0, 0, "normal"), A(APD_FLOAT32, B, K, V, 0, 0, "normal");
  Noise nz;
  make_noise(nz, B, K, V, 1);
  std::vector<double> T = {-1.0, NAN, 1e-300, INFINITY, 0.5, 0.0};
  std::vector<int64_t> k = {-5, V, INT64_MAX, INT64_MIN, 3, 0};
  std::vector<double> p = {0.0, -1.0, NAN, 2.0, -INFINITY, 0.5};
  std::vector<double> w = {-1.0, 2.0, NAN, INFINITY, -1e300, 0.5};
  OpIn in{};
  in.D = D.l; in.A = A.l; in.B = B; in.K = K; in.V = V;
  in.f = apd_filter{};
  in.f.temperature_rows = T.data(); in.f.top_k_rows = k.data(); in.f.top_p_rows = p.data();
  in.w_rows = w.data(); in.noise = nz.n;
  std::vector<int64_t> draft(B * K, 3);
  in.draft = draft.data(); in.dsb = K;
  const size_t wsb = apd_workspace_bytes(B, K, V);
  Buf ws(wsb);
  for (int partial = 0; partial < 2; ++partial) {
    const OpOut g = partial ? partial_ops(in, true, ws.p, wsb) : full_ops(in, true, ws.p, wsb);
    ++checks;
    if (g.sd != APD_OK || g.sm != APD_OK) { fail("status of out-of-range per-row knobs"); continue; }
    for (int64_t r = 0; r < B * K; ++r)
      if (g.tok[r] < 0 || g.tok[r] >= V || g.tgt[r] < 0 || g.tgt[r] >= V)
        fail("out-of-range per-row knobs: token outside the vocabulary at r=" + std::to_string(r));
    // The CPU entry points check host memory and refuse the same values.
    ++checks;
    const OpOut c = partial ? partial_ops(in, false, ws.p, wsb) : full_ops(in, false, ws.p, wsb);
    if (c.sd != APD_ERROR_INVALID_ARGUMENT || c.sm != APD_ERROR_INVALID_ARGUMENT) fail("CPU accepted out-of-range per-row knobs");
  }
  delete nz.ubuf;
}

// Argument and workspace errors of the CUDA entry points.
static void status_checks() {
  std::vector<uint16_t> D(4 * 100, 0);
  std::vector<int64_t> tok(4, 0), n(2, 0);
  std::vector<float> f(4, 0);
  apd_sample_draft_args a{};
  a.batch = 2; a.window = 2; a.vocab = 100; a.dllm = apd_logits{D.data(), APD_BFLOAT16, 200, 100};
  a.filter = apd_filter{1.0, 0, 1.0}; a.tokens = tok.data(); a.logprobs = f.data();
  const size_t wsb = apd_workspace_bytes(2, 2, 100);
  Buf ws(wsb);
  auto expect = [](apd_status got, apd_status want, const char* what) {
    ++checks;
    if (got != want) fail(std::string("status ") + what + ": " + apd_status_string(got));
  };
  expect(apd_sample_draft_cuda(nullptr, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "null args");
  expect(apd_sample_draft_cuda(&a, ws.p, wsb, nullptr), APD_OK, "draft ok");
  a.filter.top_k = 5;  // needs tau in the workspace
  expect(apd_sample_draft_cuda(&a, nullptr, 0, nullptr), APD_ERROR_WORKSPACE_TOO_SMALL, "no workspace");
  expect(apd_sample_draft_cuda(&a, ws.p, 16, nullptr), APD_ERROR_WORKSPACE_TOO_SMALL, "small workspace");
  expect(apd_sample_draft_cuda(&a, ws.p, wsb, nullptr), APD_OK, "filtered ok");
  a.filter.top_k = -1;
  expect(apd_sample_draft_cuda(&a, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "top_k < 0");
  a.filter = apd_filter{-1.0, 0, 1.0};
  expect(apd_sample_draft_cuda(&a, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "T < 0");
  a.filter = apd_filter{1.0, 0, 1.5};
  expect(apd_sample_draft_cuda(&a, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "top_p > 1");
  a.filter = apd_filter{1.0, 0, 1.0};
  a.dllm.dtype = APD_FLOAT64;
  expect(apd_sample_draft_cuda(&a, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "f64 logits");
  a.dllm.dtype = APD_BFLOAT16;
  a.noise.uniform = D.data(); a.noise.uniform_dtype = APD_BFLOAT16;
  expect(apd_sample_draft_cuda(&a, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "bf16 uniforms");
  apd_mixture_accept_args m{};
  m.batch = 2; m.window = 2; m.vocab = 100; m.dllm = m.verifier = apd_logits{D.data(), APD_BFLOAT16, 200, 100};
  m.draft_tokens = tok.data(); m.draft_stride_b = 2; m.mixture_weight = 0.5; m.filter = apd_filter{1.0, 0, 1.0};
  m.num_accepted = n.data(); m.target_tokens = tok.data(); m.logp_dllm = m.logp_verifier = m.logp_mixture = f.data();
  expect(apd_mixture_accept_cuda(&m, nullptr, 0, nullptr), APD_ERROR_WORKSPACE_TOO_SMALL, "mix no workspace");
  m.mixture_weight = 1.5;
  expect(apd_mixture_accept_cuda(&m, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "w > 1");
  m.mixture_weight = 0.5; m.vocab = 0;
  expect(apd_mixture_accept_cuda(&m, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "vocab 0");
  m.vocab = 100;
  expect(apd_mixture_accept_cuda(&m, ws.p, wsb, nullptr), APD_OK, "mix ok");
  expect(apd_has_cuda() == 1 ? APD_OK : APD_ERROR_UNSUPPORTED, APD_OK, "has_cuda");
  // Partial ops: the slice's offset, and a given threshold that needs no tau in the workspace.
  std::vector<float> st(4 * APD_MIXTURE_NSTATS, 0.0f), thr(4, 0.0f);
  apd_sample_draft_partial_args pa{};
  pa.batch = 2; pa.window = 2; pa.vocab = 100; pa.vocab_offset = 8; pa.dllm = a.dllm;
  pa.filter = apd_filter{1.0, 5, 1.0}; pa.tokens = tok.data(); pa.stats = st.data();
  expect(apd_sample_draft_partial_cuda(nullptr, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "partial null args");
  expect(apd_sample_draft_partial_cuda(&pa, ws.p, wsb, nullptr), APD_OK, "partial draft ok");
  expect(apd_sample_draft_partial_cuda(&pa, nullptr, 0, nullptr), APD_ERROR_WORKSPACE_TOO_SMALL, "partial no workspace");
  pa.threshold = thr.data();
  expect(apd_sample_draft_partial_cuda(&pa, nullptr, 0, nullptr), APD_OK, "partial threshold, no workspace");
  pa.vocab_offset = 6;
  expect(apd_sample_draft_partial_cuda(&pa, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "offset % 4");
  pa.vocab_offset = -4;
  expect(apd_sample_draft_partial_cuda(&pa, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "offset < 0");
  pa.vocab_offset = (int64_t{1} << 34) - 96;
  expect(apd_sample_draft_partial_cuda(&pa, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "offset + vocab > 2^34");
  pa.vocab_offset = 0; pa.stats = nullptr;
  expect(apd_sample_draft_partial_cuda(&pa, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "partial null stats");
  apd_mixture_accept_partial_args pm{};
  pm.batch = 2; pm.window = 2; pm.vocab = 100; pm.vocab_offset = 4; pm.dllm = pm.verifier = m.dllm;
  pm.draft_tokens = tok.data(); pm.draft_stride_b = 2; pm.mixture_weight = 0.5; pm.filter = apd_filter{1.0, 0, 1.0};
  pm.target_tokens = tok.data(); pm.stats = st.data();
  expect(apd_mixture_accept_partial_cuda(&pm, ws.p, wsb, nullptr), APD_OK, "partial mix ok");
  expect(apd_mixture_accept_partial_cuda(&pm, nullptr, 0, nullptr), APD_ERROR_WORKSPACE_TOO_SMALL, "partial mix no workspace");
  pm.vocab_offset = 2;
  expect(apd_mixture_accept_partial_cuda(&pm, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "mix offset % 4");
  pm.vocab_offset = 0; pm.mixture_weight = -0.5;
  expect(apd_mixture_accept_partial_cuda(&pm, ws.p, wsb, nullptr), APD_ERROR_INVALID_ARGUMENT, "mix partial w < 0");
}

// The filter grid of filter.cuh's examples (rows in flight * row bytes <= L2 / 2, balanced).
static void filter_grid_checks() {
  using apd::cuda::filter_blocks;
  const int64_t h200 = 60ll << 20, h100 = 50ll << 20, V = 151936;
  const struct { int64_t rows, elem, l2, want; } cases[] = {
      {800, 2, h200, 100}, {100, 2, h200, 100}, {100, 2, h100, 50}, {800, 4, h200, 50}, {16, 4, h100, 16},
      {5, 2, 0, 5}, {7, 2, 1024, 1}, {1, 4, 1, 1}};
  for (const auto& c : cases) {
    ++checks;
    const int64_t got = filter_blocks(c.rows, V, c.elem, c.l2);
    if (got != c.want)
      fail("filter_blocks(" + std::to_string(c.rows) + ", " + std::to_string(c.elem) + " B, L2 " + std::to_string(c.l2) +
           ") = " + std::to_string(got) + ", want " + std::to_string(c.want));
  }
}

// test_vs_cpu [cases [seed [big | random | fixed]]]: "random" runs the random cases alone, "fixed"
// the fixed checks alone (run.sh runs them as separate processes, on all cores); neither: both.
int main(int argc, char** argv) {
  const std::string mode = argc > 3 ? argv[3] : "";
  const bool fixed = mode != "random", random = mode != "fixed";
  if (fixed) {
    status_checks();
    filter_grid_checks();
  }
  const int n = argc > 1 ? atoi(argv[1]) : 200;
  if (argc > 2) rng.seed(atoll(argv[2]));
  const apd_dtype dts[3] = {APD_FLOAT32, APD_FLOAT16, APD_BFLOAT16};
  const int64_t Vs[] = {1, 2, 3, 5, 8, 9, 111, 1000, 4099, 20000};
  const char* kinds[] = {"normal", "peaky", "ties", "flat", "clean", "allneg"};
  if (argc > 3 && std::string(argv[3]) == "big") {
    const double Ts[] = {1.0, 0.7, 0.0};
    for (int c = 0; c < n; ++c) {
      const apd_dtype dt = dts[c % 3];
      const char* kind = c % 2 ? "peaky" : "normal";
      int64_t topk = c % 4 == 1 ? 50 : 0; double topp = c % 4 == 2 ? 0.9 : 1.0;
      run_case(dt, dt, 1, 3, 151936, Ts[c % 3], topk, topp, std::vector<double>{0.5, 1.0, 0.0, 0.9}[c % 4], false,
               (int)(c % 5), 132, kind, c % 2 == 0, c % 3 == 0 ? 0 : 3, c % 2);
    }
    printf("%d checks, %d failures, %ld launches\n", checks, failures, emu::g_launches);
    return failures != 0;
  }
  for (int c = 0; random && c < n; ++c) {
    const apd_dtype dt = dts[irand(0, 2)];
    const apd_dtype dta = urand() < 0.6 ? dt : dts[irand(0, 2)];
    const int64_t V = Vs[irand(0, 9)];
    const int64_t B = irand(1, 3), K = irand(1, 5);
    const double Ts[] = {0.0, 1.0, 0.7, 2.5};
    const double T = Ts[irand(0, 3)];
    int64_t topk = 0; double topp = 1.0;
    const double r = urand();
    if (r < 0.25) topk = std::vector<int64_t>{1, 5, 50, V - 1, V, V + 5}[irand(0, 5)];
    else if (r < 0.45) topp = std::vector<double>{0.5, 0.9, 1e-6, 0.999}[irand(0, 3)];
    else if (r < 0.6) { topk = std::vector<int64_t>{1, 5, 50, V - 1}[irand(0, 3)]; topp = std::vector<double>{0.5, 0.9, 0.3}[irand(0, 2)]; }
    if (topk < 0) topk = 0;
    const double w = std::vector<double>{0.0, 1.0, 0.3, 0.5, 0.9}[irand(0, 4)];
    const bool gt = urand() < 0.2;
    const int noise_mode = (int)irand(0, 4);
    const int sms = std::vector<int>{1, 3, 8, 132}[irand(0, 3)];
    const std::string kind = urand() < 0.05 ? "allneg" : kinds[irand(0, 4)];
    run_case(dt, dta, B, K, V, T, topk, topp, w, gt, noise_mode, sms, kind, urand() < 0.5, irand(0, 1) ? 0 : irand(1, 9),
             irand(0, 1) ? 0 : irand(1, 7), c % 4);
  }
  // Many rows through the persistent filter grid: a tiny L2 puts several rows on each block
  // (with skipped rows from valid_lengths in between), every filter mode and dtype.
  for (int c = 0; fixed && c < 6; ++c) {
    const apd_dtype dt = dts[c % 3];
    const int64_t topk = c % 3 == 1 ? 0 : 7;
    const double topp = c % 3 == 0 ? 1.0 : 0.8;
    run_case(dt, dt, 3, 40, c < 3 ? 111 : 1000, c % 2 ? 0.0 : 0.7, topk, topp, 0.5, false, 0, 8, c % 2 ? "ties" : "peaky",
             true, c % 2, c % 3, 1 + (c & 1));
  }
  if (fixed && emu::g_filter_looped == 0) fail("no filter launch had fewer blocks than rows");
  // Per-row knobs: random mixes (a twelfth as many cases, at least 6), then out-of-range values.
  const int nrows = std::max(6, n / 12);  // each case runs B + 2 calls per op: the costliest cases here
  for (int c = 0; random && c < nrows; ++c) {
    const apd_dtype dt = dts[irand(0, 2)];
    const apd_dtype dta = urand() < 0.6 ? dt : dts[irand(0, 2)];
    const int64_t V = Vs[irand(2, 9)];
    const std::string kind = urand() < 0.05 ? "allneg" : kinds[irand(0, 4)];
    run_rows_case(dt, dta, irand(2, 4), irand(1, 4), V, (int)irand(0, 4), std::vector<int>{1, 3, 8, 132}[irand(0, 3)],
                  kind, urand() < 0.5, (int)irand(0, 3));
  }
  if (fixed) rows_robustness_checks();
  printf("%d checks, %d failures, %ld launches (filter: %ld, %ld with several rows per block)\n", checks, failures,
         emu::g_launches, emu::g_filter_launches, emu::g_filter_looped);
  return failures != 0;
}
