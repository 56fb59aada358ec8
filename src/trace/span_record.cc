#include "trace/span_record.h"

#include <algorithm>
#include <string>
#include <vector>

namespace laneguard::internal {
namespace {

// Reads what the Put* functions wrote; the log is trusted (this process wrote it).
class LogReader {
 public:
  explicit LogReader(const std::byte* at) : at_(at) {}

  template <typename T>
  T Pod() {
    T value;
    std::memcpy(&value, at_, sizeof value);
    at_ += sizeof value;
    return value;
  }

  std::string_view Text() {
    const auto word = Pod<uint32_t>();
    const size_t size = word >> 1;
    if ((word & 1) != 0) return {Pod<const char*>(), size};
    const std::string_view text(reinterpret_cast<const char*>(at_), size);
    at_ += size;
    return text;
  }

  AttributeValueView Value() {
    switch (Pod<uint8_t>()) {
      case 0:
        return Pod<uint8_t>() != 0;
      case 1:
        return Pod<int64_t>();
      case 2:
        return Pod<double>();
      default:
        return Text();
    }
  }

  const std::byte* at() const { return at_; }

 private:
  const std::byte* at_;
};

// clear() + append() is a length check and a memcpy when the buffer is big enough, while
// assign() goes through libstdc++'s general _M_replace (about 100 instructions a call).
void Overwrite(std::string& to, std::string_view from) {
  to.clear();
  to.append(from.data(), from.size());
}

// A value into an attribute's existing storage: a string keeps its buffer.
template <typename T>
void AssignScalar(AttributeValue& to, T value) {
  if (T* held = std::get_if<T>(&to)) {
    *held = value;
  } else {
    to = value;
  }
}

void AssignValue(AttributeValue& to, const AttributeValueView& from) {
  if (const auto* text = std::get_if<std::string_view>(&from)) {
    if (auto* held = std::get_if<std::string>(&to)) {
      Overwrite(*held, *text);
    } else {
      to.emplace<std::string>(*text);
    }
  } else if (const auto* i = std::get_if<int64_t>(&from)) {
    AssignScalar(to, *i);
  } else if (const auto* d = std::get_if<double>(&from)) {
    AssignScalar(to, *d);
  } else {
    AssignScalar(to, *std::get_if<bool>(&from));
  }
}

// Writes attribute `index` of `attributes` over what a recycled span left there (the vector grows
// by one when index is its size).
void WriteAttribute(Attributes& attributes, size_t index, std::string_view key,
                    const AttributeValueView& value) {
  if (index == attributes.size()) attributes.emplace_back();
  Attribute& a = attributes[index];
  Overwrite(a.key, key);
  AssignValue(a.value, value);
}

}  // namespace

void SpanBuilder::Reset(SpanData& data, const SpanRecord& header) {
  data_ = &data;
  attributes_used_ = events_used_ = 0;
  max_attributes_ = header.max_attributes;
  max_events_ = header.max_events;
  max_attributes_per_event_ = header.max_attributes_per_event;
  data.trace_id = header.trace_id;
  data.span_id = header.span_id;
  data.parent_span_id = header.parent_span_id;
  data.kind = header.kind;
  data.start_unix_nanos = header.start_unix_nanos;
  data.end_unix_nanos = 0;
  data.name.clear();
  data.status = StatusCode::kUnset;
  data.status_message.clear();
  data.dropped_attributes_count = 0;
  data.dropped_events_count = 0;
}

void SpanBuilder::SetAttribute(std::string_view key, const AttributeValueView& value) {
  Attributes& attributes = data_->attributes;
  for (size_t i = 0; i < attributes_used_; ++i) {
    if (attributes[i].key == key) {  // overwritten, not counted against the limit
      AssignValue(attributes[i].value, value);
      return;
    }
  }
  if (attributes_used_ >= max_attributes_) {
    ++data_->dropped_attributes_count;
    return;
  }
  WriteAttribute(attributes, attributes_used_++, key, value);
}

void SpanBuilder::Apply(const std::byte* log, size_t size) {
  SpanData& data = *data_;
  LogReader in(log);
  const std::byte* const end = log + size;
  while (in.at() < end) {
    switch (in.Pod<LogOp>()) {
      case LogOp::kName:
        Overwrite(data.name, in.Text());
        break;
      case LogOp::kAttribute: {
        const std::string_view key = in.Text();
        SetAttribute(key, in.Value());
        break;
      }
      case LogOp::kEvent: {
        const auto time = in.Pod<int64_t>();
        const std::string_view name = in.Text();
        const auto count = in.Pod<uint32_t>();
        SpanEvent* event = nullptr;
        if (events_used_ < max_events_) {
          if (events_used_ == data.events.size()) data.events.emplace_back();
          event = &data.events[events_used_++];
          Overwrite(event->name, name);
          event->time_unix_nanos = time;
          event->dropped_attributes_count = 0;
        } else {
          ++data.dropped_events_count;
        }
        size_t kept = 0;
        for (uint32_t i = 0; i < count; ++i) {
          const std::string_view key = in.Text();
          const AttributeValueView value = in.Value();  // read even when dropped, to move on
          if (event == nullptr) continue;
          if (kept >= max_attributes_per_event_) {
            ++event->dropped_attributes_count;
            continue;
          }
          WriteAttribute(event->attributes, kept++, key, value);
        }
        if (event != nullptr) event->attributes.resize(kept);
        break;
      }
      case LogOp::kStatus: {
        // OpenTelemetry's rules: kUnset is ignored, kOk is final, a message only with kError.
        const auto code = static_cast<StatusCode>(in.Pod<uint8_t>());
        const std::string_view message = in.Text();
        if (code == StatusCode::kUnset || data.status == StatusCode::kOk) break;
        data.status = code;
        if (code == StatusCode::kError) {
          Overwrite(data.status_message, message);
        } else {
          data.status_message.clear();
        }
        break;
      }
    }
  }
}

void SpanBuilder::Finish(const SpanRecord& header) {
  data_->end_unix_nanos = header.end_unix_nanos;
  data_->attributes.resize(attributes_used_);
  std::vector<SpanEvent>& events = data_->events;
  events.resize(events_used_);
  // Events are recorded as they are learnt of, not always as they happen: a worker call's timeout
  // events are stamped with the deadlines, and written when its timer fires (a tick after the
  // deadline) or, when the call ends before that, at its end. Nearly
  // every span is in order already, so the check is all it costs; a sort swaps the events with
  // their buffers, which a recycled span keeps either way.
  const auto earlier = [](const SpanEvent& a, const SpanEvent& b) {
    return a.time_unix_nanos < b.time_unix_nanos;
  };
  if (!std::is_sorted(events.begin(), events.end(), earlier))
    std::stable_sort(events.begin(), events.end(), earlier);
}

SpanBuilder SpanBuilder::ForkTo(SpanData& copy) const {
  copy = *data_;
  copy.attributes.resize(attributes_used_);
  copy.events.resize(events_used_);
  SpanBuilder fork = *this;
  fork.data_ = &copy;
  return fork;
}

void ReplaySpanRecord(const SpanRecord& record, SpanData& out) {
  SpanBuilder builder;
  builder.Reset(out, record);
  builder.Apply(record.log, record.size);
  builder.Finish(record);
}

}  // namespace laneguard::internal
