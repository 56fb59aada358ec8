#include <stdexcept>
#include <string>
#include <utility>

#include "laneguard/executor.h"

namespace laneguard {
namespace {
// The pool whose task this thread is running, so that Submit() can tell a task's own submission
// (accepted during shutdown: the submitting thread will run it) from an outsider's.
thread_local const ThreadPool* running_in = nullptr;
}  // namespace

ThreadPool::ThreadPool(size_t threads) {
  if (threads == 0) throw std::invalid_argument("ThreadPool: threads must be at least 1, got 0");
  threads_.reserve(threads);
  try {
    for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  } catch (...) {
    Shutdown();  // joins the threads already started: a joinable std::thread must not be destroyed
    throw;
  }
}

ThreadPool::~ThreadPool() { Shutdown(); }

void ThreadPool::Submit(std::function<void()> task) {
  {
    internal::MutexLock lock(mu_);
    if (stopping_ && running_in != this)
      throw std::logic_error("ThreadPool: Submit after Shutdown; the task was not accepted");
    queue_.push_back(std::move(task));
  }
  ready_.NotifyOne();
}

void ThreadPool::Shutdown() {
  internal::MutexLock join_lock(join_mu_);
  {
    internal::MutexLock lock(mu_);
    stopping_ = true;
  }
  ready_.NotifyAll();
  for (std::thread& t : threads_)
    if (t.joinable()) t.join();
}

size_t ThreadPool::queued() const {
  internal::MutexLock lock(mu_);
  return queue_.size();
}

uint64_t ThreadPool::completed() const {
  internal::MutexLock lock(mu_);
  return completed_;
}

void ThreadPool::Work() {
  running_in = this;
  internal::MutexLock lock(mu_);
  for (;;) {
    ready_.Wait(lock, [this]() REQUIRES(mu_) { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    lock.Unlock();
    // noexcept: a throwing task terminates, as a std::thread's function would.
    [&task]() noexcept { task(); }();
    task = nullptr;  // its captures die here, outside the lock
    lock.Lock();
    ++completed_;
  }
}

}  // namespace laneguard
