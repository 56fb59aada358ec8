#include "trace/span_record.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace laneguard::internal {
namespace {

// Appends what `put` writes to the record's log, as Span::State does.
template <typename Put>
void Append(SpanRecord& record, const Put& put) {
  const size_t size = put(LogSize()).size();
  ASSERT_LE(record.size + size, SpanRecord::kLogCapacity);
  put(LogWriter(record.log + record.size));
  record.size += static_cast<uint32_t>(size);
}

SpanRecord EmptyRecord() {
  SpanRecord record;
  record.max_attributes = record.max_events = record.max_attributes_per_event = 128;
  return record;
}

// Texts are copied by length class (byte loop, 4-byte words, 8-byte words, memcpy): every length
// across the boundaries comes back byte for byte, and nothing past it is written.
TEST(SpanRecordTest, TextsOfEveryLengthRoundTrip) {
  const std::string source = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP";
  for (size_t n = 0; n <= 48; ++n) {
    SpanRecord record = EmptyRecord();
    std::memset(record.log, 0x5a, sizeof record.log);
    const std::string text = source.substr(0, n);
    Append(record, [&](auto sink) { return PutName(sink, std::string_view(text)); });
    EXPECT_EQ(record.size, 1 + 4 + n);
    EXPECT_EQ(record.log[record.size], std::byte{0x5a}) << "wrote past the text of length " << n;
    SpanData span;
    ReplaySpanRecord(record, span);
    EXPECT_EQ(span.name, text) << "length " << n;
  }
}

TEST(SpanRecordTest, ValuesOfEveryTypeAndLiteralsRoundTrip) {
  SpanRecord record = EmptyRecord();
  Append(record, [](auto sink) { return PutName(sink, Literal("literal-name")); });
  Append(record, [](auto sink) { return PutAttribute(sink, "b", AttributeValueView(true)); });
  Append(record,
         [](auto sink) { return PutAttribute(sink, "i", AttributeValueView(int64_t{-7})); });
  Append(record, [](auto sink) { return PutAttribute(sink, "d", AttributeValueView(2.5)); });
  Append(record, [](auto sink) {
    return PutAttribute(sink, "s", AttributeValue(std::string("owned string")));
  });
  const LiteralAttribute attributes[] = {{"k", std::string_view("v")}, {"n", int64_t{3}}};
  Append(record, [&](auto sink) { return PutEvent(sink, 42, Literal("e"), attributes, 2); });
  Append(record, [](auto sink) { return PutStatus(sink, StatusCode::kError, "broken"); });
  SpanData span;
  ReplaySpanRecord(record, span);
  EXPECT_EQ(span.name, "literal-name");
  ASSERT_EQ(span.attributes.size(), 4u);
  EXPECT_EQ(std::get<bool>(span.attributes[0].value), true);
  EXPECT_EQ(std::get<int64_t>(span.attributes[1].value), -7);
  EXPECT_EQ(std::get<double>(span.attributes[2].value), 2.5);
  EXPECT_EQ(std::get<std::string>(span.attributes[3].value), "owned string");
  ASSERT_EQ(span.events.size(), 1u);
  EXPECT_EQ(span.events[0].name, "e");
  EXPECT_EQ(span.events[0].time_unix_nanos, 42);
  ASSERT_EQ(span.events[0].attributes.size(), 2u);
  EXPECT_EQ(span.events[0].attributes[0].key, "k");
  EXPECT_EQ(std::get<std::string>(span.events[0].attributes[0].value), "v");
  EXPECT_EQ(std::get<int64_t>(span.events[0].attributes[1].value), 3);
  EXPECT_EQ(span.status, StatusCode::kError);
  EXPECT_EQ(span.status_message, "broken");
}

// A copy carries the header and the used bytes; the rest of the destination is not touched.
TEST(SpanRecordTest, CopyTakesTheHeaderAndTheUsedBytesOnly) {
  SpanRecord from = EmptyRecord();
  from.trace_id = NewTraceId();
  from.start_unix_nanos = 5;
  Append(from, [](auto sink) { return PutName(sink, std::string_view("copied")); });
  SpanRecord to;
  std::memset(static_cast<void*>(&to), 0x33, sizeof to);
  CopySpanRecord(from, to);
  EXPECT_EQ(to.trace_id, from.trace_id);
  EXPECT_EQ(to.start_unix_nanos, 5);
  EXPECT_EQ(to.size, from.size);
  EXPECT_EQ(std::memcmp(to.log, from.log, from.size), 0);
  EXPECT_EQ(to.log[from.size], std::byte{0x33});
  SpanData span;
  ReplaySpanRecord(to, span);
  EXPECT_EQ(span.name, "copied");
}

// Replaying into a SpanData that held a bigger span leaves nothing of it.
TEST(SpanRecordTest, ReplayOverwritesARecycledSpanCompletely) {
  SpanRecord big = EmptyRecord();
  for (int i = 0; i < 5; ++i) {
    const std::string key = "key-" + std::to_string(i);
    Append(big, [&](auto sink) { return PutAttribute(sink, key, AttributeValueView(int64_t{i})); });
    const AttributeView attributes[] = {{"a", int64_t{1}}, {"b", int64_t{2}}};
    Append(big,
           [&](auto sink) { return PutEvent(sink, i, std::string_view("ev"), attributes, 2); });
  }
  Append(big, [](auto sink) { return PutStatus(sink, StatusCode::kError, "bad"); });
  SpanData span;
  ReplaySpanRecord(big, span);
  SpanRecord small = EmptyRecord();
  Append(small, [](auto sink) { return PutName(sink, std::string_view("small")); });
  const AttributeView one[] = {{"only", int64_t{1}}};
  Append(small, [&](auto sink) { return PutEvent(sink, 9, std::string_view("e"), one, 1); });
  ReplaySpanRecord(small, span);
  EXPECT_EQ(span.name, "small");
  EXPECT_TRUE(span.attributes.empty());
  ASSERT_EQ(span.events.size(), 1u);
  ASSERT_EQ(span.events[0].attributes.size(), 1u);
  EXPECT_EQ(span.events[0].attributes[0].key, "only");
  EXPECT_EQ(span.status, StatusCode::kUnset);
  EXPECT_TRUE(span.status_message.empty());
}

// Events leave in time order, ties in the order recorded; past max_events the first ones recorded
// are the ones kept, wherever their times put them. Each event keeps its own attributes.
TEST(SpanRecordTest, EventsAreReplayedInTimeOrderKeepingTheFirstRecorded) {
  SpanRecord record = EmptyRecord();
  record.max_events = 4;
  const auto event = [&](int64_t time, const std::string& name) {
    const AttributeView attributes[] = {{"name", std::string_view(name)}};
    Append(record,
           [&](auto sink) { return PutEvent(sink, time, std::string_view(name), attributes, 1); });
  };
  event(10, "a");
  event(30, "c");
  event(20, "b-first");
  event(20, "b-second");  // the limit: 4 events
  event(5, "dropped");
  SpanData span;
  ReplaySpanRecord(record, span);
  std::vector<std::string> names;
  std::vector<int64_t> times;
  for (const SpanEvent& e : span.events) {
    names.push_back(e.name);
    times.push_back(e.time_unix_nanos);
    ASSERT_EQ(e.attributes.size(), 1u);
    EXPECT_EQ(std::get<std::string>(e.attributes[0].value), e.name);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b-first", "b-second", "c"}));
  EXPECT_EQ(times, (std::vector<int64_t>{10, 20, 20, 30}));
  EXPECT_EQ(span.dropped_events_count, 1u);
}

}  // namespace
}  // namespace laneguard::internal
