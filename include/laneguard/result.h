// Result: what laneguard's API returns where it can fail. The core never throws: admission and
// configuration return one of these, carrying an Error (laneguard/error.h): a code, the field and
// value at fault and a human-readable message.
//
// Thread safety: plain values; distinct objects may be used from different threads freely, one
// object needs external synchronization like any std:: value type.
#ifndef LANEGUARD_RESULT_H_
#define LANEGUARD_RESULT_H_

#include <cassert>
#include <cstddef>
#include <string>
#include <utility>
#include <variant>

#include "laneguard/error.h"

namespace laneguard {

// Either a value or an error (an Error unless said otherwise). A small stand-in for C++23
// std::expected, which g++ 12 only offers in C++23 mode.
template <typename T, typename E = Error>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(E error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT: implicit by design
  // Constructs the value (index 0) or the error (index 1) in place, without a move.
  template <size_t I, typename... Args>
  explicit Result(std::in_place_index_t<I> index, Args&&... args)
      : v_(index, std::forward<Args>(args)...) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  // Precondition: ok().
  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

  // Precondition: !ok().
  const E& error() const& {
    assert(!ok());
    return std::get<1>(v_);
  }

 private:
  std::variant<T, E> v_;
};

}  // namespace laneguard

#endif  // LANEGUARD_RESULT_H_
