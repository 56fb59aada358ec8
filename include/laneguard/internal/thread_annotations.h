// Clang's thread-safety attributes, under the names leveldb and abseil use. `make thread-safety`
// builds the library with clang's -Wthread-safety (CI fails on a finding): a field marked
// GUARDED_BY(mu_) read without mu_ held, or a function marked REQUIRES(mu_) called without it, is a
// compile error there. Other compilers see nothing.
//
// Not for users: a public header includes this only for its own private members.
#ifndef LANEGUARD_INTERNAL_THREAD_ANNOTATIONS_H_
#define LANEGUARD_INTERNAL_THREAD_ANNOTATIONS_H_

#if defined(__clang__)
#define LANEGUARD_THREAD_ANNOTATION_(x) __attribute__((x))
#else
#define LANEGUARD_THREAD_ANNOTATION_(x)
#endif

#define CAPABILITY(x) LANEGUARD_THREAD_ANNOTATION_(capability(x))
#define SCOPED_CAPABILITY LANEGUARD_THREAD_ANNOTATION_(scoped_lockable)
#define GUARDED_BY(x) LANEGUARD_THREAD_ANNOTATION_(guarded_by(x))
#define PT_GUARDED_BY(x) LANEGUARD_THREAD_ANNOTATION_(pt_guarded_by(x))
#define ACQUIRED_AFTER(...) LANEGUARD_THREAD_ANNOTATION_(acquired_after(__VA_ARGS__))
#define ACQUIRED_BEFORE(...) LANEGUARD_THREAD_ANNOTATION_(acquired_before(__VA_ARGS__))
#define REQUIRES(...) LANEGUARD_THREAD_ANNOTATION_(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) LANEGUARD_THREAD_ANNOTATION_(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) LANEGUARD_THREAD_ANNOTATION_(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) LANEGUARD_THREAD_ANNOTATION_(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) LANEGUARD_THREAD_ANNOTATION_(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) LANEGUARD_THREAD_ANNOTATION_(release_shared_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) LANEGUARD_THREAD_ANNOTATION_(try_acquire_capability(__VA_ARGS__))
#define EXCLUDES(...) LANEGUARD_THREAD_ANNOTATION_(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) LANEGUARD_THREAD_ANNOTATION_(assert_capability(x))
#define RETURN_CAPABILITY(x) LANEGUARD_THREAD_ANNOTATION_(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS LANEGUARD_THREAD_ANNOTATION_(no_thread_safety_analysis)

#endif  // LANEGUARD_INTERNAL_THREAD_ANNOTATIONS_H_
