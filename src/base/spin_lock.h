// A test-and-test-and-set spin lock for critical sections of a few dozen nanoseconds (admission).
// Hand-written because std::mutex parks contended waiters in the kernel (a futex syscall each way),
// which costs microseconds on the contended admission path, while the critical sections here are
// far shorter than a context switch; after a bounded spin it yields so a preempted holder can run.
//
// Thread safety: it is a lock.
#ifndef LANEGUARD_SRC_BASE_SPIN_LOCK_H_
#define LANEGUARD_SRC_BASE_SPIN_LOCK_H_

#include <atomic>
#include <thread>

#include "laneguard/internal/thread_annotations.h"

namespace laneguard::internal {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class CAPABILITY("mutex") SpinLock {
 public:
  void lock() ACQUIRE() {
    for (int spins = 0; locked_.exchange(true, std::memory_order_acquire);) {
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins < 64) {
          CpuRelax();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  void unlock() RELEASE() { locked_.store(false, std::memory_order_release); }
  // lock() for a lock no other thread can reach yet (its object is still private to the thread
  // that made it): a plain store, where lock()'s atomic exchange waits for the thread's pending
  // stores to drain.
  void LockUnshared() ACQUIRE() { locked_.store(true, std::memory_order_relaxed); }
  // For code the analysis cannot follow (a lock taken in one function and released in another):
  // tells it the caller holds the lock. Checks nothing at run time.
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

 private:
  std::atomic<bool> locked_{false};
};

// std::lock_guard for a SpinLock, which the thread-safety analysis can follow.
class SCOPED_CAPABILITY SpinLockGuard {
 public:
  explicit SpinLockGuard(SpinLock& lock) ACQUIRE(lock) : lock_(lock) { lock_.lock(); }
  ~SpinLockGuard() RELEASE() { lock_.unlock(); }
  SpinLockGuard(const SpinLockGuard&) = delete;
  SpinLockGuard& operator=(const SpinLockGuard&) = delete;

 private:
  SpinLock& lock_;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_BASE_SPIN_LOCK_H_
