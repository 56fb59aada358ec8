#include "laneguard/trace.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <type_traits>
#include <utility>

#include "core/spin_lock.h"
#include "telemetry/span_pool.h"

namespace laneguard {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

template <size_t N>
bool AllZero(const std::array<uint8_t, N>& bytes) {
  for (uint8_t b : bytes)
    if (b != 0) return false;
  return true;
}

template <size_t N>
std::string ToHex(const std::array<uint8_t, N>& bytes) {
  std::string out(2 * N, '0');
  for (size_t i = 0; i < N; ++i) {
    out[2 * i] = kHexDigits[bytes[i] >> 4];
    out[2 * i + 1] = kHexDigits[bytes[i] & 0xf];
  }
  return out;
}

// Lower-case hex only: W3C trace context refuses upper case.
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Parses 2*N lower-case hex digits at `text` into `out`.
template <size_t N>
bool ParseHex(std::string_view text, std::array<uint8_t, N>& out) {
  if (text.size() != 2 * N) return false;
  for (size_t i = 0; i < N; ++i) {
    int hi = HexValue(text[2 * i]);
    int lo = HexValue(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// xoshiro256** (Blackman and Vigna), one per thread.
class Xoshiro256StarStar {
 public:
  Xoshiro256StarStar() {
    uint64_t seed[4] = {};
    try {
      std::random_device rd;
      for (uint64_t& s : seed) s = (uint64_t{rd()} << 32) ^ rd();
    } catch (...) {
      // No entropy source: fall back to time, thread and address, still distinct per thread.
      seed[0] = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
      seed[1] = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
      seed[2] = std::hash<std::thread::id>{}(std::this_thread::get_id());
      seed[3] = reinterpret_cast<uintptr_t>(this);
    }
    // SplitMix64 is a bijection on 64 bits: it scrambles weak seeds without losing any of the 256
    // bits. The all-zero state (xoshiro's one fixed point) is ruled out explicitly.
    for (int i = 0; i < 4; ++i) s_[i] = SplitMix64(seed[i]);
    if (s_[0] == 0 && s_[1] == 0 && s_[2] == 0 && s_[3] == 0) s_[0] = 1;
  }

  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

Xoshiro256StarStar& Rng() {
  thread_local Xoshiro256StarStar rng;
  return rng;
}

void PutBigEndian(uint64_t v, uint8_t* out) {
  if constexpr (std::endian::native == std::endian::little) v = __builtin_bswap64(v);
  std::memcpy(out, &v, sizeof v);
}

// clear() + append() is a length check and a memcpy when the buffer is big enough, while
// assign() goes through libstdc++'s general _M_replace (about 100 instructions a call).
void Overwrite(std::string& to, std::string_view from) {
  to.clear();
  to.append(from.data(), from.size());
}

// A value into an attribute's existing storage: a string keeps its buffer.
void AssignValue(AttributeValue& to, AttributeValue&& from) { to = std::move(from); }
template <typename T>
void AssignScalar(AttributeValue& to, T value) {
  if (T* held = std::get_if<T>(&to)) {
    *held = value;
  } else {
    to = value;
  }
}

// By index rather than std::visit: this runs for every event attribute, and the visit's dispatch
// and converting assignment were about 40 instructions of it.
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

}  // namespace

// ---- ids and context ----------------------------------------------------------------------------

bool TraceId::valid() const { return !AllZero(bytes); }
std::string TraceId::Hex() const { return ToHex(bytes); }
bool SpanId::valid() const { return !AllZero(bytes); }
std::string SpanId::Hex() const { return ToHex(bytes); }

TraceId NewTraceId() {
  TraceId id;
  do {
    PutBigEndian(Rng().Next(), id.bytes.data());
    PutBigEndian(Rng().Next(), id.bytes.data() + 8);
  } while (!id.valid());
  return id;
}

SpanId NewSpanId() {
  SpanId id;
  do {
    PutBigEndian(Rng().Next(), id.bytes.data());
  } while (!id.valid());
  return id;
}

std::optional<SpanContext> ParseTraceparent(std::string_view header) {
  // version "-" trace-id "-" parent-id "-" trace-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
  constexpr size_t kLength = 55;
  if (header.size() < kLength) return std::nullopt;
  std::array<uint8_t, 1> version{};
  if (!ParseHex(header.substr(0, 2), version) || version[0] == 0xff) return std::nullopt;
  if (version[0] == 0x00 && header.size() != kLength) return std::nullopt;
  // A later version may append fields, each introduced by '-'.
  if (header.size() > kLength && header[kLength] != '-') return std::nullopt;
  if (header[2] != '-' || header[35] != '-' || header[52] != '-') return std::nullopt;
  SpanContext context;
  std::array<uint8_t, 1> flags{};
  if (!ParseHex(header.substr(3, 32), context.trace_id.bytes) ||
      !ParseHex(header.substr(36, 16), context.span_id.bytes) ||
      !ParseHex(header.substr(53, 2), flags))
    return std::nullopt;
  if (!context.trace_id.valid() || !context.span_id.valid()) return std::nullopt;
  context.sampled = (flags[0] & 0x01) != 0;
  context.remote = true;
  return context;
}

std::string FormatTraceparent(const SpanContext& context) {
  std::string out;
  out.reserve(55);
  out += "00-";
  out += context.trace_id.Hex();
  out += '-';
  out += context.span_id.Hex();
  out += context.sampled ? "-01" : "-00";
  return out;
}

// ---- sampling -----------------------------------------------------------------------------------

Sampler::Sampler(double rate, bool parent_based) : parent_based_(parent_based) {
  if (!(rate > 0.0)) rate = 0.0;  // also NaN
  if (rate > 1.0) rate = 1.0;
  rate_ = rate;
  // rate x 2^63 is exact in double and at most 2^63, which fits: rate 1 samples every id, since
  // the shifted value is below 2^63; rate 0 samples none.
  bound_ = static_cast<uint64_t>(std::ldexp(rate, 63));
}

bool Sampler::ShouldSample(const TraceId& trace_id, const SpanContext* parent) const {
  if (parent_based_ && parent != nullptr && parent->valid()) return parent->sampled;
  uint64_t x = 0;
  for (size_t i = 8; i < 16; ++i) x = (x << 8) | trace_id.bytes[i];
  return (x >> 1) < bound_;
}

// ---- span data ----------------------------------------------------------------------------------

void ExpandCompactEvents(SpanData& span) {
  std::vector<CompactEvent>& compact = span.compact_events;
  if (compact.empty()) return;
  std::vector<SpanEvent>& events = span.events;
  size_t left = compact.size();
  if (events.size() < left) events.resize(left);  // placeholders missing: the span was made by hand
  size_t ordinary = events.size() - left;
  size_t out = events.size();
  // Merged from the back, in place: an ordinary event goes after every compact one recorded
  // before it (position <= its index), and compact events keep their order.
  while (left > 0) {
    CompactEvent& from = compact[left - 1];
    SpanEvent& to = events[--out];
    if (ordinary > from.position) {
      to = std::move(events[--ordinary]);
      continue;
    }
    Overwrite(to.name, from.name);
    to.time_unix_nanos = from.time_unix_nanos;
    to.dropped_attributes_count = 0;
    to.attributes.resize(from.attribute_count);
    for (size_t i = 0; i < from.attribute_count; ++i) {
      Overwrite(to.attributes[i].key, from.keys[i]);
      to.attributes[i].value = std::move(from.values[i]);
    }
    --left;
  }
  compact.clear();
}

// ---- spans --------------------------------------------------------------------------------------

// The data is written in place: a span starts from a recycled SpanData whose vectors may hold
// stale elements, and only the first attributes_used / events_used of them are this span's. The
// rest are trimmed at End(). Writing over an element reuses its strings' buffers.
struct Span::State {
  const Tracer* tracer = nullptr;
  // Span calls from several threads are allowed but rare, and each holds it for a few dozen
  // nanoseconds: a std::mutex would cost more than the work it guards.
  internal::SpinLock mu;
  SpanData data;
  // data.start_unix_nanos, and the clock's monotonic time then. Kept apart from `data` because
  // they are read without the lock, and `data` is handed to the processor once the span ended.
  int64_t start_unix = 0;
  int64_t start_mono = 0;
  size_t attributes_used = 0;
  size_t events_used = 0;
  size_t compact_used = 0;  // of data.compact_events, as events_used
  bool ended = false;

  // This thread's ended states, reused by its next spans: a span then costs no allocation at
  // all. Bounded, and freed when the thread exits; null once that has happened (a span ended by
  // another thread_local's destructor).
  static std::vector<State*>* FreeList() {
    thread_local bool gone = false;  // trivially destructible: readable to the thread's end
    struct List {
      std::vector<State*> states;
      ~List() {
        gone = true;
        for (State* state : states) delete state;
      }
    };
    if (gone) return nullptr;
    thread_local List list;
    return &list.states;
  }
  static constexpr size_t kMaxFreeStates = 16;

  static std::unique_ptr<State, StateDeleter> New(const Tracer* tracer) {
    std::vector<State*>* free = FreeList();
    std::unique_ptr<State, StateDeleter> state;
    if (free == nullptr || free->empty()) {
      state.reset(new State);
    } else {
      state.reset(free->back());
      free->pop_back();
    }
    state->tracer = tracer;
    state->attributes_used = state->events_used = state->compact_used = 0;
    state->ended = false;
    return state;
  }

  int64_t UnixNow() const { return UnixAt(tracer->options_.clock->MonotonicNanos()); }
  int64_t UnixAt(int64_t mono_nanos) const {
    return start_unix + (std::max(mono_nanos, start_mono) - start_mono);
  }

  // Adds or overwrites `key` within the limit; counts what does not fit. Called locked.
  void SetAttribute(size_t limit, std::string_view key, AttributeValue&& value) {
    Attributes& attributes = data.attributes;
    for (size_t i = 0; i < attributes_used; ++i) {
      if (attributes[i].key == key) {
        attributes[i].value = std::move(value);
        return;
      }
    }
    if (attributes_used >= limit) {
      ++data.dropped_attributes_count;
      return;
    }
    if (attributes_used == attributes.size()) attributes.emplace_back();
    Attribute& a = attributes[attributes_used++];
    Overwrite(a.key, key);
    a.value = std::move(value);
  }

  // Called locked. `Attr` is Attribute (moved from) or AttributeView (copied).
  template <typename Attr>
  void AddEvent(std::string_view name, int64_t time, Attr* attributes, size_t count) {
    const SpanLimits& limits = tracer->options_.limits;
    if (events_used + compact_used >= limits.max_events) {
      ++data.dropped_events_count;
      return;
    }
    if (events_used == data.events.size()) data.events.emplace_back();
    SpanEvent& event = data.events[events_used++];
    Overwrite(event.name, name);
    event.time_unix_nanos = time;
    const size_t kept = std::min(count, limits.max_attributes_per_event);
    event.dropped_attributes_count = static_cast<uint32_t>(count - kept);
    for (size_t i = 0; i < kept; ++i) {
      if (i == event.attributes.size()) event.attributes.emplace_back();
      Attribute& a = event.attributes[i];
      Overwrite(a.key, attributes[i].key);
      if constexpr (std::is_same_v<Attr, Attribute>) {
        AssignValue(a.value, std::move(attributes[i].value));
      } else {
        AssignValue(a.value, attributes[i].value);
      }
    }
    event.attributes.resize(kept);
  }

  // Called locked; at most CompactEvent::kMaxAttributes attributes.
  void AddCompactEvent(Literal name, int64_t time,
                       std::initializer_list<LiteralAttribute> attributes) {
    if (events_used + compact_used >= tracer->options_.limits.max_events) {
      ++data.dropped_events_count;
      return;
    }
    std::vector<CompactEvent>& compact = data.compact_events;
    if (compact_used == compact.size()) compact.emplace_back();
    CompactEvent& event = compact[compact_used++];
    event.name = name;
    event.time_unix_nanos = time;
    event.position = static_cast<uint32_t>(events_used);
    event.attribute_count = static_cast<uint32_t>(attributes.size());
    size_t i = 0;
    for (const LiteralAttribute& a : attributes) {
      event.keys[i] = a.key;
      AssignValue(event.values[i++], a.value);
    }
  }
};

void Span::StateDeleter::operator()(State* state) const noexcept {
  std::vector<State*>* free = State::FreeList();
  if (free != nullptr && free->size() < State::kMaxFreeStates) {
    try {
      free->push_back(state);
      return;
    } catch (...) {  // out of memory: freed below
    }
  }
  delete state;
}

Span::Span(Span&& other) noexcept
    : context_(std::exchange(other.context_, SpanContext{})), state_(std::move(other.state_)) {}

Span& Span::operator=(Span&& other) noexcept {
  if (this != &other) {
    End();
    context_ = std::exchange(other.context_, SpanContext{});
    state_ = std::move(other.state_);
  }
  return *this;
}

void Span::SetAttribute(std::string_view key, AttributeValue value) {
  if (!state_) return;
  const size_t limit = state_->tracer->options_.limits.max_attributes;
  std::lock_guard<internal::SpinLock> lock(state_->mu);
  if (state_->ended) return;
  state_->SetAttribute(limit, key, std::move(value));
}

void Span::AddEvent(std::string_view name, Attributes attributes) {
  if (!state_) return;
  const int64_t time = state_->UnixNow();
  std::lock_guard<internal::SpinLock> lock(state_->mu);
  if (state_->ended) return;
  state_->AddEvent(name, time, attributes.data(), attributes.size());
}

void Span::AddEvent(std::string_view name, std::initializer_list<AttributeView> attributes) {
  if (state_) AddEventAt(state_->tracer->options_.clock->MonotonicNanos(), name, attributes);
}

void Span::AddEventAt(int64_t mono_nanos, std::string_view name,
                      std::initializer_list<AttributeView> attributes) {
  if (!state_) return;
  const int64_t time = state_->UnixAt(mono_nanos);
  std::lock_guard<internal::SpinLock> lock(state_->mu);
  if (state_->ended) return;
  state_->AddEvent(name, time, attributes.begin(), attributes.size());
}

void Span::AddLiteralEventAt(int64_t mono_nanos, Literal name,
                             std::initializer_list<LiteralAttribute> attributes) {
  if (!state_) return;
  const int64_t time = state_->UnixAt(mono_nanos);
  const size_t per_event = state_->tracer->options_.limits.max_attributes_per_event;
  std::lock_guard<internal::SpinLock> lock(state_->mu);
  if (state_->ended) return;
  if (attributes.size() <= std::min(CompactEvent::kMaxAttributes, per_event)) {
    state_->AddCompactEvent(name, time, attributes);
  } else {
    state_->AddEvent(name, time, attributes.begin(), attributes.size());
  }
}

int64_t Span::start_mono_nanos() const { return state_ ? state_->start_mono : 0; }

void Span::SetStatus(StatusCode code, std::string_view message) {
  if (!state_ || code == StatusCode::kUnset) return;
  std::lock_guard<internal::SpinLock> lock(state_->mu);
  if (state_->ended || state_->data.status == StatusCode::kOk) return;
  state_->data.status = code;
  if (code == StatusCode::kError)
    Overwrite(state_->data.status_message, message);
  else
    state_->data.status_message.clear();
}

void Span::EndRecording(int64_t mono_nanos) {
  const Tracer* tracer = state_->tracer;
  const int64_t now = mono_nanos == kReadClock ? state_->UnixNow() : state_->UnixAt(mono_nanos);
  {
    std::lock_guard<internal::SpinLock> lock(state_->mu);
    if (state_->ended) return;
    state_->ended = true;
  }
  // Ended: every other method now leaves `data` alone, so it is handed on without the lock (and
  // without a copy of it).
  SpanData& data = state_->data;
  data.end_unix_nanos = now;
  data.attributes.resize(state_->attributes_used);  // trim what a recycled span left behind
  // The compact events' places are kept, stale: expanding into them reuses their buffers, where
  // trimming would free them here and have the export thread allocate them again for every span.
  data.events.resize(state_->events_used + state_->compact_used);
  data.compact_events.resize(state_->compact_used);
  // End runs in destructors and noexcept moves: a throwing processor must not terminate.
  try {
    if (tracer->options_.processor) {
      if (tracer->expand_on_end_) ExpandCompactEvents(data);
      tracer->options_.processor->OnEnd(std::move(data));
    } else {
      internal::RecycleSpanData(std::move(data));
    }
  } catch (...) {
  }
}

// ---- tracer -------------------------------------------------------------------------------------

Tracer::Tracer(TracerOptions options)
    : options_(std::move(options)), sampler_(options_.sample_rate, options_.parent_based) {
  if (options_.clock == nullptr) options_.clock = &FastClock::Get();
  if (options_.processor) {
    options_.processor->SetResource(options_.resource);
    expand_on_end_ = !options_.processor->ExpandsCompactEvents();
  }
}

Tracer::~Tracer() { Shutdown(); }

Span Tracer::StartSpan(std::string_view name, const SpanContext* parent, SpanKind kind,
                       Attributes attributes) {
  Span span;
  if (!options_.enabled) return span;
  if (parent != nullptr && !parent->valid()) parent = nullptr;
  SpanContext& context = span.context_;
  context.trace_id = parent != nullptr ? parent->trace_id : NewTraceId();
  context.span_id = NewSpanId();
  context.sampled = sampler_.ShouldSample(context.trace_id, parent);
  if (!context.sampled) return span;

  auto state = Span::State::New(this);
  internal::TakeSpanData(state->data);
  SpanData& data = state->data;
  Overwrite(data.name, name);
  data.trace_id = context.trace_id;
  data.span_id = context.span_id;
  data.parent_span_id = parent != nullptr ? parent->span_id : SpanId{};
  data.kind = kind;
  data.start_unix_nanos = state->start_unix = options_.clock->UnixNanos();
  state->start_mono = options_.clock->MonotonicNanos();
  data.end_unix_nanos = 0;
  data.status = StatusCode::kUnset;
  data.status_message.clear();
  data.dropped_attributes_count = 0;
  data.dropped_events_count = 0;
  // A worker call's span carries a handful of attributes and about six events: one allocation
  // each instead of a growth series (a recycled span has them already).
  data.attributes.reserve(std::min<size_t>(8, options_.limits.max_attributes));
  data.events.reserve(std::min<size_t>(8, options_.limits.max_events));
  for (Attribute& a : attributes)
    state->SetAttribute(options_.limits.max_attributes, a.key, std::move(a.value));
  span.state_ = std::move(state);
  return span;
}

bool Tracer::ForceFlush(std::chrono::milliseconds timeout) {
  return options_.processor ? options_.processor->ForceFlush(timeout) : true;
}

void Tracer::Shutdown() {
  if (options_.processor) options_.processor->Shutdown();
}

}  // namespace laneguard
