#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln {

// A fixed set of worker threads created once; kernels split their work into chunks and run them on
// a chosen number of threads (the tactic decides how many), with the calling thread taking part.
class ThreadPool {
 public:
  // `threads` counts the calling thread; 0 means one per CPU the process may use (cpu_budget).
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(chunk) for every chunk in [0, chunks) using at most `width` threads; returns when all
  // chunks are done. Not reentrant: fn must not call run on the same pool.
  void run(int chunks, int width, const std::function<void(int)>& fn);

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int)>* job_ = nullptr;
  int chunks_ = 0;
  int next_chunk_ = 0;
  int active_width_ = 0;
  int busy_workers_ = 0;
  unsigned long generation_ = 0;
  bool stopping_ = false;
};

// Elements a chunk of an element-wise conversion takes (an 8B checkpoint is ~8G elements).
constexpr size_t kElementChunk = size_t{1} << 20;

// fn(begin, end) over [0, count) in chunks of `chunk` on all the pool's threads, or in one call
// without a pool (or with one chunk): for loops whose elements are independent (conversions).
void for_chunks(ThreadPool* pool, size_t count, size_t chunk, const std::function<void(size_t, size_t)>& fn);

}  // namespace kiln
