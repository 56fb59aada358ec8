#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>
#include <utility>

#include "laneguard/trace.h"

namespace laneguard {
namespace {

// Calls the exporter; an exception counts as a failed export and never escapes.
bool SafeExport(SpanExporter& exporter, const std::vector<SpanData>& batch,
                const Resource& resource) {
  try {
    return exporter.Export(batch, resource);
  } catch (...) {
    return false;
  }
}

void SafeShutdown(SpanExporter& exporter) {
  try {
    exporter.Shutdown();
  } catch (...) {
  }
}

class SimpleSpanProcessor final : public SpanProcessor {
 public:
  explicit SimpleSpanProcessor(std::unique_ptr<SpanExporter> exporter)
      : exporter_(std::move(exporter)) {}
  ~SimpleSpanProcessor() override { Shutdown(); }

  void OnEnd(SpanData&& span) override {
    std::vector<SpanData> batch;
    batch.push_back(std::move(span));
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_ || !exporter_) return;
    SafeExport(*exporter_, batch, resource_);
  }

  bool ForceFlush(std::chrono::milliseconds) override { return true; }

  void Shutdown() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    shutdown_ = true;
    if (exporter_) SafeShutdown(*exporter_);
  }

  void SetResource(const Resource& resource) override {
    std::lock_guard<std::mutex> lock(mu_);
    resource_ = resource;
  }

 private:
  std::mutex mu_;  // one export at a time, as SpanExporter requires
  std::unique_ptr<SpanExporter> exporter_;
  Resource resource_;
  bool shutdown_ = false;
};

}  // namespace

std::unique_ptr<SpanProcessor> NewSimpleSpanProcessor(std::unique_ptr<SpanExporter> exporter) {
  return std::make_unique<SimpleSpanProcessor>(std::move(exporter));
}

// ---- batch processor ----------------------------------------------------------------------------

// One mutex guards the queue and the counters; OnEnd holds it only to push. The exporter runs on
// the background thread without the lock. Spans carry an implicit sequence number (their position
// in the order they were queued): `taken` have left the queue, `done` have been exported or
// dropped, so a flush waits for `done` to reach the number queued when it was called.
struct BatchSpanProcessor::Impl {
  std::unique_ptr<SpanExporter> exporter;
  size_t max_queue;
  size_t max_batch;
  std::chrono::milliseconds delay;

  std::mutex mu;
  std::condition_variable work_cv;  // wakes the exporter thread
  std::condition_variable done_cv;  // wakes ForceFlush callers
  std::deque<SpanData> queue;
  std::shared_ptr<const Resource> resource = std::make_shared<const Resource>();
  BatchSpanProcessorStats stats;
  size_t in_flight = 0;
  uint64_t enqueued = 0;      // spans ever pushed on the queue
  uint64_t taken = 0;         // spans ever taken off it
  uint64_t done = 0;          // spans ever exported or dropped by a failed export
  uint64_t flush_target = 0;  // export at least up to here without waiting for the delay
  bool stopping = false;      // Shutdown began: OnEnd drops; the thread drains and exits
  bool exited = false;

  std::once_flag shutdown_once;
  std::thread thread;

  Impl(std::unique_ptr<SpanExporter> e, const BatchSpanProcessorOptions& o)
      : exporter(std::move(e)),
        max_queue(std::max<size_t>(o.max_queue_size, 1)),
        max_batch(std::clamp<size_t>(o.max_export_batch_size, 1, max_queue)),
        delay(std::max(o.schedule_delay, std::chrono::milliseconds(1))) {}

  bool Urgent() const { return stopping || queue.size() >= max_batch || flush_target > taken; }

  void Run() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      const bool timed_out = !work_cv.wait_for(lock, delay, [this] { return Urgent(); });
      // On the timer, everything queued goes; otherwise full batches, and what a flush asked for.
      while (!queue.empty() && (timed_out || Urgent())) ExportBatch(lock);
      if (stopping && queue.empty()) break;
    }
    exited = true;
    done_cv.notify_all();
  }

  // Takes at most max_batch spans off the queue and exports them without the lock.
  void ExportBatch(std::unique_lock<std::mutex>& lock) {
    const size_t n = std::min(queue.size(), max_batch);
    std::vector<SpanData> batch;
    batch.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(queue.front()));
      queue.pop_front();
    }
    taken += n;
    in_flight = n;
    std::shared_ptr<const Resource> r = resource;
    lock.unlock();
    const bool ok = exporter ? SafeExport(*exporter, batch, *r) : true;
    batch.clear();  // free the spans before retaking the lock
    lock.lock();
    in_flight = 0;
    done += n;
    (ok ? stats.exported : stats.dropped_export_failed) += n;
    done_cv.notify_all();
  }
};

BatchSpanProcessor::BatchSpanProcessor(std::unique_ptr<SpanExporter> exporter,
                                       BatchSpanProcessorOptions options)
    : impl_(std::make_unique<Impl>(std::move(exporter), options)) {
  impl_->thread = std::thread([impl = impl_.get()] { impl->Run(); });
}

BatchSpanProcessor::~BatchSpanProcessor() { Shutdown(); }

void BatchSpanProcessor::OnEnd(SpanData&& span) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.mu);
  ++d.stats.queued;
  if (d.stopping) {
    ++d.stats.dropped_after_shutdown;
    return;
  }
  if (d.queue.size() >= d.max_queue) {
    ++d.stats.dropped_queue_full;
    return;
  }
  try {
    d.queue.push_back(std::move(span));
  } catch (...) {  // out of memory: the span could not be queued either
    ++d.stats.dropped_queue_full;
    return;
  }
  ++d.enqueued;
  if (d.queue.size() == d.max_batch) d.work_cv.notify_one();
}

bool BatchSpanProcessor::ForceFlush(std::chrono::milliseconds timeout) {
  Impl& d = *impl_;
  std::unique_lock<std::mutex> lock(d.mu);
  const uint64_t target = d.enqueued;
  if (d.done >= target) return true;
  // now() + milliseconds::max() would overflow: a year is as good as forever here.
  timeout = std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365));
  if (target > d.flush_target) {
    d.flush_target = target;
    d.work_cv.notify_one();
  }
  return d.done_cv.wait_for(lock, timeout, [&] { return d.done >= target || d.exited; }) &&
         d.done >= target;
}

void BatchSpanProcessor::Shutdown() {
  Impl& d = *impl_;
  // Concurrent callers wait here until the first one has finished.
  std::call_once(d.shutdown_once, [&d] {
    {
      std::lock_guard<std::mutex> lock(d.mu);
      d.stopping = true;
    }
    d.work_cv.notify_one();
    d.thread.join();
    if (d.exporter) SafeShutdown(*d.exporter);
  });
}

void BatchSpanProcessor::SetResource(const Resource& resource) {
  auto r = std::make_shared<const Resource>(resource);
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->resource = std::move(r);
}

BatchSpanProcessorStats BatchSpanProcessor::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  BatchSpanProcessorStats s = impl_->stats;
  s.pending = impl_->queue.size() + impl_->in_flight;
  return s;
}

}  // namespace laneguard
