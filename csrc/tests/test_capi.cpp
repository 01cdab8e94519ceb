// C++ tests of libapd through its C ABI and shared headers (no torch): the noise generator's
// known answers, the math helpers, both CPU ops against brute force on small inputs, and the
// vocabulary-parallel partial ops on slices of a row.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "apd/apd.h"
#include "apd/math.h"
#include "apd/philox.h"

static int g_failed = 0, g_passed = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (cond) {                                                            \
      ++g_passed;                                                          \
    } else {                                                               \
      ++g_failed;                                                          \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

static void test_philox_known_answers() {
  // Random123's kat_vectors for philox4x32_10.
  apd::Philox4 a = apd::philox4x32_10(0, 0, 0, 0, 0, 0);
  CHECK(a.x[0] == 0x6627e8d5u && a.x[1] == 0xe169c58du && a.x[2] == 0xbc57ac4cu && a.x[3] == 0x9b00dbd8u);
  const uint32_t f = 0xffffffffu;
  apd::Philox4 b = apd::philox4x32_10(f, f, f, f, f, f);
  CHECK(b.x[0] == 0x408f276du && b.x[1] == 0x41c83b0eu && b.x[2] == 0xa20bc7c6u && b.x[3] == 0x6d5451fdu);
  apd::Philox4 c = apd::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  CHECK(c.x[0] == 0xd16cfe09u && c.x[1] == 0x94fdccebu && c.x[2] == 0x5001e420u && c.x[3] == 0x24126ea1u);
}

static void test_uniform_and_gumbel_range() {
  CHECK(apd::uniform_from_bits(0u) == std::ldexp(1.0f, -24));
  CHECK(apd::uniform_from_bits(0xffffffffu) == 1.0f - std::ldexp(1.0f, -24));
  const float gmin = apd::gumbel_from_uniform(apd::uniform_from_bits(0u));
  const float gmax = apd::gumbel_from_uniform(apd::uniform_from_bits(0xffffffffu));
  CHECK(std::isfinite(gmin) && std::isfinite(gmax));
  CHECK(gmin >= apd::kGumbelMin && gmax <= apd::kGumbelMax);
}

static void test_fast_math() {
  double worst_log = 0.0, worst_exp = 0.0;
  for (double x = 1e-30; x < 1e30; x *= 1.0137) {
    const float xf = static_cast<float>(x);
    const double err = std::fabs(apd::fast_log(xf) - std::log(static_cast<double>(xf)));
    worst_log = std::max(worst_log, err / std::max(1.0, std::fabs(std::log(static_cast<double>(xf)))));
  }
  for (float x = -87.0f; x <= 0.0f; x += 0.00731f) {
    const double ref = std::exp(static_cast<double>(x));
    worst_exp = std::max(worst_exp, std::fabs(apd::fast_exp_nonpos(x) - ref) / ref);
  }
  CHECK(worst_log < 3e-7);
  CHECK(worst_exp < 3e-7);
  CHECK(apd::fast_exp_nonpos(-std::numeric_limits<float>::infinity()) == 0.0f);
  // half / bfloat16 conversions
  CHECK(apd::f16_bits_to_float(0x3c00) == 1.0f);
  CHECK(apd::f16_bits_to_float(0xc000) == -2.0f);
  CHECK(apd::f16_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(std::isinf(apd::f16_bits_to_float(0x7c00)) && apd::f16_bits_to_float(0xfc00) < 0);
  CHECK(std::isnan(apd::f16_bits_to_float(0x7e00)));
  CHECK(apd::bf16_bits_to_float(0x3f80) == 1.0f);
}

static void test_min_rank_is_conservative() {
  for (float needed = -4.0f; needed < 18.0f; needed += 0.37f) {
    const uint32_t k = apd::min_rank_for_gumbel_above(needed);
    if (k == 0) continue;
    // every rank below k has noise below `needed`
    const float g_below = apd::gumbel_from_uniform(apd::uniform_from_bits((k - 1) << 9));
    CHECK(g_below < needed);
  }
}

static float gumbel_at(uint64_t seed, uint64_t offset, uint32_t i, uint32_t v) {
  const apd::Philox4 p = apd::noise_bits4(seed, offset, i, v & ~3u);
  return apd::gumbel_from_uniform(apd::uniform_from_bits(p.x[v & 3]));
}

static void test_sample_draft_brute_force() {
  const int64_t B = 2, K = 3, V = 203;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(B * K * V);
  for (float& x : logits) x = normal(rng);
  std::vector<int64_t> tokens(B * K);
  std::vector<float> logprobs(B * K);
  for (double T : {0.0, 0.5, 1.0}) {
    apd_sample_draft_args a{};
    a.batch = B, a.window = K, a.vocab = V;
    a.dllm = apd_logits{logits.data(), APD_FLOAT32, K * V, V};
    a.filter = apd_filter{T, 0, 1.0};
    a.noise.seed_value = 77;
    a.noise.offset_value = 5;
    a.tokens = tokens.data();
    a.logprobs = logprobs.data();
    CHECK(apd_sample_draft_cpu(&a) == APD_OK);
    const float inv_t = T == 0.0 ? 1.0f : static_cast<float>(1.0 / T);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < K; ++i) {
        const float* row = &logits[(b * K + i) * V];
        int64_t best = 0;
        float best_score = -std::numeric_limits<float>::infinity();
        double z = 0.0;
        for (int64_t v = 0; v < V; ++v) {
          float s = row[v] * inv_t;
          if (T > 0) s += gumbel_at(77 + b, 5, static_cast<uint32_t>(i), static_cast<uint32_t>(v));
          if (s > best_score) best_score = s, best = v;
          z += std::exp(static_cast<double>(row[v]));
        }
        CHECK(tokens[b * K + i] == best);
        CHECK(std::fabs(logprobs[b * K + i] - (row[best] - std::log(z))) < 1e-4);
      }
  }
}

static void test_mixture_accept_prefix_and_lengths() {
  const int64_t B = 2, K = 4, V = 16;
  std::vector<float> d(B * K * V, 0.0f), a(B * K * V, -4.0f);
  const int64_t target[4] = {3, 4, 5, 6};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < K; ++i) a[(b * K + i) * V + target[i]] = 4.0f;
  std::vector<int64_t> draft = {9, 4, 1, 6,   // n = 2: position 2 disagrees
                                3, 4, 5, 99};  // out of range at 3, but valid_lengths caps at 2
  std::vector<int64_t> valid = {4, 2};
  std::vector<int64_t> n(B), tgt(B * K);
  std::vector<float> lpd(B * K), lpa(B * K), lpm(B * K);
  apd_mixture_accept_args m{};
  m.batch = B, m.window = K, m.vocab = V;
  m.dllm = apd_logits{d.data(), APD_FLOAT32, K * V, V};
  m.verifier = apd_logits{a.data(), APD_FLOAT32, K * V, V};
  m.draft_tokens = draft.data();
  m.draft_stride_b = K;
  m.valid_lengths = valid.data();
  m.mixture_weight = 0.25;
  m.greedy_target = 1;
  m.filter = apd_filter{1.0, 0, 1.0};
  m.num_accepted = n.data(), m.target_tokens = tgt.data();
  m.logp_dllm = lpd.data(), m.logp_verifier = lpa.data(), m.logp_mixture = lpm.data();
  CHECK(apd_mixture_accept_cpu(&m) == APD_OK);
  CHECK(n[0] == 2 && n[1] == 2);
  CHECK(tgt[0] == 3 && tgt[3] == 6 && tgt[K + 1] == 4 && tgt[K + 2] == -1 && tgt[K + 3] == -1);
  CHECK(std::fabs(lpd[0] + std::log(16.0f)) < 1e-5);  // uniform dLLM row
  valid[1] = 4;  // now the out-of-range token at position 3 ends the prefix there
  CHECK(apd_mixture_accept_cpu(&m) == APD_OK);
  CHECK(n[1] == 3 && std::isnan(lpa[K + 3]));
}

// The partial ops on slices [0, 100) and [100, 203) of a row against brute force at global ids:
// best (score, global id) with the noise of the global id, lse state of the kept D, kept value,
// and the mixture's values at a global draft token (-inf outside the slice); a given threshold.
static void test_partial_brute_force() {
  const int64_t B = 2, K = 3, V = 203;
  const float kInf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> d(B * K * V), a(B * K * V);
  for (float& x : d) x = normal(rng);
  for (float& x : a) x = normal(rng);
  const int64_t cuts[3] = {0, 100, V};
  for (double T : {0.0, 0.5})
    for (bool given : {false, true})
      for (int s = 0; s < 2; ++s) {
        const int64_t lo = cuts[s], n = cuts[s + 1] - lo;
        std::vector<float> thr(B * K, 0.5f);
        std::vector<int64_t> tok(B * K), tgt(B * K);
        std::vector<float> st(B * K * APD_DRAFT_NSTATS), mst(B * K * APD_MIXTURE_NSTATS);
        apd_sample_draft_partial_args pa{};
        pa.batch = B, pa.window = K, pa.vocab = n, pa.vocab_offset = lo;
        pa.dllm = apd_logits{d.data() + lo, APD_FLOAT32, K * V, V};
        pa.filter = apd_filter{T, 0, 1.0};
        pa.noise.seed_value = 77, pa.noise.offset_value = 5;
        pa.threshold = given ? thr.data() : nullptr;
        pa.tokens = tok.data(), pa.stats = st.data();
        CHECK(apd_sample_draft_partial_cpu(&pa) == APD_OK);
        // drafts: one in this slice, one in the other, one outside the vocabulary
        std::vector<int64_t> draft(B * K);
        for (int64_t r = 0; r < B * K; ++r) draft[r] = r % 3 == 0 ? lo + 7 : r % 3 == 1 ? (lo + n + 3) % V : V + 4;
        apd_mixture_accept_partial_args pm{};
        pm.batch = B, pm.window = K, pm.vocab = n, pm.vocab_offset = lo;
        pm.dllm = pa.dllm;
        pm.verifier = apd_logits{a.data() + lo, APD_FLOAT32, K * V, V};
        pm.draft_tokens = draft.data(), pm.draft_stride_b = K;
        pm.mixture_weight = 0.25;
        pm.filter = pa.filter, pm.noise = pa.noise, pm.threshold = pa.threshold;
        pm.target_tokens = tgt.data(), pm.stats = mst.data();
        CHECK(apd_mixture_accept_partial_cpu(&pm) == APD_OK);
        const float inv_t = T == 0.0 ? 1.0f : static_cast<float>(1.0 / T);
        const float tau = given ? 0.5f : -kInf;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < K; ++i) {
            const int64_t r = b * K + i;
            const float* dr = &d[r * V];
            const float* ar = &a[r * V];
            int64_t best = -1, tbest = -1;
            float best_score = -kInf, tbest_score = -kInf, mx = -kInf;
            for (int64_t v = lo; v < lo + n; ++v) {
              const float x = dr[v] * inv_t;
              if (!(x >= tau)) continue;
              const float g = T > 0 ? gumbel_at(77 + b, 5, static_cast<uint32_t>(i), static_cast<uint32_t>(v)) : 0.0f;
              const float sc = T > 0 ? x + g : x;
              if (sc > best_score) best_score = sc, best = v;
              const float mix = 0.25f * dr[v] + 0.75f * ar[v];
              const float tsc = T > 0 ? mix * inv_t + g : mix;
              if (tsc > tbest_score) tbest_score = tsc, tbest = v;
              mx = std::max(mx, dr[v]);
            }
            double z = 0.0;
            for (int64_t v = lo; v < lo + n; ++v)
              if (dr[v] * inv_t >= tau) z += std::exp(static_cast<double>(dr[v] - mx));
            const float* q = &st[r * APD_DRAFT_NSTATS];
            if (best < 0) {  // nothing kept (given threshold above the slice): first id, -inf, (-inf, 0)
              CHECK(tok[r] == lo && q[APD_DRAFT_STAT_SCORE] == -kInf && q[APD_DRAFT_STAT_LSE_SUM] == 0.0f);
              continue;
            }
            CHECK(tok[r] == best);
            CHECK(std::fabs(q[APD_DRAFT_STAT_SCORE] - best_score) < 1e-4f);
            CHECK(q[APD_DRAFT_STAT_LSE_MAX] == mx);
            CHECK(std::fabs(q[APD_DRAFT_STAT_LSE_SUM] - z) < 1e-4 * z);
            CHECK(q[APD_DRAFT_STAT_VALUE] == dr[best]);
            const float* m = &mst[r * APD_MIXTURE_NSTATS];
            CHECK(tgt[r] == tbest);
            CHECK(std::fabs(m[APD_MIXTURE_STAT_SCORE] - tbest_score) < 1e-4f);
            CHECK(m[APD_MIXTURE_STAT_DLLM_MAX] == mx);
            const int64_t dt = draft[r];
            if (dt >= lo && dt < lo + n) {
              const bool keep = dr[dt] * inv_t >= tau;
              CHECK(m[APD_MIXTURE_STAT_DLLM_AT] == (keep ? dr[dt] : -kInf));
              CHECK(m[APD_MIXTURE_STAT_VERIFIER_AT] == ar[dt]);
              CHECK(m[APD_MIXTURE_STAT_MIXTURE_AT] == (keep ? 0.25f * dr[dt] + 0.75f * ar[dt] : -kInf));
            } else {
              CHECK(m[APD_MIXTURE_STAT_DLLM_AT] == -kInf && m[APD_MIXTURE_STAT_VERIFIER_AT] == -kInf &&
                    m[APD_MIXTURE_STAT_MIXTURE_AT] == -kInf);
            }
          }
      }
}

static void test_partial_invalid_arguments() {
  float x[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  int64_t tok = 0, draft = 5;
  float st[APD_MIXTURE_NSTATS];
  apd_sample_draft_partial_args a{};
  a.batch = 1, a.window = 1, a.vocab = 8, a.vocab_offset = 4;
  a.dllm = apd_logits{x, APD_FLOAT32, 8, 8};
  a.filter = apd_filter{0.0, 0, 1.0};
  a.tokens = &tok, a.stats = st;
  CHECK(apd_sample_draft_partial_cpu(&a) == APD_OK);
  CHECK(tok == 11 && st[APD_DRAFT_STAT_SCORE] == 7.0f && st[APD_DRAFT_STAT_VALUE] == 7.0f);
  apd_sample_draft_partial_args bad = a;
  bad.vocab_offset = 2;
  CHECK(apd_sample_draft_partial_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.vocab_offset = -4;
  CHECK(apd_sample_draft_partial_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.vocab_offset = (int64_t{1} << 34) - 4;  // + vocab 8 > 2^34 noise counters
  CHECK(apd_sample_draft_partial_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.stats = nullptr;
  CHECK(apd_sample_draft_partial_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.filter.temperature = 1.0, bad.noise.seed_per_row = 1;  // per-row seeds without a pointer
  CHECK(apd_sample_draft_partial_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  CHECK(apd_sample_draft_partial_cpu(nullptr) == APD_ERROR_INVALID_ARGUMENT);
  apd_mixture_accept_partial_args m{};
  m.batch = 1, m.window = 1, m.vocab = 8, m.vocab_offset = 4;
  m.dllm = m.verifier = a.dllm;
  m.draft_tokens = &draft, m.draft_stride_b = 1;
  m.mixture_weight = 0.5, m.filter = a.filter;
  m.target_tokens = &tok, m.stats = st;
  CHECK(apd_mixture_accept_partial_cpu(&m) == APD_OK);
  CHECK(tok == 11 && st[APD_MIXTURE_STAT_DLLM_AT] == 1.0f && st[APD_MIXTURE_STAT_MIXTURE_AT] == 1.0f);
  apd_mixture_accept_partial_args mbad = m;
  mbad.vocab_offset = 6;
  CHECK(apd_mixture_accept_partial_cpu(&mbad) == APD_ERROR_INVALID_ARGUMENT);
  mbad = m, mbad.mixture_weight = 2.0;
  CHECK(apd_mixture_accept_partial_cpu(&mbad) == APD_ERROR_INVALID_ARGUMENT);
  mbad = m, mbad.draft_tokens = nullptr;
  CHECK(apd_mixture_accept_partial_cpu(&mbad) == APD_ERROR_INVALID_ARGUMENT);
  CHECK(apd_mixture_accept_partial_cpu(nullptr) == APD_ERROR_INVALID_ARGUMENT);
#if !defined(APD_WITH_CUDA)
  CHECK(apd_sample_draft_partial_cuda(&a, nullptr, 0, nullptr) == APD_ERROR_UNSUPPORTED);
  CHECK(apd_mixture_accept_partial_cuda(&m, nullptr, 0, nullptr) == APD_ERROR_UNSUPPORTED);
#endif
}

static void test_invalid_arguments() {
  float x[4] = {0, 1, 2, 3};
  int64_t tok;
  float lp;
  apd_sample_draft_args a{};
  a.batch = 1, a.window = 1, a.vocab = 4;
  a.dllm = apd_logits{x, APD_FLOAT32, 4, 4};
  a.filter = apd_filter{1.0, 0, 1.0};
  a.tokens = &tok, a.logprobs = &lp;
  CHECK(apd_sample_draft_cpu(&a) == APD_OK);
  apd_sample_draft_args bad = a;
  bad.filter.temperature = -1.0;
  CHECK(apd_sample_draft_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.filter.top_p = 0.0;
  CHECK(apd_sample_draft_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.vocab = 0;
  CHECK(apd_sample_draft_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.dllm.dtype = APD_FLOAT64;
  CHECK(apd_sample_draft_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  bad = a, bad.tokens = nullptr;
  CHECK(apd_sample_draft_cpu(&bad) == APD_ERROR_INVALID_ARGUMENT);
  CHECK(apd_sample_draft_cpu(nullptr) == APD_ERROR_INVALID_ARGUMENT);
  CHECK(std::strcmp(apd_status_string(APD_ERROR_INVALID_ARGUMENT), "invalid argument") == 0);
#if !defined(APD_WITH_CUDA)
  CHECK(apd_has_cuda() == 0);
  CHECK(apd_sample_draft_cuda(&a, nullptr, 0, nullptr) == APD_ERROR_UNSUPPORTED);
#endif
}

// Per-row knobs (apd_filter's *_rows, mixture_weight_rows): each row of a mixed batch equals the
// call on that row alone with its knobs as scalars, and every row's values are checked on the CPU.
static void test_per_row_knobs() {
  const int64_t B = 5, K = 3, V = 301;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.5f);
  std::vector<float> d(B * K * V), a(B * K * V);
  for (float& x : d) x = normal(rng);
  for (float& x : a) x = normal(rng);
  const double temps[B] = {0.0, 0.7, 1.3, 0.0, 1.0};
  const int64_t top_ks[B] = {0, 5, 0, 3, V + 4};
  const double top_ps[B] = {1.0, 0.9, 0.5, 1.0, 0.3};
  const double weights[B] = {0.0, 0.5, 1.0, 0.7, 0.3};
  const int64_t seeds[B] = {3, -9, 1ll << 40, 77, 5};
  std::vector<int64_t> tok(B * K), n(B), tgt(B * K);
  std::vector<float> lp(B * K), lpd(B * K), lpa(B * K), lpm(B * K);

  apd_sample_draft_args s{};
  s.batch = B, s.window = K, s.vocab = V;
  s.dllm = apd_logits{d.data(), APD_FLOAT32, K * V, V};
  s.filter.temperature_rows = temps, s.filter.top_k_rows = top_ks, s.filter.top_p_rows = top_ps;
  s.filter.temperature = -1.0;  // ignored: every scalar has its rows
  s.filter.top_p = 1.0;
  const int64_t offsets[B] = {4, 0, 9, -3, 1ll << 33};  // per-row offsets: each row's own step count
  s.noise.seeds = seeds, s.noise.seed_per_row = 1, s.noise.offset = offsets, s.noise.offset_per_row = 1;
  s.tokens = tok.data(), s.logprobs = lp.data();
  CHECK(apd_sample_draft_cpu(&s) == APD_OK);

  apd_mixture_accept_args m{};
  m.batch = B, m.window = K, m.vocab = V;
  m.dllm = s.dllm;
  m.verifier = apd_logits{a.data(), APD_FLOAT32, K * V, V};
  m.draft_tokens = tok.data(), m.draft_stride_b = K;
  m.mixture_weight_rows = weights;
  m.filter = s.filter, m.noise = s.noise;
  m.num_accepted = n.data(), m.target_tokens = tgt.data();
  m.logp_dllm = lpd.data(), m.logp_verifier = lpa.data(), m.logp_mixture = lpm.data();
  CHECK(apd_mixture_accept_cpu(&m) == APD_OK);

  for (int64_t b = 0; b < B; ++b) {
    int64_t tok1[K], n1, tgt1[K];
    float lp1[K], lpd1[K], lpa1[K], lpm1[K];
    apd_sample_draft_args s1{};
    s1.batch = 1, s1.window = K, s1.vocab = V;
    s1.dllm = apd_logits{d.data() + b * K * V, APD_FLOAT32, K * V, V};
    s1.filter = apd_filter{temps[b], top_ks[b], top_ps[b], nullptr, nullptr, nullptr};
    s1.noise.seed_value = seeds[b], s1.noise.offset_value = offsets[b];
    s1.tokens = tok1, s1.logprobs = lp1;
    CHECK(apd_sample_draft_cpu(&s1) == APD_OK);
    apd_mixture_accept_args m1{};
    m1.batch = 1, m1.window = K, m1.vocab = V;
    m1.dllm = s1.dllm;
    m1.verifier = apd_logits{a.data() + b * K * V, APD_FLOAT32, K * V, V};
    m1.draft_tokens = tok1, m1.draft_stride_b = K;
    m1.mixture_weight = weights[b];
    m1.filter = s1.filter, m1.noise = s1.noise;
    m1.num_accepted = &n1, m1.target_tokens = tgt1;
    m1.logp_dllm = lpd1, m1.logp_verifier = lpa1, m1.logp_mixture = lpm1;
    CHECK(apd_mixture_accept_cpu(&m1) == APD_OK);
    CHECK(n1 == n[b]);
    for (int64_t i = 0; i < K; ++i) {
      const int64_t r = b * K + i;
      CHECK(tok1[i] == tok[r] && tgt1[i] == tgt[r]);
      CHECK(std::memcmp(&lp1[i], &lp[r], 4) == 0 && std::memcmp(&lpd1[i], &lpd[r], 4) == 0);
      CHECK(std::memcmp(&lpa1[i], &lpa[r], 4) == 0 && std::memcmp(&lpm1[i], &lpm[r], 4) == 0);
    }
  }
  // every row's values are checked (host memory): one bad row fails the call
  const double bad_temps[B] = {0.0, 0.7, -1.0, 0.0, 1.0};
  const double bad_ps[B] = {1.0, 0.9, 0.5, 0.0, 0.3};
  const double bad_weights[B] = {0.0, 0.5, 1.5, 0.7, 0.3};
  const int64_t bad_ks[B] = {0, -1, 0, 3, 4};
  apd_sample_draft_args sb = s;
  sb.filter.temperature_rows = bad_temps;
  CHECK(apd_sample_draft_cpu(&sb) == APD_ERROR_INVALID_ARGUMENT);
  sb = s, sb.filter.top_p_rows = bad_ps;
  CHECK(apd_sample_draft_cpu(&sb) == APD_ERROR_INVALID_ARGUMENT);
  sb = s, sb.filter.top_k_rows = bad_ks;
  CHECK(apd_sample_draft_cpu(&sb) == APD_ERROR_INVALID_ARGUMENT);
  apd_mixture_accept_args mb = m;
  mb.mixture_weight_rows = bad_weights;
  CHECK(apd_mixture_accept_cpu(&mb) == APD_ERROR_INVALID_ARGUMENT);
  mb = m, mb.mixture_weight_rows = nullptr, mb.mixture_weight = 0.5;  // back to one weight: fine
  CHECK(apd_mixture_accept_cpu(&mb) == APD_OK);
  sb = s, sb.noise.offset = nullptr;  // per-row offsets without a pointer
  CHECK(apd_sample_draft_cpu(&sb) == APD_ERROR_INVALID_ARGUMENT);
}

int main() {
  test_philox_known_answers();
  test_uniform_and_gumbel_range();
  test_fast_math();
  test_min_rank_is_conservative();
  test_sample_draft_brute_force();
  test_mixture_accept_prefix_and_lengths();
  test_invalid_arguments();
  test_partial_brute_force();
  test_partial_invalid_arguments();
  test_per_row_knobs();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
