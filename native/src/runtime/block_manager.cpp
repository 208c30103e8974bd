#include "runtime/block_manager.h"

#include <algorithm>

#include "core/error.h"

namespace kiln {

namespace {

constexpr uint64_t kChainSeed = 0x6b696c6e2d6b7663ULL;  // "kiln-kvc": the parent key of page 0

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

BlockManager::BlockManager(int64_t pages, int64_t page_size) : page_size_(page_size) {
  if (pages < 1 || page_size < 1) {
    throw Error("block manager: pages (" + std::to_string(pages) + ") and page size (" + std::to_string(page_size) +
                ") must be positive");
  }
  pages_.resize(static_cast<size_t>(pages));
  // Lowest ids first, so a fresh engine fills its cache from the start.
  for (int64_t p = pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

uint64_t BlockManager::chain_key(uint64_t parent, const int32_t* tokens, int64_t count) {
  uint64_t h = mix(parent);
  for (int64_t i = 0; i < count; ++i) h = mix(h ^ static_cast<uint32_t>(tokens[i]));
  return h;
}

int64_t BlockManager::pages_to_cover(int64_t have, int64_t positions) const {
  return std::max<int64_t>(0, (positions + page_size_ - 1) / page_size_ - have);
}

void BlockManager::add_ref(int32_t page) {
  Page& p = pages_[static_cast<size_t>(page)];
  if (p.refs == 0) {
    if (p.keyed) evictable_.erase(p.lru);
    ++used_;
  }
  ++p.refs;
}

int32_t BlockManager::take_page() {
  int32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    // Evict the cached page released longest ago: its prefix is the least likely to come back.
    id = evictable_.front();
    evictable_.pop_front();
    Page& victim = pages_[static_cast<size_t>(id)];
    index_.erase(victim.key);
    victim.keyed = false;
    victim.tokens.clear();
  }
  Page& p = pages_[static_cast<size_t>(id)];
  p.refs = 1;
  ++used_;
  return id;
}

int64_t BlockManager::share_cached_prefix(std::vector<int32_t>& table, const std::vector<int32_t>& tokens,
                                          int64_t limit) {
  if (!table.empty()) throw Error("block manager: prefix sharing needs an empty block table");
  limit = std::min<int64_t>(limit, static_cast<int64_t>(tokens.size()));
  lookup_tokens_ += std::max<int64_t>(limit, 0);
  uint64_t parent = kChainSeed;
  for (int64_t start = 0; start + page_size_ <= limit; start += page_size_) {
    const int32_t* page_tokens = tokens.data() + start;
    const uint64_t key = chain_key(parent, page_tokens, page_size_);
    const auto it = index_.find(key);
    if (it == index_.end()) break;
    const Page& p = pages_[static_cast<size_t>(it->second)];
    if (p.parent_key != parent || !std::equal(p.tokens.begin(), p.tokens.end(), page_tokens)) break;
    add_ref(it->second);
    table.push_back(it->second);
    parent = key;
  }
  const int64_t hit = static_cast<int64_t>(table.size()) * page_size_;
  hit_tokens_ += hit;
  return hit;
}

bool BlockManager::grow(std::vector<int32_t>& table, int64_t positions) {
  const int64_t need = pages_to_cover(static_cast<int64_t>(table.size()), positions);
  if (need > available_pages()) return false;
  for (int64_t i = 0; i < need; ++i) table.push_back(take_page());
  return true;
}

void BlockManager::publish_full_pages(const std::vector<int32_t>& table, const std::vector<int32_t>& tokens,
                                      int64_t computed, int64_t& published) {
  const int64_t full = std::min<int64_t>(computed / page_size_, static_cast<int64_t>(table.size()));
  for (; published < full; ++published) {
    const auto i = static_cast<size_t>(published);
    Page& p = pages_[static_cast<size_t>(table[i])];
    if (p.keyed) continue;  // a shared page, already the cached copy
    const uint64_t parent = i == 0 ? kChainSeed : pages_[static_cast<size_t>(table[i - 1])].key;
    const int32_t* page_tokens = tokens.data() + published * page_size_;
    const uint64_t key = chain_key(parent, page_tokens, page_size_);
    // When another page already holds this prefix (two identical prompts computed side by side),
    // that one stays the cached copy and this page is freed normally once released; its key is
    // still recorded so the pages after it chain correctly.
    p.key = key;
    p.parent_key = parent;
    if (index_.count(key)) continue;
    p.keyed = true;
    p.tokens.assign(page_tokens, page_tokens + page_size_);
    index_[key] = table[i];
  }
}

void BlockManager::release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    Page& p = pages_[static_cast<size_t>(*it)];
    if (p.refs <= 0) throw Error("block manager: page " + std::to_string(*it) + " released more often than taken");
    if (--p.refs > 0) continue;
    --used_;
    if (p.keyed) {
      evictable_.push_back(*it);
      p.lru = std::prev(evictable_.end());
    } else {
      p.key = 0;
      free_.push_back(*it);
    }
  }
  table.clear();
}

void BlockManager::audit() const {
  int64_t used = 0, keyed_idle = 0, idle = 0;
  for (size_t i = 0; i < pages_.size(); ++i) {
    const Page& p = pages_[i];
    if (p.refs < 0) throw Error("block manager audit: page " + std::to_string(i) + " has negative references");
    if (p.refs > 0) ++used;
    else if (p.keyed) ++keyed_idle;
    else ++idle;
    if (p.keyed) {
      const auto it = index_.find(p.key);
      if (it == index_.end() || it->second != static_cast<int32_t>(i)) {
        throw Error("block manager audit: keyed page " + std::to_string(i) + " is not in the hash index");
      }
    }
  }
  if (used != used_) throw Error("block manager audit: " + std::to_string(used) + " pages referenced, counter says " + std::to_string(used_));
  if (keyed_idle != cached_pages()) {
    throw Error("block manager audit: " + std::to_string(keyed_idle) + " idle cached pages, eviction list holds " +
                std::to_string(cached_pages()));
  }
  if (idle != free_pages()) {
    throw Error("block manager audit: " + std::to_string(idle) + " idle pages, free list holds " + std::to_string(free_pages()));
  }
  if (static_cast<int64_t>(index_.size()) > total_pages()) throw Error("block manager audit: hash index is larger than the cache");
  if (used_ + cached_pages() + free_pages() != total_pages()) throw Error("block manager audit: pages do not add up");
}

}  // namespace kiln
