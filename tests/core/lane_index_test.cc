#include "core/lane_index.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace laneguard::internal {
namespace {

std::vector<std::string> SpecLanes() {
  return {"critic", "file_read", "file_write", "forecast_model", "tool_call"};
}

TEST(LaneIndex, FindsEveryLaneOfTheSpecThroughTheHashTable) {
  const LaneIndex index(SpecLanes());
  EXPECT_TRUE(index.perfect());
  const auto lanes = SpecLanes();
  for (size_t i = 0; i < lanes.size(); ++i) EXPECT_EQ(index.Find(lanes[i]), static_cast<int>(i));
}

// Names that share a length, a first or a last 8 bytes with a lane, or differ in one byte in the
// middle of a long name, are not that lane.
TEST(LaneIndex, RefusesNamesThatAreNearlyALane) {
  const std::vector<std::string> lanes = {"tool_call", "a-very-long-lane-name-of-forty-bytes-xyz",
                                          "ab", ""};
  const LaneIndex index(lanes);
  for (size_t i = 0; i < lanes.size(); ++i) EXPECT_EQ(index.Find(lanes[i]), static_cast<int>(i));
  for (const char* near : {"tool_calL", "Tool_call", "tool_cal", "tool_call_",
                           "a-very-long-lane-name-of-forty-bytes-xyZ",
                           "a-very-long-lane-name-OF-forty-bytes-xyz", "a", "ba", "critic"}) {
    EXPECT_EQ(index.Find(near), -1) << near;
  }
  EXPECT_EQ(index.Find(std::string_view("ab\0", 3)), -1);
}

// Many custom lanes: a table up to 32 lanes, a scan beyond, exact either way; with no lanes every
// name is unknown.
TEST(LaneIndex, ScalesToManyLanesAndToNone) {
  for (int count : {16, 32}) {
    std::vector<std::string> lanes;
    for (int i = 0; i < count; ++i) lanes.push_back("lane-" + std::to_string(i));
    const LaneIndex index(lanes);
    EXPECT_TRUE(index.perfect()) << count;
    for (size_t i = 0; i < lanes.size(); ++i) ASSERT_EQ(index.Find(lanes[i]), static_cast<int>(i));
    EXPECT_EQ(index.Find("lane-" + std::to_string(count)), -1);
  }
  std::vector<std::string> lanes;
  for (int i = 0; i < 300; ++i) lanes.push_back("custom_lane_" + std::to_string(i));
  const LaneIndex index(lanes);
  EXPECT_FALSE(index.perfect());
  EXPECT_FALSE(LaneIndex(std::vector<std::string>(lanes.begin(), lanes.begin() + 33)).perfect());
  for (size_t i = 0; i < lanes.size(); ++i) ASSERT_EQ(index.Find(lanes[i]), static_cast<int>(i));
  EXPECT_EQ(index.Find("custom_lane_300"), -1);
  EXPECT_EQ(index.Find("custom_lane_"), -1);

  const LaneIndex empty({});
  EXPECT_EQ(empty.Find("tool_call"), -1);
  EXPECT_EQ(empty.Find(""), -1);
}

}  // namespace
}  // namespace laneguard::internal
