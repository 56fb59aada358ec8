#include "server/lease_service.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <optional>
#include <random>
#include <utility>

#include "server/api_json.h"

namespace laneguard::server {

using json = nlohmann::json;

namespace {

constexpr int64_t kNanosPerMs = 1'000'000;
constexpr size_t kMaxLeaseIdBytes = 64;
constexpr size_t kMaxMetadataEntries = 64;

// "running", "warning" (past the timeout) or "hard" (past timeout x escalation).
std::string_view PhaseAt(const Slot& slot, int64_t now) {
  if (now >= slot.hard_deadline_mono_nanos()) return "hard";
  if (now >= slot.deadline_mono_nanos()) return "warning";
  return "running";
}

json ClientToJson(const Peer& peer) {
  json client = {{"address", peer.address}};
  if (peer.unix_socket) {
    client["unix"] = true;
    if (peer.pid) client["pid"] = *peer.pid;
    if (peer.uid) client["uid"] = *peer.uid;
  }
  return client;
}

// The wall-clock time of a monotonic time on `clock`, past or future. (Clock::UnixAt is for
// times just read: FastClock re-anchors on a time it takes for "now".)
std::string WallTime(const Clock& clock, int64_t mono) {
  const Clock::Reading now = clock.Now();
  return FormatIso8601(now.unix_nanos + (mono - now.mono_nanos));
}

// The status of a refusal, and the field of the request it is about when it is the request's
// fault.
struct RefusalShape {
  int status = 429;
  std::string_view field;
};

RefusalShape ShapeOf(RejectReason reason) {
  switch (reason) {
    case RejectReason::kMemoryLimit:
    case RejectReason::kShuttingDown:
    case RejectReason::kCancelled:
      return {503, {}};
    case RejectReason::kUnknownLane:
      return {400, "lane"};
    case RejectReason::kInvalidTimeout:
      return {400, "timeoutMs"};
    case RejectReason::kInvalidWait:
      return {400, "waitMs"};
    default:
      return {429, {}};
  }
}

}  // namespace

std::string_view ToString(LeaseEnd end) {
  switch (end) {
    case LeaseEnd::kExpired:
      return "lease_expired";
    case LeaseEnd::kConnectionClosed:
      return "connection_closed";
    case LeaseEnd::kDaemonStopped:
      return "daemon_stopped";
    case LeaseEnd::kReleased:
      break;
  }
  return "released";
}

struct LeaseService::Lease {
  std::string id;
  uint64_t fencing_token = 0;
  std::string lane;
  std::string task_id;
  Slot slot;
  Span span;
  Peer client;
  bool bound = false;
  int64_t ttl_ms = 0;
  int64_t granted_mono = 0;
  int64_t expires_mono = 0;
  double wait_ms = 0;
};

// A request between its arrival and the manager's answer.
struct LeaseService::Parked {
  Respond respond;
  std::stop_token cancel;  // the transport's: the client went away
  std::string lane;
  std::string task_id;
  Span span;
  Peer client;
  bool bind = false;
  int64_t ttl_ms = kDefaultTtlMs;
  int64_t arrived_mono = 0;
  // The wait's own stop: the client leaving (through `link`) or the service going away stop it.
  std::stop_source stop;
  std::optional<std::stop_callback<std::function<void()>>> link;
};

LeaseService::LeaseService(ResourceBudgetManager& manager, LeaseServiceOptions options)
    : manager_(manager), clock_(manager.clock()), options_(std::move(options)) {
  std::random_device seed;
  random_.seed((uint64_t{seed()} << 32) ^ seed());
  if (options_.start_sweeper) sweeper_ = std::thread([this] { SweepLoop(); });
}

LeaseService::~LeaseService() {
  if (sweeper_.joinable()) {
    {
      internal::MutexLock lock(sweep_mu_);
      sweep_stop_ = true;
    }
    sweep_cv_.NotifyAll();
    sweeper_.join();
  }
  // Parked requests' answers call back into this object: stop their waits and wait for every
  // answer to be delivered.
  std::vector<std::shared_ptr<Parked>> parked;
  {
    internal::MutexLock lock(mu_);
    parked.assign(parked_set_.begin(), parked_set_.end());
  }
  for (const auto& p : parked) p->stop.request_stop();
  {
    internal::MutexLock lock(mu_);
    idle_.Wait(lock, [this] {
      mu_.AssertHeld();
      return parked_set_.empty();
    });
  }
  ReleaseAll();
}

void LeaseService::SweepLoop() {
  internal::MutexLock lock(sweep_mu_);
  while (!sweep_stop_) {
    sweep_cv_.WaitFor(lock, options_.sweep_interval, [this] {
      sweep_mu_.AssertHeld();
      return sweep_stop_;
    });
    if (sweep_stop_) break;
    lock.Unlock();
    Sweep();
    lock.Lock();
  }
}

// ---- routing ------------------------------------------------------------------------------------

void LeaseService::Handle(HttpRequest request, std::stop_token cancel, Respond respond) {
  std::string_view path = request.target;
  path = path.substr(0, path.find('?'));
  if (path == "/v1/leases" && request.method == "POST") {
    return PostLease(std::move(request), std::move(cancel), std::move(respond));
  }
  respond(Route(request, path));
}

HttpResponse LeaseService::Route(const HttpRequest& request, std::string_view path) {
  // HEAD is answered as GET (the transport sends no body).
  const std::string_view method =
      request.method == "HEAD" ? std::string_view("GET") : std::string_view(request.method);
  const auto only = [&](std::string_view allowed) {
    HttpResponse r = ErrorResponse(405, "method_not_allowed",
                                   std::string(request.method) + " " + std::string(path) +
                                       ": allowed: " + std::string(allowed));
    r.headers.emplace_back("Allow", std::string(allowed));
    return r;
  };
  constexpr std::string_view kLeases = "/v1/leases/";
  if (path.starts_with(kLeases)) {
    std::string_view id = path.substr(kLeases.size());
    const bool renew = id.ends_with("/renew");
    if (renew) id.remove_suffix(std::string_view("/renew").size());
    if (id.empty() || id.size() > kMaxLeaseIdBytes || id.find('/') != std::string_view::npos) {
      return ErrorResponse(404, "not_found", "no such path: " + std::string(path));
    }
    if (renew) return method == "POST" ? Renew(id, request) : only("POST");
    return method == "DELETE" ? Release(id, request) : only("DELETE");
  }
  if (path == "/v1/leases") return method == "GET" ? ListLeases() : only("GET, POST");
  if (path == "/v1/status") return method == "GET" ? Status() : only("GET");
  if (path == "/v1/statistics") {
    return method == "GET" ? JsonResponse(200, StatisticsToJson(manager_.GetStatistics()))
                           : only("GET");
  }
  if (path == "/v1/config") {
    if (method == "GET") {
      HttpResponse r;
      r.body = ConfigToJson(manager_.config()) + "\n";
      return r;
    }
    return method == "PUT" ? PutConfig(request) : only("GET, PUT");
  }
  if (path == "/metrics" && options_.metrics) {
    if (method != "GET") return only("GET");
    MetricsResponse m = options_.metrics->Handle(request.accept);
    return HttpResponse{m.status, std::move(m.content_type), std::move(m.body), {}};
  }
  if (path == "/healthz")
    return method == "GET" ? JsonResponse(200, {{"status", "ok"}}) : only("GET");
  if (path == "/readyz") {
    if (method != "GET") return only("GET");
    return draining_.load() ? JsonResponse(503, {{"status", "draining"}})
                            : JsonResponse(200, {{"status", "ready"}});
  }
  return ErrorResponse(404, "not_found", "no such path: " + std::string(path));
}

// ---- acquiring ----------------------------------------------------------------------------------

namespace {

// Reads the body as a JSON object (an empty body is an empty object).
std::optional<json> ParseBody(const std::string& body, HttpResponse* error) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return json::object();
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    *error = InvalidRequest("body", "the body is not valid JSON");
    return std::nullopt;
  }
  if (!parsed.is_object()) {
    *error = InvalidRequest("body", "the body must be a JSON object, not " + Shown(parsed));
    return std::nullopt;
  }
  return parsed;
}

// metadata: an object whose values are strings, numbers or booleans (kept as their JSON text).
std::optional<Metadata> ReadMetadata(const json& body, FieldReader& fields) {
  const auto it = body.find("metadata");
  if (it == body.end() || it->is_null()) return Metadata{};
  if (!it->is_object() || it->size() > kMaxMetadataEntries) {
    fields.Fail("metadata", "metadata = " + Shown(*it) + ": must be an object of at most " +
                                std::to_string(kMaxMetadataEntries) + " strings or numbers");
    return std::nullopt;
  }
  Metadata metadata;
  for (const auto& [key, value] : it->items()) {
    if (value.is_string()) {
      metadata.emplace_back(key, value.get<std::string>());
    } else if (value.is_number() || value.is_boolean()) {
      metadata.emplace_back(key, value.dump());
    } else {
      fields.Fail("metadata", "metadata." + key + " = " + Shown(value) +
                                  ": must be a string, a number or a boolean");
      return std::nullopt;
    }
  }
  return metadata;
}

Priority ParsePriority(const std::optional<std::string>& text, FieldReader& fields) {
  if (!text || *text == "normal") return Priority::kNormal;
  if (*text == "low") return Priority::kLow;
  if (*text == "high") return Priority::kHigh;
  fields.Fail("priority", "priority = \"" + *text + "\": must be \"low\", \"normal\" or \"high\"");
  return Priority::kNormal;
}

}  // namespace

void LeaseService::PostLease(HttpRequest request, std::stop_token cancel, Respond respond) {
  if (draining_.load()) {
    HttpResponse r = ErrorResponse(503, "shutting_down", "the daemon is shutting down");
    r.headers.emplace_back("Retry-After", "5");
    return respond(std::move(r));
  }
  HttpResponse bad;
  const std::optional<json> body = ParseBody(request.body, &bad);
  if (!body) return respond(std::move(bad));
  FieldReader fields(*body);
  const std::optional<std::string> lane = fields.String("lane");
  const std::string task_id = fields.String("taskId").value_or("lease");
  const std::optional<int64_t> timeout_ms = fields.Integer("timeoutMs", 1, kMaxTimeoutMs);
  const int64_t wait_ms = fields.Integer("waitMs", 0, kMaxTimeoutMs).value_or(0);
  const Priority priority = ParsePriority(fields.String("priority", 16), fields);
  const int64_t ttl_ms = fields.Integer("ttlMs", kMinTtlMs, kMaxTtlMs).value_or(kDefaultTtlMs);
  const std::optional<std::string> traceparent = fields.String("traceparent", 128);
  const bool bind = fields.Bool("bindToConnection").value_or(false);
  std::optional<Metadata> metadata = ReadMetadata(*body, fields);
  std::optional<SpanContext> parent;
  if (!fields.error() && traceparent) {
    parent = ParseTraceparent(*traceparent);
    if (!parent) {
      fields.Fail("traceparent", "traceparent = \"" + *traceparent +
                                     "\": not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
    }
  }
  if (!fields.error() && !lane) fields.Fail("lane", "lane is required");
  if (!fields.error() && bind && !request.peer.unix_socket) {
    fields.Fail("bindToConnection",
                "bindToConnection = true: only a lease taken over the Unix socket can be bound to "
                "its connection");
  }
  if (fields.error())
    return respond(InvalidRequest(fields.error()->field, fields.error()->message));

  auto parked = std::make_shared<Parked>();
  parked->respond = std::move(respond);
  parked->cancel = cancel;
  parked->lane = *lane;
  parked->task_id = task_id;
  parked->client = request.peer;
  parked->bind = bind;
  parked->ttl_ms = ttl_ms;
  parked->arrived_mono = clock_.MonotonicNanos();
  if (options_.tracer != nullptr) {
    parked->span = options_.tracer->StartSpan("worker_call:" + *lane, parent ? &*parent : nullptr,
                                              SpanKind::kServer);
    parked->span.SetAttributes(
        {{"laneguard.lane", *lane}, {"taskId", task_id}, {"client.address", request.peer.address}});
  }
  AcquireOptions options;
  options.timeout_ms = timeout_ms;
  options.wait_ms = wait_ms;
  options.priority = priority;
  options.metadata = std::move(*metadata);
  options.stop_token = parked->stop.get_token();
  {
    internal::MutexLock lock(mu_);
    parked_set_.insert(parked);
  }
  Parked* raw = parked.get();
  raw->link.emplace(std::move(cancel), [raw] { raw->stop.request_stop(); });
  manager_.AcquireAsync(
      raw->task_id, raw->lane, std::move(options),
      [this, parked](Result<Slot> result) { OnAnswer(parked, std::move(result)); });
}

void LeaseService::OnAnswer(const std::shared_ptr<Parked>& parked, Result<Slot> result) {
  const int64_t now = clock_.MonotonicNanos();
  const double waited_ms = static_cast<double>(now - parked->arrived_mono) / kNanosPerMs;
  HttpResponse response;
  if (result.ok() && parked->cancel.stop_requested()) {
    // Granted as the client left: nobody would renew it.
    result->Release(false, "client_gone");
    parked->span.SetStatus(StatusCode::kError, "client disconnected");
    response = ErrorResponse(503, "cancelled", "the client disconnected");
  } else if (result.ok()) {
    auto lease = std::make_unique<Lease>();
    lease->lane = parked->lane;
    lease->task_id = parked->task_id;
    lease->slot = std::move(result).value();
    lease->span = std::move(parked->span);
    lease->client = parked->client;
    lease->bound = parked->bind;
    lease->ttl_ms = parked->ttl_ms;
    lease->granted_mono = now;
    lease->expires_mono = now + parked->ttl_ms * kNanosPerMs;
    lease->wait_ms = waited_ms;
    response = Granted(std::move(lease));
  } else {
    response = Refused(result.error(), parked->lane);
    parked->span.SetStatus(StatusCode::kError, response.body);
  }
  parked->span.End();
  // Drop the link first: its callback must not run once the request is answered.
  parked->link.reset();
  Respond respond = std::move(parked->respond);
  respond(std::move(response));
  internal::MutexLock lock(mu_);
  parked_set_.erase(parked);
  if (parked_set_.empty()) idle_.NotifyAll();
}

HttpResponse LeaseService::Granted(std::unique_ptr<Lease> lease) {
  {
    internal::MutexLock lock(mu_);
    lease->id = NewLeaseId();
    lease->fencing_token = next_fencing_token_++;
  }
  // Written before the lease is in the map: from then on another thread may end it.
  const Slot& slot = lease->slot;
  const int64_t now = lease->granted_mono;
  const Clock::Reading clock_now = clock_.Now();
  const auto wall = [&clock_now](int64_t mono) {
    return FormatIso8601(clock_now.unix_nanos + (mono - clock_now.mono_nanos));
  };
  ObjectWriter body;
  body.Str("leaseId", lease->id)
      .Int("fencingToken", static_cast<int64_t>(lease->fencing_token))
      .Str("lane", lease->lane)
      .Str("taskId", lease->task_id)
      .Int("ttlMs", lease->ttl_ms)
      .Int("timeoutMs", (slot.deadline_mono_nanos() - slot.start_mono_nanos()) / kNanosPerMs)
      .Str("grantedAt", wall(now))
      .Str("warnAt", wall(slot.deadline_mono_nanos()))
      .Str("hardAt", wall(slot.hard_deadline_mono_nanos()))
      .Str("expiresAt", wall(lease->expires_mono))
      .Int("warnInMs", (slot.deadline_mono_nanos() - now) / kNanosPerMs)
      .Int("hardInMs", (slot.hard_deadline_mono_nanos() - now) / kNanosPerMs)
      .Num("waitMs", lease->wait_ms)
      .Bool("boundToConnection", lease->bound);
  if (lease->span.context().valid()) {
    body.Str("traceparent", FormatTraceparent(lease->span.context()));
  }
  if (lease->span.recording()) {
    lease->span.SetAttributes(
        {{"laneguard.lease_id", lease->id},
         {"laneguard.fencing_token", static_cast<int64_t>(lease->fencing_token)},
         {"laneguard.wait_ms", lease->wait_ms},
         {"laneguard.ttl_ms", lease->ttl_ms}});
    if (lease->wait_ms > 0) lease->span.AddEvent("granted");
  }
  {
    internal::MutexLock lock(mu_);
    std::string id = lease->id;
    leases_.emplace(std::move(id), std::move(lease));
  }
  granted_.fetch_add(1, std::memory_order_relaxed);
  return HttpResponse{201, "application/json", std::move(body).Finish(), {}};
}

int64_t LeaseService::RetryAfterMs(std::string_view lane, RejectReason reason) const {
  if (reason == RejectReason::kMemoryLimit) return manager_.config().memory_sample_interval_ms;
  if (reason == RejectReason::kShuttingDown || reason == RejectReason::kCancelled) return 5000;
  // When the earliest held lease that frees a place reaches its timeout: a fair guess of when
  // one will free. Leases of the lane for a lane's limit; any lease for the global limit.
  const bool any_lane = reason == RejectReason::kGlobalLimit;
  const int64_t now = clock_.MonotonicNanos();
  int64_t earliest = INT64_MAX;
  internal::MutexLock lock(mu_);
  for (const auto& [id, lease] : leases_) {
    if (any_lane || lease->lane == lane) {
      earliest = std::min(earliest, lease->slot.deadline_mono_nanos());
    }
  }
  if (earliest == INT64_MAX) return 1000;
  return std::clamp<int64_t>((earliest - now) / kNanosPerMs, 100, 60'000);
}

HttpResponse LeaseService::Refused(const Error& error, std::string_view lane) {
  const Rejection* rejection = error.rejection();
  if (rejection == nullptr) return ErrorResponse(500, "internal", error.message());
  const RefusalShape shape = ShapeOf(rejection->reason);
  if (rejection->reason == RejectReason::kUnknownLane) {
    std::string lanes;
    for (const auto& [name, limit] : manager_.config().lane_concurrency_limits) {
      lanes += (lanes.empty() ? "" : ", ") + name;
    }
    return InvalidRequest("lane", "lane = \"" + std::string(lane) +
                                      "\": not a configured lane (configured: " + lanes + ")");
  }
  if (!shape.field.empty()) return InvalidRequest(shape.field, error.message());
  const int64_t retry_ms = RetryAfterMs(lane, rejection->reason);
  HttpResponse r = JsonResponse(shape.status, {{"error", std::string(ToString(rejection->reason))},
                                               {"message", error.message()},
                                               {"lane", std::string(lane)},
                                               {"retryAfterMs", retry_ms}});
  r.headers.emplace_back("Retry-After",
                         std::to_string(std::max<int64_t>(1, (retry_ms + 999) / 1000)));
  return r;
}

std::string LeaseService::NewLeaseId() {
  char buf[24];
  std::string id;
  do {
    std::snprintf(buf, sizeof buf, "l-%016" PRIx64, random_());
    id = buf;
  } while (leases_.count(id) != 0 || ended_.count(id) != 0);
  return id;
}

// ---- renew, release, reclaim
// ---------------------------------------------------------------------

HttpResponse LeaseService::Renew(std::string_view id, const HttpRequest& request) {
  HttpResponse bad;
  const std::optional<json> body = ParseBody(request.body, &bad);
  if (!body) return bad;
  FieldReader fields(*body);
  const std::optional<int64_t> ttl = fields.Integer("ttlMs", kMinTtlMs, kMaxTtlMs);
  if (fields.error()) return InvalidRequest(fields.error()->field, fields.error()->message);
  const int64_t now = clock_.MonotonicNanos();
  internal::MutexLock lock(mu_);
  const auto it = leases_.find(std::string(id));
  if (it == leases_.end()) return NotFound(id);
  Lease& lease = *it->second;
  if (ttl) lease.ttl_ms = *ttl;
  lease.expires_mono = now + lease.ttl_ms * kNanosPerMs;
  const std::string_view phase = PhaseAt(lease.slot, now);
  ObjectWriter answer;
  answer.Str("leaseId", lease.id)
      .Int("ttlMs", lease.ttl_ms)
      .Str("expiresAt", WallTime(clock_, lease.expires_mono))
      .Str("phase", phase)
      .Bool("stopRequested", phase != "running" || draining_.load())
      .Int("fencingToken", static_cast<int64_t>(lease.fencing_token));
  return HttpResponse{200, "application/json", std::move(answer).Finish(), {}};
}

HttpResponse LeaseService::NotFound(std::string_view id) {
  mu_.AssertHeld();
  json body = {{"error", "lease_not_found"}, {"leaseId", std::string(id)}};
  const auto ended = ended_.find(std::string(id));
  if (ended != ended_.end()) {
    body["reason"] = ToString(ended->second);
    body["message"] =
        "lease " + std::string(id) + " has ended (" + std::string(ToString(ended->second)) + ")";
  } else {
    body["message"] = "no lease " + std::string(id);
  }
  return JsonResponse(404, body);
}

HttpResponse LeaseService::Release(std::string_view id, const HttpRequest& request) {
  HttpResponse bad;
  const std::optional<json> body = ParseBody(request.body, &bad);
  if (!body) return bad;
  FieldReader fields(*body);
  const std::string outcome = fields.String("outcome", 16).value_or("success");
  const std::string error_type = fields.String("errorType").value_or("");
  const double rss_mb = fields.Number("rssMb", 0, 1e9).value_or(-1);
  if (!fields.error() && outcome != "success" && outcome != "failure") {
    fields.Fail("outcome", "outcome = \"" + outcome + "\": must be \"success\" or \"failure\"");
  }
  if (fields.error()) return InvalidRequest(fields.error()->field, fields.error()->message);
  std::unique_ptr<Lease> lease;
  {
    internal::MutexLock lock(mu_);
    const auto it = leases_.find(std::string(id));
    if (it == leases_.end()) {
      const auto ended = ended_.find(std::string(id));
      if (ended == ended_.end()) return NotFound(id);
      const std::string_view reason =
          ended->second == LeaseEnd::kReleased ? "already_released" : ToString(ended->second);
      return JsonResponse(200, {{"leaseId", std::string(id)},
                                {"released", false},
                                {"reason", reason},
                                {"message", "lease " + std::string(id) + " had already ended"}});
    }
    lease = std::move(it->second);
    leases_.erase(it);
    Remember(lease->id, LeaseEnd::kReleased);
    if (leases_.empty()) idle_.NotifyAll();
  }
  const std::string lease_id = lease->id;
  const ReleaseOutcome done =
      End(std::move(lease), LeaseEnd::kReleased, outcome == "success", error_type, rss_mb);
  ObjectWriter answer;
  answer.Str("leaseId", lease_id)
      .Bool("released", true)
      .Num("durationMs", done.duration_ms)
      .Bool("timeoutReached", done.timeout_reached)
      .Bool("escalated", done.escalated);
  return HttpResponse{200, "application/json", std::move(answer).Finish(), {}};
}

ReleaseOutcome LeaseService::End(std::unique_ptr<Lease> lease, LeaseEnd reason, bool success,
                                 std::string_view error_type, double rss_mb) {
  const ReleaseOutcome done = lease->slot.ReleaseWithOutcome(success, error_type);
  Span& span = lease->span;
  span.SetAttributes(
      {{"laneguard.duration_ms", done.duration_ms}, {"laneguard.end_reason", ToString(reason)}});
  if (rss_mb >= 0) span.SetAttribute("laneguard.rss_mb", rss_mb);
  if (!success) span.SetStatus(StatusCode::kError, error_type);
  span.End();
  if (reason != LeaseEnd::kReleased && options_.logger) {
    options_.logger->LogWarning("lease_reclaimed",
                                {{"leaseId", lease->id},
                                 {"lane", lease->lane},
                                 {"taskId", lease->task_id},
                                 {"reason", ToString(reason)},
                                 {"fencingToken", static_cast<int64_t>(lease->fencing_token)},
                                 {"client", lease->client.address},
                                 {"durationMs", done.duration_ms}});
  }
  return done;
}

void LeaseService::Remember(const std::string& id, LeaseEnd reason) {
  ended_[id] = reason;
  ended_order_.push_back(id);
  while (ended_order_.size() > kRememberedEndedLeases) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
}

void LeaseService::Reclaim(const std::function<bool(const Lease&)>& pick, LeaseEnd reason) {
  std::vector<std::unique_ptr<Lease>> taken;
  {
    internal::MutexLock lock(mu_);
    for (auto it = leases_.begin(); it != leases_.end();) {
      if (pick(*it->second)) {
        Remember(it->first, reason);
        taken.push_back(std::move(it->second));
        it = leases_.erase(it);
      } else {
        ++it;
      }
    }
    if (!taken.empty() && leases_.empty()) idle_.NotifyAll();
  }
  const auto n = static_cast<int64_t>(taken.size());
  if (reason == LeaseEnd::kExpired) expired_.fetch_add(n, std::memory_order_relaxed);
  if (reason == LeaseEnd::kConnectionClosed)
    connection_closed_.fetch_add(n, std::memory_order_relaxed);
  const std::string_view error_type = ToString(reason);
  for (auto& lease : taken) End(std::move(lease), reason, false, error_type, -1);
}

void LeaseService::Sweep() {
  const int64_t now = clock_.MonotonicNanos();
  Reclaim([now](const Lease& lease) { return lease.expires_mono <= now; }, LeaseEnd::kExpired);
}

void LeaseService::OnConnectionClosed(uint64_t connection_id) {
  Reclaim(
      [connection_id](const Lease& lease) {
        return lease.bound && lease.client.connection_id == connection_id;
      },
      LeaseEnd::kConnectionClosed);
}

void LeaseService::ReleaseAll() {
  Reclaim([](const Lease& /*lease*/) { return true; }, LeaseEnd::kDaemonStopped);
}

void LeaseService::BeginDrain() { draining_.store(true); }

bool LeaseService::WaitUntilIdle(std::chrono::milliseconds timeout) {
  internal::MutexLock lock(mu_);
  return idle_.WaitFor(lock, timeout, [this] {
    mu_.AssertHeld();
    return leases_.empty();
  });
}

size_t LeaseService::lease_count() const {
  internal::MutexLock lock(mu_);
  return leases_.size();
}

// ---- views --------------------------------------------------------------------------------------

HttpResponse LeaseService::ListLeases() const {
  const int64_t now = clock_.MonotonicNanos();
  std::vector<json> rows;
  {
    internal::MutexLock lock(mu_);
    std::vector<const Lease*> sorted;
    sorted.reserve(leases_.size());
    for (const auto& [id, lease] : leases_) sorted.push_back(lease.get());
    std::sort(sorted.begin(), sorted.end(),
              [](const Lease* a, const Lease* b) { return a->granted_mono < b->granted_mono; });
    for (const Lease* l : sorted) {
      rows.push_back({{"leaseId", l->id},
                      {"fencingToken", l->fencing_token},
                      {"lane", l->lane},
                      {"taskId", l->task_id},
                      {"client", ClientToJson(l->client)},
                      {"grantedAt", WallTime(clock_, l->granted_mono)},
                      {"ageMs", (now - l->granted_mono) / kNanosPerMs},
                      {"phase", PhaseAt(l->slot, now)},
                      {"expiresInMs", (l->expires_mono - now) / kNanosPerMs},
                      {"timeoutMs",
                       (l->slot.deadline_mono_nanos() - l->slot.start_mono_nanos()) / kNanosPerMs},
                      {"ttlMs", l->ttl_ms},
                      {"boundToConnection", l->bound}});
    }
  }
  return JsonResponse(200, {{"leases", std::move(rows)}});
}

HttpResponse LeaseService::Status() const {
  json body = StatusToJson(manager_.GetConcurrencyStatus());
  {
    internal::MutexLock lock(mu_);
    body["leases"] = leases_.size();
    body["parked"] = parked_set_.size();
  }
  body["draining"] = draining_.load();
  return JsonResponse(200, body);
}

HttpResponse LeaseService::PutConfig(const HttpRequest& request) {
  if (!options_.update_config) {
    HttpResponse r =
        ErrorResponse(405, "method_not_allowed", "this daemon cannot change its config");
    r.headers.emplace_back("Allow", "GET");
    return r;
  }
  Result<Config> parsed = ParseConfigJson(request.body);
  if (!parsed.ok()) return InvalidRequest(parsed.error().field(), parsed.error().message());
  Result<Config> applied = options_.update_config(std::move(parsed).value());
  if (!applied.ok()) return InvalidRequest(applied.error().field(), applied.error().message());
  HttpResponse r;
  r.body = ConfigToJson(*applied) + "\n";
  return r;
}

std::vector<ExtraFamily> LeaseService::ExtraFamilies() const {
  size_t active = 0, parked = 0;
  {
    internal::MutexLock lock(mu_);
    active = leases_.size();
    parked = parked_set_.size();
  }
  using Type = ExtraFamily::Type;
  const auto count = [](const std::atomic<int64_t>& n) {
    return static_cast<double>(n.load(std::memory_order_relaxed));
  };
  return {
      {"laneguard_leases_active",
       "Leases held now.",
       Type::kGauge,
       {{{}, static_cast<double>(active)}}},
      {"laneguard_leases_parked",
       "Lease requests waiting for a place now.",
       Type::kGauge,
       {{{}, static_cast<double>(parked)}}},
      {"laneguard_leases_granted_total",
       "Leases granted.",
       Type::kCounter,
       {{{}, count(granted_)}}},
      {"laneguard_leases_reclaimed_total",
       "Leases ended by the daemon, not released by their client, by reason.",
       Type::kCounter,
       {{{{"reason", "lease_expired"}}, count(expired_)},
        {{{"reason", "connection_closed"}}, count(connection_closed_)}}},
  };
}

}  // namespace laneguard::server
