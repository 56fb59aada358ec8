// Ticker: the manager's background thread, which calls a function every period until stopped.
//
// Thread safety: Start() once, before the ticker is shared; Stop() is safe from any thread and
// idempotent. Stop() on the ticker's own thread (from inside the function) stops it without
// joining; the thread must then still be joined by a later Stop() before the ticker is destroyed.
#ifndef LANEGUARD_SRC_CORE_TICKER_H_
#define LANEGUARD_SRC_CORE_TICKER_H_

#include <chrono>
#include <functional>
#include <thread>

#include "laneguard/internal/mutex.h"
#include "laneguard/internal/thread_annotations.h"

namespace laneguard::internal {

class Ticker {
 public:
  Ticker() = default;
  Ticker(const Ticker&) = delete;
  Ticker& operator=(const Ticker&) = delete;

  void Start(std::chrono::milliseconds period, std::function<void()> tick) EXCLUDES(join_mu_);
  void Stop() EXCLUDES(mu_, join_mu_);

 private:
  void Run(std::chrono::milliseconds period, const std::function<void()>& tick) EXCLUDES(mu_);

  Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  Mutex join_mu_;
  std::thread thread_ GUARDED_BY(join_mu_);
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_TICKER_H_
