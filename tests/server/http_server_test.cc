// The daemon's HTTP transport, from the outside: cpp-httplib as a well-behaved client, raw sockets
// for pipelining, disconnects, oversized and malformed requests and slow clients.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace laneguard::server {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// Polls `done` until it holds or `timeout` passes; its last value.
bool WaitUntil(const std::function<bool()>& done, milliseconds timeout = milliseconds(10'000)) {
  const auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() >= deadline) return done();
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

std::string PathOf(const std::string& target) { return target.substr(0, target.find('?')); }

// Routes by path: /park waits until the test releases it (or forever), /later answers from a
// thread of its own, /throw throws, anything else echoes "METHOD TARGET BODY" with the peer in
// headers. Checks the OnConnectionClosed contract as it goes.
class TestHandler : public HttpHandler {
 public:
  struct Parked {
    Respond respond;
    std::stop_token cancel;
    std::string target;
    uint64_t connection_id;
  };

  ~TestHandler() override {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }

  void Handle(HttpRequest request, std::stop_token cancel, Respond respond) override {
    const uint64_t id = request.peer.connection_id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++handles_;
      ++in_handle_[id];
      if (closed_.count(id) != 0) ++violations_;  // a Handle after OnConnectionClosed
    }
    const std::string path = PathOf(request.target);
    if (path == "/park") {
      std::lock_guard<std::mutex> lock(mu_);
      parked_.push_back(Parked{std::move(respond), cancel, request.target, id});
      all_cancels_.push_back(cancel);
    } else if (path == "/later") {
      std::lock_guard<std::mutex> lock(mu_);
      threads_.emplace_back([respond = std::move(respond), target = request.target] {
        std::this_thread::sleep_for(milliseconds(5));
        HttpResponse response;
        response.content_type = "text/plain";
        response.body = "later " + target;
        respond(std::move(response));
      });
    } else if (path == "/throw") {
      Leave(id);
      throw std::runtime_error("boom");
    } else {
      HttpResponse response;
      response.content_type = "text/plain";
      response.body = request.method + " " + request.target + " " + request.body;
      response.headers = {{"X-Peer", request.peer.address},
                          {"X-Conn", std::to_string(id)},
                          {"X-Unix", request.peer.unix_socket ? "1" : "0"},
                          {"X-Pid", std::to_string(request.peer.pid.value_or(-1))},
                          {"X-Uid", std::to_string(request.peer.uid.value_or(-1))}};
      respond(std::move(response));
    }
    Leave(id);
  }

  void OnConnectionClosed(uint64_t connection_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (in_handle_[connection_id] != 0) ++violations_;
    if (!closed_.insert(connection_id).second) ++violations_;  // twice
  }

  size_t parked() {
    std::lock_guard<std::mutex> lock(mu_);
    return parked_.size();
  }
  // Answers every parked request from this (a foreign) thread; returns how many.
  size_t ReleaseAll() {
    std::vector<Parked> parked;
    {
      std::lock_guard<std::mutex> lock(mu_);
      parked.swap(parked_);
    }
    for (Parked& p : parked) {
      HttpResponse response;
      response.content_type = "text/plain";
      response.body = "released " + p.target;
      p.respond(std::move(response));
    }
    return parked.size();
  }
  bool AllCancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return !all_cancels_.empty() && std::all_of(all_cancels_.begin(), all_cancels_.end(),
                                                [](auto& t) { return t.stop_requested(); });
  }
  bool AnyCancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::any_of(all_cancels_.begin(), all_cancels_.end(),
                       [](auto& t) { return t.stop_requested(); });
  }
  size_t closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_.size();
  }
  bool closed(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_.count(id) != 0;
  }
  int violations() {
    std::lock_guard<std::mutex> lock(mu_);
    return violations_;
  }
  int handles() {
    std::lock_guard<std::mutex> lock(mu_);
    return handles_;
  }

 private:
  void Leave(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    --in_handle_[id];
  }

  std::mutex mu_;
  std::vector<Parked> parked_;
  std::vector<std::stop_token> all_cancels_;
  std::vector<std::thread> threads_;
  std::map<uint64_t, int> in_handle_;
  std::set<uint64_t> closed_;
  int violations_ = 0;
  int handles_ = 0;
};

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
  std::string header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// A blocking-free client on a raw socket, for what a polite client library will not do.
class RawClient {
 public:
  static RawClient Tcp(int port, int family = AF_INET) {
    RawClient c(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (family == AF_INET) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      c.connected_ = ::connect(c.fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    } else {
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_port = htons(static_cast<uint16_t>(port));
      a.sin6_addr = in6addr_loopback;
      c.connected_ = ::connect(c.fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    }
    return c;
  }
  static RawClient Unix(const std::string& path) {
    RawClient c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    c.connected_ = ::connect(c.fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    return c;
  }
  RawClient(RawClient&& o) noexcept
      : fd_(std::exchange(o.fd_, -1)), connected_(o.connected_), in_(std::move(o.in_)) {}
  RawClient& operator=(RawClient&&) = delete;
  ~RawClient() { Close(); }

  bool connected() const { return connected_; }
  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void ShutdownSend() { ::shutdown(fd_, SHUT_WR); }
  // Closes with a reset (RST) instead of an orderly FIN.
  void Reset() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    Close();
  }

  // The next response (with no body bytes if `head`), or nullopt on close or timeout.
  std::optional<RawResponse> Read(milliseconds timeout = milliseconds(10'000), bool head = false) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      const size_t end = in_.find("\r\n\r\n");
      if (end != std::string::npos) {
        RawResponse r = ParseHead(in_.substr(0, end));
        const size_t length =
            head ? 0 : static_cast<size_t>(std::atol(r.header("content-length").c_str()));
        if (in_.size() >= end + 4 + length) {
          r.body = in_.substr(end + 4, length);
          in_.erase(0, end + 4 + length);
          return r;
        }
      }
      if (!Fill(deadline)) return std::nullopt;
    }
  }
  // True once the server has closed (EOF or reset) within `timeout`; bytes before are dropped.
  bool WaitClosed(milliseconds timeout = milliseconds(10'000)) {
    const auto deadline = Clock::now() + timeout;
    while (Fill(deadline)) in_.clear();
    return eof_;
  }
  std::string& pending() { return in_; }

 private:
  explicit RawClient(int fd) : fd_(fd) {}

  // Reads what is there; false on EOF, error or timeout (eof_ says which).
  bool Fill(Clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    in_.append(buf, static_cast<size_t>(n));
    return true;
  }

  static RawResponse ParseHead(const std::string& head) {
    RawResponse r;
    size_t pos = head.find("\r\n");
    const std::string status_line = head.substr(0, pos);
    if (status_line.size() > 12) r.status = std::atoi(status_line.c_str() + 9);
    while (pos != std::string::npos && pos < head.size()) {
      const size_t start = pos + 2;
      pos = head.find("\r\n", start);
      const std::string line = head.substr(start, pos == std::string::npos ? pos : pos - start);
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(), ::tolower);
      r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    }
    return r;
  }

  int fd_;
  bool connected_ = false;
  bool eof_ = false;
  std::string in_;
};

std::string Get(const std::string& target, const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: t\r\n" + extra + "\r\n";
}

HttpServerOptions Loopback() {
  HttpServerOptions options;
  options.listen = {"127.0.0.1:0"};
  return options;
}

std::unique_ptr<HttpServer> MustStart(TestHandler& handler, HttpServerOptions options) {
  auto started = HttpServer::Start(handler, std::move(options));
  if (!started.ok()) {
    ADD_FAILURE() << started.error().message();
    return nullptr;
  }
  return std::move(started).value();
}

// A fresh directory for Unix sockets (short enough for sun_path).
std::string TempDir() {
  std::string pattern = "/tmp/lg-http-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) return "/tmp";
  return pattern;
}

TEST(HttpServerTest, KeepAliveServesManyRequestsOnOneConnection) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  std::set<std::string> connections;
  {
    httplib::Client client("127.0.0.1", server->port());
    client.set_keep_alive(true);
    // cpp-httplib writes a POST's head and body apart; with Nagle on, the body waits for the
    // server's delayed ACK of the head (40 ms a request).
    client.set_tcp_nodelay(true);
    for (int i = 0; i < 100; ++i) {
      const auto res = client.Post("/echo", "body" + std::to_string(i), "text/plain");
      ASSERT_TRUE(res) << i;
      EXPECT_EQ(res->status, 200);
      EXPECT_EQ(res->body, "POST /echo body" + std::to_string(i));
      EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain");
      EXPECT_TRUE(res->get_header_value("X-Peer").rfind("127.0.0.1:", 0) == 0);
      connections.insert(res->get_header_value("X-Conn"));
    }
  }
  EXPECT_EQ(connections.size(), 1u);
  EXPECT_EQ(handler.handles(), 100);
  EXPECT_TRUE(WaitUntil([&] { return handler.closed() == 1; }));
  EXPECT_EQ(server->open_connections(), 0u);
  EXPECT_EQ(handler.violations(), 0);
}

TEST(HttpServerTest, PipelinedRequestsAreAnsweredInOrderAcrossAParkedOne) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.connected());
  // All three in one write: the second parks, the third arrives while it is pending (the watch
  // read takes it) and must be parsed after the second's response.
  ASSERT_TRUE(c.Send(Get("/echo?1") + Get("/park?2") +
                     "POST /echo?3 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"));
  const auto first = c.Read();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->body, "GET /echo?1 ");
  ASSERT_TRUE(WaitUntil([&] { return handler.parked() == 1; }));
  EXPECT_FALSE(c.Read(milliseconds(100))) << "answered out of order";
  EXPECT_EQ(handler.handles(), 2);
  handler.ReleaseAll();
  const auto second = c.Read();
  const auto third = c.Read();
  ASSERT_TRUE(second);
  ASSERT_TRUE(third);
  EXPECT_EQ(second->body, "released /park?2");
  EXPECT_EQ(third->body, "POST /echo?3 hello");
  EXPECT_EQ(third->header("connection"), "");  // keep-alive: no Connection: close
}

TEST(HttpServerTest, ManyPipelinedRequestsInOneWrite) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  std::string all;
  for (int i = 0; i < 50; ++i) all += Get("/echo?" + std::to_string(i));
  ASSERT_TRUE(c.Send(all));
  for (int i = 0; i < 50; ++i) {
    const auto r = c.Read();
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->body, "GET /echo?" + std::to_string(i) + " ");
  }
}

TEST(HttpServerTest, ClientClosingWhileParkedFiresCancelAndClosesOnce) {
  for (const bool reset : {false, true}) {
    SCOPED_TRACE(reset ? "reset" : "orderly close");
    TestHandler handler;
    auto server = MustStart(handler, Loopback());
    ASSERT_NE(server, nullptr);
    RawClient c = RawClient::Tcp(server->port());
    ASSERT_TRUE(c.Send(Get("/park")));
    ASSERT_TRUE(WaitUntil([&] { return handler.parked() == 1; }));
    EXPECT_FALSE(handler.AnyCancelled());
    if (reset) {
      c.Reset();
    } else {
      c.Close();
    }
    EXPECT_TRUE(WaitUntil([&] { return handler.AllCancelled(); }));
    // The handler answers anyway, from its own thread, after the client left: dropped.
    EXPECT_EQ(handler.ReleaseAll(), 1u);
    EXPECT_TRUE(WaitUntil([&] { return handler.closed() == 1; }));
    EXPECT_TRUE(WaitUntil([&] { return server->open_connections() == 0; }));
    server->Stop();
    EXPECT_EQ(handler.closed(), 1u);
    EXPECT_EQ(handler.violations(), 0);
  }
}

TEST(HttpServerTest, HalfClosedClientStillGetsItsResponse) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.Send(Get("/park")));
  ASSERT_TRUE(WaitUntil([&] { return handler.parked() == 1; }));
  // Shutting only the sending side reads as "gone" to the server (a FIN is all it sees: the stop
  // token fires), but the response is still written before the connection closes.
  c.ShutdownSend();
  EXPECT_TRUE(WaitUntil([&] { return handler.AllCancelled(); }));
  handler.ReleaseAll();
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "released /park");
  EXPECT_EQ(r->header("connection"), "close");
  EXPECT_TRUE(c.WaitClosed());
}

TEST(HttpServerTest, RespondFromAnotherThread) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.threads = 4;
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  httplib::Client client("127.0.0.1", server->port());
  for (int i = 0; i < 20; ++i) {
    const auto res = client.Get("/later?" + std::to_string(i));
    ASSERT_TRUE(res);
    EXPECT_EQ(res->body, "later /later?" + std::to_string(i));
  }
}

TEST(HttpServerTest, HandlerThatThrowsGets500) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  httplib::Client client("127.0.0.1", server->port());
  const auto res = client.Get("/throw");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  EXPECT_NE(res->body.find("boom"), std::string::npos);
}

TEST(HttpServerTest, StopCancelsParkedRequestsAndDropsLateResponds) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  std::vector<RawClient> clients;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(RawClient::Tcp(server->port()));
    ASSERT_TRUE(clients.back().Send(Get("/park?" + std::to_string(i))));
  }
  ASSERT_TRUE(WaitUntil([&] { return handler.parked() == 5; }));
  server->Stop();
  EXPECT_TRUE(handler.AllCancelled());
  EXPECT_EQ(handler.closed(), 5u);
  for (RawClient& c : clients) EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(handler.ReleaseAll(), 5u);  // after Stop: dropped, no crash
  server->Stop();                       // idempotent
  server.reset();
  EXPECT_EQ(handler.violations(), 0);
}

TEST(HttpServerTest, StopAcceptingRefusesNewConnectionsButServesOpenOnes) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  RawClient c = RawClient::Tcp(port);
  ASSERT_TRUE(c.Send(Get("/echo?1")));
  ASSERT_TRUE(c.Read());
  server->StopAccepting();
  EXPECT_FALSE(RawClient::Tcp(port).connected());
  ASSERT_TRUE(c.Send(Get("/echo?2")));
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "GET /echo?2 ");
}

TEST(HttpServerTest, HeadTooLargeIs431JsonAndCloses) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.max_head_bytes = 1024;
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.Send(Get("/echo", "X-Big: " + std::string(4000, 'a') + "\r\n")));
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 431);
  EXPECT_EQ(r->header("content-type"), "application/json");
  EXPECT_EQ(r->header("connection"), "close");
  EXPECT_NE(r->body.find("\"error\":\"header_too_large\""), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("1024"), std::string::npos) << r->body;
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(handler.handles(), 0);
}

TEST(HttpServerTest, BodyTooLargeIs413JsonAndCloses) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.max_body_bytes = 1000;
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" +
                     std::string(5000, 'b')));
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(r->header("content-type"), "application/json");
  EXPECT_NE(r->body.find("\"error\":\"body_too_large\""), std::string::npos) << r->body;
  EXPECT_TRUE(c.WaitClosed());
  // A chunked body over the bound too.
  RawClient d = RawClient::Tcp(server->port());
  ASSERT_TRUE(
      d.Send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             "7d0\r\n" +
             std::string(2000, 'c') + "\r\n0\r\n\r\n"));
  const auto chunked = d.Read();
  ASSERT_TRUE(chunked);
  EXPECT_EQ(chunked->status, 413);
  EXPECT_EQ(handler.handles(), 0);
}

TEST(HttpServerTest, MalformedRequestIs400JsonNamingHttp) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  for (const std::string bad : {"GET / HTTP/9\r\n\r\n", "GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
                                "POST /x HTTP/1.1\r\nContent-Length: zz\r\n\r\n"}) {
    SCOPED_TRACE(bad);
    RawClient c = RawClient::Tcp(server->port());
    ASSERT_TRUE(c.Send(bad));
    const auto r = c.Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400);
    EXPECT_NE(r->body.find("\"error\":\"invalid_request\""), std::string::npos) << r->body;
    EXPECT_NE(r->body.find("\"field\":\"http\""), std::string::npos) << r->body;
    EXPECT_NE(r->body.find("\"message\":"), std::string::npos) << r->body;
    EXPECT_TRUE(c.WaitClosed());
  }
  EXPECT_EQ(handler.handles(), 0);
}

TEST(HttpServerTest, SlowHeadersAreCutOffByTheRequestDeadline) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.request_deadline = milliseconds(300);
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  const auto start = Clock::now();
  ASSERT_TRUE(c.Send("GET /echo HTTP/1.1\r\nHost: t\r\n"));
  // A byte every 50 ms keeps every single read short; only a deadline for the whole head helps.
  std::optional<RawResponse> r;
  for (int i = 0; i < 60 && !r; ++i) {
    if (!c.Send("X")) break;
    r = c.Read(milliseconds(50));
  }
  const auto took = Clock::now() - start;
  ASSERT_TRUE(r) << "not answered within 3 s";
  EXPECT_EQ(r->status, 408);
  EXPECT_NE(r->body.find("request_timeout"), std::string::npos);
  EXPECT_GE(took, milliseconds(250));
  EXPECT_LT(took, milliseconds(2500));
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_EQ(handler.handles(), 0);
}

TEST(HttpServerTest, IdleKeepAliveConnectionIsClosedByTheIdleDeadline) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.idle_deadline = milliseconds(200);
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.Send(Get("/echo")));
  ASSERT_TRUE(c.Read());
  const auto start = Clock::now();
  EXPECT_TRUE(c.WaitClosed(milliseconds(5000)));
  EXPECT_GE(Clock::now() - start, milliseconds(150));
  EXPECT_TRUE(WaitUntil([&] { return handler.closed() == 1; }));
}

TEST(HttpServerTest, ParkedRequestHasNoDeadline) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.idle_deadline = milliseconds(100);
  options.request_deadline = milliseconds(100);
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.Send(Get("/park")));
  ASSERT_TRUE(WaitUntil([&] { return handler.parked() == 1; }));
  EXPECT_FALSE(c.WaitClosed(milliseconds(400)));  // well past both deadlines
  EXPECT_FALSE(handler.AnyCancelled());
  handler.ReleaseAll();
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "released /park");
}

TEST(HttpServerTest, HeadSendsHeadersWithoutBody) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.Send("HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n" + Get("/echo?after")));
  const auto head = c.Read(milliseconds(10'000), /*head=*/true);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->header("content-length"), std::to_string(std::string("HEAD /echo ").size()));
  EXPECT_TRUE(head->body.empty());
  const auto after = c.Read();  // parsed right after the head: no stray body bytes between
  ASSERT_TRUE(after);
  EXPECT_EQ(after->body, "GET /echo?after ");
}

TEST(HttpServerTest, Http10ClosesUnlessKeepAliveIsAsked) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(c.Send("GET /echo HTTP/1.0\r\n\r\n"));
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(c.WaitClosed());
  RawClient k = RawClient::Tcp(server->port());
  ASSERT_TRUE(k.Send("GET /echo?1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  const auto r1 = k.Read();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->header("connection"), "keep-alive");
  ASSERT_TRUE(k.Send(Get("/echo?2", "Connection: close\r\n")));
  const auto r2 = k.Read();
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->header("connection"), "close");
  EXPECT_TRUE(k.WaitClosed());
}

TEST(HttpServerTest, ExpectContinueIsAnswered) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Tcp(server->port());
  ASSERT_TRUE(
      c.Send("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
             "Content-Length: 4\r\n\r\n"));
  const auto interim = c.Read(milliseconds(5000), /*head=*/true);
  ASSERT_TRUE(interim);
  EXPECT_EQ(interim->status, 100);
  ASSERT_TRUE(c.Send("data"));
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "POST /echo data");
}

TEST(HttpServerTest, BearerTokenIsRequiredExceptForHealthProbes) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.bearer_token = "s3cret-token";
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  httplib::Client client("127.0.0.1", server->port());
  const auto none = client.Get("/echo");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(none->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(none->get_header_value("Content-Type"), "application/json");
  EXPECT_NE(none->body.find("\"error\":\"unauthorized\""), std::string::npos) << none->body;
  for (const std::string bad : {"Bearer s3cret-tokem", "Bearer s3cret", "Bearer s3cret-token2",
                                "Basic czNjcmV0LXRva2Vu", "Bearer "}) {
    const auto wrong = client.Get("/echo", {{"Authorization", bad}});
    ASSERT_TRUE(wrong) << bad;
    EXPECT_EQ(wrong->status, 401) << bad;
  }
  const auto good = client.Get("/echo", {{"Authorization", "Bearer s3cret-token"}});
  ASSERT_TRUE(good);
  EXPECT_EQ(good->status, 200);
  for (const char* probe : {"/healthz", "/readyz", "/healthz?x=1"}) {
    const auto res = client.Get(probe);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << probe;
  }
  const auto post = client.Post("/healthz", "", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 401);
  EXPECT_EQ(handler.handles(), 4);  // the good one and the three probes
}

TEST(HttpServerTest, UnixSocketCarriesPeerCredentials) {
  TestHandler handler;
  const std::string path = TempDir() + "/lg.sock";
  HttpServerOptions options;
  options.listen = {"unix:" + path, "127.0.0.1:0"};
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->endpoints().size(), 2u);
  EXPECT_EQ(server->endpoints()[0], "unix:" + path);
  EXPECT_EQ(server->endpoints()[1], "127.0.0.1:" + std::to_string(server->port()));
  RawClient c = RawClient::Unix(path);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.Send(Get("/echo")));
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->header("x-unix"), "1");
  EXPECT_EQ(r->header("x-peer"), "unix:" + path);
  EXPECT_EQ(r->header("x-pid"), std::to_string(::getpid()));
  EXPECT_EQ(r->header("x-uid"), std::to_string(::getuid()));
  server->Stop();
  struct stat st {};
  EXPECT_NE(::stat(path.c_str(), &st), 0) << "the socket file outlived Stop";
}

TEST(HttpServerTest, StaleUnixSocketIsReplacedLiveOneAndOtherFilesAreNot) {
  const std::string dir = TempDir();
  const std::string path = dir + "/stale.sock";
  {
    // A socket file nobody listens on, as a crashed daemon leaves it.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ::close(fd);
  }
  TestHandler handler;
  HttpServerOptions options;
  options.listen = {"unix:" + path};
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  RawClient c = RawClient::Unix(path);
  ASSERT_TRUE(c.Send(Get("/echo")));
  ASSERT_TRUE(c.Read());
  // A second server on the live socket is refused.
  TestHandler other;
  const auto second = HttpServer::Start(other, options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().field(), "listen");
  EXPECT_NE(second.error().message().find(path), std::string::npos);
  // A regular file is never removed.
  const std::string file = dir + "/file";
  std::ofstream(file) << "keep me";
  options.listen = {"unix:" + file};
  const auto on_file = HttpServer::Start(other, options);
  ASSERT_FALSE(on_file.ok());
  EXPECT_NE(on_file.error().message().find("not a socket"), std::string::npos);
  struct stat st {};
  EXPECT_EQ(::stat(file.c_str(), &st), 0);
}

TEST(HttpServerTest, Ipv6Loopback) {
  TestHandler handler;
  HttpServerOptions options;
  options.listen = {"[::1]:0"};
  auto started = HttpServer::Start(handler, options);
  if (!started.ok()) GTEST_SKIP() << "no IPv6 loopback: " << started.error().message();
  auto server = std::move(started).value();
  EXPECT_EQ(server->endpoints()[0], "[::1]:" + std::to_string(server->port()));
  RawClient c = RawClient::Tcp(server->port(), AF_INET6);
  ASSERT_TRUE(c.Send(Get("/echo")));
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header("x-peer").rfind("[::1]:", 0), 0u) << r->header("x-peer");
}

TEST(HttpServerTest, BadListenAddressNamesListenAndTheValue) {
  TestHandler handler;
  for (const std::string bad : {"nonsense", "999.1.1.1:80", "127.0.0.1:70000", "::1:80",
                                "unix:", "unix:/no/such/dir/x.sock"}) {
    HttpServerOptions options;
    options.listen = {bad};
    const auto started = HttpServer::Start(handler, options);
    ASSERT_FALSE(started.ok()) << bad;
    EXPECT_EQ(started.error().field(), "listen") << bad;
    EXPECT_NE(started.error().message().find("listen"), std::string::npos);
    EXPECT_NE(started.error().message().find(bad), std::string::npos) << started.error().message();
  }
  // A port in use.
  auto first = MustStart(handler, Loopback());
  ASSERT_NE(first, nullptr);
  HttpServerOptions taken;
  taken.listen = {"127.0.0.1:" + std::to_string(first->port())};
  const auto second = HttpServer::Start(handler, taken);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().field(), "listen");
  EXPECT_NE(second.error().message().find(taken.listen[0]), std::string::npos);
  HttpServerOptions no_threads = Loopback();
  no_threads.threads = 0;
  const auto third = HttpServer::Start(handler, no_threads);
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.error().field(), "threads");
}

TEST(HttpServerTest, ConnectionsBeyondTheBoundAreRefused) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.max_connections = 2;
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  RawClient a = RawClient::Tcp(server->port());
  RawClient b = RawClient::Tcp(server->port());
  for (RawClient* c : {&a, &b}) {
    ASSERT_TRUE(c->Send(Get("/echo")));
    ASSERT_TRUE(c->Read());
  }
  RawClient refused = RawClient::Tcp(server->port());
  EXPECT_TRUE(refused.WaitClosed());
  EXPECT_EQ(server->rejected_connections(), 1u);
  a.Close();
  ASSERT_TRUE(WaitUntil([&] { return server->open_connections() == 1; }));
  RawClient again = RawClient::Tcp(server->port());
  ASSERT_TRUE(again.Send(Get("/echo")));
  EXPECT_TRUE(again.Read());
}

TEST(HttpServerTest, ManyClientsOnManyThreadsCloseOnceAfterTheirLastHandle) {
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.threads = 4;
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  std::vector<std::thread> clients;
  clients.reserve(16);
  std::atomic<int> ok{0};
  for (int t = 0; t < 16; ++t) {
    clients.emplace_back([&, t] {
      httplib::Client client("127.0.0.1", server->port());
      client.set_keep_alive(true);
      for (int i = 0; i < 25; ++i) {
        const auto res = client.Get(i % 5 == 0 ? "/later" : "/echo?" + std::to_string(t));
        if (res && res->status == 200) ++ok;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 16 * 25);
  EXPECT_TRUE(WaitUntil([&] { return handler.closed() == 16; })) << handler.closed();
  EXPECT_EQ(server->open_connections(), 0u);
  EXPECT_EQ(handler.violations(), 0);
}

double CpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

TEST(HttpServerTest, OutOfDescriptorsBacksOffThenServes) {
#ifdef LANEGUARD_TEST_UBSAN
  // UBSan's vptr check tests whether memory is readable through a pipe it opens: with no
  // descriptor left that fails, and it reports a valid type_info as an invalid object. The test
  // runs in the plain and the ThreadSanitizer builds.
  GTEST_SKIP() << "needs descriptors to be exhausted, which UBSan's own checks cannot survive";
#endif
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  // Every descriptor below the lowest free one is taken: with the limit just above it, the
  // client's socket takes the last one and the server's accept fails with EMFILE.
  const int lowest_free = ::dup(0);
  ASSERT_GE(lowest_free, 0);
  ::close(lowest_free);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest_free) + 1;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &tight), 0);
  RawClient c = RawClient::Tcp(server->port());
  const bool connected = c.connected();
  const double cpu_before = CpuSeconds();
  std::this_thread::sleep_for(milliseconds(400));
  const double cpu = CpuSeconds() - cpu_before;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_TRUE(connected);
  EXPECT_LT(cpu, 0.2) << "the accept loop spins while out of descriptors";
  ASSERT_TRUE(c.Send(Get("/echo")));
  const auto r = c.Read();
  ASSERT_TRUE(r) << "not served once descriptors were free again";
  EXPECT_EQ(r->status, 200);
}

long RssKib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0;
  long resident = 0;
  statm >> pages >> resident;
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

TEST(HttpServerTest, TwoThousandParkedConnectionsOnTwoThreads) {
  constexpr int kClients = 2000;
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  limit.rlim_cur = limit.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &limit);
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  if (limit.rlim_cur < 2 * kClients + 100) {
    GTEST_SKIP() << "RLIMIT_NOFILE is " << limit.rlim_cur << ", need " << 2 * kClients + 100;
  }
  TestHandler handler;
  HttpServerOptions options = Loopback();
  options.threads = 2;
  auto server = MustStart(handler, options);
  ASSERT_NE(server, nullptr);
  const long before = RssKib();
  std::vector<RawClient> clients;
  clients.reserve(kClients);
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(RawClient::Tcp(server->port()));
    ASSERT_TRUE(clients.back().connected()) << i;
    ASSERT_TRUE(clients.back().Send(Get("/park?" + std::to_string(i)))) << i;
  }
  ASSERT_TRUE(WaitUntil([&] { return handler.parked() == kClients; }, milliseconds(60'000)))
      << handler.parked() << " parked";
  const long parked = RssKib();
  std::printf(
      "[ RSS      ] %d parked connections, %d threads: RSS %ld KiB -> %ld KiB "
      "(+%ld KiB, %.0f bytes per connection, client and server side together)\n",
      kClients, options.threads, before, parked, parked - before,
      1024.0 * static_cast<double>(parked - before) / kClients);
  EXPECT_FALSE(handler.AnyCancelled());
  EXPECT_EQ(handler.ReleaseAll(), static_cast<size_t>(kClients));
  for (int i = 0; i < kClients; ++i) {
    const auto r = clients[i].Read();
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->body, "released /park?" + std::to_string(i));
  }
  EXPECT_EQ(server->open_connections(), static_cast<size_t>(kClients));
  clients.clear();
  EXPECT_TRUE(WaitUntil([&] { return handler.closed() == kClients; }, milliseconds(30'000)));
  EXPECT_EQ(handler.violations(), 0);
}

// WaitUntilAnswered: a parked request is unanswered; once answered, an idle keep-alive
// connection is not waited for, and the answer reaches the client before Stop.
TEST(HttpServerTest, WaitUntilAnsweredWaitsForParkedRequestsNotIdleConnections) {
  TestHandler handler;
  auto server = MustStart(handler, Loopback());
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(server->WaitUntilAnswered(milliseconds(0)));
  RawClient idle = RawClient::Tcp(server->port());
  ASSERT_TRUE(idle.Send(Get("/echo")));
  ASSERT_TRUE(idle.Read());  // answered, then idle on keep-alive
  RawClient parked = RawClient::Tcp(server->port());
  ASSERT_TRUE(parked.Send(Get("/park")));
  ASSERT_TRUE(WaitUntil([&] { return handler.parked() == 1; }));
  EXPECT_FALSE(server->WaitUntilAnswered(milliseconds(50)));
  server->StopAccepting();
  EXPECT_EQ(handler.ReleaseAll(), 1u);
  EXPECT_TRUE(server->WaitUntilAnswered(milliseconds(10'000)));
  server->Stop();
  const auto r = parked.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "released /park");
  EXPECT_EQ(handler.violations(), 0);
}

}  // namespace
}  // namespace laneguard::server
