// A thread that runs a function every interval until stopped; shared by the alert evaluator and
// the metric emitter.
//
// Thread safety: Start() and Stop() may be called from any thread; the function runs only on the
// thread, never twice at once, and not at all once Stop() has returned.
#ifndef LANEGUARD_SRC_OBSERVE_PERIODIC_THREAD_H_
#define LANEGUARD_SRC_OBSERVE_PERIODIC_THREAD_H_

#include <chrono>
#include <functional>
#include <thread>
#include <utility>

#include "laneguard/internal/mutex.h"

namespace laneguard::internal {

class PeriodicThread {
 public:
  PeriodicThread() = default;
  ~PeriodicThread() { Stop(); }
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

  // Starts calling `fn` every `interval` (first call one interval from now). No-op if running.
  void Start(std::chrono::milliseconds interval, std::function<void()> fn) {
    MutexLock control(control_mu_);
    if (thread_.joinable()) return;
    {
      MutexLock guard(mu_);
      stop_ = false;
    }
    thread_ = std::thread([this, interval, fn = std::move(fn)] { Loop(interval, fn); });
  }

  void Stop() {
    MutexLock control(control_mu_);
    if (!thread_.joinable()) return;
    {
      MutexLock guard(mu_);
      stop_ = true;
    }
    cv_.NotifyAll();
    thread_.join();
  }

 private:
  void Loop(std::chrono::milliseconds interval, const std::function<void()>& fn) {
    MutexLock lock(mu_);
    while (!cv_.WaitFor(lock, interval, [this]() REQUIRES(mu_) { return stop_; })) {
      lock.Unlock();
      fn();
      lock.Lock();
    }
  }

  Mutex control_mu_;  // serializes Start/Stop
  Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_ GUARDED_BY(control_mu_);
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_OBSERVE_PERIODIC_THREAD_H_
