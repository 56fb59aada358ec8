// The daemon's HTTP/1.1 transport: an asynchronous server on Boost.Asio and Boost.Beast that
// listens on TCP and Unix sockets and hands each complete request to an HttpHandler. It knows
// nothing of leases; the handler knows nothing of sockets.
//
// Why Beast on a small fixed pool of threads: a parked request (a lease waiting for a place) must
// cost a few hundred bytes, not a thread, so thousands can wait at once (cpp-httplib keeps a
// thread per connection). Every connection has a deadline for its request head and body, an idle
// deadline between keep-alive requests and one for writing each response, so a slow or silent
// client cannot hold the server.
//
// Thread safety: Start/StopAccepting/Stop from one owning thread. The handler is called on the
// server's threads; `respond` may be called from any thread, exactly once per request.
#ifndef LANEGUARD_SRC_SERVER_HTTP_SERVER_H_
#define LANEGUARD_SRC_SERVER_HTTP_SERVER_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "laneguard/result.h"

namespace laneguard::server {

// Who sent a request.
struct Peer {
  uint64_t connection_id = 0;  // unique for the server's life, never 0
  bool unix_socket = false;
  std::string address;     // "127.0.0.1:5432", "[::1]:5432", or "unix:PATH"
  std::optional<int> pid;  // SO_PEERCRED, Unix socket only
  std::optional<int> uid;
};

struct HttpRequest {
  std::string method;  // "GET", "POST", "PUT", "DELETE", "HEAD", ...
  std::string target;  // as sent: path and query
  std::string body;
  std::string content_type;
  std::string accept;
  Peer peer;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Retry-After, Allow)
};

// Sends the response; call exactly once per request, from any thread. After the client has gone
// it does nothing.
using Respond = std::function<void(HttpResponse)>;

class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  // A complete request. `cancel` is stopped if the client closes or resets its connection before
  // the response is sent (a parked request stops waiting then); `respond` must still be called.
  virtual void Handle(HttpRequest request, std::stop_token cancel, Respond respond) = 0;
  // The connection `connection_id` has closed, for whatever reason (client, error, deadline,
  // Stop). Called once per connection that reached Handle at least once, after its last Handle.
  virtual void OnConnectionClosed(uint64_t connection_id) { (void)connection_id; }
};

struct HttpServerOptions {
  // "HOST:PORT" (IPv4, [IPv6] or localhost; port 0 picks a free one) or "unix:PATH" (an existing
  // socket file at PATH is replaced; the file is removed at Stop).
  std::vector<std::string> listen = {"127.0.0.1:7878"};
  // When not empty, every request but GET (or HEAD) /healthz and /readyz must carry
  // "Authorization: Bearer <token>" (compared in constant time), else 401.
  std::string bearer_token;
  size_t max_head_bytes = size_t{16} * 1024;   // 431 beyond
  size_t max_body_bytes = size_t{256} * 1024;  // 413 beyond
  // Head and body: from accept for a connection's first request (a client that connects and
  // says nothing is a slow client), from the first byte for later ones. Past it: 408, closed.
  std::chrono::milliseconds request_deadline{10'000};
  std::chrono::milliseconds idle_deadline{120'000};  // between keep-alive requests
  std::chrono::milliseconds write_deadline{10'000};  // each response
  size_t max_connections = 20'000;  // beyond: accepted and closed at once (rejected_connections)
  int threads = 2;
};

class HttpServer {
 public:
  // Binds every listen address and starts the threads. Errors name the option and value
  // (field "listen").
  static Result<std::unique_ptr<HttpServer>> Start(HttpHandler& handler, HttpServerOptions options);
  ~HttpServer();  // Stop()

  // The bound addresses, in the order given: "127.0.0.1:40123" (the real port), "unix:/run/x".
  std::vector<std::string> endpoints() const;
  // The port of the first TCP endpoint (0 if none).
  int port() const;
  // New connections are refused from now on; open ones keep being served.
  void StopAccepting();
  // Waits until every request received so far has its response written (or its connection
  // closed), for at most `timeout`; true if so. Between StopAccepting and Stop it lets the last
  // answers of a drain (the release that ended it) reach their clients: Stop drops pending writes.
  bool WaitUntilAnswered(std::chrono::milliseconds timeout);
  // Closes every connection (OnConnectionClosed for each) and joins the threads. Idempotent.
  void Stop();

  // Connections open now, and those refused since Start because max_connections were open.
  size_t open_connections() const;
  uint64_t rejected_connections() const;

  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace laneguard::server

#endif  // LANEGUARD_SRC_SERVER_HTTP_SERVER_H_
