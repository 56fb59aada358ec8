// Where WorkerCalls::CallAsync runs its calls.
//
//   laneguard::ThreadPool pool(8);
//   std::future<Answer> answer = calls.CallAsync(pool, "task-123", [&] { return Ask(question); },
//                                                {.lane = "forecast_model"});
//
// Executor is the seam: adapt Boost.Asio's thread_pool, a TBB arena or an event loop by
// implementing Submit(). ThreadPool is the plain one laneguard ships, so that the library does not
// make its users depend on Boost for a FIFO queue and a few threads.
#ifndef LANEGUARD_EXECUTOR_H_
#define LANEGUARD_EXECUTOR_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "laneguard/internal/mutex.h"

namespace laneguard {

// Runs tasks later, on threads of its own choosing.
//
// Thread safety: implementations must accept Submit() from any thread, including from inside a
// running task.
class Executor {
 public:
  virtual ~Executor() = default;
  // Runs `task` exactly once, or throws (and then never runs it). A task that is destroyed without
  // running is allowed (an executor dropping its queue); CallAsync's future then reports
  // std::future_error (broken_promise) and no slot is held.
  virtual void Submit(std::function<void()> task) = 0;
};

// A fixed number of threads taking tasks from one FIFO queue. The queue is unbounded: admission
// control is the manager's job (a call refused for its lane fails fast on a pool thread), and a
// caller that needs back-pressure on the queue itself can watch queued().
//
// Tasks must not throw: like a std::thread's function, a task that throws calls std::terminate.
// (CallAsync's tasks never throw; their exceptions travel in the future.)
//
// Thread safety: every method is safe from any thread. Shutdown() and the destructor must not be
// called from one of the pool's own tasks.
class ThreadPool final : public Executor {
 public:
  // Throws std::invalid_argument when `threads` is 0, and std::system_error when a thread cannot
  // be started (the threads already started are joined first).
  explicit ThreadPool(size_t threads);
  // Shutdown().
  ~ThreadPool() override;
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Once Shutdown() has begun, throws std::logic_error, so that nothing is accepted that might not
  // run; except from the pool's own tasks, whose submissions still run before the threads exit.
  void Submit(std::function<void()> task) override;

  // Stops accepting tasks, runs every task already queued (and what they submit), then joins the
  // threads. Idempotent.
  void Shutdown();

  size_t thread_count() const { return threads_.size(); }
  // Tasks waiting for a thread (not counting running ones).
  size_t queued() const;
  // Tasks that have finished running.
  uint64_t completed() const;

 private:
  void Work();

  mutable internal::Mutex mu_;
  internal::CondVar ready_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  uint64_t completed_ GUARDED_BY(mu_) = 0;
  internal::Mutex join_mu_;  // one Shutdown() joins at a time
  // Started by the constructor and joined by Shutdown() under join_mu_; never resized after.
  std::vector<std::thread> threads_;
};

}  // namespace laneguard

#endif  // LANEGUARD_EXECUTOR_H_
