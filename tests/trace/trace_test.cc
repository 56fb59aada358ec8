#include "laneguard/trace/trace.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <latch>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "laneguard/clock.h"
#include "trace/span_fast_path.h"

namespace laneguard {
namespace {

// The fast path the worker wrappers record with.
using internal::SpanFastPath;

constexpr int64_t kStart = 1'767'225'600'000'000'000;  // ManualClock's default start

TraceId TraceIdFromHex(const std::string& hex) {
  auto c = ParseTraceparent("00-" + hex + "-00f067aa0ba902b7-01");
  EXPECT_TRUE(c.has_value()) << hex;
  return c ? c->trace_id : TraceId{};
}

// A trace id whose last 8 bytes are `low`, read big-endian; the first 8 bytes are 0x01.
TraceId TraceIdWithLow(uint64_t low) {
  TraceId id;
  id.bytes.fill(1);
  for (int i = 15; i >= 8; --i) {
    id.bytes[i] = static_cast<uint8_t>(low);
    low >>= 8;
  }
  return id;
}

// A processor that records what the tracer does with it.
class RecordingProcessor final : public SpanProcessor {
 public:
  void OnEnd(SpanData&& span) override {
    std::lock_guard<std::mutex> lock(mu_);
    spans_.push_back(std::move(span));
  }
  bool ForceFlush(std::chrono::milliseconds) override {
    ++flushes;
    return true;
  }
  void Shutdown() override { ++shutdowns; }
  void SetResource(const Resource& resource) override {
    std::lock_guard<std::mutex> lock(mu_);
    resource_ = resource;
    ++resource_calls;
  }
  std::vector<SpanData> spans() const {
    std::lock_guard<std::mutex> lock(mu_);
    return spans_;
  }
  Resource resource() const {
    std::lock_guard<std::mutex> lock(mu_);
    return resource_;
  }

  std::atomic<int> flushes{0};
  std::atomic<int> shutdowns{0};
  std::atomic<int> resource_calls{0};

 private:
  mutable std::mutex mu_;
  std::vector<SpanData> spans_;
  Resource resource_;
};

// A clock that counts how often it is read.
class CountingClock final : public Clock {
 public:
  int64_t MonotonicNanos() const override {
    ++reads;
    return 0;
  }
  int64_t UnixNanos() const override {
    ++reads;
    return kStart;
  }
  mutable std::atomic<int> reads{0};
};

struct TracerFixture {
  explicit TracerFixture(double rate = 1.0, SpanLimits limits = {}, bool enabled = true) {
    TracerOptions o;
    o.enabled = enabled;
    o.sample_rate = rate;
    o.limits = limits;
    o.processor = processor;
    o.clock = &clock;
    o.resource.service_name = "svc";
    tracer = std::make_unique<Tracer>(std::move(o));
  }
  ManualClock clock;
  std::shared_ptr<RecordingProcessor> processor = std::make_shared<RecordingProcessor>();
  std::unique_ptr<Tracer> tracer;
};

// ---- ids ----------------------------------------------------------------------------------------

TEST(TraceIdTest, HexIsLowerCaseFixedWidthAndValidMeansNonZero) {
  TraceId t;
  EXPECT_FALSE(t.valid());
  EXPECT_EQ(t.Hex(), std::string(32, '0'));
  t.bytes = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
             0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
  EXPECT_TRUE(t.valid());
  EXPECT_EQ(t.Hex(), "4bf92f3577b34da6a3ce929d0e0e4736");

  SpanId s;
  EXPECT_FALSE(s.valid());
  EXPECT_EQ(s.Hex(), std::string(16, '0'));
  s.bytes = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
  EXPECT_TRUE(s.valid());
  EXPECT_EQ(s.Hex(), "00f067aa0ba902b7");
  SpanId last;
  last.bytes[7] = 1;  // one non-zero byte is enough
  EXPECT_TRUE(last.valid());
}

TEST(TraceIdTest, NewIdsAreDistinctAndNeverZero) {
  constexpr int kCount = 10'000;
  std::set<std::string> traces, spans;
  for (int i = 0; i < kCount; ++i) {
    TraceId t = NewTraceId();
    SpanId s = NewSpanId();
    ASSERT_TRUE(t.valid());
    ASSERT_TRUE(s.valid());
    traces.insert(t.Hex());
    spans.insert(s.Hex());
  }
  EXPECT_EQ(traces.size(), static_cast<size_t>(kCount));
  EXPECT_EQ(spans.size(), static_cast<size_t>(kCount));
}

TEST(TraceIdTest, ThreadsGetDifferentSequences) {
  std::vector<std::string> first(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&first, i] { first[i] = NewTraceId().Hex(); });
  for (auto& t : threads) t.join();
  EXPECT_EQ(std::set<std::string>(first.begin(), first.end()).size(), 4u);
}

// ---- traceparent --------------------------------------------------------------------------------

constexpr char kTrace[] = "4bf92f3577b34da6a3ce929d0e0e4736";
constexpr char kSpan[] = "00f067aa0ba902b7";

TEST(TraceparentTest, ParsesAndFormatsRoundTrip) {
  const std::string header = std::string("00-") + kTrace + "-" + kSpan + "-01";
  auto c = ParseTraceparent(header);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->trace_id.Hex(), kTrace);
  EXPECT_EQ(c->span_id.Hex(), kSpan);
  EXPECT_TRUE(c->sampled);
  EXPECT_TRUE(c->remote);
  EXPECT_TRUE(c->valid());
  EXPECT_EQ(FormatTraceparent(*c), header);
}

TEST(TraceparentTest, SampledFlagBothWays) {
  const std::string prefix = std::string("00-") + kTrace + "-" + kSpan + "-";
  auto unsampled = ParseTraceparent(prefix + "00");
  ASSERT_TRUE(unsampled.has_value());
  EXPECT_FALSE(unsampled->sampled);
  EXPECT_EQ(FormatTraceparent(*unsampled), prefix + "00");
  // Only bit 0 means sampled; other flag bits are accepted and not carried.
  auto other_bits = ParseTraceparent(prefix + "fe");
  ASSERT_TRUE(other_bits.has_value());
  EXPECT_FALSE(other_bits->sampled);
  auto sampled_with_bits = ParseTraceparent(prefix + "03");
  ASSERT_TRUE(sampled_with_bits.has_value());
  EXPECT_TRUE(sampled_with_bits->sampled);
  EXPECT_EQ(FormatTraceparent(*sampled_with_bits), prefix + "01");

  SpanContext local;
  local.trace_id = NewTraceId();
  local.span_id = NewSpanId();
  local.sampled = true;
  auto back = ParseTraceparent(FormatTraceparent(local));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->trace_id, local.trace_id);
  EXPECT_EQ(back->span_id, local.span_id);
  EXPECT_TRUE(back->sampled);
}

TEST(TraceparentTest, FutureVersionAccepted) {
  const std::string body = std::string(kTrace) + "-" + kSpan + "-01";
  for (const std::string& header :
       {"01-" + body + "-extra", "01-" + body, "fe-" + body + "-", "cc-" + body + "-x-y"}) {
    auto c = ParseTraceparent(header);
    ASSERT_TRUE(c.has_value()) << header;
    EXPECT_EQ(c->trace_id.Hex(), kTrace);
    EXPECT_EQ(c->span_id.Hex(), kSpan);
    EXPECT_TRUE(c->sampled);
    // We speak version 00 only.
    EXPECT_EQ(FormatTraceparent(*c), "00-" + body);
  }
}

TEST(TraceparentTest, InvalidCasesReturnNullopt) {
  const std::string t = kTrace, s = kSpan;
  const std::vector<std::string> invalid = {
      "",
      "ff-" + t + "-" + s + "-01",                                  // version ff
      "00-" + std::string(32, '0') + "-" + s + "-01",               // all-zero trace id
      "00-" + t + "-" + std::string(16, '0') + "-01",               // all-zero span id
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-" + s + "-01",           // upper-case trace id
      "00-" + t + "-00F067AA0BA902B7-01",                           // upper-case span id
      "00-" + t + "-" + s + "-0A",                                  // upper-case flags
      "0A-" + t + "-" + s + "-01",                                  // upper-case version
      "00-" + t.substr(1) + "-" + s + "-01",                        // trace id too short
      "00-" + t + "0-" + s + "-01",                                 // trace id too long
      "00-" + t + "-" + s.substr(1) + "-01",                        // span id too short
      "00-" + t + "-" + s + "-1",                                   // flags too short
      "00-" + t + "-" + s + "-011",                                 // flags too long
      "0-" + t + "-" + s + "-01",                                   // version too short
      "00" + t + "-" + s + "-01",                                   // missing dashes
      "00-" + t + s + "-01",                                        //
      "00-" + t + "-" + s + "01",                                   //
      "00_" + t + "-" + s + "-01",                                  // wrong separator
      "00-" + t + "-" + s + "-01" + "-",                            // version 00 + trailing
      "00-" + t + "-" + s + "-01" + "-extra",                       //
      "00-" + t + "-" + s + "-01 ",                                 //
      "01-" + t + "-" + s + "-01" + "extra",                        // future, no '-' after
      "00-4bf92f3577b34da6a3ce929d0e0e473g-" + s + "-01",           // non-hex in trace id
      "00-" + t + "-00f067aa0ba902bz-01",                           // non-hex in span id
      "00-" + t + "-" + s + "-0x",                                  // non-hex in flags
      "0g-" + t + "-" + s + "-01",                                  // non-hex in version
      " 00-" + t + "-" + s + "-01",                                 // leading space
      "00-" + t + "-" + s + "-01" + std::string(1, '\0'),           // trailing NUL
      std::string("00-") + std::string(32, '-') + "-" + s + "-01",  // dashes as digits
      "00-" + t + "-" + s + "-" + std::string(1, '\0') + std::string(1, '1'),
  };
  for (const std::string& h : invalid) EXPECT_FALSE(ParseTraceparent(h).has_value()) << h;
}

TEST(TraceparentTest, InvalidContextFormatsAsZerosWhichDoNotParse) {
  SpanContext empty;
  std::string h = FormatTraceparent(empty);
  EXPECT_EQ(h.size(), 55u);
  EXPECT_FALSE(ParseTraceparent(h).has_value());
}

// ---- sampler ------------------------------------------------------------------------------------

TEST(SamplerTest, RateZeroAndOneAreExact) {
  Sampler none(0.0), all(1.0);
  // The extremes of the shifted value: 0 and 2^63 - 1.
  for (uint64_t low :
       {uint64_t{0}, uint64_t{1}, uint64_t{2}, ~uint64_t{0}, ~uint64_t{0} - 1, uint64_t{1} << 63}) {
    EXPECT_FALSE(none.ShouldSample(TraceIdWithLow(low), nullptr)) << low;
    EXPECT_TRUE(all.ShouldSample(TraceIdWithLow(low), nullptr)) << low;
  }
  for (int i = 0; i < 10'000; ++i) {
    TraceId id = NewTraceId();
    ASSERT_FALSE(none.ShouldSample(id, nullptr));
    ASSERT_TRUE(all.ShouldSample(id, nullptr));
  }
}

TEST(SamplerTest, RateIsClamped) {
  EXPECT_EQ(Sampler(-0.5).rate(), 0.0);
  EXPECT_EQ(Sampler(2.0).rate(), 1.0);
  EXPECT_EQ(Sampler(std::nan("")).rate(), 0.0);
  EXPECT_TRUE(Sampler(2.0).ShouldSample(TraceIdWithLow(~uint64_t{0}), nullptr));
  EXPECT_FALSE(Sampler(-1.0).ShouldSample(TraceIdWithLow(0), nullptr));
}

TEST(SamplerTest, FollowsTheTraceIdRatioBasedRuleAtTheBoundary) {
  // rate 0.5: bound 2^62. (low >> 1) < 2^62  <=>  low < 2^63.
  Sampler half(0.5);
  EXPECT_TRUE(half.ShouldSample(TraceIdWithLow(0x7fffffffffffffffULL), nullptr));
  EXPECT_FALSE(half.ShouldSample(TraceIdWithLow(0x8000000000000000ULL), nullptr));
  // rate 0.25: bound 2^61  <=>  low < 2^62. Only the last 8 bytes matter.
  Sampler quarter(0.25);
  TraceId below = TraceIdWithLow(0x3fffffffffffffffULL);
  below.bytes.fill(0xff);
  for (int i = 8; i < 16; ++i) below.bytes[i] = i == 8 ? 0x3f : 0xff;
  EXPECT_TRUE(quarter.ShouldSample(below, nullptr));
  EXPECT_FALSE(quarter.ShouldSample(TraceIdWithLow(0x4000000000000000ULL), nullptr));
  // The lowest bit is shifted out: these two ids get the same answer.
  Sampler tiny(std::ldexp(1.0, -62));  // bound 2
  EXPECT_TRUE(tiny.ShouldSample(TraceIdWithLow(3), nullptr));
  EXPECT_FALSE(tiny.ShouldSample(TraceIdWithLow(4), nullptr));
  EXPECT_FALSE(tiny.ShouldSample(TraceIdWithLow(5), nullptr));
  // The W3C example id: its low half a3ce929d0e0e4736 is about 0.64 x 2^64.
  EXPECT_FALSE(half.ShouldSample(TraceIdFromHex(kTrace), nullptr));
  EXPECT_TRUE(Sampler(0.7).ShouldSample(TraceIdFromHex(kTrace), nullptr));
}

TEST(SamplerTest, DecisionIsDeterministic) {
  Sampler a(0.5), b(0.5);
  for (int i = 0; i < 1000; ++i) {
    TraceId id = NewTraceId();
    bool first = a.ShouldSample(id, nullptr);
    ASSERT_EQ(a.ShouldSample(id, nullptr), first);
    ASSERT_EQ(b.ShouldSample(id, nullptr), first);
  }
}

TEST(SamplerTest, ParentDecidesWhenValid) {
  SpanContext parent;
  parent.trace_id = NewTraceId();
  parent.span_id = NewSpanId();
  parent.sampled = true;
  EXPECT_TRUE(Sampler(0.0).ShouldSample(parent.trace_id, &parent));
  parent.sampled = false;
  EXPECT_FALSE(Sampler(1.0).ShouldSample(parent.trace_id, &parent));
  // An invalid parent does not count: the ratio decides.
  SpanContext invalid;
  invalid.sampled = true;
  EXPECT_FALSE(Sampler(0.0).ShouldSample(NewTraceId(), &invalid));
  invalid.sampled = false;
  EXPECT_TRUE(Sampler(1.0).ShouldSample(NewTraceId(), &invalid));
}

TEST(SamplerTest, SampledFractionMatchesRate) {
  constexpr int kN = 100'000;
  for (double rate : {0.25, 0.5}) {
    Sampler sampler(rate);
    int sampled = 0;
    for (int i = 0; i < kN; ++i) sampled += sampler.ShouldSample(NewTraceId(), nullptr) ? 1 : 0;
    const double sigma = std::sqrt(kN * rate * (1 - rate));
    EXPECT_NEAR(sampled, kN * rate, 5 * sigma) << "rate " << rate;
  }
}

// ---- spans --------------------------------------------------------------------------------------

TEST(SpanTest, RecordsNameKindAttributesEventsAndStatus) {
  TracerFixture f;
  Resource r = f.processor->resource();
  EXPECT_EQ(f.processor->resource_calls.load(), 1);
  EXPECT_EQ(r.service_name, "svc");

  Span span = f.tracer->StartSpan("worker_call:tool_call", nullptr, SpanKind::kClient,
                                  {{"lane", std::string("tool_call")}});
  ASSERT_TRUE(span.recording());
  EXPECT_TRUE(span.context().valid());
  EXPECT_TRUE(span.context().sampled);
  EXPECT_FALSE(span.context().remote);
  span.SetAttribute("taskId", std::string("t-1"));
  span.SetAttribute("attempt", int64_t{2});
  span.SetAttribute("ratio", 0.5);
  span.SetAttribute("retry", true);
  f.clock.AdvanceMs(5);
  span.AddEvent("acquired_slot", {{"globalConcurrency", int64_t{4}}});
  span.SetStatus(StatusCode::kError, "boom");
  f.clock.AdvanceMs(10);
  span.End();

  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  const SpanData& d = spans[0];
  EXPECT_EQ(d.name, "worker_call:tool_call");
  EXPECT_EQ(d.kind, SpanKind::kClient);
  EXPECT_EQ(d.trace_id, span.context().trace_id);
  EXPECT_EQ(d.span_id, span.context().span_id);
  EXPECT_FALSE(d.parent_span_id.valid());
  ASSERT_EQ(d.attributes.size(), 5u);
  EXPECT_EQ(d.attributes[0].key, "lane");
  EXPECT_EQ(std::get<std::string>(d.attributes[0].value), "tool_call");
  EXPECT_EQ(std::get<std::string>(d.attributes[1].value), "t-1");
  EXPECT_EQ(std::get<int64_t>(d.attributes[2].value), 2);
  EXPECT_EQ(std::get<double>(d.attributes[3].value), 0.5);
  EXPECT_EQ(std::get<bool>(d.attributes[4].value), true);
  ASSERT_EQ(d.events.size(), 1u);
  EXPECT_EQ(d.events[0].name, "acquired_slot");
  EXPECT_EQ(d.events[0].time_unix_nanos, kStart + 5'000'000);
  ASSERT_EQ(d.events[0].attributes.size(), 1u);
  EXPECT_EQ(std::get<int64_t>(d.events[0].attributes[0].value), 4);
  EXPECT_EQ(d.status, StatusCode::kError);
  EXPECT_EQ(d.status_message, "boom");
  EXPECT_EQ(d.start_unix_nanos, kStart);
  EXPECT_EQ(d.end_unix_nanos, kStart + 15'000'000);
  EXPECT_EQ(d.dropped_attributes_count, 0u);
  EXPECT_EQ(d.dropped_events_count, 0u);
}

// Events and the end stamped at times the caller read: on the span's timeline, clamped to its
// start (and listed by those times), and the end's time is the one given, not the clock's.
TEST(SpanTest, EventsAndEndAtGivenTimesUseThoseTimes) {
  TracerFixture f;
  f.clock.AdvanceMs(100);
  Span span = f.tracer->StartSpan("s");
  ASSERT_EQ(SpanFastPath::StartMonoNanos(span), 100'000'000);
  f.clock.AdvanceMs(50);
  SpanFastPath::AddEventAt(span, SpanFastPath::StartMonoNanos(span) + 2'000'000, "at_two_ms",
                           {{"k", int64_t{1}}});
  SpanFastPath::AddEventAt(span, 0, "before_the_start");
  SpanFastPath::EndAt(span, SpanFastPath::StartMonoNanos(span) + 3'000'000);
  SpanFastPath::AddEventAt(span, SpanFastPath::StartMonoNanos(span) + 4'000'000, "after_the_end");
  span.End();

  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  const SpanData& d = spans[0];
  const int64_t start = kStart + 100'000'000;
  EXPECT_EQ(d.start_unix_nanos, start);
  ASSERT_EQ(d.events.size(), 2u);
  EXPECT_EQ(d.events[0].name, "before_the_start");
  EXPECT_EQ(d.events[0].time_unix_nanos, start);
  EXPECT_TRUE(d.events[0].attributes.empty());
  EXPECT_EQ(d.events[1].name, "at_two_ms");
  EXPECT_EQ(d.events[1].time_unix_nanos, start + 2'000'000);
  ASSERT_EQ(d.events[1].attributes.size(), 1u);
  EXPECT_EQ(d.end_unix_nanos, start + 3'000'000);

  TracerFixture off(0.0);
  Span quiet = off.tracer->StartSpan("q");
  EXPECT_EQ(SpanFastPath::StartMonoNanos(quiet), 0);
  SpanFastPath::AddEventAt(quiet, 5, "e");
  SpanFastPath::EndAt(quiet, 5);
  EXPECT_TRUE(off.processor->spans().empty());
}

// StartSpanAt with a fill: what the fill records is on the span before anyone else has it, and
// the span is an ordinary one afterwards (its lock, taken without an atomic exchange, is free
// again). The fill is not called for a span that does not record.
TEST(SpanTest, StartSpanAtWithAFillRecordsBeforeTheSpanIsReturned) {
  TracerFixture f;
  f.clock.AdvanceMs(10);
  Span span = SpanFastPath::StartSpanAt(
      *f.tracer, 5'000'000, "filled", nullptr, SpanKind::kServer, [](internal::SpanEditor& edit) {
        edit.SetAttributes({{"k", int64_t{7}}}).AddLiteralEventAt(6'000'000, "first");
      });
  ASSERT_TRUE(span.recording());
  span.AddEvent("second");  // would wait forever if the fill's editor had left the lock taken
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].name, "filled");
  EXPECT_EQ(spans[0].kind, SpanKind::kServer);
  EXPECT_EQ(spans[0].start_unix_nanos, kStart + 5'000'000);
  ASSERT_EQ(spans[0].attributes.size(), 1u);
  EXPECT_EQ(std::get<int64_t>(spans[0].attributes[0].value), 7);
  ASSERT_EQ(spans[0].events.size(), 2u);
  EXPECT_EQ(spans[0].events[0].name, "first");
  EXPECT_EQ(spans[0].events[0].time_unix_nanos, kStart + 6'000'000);
  EXPECT_EQ(spans[0].events[1].name, "second");

  TracerFixture off(0.0);
  bool filled = false;
  Span quiet = SpanFastPath::StartSpanAt(*off.tracer, 0, "q", nullptr, SpanKind::kInternal,
                                         [&](internal::SpanEditor&) { filled = true; });
  EXPECT_FALSE(quiet.recording());
  EXPECT_FALSE(filled);
}

std::vector<std::string> Names(const SpanData& span) {
  std::vector<std::string> names;
  for (const SpanEvent& e : span.events) names.push_back(e.name);
  return names;
}

// Literal events keep their names and keys as addresses until the span is replayed; the span the
// processor gets has them among the ordinary events (which read the clock), with their times and
// values.
TEST(SpanTest, LiteralEventsTakeTheirPlaceAmongOrdinaryEvents) {
  TracerFixture f;
  f.clock.AdvanceMs(10);
  Span span = f.tracer->StartSpan("s");
  const int64_t t0 = SpanFastPath::StartMonoNanos(span);
  SpanFastPath::AddLiteralEventAt(span, t0 + 1, "first",
                                  {{"n", int64_t{1}}, {"text", std::string("one")}});
  f.clock.AdvanceNanos(2);
  span.AddEvent("second");
  SpanFastPath::AddLiteralEventAt(span, t0 + 3, "third");
  SpanFastPath::AddLiteralEventAt(span, t0 + 4, "fourth", {{"ok", true}});
  f.clock.AdvanceNanos(3);
  span.AddEvent("fifth", {{"k", 2.5}});
  SpanFastPath::AddLiteralEventAt(span, t0 + 6, "sixth",
                                  {{"a", int64_t{1}}, {"b", int64_t{2}}, {"c", int64_t{3}}});
  SpanFastPath::AddLiteralEventAt(span, t0 + 7, "seventh", {{"d", 1.5}});
  span.End();
  SpanFastPath::AddLiteralEventAt(span, t0 + 8, "after_the_end");

  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  const SpanData& d = spans[0];
  EXPECT_THAT(Names(d), ::testing::ElementsAre("first", "second", "third", "fourth", "fifth",
                                               "sixth", "seventh"));
  const int64_t start = kStart + 10'000'000;
  EXPECT_EQ(d.events[0].time_unix_nanos, start + 1);
  ASSERT_EQ(d.events[0].attributes.size(), 2u);
  EXPECT_EQ(d.events[0].attributes[0].key, "n");
  EXPECT_EQ(std::get<int64_t>(d.events[0].attributes[0].value), 1);
  EXPECT_EQ(d.events[0].attributes[1].key, "text");
  EXPECT_EQ(std::get<std::string>(d.events[0].attributes[1].value), "one");
  EXPECT_EQ(d.events[1].time_unix_nanos, start + 2);
  EXPECT_TRUE(d.events[2].attributes.empty());
  EXPECT_EQ(d.events[2].time_unix_nanos, start + 3);
  EXPECT_EQ(d.events[4].time_unix_nanos, start + 5);
  ASSERT_EQ(d.events[3].attributes.size(), 1u);
  EXPECT_TRUE(std::get<bool>(d.events[3].attributes[0].value));
  EXPECT_EQ(d.events[5].attributes.size(), 3u);
  EXPECT_EQ(d.events[5].time_unix_nanos, start + 6);
  ASSERT_EQ(d.events[6].attributes.size(), 1u);
  EXPECT_EQ(std::get<double>(d.events[6].attributes[0].value), 1.5);
  EXPECT_EQ(d.dropped_events_count, 0u);
}

TEST(SpanTest, LiteralAndOrdinaryEventsShareTheEventLimit) {
  TracerFixture f(1.0, SpanLimits{.max_events = 3});
  Span span = f.tracer->StartSpan("s");
  SpanFastPath::AddLiteralEventAt(span, 0, "a");
  span.AddEvent("b");
  SpanFastPath::AddLiteralEventAt(span, 0, "c");
  SpanFastPath::AddLiteralEventAt(span, 0, "dropped");
  span.AddEvent("dropped too");
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_THAT(Names(spans[0]), ::testing::ElementsAre("a", "b", "c"));
  EXPECT_EQ(spans[0].dropped_events_count, 2u);
}

// A limit of one attribute per event: a literal event with two is an ordinary one, and drops
// and counts its second attribute.
TEST(SpanTest, LiteralEventsKeepThePerEventAttributeLimit) {
  TracerFixture f(1.0, SpanLimits{.max_attributes_per_event = 1});
  Span span = f.tracer->StartSpan("s");
  SpanFastPath::AddLiteralEventAt(span, 0, "e", {{"a", int64_t{1}}, {"b", int64_t{2}}});
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(spans[0].events.size(), 1u);
  EXPECT_EQ(spans[0].events[0].attributes.size(), 1u);
  EXPECT_EQ(spans[0].events[0].dropped_attributes_count, 1u);
}

TEST(SpanTest, StatusFollowsOpenTelemetryRules) {
  TracerFixture f;
  {
    Span s = f.tracer->StartSpan("a");
    s.SetStatus(StatusCode::kError, "first");
    s.SetStatus(StatusCode::kUnset, "ignored");
    s.SetStatus(StatusCode::kError, "second");
  }
  {
    Span s = f.tracer->StartSpan("b");
    s.SetStatus(StatusCode::kError, "bad");
    s.SetStatus(StatusCode::kOk, "message dropped");
    s.SetStatus(StatusCode::kError, "ok is final");
  }
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].status, StatusCode::kError);
  EXPECT_EQ(spans[0].status_message, "second");
  EXPECT_EQ(spans[1].status, StatusCode::kOk);
  EXPECT_EQ(spans[1].status_message, "");
}

TEST(SpanTest, SetAttributeOverwritesAnExistingKey) {
  TracerFixture f(1.0, SpanLimits{.max_attributes = 2});
  Span span = f.tracer->StartSpan("s", nullptr, SpanKind::kInternal, {{"a", int64_t{1}}});
  span.SetAttribute("b", int64_t{2});
  span.SetAttribute("a", std::string("replaced"));  // at the limit: overwrite, not a drop
  span.SetAttribute("b", int64_t{3});
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(spans[0].attributes.size(), 2u);
  EXPECT_EQ(spans[0].attributes[0].key, "a");
  EXPECT_EQ(std::get<std::string>(spans[0].attributes[0].value), "replaced");
  EXPECT_EQ(spans[0].attributes[1].key, "b");
  EXPECT_EQ(std::get<int64_t>(spans[0].attributes[1].value), 3);
  EXPECT_EQ(spans[0].dropped_attributes_count, 0u);
}

TEST(SpanTest, AttributeLimitDropsAndCounts) {
  TracerFixture f;  // default limits: 128
  Span span = f.tracer->StartSpan("s");
  for (int i = 0; i < 129; ++i) span.SetAttribute("k" + std::to_string(i), int64_t{i});
  span.SetAttribute("k0", int64_t{-1});  // existing key: still overwritten at the limit
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(spans[0].attributes.size(), 128u);
  EXPECT_EQ(spans[0].dropped_attributes_count, 1u);
  EXPECT_EQ(spans[0].attributes[127].key, "k127");
  EXPECT_EQ(std::get<int64_t>(spans[0].attributes[0].value), -1);
}

TEST(SpanTest, StartAttributesAreLimitedToo) {
  TracerFixture f(1.0, SpanLimits{.max_attributes = 2});
  Span span = f.tracer->StartSpan("s", nullptr, SpanKind::kInternal,
                                  {{"a", int64_t{1}}, {"a", int64_t{2}}, {"b", true}, {"c", 1.0}});
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(spans[0].attributes.size(), 2u);
  EXPECT_EQ(std::get<int64_t>(spans[0].attributes[0].value), 2);
  EXPECT_EQ(spans[0].dropped_attributes_count, 1u);
}

TEST(SpanTest, EventLimitDropsAndCounts) {
  TracerFixture f;
  Span span = f.tracer->StartSpan("s");
  for (int i = 0; i < 129; ++i) span.AddEvent("e" + std::to_string(i));
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(spans[0].events.size(), 128u);
  EXPECT_EQ(spans[0].events.back().name, "e127");
  EXPECT_EQ(spans[0].dropped_events_count, 1u);
}

TEST(SpanTest, EventAttributeLimitDropsAndCountsOnTheEvent) {
  TracerFixture f(1.0, SpanLimits{.max_attributes_per_event = 3});
  Span span = f.tracer->StartSpan("s");
  Attributes five;
  for (int i = 0; i < 5; ++i) five.push_back({"k" + std::to_string(i), int64_t{i}});
  span.AddEvent("big", five);
  span.AddEvent("small", {{"x", true}});
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(spans[0].events.size(), 2u);
  ASSERT_EQ(spans[0].events[0].attributes.size(), 3u);
  EXPECT_EQ(spans[0].events[0].attributes[2].key, "k2");
  EXPECT_EQ(spans[0].events[0].dropped_attributes_count, 2u);
  EXPECT_EQ(spans[0].events[1].attributes.size(), 1u);
  EXPECT_EQ(spans[0].events[1].dropped_attributes_count, 0u);
  EXPECT_EQ(spans[0].dropped_attributes_count, 0u);  // span attributes are unaffected
}

TEST(SpanTest, EndTwiceExportsOnceAndLaterCallsAreIgnored) {
  TracerFixture f;
  Span span = f.tracer->StartSpan("s");
  f.clock.AdvanceMs(1);
  span.End();
  f.clock.AdvanceMs(1);
  span.End();
  span.SetAttribute("late", true);
  span.AddEvent("late");
  span.SetStatus(StatusCode::kError, "late");
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].end_unix_nanos, kStart + 1'000'000);
  EXPECT_TRUE(spans[0].attributes.empty());
  EXPECT_TRUE(spans[0].events.empty());
  EXPECT_EQ(spans[0].status, StatusCode::kUnset);
}

TEST(SpanTest, DestructorEnds) {
  TracerFixture f;
  SpanContext ctx;
  {
    Span span = f.tracer->StartSpan("scoped");
    ctx = span.context();
    f.clock.AdvanceMs(3);
    EXPECT_TRUE(f.processor->spans().empty());
  }
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].span_id, ctx.span_id);
  EXPECT_EQ(spans[0].end_unix_nanos, kStart + 3'000'000);
}

TEST(SpanTest, MovesTransferTheSpanAndAssignmentEndsTheOldOne) {
  TracerFixture f;
  Span a = f.tracer->StartSpan("a");
  const SpanContext a_ctx = a.context();
  Span b(std::move(a));
  EXPECT_FALSE(a.recording());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_FALSE(a.context().valid());
  EXPECT_EQ(b.context(), a_ctx);
  a.End();  // nothing
  EXPECT_TRUE(f.processor->spans().empty());

  b = f.tracer->StartSpan("c");  // ends "a" (now in b)
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].name, "a");
  b.End();
  EXPECT_EQ(f.processor->spans().size(), 2u);
}

TEST(SpanTest, NonRecordingSpanIsANoOpButHasAValidContext) {
  TracerFixture f(0.0);
  Span span = f.tracer->StartSpan("s");
  EXPECT_FALSE(span.recording());
  EXPECT_TRUE(span.context().valid());
  EXPECT_FALSE(span.context().sampled);
  span.SetAttribute("a", true);
  span.AddEvent("e");
  span.SetStatus(StatusCode::kError, "x");
  span.End();
  // Its children follow it: not sampled, same trace.
  SpanContext parent = span.context();
  Span child = f.tracer->StartSpan("child", &parent);
  EXPECT_FALSE(child.recording());
  EXPECT_EQ(child.context().trace_id, parent.trace_id);
  child.End();
  EXPECT_TRUE(f.processor->spans().empty());
  EXPECT_EQ(FormatTraceparent(span.context()).substr(52), "-00");
}

TEST(SpanTest, SampledRemoteParentIsFollowedAtRateZero) {
  TracerFixture f(0.0);
  auto parent = ParseTraceparent(std::string("00-") + kTrace + "-" + kSpan + "-01");
  ASSERT_TRUE(parent.has_value());
  Span span = f.tracer->StartSpan("s", &*parent);
  EXPECT_TRUE(span.recording());
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].trace_id.Hex(), kTrace);
  EXPECT_EQ(spans[0].parent_span_id.Hex(), kSpan);
}

TEST(SpanTest, DisabledTracerGivesInvalidContextAndDoesNothing) {
  CountingClock clock;
  auto processor = std::make_shared<RecordingProcessor>();
  TracerOptions o;
  o.enabled = false;
  o.processor = processor;
  o.clock = &clock;
  Tracer tracer(std::move(o));
  EXPECT_FALSE(tracer.enabled());
  SpanContext parent;
  parent.trace_id = NewTraceId();
  parent.span_id = NewSpanId();
  parent.sampled = true;
  Span span = tracer.StartSpan("s", &parent, SpanKind::kServer, {{"a", true}});
  EXPECT_FALSE(span.recording());
  EXPECT_FALSE(span.context().valid());
  span.SetAttribute("b", true);
  span.AddEvent("e");
  span.End();
  EXPECT_EQ(clock.reads.load(), 0);
  EXPECT_TRUE(processor->spans().empty());
}

TEST(SpanTest, ChildSpansShareTheTraceIdAndCarryTheParentSpanId) {
  TracerFixture f;
  Span root = f.tracer->StartSpan("root");
  const SpanContext root_ctx = root.context();
  Span child = f.tracer->StartSpan("child", &root_ctx);
  const SpanContext child_ctx = child.context();
  Span grandchild = f.tracer->StartSpan("grandchild", &child_ctx);
  EXPECT_EQ(child_ctx.trace_id, root_ctx.trace_id);
  EXPECT_NE(child_ctx.span_id, root_ctx.span_id);
  EXPECT_EQ(grandchild.context().trace_id, root_ctx.trace_id);
  grandchild.End();
  child.End();
  root.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[0].parent_span_id, child_ctx.span_id);
  EXPECT_EQ(spans[1].parent_span_id, root_ctx.span_id);
  EXPECT_FALSE(spans[2].parent_span_id.valid());
  // An invalid parent starts a new trace.
  SpanContext invalid;
  Span fresh = f.tracer->StartSpan("fresh", &invalid);
  EXPECT_NE(fresh.context().trace_id, root_ctx.trace_id);
  fresh.End();
  EXPECT_FALSE(f.processor->spans().back().parent_span_id.valid());
}

TEST(SpanTest, TimesComeFromTheInjectedClock) {
  ManualClock clock(1'000'000'000'000'000'000);
  auto processor = std::make_shared<RecordingProcessor>();
  TracerOptions o;
  o.processor = processor;
  o.clock = &clock;
  Tracer tracer(std::move(o));
  EXPECT_EQ(&tracer.clock(), &clock);
  clock.AdvanceNanos(7);
  Span span = tracer.StartSpan("s");
  clock.AdvanceNanos(11);
  span.AddEvent("e");
  clock.AdvanceNanos(13);
  span.End();
  auto spans = processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].start_unix_nanos, 1'000'000'000'000'000'007);
  EXPECT_EQ(spans[0].events[0].time_unix_nanos, 1'000'000'000'000'000'018);
  EXPECT_EQ(spans[0].end_unix_nanos, 1'000'000'000'000'000'031);
}

TEST(SpanTest, DefaultClockIsFastClockOnTheWallClock) {
  auto exporter = std::make_unique<InMemorySpanExporter>();
  InMemorySpanExporter* spans = exporter.get();
  TracerOptions o;
  o.processor = NewSimpleSpanProcessor(std::move(exporter));
  Tracer tracer(std::move(o));
  EXPECT_EQ(&tracer.clock(), &FastClock::Get());
  const int64_t before = SystemClock::Get().UnixNanos();
  tracer.StartSpan("default clock").End();
  const int64_t after = SystemClock::Get().UnixNanos();
  const std::vector<SpanData> exported = spans->spans();
  ASSERT_EQ(exported.size(), 1u);
  const SpanData& span = exported[0];
  // FastClock's wall time is its TSC time plus an offset up to a second old: off by the TSC's rate
  // error over that second (about 10 us), well within a millisecond.
  constexpr int64_t kAllowance = 1'000'000;
  EXPECT_GE(span.start_unix_nanos, before - kAllowance);
  EXPECT_LE(span.start_unix_nanos, after + kAllowance);
  EXPECT_GE(span.end_unix_nanos, span.start_unix_nanos);
}

// A clock whose wall time can jump (NTP stepping it) while the monotonic time runs on.
class SteppingClock final : public Clock {
 public:
  int64_t MonotonicNanos() const override { return mono.load(); }
  int64_t UnixNanos() const override { return unix.load(); }
  std::atomic<int64_t> mono{5'000}, unix{1'767'225'600'000'000'000};
};

TEST(SpanTest, EventAndEndTimesFollowTheMonotonicClockAcrossAWallClockStep) {
  SteppingClock clock;
  auto processor = std::make_shared<RecordingProcessor>();
  TracerOptions o;
  o.processor = processor;
  o.clock = &clock;
  Tracer tracer(std::move(o));
  Span span = tracer.StartSpan("s");
  clock.unix -= 3'600'000'000'000;  // the wall clock steps back an hour
  clock.mono += 2'000'000;
  span.AddEvent("e");
  clock.mono += 1'000'000;
  span.End();
  const auto spans = processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].start_unix_nanos, 1'767'225'600'000'000'000);
  EXPECT_EQ(spans[0].events[0].time_unix_nanos, 1'767'225'600'002'000'000);
  EXPECT_EQ(spans[0].end_unix_nanos, 1'767'225'600'003'000'000);
}

// Spans reuse the buffers of exported ones; nothing of an earlier span may show through.
TEST(SpanTest, ARecycledSpanCarriesNothingOfTheSpanBefore) {
  auto exporter = std::make_unique<InMemorySpanExporter>();
  InMemorySpanExporter* exported = exporter.get();
  ManualClock clock;
  TracerOptions o;
  o.processor = NewSimpleSpanProcessor(std::move(exporter));
  o.clock = &clock;
  Tracer tracer(std::move(o));
  const std::string long_text(100, 'x');
  // Several big spans first, so every span this thread takes next is a recycled one.
  for (int i = 0; i < 80; ++i) {
    const SpanContext parent{NewTraceId(), NewSpanId(), true};
    Span big = tracer.StartSpan("a-span-name-longer-than-the-small-string-buffer", &parent,
                                SpanKind::kClient, {{"start-attribute", long_text}});
    for (int a = 0; a < 6; ++a) big.SetAttribute("attribute-" + std::to_string(a), long_text);
    for (int e = 0; e < 5; ++e)
      big.AddEvent("an-event-name-past-sixteen",
                   {{"k1", long_text}, {"k2", int64_t{e}}, {"k3", 2.5}, {"k4", true}});
    for (int e = 0; e < 3; ++e)
      SpanFastPath::AddLiteralEventAt(big, clock.MonotonicNanos(), "literal",
                                      {{"k", long_text}, {"n", 2.5}});
    big.SetStatus(StatusCode::kError, long_text);
  }
  exported->Clear();

  Span small = tracer.StartSpan("small");
  small.SetAttribute("only", int64_t{1});
  small.AddEvent("one", {{"k2", "text"}});
  small.AddEvent("two");
  SpanFastPath::AddLiteralEventAt(small, clock.MonotonicNanos(), "three", {{"k3", int64_t{3}}});
  small.End();
  const auto spans = exported->spans();
  ASSERT_EQ(spans.size(), 1u);
  const SpanData& s = spans[0];
  EXPECT_EQ(s.name, "small");
  EXPECT_FALSE(s.parent_span_id.valid());
  EXPECT_EQ(s.kind, SpanKind::kInternal);
  ASSERT_EQ(s.attributes.size(), 1u);
  EXPECT_EQ(s.attributes[0].key, "only");
  EXPECT_EQ(std::get<int64_t>(s.attributes[0].value), 1);
  ASSERT_EQ(s.events.size(), 3u);
  EXPECT_EQ(s.events[0].name, "one");
  ASSERT_EQ(s.events[0].attributes.size(), 1u);
  EXPECT_EQ(s.events[0].attributes[0].key, "k2");
  EXPECT_EQ(std::get<std::string>(s.events[0].attributes[0].value), "text");
  EXPECT_EQ(s.events[1].name, "two");
  EXPECT_TRUE(s.events[1].attributes.empty());
  EXPECT_EQ(s.events[2].name, "three");
  ASSERT_EQ(s.events[2].attributes.size(), 1u);
  EXPECT_EQ(std::get<int64_t>(s.events[2].attributes[0].value), 3);
  EXPECT_EQ(s.status, StatusCode::kUnset);
  EXPECT_TRUE(s.status_message.empty());
  EXPECT_EQ(s.dropped_attributes_count, 0u);
  EXPECT_EQ(s.dropped_events_count, 0u);
  EXPECT_EQ(s.events[0].dropped_attributes_count, 0u);
}

// Spans and their buffers are kept per thread; a span ended by a thread_local's destructor,
// after those per-thread lists are gone, still ends cleanly (ASan checks the memory).
TEST(SpanTest, ASpanEndedAfterItsThreadsCachesAreGoneIsStillExported) {
  auto exporter = std::make_unique<InMemorySpanExporter>();
  InMemorySpanExporter* exported = exporter.get();
  TracerOptions o;
  o.processor = NewSimpleSpanProcessor(std::move(exporter));
  Tracer tracer(std::move(o));
  std::thread([&tracer] {
    struct Holder {
      Span span;
    };
    thread_local Holder holder;  // constructed before the caches, so destroyed after them
    tracer.StartSpan("warm-up").End();
    holder.span = tracer.StartSpan("ended-at-thread-exit");
    holder.span.AddEvent("e", {{"k", "v"}});
  }).join();
  const auto spans = exported->spans();
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[1].name, "ended-at-thread-exit");
  ASSERT_EQ(spans[1].events.size(), 1u);
}

// Everything about a span an exporter sees but its ids, as text, to compare spans made by
// different paths.
std::string Describe(const SpanData& d) {
  auto value = [](const AttributeValue& v) {
    if (const auto* s = std::get_if<std::string>(&v)) return "'" + *s + "'";
    if (const auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
    if (const auto* x = std::get_if<double>(&v)) return std::to_string(*x);
    return std::string(std::get<bool>(v) ? "true" : "false");
  };
  std::string out = d.name + " kind=" + std::to_string(static_cast<int>(d.kind)) +
                    " start=" + std::to_string(d.start_unix_nanos) +
                    " end=" + std::to_string(d.end_unix_nanos);
  for (const Attribute& a : d.attributes) out += " " + a.key + "=" + value(a.value);
  for (const SpanEvent& e : d.events) {
    out += " [" + e.name + "@" + std::to_string(e.time_unix_nanos);
    for (const Attribute& a : e.attributes) out += " " + a.key + "=" + value(a.value);
    out += " dropped=" + std::to_string(e.dropped_attributes_count) + "]";
  }
  return out + " status=" + std::to_string(static_cast<int>(d.status)) + ":" + d.status_message +
         " dropped=" + std::to_string(d.dropped_attributes_count) + "/" +
         std::to_string(d.dropped_events_count);
}

// One sequence of operations with a `pad`-byte attribute first, so that the span's log fills up
// and goes over to SpanData at a different operation for each pad (from never to at once).
void RecordScenario(Tracer& tracer, ManualClock& clock, size_t pad) {
  const SpanContext parent{NewTraceId(), NewSpanId(), true};
  Span span = tracer.StartSpan("scenario", &parent, SpanKind::kServer,
                               {{"pad", std::string(pad, 'p')}, {"start", int64_t{1}}});
  span.SetAttribute("a", int64_t{1});
  span.SetAttributes({{"b", "two"}, {"c", 3.5}, {"a", true}});  // "a" is overwritten
  clock.AdvanceMs(1);
  SpanFastPath::AddLiteralEventAt(span, clock.MonotonicNanos(), "literal",
                                  {{"n", int64_t{1}}, {"s", "text"}});
  span.AddEvent("three-attributes", {{"k1", int64_t{1}}, {"k2", int64_t{2}}, {"k3", int64_t{3}}});
  for (int i = 0; i < 5; ++i) {
    clock.AdvanceMs(1);
    span.AddEvent("numbered-event-" + std::to_string(i), {{"i", int64_t{i}}, {"text", "value"}});
  }
  span.SetAttribute("over-the-limit", "dropped");
  span.SetAttribute("b", "overwritten at the limit");
  span.SetStatus(StatusCode::kError, "first error");
  span.SetStatus(StatusCode::kOk);
  span.SetStatus(StatusCode::kError, "ignored: ok is final");
  clock.AdvanceMs(1);
  span.End();
}

// Replayed on the calling thread (a processor that takes SpanData), on the batch processor's
// export thread, and after the log filled up at any point: the same span, with OpenTelemetry's
// rules applied in the order the operations happened.
TEST(SpanTest, EveryPathMakesTheSameSpan) {
  const SpanLimits limits{.max_attributes = 5, .max_events = 5, .max_attributes_per_event = 2};
  const std::vector<size_t> pads = {0, 40, 150, 250, 330, 400, 430, 439, 440, 1000, 5000};
  std::vector<std::string> expected;
  for (const bool batch : {false, true}) {
    auto exporter = std::make_unique<InMemorySpanExporter>();
    InMemorySpanExporter* exported = exporter.get();
    auto recording = std::make_shared<RecordingProcessor>();
    ManualClock clock;
    TracerOptions o;
    o.limits = limits;
    o.clock = &clock;
    if (batch) {
      o.processor = std::make_shared<BatchSpanProcessor>(std::move(exporter));
    } else {
      o.processor = recording;
    }
    Tracer tracer(std::move(o));
    for (size_t pad : pads) RecordScenario(tracer, clock, pad);
    ASSERT_TRUE(tracer.ForceFlush());
    const std::vector<SpanData> spans = batch ? exported->spans() : recording->spans();
    ASSERT_EQ(spans.size(), pads.size());
    for (size_t i = 0; i < pads.size(); ++i) {
      SpanData span = spans[i];
      ASSERT_FALSE(span.attributes.empty());
      EXPECT_EQ(std::get<std::string>(span.attributes[0].value), std::string(pads[i], 'p'));
      span.attributes[0].value = std::string("pad");
      // Every span started at the clock's time then: make them comparable.
      const int64_t start = span.start_unix_nanos;
      span.start_unix_nanos -= start;
      span.end_unix_nanos -= start;
      for (SpanEvent& e : span.events) e.time_unix_nanos -= start;
      if (expected.empty()) expected.push_back(Describe(span));
      EXPECT_EQ(Describe(span), expected[0]) << "batch " << batch << ", pad " << pads[i];
    }
  }
  EXPECT_EQ(expected[0],
            "scenario kind=2 start=0 end=7000000 pad='pad' start=1 a=true b='overwritten at the "
            "limit' c=3.500000 [literal@1000000 n=1 s='text' dropped=0] [three-attributes@1000000 "
            "k1=1 k2=2 dropped=1] [numbered-event-0@2000000 i=0 text='value' dropped=0] "
            "[numbered-event-1@3000000 i=1 text='value' dropped=0] [numbered-event-2@4000000 i=2 "
            "text='value' dropped=0] status=1: dropped=1/2");
}

TEST(SpanTest, BorrowedEventAttributesKeepEveryType) {
  TracerFixture f;
  Span span = f.tracer->StartSpan("s");
  const std::string owned = "owned";
  span.AddEvent("e", {{"b", true}, {"i", 42}, {"d", 0.5}, {"s", owned}, {"lit", "literal"}});
  span.End();
  const auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  const Attributes& a = spans[0].events[0].attributes;
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(std::get<bool>(a[0].value), true);
  EXPECT_EQ(std::get<int64_t>(a[1].value), 42);
  EXPECT_EQ(std::get<double>(a[2].value), 0.5);
  EXPECT_EQ(std::get<std::string>(a[3].value), "owned");
  EXPECT_EQ(std::get<std::string>(a[4].value), "literal");
}

TEST(SpanTest, ConcurrentAddEventLosesNothing) {
  constexpr int kThreads = 4, kPerThread = 5000;
  TracerFixture f(1.0, SpanLimits{.max_events = kThreads * kPerThread});
  Span span = f.tracer->StartSpan("busy");
  std::latch start(kThreads);  // all four write at once
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&span, &start, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        span.AddEvent("e", {{"thread", int64_t{t}}, {"i", int64_t{i}}});
        if (i % 100 == 0) span.SetAttribute("t" + std::to_string(t), int64_t{i});
      }
    });
  }
  for (auto& th : threads) th.join();
  span.End();
  auto spans = f.processor->spans();
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(spans[0].events.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(spans[0].dropped_events_count, 0u);
  std::set<std::pair<int64_t, int64_t>> seen;
  for (const SpanEvent& e : spans[0].events)
    seen.insert(
        {std::get<int64_t>(e.attributes[0].value), std::get<int64_t>(e.attributes[1].value)});
  EXPECT_EQ(seen.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(spans[0].attributes.size(), static_cast<size_t>(kThreads));
}

TEST(SpanTest, ConcurrentEndExportsOnce) {
  TracerFixture f;
  for (int round = 0; round < 50; ++round) {
    Span span = f.tracer->StartSpan("raced");
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&span] {
        span.AddEvent("e");
        span.End();
      });
    for (auto& th : threads) th.join();
  }
  EXPECT_EQ(f.processor->spans().size(), 50u);
}

TEST(TracerTest, ForwardsFlushAndShutsTheProcessorDown) {
  auto processor = std::make_shared<RecordingProcessor>();
  {
    TracerOptions o;
    o.processor = processor;
    o.resource = {.service_name = "orchestrator",
                  .service_version = "1.0.0",
                  .deployment_environment = "production"};
    Tracer tracer(std::move(o));
    EXPECT_EQ(processor->resource_calls.load(), 1);
    EXPECT_EQ(processor->resource().service_version, "1.0.0");
    EXPECT_EQ(tracer.resource().deployment_environment, "production");
    EXPECT_TRUE(tracer.ForceFlush());
    EXPECT_EQ(processor->flushes.load(), 1);
    tracer.Shutdown();
    EXPECT_EQ(processor->shutdowns.load(), 1);
  }
  EXPECT_EQ(processor->shutdowns.load(), 2);  // the destructor too; processors are idempotent
}

TEST(TracerTest, SampleRateAppliesToRootSpans) {
  TracerFixture f(0.5);
  int recording = 0;
  for (int i = 0; i < 2000; ++i) {
    Span s = f.tracer->StartSpan("s");
    // Exactly the sampler's verdict on the id the span got.
    ASSERT_EQ(s.recording(), Sampler(0.5).ShouldSample(s.context().trace_id, nullptr));
    ASSERT_EQ(s.recording(), s.context().sampled);
    recording += s.recording() ? 1 : 0;
  }
  EXPECT_GT(recording, 0);
  EXPECT_LT(recording, 2000);
  EXPECT_EQ(f.processor->spans().size(), static_cast<size_t>(recording));
}

}  // namespace
}  // namespace laneguard
