#pragma once

#include <cstdint>
#include <vector>

namespace kiln {

// One sequence's part of a forward step: `n` tokens at positions [start, start + n), written into
// and attending through the pages of `block_table` (which must cover positions up to start + n).
// A prefill chunk has n > 1 (or a 1-token prompt), a decode step n = 1.
struct SequenceSlice {
  int64_t start = 0;
  int64_t n = 0;
  const int32_t* block_table = nullptr;
  bool wants_logits = false;  // logits of the slice's last token (its next-token distribution)
};

// A mixed batch: the tokens of every slice, concatenated in slice order.
struct ForwardBatch {
  std::vector<int32_t> tokens;
  std::vector<SequenceSlice> slices;

  void add(const int32_t* ids, int64_t n, int64_t start, const int32_t* block_table, bool wants_logits) {
    tokens.insert(tokens.end(), ids, ids + n);
    slices.push_back(SequenceSlice{start, n, block_table, wants_logits});
  }
  int64_t logit_rows() const {
    int64_t rows = 0;
    for (const auto& s : slices) rows += s.wants_logits ? 1 : 0;
    return rows;
  }
};

}  // namespace kiln
