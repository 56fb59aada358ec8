#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/trace/trace.h"
#include "support/file_size_limit.h"
#include "support/tmp_stream.h"
#include "trace/span_fast_path.h"

namespace laneguard {
namespace {

// The fast path the worker wrappers record with.
using internal::SpanFastPath;

using nlohmann::json;
using std::chrono::milliseconds;

// Generous bound for waiting on the background thread: only reached if the code under test is
// broken, so it bounds a hang rather than measuring speed.
constexpr auto kPatience = std::chrono::seconds(60);
constexpr milliseconds kNever{std::chrono::hours(1)};  // a schedule delay that never fires

SpanData MakeSpan(int i) {
  SpanData s;
  s.name = "span-" + std::to_string(i);
  s.trace_id = NewTraceId();
  s.span_id = NewSpanId();
  return s;
}

// Records every batch; can fail, throw, or block until released.
class TestExporter final : public SpanExporter {
 public:
  bool Export(const std::vector<SpanData>& batch, const Resource& resource) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++entered_;
    cv_.notify_all();
    cv_.wait(lock, [this] { return !blocked_; });
    batch_sizes_.push_back(batch.size());
    last_resource_ = resource;
    if (throw_) throw std::runtime_error("exporter broke");
    if (fail_) return false;
    for (const SpanData& s : batch) spans_.push_back(s);
    cv_.notify_all();
    return true;
  }
  void Shutdown() override {
    std::lock_guard<std::mutex> lock(mu_);
    ++shutdowns_;
  }

  void Block() {
    std::lock_guard<std::mutex> lock(mu_);
    blocked_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    blocked_ = false;
    cv_.notify_all();
  }
  void SetFail(bool fail) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_ = fail;
  }
  void SetThrow(bool t) {
    std::lock_guard<std::mutex> lock(mu_);
    throw_ = t;
  }
  // Waits until Export has been entered `n` times in all.
  bool WaitEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return entered_ >= n; });
  }
  // Waits until `n` spans have been exported.
  bool WaitSpans(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return spans_.size() >= n; });
  }
  std::vector<SpanData> spans() const {
    std::lock_guard<std::mutex> lock(mu_);
    return spans_;
  }
  std::vector<size_t> batch_sizes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_sizes_;
  }
  Resource last_resource() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_resource_;
  }
  int shutdowns() const {
    std::lock_guard<std::mutex> lock(mu_);
    return shutdowns_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool blocked_ = false;
  bool fail_ = false;
  bool throw_ = false;
  int entered_ = 0;
  int shutdowns_ = 0;
  std::vector<SpanData> spans_;
  std::vector<size_t> batch_sizes_;
  Resource last_resource_;
};

struct Batch {
  explicit Batch(BatchSpanProcessorOptions options) {
    auto e = std::make_unique<TestExporter>();
    exporter = e.get();
    processor = std::make_shared<BatchSpanProcessor>(std::move(e), options);
  }
  TestExporter* exporter;  // owned by the processor
  std::shared_ptr<BatchSpanProcessor> processor;
};

uint64_t Accounted(const BatchSpanProcessorStats& s) {
  return s.exported + s.dropped_queue_full + s.dropped_export_failed + s.dropped_after_shutdown +
         s.pending;
}

#define EXPECT_INVARIANT(stats)                                                         \
  do {                                                                                  \
    BatchSpanProcessorStats s_ = (stats);                                               \
    EXPECT_EQ(s_.queued, Accounted(s_))                                                 \
        << "queued " << s_.queued << " exported " << s_.exported << " full "            \
        << s_.dropped_queue_full << " failed " << s_.dropped_export_failed << " after " \
        << s_.dropped_after_shutdown << " pending " << s_.pending;                      \
  } while (0)

// ---- simple processor ---------------------------------------------------------------------------

TEST(SimpleSpanProcessorTest, ExportsEachSpanAtEnd) {
  auto e = std::make_unique<TestExporter>();
  TestExporter* exporter = e.get();
  ManualClock clock;
  TracerOptions o;
  o.processor = NewSimpleSpanProcessor(std::move(e));
  o.clock = &clock;
  o.resource.service_name = "orchestrator";
  auto processor = o.processor;  // keeps the exporter alive after the tracer
  {
    Tracer tracer(std::move(o));
    Span span = tracer.StartSpan("one");
    EXPECT_TRUE(exporter->spans().empty());
    span.End();
    ASSERT_EQ(exporter->spans().size(), 1u);
    EXPECT_EQ(exporter->spans()[0].name, "one");
    EXPECT_EQ(exporter->batch_sizes(), std::vector<size_t>{1});
    EXPECT_EQ(exporter->last_resource().service_name, "orchestrator");
    EXPECT_TRUE(tracer.ForceFlush());
  }
  EXPECT_EQ(exporter->shutdowns(), 1);
}

TEST(SimpleSpanProcessorTest, ShutdownIsIdempotentAndStopsExporting) {
  auto e = std::make_unique<TestExporter>();
  TestExporter* exporter = e.get();
  auto processor = NewSimpleSpanProcessor(std::move(e));
  processor->OnEnd(MakeSpan(1));
  processor->Shutdown();
  processor->Shutdown();
  processor->OnEnd(MakeSpan(2));
  EXPECT_EQ(exporter->spans().size(), 1u);
  EXPECT_EQ(exporter->shutdowns(), 1);
}

TEST(SimpleSpanProcessorTest, ExporterFailureOrExceptionDoesNotEscape) {
  auto e = std::make_unique<TestExporter>();
  TestExporter* exporter = e.get();
  auto processor = NewSimpleSpanProcessor(std::move(e));
  exporter->SetThrow(true);
  processor->OnEnd(MakeSpan(1));  // must not throw
  exporter->SetThrow(false);
  exporter->SetFail(true);
  processor->OnEnd(MakeSpan(2));
  EXPECT_EQ(exporter->batch_sizes().size(), 2u);
}

// ---- batch processor ----------------------------------------------------------------------------

TEST(BatchSpanProcessorTest, ForceFlushExportsEverythingQueued) {
  Batch b({.max_queue_size = 100, .max_export_batch_size = 50, .schedule_delay = kNever});
  for (int i = 0; i < 10; ++i) b.processor->OnEnd(MakeSpan(i));
  // Neither trigger has fired: no batch is full and the delay is an hour away.
  EXPECT_TRUE(b.exporter->spans().empty());
  EXPECT_EQ(b.processor->stats().pending, 10u);
  EXPECT_TRUE(b.processor->ForceFlush());
  auto spans = b.exporter->spans();
  ASSERT_EQ(spans.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(spans[i].name, "span-" + std::to_string(i));  // in order
  BatchSpanProcessorStats s = b.processor->stats();
  EXPECT_EQ(s.queued, 10u);
  EXPECT_EQ(s.exported, 10u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_INVARIANT(s);
  EXPECT_TRUE(b.processor->ForceFlush());  // nothing left: immediately true
}

TEST(BatchSpanProcessorTest, ExportsAsSoonAsABatchIsFull) {
  Batch b({.max_queue_size = 100, .max_export_batch_size = 5, .schedule_delay = kNever});
  for (int i = 0; i < 4; ++i) b.processor->OnEnd(MakeSpan(i));
  b.processor->OnEnd(MakeSpan(4));  // the fifth fills a batch: the thread wakes without a flush
  ASSERT_TRUE(b.exporter->WaitSpans(5));
  EXPECT_EQ(b.exporter->batch_sizes(), std::vector<size_t>{5});
}

TEST(BatchSpanProcessorTest, ExportsOnTheScheduleDelay) {
  Batch b({.max_queue_size = 100, .max_export_batch_size = 50, .schedule_delay = milliseconds(1)});
  b.processor->OnEnd(MakeSpan(0));
  b.processor->OnEnd(MakeSpan(1));
  ASSERT_TRUE(b.exporter->WaitSpans(2));  // no flush, no full batch: only the timer exports
  EXPECT_INVARIANT(b.processor->stats());
}

TEST(BatchSpanProcessorTest, CleanShutdownLosesNothing) {
  Batch b({});  // defaults: queue 2048, batches of 512, every 5 s
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    SpanData s = MakeSpan(i);
    ids.insert(s.span_id.Hex());
    b.processor->OnEnd(std::move(s));
  }
  b.processor->Shutdown();
  auto spans = b.exporter->spans();
  ASSERT_EQ(spans.size(), 1000u);
  std::set<std::string> exported;
  for (const SpanData& s : spans) exported.insert(s.span_id.Hex());
  EXPECT_EQ(exported, ids);
  for (size_t n : b.exporter->batch_sizes()) EXPECT_LE(n, 512u);
  EXPECT_EQ(b.exporter->shutdowns(), 1);
  BatchSpanProcessorStats s = b.processor->stats();
  EXPECT_EQ(s.queued, 1000u);
  EXPECT_EQ(s.exported, 1000u);
  EXPECT_EQ(s.dropped_queue_full + s.dropped_export_failed + s.dropped_after_shutdown, 0u);
  EXPECT_INVARIANT(s);
}

TEST(BatchSpanProcessorTest, DestructorShutsDownAndFlushes) {
  auto e = std::make_unique<TestExporter>();
  TestExporter* exporter = e.get();
  std::vector<SpanData> seen;
  {
    // Keep the exporter alive past the processor: wrap it so the processor owns a forwarder.
    struct Forward final : SpanExporter {
      explicit Forward(TestExporter* t) : target(t) {}
      bool Export(const std::vector<SpanData>& batch, const Resource& r) override {
        return target->Export(batch, r);
      }
      void Shutdown() override { target->Shutdown(); }
      TestExporter* target;
    };
    BatchSpanProcessor processor(std::make_unique<Forward>(exporter), {.schedule_delay = kNever});
    for (int i = 0; i < 3; ++i) processor.OnEnd(MakeSpan(i));
  }
  EXPECT_EQ(exporter->spans().size(), 3u);
  EXPECT_EQ(exporter->shutdowns(), 1);
}

TEST(BatchSpanProcessorTest, FullQueueDropsNewSpansWithoutBlocking) {
  Batch b({.max_queue_size = 8, .max_export_batch_size = 4, .schedule_delay = kNever});
  b.exporter->Block();
  for (int i = 0; i < 4; ++i) b.processor->OnEnd(MakeSpan(i));  // a full batch: the thread takes it
  ASSERT_TRUE(b.exporter->WaitEntered(1));                      // ...and is now stuck in Export
  // The queue is empty again; 8 fit, 12 do not. OnEnd must return although the exporter is stuck
  // (if it blocked, this test would hang).
  for (int i = 4; i < 24; ++i) b.processor->OnEnd(MakeSpan(i));
  BatchSpanProcessorStats s = b.processor->stats();
  EXPECT_EQ(s.queued, 24u);
  EXPECT_EQ(s.exported, 0u);
  EXPECT_EQ(s.dropped_queue_full, 12u);
  EXPECT_EQ(s.pending, 12u);  // 4 in the stuck export, 8 queued
  EXPECT_INVARIANT(s);
  // A flush cannot finish while the exporter is stuck: it gives up at its timeout.
  EXPECT_FALSE(b.processor->ForceFlush(milliseconds(1)));

  b.exporter->Release();
  EXPECT_TRUE(b.processor->ForceFlush(milliseconds::max()));  // no overflow: waits, then true
  s = b.processor->stats();
  EXPECT_EQ(s.exported, 12u);
  EXPECT_EQ(s.dropped_queue_full, 12u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_INVARIANT(s);
  // The first 12 spans made it, in order; the last 12 were the ones dropped.
  auto spans = b.exporter->spans();
  ASSERT_EQ(spans.size(), 12u);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(spans[i].name, "span-" + std::to_string(i));
}

TEST(BatchSpanProcessorTest, ExportFailureIsCounted) {
  Batch b({.max_queue_size = 100, .max_export_batch_size = 4, .schedule_delay = kNever});
  b.exporter->SetFail(true);
  for (int i = 0; i < 10; ++i) b.processor->OnEnd(MakeSpan(i));
  EXPECT_TRUE(b.processor->ForceFlush());  // the flush finished; the export failed
  BatchSpanProcessorStats s = b.processor->stats();
  EXPECT_EQ(s.exported, 0u);
  EXPECT_EQ(s.dropped_export_failed, 10u);
  EXPECT_INVARIANT(s);

  b.exporter->SetFail(false);
  b.exporter->SetThrow(true);  // an exception is a failure too, and the thread survives it
  for (int i = 0; i < 3; ++i) b.processor->OnEnd(MakeSpan(i));
  EXPECT_TRUE(b.processor->ForceFlush());
  b.exporter->SetThrow(false);
  b.processor->OnEnd(MakeSpan(99));
  EXPECT_TRUE(b.processor->ForceFlush());
  s = b.processor->stats();
  EXPECT_EQ(s.dropped_export_failed, 13u);
  EXPECT_EQ(s.exported, 1u);
  EXPECT_INVARIANT(s);
}

TEST(BatchSpanProcessorTest, SpansEndedAfterShutdownAreCounted) {
  Batch b({.schedule_delay = kNever});
  b.processor->OnEnd(MakeSpan(0));
  b.processor->Shutdown();
  b.processor->Shutdown();  // idempotent
  for (int i = 1; i <= 5; ++i) b.processor->OnEnd(MakeSpan(i));
  EXPECT_TRUE(b.processor->ForceFlush());
  BatchSpanProcessorStats s = b.processor->stats();
  EXPECT_EQ(s.queued, 6u);
  EXPECT_EQ(s.exported, 1u);
  EXPECT_EQ(s.dropped_after_shutdown, 5u);
  EXPECT_INVARIANT(s);
  EXPECT_EQ(b.exporter->spans().size(), 1u);
  EXPECT_EQ(b.exporter->shutdowns(), 1);
}

TEST(BatchSpanProcessorTest, BatchesNeverExceedMaxExportBatchSize) {
  Batch b({.max_queue_size = 1000, .max_export_batch_size = 7, .schedule_delay = milliseconds(1)});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&b, t] {
      for (int i = 0; i < 50; ++i) b.processor->OnEnd(MakeSpan(t * 100 + i));
    });
  for (auto& th : threads) th.join();
  EXPECT_TRUE(b.processor->ForceFlush());
  size_t total = 0;
  for (size_t n : b.exporter->batch_sizes()) {
    EXPECT_GE(n, 1u);
    EXPECT_LE(n, 7u);
    total += n;
  }
  EXPECT_EQ(total, 200u);
  EXPECT_INVARIANT(b.processor->stats());
}

TEST(BatchSpanProcessorTest, BatchSizeIsCappedByTheQueueSize) {
  // A batch larger than the queue could never fill: it is taken as the queue size.
  Batch b({.max_queue_size = 4, .max_export_batch_size = 100, .schedule_delay = kNever});
  for (int i = 0; i < 4; ++i) b.processor->OnEnd(MakeSpan(i));
  ASSERT_TRUE(b.exporter->WaitSpans(4));  // a full batch of 4 triggered the export
  EXPECT_EQ(b.exporter->batch_sizes(), std::vector<size_t>{4});
}

TEST(BatchSpanProcessorTest, StatsInvariantHoldsUnderConcurrency) {
  Batch b({.max_queue_size = 32, .max_export_batch_size = 8, .schedule_delay = milliseconds(1)});
  std::atomic<bool> done{false};
  std::thread checker([&] {
    while (!done.load()) EXPECT_INVARIANT(b.processor->stats());
  });
  std::vector<std::thread> producers;
  for (int t = 0; t < 4; ++t)
    producers.emplace_back([&b, t] {
      for (int i = 0; i < 2000; ++i) {
        b.processor->OnEnd(MakeSpan(t * 10000 + i));
        if (t == 0 && i == 1000) b.exporter->SetFail(true);
        if (t == 0 && i == 1500) b.exporter->SetFail(false);
      }
    });
  std::thread shutdown;
  // Shut down while producers may still be running: late spans are counted, never lost.
  producers[1].join();
  shutdown = std::thread([&b] { b.processor->Shutdown(); });
  for (size_t t = 0; t < producers.size(); ++t)
    if (t != 1) producers[t].join();
  shutdown.join();
  done = true;
  checker.join();
  BatchSpanProcessorStats s = b.processor->stats();
  EXPECT_EQ(s.queued, 8000u);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_INVARIANT(s);
  EXPECT_EQ(b.exporter->spans().size(), s.exported);
}

TEST(BatchSpanProcessorTest, ConcurrentShutdownCallsShutTheExporterDownOnce) {
  Batch b({.schedule_delay = kNever});
  for (int i = 0; i < 100; ++i) b.processor->OnEnd(MakeSpan(i));
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back([&b] { b.processor->Shutdown(); });
  for (auto& th : threads) th.join();
  EXPECT_EQ(b.exporter->spans().size(), 100u);
  EXPECT_EQ(b.exporter->shutdowns(), 1);
}

TEST(BatchSpanProcessorTest, TracerPassesItsResourceAndFlushesOnDestruction) {
  auto e = std::make_unique<TestExporter>();
  TestExporter* exporter = e.get();
  auto processor = std::make_shared<BatchSpanProcessor>(
      std::move(e), BatchSpanProcessorOptions{.schedule_delay = kNever});
  {
    TracerOptions o;
    o.processor = processor;
    o.resource.service_name = "orchestrator";
    o.resource.service_version = "2.0";
    Tracer tracer(std::move(o));
    for (int i = 0; i < 10; ++i) tracer.StartSpan("s").End();
    EXPECT_TRUE(tracer.ForceFlush());
    EXPECT_EQ(exporter->spans().size(), 10u);
    EXPECT_EQ(exporter->last_resource().service_version, "2.0");
    tracer.StartSpan("last").End();
  }  // ~Tracer shuts the processor down: "last" is exported
  EXPECT_EQ(exporter->spans().size(), 11u);
  EXPECT_EQ(exporter->shutdowns(), 1);
  EXPECT_EQ(processor->stats().exported, 11u);
}

// The tracer hands the batch processor its spans as records; the export thread replays them, so
// the exporter sees the events (literal or not) with their values, in time order.
TEST(BatchSpanProcessorTest, ReplaysRecordedSpansOnTheExportThread) {
  auto e = std::make_unique<TestExporter>();
  TestExporter* exporter = e.get();
  auto processor = std::make_shared<BatchSpanProcessor>(
      std::move(e), BatchSpanProcessorOptions{.schedule_delay = kNever});
  TracerOptions o;
  o.processor = processor;
  Tracer tracer(std::move(o));
  {
    Span span = tracer.StartSpan("s");
    const int64_t start = SpanFastPath::StartMonoNanos(span);
    SpanFastPath::AddLiteralEventAt(span, start + 2, "completed", {{"status", "success"}});
    SpanFastPath::AddLiteralEventAt(span, start, "acquired", {{"n", int64_t{4}}});
    SpanFastPath::AddEventAt(span, start + 1, "custom");
  }
  ASSERT_TRUE(tracer.ForceFlush());
  const auto spans = exporter->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].name, "s");
  ASSERT_EQ(spans[0].events.size(), 3u);
  EXPECT_EQ(spans[0].events[0].name, "acquired");
  EXPECT_EQ(std::get<int64_t>(spans[0].events[0].attributes.at(0).value), 4);
  EXPECT_EQ(spans[0].events[1].name, "custom");
  EXPECT_EQ(spans[0].events[2].name, "completed");
  EXPECT_EQ(std::get<std::string>(spans[0].events[2].attributes.at(0).value), "success");
}

// The export thread rebuilds each batch in the buffers of the one before, but not a giant's: a span
// with a 32 MiB attribute is exported, and its memory is given back afterwards.
TEST(BatchSpanProcessorTest, AGiantSpansBuffersAreNotKeptForReuse) {
  class LargestAttributeExporter final : public SpanExporter {
   public:
    bool Export(const std::vector<SpanData>& batch, const Resource&) override {
      for (const SpanData& span : batch) {
        for (const Attribute& a : span.attributes) {
          if (const auto* text = std::get_if<std::string>(&a.value))
            largest = std::max(largest, text->size());
        }
      }
      return true;
    }
    size_t largest = 0;  // read after ForceFlush, which orders it
  };
  auto e = std::make_unique<LargestAttributeExporter>();
  LargestAttributeExporter* exporter = e.get();
  TracerOptions o;
  o.processor = std::make_shared<BatchSpanProcessor>(
      std::move(e), BatchSpanProcessorOptions{.schedule_delay = kNever});
  Tracer tracer(std::move(o));
  constexpr size_t kGiant = size_t{32} << 20;
  const size_t mapped_before = mallinfo2().hblkhd;  // glibc serves blocks this large by mmap
  {
    Span span = tracer.StartSpan("giant");
    span.SetAttribute("blob", std::string(kGiant, 'x'));
  }
  ASSERT_TRUE(tracer.ForceFlush());
  EXPECT_EQ(exporter->largest, kGiant);
  EXPECT_LT(mallinfo2().hblkhd, mapped_before + kGiant / 2)
      << "the export thread kept the giant span's buffers";
}

// ---- JSON lines exporter ------------------------------------------------------------------------

using testing_support::TmpStream;

std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> lines;
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return lines;
  char buf[65536];
  while (std::fgets(buf, sizeof buf, f) != nullptr) lines.emplace_back(buf);
  std::fclose(f);
  return lines;
}

SpanData FullSpan() {
  SpanData s;
  s.name = "worker_call:tool_call";
  s.trace_id = ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                   .value_or(SpanContext{})
                   .trace_id;
  s.span_id.bytes = {0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8};
  s.parent_span_id.bytes = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
  s.kind = SpanKind::kClient;
  s.start_unix_nanos = 1'767'225'600'000'000'001;
  s.end_unix_nanos = 1'767'225'600'250'000'002;
  s.attributes = {{"lane", std::string("tool_call")},
                  {"big", std::numeric_limits<int64_t>::max()},
                  {"negative", int64_t{-42}},
                  {"ratio", 0.25},
                  {"ok", false}};
  s.events = {
      SpanEvent{"acquired_slot", 1'767'225'600'100'000'000, {{"globalConcurrency", int64_t{4}}}},
      SpanEvent{"timeout", 1'767'225'600'200'000'000, {}, 3}};
  s.status = StatusCode::kError;
  s.status_message = "ToolError";
  s.dropped_attributes_count = 2;
  s.dropped_events_count = 1;
  return s;
}

const json& Value(const json& attributes, const std::string& key) {
  for (const json& a : attributes)
    if (a.at("key") == key) return a.at("value");
  static const json kMissing;
  ADD_FAILURE() << "no attribute " << key << " in " << attributes.dump();
  return kMissing;
}

TEST(JsonLinesSpanExporterTest, WritesOneOtlpJsonObjectPerSpan) {
  TmpStream out;
  auto exporter = NewJsonLinesSpanExporter(out.get());
  Resource resource{.service_name = "orchestrator",
                    .service_version = "1.0.0",
                    .deployment_environment = "production",
                    .extra = {{"host.name", std::string("box-1")}, {"shard", int64_t{3}}}};
  SpanData root = MakeSpan(0);
  root.start_unix_nanos = 5;
  root.end_unix_nanos = 6;
  ASSERT_TRUE(exporter->Export({FullSpan(), root}, resource));
  ASSERT_TRUE(exporter->Export({MakeSpan(1)}, resource));

  auto lines = out.Lines();
  ASSERT_EQ(lines.size(), 3u);
  json j = json::parse(lines[0]);

  // The resource: the three named attributes, then the extra ones.
  ASSERT_TRUE(j.at("resource").is_object());
  const json& ra = j.at("resource").at("attributes");
  ASSERT_TRUE(ra.is_array());
  ASSERT_EQ(ra.size(), 5u);
  EXPECT_EQ(Value(ra, "service.name"), json({{"stringValue", "orchestrator"}}));
  EXPECT_EQ(Value(ra, "service.version"), json({{"stringValue", "1.0.0"}}));
  EXPECT_EQ(Value(ra, "deployment.environment"), json({{"stringValue", "production"}}));
  EXPECT_EQ(Value(ra, "host.name"), json({{"stringValue", "box-1"}}));
  EXPECT_EQ(Value(ra, "shard"), json({{"intValue", "3"}}));

  EXPECT_EQ(j.at("traceId"), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(j.at("spanId"), "53995c3f42cd8ad8");
  EXPECT_EQ(j.at("parentSpanId"), "00f067aa0ba902b7");
  EXPECT_EQ(j.at("name"), "worker_call:tool_call");
  ASSERT_TRUE(j.at("kind").is_number_integer());
  EXPECT_EQ(j.at("kind"), 3);
  ASSERT_TRUE(j.at("startTimeUnixNano").is_string());
  EXPECT_EQ(j.at("startTimeUnixNano"), "1767225600000000001");
  EXPECT_EQ(j.at("endTimeUnixNano"), "1767225600250000002");

  const json& attrs = j.at("attributes");
  ASSERT_TRUE(attrs.is_array());
  ASSERT_EQ(attrs.size(), 5u);
  EXPECT_EQ(attrs[0].at("key"), "lane");  // in order
  EXPECT_EQ(Value(attrs, "lane"), json({{"stringValue", "tool_call"}}));
  ASSERT_TRUE(Value(attrs, "big").at("intValue").is_string());
  EXPECT_EQ(Value(attrs, "big").at("intValue"), "9223372036854775807");
  EXPECT_EQ(Value(attrs, "negative").at("intValue"), "-42");
  ASSERT_TRUE(Value(attrs, "ratio").at("doubleValue").is_number_float());
  EXPECT_EQ(Value(attrs, "ratio").at("doubleValue"), 0.25);
  ASSERT_TRUE(Value(attrs, "ok").at("boolValue").is_boolean());
  EXPECT_EQ(Value(attrs, "ok").at("boolValue"), false);
  for (const json& a : attrs) EXPECT_EQ(a.at("value").size(), 1u) << a.dump();

  const json& events = j.at("events");
  ASSERT_TRUE(events.is_array());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].at("timeUnixNano"), "1767225600100000000");
  EXPECT_EQ(events[0].at("name"), "acquired_slot");
  EXPECT_EQ(Value(events[0].at("attributes"), "globalConcurrency"), json({{"intValue", "4"}}));
  EXPECT_EQ(events[0].at("droppedAttributesCount"), 0);
  EXPECT_EQ(events[1].at("name"), "timeout");
  EXPECT_TRUE(events[1].at("attributes").is_array());
  EXPECT_TRUE(events[1].at("attributes").empty());
  EXPECT_EQ(events[1].at("droppedAttributesCount"), 3);

  ASSERT_TRUE(j.at("status").is_object());
  EXPECT_EQ(j.at("status").at("code"), 2);
  EXPECT_EQ(j.at("status").at("message"), "ToolError");
  ASSERT_TRUE(j.at("droppedAttributesCount").is_number_integer());
  EXPECT_EQ(j.at("droppedAttributesCount"), 2);
  EXPECT_EQ(j.at("droppedEventsCount"), 1);

  // A root span: parentSpanId is "", defaults are written out, not omitted.
  json r = json::parse(lines[1]);
  EXPECT_EQ(r.at("parentSpanId"), "");
  EXPECT_EQ(r.at("kind"), 1);
  EXPECT_EQ(r.at("startTimeUnixNano"), "5");
  EXPECT_EQ(r.at("attributes"), json::array());
  EXPECT_EQ(r.at("events"), json::array());
  EXPECT_EQ(r.at("status"), json({{"code", 0}, {"message", ""}}));
  EXPECT_EQ(r.at("droppedAttributesCount"), 0);
  EXPECT_EQ(r.at("droppedEventsCount"), 0);
  EXPECT_EQ(r.at("traceId").get<std::string>().size(), 32u);
  EXPECT_EQ(r.at("spanId").get<std::string>().size(), 16u);
  EXPECT_EQ(r.at("resource"), j.at("resource"));
  EXPECT_EQ(json::parse(lines[2]).at("name"), "span-1");
}

TEST(JsonLinesSpanExporterTest, ResourceOmitsEmptyFields) {
  TmpStream out;
  auto exporter = NewJsonLinesSpanExporter(out.get());
  ASSERT_TRUE(exporter->Export({MakeSpan(0)}, Resource{}));  // service.name defaults to laneguard
  Resource none;
  none.service_name.clear();
  ASSERT_TRUE(exporter->Export({MakeSpan(1)}, none));
  auto lines = out.Lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(json::parse(lines[0]).at("resource"),
            json::parse(R"({"attributes":[{"key":"service.name",
                                           "value":{"stringValue":"laneguard"}}]})"));
  EXPECT_EQ(json::parse(lines[1]).at("resource"), json::parse(R"({"attributes":[]})"));
}

TEST(JsonLinesSpanExporterTest, OddValuesStillMakeValidJson) {
  TmpStream out;
  auto exporter = NewJsonLinesSpanExporter(out.get());
  SpanData s = MakeSpan(0);
  s.name = "bad \xff utf-8 \"quoted\"\n";
  s.attributes = {{"nan", std::numeric_limits<double>::quiet_NaN()},
                  {"inf", std::numeric_limits<double>::infinity()},
                  {"-inf", -std::numeric_limits<double>::infinity()},
                  {"min", std::numeric_limits<int64_t>::min()}};
  ASSERT_TRUE(exporter->Export({s}, Resource{}));
  auto lines = out.Lines();
  ASSERT_EQ(lines.size(), 1u);
  json j = json::parse(lines[0]);
  EXPECT_EQ(j.at("name"), "bad \xef\xbf\xbd utf-8 \"quoted\"\n");
  EXPECT_EQ(Value(j.at("attributes"), "nan"), json({{"doubleValue", "NaN"}}));
  EXPECT_EQ(Value(j.at("attributes"), "inf"), json({{"doubleValue", "Infinity"}}));
  EXPECT_EQ(Value(j.at("attributes"), "-inf"), json({{"doubleValue", "-Infinity"}}));
  EXPECT_EQ(Value(j.at("attributes"), "min"), json({{"intValue", "-9223372036854775808"}}));
}

TEST(JsonLinesSpanExporterTest, WriteErrorsReturnFalse) {
  std::FILE* full = std::fopen("/dev/full", "w");
  ASSERT_NE(full, nullptr);
  auto exporter = NewJsonLinesSpanExporter(full);
  EXPECT_FALSE(exporter->Export({MakeSpan(0)}, Resource{}));
  std::fclose(full);

  std::FILE* read_only = std::fopen("/dev/null", "r");
  ASSERT_NE(read_only, nullptr);
  auto exporter2 = NewJsonLinesSpanExporter(read_only);
  EXPECT_FALSE(exporter2->Export({MakeSpan(0)}, Resource{}));
  std::fclose(read_only);
}

// A file that fills up mid-batch keeps the spans whose whole lines fit, and no cut line; the
// exporter says how many got through and why the rest did not.
TEST(JsonLinesSpanExporterTest, AFileThatFillsUpKeepsWholeLinesAndSaysWhy) {
  const std::string path =
      ::testing::TempDir() + "laneguard_full_spans_" + std::to_string(getpid()) + ".jsonl";
  std::filesystem::remove(path);
  std::vector<SpanData> batch;
  for (int i = 0; i < 40; ++i) batch.push_back(FullSpan());
  auto exporter = NewJsonLinesFileSpanExporter(path);
  ASSERT_TRUE(exporter.ok());
  ExportResult result;
  {
    testing_support::FileSizeLimit limit(8192);
    result = (*exporter)->ExportWithResult(batch, Resource{});
  }
  const auto lines = ReadLines(path);
  std::filesystem::remove(path);
  EXPECT_EQ(result.code, ExportResult::Code::kFailed);
  EXPECT_EQ(result.error, "File too large");
  EXPECT_GT(lines.size(), 0u);
  EXPECT_LT(lines.size(), batch.size());
  EXPECT_EQ(result.delivered, lines.size());
  for (const std::string& line : lines) {
    ASSERT_EQ(line.back(), '\n');
    EXPECT_TRUE(json::parse(line, nullptr, false).is_object()) << line;
  }
}

// Through a batch processor, the spans that did not make it are counted with the reason.
TEST(BatchSpanProcessorTest, AFullDeviceCountsEverySpanWithTheReason) {
  std::FILE* full = std::fopen("/dev/full", "w");
  ASSERT_NE(full, nullptr);
  {
    BatchSpanProcessor p(NewJsonLinesSpanExporter(full));
    for (int i = 0; i < 5; ++i) p.OnEnd(MakeSpan(i));
    p.Shutdown();
    const BatchExportStats s = p.stats();
    EXPECT_EQ(s.dropped_export_failed, 5u);
    EXPECT_EQ(s.exported, 0u);
    EXPECT_EQ(p.last_export_error(), "No space left on device");
    EXPECT_EQ(DescribeDrops(s, p.last_export_error()), "No space left on device");
  }
  std::fclose(full);
}

TEST(DescribeDropsTest, NamesEachReasonWithItsCountWhenThereAreSeveral) {
  BatchExportStats s;
  EXPECT_EQ(DescribeDrops(s, ""), "");
  s.dropped_queue_full = 120;
  EXPECT_EQ(DescribeDrops(s, ""), "queue full");
  s.dropped_export_failed = 80;
  EXPECT_EQ(DescribeDrops(s, "No space left on device"),
            "120 queue full, 80 No space left on device");
  BatchExportStats t;
  t.dropped_shutdown_timeout = 3;
  EXPECT_EQ(DescribeDrops(t, ""), "not sent before the flush timeout");
  EXPECT_EQ(DescribeDrops(t, "Couldn't connect to server"),
            "not sent before the flush timeout; last error: Couldn't connect to server");
}

TEST(JsonLinesSpanExporterTest, FileExporterAppends) {
  const std::string path = ::testing::TempDir() + "laneguard_spans_" + std::to_string(getpid()) +
                           "_" + std::to_string(NewSpanId().bytes[0]) + ".jsonl";
  std::filesystem::remove(path);
  for (int i = 0; i < 2; ++i) {
    auto exporter = NewJsonLinesFileSpanExporter(path);
    ASSERT_TRUE(exporter.ok()) << exporter.error().message();
    ASSERT_TRUE((*exporter)->Export({MakeSpan(i)}, Resource{}));
    (*exporter)->Shutdown();
  }
  auto lines = ReadLines(path);
  std::filesystem::remove(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(json::parse(lines[0]).at("name"), "span-0");
  EXPECT_EQ(json::parse(lines[1]).at("name"), "span-1");
}

TEST(JsonLinesSpanExporterTest, FileExporterOnABadPathNamesThePath) {
  const std::string path = "/nonexistent-laneguard-dir/sub/spans.jsonl";
  auto exporter = NewJsonLinesFileSpanExporter(path);
  ASSERT_FALSE(exporter.ok());
  EXPECT_NE(exporter.error().message().find(path), std::string::npos) << exporter.error().message();
  EXPECT_NE(exporter.error().message().find("No such file or directory"), std::string::npos)
      << exporter.error().message();
  EXPECT_EQ(exporter.error().value(), json(path).dump());
}

TEST(JsonLinesSpanExporterTest, StdoutExporterExists) {
  auto exporter = NewStdoutSpanExporter();
  ASSERT_NE(exporter, nullptr);
  EXPECT_TRUE(exporter->Export({}, Resource{}));  // an empty batch writes nothing
}

TEST(JsonLinesSpanExporterTest, EndToEndThroughATracer) {
  TmpStream out;
  ManualClock clock;
  {
    TracerOptions o;
    o.resource = {.service_name = "orchestrator", .service_version = "1.0.0"};
    o.processor = std::make_shared<BatchSpanProcessor>(NewJsonLinesSpanExporter(out.get()),
                                                       BatchSpanProcessorOptions{});
    o.clock = &clock;
    Tracer tracer(std::move(o));
    Span parent = tracer.StartSpan("request", nullptr, SpanKind::kServer);
    const SpanContext pc = parent.context();
    Span child = tracer.StartSpan("worker_call:tool_call", &pc, SpanKind::kInternal,
                                  {{"taskId", std::string("t-1")}});
    clock.AdvanceMs(2);
    child.AddEvent("acquired_slot", {{"globalConcurrency", int64_t{4}}});
    child.SetStatus(StatusCode::kOk);
    child.End();
    parent.End();
  }  // ~Tracer flushes
  auto lines = out.Lines();
  ASSERT_EQ(lines.size(), 2u);
  json child = json::parse(lines[0]), parent = json::parse(lines[1]);
  EXPECT_EQ(child.at("traceId"), parent.at("traceId"));
  EXPECT_EQ(child.at("parentSpanId"), parent.at("spanId"));
  EXPECT_EQ(parent.at("parentSpanId"), "");
  EXPECT_EQ(parent.at("kind"), 2);
  EXPECT_EQ(child.at("status").at("code"), 1);
  EXPECT_EQ(child.at("endTimeUnixNano"), "1767225600002000000");
  EXPECT_EQ(Value(child.at("resource").at("attributes"), "service.version"),
            json({{"stringValue", "1.0.0"}}));
}

}  // namespace
}  // namespace laneguard
