#include "laneguard/trace/trace.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <utility>

#include "base/spin_lock.h"
#include "trace/span_fast_path.h"
#include "trace/span_pool.h"
#include "trace/span_record.h"

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

}  // namespace

// ---- ids and context ----------------------------------------------------------------------------

bool TraceId::valid() const { return !AllZero(bytes); }
std::string TraceId::Hex() const { return ToHex(bytes); }
bool SpanId::valid() const { return !AllZero(bytes); }
std::string SpanId::Hex() const { return ToHex(bytes); }

// Zero is checked on the words, not byte by byte on the id.
TraceId NewTraceId() {
  Xoshiro256StarStar& rng = Rng();
  uint64_t high = 0;
  uint64_t low = 0;
  while ((high | low) == 0) {
    high = rng.Next();
    low = rng.Next();
  }
  TraceId id;
  PutBigEndian(high, id.bytes.data());
  PutBigEndian(low, id.bytes.data() + 8);
  return id;
}

SpanId NewSpanId() {
  Xoshiro256StarStar& rng = Rng();
  uint64_t word = 0;
  while (word == 0) word = rng.Next();
  SpanId id;
  PutBigEndian(word, id.bytes.data());
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
  uint64_t x = 0;  // the last 8 bytes, big-endian
  std::memcpy(&x, trace_id.bytes.data() + 8, sizeof x);
  if constexpr (std::endian::native == std::endian::little) x = __builtin_bswap64(x);
  return (x >> 1) < bound_;
}

// ---- spans --------------------------------------------------------------------------------------

// A span records into `record`'s log (span_record.h). A log that fills up is applied to `spill`, a
// SpanData, and emptied; the span then ends as that SpanData.
struct Span::State {
  const Tracer* tracer = nullptr;
  // Span calls from several threads are allowed but rare, and each holds it for a few dozen
  // nanoseconds: a std::mutex would cost more than the work it guards.
  internal::SpinLock mu;
  int64_t start_mono = 0;  // record.start_unix_nanos on the clock's monotonic scale
  // Written under `mu`; read without it too, so that ending an ended span (every span's
  // destructor does) costs a load.
  std::atomic<bool> ended{false};
  bool spilled = false;  // `spill` holds the log's first operations
  internal::SpanRecord record;
  SpanData spill;
  internal::SpanBuilder builder;  // writes `spill`

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
    state->ended.store(false, std::memory_order_relaxed);
    state->spilled = false;
    state->record.size = 0;
    return state;
  }

  int64_t UnixNow() const { return UnixAt(tracer->options_.clock->MonotonicNanos()); }
  int64_t UnixAt(int64_t mono_nanos) const {
    return record.start_unix_nanos + (std::max(mono_nanos, start_mono) - start_mono);
  }

  // Appends one operation, which `put(sink)` writes (span_record.h). Called locked, or before the
  // span is handed out.
  template <typename Put>
  void Append(const Put& put) {
    const size_t size = put(internal::LogSize()).size();
    if (record.size + size > internal::SpanRecord::kLogCapacity) {
      Spill();
      if (size > internal::SpanRecord::kLogCapacity) {  // larger than a whole log
        std::vector<std::byte> bytes(size);
        put(internal::LogWriter(bytes.data()));
        builder.Apply(bytes.data(), bytes.size());
        return;
      }
    }
    put(internal::LogWriter(record.log + record.size));
    record.size += static_cast<uint32_t>(size);
  }

  // Applies the log to `spill` and empties it.
  void Spill() {
    if (!spilled) {
      internal::TakeSpanData(spill);
      builder.Reset(spill, record);
      spilled = true;
    }
    builder.Apply(record.log, record.size);
    record.size = 0;
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

void Span::SetAttribute(std::string_view key, const AttributeValue& value) {
  if (state_) internal::SpanEditor(state_.get()).SetAttribute(key, value);
}

void Span::SetAttributes(std::initializer_list<AttributeView> attributes) {
  if (state_) internal::SpanEditor(state_.get()).SetAttributes(attributes);
}

void Span::AddEvent(std::string_view name, Attributes attributes) {
  if (!state_) return;
  const int64_t time = state_->UnixNow();
  internal::SpanEditor editor(state_.get());
  if (editor.state_ == nullptr) return;
  editor.state_->Append([&](auto sink) {
    return internal::PutEvent(sink, time, name, attributes.data(), attributes.size());
  });
}

void Span::AddEvent(std::string_view name, std::initializer_list<AttributeView> attributes) {
  if (state_) {
    internal::SpanFastPath::AddEventAt(*this, state_->tracer->options_.clock->MonotonicNanos(),
                                       name, attributes);
  }
}

void Span::SetStatus(StatusCode code, std::string_view message) {
  if (state_) internal::SpanEditor(state_.get()).SetStatus(code, message);
}

// The clock is read only once the span is known not to have ended.
void Span::EndRecording(int64_t mono_nanos) {
  internal::SpanEditor(state_.get()).EndAt(mono_nanos);
}

// ---- fast path ----------------------------------------------------------------------------------

namespace internal {

Span SpanFastPath::StartSpanAt(Tracer& tracer, int64_t start_mono_nanos, std::string_view name,
                               const SpanContext* parent, SpanKind kind) {
  return tracer.Start(start_mono_nanos, name, parent, kind, {});
}

SpanEditor SpanFastPath::Edit(Span& span) { return SpanEditor(span.state_.get()); }

SpanEditor SpanFastPath::EditNew(Span& span) { return {span.state_.get(), SpanEditor::NewSpan()}; }

void SpanFastPath::AddEventAt(Span& span, int64_t mono_nanos, std::string_view name,
                              std::initializer_list<AttributeView> attributes) {
  if (span.state_) Edit(span).AddEventAt(mono_nanos, name, attributes);
}

void SpanFastPath::AddLiteralEventAt(Span& span, int64_t mono_nanos, Literal name,
                                     std::initializer_list<LiteralAttribute> attributes) {
  if (span.state_) Edit(span).AddLiteralEventAt(mono_nanos, name, attributes);
}

int64_t SpanFastPath::StartMonoNanos(const Span& span) {
  return span.state_ ? span.state_->start_mono : 0;
}

std::optional<SpanData> SpanFastPath::Snapshot(Span& span) {
  SpanEditor edit = Edit(span);
  if (edit.state_ == nullptr) return std::nullopt;
  const Span::State& state = *edit.state_;
  SpanData snapshot;
  if (!state.spilled) {
    ReplaySpanRecord(state.record, snapshot);
  } else {
    SpanBuilder builder = state.builder.ForkTo(snapshot);
    builder.Apply(state.record.log, state.record.size);
    builder.Finish(state.record);
  }
  snapshot.end_unix_nanos = 0;
  return snapshot;
}

}  // namespace internal

// ---- editor -------------------------------------------------------------------------------------

namespace internal {

SpanEditor::SpanEditor(Span::State* state) : state_(state) {
  if (state_ == nullptr) return;
  if (state_->ended.load(std::memory_order_relaxed)) {  // checked again under the lock
    state_ = nullptr;
    return;
  }
  state_->mu.lock();
  if (state_->ended.load(std::memory_order_relaxed)) {
    state_->mu.unlock();
    state_ = nullptr;
  }
}

SpanEditor::SpanEditor(Span::State* state, NewSpan /*unused*/) : state_(state) {
  state_->mu.LockUnshared();
}

SpanEditor::~SpanEditor() {
  if (state_ != nullptr) state_->mu.unlock();
}

SpanEditor& SpanEditor::SetAttribute(std::string_view key, const AttributeValue& value) {
  if (state_ != nullptr)
    state_->Append([&](auto sink) { return internal::PutAttribute(sink, key, value); });
  return *this;
}

SpanEditor& SpanEditor::SetAttributes(std::initializer_list<AttributeView> attributes) {
  if (state_ == nullptr) return *this;
  for (const AttributeView& a : attributes)
    state_->Append([&](auto sink) { return internal::PutAttribute(sink, a.key, a.value); });
  return *this;
}

template <typename Name, typename Attr>
SpanEditor& SpanEditor::AddAnyEventAt(int64_t mono_nanos, Name name,
                                      std::initializer_list<Attr> attributes) {
  if (state_ == nullptr) return *this;
  const int64_t time = state_->UnixAt(mono_nanos);
  state_->Append([&](auto sink) {
    return internal::PutEvent(sink, time, name, attributes.begin(), attributes.size());
  });
  return *this;
}

SpanEditor& SpanEditor::AddEventAt(int64_t mono_nanos, std::string_view name,
                                   std::initializer_list<AttributeView> attributes) {
  return AddAnyEventAt(mono_nanos, name, attributes);
}

SpanEditor& SpanEditor::AddLiteralEventAt(int64_t mono_nanos, Literal name,
                                          std::initializer_list<LiteralAttribute> attributes) {
  return AddAnyEventAt(mono_nanos, name, attributes);
}

SpanEditor& SpanEditor::SetStatus(StatusCode code, std::string_view message) {
  if (state_ != nullptr && code != StatusCode::kUnset)
    state_->Append([&](auto sink) { return internal::PutStatus(sink, code, message); });
  return *this;
}

// The span's lock was taken by this editor's constructor and is released here, which the analysis
// cannot follow across the two functions.
void SpanEditor::EndAt(int64_t mono_nanos) NO_THREAD_SAFETY_ANALYSIS {
  if (state_ == nullptr) return;
  Span::State& state = *std::exchange(state_, nullptr);
  state.record.end_unix_nanos =
      mono_nanos == Span::kReadClock ? state.UnixNow() : state.UnixAt(mono_nanos);
  state.ended.store(true, std::memory_order_relaxed);
  // Ended: every other method now leaves the state alone, so it is handed on without the lock.
  state.mu.unlock();
  SpanProcessor* processor = state.tracer->options_.processor.get();
  // End runs in destructors and noexcept moves: a throwing processor must not terminate.
  try {
    if (!state.spilled) {
      if (processor == nullptr) return;
      if (processor->record_sink_ != nullptr) {
        processor->record_sink_(*processor, state.record);
        return;
      }
      SpanData span;
      internal::TakeSpanData(span);
      internal::ReplaySpanRecord(state.record, span);
      processor->OnEnd(std::move(span));
      return;
    }
    state.Spill();
    state.builder.Finish(state.record);
    state.spilled = false;
    if (processor != nullptr) {
      processor->OnEnd(std::move(state.spill));
    } else {
      internal::RecycleSpanData(std::move(state.spill));
    }
  } catch (...) {
  }
}

}  // namespace internal

// ---- tracer -------------------------------------------------------------------------------------

Tracer::Tracer(TracerOptions options)
    : options_(std::move(options)), sampler_(options_.sample_rate, options_.parent_based) {
  if (options_.clock == nullptr) options_.clock = &FastClock::Get();
  if (options_.processor) options_.processor->SetResource(options_.resource);
}

Tracer::~Tracer() { Shutdown(); }

Span Tracer::StartSpan(std::string_view name, const SpanContext* parent, SpanKind kind,
                       const Attributes& attributes) {
  return Start(Span::kReadClock, name, parent, kind, attributes);
}

Span Tracer::Start(int64_t start_mono_nanos, std::string_view name, const SpanContext* parent,
                   SpanKind kind, const Attributes& attributes) {
  Span span;
  if (!options_.enabled) return span;
  if (parent != nullptr && !parent->valid()) parent = nullptr;
  SpanContext& context = span.context_;
  context.trace_id = parent != nullptr ? parent->trace_id : NewTraceId();
  context.span_id = NewSpanId();
  context.sampled = sampler_.ShouldSample(context.trace_id, parent);
  if (!context.sampled) return span;

  auto state = Span::State::New(this);
  internal::SpanRecord& record = state->record;
  record.trace_id = context.trace_id;
  record.span_id = context.span_id;
  record.parent_span_id = parent != nullptr ? parent->span_id : SpanId{};
  record.kind = kind;
  const SpanLimits& limits = options_.limits;
  record.max_attributes =
      static_cast<uint32_t>(std::min<size_t>(limits.max_attributes, UINT32_MAX));
  record.max_events = static_cast<uint32_t>(std::min<size_t>(limits.max_events, UINT32_MAX));
  record.max_attributes_per_event =
      static_cast<uint32_t>(std::min<size_t>(limits.max_attributes_per_event, UINT32_MAX));
  if (start_mono_nanos == Span::kReadClock) {
    const Clock::Reading now = options_.clock->Now();
    record.start_unix_nanos = now.unix_nanos;
    state->start_mono = now.mono_nanos;
  } else {
    record.start_unix_nanos = options_.clock->UnixAt(start_mono_nanos);
    state->start_mono = start_mono_nanos;
  }
  state->Append([&](auto sink) { return internal::PutName(sink, name); });
  for (const Attribute& a : attributes)
    state->Append([&](auto sink) { return internal::PutAttribute(sink, a.key, a.value); });
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
