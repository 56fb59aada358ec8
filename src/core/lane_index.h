// Lane name -> lane number, looked up on every admission.
//
// A name is compared as its length and its first and last 8 bytes (zero-padded when shorter),
// which are the whole name up to 16 bytes; longer names also get a memcmp. The table is a
// collision-free hash of those three numbers, found at construction by trying multipliers, so a
// lookup is one hash, one table read and one compare, where a scan over the spec's five lanes
// took five compares and a mispredicted exit. Each table entry holds the lane's key itself, not
// its number: every admission waits for this lookup, and a second dependent load (number, then
// key) was a third of its latency. With more than 32 lanes (a 1,024-entry, 32 KiB table), or if
// no multiplier separates the names (unlikely, not impossible), the index scans.
//
// Thread safety: built once, then only read; Find() is safe from any thread.
#ifndef LANEGUARD_SRC_CORE_LANE_INDEX_H_
#define LANEGUARD_SRC_CORE_LANE_INDEX_H_

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace laneguard::internal {

class LaneIndex {
 public:
  explicit LaneIndex(const std::vector<std::string>& names) : names_(names) {
    keys_.reserve(names.size());
    for (const std::string& name : names) keys_.push_back(KeyOf(name));
    // n^2 slots for n names: a random multiplier is then collision-free with probability about
    // e^-0.5, so a few dozen tries all but always find one.
    const size_t n = names.size();
    const int bits = static_cast<int>(std::bit_width(std::max<size_t>(8, n * n) - 1));
    shift_ = 64 - bits;
    uint64_t multiplier = 0x9e3779b97f4a7c15ULL;  // 2^64 / golden ratio, then a simple LCG
    for (int attempt = 0; attempt < 64 && !perfect_ && n <= kMaxHashed; ++attempt) {
      multiplier_ = multiplier | 1;
      table_.assign(size_t{1} << bits, Entry{});
      perfect_ = true;
      for (size_t i = 0; i < keys_.size() && perfect_; ++i) {
        Entry& slot = table_[Slot(keys_[i].size, keys_[i].head, keys_[i].tail)];
        if (slot.index >= 0) perfect_ = false;
        slot = {keys_[i], static_cast<int>(i)};
      }
      multiplier = multiplier * 6364136223846793005ULL + 1442695040888963407ULL;
    }
    if (!perfect_) table_.clear();
  }

  // The lane's number (its position in `names`), or -1.
  [[gnu::always_inline]] int Find(std::string_view name) const {
    // Three scalars, not a Key: g++ packed a Key's two words into one vector register, stored it
    // and read it back as two words, which the CPU cannot forward (a stall on every admission).
    const uint64_t size = name.size();
    const uint64_t head = Head(name);
    const uint64_t tail = Tail(name);
    if (!perfect_) return Scan(size, head, tail, name);
    const Entry& e = table_[Slot(size, head, tail)];
    // An empty entry's size matches no name, so its index is never used.
    return Matches(e.key, e.index, size, head, tail, name) ? e.index : -1;
  }

  bool perfect() const { return perfect_; }

 private:
  static constexpr size_t kMaxHashed = 32;

  struct Key {
    uint64_t size, head, tail;
  };
  struct Entry {
    Key key{~uint64_t{0}, 0, 0};  // no string_view is that long
    int index = -1;
  };

  static uint64_t Load8(const char* p) {
    uint64_t v = 0;
    std::memcpy(&v, p, 8);
    return v;
  }
  static uint64_t Head(std::string_view name) {
    if (name.size() >= 8) return Load8(name.data());
    uint64_t head = 0;
    for (size_t i = 0; i < name.size(); ++i)
      head |= static_cast<uint64_t>(static_cast<unsigned char>(name[i])) << (8 * i);
    return head;
  }
  static uint64_t Tail(std::string_view name) {
    return name.size() >= 8 ? Load8(name.end() - 8) : 0;
  }
  static Key KeyOf(std::string_view name) { return {name.size(), Head(name), Tail(name)}; }

  // Out of line: its loop needs registers the table lookup above does not.
  [[gnu::noinline]] int Scan(uint64_t size, uint64_t head, uint64_t tail,
                             std::string_view name) const {
    for (size_t i = 0; i < keys_.size(); ++i)
      if (Matches(keys_[i], i, size, head, tail, name)) return static_cast<int>(i);
    return -1;
  }

  size_t Slot(uint64_t size, uint64_t head, uint64_t tail) const {
    return static_cast<size_t>(((head ^ std::rotl(tail, 29) ^ size) * multiplier_) >> shift_);
  }
  // `key` is lane `i`'s; names past 16 bytes are also compared in full.
  bool Matches(const Key& key, size_t i, uint64_t size, uint64_t head, uint64_t tail,
               std::string_view name) const {
    return key.size == size && key.head == head && key.tail == tail &&
           (size <= 16 || std::memcmp(names_[i].data(), name.data(), size) == 0);
  }

  std::vector<std::string> names_;
  std::vector<Key> keys_;
  std::vector<Entry> table_;
  uint64_t multiplier_ = 1;
  int shift_ = 61;
  bool perfect_ = false;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_LANE_INDEX_H_
