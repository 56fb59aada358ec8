// std::mutex and std::condition_variable with clang's thread-safety annotations (libstdc++'s carry
// none), so that every lock-protected field can say GUARDED_BY(mu_) and be checked by
// `make thread-safety`. The same code as the std:: types underneath; nothing is added at run time.
//
//   mutable internal::Mutex mu_;
//   int count_ GUARDED_BY(mu_) = 0;
//   ...
//   internal::MutexLock lock(mu_);
//   cv_.Wait(lock, [&]() REQUIRES(mu_) { return count_ > 0; });
//
// Not for users: a public header includes this only for its own private members.
//
// Thread safety: it is a lock.
#ifndef LANEGUARD_INTERNAL_MUTEX_H_
#define LANEGUARD_INTERNAL_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "laneguard/internal/thread_annotations.h"

namespace laneguard::internal {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // For code the analysis cannot follow (a lock taken in one function and released in another):
  // tells it the caller holds the lock.
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

 private:
  friend class MutexLock;
  std::mutex mu_;
};

// Holds a Mutex for its scope; Unlock()/Lock() in between for a stretch that must run unlocked.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : lock_(mu.mu_) {}
  ~MutexLock() RELEASE() = default;
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() RELEASE() { lock_.unlock(); }
  void Lock() ACQUIRE() { lock_.lock(); }

 private:
  friend class CondVar;
  std::unique_lock<std::mutex> lock_;
};

// Waits release the lock while they sleep and hold it again when they return, which the analysis
// sees as the lock held throughout (as it is, for the caller's code).
class CondVar {
 public:
  void Wait(MutexLock& lock) { cv_.wait(lock.lock_); }
  template <typename Predicate>
  void Wait(MutexLock& lock, Predicate stop_waiting) {
    cv_.wait(lock.lock_, stop_waiting);
  }
  // False if it timed out.
  template <typename Clock, typename Duration>
  bool WaitUntil(MutexLock& lock, const std::chrono::time_point<Clock, Duration>& deadline) {
    return cv_.wait_until(lock.lock_, deadline) == std::cv_status::no_timeout;
  }
  // The predicate's value when the wait ends (false: timed out with it still false).
  template <typename Clock, typename Duration, typename Predicate>
  bool WaitUntil(MutexLock& lock, const std::chrono::time_point<Clock, Duration>& deadline,
                 Predicate stop_waiting) {
    return cv_.wait_until(lock.lock_, deadline, stop_waiting);
  }
  template <typename Rep, typename Period, typename Predicate>
  bool WaitFor(MutexLock& lock, const std::chrono::duration<Rep, Period>& timeout,
               Predicate stop_waiting) {
    return cv_.wait_for(lock.lock_, timeout, stop_waiting);
  }
  void NotifyOne() noexcept { cv_.notify_one(); }
  void NotifyAll() noexcept { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_INTERNAL_MUTEX_H_
