#include "runtime/kv_sizing.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace kiln {

namespace {

std::string gib(int64_t bytes) {
  char out[32];
  std::snprintf(out, sizeof out, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return out;
}

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

int64_t cgroup_limit_bytes() {
  // cgroup v2 first, then v1; "max" (or a v1 value near 2^63) means no limit.
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    std::string text;
    if (!(in >> text) || text == "max") continue;
    try {
      const long long v = std::stoll(text);
      if (v > 0 && v < (1LL << 60)) return v;
    } catch (const std::exception&) {
      continue;
    }
  }
  return 0;
}

}  // namespace

int64_t kv_page_bytes(int64_t layers, int64_t page_size, int64_t kv_dim, DType dtype) {
  return 2 * layers * page_size * kv_dim * static_cast<int64_t>(dtype_size(dtype));
}

void check_kv_sizing_options(const KvSizingOptions& o) {
  if (o.pages < 0) throw Error("serving options: kvCachePages (" + std::to_string(o.pages) + ") must be positive");
  if (o.bytes < 0) throw Error("serving options: kvCacheBytes (" + std::to_string(o.bytes) + ") must be positive");
  const double f = o.memory_fraction;
  if (f != 0.0 && !(f > 0.0 && f <= 1.0)) {
    throw Error("serving options: kvMemoryFraction (" + number(f) + ") must be a number in (0, 1]");
  }
}

KvCacheSize size_kv_cache(const KvSizingOptions& o, const KvMemoryBudget& budget, int64_t page_bytes, int64_t min_pages) {
  check_kv_sizing_options(o);
  if (page_bytes < 1) throw Error("KV cache: a page must take at least one byte");
  KvCacheSize size;
  size.page_bytes = page_bytes;
  const auto from_fraction = [&](double fraction, const char* name) {
    const double share = fraction * static_cast<double>(std::max<int64_t>(budget.available_bytes, 0));
    int64_t pages = static_cast<int64_t>(std::floor(share / static_cast<double>(page_bytes)));
    size.basis = std::string(name) + " " + number(fraction) + " of " + gib(budget.available_bytes) + " " + budget.available_what;
    if (budget.fraction_cap_pages > 0 && pages > budget.fraction_cap_pages) {
      pages = budget.fraction_cap_pages;
      size.basis += ", capped at " + budget.default_what;
    }
    return pages;
  };
  if (o.pages > 0) {
    size.pages = o.pages;
    size.basis = "kvCachePages";
  } else if (o.bytes > 0) {
    size.pages = o.bytes / page_bytes;
    size.basis = "kvCacheBytes " + std::to_string(o.bytes);
  } else if (o.memory_fraction > 0) {
    size.pages = from_fraction(o.memory_fraction, "kvMemoryFraction");
  } else if (budget.default_fraction > 0) {
    size.pages = from_fraction(budget.default_fraction, "default kvMemoryFraction");
  } else {
    size.pages = budget.default_pages;
    size.basis = "default: " + budget.default_what;
  }
  // Block tables hold int32 page ids.
  size.pages = std::min<int64_t>(size.pages, std::numeric_limits<int32_t>::max());
  // One sequence of the longest allowed length must always fit, or preemption could not help it.
  if (size.pages < min_pages) {
    throw Error("KV cache: " + size.basis + " gives " + std::to_string(size.pages) + " pages of " +
                std::to_string(page_bytes) + " bytes; one sequence of maxSeqLen needs " + std::to_string(min_pages));
  }
  size.bytes = size.pages * page_bytes;
  return size;
}

int64_t host_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  int64_t bytes = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  const int64_t limit = cgroup_limit_bytes();
  if (limit > 0 && (bytes == 0 || limit < bytes)) bytes = limit;
  return bytes;
}

}  // namespace kiln
