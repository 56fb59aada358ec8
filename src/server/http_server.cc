// The daemon's HTTP/1.1 transport (see http_server.h for the why of Beast on a small pool).
//
// Shape: one io_context run by `threads` threads. Every connection has its own strand, so its
// handlers never run at once, while different connections are served in parallel. A connection
// goes through these states:
//
//   kReading   a request head and body are being read; the request deadline runs (from accept
//              for the first request, from its first byte for later ones);
//   kHandling  the handler has the request and the response is outstanding: no deadline (a
//              parked lease may wait long), but a read stays pending (the "watch") so that a
//              client that closes or resets is noticed at once and the request's stop token
//              fires; bytes it brings (pipelined requests) stay in the buffer the next parse uses;
//   kWriting   the response is being written; the write deadline runs;
//   kIdle      between keep-alive requests; the idle deadline runs;
//   kDraining  after a response that closes the connection: our side is shut and what the client
//              still sends is read and dropped for a moment, so that unread request bytes do not
//              turn the close into a reset that could destroy the response in flight.
//
// Responses come from any thread: `Respond` posts to the connection's strand. It holds a weak
// reference to the connection and goes through a gate that Stop() closes before the io_context
// can go away, so a late Respond is dropped, never a use after free.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <future>
#include <limits>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "laneguard/error.h"
#include "laneguard/exporters/prometheus.h"
#include "laneguard/internal/mutex.h"
#include "server/json_writer.h"

namespace laneguard::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Protocol = asio::generic::stream_protocol;
using Socket = Protocol::socket;
using Acceptor = asio::basic_socket_acceptor<Protocol>;
using Strand = asio::strand<asio::io_context::executor_type>;
using BeastRequest = http::request<http::string_body>;
using BeastResponse = http::response<http::string_body>;

constexpr auto kAcceptRetry = std::chrono::milliseconds(100);  // after EMFILE, ENFILE, ENOMEM
constexpr auto kMaxLinger = std::chrono::milliseconds(1000);   // draining before a close
// A parked connection reads in steps this small: the buffer of an idle or parked connection is
// the bulk of what it costs, and a request rarely arrives while the previous one is pending.
constexpr size_t kWatchBytes = 512;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

beast::string_view View(std::string_view s) { return {s.data(), s.size()}; }
std::string_view View(beast::string_view s) { return {s.data(), s.size()}; }

HttpResponse ErrorResponse(int status, std::string_view error, std::string_view message,
                           std::string_view field = {}) {
  HttpResponse response;
  response.status = status;
  ObjectWriter body;
  body.Str("error", error);
  if (!field.empty()) body.Str("field", field);
  body.Str("message", message);
  response.body = std::move(body).Finish();
  return response;
}

// Compares the whole of both strings whatever differs where, so the time taken says nothing about
// how much of a guessed token was right (only the expected length, which is no secret).
bool ConstantTimeEquals(std::string_view given, std::string_view expected) {
  volatile unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const char g = i < given.size() ? given[i] : '\0';
    diff = static_cast<unsigned char>(diff | static_cast<unsigned char>(g ^ expected[i]));
  }
  return diff == 0;
}

Error ListenError(ErrorCode code, const std::string& text, const std::string& why) {
  const std::string value = "\"" + text + "\"";
  return Error{code, "listen", value, "option 'listen' = " + value + ": " + why};
}

Error OptionError(std::string_view key, const std::string& value, std::string_view why) {
  return Error{ErrorCode::kInvalidArgument, std::string(key), value,
               "option '" + std::string(key) + "' = " + value + ": " + std::string(why)};
}

// Asio's cancel() reports failure by throwing; cancelling a timer cannot fail on Linux, and there
// would be nothing to do if it did. For the paths that must not throw (Close, the destructors).
void CancelTimer(asio::steady_timer& timer) noexcept {
  try {
    timer.cancel();
  } catch (...) {  // NOLINT(bugprone-empty-catch): see above
  }
}

// strerror() is not thread-safe; this is.
std::string SystemMessage(int error) { return std::system_category().message(error); }

// Closes its descriptor unless released. Thread safety: one owner, like a unique_ptr.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Closes `fd` if the strand refuses it; never throws.
void CloseQuietly(int fd) {
  if (fd >= 0) ::close(fd);
}

// Who is at the other end of an accepted socket.
Peer DescribePeer(int fd, bool unix_socket, const std::string& unix_path) {
  Peer peer;
  peer.unix_socket = unix_socket;
  if (unix_socket) {
    peer.address = "unix:" + unix_path;
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      peer.pid = cred.pid;
      peer.uid = static_cast<int>(cred.uid);
    }
    return peer;
  }
  sockaddr_storage storage{};
  socklen_t len = sizeof(storage);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&storage), &len) != 0) return peer;
  std::array<char, INET6_ADDRSTRLEN> text{};
  if (storage.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    ::inet_ntop(AF_INET, &in->sin_addr, text.data(), text.size());
    peer.address = std::string(text.data()) + ":" + std::to_string(ntohs(in->sin_port));
  } else if (storage.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text.data(), text.size());
    peer.address = "[" + std::string(text.data()) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return peer;
}

// Respond() may run on any thread at any time, even after Stop(); it posts to the io_context only
// while the gate is open, and Stop() closes the gate before the io_context can be destroyed.
// Thread safety: `open` under `mu`.
struct Gate {
  internal::Mutex mu;
  bool open GUARDED_BY(mu) = true;
};

class Connection;
class Listener;

}  // namespace

// Thread safety: the fields under `mu` are shared by the accepting strands, the connections'
// strands and the owning thread; the rest is set before the threads start and read only after.
struct HttpServer::Impl {
  Impl(HttpHandler& h, HttpServerOptions o)
      : handler(h), options(std::move(o)), io(options.threads) {}
  ~Impl();

  Result<bool> Listen(const std::string& text);
  // Takes an accepted descriptor: a new connection, or refused at once at max_connections.
  void Admit(int fd, const Listener& listener);
  void Forget(uint64_t connection_id) {
    internal::MutexLock lock(mu);
    connections.erase(connection_id);
  }
  void CloseListeners();

  HttpHandler& handler;
  const HttpServerOptions options;
  // Declared before everything that owns sockets or timers, so destroyed after them.
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::unique_ptr<Listener>> listeners;
  std::vector<std::string> endpoints;
  int port = 0;
  std::shared_ptr<Gate> gate = std::make_shared<Gate>();
  std::atomic<uint64_t> next_id{1};
  std::atomic<uint64_t> rejected{0};
  // Connections with a request received whose response is not yet written (WaitUntilAnswered).
  std::atomic<int> answering{0};
  mutable internal::Mutex mu;
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> connections GUARDED_BY(mu);
  bool accepting GUARDED_BY(mu) = true;
  internal::Mutex stop_mu;  // serializes StopAccepting and Stop
  std::vector<std::thread> threads GUARDED_BY(stop_mu);
  bool stopped GUARDED_BY(stop_mu) = false;
};

namespace {

// One listening socket. Thread safety: Accept's handlers run on its strand; Close() runs there or
// after the threads have stopped.
class Listener {
 public:
  Listener(HttpServer::Impl& server, Protocol protocol, int fd, std::string unix_path)
      : server_(server),
        protocol_(protocol),
        acceptor_(asio::make_strand(server.io)),
        retry_(acceptor_.get_executor()),
        unix_path_(std::move(unix_path)) {
    boost::system::error_code ec;
    acceptor_.assign(protocol_, fd, ec);
    if (ec) CloseQuietly(fd);
    struct stat st {};
    if (!unix_path_.empty() && ::stat(unix_path_.c_str(), &st) == 0) {
      dev_ = st.st_dev;
      ino_ = st.st_ino;
    }
  }
  ~Listener() { Close(); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  bool is_open() const { return acceptor_.is_open(); }
  bool unix_socket() const { return !unix_path_.empty(); }
  const std::string& unix_path() const { return unix_path_; }
  const Protocol& protocol() const { return protocol_; }
  Acceptor::executor_type executor() { return acceptor_.get_executor(); }

  // Waits for the socket to be readable, then accepts every pending connection.
  void Accept() {
    acceptor_.async_wait(Acceptor::wait_read, [this](boost::system::error_code ec) {
      if (ec || !acceptor_.is_open()) return;
      for (;;) {
        const int fd =
            ::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          // Out of descriptors or memory: the socket stays readable, so wait a little rather
          // than spin on it.
          retry_.expires_after(kAcceptRetry);
          retry_.async_wait([this](boost::system::error_code wait_ec) {
            if (!wait_ec) Accept();
          });
          return;
        }
        if (!unix_socket()) {
          // A response goes out in one write, but the 100 Continue and a response can follow
          // each other: no Nagle delay between them.
          const int one = 1;
          ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        server_.Admit(fd, *this);
      }
      Accept();
    });
  }

  // Stops listening and removes the socket file (only if it is still the one this bound).
  void Close() {
    boost::system::error_code ignored;
    CancelTimer(retry_);
    if (!acceptor_.is_open()) return;
    acceptor_.close(ignored);
    struct stat st {};
    if (!unix_path_.empty() && ::stat(unix_path_.c_str(), &st) == 0 && st.st_dev == dev_ &&
        st.st_ino == ino_) {
      ::unlink(unix_path_.c_str());
    }
  }

 private:
  HttpServer::Impl& server_;
  Protocol protocol_;
  Acceptor acceptor_;
  asio::steady_timer retry_;
  std::string unix_path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// One client connection. Thread safety: every member function runs on strand_, except Close()
// from Stop() after the threads have been joined; the respond function posts to strand_.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(HttpServer::Impl& server, Strand strand, uint64_t id, Peer peer)
      : server_(server),
        strand_(std::move(strand)),
        socket_(strand_),
        timer_(strand_),
        id_(id),
        peer_(std::move(peer)),
        buffer_(std::max<size_t>(2 * server.options.max_head_bytes, 8192)) {
    peer_.connection_id = id;
  }

  bool Assign(const Protocol& protocol, int fd) {
    boost::system::error_code ec;
    socket_.assign(protocol, fd, ec);
    return !ec;
  }
  const Strand& strand() const { return strand_; }

  // The first request: its deadline runs from accept (a client that connects and says nothing
  // is a slow client, not an idle keep-alive one).
  void Start() {
    Arm(server_.options.request_deadline);
    StartParse();
  }

  // The handler's answer to request number `seq` (anything else is late or repeated: dropped).
  void Respond(uint64_t seq, HttpResponse response) {
    if (state_ != State::kHandling || seq != seq_) return;
    Send(std::move(response), /*close=*/!keep_alive_ || peer_gone_);
  }

  // Idempotent. Fires the stop token of a request still waiting for its response, then tells the
  // handler (if it saw this connection) that it has gone.
  void Close() {
    if (state_ == State::kClosed) return;
    const bool pending = state_ == State::kHandling;
    state_ = State::kClosed;
    ++timer_generation_;
    CancelTimer(timer_);
    boost::system::error_code ignored;
    socket_.close(ignored);
    parser_.reset();
    server_.Forget(id_);
    EndAnswer();
    if (pending) stop_.request_stop();
    if (handled_any_) server_.handler.OnConnectionClosed(id_);
  }

 private:
  enum class State { kReading, kHandling, kWriting, kIdle, kDraining, kClosed };

  // From a request's arrival to its response written (or the connection closed).
  void BeginAnswer() {
    if (answering_) return;
    answering_ = true;
    server_.answering.fetch_add(1, std::memory_order_relaxed);
  }
  void EndAnswer() {
    if (!answering_) return;
    answering_ = false;
    server_.answering.fetch_sub(1, std::memory_order_relaxed);
  }

  void Arm(std::chrono::milliseconds timeout) {
    const uint64_t generation = ++timer_generation_;
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this(), generation](boost::system::error_code ec) {
      if (ec || generation != self->timer_generation_) return;
      self->OnDeadline();
    });
  }
  void Disarm() {
    ++timer_generation_;
    CancelTimer(timer_);
  }

  void OnDeadline() {
    if (state_ == State::kReading) {
      // Ends the pending read with operation_aborted; OnReadError then answers 408.
      timed_out_ = true;
      boost::system::error_code ignored;
      socket_.cancel(ignored);
      return;
    }
    if (state_ != State::kHandling) Close();  // idle, or a client not taking its response
  }

  void StartParse() {
    state_ = State::kReading;
    timed_out_ = false;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(
        std::min<size_t>(server_.options.max_head_bytes, std::numeric_limits<uint32_t>::max())));
    parser_->body_limit(server_.options.max_body_bytes);
    http::async_read_header(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](boost::system::error_code ec, size_t /*bytes*/) {
          if (self->state_ == State::kReading) self->OnHeader(ec);
        });
  }

  void OnHeader(boost::system::error_code ec) {
    if (ec) return OnReadError(ec);
    if (parser_->is_done()) return OnRequest();
    const beast::string_view expect = parser_->get()[http::field::expect];
    if (!beast::iequals(expect, "100-continue")) return ReadBody();
    // curl and others wait (a second) for this before sending a body over 1 KiB.
    asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                      [self = shared_from_this()](boost::system::error_code write_ec, size_t) {
                        if (self->state_ != State::kReading) return;
                        if (write_ec) return self->OnReadError(write_ec);
                        self->ReadBody();
                      });
  }

  void ReadBody() {
    http::async_read(socket_, buffer_, *parser_,
                     [self = shared_from_this()](boost::system::error_code ec, size_t /*bytes*/) {
                       if (self->state_ != State::kReading) return;
                       if (ec) return self->OnReadError(ec);
                       self->OnRequest();
                     });
  }

  void OnReadError(boost::system::error_code ec) {
    const auto& options = server_.options;
    if (timed_out_) {
      return SendError(ErrorResponse(408, "request_timeout",
                                     "the request was not received within " +
                                         std::to_string(options.request_deadline.count()) + " ms"));
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      return SendError(ErrorResponse(
          431, "header_too_large",
          "the request head exceeds " + std::to_string(options.max_head_bytes) + " bytes"));
    }
    if (ec == http::error::body_limit) {
      return SendError(ErrorResponse(
          413, "body_too_large",
          "the request body exceeds " + std::to_string(options.max_body_bytes) + " bytes"));
    }
    // Any other parser error is a malformed request. The client closing (end_of_stream,
    // partial_message) or a socket error ends the connection without an answer.
    const boost::system::error_category& parser_category =
        http::make_error_code(http::error::bad_method).category();
    if (ec.category() == parser_category && ec != http::error::end_of_stream &&
        ec != http::error::partial_message) {
      return SendError(
          ErrorResponse(400, "invalid_request", "malformed HTTP request: " + ec.message(), "http"));
    }
    Close();
  }

  // Only GET (and HEAD) of the health probes go without the token.
  bool Authorized(const BeastRequest& request) const {
    const std::string& token = server_.options.bearer_token;
    if (token.empty()) return true;
    const std::string_view target = View(request.target());
    const std::string_view path = target.substr(0, target.find('?'));
    const bool probe = path == "/healthz" || path == "/readyz";
    if (probe && (request.method() == http::verb::get || request.method() == http::verb::head)) {
      return true;
    }
    const std::string_view header = View(request[http::field::authorization]);
    constexpr std::string_view kScheme = "Bearer ";
    if (header.size() < kScheme.size() ||
        !beast::iequals(View(header.substr(0, kScheme.size())), View(kScheme))) {
      return false;
    }
    return ConstantTimeEquals(header.substr(kScheme.size()), token);
  }

  void OnRequest() {
    BeastRequest& r = parser_->get();
    keep_alive_ = r.keep_alive();
    version_ = r.version();
    head_ = r.method() == http::verb::head;
    const bool authorized = Authorized(r);
    HttpRequest request;
    request.method = std::string(View(r.method_string()));
    request.target = std::string(View(r.target()));
    request.body = std::move(r.body());
    request.content_type = std::string(View(r[http::field::content_type]));
    request.accept = std::string(View(r[http::field::accept]));
    request.peer = peer_;
    parser_.reset();
    Disarm();  // no deadline while the handler has it
    state_ = State::kHandling;
    BeginAnswer();
    const uint64_t seq = ++seq_;
    if (!authorized) {
      HttpResponse response = ErrorResponse(
          401, "unauthorized", "this endpoint needs \"Authorization: Bearer <token>\"");
      response.headers.emplace_back("WWW-Authenticate", "Bearer");
      return Respond(seq, std::move(response));
    }
    stop_ = std::stop_source();
    handled_any_ = true;
    Watch();
    try {
      server_.handler.Handle(std::move(request), stop_.get_token(), MakeRespond(seq));
    } catch (const std::exception& e) {
      Respond(seq, ErrorResponse(500, "internal", std::string("handler failed: ") + e.what()));
    } catch (...) {
      Respond(seq, ErrorResponse(500, "internal", "handler failed"));
    }
  }

  laneguard::server::Respond MakeRespond(uint64_t seq) {
    return [gate = server_.gate, weak = weak_from_this(), seq](HttpResponse response) {
      internal::MutexLock lock(gate->mu);
      if (!gate->open) return;  // stopped: the io_context may be gone
      std::shared_ptr<Connection> c = weak.lock();
      if (c == nullptr) return;  // closed and forgotten
      const Strand strand = c->strand();
      asio::post(strand, [c = std::move(c), seq, r = std::move(response)]() mutable {
        c->Respond(seq, std::move(r));
      });
    };
  }

  // Keeps one small read pending: it notices a client that closes or resets while its request
  // is pending, and keeps pipelined bytes for the next parse. Nothing is read past the buffer's
  // bound (the client then waits, as TCP makes it).
  void Watch() {
    if (watching_ || state_ == State::kClosed) return;
    const size_t room = buffer_.max_size() - buffer_.size();
    if (room == 0) return;
    if (buffer_.size() == 0) buffer_.shrink_to_fit();  // a parked connection holds no buffer
    watching_ = true;
    socket_.async_read_some(
        buffer_.prepare(std::min(room, kWatchBytes)),
        [self = shared_from_this()](boost::system::error_code ec, size_t bytes) {
          self->OnWatch(ec, bytes);
        });
  }

  void OnWatch(boost::system::error_code ec, size_t bytes) {
    watching_ = false;
    if (state_ == State::kClosed) return;
    buffer_.commit(bytes);
    switch (state_) {
      case State::kHandling:
      case State::kWriting:
        if (!ec) return Watch();
        if (ec == asio::error::operation_aborted) return;
        peer_gone_ = true;
        if (state_ == State::kHandling) stop_.request_stop();
        // A reset (or any error but an orderly close) leaves nothing to deliver to. After an
        // orderly close the client may only have shut its sending side: it gets the response.
        if (ec != asio::error::eof) Close();
        return;
      case State::kIdle:
        if (ec && !(ec == asio::error::operation_aborted && parse_after_watch_)) return Close();
        parse_after_watch_ = false;
        Arm(server_.options.request_deadline);  // the next request's first byte is here
        return StartParse();
      case State::kDraining:
        buffer_.consume(buffer_.size());
        if (ec) return Close();
        return Watch();
      default:
        return;
    }
  }

  void SendError(HttpResponse response) {
    state_ = State::kHandling;
    BeginAnswer();
    ++seq_;
    head_ = false;
    version_ = 11;
    Send(std::move(response), /*close=*/true);
  }

  void Send(HttpResponse r, bool close) {
    state_ = State::kWriting;
    close_after_write_ = close;
    response_ = {};
    response_.version(version_);
    response_.result(r.status >= 100 && r.status <= 999 ? static_cast<unsigned>(r.status) : 500U);
    response_.set(http::field::content_type, View(std::string_view(r.content_type)));
    for (const auto& [name, value] : r.headers) {
      // A header that would split the response is the handler's bug; it is left out.
      if ((name + value).find_first_of("\r\n") != std::string::npos || name.empty()) continue;
      response_.insert(View(std::string_view(name)), View(std::string_view(value)));
    }
    response_.content_length(r.body.size());  // HEAD: the length, not the bytes
    if (!head_) response_.body() = std::move(r.body);
    response_.keep_alive(!close);
    Arm(server_.options.write_deadline);
    http::async_write(socket_, response_,
                      [self = shared_from_this()](boost::system::error_code ec, size_t) {
                        if (self->state_ == State::kWriting) self->OnWritten(ec);
                      });
  }

  void OnWritten(boost::system::error_code ec) {
    response_ = {};
    EndAnswer();
    // Once the client has closed its side there is nothing more to read: a read after the end
    // of the stream may never complete (Asio's edge-triggered epoll has reported it already).
    if (ec || peer_gone_) return Close();
    if (close_after_write_) {
      boost::system::error_code ignored;
      socket_.shutdown(Socket::shutdown_send, ignored);
      state_ = State::kDraining;
      Arm(std::min<std::chrono::milliseconds>(kMaxLinger, server_.options.write_deadline));
      buffer_.consume(buffer_.size());
      return Watch();
    }
    state_ = State::kIdle;
    if (buffer_.size() > 0) {  // a pipelined request is waiting already
      if (watching_) {
        // The buffer is the pending read's until it completes: cancel it, then parse.
        parse_after_watch_ = true;
        boost::system::error_code ignored;
        socket_.cancel(ignored);
        return;
      }
      Arm(server_.options.request_deadline);
      return StartParse();
    }
    Arm(server_.options.idle_deadline);
    Watch();
  }

  HttpServer::Impl& server_;
  Strand strand_;
  Socket socket_;
  asio::steady_timer timer_;
  const uint64_t id_;
  Peer peer_;
  State state_ = State::kReading;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  BeastResponse response_;
  std::stop_source stop_{std::nostopstate};
  uint64_t seq_ = 0;
  uint64_t timer_generation_ = 0;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool head_ = false;
  bool timed_out_ = false;
  bool watching_ = false;
  bool parse_after_watch_ = false;
  bool peer_gone_ = false;
  bool close_after_write_ = false;
  bool handled_any_ = false;
  bool answering_ = false;  // counted in server_.answering
};

}  // namespace

HttpServer::Impl::~Impl() {
  // Normally Stop() did this; after a failed Start() the listeners may still be open.
  for (auto& listener : listeners) listener->Close();
}

Result<bool> HttpServer::Impl::Listen(const std::string& text) {
  constexpr std::string_view kUnix = "unix:";
  if (text.rfind(kUnix, 0) == 0) {
    const std::string path = text.substr(kUnix.size());
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(address.sun_path)) {
      return ListenError(ErrorCode::kInvalidArgument, text,
                         "a Unix socket path must have 1 to " +
                             std::to_string(sizeof(address.sun_path) - 1) + " bytes");
    }
    std::memcpy(address.sun_path, path.data(), path.size());
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return ListenError(ErrorCode::kAlreadyExists, text, "exists and is not a socket");
      }
      // A socket file nobody answers on is left over from a server that died: replace it. One
      // that answers belongs to a live server.
      const Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (probe.get() >= 0 && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address),
                                        sizeof(address)) == 0) {
        return ListenError(ErrorCode::kUnavailable, text, "another server is listening there");
      }
      ::unlink(path.c_str());
    }
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd.get() < 0 ||
        ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0 ||
        ::listen(fd.get(), SOMAXCONN) != 0) {
      const int error = errno;
      return ListenError(ErrorCodeForErrno(error), text, SystemMessage(error));
    }
    listeners.push_back(
        std::make_unique<Listener>(*this, Protocol(AF_UNIX, 0), fd.release(), path));
    endpoints.push_back(text);
    return true;
  }
  Result<MetricsServerOptions> parsed = ParseListenAddress(text, "listen");
  if (!parsed.ok()) return parsed.error();
  const std::string host = parsed->host == "localhost" ? "127.0.0.1" : parsed->host;
  boost::system::error_code ec;
  const asio::ip::address ip = asio::ip::make_address(host, ec);
  if (ec) return ListenError(ErrorCode::kInvalidArgument, text, "not an IP address");
  const asio::ip::tcp::endpoint endpoint(ip, static_cast<uint16_t>(parsed->port));
  const int family = endpoint.protocol().family();
  // Close-on-exec: `laneguard serve` may start programs, which must not inherit its sockets.
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  const int one = 1;
  // SO_REUSEADDR alone allows a quick restart; SO_REUSEPORT would let a second server share it.
  if (fd.get() < 0 || ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      ::bind(fd.get(), endpoint.data(), static_cast<socklen_t>(endpoint.size())) != 0 ||
      ::listen(fd.get(), SOMAXCONN) != 0) {
    const int error = errno;
    return ListenError(ErrorCodeForErrno(error), text, "cannot listen: " + SystemMessage(error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  const int bound_port =
      ntohs(family == AF_INET ? reinterpret_cast<const sockaddr_in*>(&bound)->sin_port
                              : reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port);
  if (port == 0) port = bound_port;
  endpoints.push_back((family == AF_INET6 ? "[" + host + "]" : host) + ":" +
                      std::to_string(bound_port));
  listeners.push_back(
      std::make_unique<Listener>(*this, Protocol(family, IPPROTO_TCP), fd.release(), ""));
  return true;
}

void HttpServer::Impl::Admit(int fd, const Listener& listener) {
  const uint64_t id = next_id.fetch_add(1, std::memory_order_relaxed);
  auto connection =
      std::make_shared<Connection>(*this, asio::make_strand(io), id,
                                   DescribePeer(fd, listener.unix_socket(), listener.unix_path()));
  if (!connection->Assign(listener.protocol(), fd)) {
    CloseQuietly(fd);
    return;
  }
  {
    internal::MutexLock lock(mu);
    if (!accepting) return;  // `connection` closes its socket as it goes
    if (connections.size() >= options.max_connections) {
      rejected.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    connections.emplace(id, connection);
  }
  const Strand strand = connection->strand();
  asio::post(strand, [c = std::move(connection)] { c->Start(); });
}

void HttpServer::Impl::CloseListeners() {
  for (auto& listener : listeners) listener->Close();
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Stop(); }

Result<std::unique_ptr<HttpServer>> HttpServer::Start(HttpHandler& handler,
                                                      HttpServerOptions options) {
  if (options.listen.empty()) return OptionError("listen", "[]", "give at least one address");
  if (options.threads < 1 || options.threads > 256) {
    return OptionError("threads", std::to_string(options.threads), "must be in [1, 256]");
  }
  if (options.max_head_bytes < 256) {
    return OptionError("max_head_bytes", std::to_string(options.max_head_bytes),
                       "must be at least 256");
  }
  if (options.max_connections < 1) {
    return OptionError("max_connections", "0", "must be at least 1");
  }
  for (const auto& [key, value] : {std::pair{"request_deadline", options.request_deadline},
                                   std::pair{"idle_deadline", options.idle_deadline},
                                   std::pair{"write_deadline", options.write_deadline}}) {
    if (value.count() <= 0) {
      return OptionError(key, std::to_string(value.count()) + " ms", "must be positive");
    }
  }
  auto impl = std::make_unique<Impl>(handler, std::move(options));
  for (const std::string& text : impl->options.listen) {
    Result<bool> listening = impl->Listen(text);
    if (!listening.ok()) return listening.error();
  }
  Impl* raw = impl.get();
  raw->work.emplace(raw->io.get_executor());
  for (auto& listener : raw->listeners) {
    asio::post(listener->executor(), [l = listener.get()] { l->Accept(); });
  }
  {
    internal::MutexLock lock(raw->stop_mu);
    for (int i = 0; i < raw->options.threads; ++i) {
      raw->threads.emplace_back([raw] { raw->io.run(); });
    }
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

std::vector<std::string> HttpServer::endpoints() const { return impl_->endpoints; }
int HttpServer::port() const { return impl_->port; }

size_t HttpServer::open_connections() const {
  internal::MutexLock lock(impl_->mu);
  return impl_->connections.size();
}
uint64_t HttpServer::rejected_connections() const {
  return impl_->rejected.load(std::memory_order_relaxed);
}

void HttpServer::StopAccepting() {
  internal::MutexLock guard(impl_->stop_mu);
  {
    internal::MutexLock lock(impl_->mu);
    impl_->accepting = false;
  }
  if (impl_->stopped) return;  // the listeners are closed already
  // Each acceptor belongs to its strand: close it there, and return once it is closed.
  std::vector<std::future<void>> done;
  for (auto& listener : impl_->listeners) {
    auto task = std::make_shared<std::packaged_task<void()>>([l = listener.get()] { l->Close(); });
    done.push_back(task->get_future());
    asio::post(listener->executor(), [task] { (*task)(); });
  }
  for (auto& f : done) f.wait();
}

bool HttpServer::WaitUntilAnswered(std::chrono::milliseconds timeout) {
  // A shutdown path, once: polling keeps the connections' hot path free of a lock.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (impl_->answering.load(std::memory_order_relaxed) > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

void HttpServer::Stop() {
  internal::MutexLock guard(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  {
    internal::MutexLock lock(impl_->mu);
    impl_->accepting = false;
  }
  {
    // From here a Respond does nothing, so none can touch the io_context once it is gone.
    internal::MutexLock lock(impl_->gate->mu);
    impl_->gate->open = false;
  }
  impl_->work.reset();
  impl_->io.stop();
  for (std::thread& t : impl_->threads) t.join();
  impl_->threads.clear();
  // No handler runs any more: what the strands guarded may be touched from this thread.
  impl_->CloseListeners();
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> open;
  {
    internal::MutexLock lock(impl_->mu);
    open.swap(impl_->connections);
  }
  // Close() fires the stop tokens of pending requests and calls OnConnectionClosed.
  for (auto& [id, c] : open) c->Close();
}

}  // namespace laneguard::server
