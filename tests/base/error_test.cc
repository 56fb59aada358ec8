#include "laneguard/error.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <set>
#include <string>
#include <utility>

#include "laneguard/result.h"

namespace laneguard {
namespace {

using testing::HasSubstr;

TEST(ErrorCodeTest, EveryCodeHasItsOwnSnakeCaseName) {
  std::set<std::string_view> names;
  for (int i = 0; i < kErrorCodeCount; ++i) {
    const std::string_view name = ToString(static_cast<ErrorCode>(i));
    EXPECT_NE(name, "unknown") << i;
    EXPECT_EQ(name.find_first_not_of("abcdefghijklmnopqrstuvwxyz_"), std::string_view::npos)
        << name;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(kErrorCodeCount));
  EXPECT_EQ(ToString(ErrorCode::kInvalidArgument), "invalid_argument");
  EXPECT_EQ(ToString(ErrorCode::kNotFound), "not_found");
  EXPECT_EQ(ToString(ErrorCode::kFailedPrecondition), "failed_precondition");
  EXPECT_EQ(ToString(ErrorCode::kResourceExhausted), "resource_exhausted");
  EXPECT_EQ(ToString(ErrorCode::kUnavailable), "unavailable");
  EXPECT_EQ(ToString(ErrorCode::kInternal), "internal");
}

TEST(ErrorCodeTest, ErrnoMapsToTheCodeAProgramActsOn) {
  EXPECT_EQ(ErrorCodeForErrno(ENOENT), ErrorCode::kNotFound);
  EXPECT_EQ(ErrorCodeForErrno(ENOTDIR), ErrorCode::kNotFound);
  EXPECT_EQ(ErrorCodeForErrno(EACCES), ErrorCode::kPermissionDenied);
  EXPECT_EQ(ErrorCodeForErrno(EEXIST), ErrorCode::kAlreadyExists);
  EXPECT_EQ(ErrorCodeForErrno(EISDIR), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(ErrorCodeForErrno(EADDRINUSE), ErrorCode::kUnavailable);
  EXPECT_EQ(ErrorCodeForErrno(EIO), ErrorCode::kInternal);
}

TEST(ErrorTest, CarriesCodeFieldValueAndMessage) {
  const Error e(ErrorCode::kInvalidArgument, "laneConcurrencyLimits.file_write", "0",
                "config key 'laneConcurrencyLimits.file_write' = 0: lane limit must be within "
                "[1, 1000000]");
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.field(), "laneConcurrencyLimits.file_write");
  EXPECT_EQ(e.value(), "0");
  EXPECT_THAT(e.message(), HasSubstr("= 0: lane limit"));
  EXPECT_EQ(e.rejection(), nullptr);
}

TEST(ErrorTest, WithContextPrefixesTheMessageOnly) {
  const Error e(ErrorCode::kNotFound, "", "", "c.json: cannot read: No such file or directory");
  const Error flagged = e.WithContext("--config");
  EXPECT_EQ(flagged.code(), ErrorCode::kNotFound);
  EXPECT_EQ(flagged.field(), "");
  EXPECT_EQ(flagged.message(), "--config: c.json: cannot read: No such file or directory");
}

TEST(ErrorTest, ARejectionIsAnErrorWithItsPayload) {
  const Error e = Rejection(RejectReason::kLaneLimit, "file_write", 4, 4);
  ASSERT_NE(e.rejection(), nullptr);
  EXPECT_EQ(e.rejection()->reason, RejectReason::kLaneLimit);
  EXPECT_EQ(e.rejection()->lane, "file_write");
  EXPECT_EQ(e.code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(e.field(), "lane");
  EXPECT_EQ(e.value(), "file_write");
  EXPECT_EQ(e.message(), "lane_limit: lane 'file_write' is at its limit (4/4 active)");
  EXPECT_EQ(e.message(), e.rejection()->message());
}

TEST(ErrorTest, ARejectionBuiltInPlaceInsideAResult) {
  const Result<int> r(std::in_place_index<1>, std::in_place_type<Rejection>,
                      RejectReason::kInvalidTimeout, "critic", 0, 0, 0.0, 0.0, int64_t{-5});
  ASSERT_FALSE(r.ok());
  ASSERT_NE(r.error().rejection(), nullptr);
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.error().field(), "timeoutMs");
  EXPECT_EQ(r.error().value(), "-5");
  EXPECT_THAT(r.error().message(), HasSubstr("got -5 (lane 'critic')"));
}

TEST(ErrorTest, EveryRejectReasonHasACodeAndAName) {
  const std::pair<RejectReason, ErrorCode> cases[] = {
      {RejectReason::kLaneLimit, ErrorCode::kResourceExhausted},
      {RejectReason::kGlobalLimit, ErrorCode::kResourceExhausted},
      {RejectReason::kMemoryLimit, ErrorCode::kResourceExhausted},
      {RejectReason::kUnknownLane, ErrorCode::kNotFound},
      {RejectReason::kShuttingDown, ErrorCode::kUnavailable},
      {RejectReason::kInvalidTimeout, ErrorCode::kInvalidArgument},
      {RejectReason::kQueueFull, ErrorCode::kResourceExhausted},
      {RejectReason::kWaitTimeout, ErrorCode::kDeadlineExceeded},
      {RejectReason::kCancelled, ErrorCode::kCancelled},
      {RejectReason::kTaskQuota, ErrorCode::kResourceExhausted},
      {RejectReason::kInvalidWait, ErrorCode::kInvalidArgument},
  };
  static_assert(std::size(cases) == kRejectReasonCount);
  for (const auto& [reason, code] : cases) {
    const Error e = Rejection(reason, "tool_call");
    EXPECT_EQ(e.code(), code) << ToString(reason);
    EXPECT_THAT(e.message(), HasSubstr(std::string(ToString(reason)) + ": ")) << ToString(reason);
    EXPECT_THAT(e.message(), HasSubstr("tool_call")) << ToString(reason);
  }
  EXPECT_EQ(ToString(RejectReason::kUnknownLane), "unknown_lane");
  EXPECT_EQ(ToString(RejectReason::kQueueFull), "queue_full");
  EXPECT_EQ(ToString(RejectReason::kWaitTimeout), "wait_timeout");
  EXPECT_EQ(ToString(RejectReason::kTaskQuota), "task_quota");
}

TEST(ErrorTest, AnInvalidWaitNamesWaitMsAndTheValue) {
  const Error e = Rejection(RejectReason::kInvalidWait, "critic", 0, 0, 0, 0, -3);
  EXPECT_EQ(e.field(), "waitMs");
  EXPECT_EQ(e.value(), "-3");
  EXPECT_THAT(e.message(), HasSubstr("got -3 (lane 'critic')"));
}

TEST(ErrorTest, ARejectionWithContextBecomesAPlainError) {
  const Error e = Error(Rejection(RejectReason::kShuttingDown, "critic")).WithContext("job a");
  EXPECT_EQ(e.rejection(), nullptr);
  EXPECT_EQ(e.code(), ErrorCode::kUnavailable);
  EXPECT_EQ(e.field(), "lane");
  EXPECT_EQ(e.value(), "critic");
  EXPECT_THAT(e.message(), HasSubstr("job a: shutting_down: "));
}

}  // namespace
}  // namespace laneguard
