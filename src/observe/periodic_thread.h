// A thread that runs a function every interval until stopped; shared by the alert evaluator and
// the metric emitter.
//
// Thread safety: Start() and Stop() may be called from any thread; the function runs only on the
// thread, never twice at once, and not at all once Stop() has returned.
#ifndef LANEGUARD_SRC_OBSERVE_PERIODIC_THREAD_H_
#define LANEGUARD_SRC_OBSERVE_PERIODIC_THREAD_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace laneguard::internal {

class PeriodicThread {
 public:
  PeriodicThread() = default;
  ~PeriodicThread() { Stop(); }
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

  // Starts calling `fn` every `interval` (first call one interval from now). No-op if running.
  void Start(std::chrono::milliseconds interval, std::function<void()> fn) {
    std::lock_guard<std::mutex> control(control_mu_);
    if (thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> guard(mu_);
      stop_ = false;
    }
    thread_ = std::thread([this, interval, fn = std::move(fn)] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!cv_.wait_for(lock, interval, [this] { return stop_; })) {
        lock.unlock();
        fn();
        lock.lock();
      }
    });
  }

  void Stop() {
    std::lock_guard<std::mutex> control(control_mu_);
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> guard(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex control_mu_;  // serializes Start/Stop
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_OBSERVE_PERIODIC_THREAD_H_
