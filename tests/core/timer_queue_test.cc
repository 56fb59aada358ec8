#include "core/timer_queue.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <utility>
#include <vector>

namespace laneguard {
namespace {

constexpr int64_t kForever = std::numeric_limits<int64_t>::max();

std::vector<uint64_t> Tags(const std::vector<TimerQueue::Expired>& expired) {
  std::vector<uint64_t> tags;
  for (const auto& e : expired) tags.push_back(e.tag);
  return tags;
}

TEST(TimerQueue, StartsEmpty) {
  TimerQueue q;
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.NextDeadline(), kForever);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(kForever, &out);
  EXPECT_TRUE(out.empty());
}

TEST(TimerQueue, PopsInDeadlineOrder) {
  TimerQueue q;
  q.Arm(50, 5);
  q.Arm(10, 1);
  q.Arm(40, 4);
  q.Arm(20, 2);
  q.Arm(30, 3);
  EXPECT_EQ(q.size(), 5u);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(100, &out);
  EXPECT_EQ(Tags(out), (std::vector<uint64_t>{1, 2, 3, 4, 5}));
  ASSERT_EQ(out.size(), 5u);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i].deadline, int64_t(10 * (i + 1)));
  EXPECT_TRUE(q.empty());
}

TEST(TimerQueue, TiesPopInArmingOrder) {
  TimerQueue q;
  for (uint64_t tag = 0; tag < 20; ++tag) q.Arm(tag % 2 == 0 ? 7 : 3, tag);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(7, &out);
  std::vector<uint64_t> expected;
  for (uint64_t tag = 1; tag < 20; tag += 2) expected.push_back(tag);  // deadline 3, arming order
  for (uint64_t tag = 0; tag < 20; tag += 2) expected.push_back(tag);  // deadline 7, arming order
  EXPECT_EQ(Tags(out), expected);
}

TEST(TimerQueue, CancelReturnsTrueOnceThenFalse) {
  TimerQueue q;
  auto a = q.Arm(10, 1);
  auto b = q.Arm(20, 2);
  EXPECT_TRUE(a.valid());
  EXPECT_TRUE(q.Cancel(a));
  EXPECT_FALSE(q.Cancel(a));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.NextDeadline(), 20);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(100, &out);
  EXPECT_EQ(Tags(out), std::vector<uint64_t>{2});
  EXPECT_FALSE(q.Cancel(b));  // already fired
}

TEST(TimerQueue, CancelOfDefaultHandleIsNoOp) {
  TimerQueue q;
  q.Arm(10, 1);
  TimerQueue::Handle none;
  EXPECT_FALSE(none.valid());
  EXPECT_FALSE(q.Cancel(none));
  EXPECT_FALSE(q.Cancel(TimerQueue::Handle{12345, 0}));
  EXPECT_EQ(q.size(), 1u);
}

TEST(TimerQueue, CancellingFiredTimerIsNoOpAfterNodeReuse) {
  TimerQueue q;
  auto fired = q.Arm(10, 1);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(10, &out);
  ASSERT_EQ(Tags(out), std::vector<uint64_t>{1});
  // The freed node is reused by the next Arm, with a new generation.
  auto reused = q.Arm(20, 2);
  ASSERT_EQ(reused.node, fired.node);
  EXPECT_NE(reused.generation, fired.generation);
  EXPECT_FALSE(q.Cancel(fired));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.NextDeadline(), 20);
  EXPECT_TRUE(q.Cancel(reused));
  EXPECT_TRUE(q.empty());
}

TEST(TimerQueue, CancellingCancelledTimerIsNoOpAfterNodeReuse) {
  TimerQueue q;
  auto first = q.Arm(10, 1);
  ASSERT_TRUE(q.Cancel(first));
  auto second = q.Arm(30, 2);
  ASSERT_EQ(second.node, first.node);
  EXPECT_FALSE(q.Cancel(first));
  EXPECT_EQ(q.size(), 1u);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(30, &out);
  EXPECT_EQ(Tags(out), std::vector<uint64_t>{2});
}

TEST(TimerQueue, NextDeadlineTracksTheEarliestTimer) {
  TimerQueue q;
  auto a = q.Arm(30, 1);
  EXPECT_EQ(q.NextDeadline(), 30);
  auto b = q.Arm(10, 2);
  EXPECT_EQ(q.NextDeadline(), 10);
  q.Arm(20, 3);
  EXPECT_EQ(q.NextDeadline(), 10);
  EXPECT_TRUE(q.Cancel(b));
  EXPECT_EQ(q.NextDeadline(), 20);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(25, &out);
  EXPECT_EQ(q.NextDeadline(), 30);
  EXPECT_TRUE(q.Cancel(a));
  EXPECT_EQ(q.NextDeadline(), kForever);
}

TEST(TimerQueue, PopExpiredPopsOnlyDeadlinesAtOrBeforeNow) {
  TimerQueue q;
  q.Arm(-5, 0);  // deadlines are plain integers; negatives are fine
  q.Arm(10, 1);
  q.Arm(11, 2);
  q.Arm(12, 3);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(9, &out);
  EXPECT_EQ(Tags(out), std::vector<uint64_t>{0});
  out.clear();
  q.PopExpired(11, &out);  // inclusive
  EXPECT_EQ(Tags(out), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.NextDeadline(), 12);
}

TEST(TimerQueue, PopExpiredAppendsToOutput) {
  TimerQueue q;
  q.Arm(1, 10);
  std::vector<TimerQueue::Expired> out = {{99, 0}};
  q.PopExpired(1, &out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].tag, 99u);
  EXPECT_EQ(out[1].tag, 10u);
  EXPECT_EQ(out[1].deadline, 1);
}

TEST(TimerQueue, TenThousandRandomTimersPopSorted) {
  TimerQueue q;
  std::mt19937_64 rng(12345);
  std::uniform_int_distribution<int64_t> deadline(0, 4999);  // plenty of ties
  std::vector<std::pair<int64_t, uint64_t>> armed;
  for (uint64_t tag = 0; tag < 10000; ++tag) {
    int64_t d = deadline(rng);
    q.Arm(d, tag);
    armed.emplace_back(d, tag);
  }
  EXPECT_EQ(q.size(), 10000u);
  std::stable_sort(armed.begin(), armed.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<TimerQueue::Expired> out;
  // Pop in several steps so partial pops are exercised too.
  for (int64_t now = 0; now < 5000; now += 997) q.PopExpired(now, &out);
  q.PopExpired(kForever, &out);
  ASSERT_EQ(out.size(), armed.size());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(out[i].deadline, armed[i].first) << i;
    ASSERT_EQ(out[i].tag, armed[i].second) << i;
  }
  EXPECT_TRUE(q.empty());
}

// Random arm / cancel / stale cancel / pop interleavings against a std::multimap model. A multimap
// keeps equal keys in insertion order, which is exactly the queue's tie rule.
TEST(TimerQueue, RandomInterleavingsMatchMultimapModel) {
  TimerQueue q;
  std::mt19937 rng(20251022);
  using Model = std::multimap<int64_t, uint64_t>;
  Model model;
  struct Live {
    TimerQueue::Handle handle;
    Model::iterator it;
  };
  std::map<uint64_t, Live> live;         // tag -> handle and model entry
  std::vector<TimerQueue::Handle> dead;  // fired or cancelled handles
  int64_t now = 0;
  uint64_t next_tag = 0;
  size_t fired = 0, cancelled = 0, stale = 0;

  for (int op = 0; op < 5000; ++op) {
    const int choice = std::uniform_int_distribution<int>(0, 99)(rng);
    if (choice < 50) {
      int64_t d = now + std::uniform_int_distribution<int64_t>(0, 50)(rng);
      uint64_t tag = next_tag++;
      auto h = q.Arm(d, tag);
      live[tag] = Live{h, model.emplace(d, tag)};
    } else if (choice < 75) {
      if (live.empty()) continue;
      auto it = live.begin();
      std::advance(it, std::uniform_int_distribution<size_t>(0, live.size() - 1)(rng));
      ASSERT_TRUE(q.Cancel(it->second.handle)) << "op " << op;
      model.erase(it->second.it);
      dead.push_back(it->second.handle);
      live.erase(it);
      ++cancelled;
    } else if (choice < 85) {
      if (dead.empty()) continue;
      auto h = dead[std::uniform_int_distribution<size_t>(0, dead.size() - 1)(rng)];
      ASSERT_FALSE(q.Cancel(h)) << "op " << op;
      ++stale;
    } else {
      now += std::uniform_int_distribution<int64_t>(0, 20)(rng);
      std::vector<TimerQueue::Expired> out;
      q.PopExpired(now, &out);
      std::vector<TimerQueue::Expired> expected;
      while (!model.empty() && model.begin()->first <= now) {
        expected.push_back({model.begin()->second, model.begin()->first});
        auto l = live.find(model.begin()->second);
        dead.push_back(l->second.handle);
        live.erase(l);
        model.erase(model.begin());
      }
      ASSERT_EQ(out.size(), expected.size()) << "op " << op;
      for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_EQ(out[i].tag, expected[i].tag) << "op " << op << " i " << i;
        ASSERT_EQ(out[i].deadline, expected[i].deadline) << "op " << op << " i " << i;
      }
      fired += out.size();
    }
    ASSERT_EQ(q.size(), model.size()) << "op " << op;
    ASSERT_EQ(q.NextDeadline(), model.empty() ? kForever : model.begin()->first) << "op " << op;
  }
  // The run really exercised every path.
  EXPECT_GT(fired, 100u);
  EXPECT_GT(cancelled, 100u);
  EXPECT_GT(stale, 100u);
  std::vector<TimerQueue::Expired> out;
  q.PopExpired(kForever, &out);
  ASSERT_EQ(out.size(), model.size());
  auto m = model.begin();
  for (size_t i = 0; i < out.size(); ++i, ++m) EXPECT_EQ(out[i].tag, m->second);
}

}  // namespace
}  // namespace laneguard
