#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace kiln {

// Owns the pages of the paged KV cache: which are free, which sequences reference which (a block
// table per sequence, kept by the caller as a vector of page ids), and which unreferenced pages
// still hold a full page of tokens that a later prompt with the same prefix can reuse.
//
// Every page is in exactly one state: used (referenced by at least one block table), cached
// (unreferenced, contents reusable, evictable in least-recently-released order) or free.
// used + cached + free == total at all times; audit() recomputes this from the pages themselves.
//
// Prefix reuse works on full pages only: a page's key is a hash chained over the token ids of all
// pages before it and its own, so a page is shared only when the whole prefix up to it matches
// (its own tokens are compared exactly, too). Shared pages are read-only by construction: a
// sequence only ever writes positions past its shared prefix, which start a fresh page.
class BlockManager {
 public:
  BlockManager(int64_t pages, int64_t page_size);

  int64_t page_size() const { return page_size_; }
  int64_t total_pages() const { return static_cast<int64_t>(pages_.size()); }
  int64_t used_pages() const { return used_; }
  int64_t cached_pages() const { return static_cast<int64_t>(evictable_.size()); }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }
  // Pages a sequence could take now: free ones plus evictable cached ones.
  int64_t available_pages() const { return free_pages() + cached_pages(); }

  // Pages a table of `have` pages must add to cover `positions` positions.
  int64_t pages_to_cover(int64_t have, int64_t positions) const;

  // Appends to an empty `table` the longest run of cached full pages matching the first tokens of
  // `tokens` (at most `limit` of them), taking a reference on each; returns the tokens they hold.
  int64_t share_cached_prefix(std::vector<int32_t>& table, const std::vector<int32_t>& tokens, int64_t limit);

  // Grows `table` to cover `positions` positions, evicting cached pages when no free one is left.
  // Returns false and changes nothing when not enough pages are available.
  bool grow(std::vector<int32_t>& table, int64_t positions);

  // Makes the table's full pages among the first `computed` positions reusable by later prompts.
  // `published` counts the table's pages already handled and is advanced.
  void publish_full_pages(const std::vector<int32_t>& table, const std::vector<int32_t>& tokens, int64_t computed,
                          int64_t& published);

  // Drops the table's references and empties it. Pages are released last-first, so a prompt's tail
  // is evicted before its head, which more prompts share.
  void release(std::vector<int32_t>& table);

  // Prompt tokens looked up in the prefix cache and found there, since construction.
  int64_t prefix_lookup_tokens() const { return lookup_tokens_; }
  int64_t prefix_hit_tokens() const { return hit_tokens_; }

  // Recounts used/cached/free from the pages and checks them against the counters, the free list,
  // the eviction list and the hash index; throws an Error describing the first mismatch.
  void audit() const;

 private:
  struct Page {
    int32_t refs = 0;
    bool keyed = false;  // in the hash index (its contents are the cached copy of a prefix page)
    uint64_t key = 0;
    uint64_t parent_key = 0;
    std::vector<int32_t> tokens;  // the page's own token ids, compared exactly on a hash match
    std::list<int32_t>::iterator lru;
  };

  static uint64_t chain_key(uint64_t parent, const int32_t* tokens, int64_t count);
  int32_t take_page();
  void add_ref(int32_t page);

  int64_t page_size_;
  std::vector<Page> pages_;
  std::vector<int32_t> free_;
  std::list<int32_t> evictable_;  // front = released longest ago
  std::unordered_map<uint64_t, int32_t> index_;
  int64_t used_ = 0;
  int64_t lookup_tokens_ = 0;
  int64_t hit_tokens_ = 0;
};

}  // namespace kiln
