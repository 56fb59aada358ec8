// The queue and export thread shared by BatchSpanProcessor and BatchLogRecordProcessor, so that
// spans and log records follow one set of rules: a bounded queue that drops (and counts) rather
// than blocks, batches on a timer or when full, flushes, and a shutdown bounded in time.
//
// One mutex guards the queue and the counters; Push holds it only to push. The export function
// runs on the background thread without the lock. Items carry an implicit sequence number (their
// position in the order they were queued): `taken` have left the queue, `done` have been exported
// or dropped, so a flush waits for `done` to reach the number queued when it was called.
//
// Thread safety: every member function is thread-safe.
#ifndef LANEGUARD_SRC_TRACE_BATCH_WORKER_H_
#define LANEGUARD_SRC_TRACE_BATCH_WORKER_H_

#include <algorithm>
#include <chrono>
#include <functional>
#include <mutex>  // std::once_flag
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "laneguard/internal/mutex.h"
#include "laneguard/trace/trace.h"

namespace laneguard::internal {

// Adds a batch of n items to the counter its result names.
inline void CountExportResult(const ExportResult& r, uint64_t n, BatchExportStats& s) {
  if (r.code != ExportResult::Code::kSuccess) {
    const uint64_t delivered = std::min(r.delivered, n);
    s.exported += delivered;
    n -= delivered;
  }
  switch (r.code) {
    case ExportResult::Code::kSuccess: {
      const uint64_t refused = std::min<uint64_t>(r.partially_rejected, n);
      s.exported += n - refused;
      s.dropped_partial_success += refused;
      return;
    }
    case ExportResult::Code::kFailed:
      s.dropped_export_failed += n;
      return;
    case ExportResult::Code::kRejected:
      s.dropped_rejected += n;
      return;
    case ExportResult::Code::kRetriesExhausted:
      s.dropped_retries_exhausted += n;
      return;
    case ExportResult::Code::kCancelled:
      s.dropped_shutdown_timeout += n;
      return;
  }
  s.dropped_export_failed += n;
}

template <typename Item>
class BatchWorker {
 public:
  // Called on the worker thread, one batch at a time; must not throw. It may change the items.
  using ExportFn = std::function<ExportResult(std::vector<Item>&)>;

  BatchWorker(ExportFn export_fn, const BatchProcessorOptions& o)
      : export_fn_(std::move(export_fn)),
        max_queue_(std::max<size_t>(o.max_queue_size, 1)),
        max_batch_(std::clamp<size_t>(o.max_export_batch_size, 1, max_queue_)),
        delay_(std::max(o.schedule_delay, std::chrono::milliseconds(1))),
        shutdown_timeout_(std::max(o.shutdown_timeout, std::chrono::milliseconds(0))) {
    thread_ = std::thread([this] { Run(); });
  }
  ~BatchWorker() {
    Shutdown([] {});
  }
  BatchWorker(const BatchWorker&) = delete;
  BatchWorker& operator=(const BatchWorker&) = delete;

  // False when the item was dropped (and counted); it is then left as it was, for the caller to
  // free or reuse outside the lock.
  bool Push(Item&& item) {
    return PushWith([&item](Item& slot) { slot = std::move(item); });
  }

  // Push for an item that is cheaper to write in place than to move: `fill` (which must not
  // throw) gets a default-constructed item at the end of the queue. Not called when dropped.
  template <typename Fill>
  bool PushWith(const Fill& fill) {
    {
      MutexLock lock(mu_);
      ++stats_.queued;
      if (stopping_) {
        ++stats_.dropped_after_shutdown;
        return false;
      }
      if (queue_.size() >= max_queue_) {
        ++stats_.dropped_queue_full;
        return false;
      }
      try {
        queue_.emplace_back();
      } catch (...) {  // out of memory: the item could not be queued either
        ++stats_.dropped_queue_full;
        return false;
      }
      fill(queue_.back());
      ++enqueued_;
      if (queue_.size() != max_batch_) return true;
    }
    // After unlocking: woken under the lock, the export thread would at once sleep again on the
    // mutex, and this thread's unlock would have to wake it a second time (two futex wakes, each
    // an IPI on a VM, where one will do).
    work_cv_.NotifyOne();
    return true;
  }

  bool ForceFlush(std::chrono::milliseconds timeout) {
    MutexLock lock(mu_);
    const uint64_t target = enqueued_;
    if (done_ >= target) return true;
    // now() + milliseconds::max() would overflow: a year is as good as forever here.
    timeout = std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365));
    if (target > flush_target_) {
      flush_target_ = target;
      work_cv_.NotifyOne();
    }
    return done_cv_.WaitFor(lock, timeout, [&]() REQUIRES(mu_) {
      return done_ >= target || exited_;
    }) && done_ >= target;
  }

  // Drains the queue within shutdown_timeout; past it, calls `cancel` (which should make the
  // export in flight return soon) and drops the rest. Returns true if it had to cancel. Concurrent
  // callers wait until the first one has finished; later calls return false at once.
  bool Shutdown(const std::function<void()>& cancel) {
    bool cancelled = false;
    std::call_once(shutdown_once_, [&] {
      MutexLock lock(mu_);
      stopping_ = true;
      work_cv_.NotifyOne();
      if (!done_cv_.WaitFor(lock, shutdown_timeout_, [this]() REQUIRES(mu_) { return exited_; })) {
        abandon_ = true;
        work_cv_.NotifyOne();
        lock.Unlock();
        cancelled = true;
        cancel();
      } else {
        lock.Unlock();
      }
      thread_.join();
    });
    return cancelled;
  }

  BatchExportStats stats() const {
    MutexLock lock(mu_);
    BatchExportStats s = stats_;
    s.pending = queue_.size() + in_flight_;
    return s;
  }

  std::string last_error() const {
    MutexLock lock(mu_);
    return last_error_;
  }

 private:
  bool Urgent() const REQUIRES(mu_) {
    return stopping_ || queue_.size() >= max_batch_ || flush_target_ > taken_;
  }

  void Run() {
    MutexLock lock(mu_);
    for (;;) {
      const bool timed_out =
          !work_cv_.WaitFor(lock, delay_, [this]() REQUIRES(mu_) { return Urgent(); });
      // On the timer, everything queued goes; otherwise full batches, and what a flush asked for.
      // Items already taken off the queue always go.
      while (BacklogLeft() > 0 || (!queue_.empty() && (timed_out || Urgent()))) {
        if (abandon_) {
          DropQueue();
          break;
        }
        ExportBatch();
      }
      if (stopping_ && queue_.empty() && BacklogLeft() == 0) break;
    }
    exited_ = true;
    done_cv_.NotifyAll();
  }

  size_t BacklogLeft() const { return backlog_.size() - backlog_next_; }

  void DropQueue() REQUIRES(mu_) {
    const uint64_t n = queue_.size();
    const uint64_t left = BacklogLeft();
    queue_.clear();
    backlog_.clear();
    backlog_next_ = 0;
    in_flight_ = 0;
    taken_ += n;
    done_ += n + left;
    stats_.dropped_shutdown_timeout += n + left;
    done_cv_.NotifyAll();
  }

  // Exports at most max_batch items without the lock. The lock is held only for constant work,
  // never for moving items, because Push (a worker call's thread) waits on it: a queue that fits
  // in one batch is swapped out whole; a longer one is taken whole into the backlog, which is cut
  // into batches here outside the lock. The vectors are handed back and forth, so once warm no
  // push or export allocates (a deque would allocate a block every few items).
  void ExportBatch() REQUIRES(mu_) {
    std::vector<Item> batch = std::move(spare_);
    spare_ = std::vector<Item>();
    if (BacklogLeft() == 0) {
      if (queue_.size() <= max_batch_) {
        batch.swap(queue_);
        taken_ += batch.size();
      } else {
        // The backlog is empty here: it was cleared (outside the lock) after its last batch.
        backlog_.swap(queue_);
        backlog_next_ = 0;
        taken_ += backlog_.size();
      }
    }
    in_flight_ = batch.size() + BacklogLeft();
    mu_.unlock();  // the caller's lock, taken back below
    if (batch.empty()) {
      const auto first = backlog_.begin() + static_cast<std::ptrdiff_t>(backlog_next_);
      const size_t take = std::min(BacklogLeft(), max_batch_);
      batch.assign(std::make_move_iterator(first),
                   std::make_move_iterator(first + static_cast<std::ptrdiff_t>(take)));
      backlog_next_ += take;
      if (BacklogLeft() == 0) {
        backlog_.clear();  // moved-from items
        backlog_next_ = 0;
      }
    }
    const size_t n = batch.size();
    ExportResult result;
    try {
      result = export_fn_(batch);
    } catch (...) {
      result.code = ExportResult::Code::kFailed;
    }
    batch.clear();  // freed before retaking the lock
    if (batch.capacity() > spare_.capacity()) spare_ = std::move(batch);
    mu_.lock();
    in_flight_ = BacklogLeft();
    done_ += n;
    CountExportResult(result, n, stats_);
    // Moved, not copied, under the lock: a failure's text costs no allocation here.
    if (!result.error.empty()) last_error_ = std::move(result.error);
    done_cv_.NotifyAll();
  }

  const ExportFn export_fn_;
  const size_t max_queue_;
  const size_t max_batch_;
  const std::chrono::milliseconds delay_;
  const std::chrono::milliseconds shutdown_timeout_;

  mutable Mutex mu_;
  CondVar work_cv_;  // wakes the export thread
  CondVar done_cv_;  // wakes ForceFlush and Shutdown callers
  std::vector<Item> queue_ GUARDED_BY(mu_);
  // The export thread's own: not guarded by mu_.
  std::vector<Item> spare_;    // an empty vector with capacity, the next batch's storage
  std::vector<Item> backlog_;  // taken off the queue, not yet exported from backlog_next_ on
  size_t backlog_next_ = 0;
  // Guarded by mu_ from here on.
  BatchExportStats stats_ GUARDED_BY(mu_);
  // ExportResult::error of the last export that had one.
  std::string last_error_ GUARDED_BY(mu_);
  size_t in_flight_ GUARDED_BY(mu_) = 0;   // taken off the queue and not yet done
  uint64_t enqueued_ GUARDED_BY(mu_) = 0;  // items ever pushed on the queue
  uint64_t taken_ GUARDED_BY(mu_) = 0;     // items ever taken off it
  uint64_t done_ GUARDED_BY(mu_) = 0;      // items ever exported or dropped after leaving the queue
  // Export at least up to here without waiting for the delay.
  uint64_t flush_target_ GUARDED_BY(mu_) = 0;
  bool stopping_ GUARDED_BY(mu_) = false;  // Shutdown began: Push drops; the thread drains, exits
  // shutdown_timeout ran out: drop the queue rather than export it.
  bool abandon_ GUARDED_BY(mu_) = false;
  bool exited_ GUARDED_BY(mu_) = false;

  std::once_flag shutdown_once_;
  std::thread thread_;  // last: started once everything above is constructed
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_TRACE_BATCH_WORKER_H_
