/* apd.h and modes.h are plain C: this file compiles as C, drafts one token through the C ABI and
 * asks modes.h which mode that call ran. */
#include <stdio.h>

#include "apd/apd.h"
#include "apd/modes.h"

int main(void) {
  float logits[5] = {0.0f, 3.0f, 1.0f, 3.0f, -1.0f};
  int64_t token = -1;
  float logprob = 0.0f;
  apd_sample_draft_args args = {0};
  args.batch = 1;
  args.window = 1;
  args.vocab = 5;
  args.dllm.data = logits;
  args.dllm.dtype = APD_FLOAT32;
  args.dllm.stride_b = 5;
  args.dllm.stride_k = 5;
  args.filter.temperature = 0.0; /* greedy: first maximum */
  args.filter.top_p = 1.0;
  args.tokens = &token;
  args.logprobs = &logprob;
  apd_status st = apd_sample_draft_cpu(&args);
  printf("status %s, token %lld, logprob %f\n", apd_status_string(st), (long long)token, logprob);
  if (apd_draft_mode_of(&args.filter, &args.noise) != APD_DRAFT_ARGMAX) return 1;
  if (apd_filter_active(&args.filter, args.vocab)) return 1;
  args.filter.top_k = 2;
  if (!apd_filter_active(&args.filter, args.vocab)) return 1;
  if (apd_target_mode_of(1, &args.filter, &args.noise) != APD_TARGET_ARGMAX_MIX) return 1;
  return st == APD_OK && token == 1 ? 0 : 1;
}
