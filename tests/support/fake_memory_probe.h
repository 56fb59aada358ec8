// A memory probe whose figures the test sets, so memory guards and alerts are deterministic.
#ifndef LANEGUARD_TESTS_SUPPORT_FAKE_MEMORY_PROBE_H_
#define LANEGUARD_TESTS_SUPPORT_FAKE_MEMORY_PROBE_H_

#include <atomic>
#include <memory>
#include <utility>

#include "laneguard/memory.h"

namespace laneguard::testing_support {

class FakeMemoryProbe final : public MemoryProbe {
 public:
  struct Figures {
    std::atomic<double> rss{100};
    std::atomic<double> heap{50};
  };
  explicit FakeMemoryProbe(std::shared_ptr<Figures> f) : f_(std::move(f)) {}
  MemorySnapshot Sample() override {
    MemorySnapshot s;
    s.rss_mb = f_->rss.load();
    s.heap_used_mb = f_->heap.load();
    s.heap_total_mb = s.heap_used_mb * 2;
    s.peak_rss_mb = s.rss_mb;
    return s;
  }

 private:
  std::shared_ptr<Figures> f_;
};

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_FAKE_MEMORY_PROBE_H_
