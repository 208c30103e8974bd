#include "core/thread_pool.h"

#include <algorithm>

#include "core/cpu_budget.h"

namespace kiln {

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = cpu_budget();
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run(int chunks, int width, const std::function<void(int)>& fn) {
  if (chunks <= 0) return;
  width = std::clamp(width, 1, std::min(size(), chunks));
  if (width == 1) {
    for (int c = 0; c < chunks; ++c) fn(c);
    return;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  job_ = &fn;
  chunks_ = chunks;
  next_chunk_ = 0;
  active_width_ = width;
  busy_workers_ = width - 1;
  ++generation_;
  lock.unlock();
  wake_.notify_all();

  for (;;) {
    lock.lock();
    const int chunk = next_chunk_ < chunks_ ? next_chunk_++ : -1;
    lock.unlock();
    if (chunk < 0) break;
    fn(chunk);
  }
  lock.lock();
  done_.wait(lock, [this] { return busy_workers_ == 0; });
  job_ = nullptr;
}

void ThreadPool::worker_loop(int index) {
  unsigned long seen = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
    if (stopping_) return;
    seen = generation_;
    if (index >= active_width_) continue;
    const auto* fn = job_;
    for (;;) {
      const int chunk = next_chunk_ < chunks_ ? next_chunk_++ : -1;
      if (chunk < 0) break;
      lock.unlock();
      (*fn)(chunk);
      lock.lock();
    }
    if (--busy_workers_ == 0) done_.notify_one();
  }
}

void for_chunks(ThreadPool* pool, size_t count, size_t chunk, const std::function<void(size_t, size_t)>& fn) {
  const size_t chunks = (count + chunk - 1) / chunk;
  if (!pool || chunks <= 1) {
    fn(0, count);
    return;
  }
  pool->run(static_cast<int>(chunks), pool->size(),
            [&](int c) { fn(static_cast<size_t>(c) * chunk, std::min(count, (static_cast<size_t>(c) + 1) * chunk)); });
}

}  // namespace kiln
