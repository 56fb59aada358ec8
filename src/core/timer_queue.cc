#include "core/timer_queue.h"

#include <cassert>

namespace laneguard {

bool TimerQueue::Less(uint32_t a, uint32_t b) const {
  const Node& x = nodes_[a];
  const Node& y = nodes_[b];
  return x.deadline < y.deadline || (x.deadline == y.deadline && x.seq < y.seq);
}

void TimerQueue::Place(uint32_t heap_pos, uint32_t node) {
  heap_[heap_pos] = node;
  nodes_[node].heap_index = heap_pos;
}

void TimerQueue::SiftUp(uint32_t pos) {
  uint32_t node = heap_[pos];
  while (pos > 0) {
    uint32_t parent = (pos - 1) / 2;
    if (!Less(node, heap_[parent])) break;
    Place(pos, heap_[parent]);
    pos = parent;
  }
  Place(pos, node);
}

void TimerQueue::SiftDown(uint32_t pos) {
  const auto n = static_cast<uint32_t>(heap_.size());
  uint32_t node = heap_[pos];
  for (;;) {
    uint32_t child = 2 * pos + 1;
    if (child >= n) break;
    if (child + 1 < n && Less(heap_[child + 1], heap_[child])) ++child;
    if (!Less(heap_[child], node)) break;
    Place(pos, heap_[child]);
    pos = child;
  }
  Place(pos, node);
}

TimerQueue::Handle TimerQueue::Arm(int64_t deadline, uint64_t tag) {
  uint32_t idx;
  if (!free_.empty()) {
    idx = free_.back();
    free_.pop_back();
  } else {
    idx = static_cast<uint32_t>(nodes_.size());
    nodes_.push_back(Node{0, 0, 0, kNone, 0});
  }
  Node& node = nodes_[idx];
  node.deadline = deadline;
  node.seq = next_seq_++;
  node.tag = tag;
  heap_.push_back(idx);
  SiftUp(static_cast<uint32_t>(heap_.size() - 1));
  return Handle{idx, node.generation};
}

void TimerQueue::RemoveAt(uint32_t pos) {
  uint32_t idx = heap_[pos];
  uint32_t last = heap_.back();
  heap_.pop_back();
  Node& node = nodes_[idx];
  node.heap_index = kNone;
  ++node.generation;  // invalidates outstanding handles to this node
  free_.push_back(idx);
  if (last == idx) return;
  Place(pos, last);
  // The moved element may belong above or below its new position.
  if (pos > 0 && Less(last, heap_[(pos - 1) / 2])) {
    SiftUp(pos);
  } else {
    SiftDown(pos);
  }
}

bool TimerQueue::Cancel(Handle handle) {
  if (handle.node >= nodes_.size()) return false;
  const Node& node = nodes_[handle.node];
  if (node.generation != handle.generation || node.heap_index == kNone) return false;
  RemoveAt(node.heap_index);
  return true;
}

void TimerQueue::PopExpired(int64_t now, std::vector<Expired>* out) {
  while (!heap_.empty()) {
    const Node& top = nodes_[heap_[0]];
    if (top.deadline > now) break;
    out->push_back(Expired{top.tag, top.deadline});
    RemoveAt(0);
  }
}

int64_t TimerQueue::NextDeadline() const {
  return heap_.empty() ? std::numeric_limits<int64_t>::max() : nodes_[heap_[0]].deadline;
}

}  // namespace laneguard
