// The daemon's API (docs/serve.md): slots of one ResourceBudgetManager handed out as leases over
// HTTP. A lease is a Slot held on a client's behalf for as long as the client renews it within
// its TTL; one that is not renewed, or whose connection it was bound to closes, is reclaimed, so a
// client that crashes leaks nothing. Each lease is a span (worker_call:<lane>) from the request's
// arrival (its wait included) to its release or reclaim, joined to the caller's traceparent.
//
// A waiting request is parked with ResourceBudgetManager::AcquireAsync (no thread is kept for it):
// the manager answers on the thread that frees the place, and the answer goes back to the client
// through the transport's Respond. The transport's cancel token is the wait's stop token, so a
// client that disconnects while parked leaves the queue.
//
// Thread safety: every method is safe from any thread. Leases live in one map under `mu_`; slots
// are released and spans ended outside it.
#ifndef LANEGUARD_SRC_SERVER_LEASE_SERVICE_H_
#define LANEGUARD_SRC_SERVER_LEASE_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "laneguard/exporters/prometheus.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/manager.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/trace/trace.h"
#include "server/http_server.h"

namespace laneguard::server {

inline constexpr int64_t kDefaultTtlMs = 15'000;
inline constexpr int64_t kMinTtlMs = 100;
inline constexpr int64_t kMaxTtlMs = 600'000;
// Ended leases remembered, so a second release says "already released" rather than 404.
inline constexpr size_t kRememberedEndedLeases = 4096;

// How a lease ended: released by its client, or reclaimed by the daemon.
enum class LeaseEnd : uint8_t { kReleased, kExpired, kConnectionClosed, kDaemonStopped };
// "released", "lease_expired", "connection_closed", "daemon_stopped".
std::string_view ToString(LeaseEnd end);

struct LeaseServiceOptions {
  // Spans of leases; none when null. Must outlive the service.
  Tracer* tracer = nullptr;
  // Reclaims are logged here (grants and releases are logged by the manager's observer).
  std::shared_ptr<JsonLogger> logger;
  // GET /metrics; 404 when null. The service's own families are added through
  // ExtraFamilies() (the caller passes them to the collector).
  std::shared_ptr<const PrometheusCollector> metrics;
  // PUT /v1/config: applies a parsed config (ResourceBudgetManager::UpdateConfig); 405 when empty.
  std::function<Result<Config>(Config)> update_config;
  // Expired leases are reclaimed by a thread of the service every sweep_interval; with
  // start_sweeper false, only when the owner calls Sweep() (tests with a ManualClock).
  bool start_sweeper = true;
  std::chrono::milliseconds sweep_interval{50};
};

class LeaseService final : public HttpHandler {
 public:
  // `manager` must outlive the service.
  LeaseService(ResourceBudgetManager& manager, LeaseServiceOptions options);
  ~LeaseService() override;  // stops the sweeper; held leases are released as "daemon_stopped"
  LeaseService(const LeaseService&) = delete;
  LeaseService& operator=(const LeaseService&) = delete;

  void Handle(HttpRequest request, std::stop_token cancel, Respond respond) override;
  void OnConnectionClosed(uint64_t connection_id) override;

  // Reclaims every lease whose TTL has passed (reason lease_expired).
  void Sweep();
  // Shutting down: new leases are refused with shutting_down (parked ones are refused by the
  // manager's Shutdown), renew answers stopRequested, /readyz answers 503.
  void BeginDrain();
  // Waits until no lease is held or `timeout` passes; true if none is held.
  bool WaitUntilIdle(std::chrono::milliseconds timeout);
  // Releases every lease still held (errorType "daemon_stopped"): the end of a drain.
  void ReleaseAll();
  size_t lease_count() const;

  // laneguard_leases_active, laneguard_leases_granted_total, laneguard_leases_reclaimed_total.
  std::vector<ExtraFamily> ExtraFamilies() const;

 private:
  struct Lease;
  struct Parked;

  HttpResponse Route(const HttpRequest& request, std::string_view path);
  void PostLease(HttpRequest request, std::stop_token cancel, Respond respond);
  // The manager's answer to a parked request (on whichever thread decided it).
  void OnAnswer(const std::shared_ptr<Parked>& parked, Result<Slot> result);
  HttpResponse Granted(std::unique_ptr<Lease> lease);
  HttpResponse Refused(const Error& error, std::string_view lane);
  int64_t RetryAfterMs(std::string_view lane, RejectReason reason) const;
  HttpResponse Renew(std::string_view id, const HttpRequest& request);
  HttpResponse Release(std::string_view id, const HttpRequest& request);
  HttpResponse NotFound(std::string_view id) REQUIRES(mu_);
  HttpResponse ListLeases() const;
  HttpResponse Status() const;
  HttpResponse PutConfig(const HttpRequest& request);
  // Takes the leases `pick` selects out of the map (under mu_) and ends them with `reason`.
  void Reclaim(const std::function<bool(const Lease&)>& pick, LeaseEnd reason);
  ReleaseOutcome End(std::unique_ptr<Lease> lease, LeaseEnd reason, bool success,
                     std::string_view error_type, double rss_mb);
  void Remember(const std::string& id, LeaseEnd reason) REQUIRES(mu_);
  std::string NewLeaseId() REQUIRES(mu_);
  void SweepLoop();

  ResourceBudgetManager& manager_;
  const Clock& clock_;
  LeaseServiceOptions options_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> granted_{0};
  std::atomic<int64_t> expired_{0};
  std::atomic<int64_t> connection_closed_{0};

  mutable internal::Mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<Lease>> leases_ GUARDED_BY(mu_);
  std::unordered_set<std::shared_ptr<Parked>> parked_set_ GUARDED_BY(mu_);
  std::unordered_map<std::string, LeaseEnd> ended_ GUARDED_BY(mu_);
  std::deque<std::string> ended_order_ GUARDED_BY(mu_);
  uint64_t next_fencing_token_ GUARDED_BY(mu_) = 1;
  std::mt19937_64 random_ GUARDED_BY(mu_);
  internal::CondVar idle_;  // leases_ became empty (with mu_)

  internal::Mutex sweep_mu_;
  internal::CondVar sweep_cv_;
  bool sweep_stop_ GUARDED_BY(sweep_mu_) = false;
  std::thread sweeper_;
};

}  // namespace laneguard::server

#endif  // LANEGUARD_SRC_SERVER_LEASE_SERVICE_H_
