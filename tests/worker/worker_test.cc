// The spec's integration tests for the worker-call wrappers, batches and request scopes.
#include "laneguard/worker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <thread>

#include "support/tmp_stream.h"
#include "trace/span_fast_path.h"

namespace laneguard {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

struct CustomError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override { Build(Config{}); }

  void Build(Config config, double sample_rate = 1.0, bool spans = true) {
    calls_.reset();
    tracer_.reset();
    manager_.reset();
    ManagerOptions mo;
    mo.clock = &clock_;
    mo.start_background_thread = false;
    manager_ = ResourceBudgetManager::Create(std::move(config), std::move(mo)).value();
    exporter_ = new InMemorySpanExporter;
    TracerOptions to;
    to.enabled = spans;
    to.sample_rate = sample_rate;
    to.clock = &clock_;
    to.resource.service_name = "weathervane-orchestrator";
    to.processor = NewSimpleSpanProcessor(std::unique_ptr<SpanExporter>(exporter_));
    tracer_ = std::make_unique<Tracer>(std::move(to));
    calls_ = std::make_unique<WorkerCalls>(*manager_, *tracer_);
  }

  std::vector<SpanData> Spans() { return exporter_->spans(); }
  static std::vector<std::string> EventNames(const SpanData& span) {
    std::vector<std::string> names;
    for (const auto& e : span.events) names.push_back(e.name);
    return names;
  }
  static const AttributeValue* Attr(const Attributes& attrs, std::string_view key) {
    for (const auto& a : attrs)
      if (a.key == key) return &a.value;
    return nullptr;
  }
  static std::string StrAttr(const Attributes& attrs, std::string_view key) {
    const AttributeValue* v = Attr(attrs, key);
    return v && std::holds_alternative<std::string>(*v) ? std::get<std::string>(*v) : "<missing>";
  }
  int Active() { return manager_->GetConcurrencyStatus().global.active; }

  // Wrappers over the same manager whose tracer has a clock of its own, 5 s ahead.
  struct OwnClockCalls {
    explicit OwnClockCalls(WorkerTest& t) : clock(t.clock_.UnixAt(0) + 5'000'000'000) {
      auto exporter = std::make_unique<InMemorySpanExporter>();
      exported = exporter.get();
      TracerOptions to;
      to.clock = &clock;
      to.processor = NewSimpleSpanProcessor(std::move(exporter));
      tracer = std::make_unique<Tracer>(std::move(to));
      calls = std::make_unique<WorkerCalls>(*t.manager_, *tracer);
    }
    ManualClock clock;
    InMemorySpanExporter* exported = nullptr;
    std::unique_ptr<Tracer> tracer;
    std::unique_ptr<WorkerCalls> calls;
  };

  ManualClock clock_;
  std::unique_ptr<ResourceBudgetManager> manager_;
  std::unique_ptr<Tracer> tracer_;
  std::unique_ptr<WorkerCalls> calls_;
  InMemorySpanExporter* exporter_ = nullptr;  // owned by the tracer's processor
};

TEST_F(WorkerTest, BasicWrapperExecutionReturnsTheResultAndRecordsASpan) {
  int result = calls_->Call("task-123", [] { return 42; });
  EXPECT_EQ(result, 42);
  EXPECT_EQ(Active(), 0);
  auto metrics = manager_->GetMetrics();
  ASSERT_EQ(metrics.size(), 1u);
  EXPECT_TRUE(metrics[0].success);
  EXPECT_EQ(metrics[0].lane, "tool_call");

  auto spans = Spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].name, "worker_call:tool_call");
  EXPECT_EQ(StrAttr(spans[0].attributes, "taskId"), "task-123");
  EXPECT_EQ(StrAttr(spans[0].attributes, "lane"), "tool_call");
  EXPECT_THAT(EventNames(spans[0]), ElementsAre("acquired_slot", "execution_started",
                                                "execution_succeeded", "call_completed"));
  const auto& acquired = spans[0].events[0].attributes;
  EXPECT_EQ(std::get<int64_t>(*Attr(acquired, "globalConcurrency")), 1);
  EXPECT_EQ(std::get<int64_t>(*Attr(acquired, "laneConcurrency")), 1);
  EXPECT_EQ(StrAttr(spans[0].events[3].attributes, "status"), "success");
  EXPECT_EQ(spans[0].status, StatusCode::kOk);
}

// On one clock the span takes the manager's readings: it starts when the slot was granted and
// ends when it was released, to the nanosecond. On two clocks each reads its own.
TEST_F(WorkerTest, SpanTimesAreTheSlotsGrantAndReleaseOnASharedClock) {
  clock_.AdvanceMs(10);
  calls_->Call("t", [&] { clock_.AdvanceMs(25); });
  auto spans = Spans();
  ASSERT_EQ(spans.size(), 1u);
  const int64_t granted = clock_.UnixAt(10'000'000);
  EXPECT_EQ(spans[0].start_unix_nanos, granted);
  EXPECT_EQ(spans[0].end_unix_nanos, granted + 25'000'000);
  ASSERT_EQ(spans[0].events.size(), 4u);
  EXPECT_EQ(spans[0].events[0].time_unix_nanos, granted);               // acquired_slot
  EXPECT_EQ(spans[0].events[3].time_unix_nanos, granted + 25'000'000);  // call_completed
  EXPECT_EQ(std::get<double>(*Attr(spans[0].events[3].attributes, "duration")), 25.0);

  OwnClockCalls own(*this);
  own.calls->Call("t", [&] {
    clock_.AdvanceMs(25);
    own.clock.AdvanceMs(7);
  });
  spans = own.exported->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].start_unix_nanos, own.clock.UnixAt(0));
  EXPECT_EQ(spans[0].end_unix_nanos, own.clock.UnixAt(7'000'000));
}

// A recording span adds no clock read to a call when the manager and the tracer share a clock.
TEST(WorkerClockTest, ARecordingSpanAddsNoClockReadOnASharedClock) {
  class CountingClock final : public Clock {
   public:
    int64_t MonotonicNanos() const override {
      ++reads;
      return inner.MonotonicNanos();
    }
    int64_t UnixNanos() const override {
      ++reads;
      return inner.UnixNanos();
    }
    int64_t UnixAt(int64_t mono_nanos) const override { return inner.UnixAt(mono_nanos); }
    ManualClock inner;
    mutable std::atomic<int> reads{0};
  };
  auto reads_per_call = [](bool spans) {
    CountingClock clock;
    ManagerOptions mo;
    mo.clock = &clock;
    mo.start_background_thread = false;
    auto manager = ResourceBudgetManager::Create(Config{}, std::move(mo)).value();
    TracerOptions to;
    to.enabled = spans;
    to.clock = &clock;
    to.processor = NewSimpleSpanProcessor(std::make_unique<InMemorySpanExporter>());
    Tracer tracer(std::move(to));
    WorkerCalls calls(*manager, tracer);
    calls.Call("warm-up", [] {});
    const int before = clock.reads.load();
    calls.Call("t", [] {});
    return clock.reads.load() - before;
  };
  const int without_spans = reads_per_call(false);
  EXPECT_GT(without_spans, 0);
  EXPECT_EQ(reads_per_call(true), without_spans);
}

TEST_F(WorkerTest, ContextExposesStopTokenDeadlineSpanAndCallId) {
  calls_->Call("t", [&](CallContext& ctx) {
    EXPECT_TRUE(ctx.guarded());
    EXPECT_EQ(ctx.call_id(), "call-1");
    EXPECT_EQ(ctx.deadline_mono_nanos(), 300000LL * 1'000'000);
    EXPECT_FALSE(ctx.stop_token().stop_requested());
    ctx.span().SetAttribute("custom", int64_t{7});
    ctx.span().AddEvent("halfway");
  });
  auto spans = Spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(std::get<int64_t>(*Attr(spans[0].attributes, "custom")), 7);
  EXPECT_THAT(EventNames(spans[0]), ::testing::Contains("halfway"));
}

TEST_F(WorkerTest, AsyncOperationsRunOnAnotherThreadAndCarryResults) {
  auto a = calls_->CallAsync("task-a", [] { return std::string("alpha"); });
  auto b = calls_->CallAsync("task-b", [](CallContext& ctx) { return ctx.guarded() ? 2 : -1; },
                             {.lane = "file_read"});
  EXPECT_EQ(a.get(), "alpha");
  EXPECT_EQ(b.get(), 2);
  auto failing = calls_->CallAsync("task-c", []() -> int { throw CustomError("async boom"); });
  EXPECT_THROW(failing.get(), CustomError);
  EXPECT_EQ(Active(), 0);
  EXPECT_EQ(manager_->GetStatistics().total_calls, 3);
}

// The same on an executor: results, the call's own exceptions and refusals travel in the future,
// and the calls run on the pool's threads.
TEST_F(WorkerTest, AsyncOperationsOnAnExecutorCarryResultsExceptionsAndRefusals) {
  ThreadPool pool(2);
  const std::thread::id caller = std::this_thread::get_id();
  auto a = calls_->CallAsync(pool, "task-a", [&] { return std::this_thread::get_id() != caller; });
  auto b = calls_->CallAsync(pool, "task-b", [](CallContext& ctx) { return ctx.call_id(); },
                             {.lane = "file_read"});
  auto failing = calls_->CallAsync(pool, "task-c", []() -> int { throw CustomError("boom"); });
  EXPECT_TRUE(a.get());
  EXPECT_THAT(b.get(), StartsWith("call-"));
  EXPECT_THROW(failing.get(), CustomError);

  auto held = manager_->TryAcquire("holder", "forecast_model");  // the lane's limit is 1
  ASSERT_TRUE(held.ok());
  auto refused = calls_->CallAsync(pool, "task-d", [] { return 1; }, {.lane = "forecast_model"});
  try {
    refused.get();
    FAIL() << "expected ResourceLimitExceeded";
  } catch (const ResourceLimitExceeded& e) {
    EXPECT_EQ(e.rejection().reason, RejectReason::kLaneLimit);
  }
  held->Release(true);
  pool.Shutdown();
  EXPECT_EQ(Active(), 0);
  EXPECT_EQ(manager_->GetStatistics().total_calls, 4);  // a, b, c and the holder
  EXPECT_EQ(pool.completed(), 4u);
}

// An executor that refuses or drops the task: the caller hears of it, and no slot is left taken.
TEST_F(WorkerTest, AnExecutorThatRefusesOrDropsACallLeavesNoSlotTaken) {
  struct Refusing : Executor {
    void Submit(std::function<void()>) override { throw std::runtime_error("queue full"); }
  } refusing;
  EXPECT_THROW(calls_->CallAsync(refusing, "task-a", [] { return 1; }), std::runtime_error);
  struct Dropping : Executor {
    void Submit(std::function<void()> task) override { task = nullptr; }
  } dropping;
  auto dropped = calls_->CallAsync(dropping, "task-b", [] { return 1; });
  try {
    dropped.get();
    FAIL() << "expected std::future_error";
  } catch (const std::future_error& e) {
    EXPECT_EQ(e.code(), std::future_errc::broken_promise);
  }
  EXPECT_EQ(Active(), 0);
  EXPECT_EQ(manager_->GetStatistics().total_calls, 0);
}

TEST_F(WorkerTest, ErrorsPropagateUnchangedAndReleaseAsFailureWithTheirType) {
  try {
    calls_->Call("task-err", []() -> int { throw CustomError("tool exploded"); });
    FAIL() << "expected CustomError";
  } catch (const CustomError& e) {
    EXPECT_STREQ(e.what(), "tool exploded");
  }
  EXPECT_EQ(Active(), 0);
  auto m = manager_->GetMetrics().at(0);
  EXPECT_FALSE(m.success);
  EXPECT_EQ(m.error_type, "laneguard::(anonymous namespace)::CustomError");
  auto span = Spans().at(0);
  EXPECT_EQ(span.status, StatusCode::kError);
  EXPECT_EQ(span.status_message, "tool exploded");
  EXPECT_THAT(EventNames(span),
              ElementsAre("acquired_slot", "execution_started", "exception", "call_completed"));
  EXPECT_EQ(StrAttr(span.events[2].attributes, "exception.type"),
            "laneguard::(anonymous namespace)::CustomError");
  // Non-std exceptions too.
  EXPECT_THROW(calls_->Call("t", [] { throw 17; }), int);
  EXPECT_EQ(manager_->GetMetrics().at(1).error_type, "int");
  EXPECT_EQ(Active(), 0);
}

TEST_F(WorkerTest, CustomTimeoutsWarnThenEscalateAndThrowWhenFnReturnsLate) {
  bool user_hook_ran = false;
  EXPECT_THROW(calls_->Call("slow",
                            [&](CallContext& ctx) {
                              ctx.OnHardTimeout([&] { user_hook_ran = true; });
                              std::stop_token stop = ctx.stop_token();
                              clock_.AdvanceMs(100);
                              manager_->Tick();  // the timer thread's work, driven by hand
                              EXPECT_TRUE(stop.stop_requested());
                              clock_.AdvanceMs(50);
                              manager_->Tick();
                              EXPECT_EQ(manager_->GetConcurrencyStatus().global.overrunning, 1);
                              return 1;  // returns after its hard deadline
                            },
                            {.lane = "critic", .timeout_ms = 100}),
               WorkerCallTimeout);
  EXPECT_TRUE(user_hook_ran);
  EXPECT_EQ(Active(), 0) << "released even though fn overran";
  auto m = manager_->GetMetrics().at(0);
  EXPECT_TRUE(m.timeout_reached);
  EXPECT_TRUE(m.escalated);
  EXPECT_EQ(m.error_type, "WorkerCallTimeout");
  EXPECT_EQ(m.timeout_ms, 100);
  auto span = Spans().at(0);
  std::vector<std::string> phases;
  for (const auto& e : span.events)
    if (e.name == "timeout") phases.push_back(StrAttr(e.attributes, "phase"));
  EXPECT_THAT(phases, ElementsAre("warning", "escalation"));
  EXPECT_EQ(span.status, StatusCode::kError);
}

// The timeout events come from the release's record, stamped with the deadlines, so they are in
// time order with the events after them and need no timer tick: here the clock alone passes both
// deadlines (the record's rule), and fn throws after them.
TEST_F(WorkerTest, TimeoutEventsAreStampedWithTheDeadlinesInTimeOrder) {
  clock_.AdvanceMs(10);
  EXPECT_THROW(calls_->Call("late",
                            [&] {
                              clock_.AdvanceMs(170);
                              throw CustomError("gave up");
                            },
                            {.timeout_ms = 100}),  // hard deadline at 150 ms
               CustomError);
  const SpanData span = Spans().at(0);
  EXPECT_THAT(EventNames(span), ElementsAre("acquired_slot", "execution_started", "timeout",
                                            "timeout", "exception", "call_completed"));
  const int64_t granted = clock_.UnixAt(10'000'000);
  EXPECT_EQ(StrAttr(span.events[2].attributes, "phase"), "warning");
  EXPECT_EQ(span.events[2].time_unix_nanos, granted + 100'000'000);
  EXPECT_EQ(StrAttr(span.events[3].attributes, "phase"), "escalation");
  EXPECT_EQ(span.events[3].time_unix_nanos, granted + 150'000'000);
  EXPECT_EQ(StrAttr(span.events[4].attributes, "exception.type"),
            "laneguard::(anonymous namespace)::CustomError");
  EXPECT_EQ(StrAttr(span.events[4].attributes, "exception.message"), "gave up");
  EXPECT_EQ(span.events[4].time_unix_nanos, granted + 170'000'000);
  EXPECT_EQ(span.status, StatusCode::kError);
  EXPECT_EQ(span.status_message, "gave up");
  for (size_t i = 1; i < span.events.size(); ++i)
    EXPECT_LE(span.events[i - 1].time_unix_nanos, span.events[i].time_unix_nanos) << i;

  // Past the warning only: one event, and the call still succeeds.
  calls_->Call("slowish", [&] { clock_.AdvanceMs(120); }, {.timeout_ms = 100});
  EXPECT_THAT(EventNames(Spans().at(1)),
              ElementsAre("acquired_slot", "execution_started", "timeout", "execution_succeeded",
                          "call_completed"));
  EXPECT_EQ(Spans().at(1).status, StatusCode::kOk);
}

// An event recorded live after the warning passed (as the process runner's signal_sent is) comes
// after the warning in the exported span, though with no timer tick the warning is written only
// when the call ends.
TEST_F(WorkerTest, ALiveEventAfterTheDeadlineFollowsTheTimeoutEvent) {
  calls_->Call("t",
               [&](CallContext& ctx) {
                 clock_.AdvanceMs(120);
                 ctx.span().AddEvent("seen_late");
               },
               {.timeout_ms = 100});
  const SpanData span = Spans().at(0);
  EXPECT_THAT(EventNames(span), ElementsAre("acquired_slot", "execution_started", "timeout",
                                            "seen_late", "execution_succeeded", "call_completed"));
  EXPECT_EQ(span.events[2].time_unix_nanos, clock_.UnixAt(100'000'000));
  EXPECT_EQ(span.events[3].time_unix_nanos, clock_.UnixAt(120'000'000));
}

// The timer thread puts the timeout events on the span as the phases happen: the warning is there
// while fn still runs, stamped with the deadline, and the exported span has it once.
TEST_F(WorkerTest, TimeoutEventsAreOnTheSpanBeforeTheCallIsReleased) {
  EXPECT_THROW(
      calls_->Call(
          "t",
          [&](CallContext& ctx) {
            clock_.AdvanceMs(120);
            const std::optional<SpanData> before = internal::SpanFastPath::Snapshot(ctx.span());
            ASSERT_TRUE(before.has_value());
            EXPECT_THAT(EventNames(*before), ElementsAre("acquired_slot", "execution_started"));
            manager_->Tick();  // the warning (deadline 100 ms)
            const std::optional<SpanData> warned = internal::SpanFastPath::Snapshot(ctx.span());
            ASSERT_TRUE(warned.has_value());
            EXPECT_THAT(EventNames(*warned),
                        ElementsAre("acquired_slot", "execution_started", "timeout"));
            EXPECT_EQ(StrAttr(warned->events[2].attributes, "phase"), "warning");
            EXPECT_EQ(warned->events[2].time_unix_nanos, clock_.UnixAt(100'000'000));
            clock_.AdvanceMs(30);
            manager_->Tick();  // the escalation (hard deadline 150 ms)
            const std::optional<SpanData> escalated = internal::SpanFastPath::Snapshot(ctx.span());
            ASSERT_TRUE(escalated.has_value());
            ASSERT_EQ(escalated->events.size(), 4u);
            EXPECT_EQ(StrAttr(escalated->events[3].attributes, "phase"), "escalation");
            EXPECT_EQ(escalated->events[3].time_unix_nanos, clock_.UnixAt(150'000'000));
          },
          {.timeout_ms = 100}),
      WorkerCallTimeout);
  const SpanData span = Spans().at(0);
  EXPECT_THAT(EventNames(span), ElementsAre("acquired_slot", "execution_started", "timeout",
                                            "timeout", "call_completed"));
  EXPECT_EQ(StrAttr(span.events[2].attributes, "phase"), "warning");
  EXPECT_EQ(StrAttr(span.events[3].attributes, "phase"), "escalation");
}

// The wrapper listens for the phases from the admission on whenever tracing is enabled, also for a
// span sampled out (which gets no events); the hard-timeout hook runs either way, and with tracing
// off too, where the guard listens only once a hook is set.
TEST_F(WorkerTest, TheHardTimeoutHookRunsWhetherTheSpanRecordsOrNot) {
  for (const auto& [sample_rate, spans] : {std::pair{0.0, true}, std::pair{1.0, false}}) {
    Build(Config{}, sample_rate, spans);
    bool hook_ran = false;
    EXPECT_THROW(calls_->Call("t",
                              [&](CallContext& ctx) {
                                ctx.OnHardTimeout([&] { hook_ran = true; });
                                clock_.AdvanceMs(100);
                                manager_->Tick();
                                clock_.AdvanceMs(50);
                                manager_->Tick();
                              },
                              {.timeout_ms = 100}),
                 WorkerCallTimeout);
    EXPECT_TRUE(hook_ran) << sample_rate << " " << spans;
    EXPECT_TRUE(Spans().empty());
    EXPECT_EQ(Active(), 0);
  }
}

// On a tracer clock of its own, a deadline keeps its distance from the span's start.
TEST_F(WorkerTest, TimeoutEventsFollowTheTracersOwnClock) {
  OwnClockCalls own(*this);
  own.clock.AdvanceMs(3);
  own.calls->Call("t",
                  [&] {
                    clock_.AdvanceMs(120);
                    own.clock.AdvanceMs(120);
                  },
                  {.timeout_ms = 100});
  const SpanData span = own.exported->spans().at(0);
  ASSERT_EQ(span.events.size(), 5u);
  EXPECT_EQ(span.events[2].name, "timeout");
  EXPECT_EQ(span.events[2].time_unix_nanos, own.clock.UnixAt(3'000'000 + 100'000'000));
}

TEST_F(WorkerTest, ReturningAfterTheWarningButBeforeTheHardDeadlineSucceeds) {
  int r = calls_->Call("t",
                       [&] {
                         clock_.AdvanceMs(120);
                         manager_->Tick();
                         return 5;
                       },
                       {.timeout_ms = 100});  // hard deadline at 150 ms
  EXPECT_EQ(r, 5);
  auto m = manager_->GetMetrics().at(0);
  EXPECT_TRUE(m.success);
  EXPECT_TRUE(m.timeout_reached);
  EXPECT_FALSE(m.escalated);
}

TEST_F(WorkerTest, MetadataIsTrackedOnTheSpan) {
  calls_->Call(
      "t", [] {},
      {.lane = "critic", .metadata = {{"toolName", "forecast_stitch"}, {"inputSize", "1024"}}});
  auto span = Spans().at(0);
  EXPECT_EQ(StrAttr(span.attributes, "toolName"), "forecast_stitch");
  EXPECT_EQ(StrAttr(span.attributes, "inputSize"), "1024");
  EXPECT_EQ(span.name, "worker_call:critic");
}

TEST_F(WorkerTest, ResourceLimitRejectionThrowsATypedErrorNamingTheReason) {
  Slot held = manager_->TryAcquire("holder", "forecast_model").value();
  bool ran = false;
  try {
    calls_->Call("t", [&] { ran = true; }, {.lane = "forecast_model"});
    FAIL() << "expected ResourceLimitExceeded";
  } catch (const ResourceLimitExceeded& e) {
    EXPECT_THAT(e.what(), StartsWith("Resource limit exceeded"));
    EXPECT_THAT(e.what(), HasSubstr("lane_limit"));
    EXPECT_EQ(e.reason(), RejectReason::kLaneLimit);
    // The refusal as the Error TryAcquire returned: what() is its message, prefixed.
    EXPECT_EQ(e.error().code(), ErrorCode::kResourceExhausted);
    EXPECT_EQ(e.error().field(), "lane");
    EXPECT_EQ(std::string(e.what()), "Resource limit exceeded: " + e.error().message());
  }
  EXPECT_FALSE(ran);
  EXPECT_THROW(calls_->Call("t", [] {}, {.lane = "nope"}), ResourceLimitExceeded);
  auto spans = Spans();
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].status, StatusCode::kError);
  EXPECT_EQ(StrAttr(spans[0].attributes, "laneguard.rejection_reason"), "lane_limit");
}

TEST_F(WorkerTest, GracefulDegradationRunsUnguardedAndSaysSo) {
  Slot held = manager_->TryAcquire("holder", "forecast_model").value();
  testing_support::TmpStream log_file;
  {
    auto logger = std::make_shared<JsonLogger>(JsonLogger::Options{}, log_file.get());
    WorkerCalls calls(*manager_, *tracer_, logger);
    int r = calls.Call("t",
                       [](CallContext& ctx) {
                         EXPECT_FALSE(ctx.guarded());
                         EXPECT_EQ(ctx.call_id(), "");
                         return 9;
                       },
                       {.lane = "forecast_model", .throw_on_resource_limit_exceeded = false});
    EXPECT_EQ(r, 9);
    EXPECT_EQ(calls.unguarded_calls(), 1u);
  }
  const std::string log_text = log_file.ReadAll();
  EXPECT_THAT(log_text, HasSubstr("unguarded"));
  EXPECT_THAT(log_text, HasSubstr("lane_limit"));
  auto span = Spans().at(0);
  EXPECT_EQ(std::get<bool>(*Attr(span.attributes, "laneguard.unguarded")), true);
  EXPECT_EQ(manager_->GetStatistics().total_calls, 0) << "no slot, so no record";
}

TEST_F(WorkerTest, BatchOperationsShareOneSlotAndReportItems) {
  {
    BatchCall batch = calls_->Batch("task-batch", "file_write", {.timeout_ms = 600000});
    EXPECT_THROW(batch.Execute([] {}), std::logic_error) << "before Init";
    batch.Init();
    EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("file_write").active, 1);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(batch.Execute([i] { return i * 2; }), i * 2);
    EXPECT_THROW(batch.Execute([]() -> int { throw CustomError("bad item"); }), CustomError);
    EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("file_write").active, 1);
    batch.Release(true);
    batch.Release(false);  // idempotent
    EXPECT_EQ(batch.items(), 4);
    EXPECT_EQ(batch.errors(), 1);
  }
  EXPECT_EQ(Active(), 0);
  auto m = manager_->GetMetrics();
  ASSERT_EQ(m.size(), 1u);
  EXPECT_TRUE(m[0].success);
  auto span = Spans().at(0);
  EXPECT_THAT(
      EventNames(span),
      ElementsAre("acquired_slot", "execution_started", "batch_started", "batch_item_processed",
                  "batch_item_processed", "batch_item_processed", "batch_item_failed",
                  "batch_completed", "execution_succeeded", "call_completed"));
  const auto& completed = span.events[7].attributes;
  EXPECT_EQ(std::get<int64_t>(*Attr(completed, "items")), 4);
  EXPECT_EQ(std::get<int64_t>(*Attr(completed, "errors")), 1);
}

TEST_F(WorkerTest, UnreleasedBatchSettlesAsAbandoned) {
  {
    BatchCall batch = calls_->Batch("t", "file_write");
    batch.Init();
    batch.Execute([] {});
  }
  EXPECT_EQ(Active(), 0);
  EXPECT_EQ(manager_->GetMetrics().at(0).error_type, "abandoned");
}

TEST_F(WorkerTest, RequestScopesShareOneDeadlineAndParentTheirCalls) {
  auto results = calls_->WithRequestScope(
      "task-123",
      [&](RequestScope& scope) {
        EXPECT_EQ(scope.remaining_ms(), 1000);
        int a = scope.Call([&](CallContext& ctx) {
          EXPECT_EQ(ctx.deadline_mono_nanos(), 1000LL * 1'000'000);
          clock_.AdvanceMs(400);
          return 1;
        });
        int b = scope.Call([&](CallContext& ctx) {
          // 600 ms left of the shared budget.
          EXPECT_EQ(ctx.deadline_mono_nanos() - clock_.MonotonicNanos(), 600LL * 1'000'000);
          clock_.AdvanceMs(700);
          return 2;
        });
        return std::vector<int>{a, b};
      },
      {.lane = "tool_call", .timeout_ms = 1000});
  EXPECT_THAT(results, ElementsAre(1, 2));
  auto spans = Spans();
  ASSERT_EQ(spans.size(), 3u);  // two calls, then the scope
  const SpanData& scope_span = spans[2];
  EXPECT_EQ(scope_span.name, "request_scope:tool_call");
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(spans[i].trace_id, scope_span.trace_id);
    EXPECT_EQ(spans[i].parent_span_id, scope_span.span_id);
  }
  // Each call's timeout was what was left of the shared budget.
  EXPECT_EQ(manager_->GetMetrics().at(0).timeout_ms, 1000);
  EXPECT_EQ(manager_->GetMetrics().at(1).timeout_ms, 600);
}

TEST_F(WorkerTest, CallAfterTheScopeDeadlineThrowsWithoutRunning) {
  bool ran = false;
  EXPECT_THROW(calls_->WithRequestScope("t",
                                        [&](RequestScope& scope) {
                                          clock_.AdvanceMs(2000);
                                          return scope.Call([&] {
                                            ran = true;
                                            return 0;
                                          });
                                        },
                                        {.timeout_ms = 1000}),
               WorkerCallTimeout);
  EXPECT_FALSE(ran);
  auto spans = Spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].status, StatusCode::kError) << "the scope's span records the failure";
}

TEST_F(WorkerTest, ScopeDeadlineErrorCarriesTheScopesBudgetAndElapsedTime) {
  try {
    calls_->WithRequestScope("t",
                             [&](RequestScope& scope) {
                               clock_.AdvanceMs(2000);
                               return scope.Nested([](RequestScope&) { return 0; });
                             },
                             {.timeout_ms = 1000});
    FAIL() << "expected WorkerCallTimeout";
  } catch (const WorkerCallTimeout& e) {
    EXPECT_EQ(e.timeout_ms(), 1000);
    EXPECT_DOUBLE_EQ(e.duration_ms(), 2000);
  }
}

TEST_F(WorkerTest, NestedRequestScopesGetTheSmallerOfParentRemainingAndTheirOwn) {
  calls_->WithRequestScope("task-1",
                           [&](RequestScope& outer) {
                             clock_.AdvanceMs(300);  // 700 ms left
                             outer.Nested(
                                 [&](RequestScope& inner) { EXPECT_EQ(inner.remaining_ms(), 500); },
                                 {.timeout_ms = 500});
                             outer.Nested(
                                 [&](RequestScope& inner) {
                                   EXPECT_EQ(inner.remaining_ms(), 700);
                                   inner.Call([] {});
                                 },
                                 {.timeout_ms = 5000});
                             return 0;
                           },
                           {.timeout_ms = 1000});
  auto spans = Spans();
  // inner-1, call, inner-2, outer
  ASSERT_EQ(spans.size(), 4u);
  const SpanData& outer = spans[3];
  const SpanData& inner2 = spans[2];
  const SpanData& call = spans[1];
  EXPECT_EQ(spans[0].parent_span_id, outer.span_id);
  EXPECT_EQ(inner2.parent_span_id, outer.span_id);
  EXPECT_EQ(call.parent_span_id, inner2.span_id);
  EXPECT_EQ(call.trace_id, outer.trace_id);
}

TEST_F(WorkerTest, LaneCategorizationNamesSpansAndCountsPerLane) {
  for (const char* lane : {"tool_call", "file_read", "file_write", "critic", "forecast_model"})
    calls_->Call("t", [] {}, {.lane = lane});
  auto stats = manager_->GetStatistics();
  for (const auto& [lane, s] : stats.lanes) EXPECT_EQ(s.total_calls, 1) << lane;
  std::vector<std::string> names;
  for (const auto& s : Spans()) names.push_back(s.name);
  EXPECT_THAT(
      names, ElementsAre("worker_call:tool_call", "worker_call:file_read", "worker_call:file_write",
                         "worker_call:critic", "worker_call:forecast_model"));
}

TEST_F(WorkerTest, RapidSequentialCallsLeakNothing) {
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(calls_->Call("t", [i] { return i; }), i);
  EXPECT_EQ(Active(), 0);
  EXPECT_EQ(manager_->GetStatistics().total_calls, 1000);
  EXPECT_EQ(Spans().size(), 1000u);
}

TEST_F(WorkerTest, MixedLanesFromManyThreadsRespectLimitsAndLeakNothing) {
  Build(Config{}, /*sample_rate=*/0.0);
  const std::vector<std::string> lanes = {"tool_call", "file_read", "file_write", "critic",
                                          "forecast_model"};
  std::atomic<int> refused{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        try {
          calls_->Call("t",
                       [&] {
                         if (i % 7 == 0) throw CustomError("x");
                         std::this_thread::yield();
                       },
                       {.lane = lanes[(t + i) % lanes.size()]});
        } catch (const ResourceLimitExceeded&) {
          ++refused;
        } catch (const CustomError&) {
          ++failed;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  auto stats = manager_->GetStatistics();
  EXPECT_EQ(stats.total_calls + refused.load(), 6 * 300);
  EXPECT_EQ(stats.failure_count, failed.load());
  EXPECT_EQ(Active(), 0);
  EXPECT_TRUE(Spans().empty()) << "sampled out";
}

TEST_F(WorkerTest, SpansOffDoesNoSpanWorkAndSampledOutStillPropagatesContext) {
  Build(Config{}, 1.0, /*spans=*/false);
  calls_->Call("t", [](CallContext& ctx) { EXPECT_FALSE(ctx.span().context().valid()); });
  EXPECT_TRUE(Spans().empty());
  Build(Config{}, 0.0);
  calls_->WithRequestScope("t", [](RequestScope& scope) {
    EXPECT_TRUE(scope.span_context().valid());
    EXPECT_FALSE(scope.span_context().sampled);
    scope.Call([&](CallContext& ctx) {
      EXPECT_EQ(ctx.span().context().trace_id, scope.span_context().trace_id);
    });
    return 0;
  });
  EXPECT_TRUE(Spans().empty());
}

TEST_F(WorkerTest, IncomingTraceparentIsJoined) {
  auto parent = ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  ASSERT_TRUE(parent.has_value());
  calls_->Call("t", [] {}, {.parent = *parent});
  auto span = Spans().at(0);
  EXPECT_EQ(span.trace_id.Hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(span.parent_span_id.Hex(), "00f067aa0ba902b7");
}

}  // namespace
}  // namespace laneguard

namespace laneguard {
namespace {

// A call that may wait (CallOptions::wait_ms) and did: on one clock its span starts when it began
// to wait, with a "queued" event there, and carries the wait as laneguard.wait_ms.
TEST_F(WorkerTest, ACallThatWaitedHasAQueuedEventAndItsWait) {
  Result<Slot> held = manager_->TryAcquire("holder", "forecast_model");  // limit 1
  ASSERT_TRUE(held.ok());
  CallOptions options;
  options.lane = "forecast_model";
  options.wait_ms = std::nullopt;
  options.priority = Priority::kHigh;
  const int64_t began = clock_.MonotonicNanos();
  std::thread waiter([&] {
    calls_->Call(
        "t", [] {}, options);
  });
  while (manager_->GetConcurrencyStatus().lanes.at("forecast_model").queued == 0)
    std::this_thread::yield();
  clock_.AdvanceMs(40);
  held->Release(true);
  waiter.join();

  auto spans = Spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].start_unix_nanos, clock_.UnixAt(began));
  EXPECT_THAT(EventNames(spans[0]), ElementsAre("queued", "acquired_slot", "execution_started",
                                                "execution_succeeded", "call_completed"));
  EXPECT_EQ(StrAttr(spans[0].events[0].attributes, "priority"), "high");
  EXPECT_EQ(std::get<double>(*Attr(spans[0].attributes, "laneguard.wait_ms")), 40.0);
  EXPECT_EQ(spans[0].events[1].time_unix_nanos, clock_.UnixAt(began + 40'000'000));
  EXPECT_EQ(manager_->GetMetrics().back().wait_ms, 40.0);
}

}  // namespace
}  // namespace laneguard
