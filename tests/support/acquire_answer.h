// What an AcquireAsync callback was given, and how many times it was called (single-threaded
// tests: the callback runs on the thread that decides the request). Declare answers before the
// manager, so a slot granted into one at the end of a test is released, not leaked.
#ifndef LANEGUARD_TESTS_SUPPORT_ACQUIRE_ANSWER_H_
#define LANEGUARD_TESTS_SUPPORT_ACQUIRE_ANSWER_H_

#include <optional>
#include <utility>

#include "laneguard/manager.h"

namespace laneguard::testing_support {

struct Answer {
  int calls = 0;
  std::optional<Result<Slot>> result;
  AcquireCallback Callback() {
    return [this](Result<Slot> r) {
      ++calls;
      result.emplace(std::move(r));
    };
  }
  bool granted() const { return result && result->ok(); }
  RejectReason reason() const { return result->error().rejection()->reason; }
};

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_ACQUIRE_ANSWER_H_
