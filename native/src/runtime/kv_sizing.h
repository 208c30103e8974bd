#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace kiln {

// How the caller asked for the KV cache to be sized. The first one set wins: an explicit page
// count, then a byte budget, then a fraction of the memory the backend reports as available.
struct KvSizingOptions {
  int64_t pages = 0;             // 0: not given
  int64_t bytes = 0;             // 0: not given
  double memory_fraction = 0.0;  // 0: not given; else in (0, 1]
};

// What the backend can offer the cache, measured after its weights and scratch are in place.
struct KvMemoryBudget {
  int64_t available_bytes = 0;    // what memory_fraction is a fraction of
  std::string available_what;     // e.g. "free GPU memory after weights and scratch", for messages
  double default_fraction = 0.0;  // used when no option is given; 0: use default_pages instead
  int64_t default_pages = 0;      // used when no option and no default fraction apply
  std::string default_what;       // what default_pages is, for messages
  // Most pages worth taking from a fraction (0: no cap). The CPU cache is ordinary process memory
  // that is zeroed and touched at start, so it takes no more than the configured batch can use.
  int64_t fraction_cap_pages = 0;
};

struct KvCacheSize {
  int64_t pages = 0;
  int64_t page_bytes = 0;  // keys and values of one page across all layers
  int64_t bytes = 0;       // pages * page_bytes
  std::string basis;       // how the count was reached, for the start-up log
};

// Keys and values of `page_size` positions in every layer.
int64_t kv_page_bytes(int64_t layers, int64_t page_size, int64_t kv_dim, DType dtype);

// Throws an Error naming the option when a value is out of range: pages and bytes must not be
// negative, the fraction must lie in (0, 1] when set (NaN is refused).
void check_kv_sizing_options(const KvSizingOptions& options);

// The page count for `options` within `budget`; throws an Error saying what decided the count when
// it cannot hold `min_pages` (one sequence of the longest allowed length) or exceeds the int32 page
// ids of the block tables.
KvCacheSize size_kv_cache(const KvSizingOptions& options, const KvMemoryBudget& budget, int64_t page_bytes,
                          int64_t min_pages);

// Memory this process may use on the host: physical memory, or the cgroup's limit when lower.
int64_t host_memory_bytes();

}  // namespace kiln
