#include "base/thread_counters.h"

#include <algorithm>
#include <new>
#include <utility>

namespace laneguard::internal {

// One thread's counts, on cache lines of their own so that two threads' blocks never share one.
struct ThreadCounters::Block {
  static constexpr size_t kLine = 64;

  explicit Block(size_t width)
      : counts(static_cast<std::atomic<int64_t>*>(::operator new (
            RoundedToLines(width * sizeof(std::atomic<int64_t>)), std::align_val_t{kLine}))) {
    std::uninitialized_value_construct_n(counts, width);  // all zero
  }
  ~Block() { ::operator delete (counts, std::align_val_t{kLine}); }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;

  static size_t RoundedToLines(size_t bytes) { return (bytes + kLine - 1) / kLine * kLine; }

  std::atomic<int64_t>* const counts;
  // Set (release) by the thread when it exits: its counts are final and may be folded.
  std::atomic<bool> retired{false};
};

namespace {

std::atomic<uint64_t> next_serial{1};

// The blocks this thread holds, one per live ThreadCounters it has added to. Its destructor runs
// at thread exit; afterwards (a later thread_local's destructor adding a count) `gone` sends adds
// to the shared fallback counts.
thread_local bool gone = false;  // trivially destructible: readable to the thread's end

}  // namespace

void ThreadCounters::IncrementSlow(size_t i) {
  using Held = std::vector<std::pair<uint64_t, std::shared_ptr<Block>>>;
  struct Holder {
    Held held;
    ~Holder() {
      gone = true;
      Cache() = {};
      for (auto& [serial, block] : held) block->retired.store(true, std::memory_order_release);
    }
  };
  std::atomic<int64_t>* counts = nullptr;
  if (!gone) {
    thread_local Holder holder;
    Held& held = holder.held;
    // Blocks whose counters are gone are no use to anyone: only this thread still holds them.
    std::erase_if(held, [](const auto& e) { return e.second.use_count() == 1; });
    auto it = std::find_if(held.begin(), held.end(),
                           [this](const auto& e) { return e.first == serial_; });
    try {
      if (it == held.end()) {
        auto block = std::make_shared<Block>(width_);
        {
          MutexLock lock(mu_);
          // Fold the blocks of threads that have exited. The acquire pairs with the exiting
          // thread's release, so its last counts are the ones read here.
          std::erase_if(blocks_, [this](const std::shared_ptr<Block>& b) REQUIRES(mu_) {
            if (!b->retired.load(std::memory_order_acquire)) return false;
            for (size_t k = 0; k < width_; ++k)
              folded_[k] += b->counts[k].load(std::memory_order_relaxed);
            return true;
          });
          blocks_.push_back(block);
        }
        held.emplace_back(serial_, std::move(block));
        it = held.end() - 1;
      }
      counts = it->second->counts;
      Cache() = {serial_, counts};
    } catch (const std::bad_alloc&) {
      counts = nullptr;  // counted in the shared fallback below
    }
  }
  if (counts != nullptr) {
    counts[i].store(counts[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  } else {
    shared_[i].fetch_add(1, std::memory_order_relaxed);
  }
}

ThreadCounters::ThreadCounters(size_t width)
    : serial_(next_serial.fetch_add(1, std::memory_order_relaxed)),
      width_(width),
      folded_(new int64_t[width]()),
      shared_(new std::atomic<int64_t>[width]()) {}

ThreadCounters::~ThreadCounters() = default;

std::vector<int64_t> ThreadCounters::Sums() const {
  std::vector<int64_t> sums(width_);
  MutexLock lock(mu_);
  for (size_t k = 0; k < width_; ++k)
    sums[k] = folded_[k] + shared_[k].load(std::memory_order_relaxed);
  for (const std::shared_ptr<Block>& b : blocks_)
    for (size_t k = 0; k < width_; ++k) sums[k] += b->counts[k].load(std::memory_order_relaxed);
  return sums;
}

size_t ThreadCounters::BlockCount() const {
  MutexLock lock(mu_);
  return blocks_.size();
}

}  // namespace laneguard::internal
