#pragma once
// joblib::Array<T>: an n-dimensional, contiguous (C order) array of a
// trivially copyable T that owns its memory or views a file mapping, the
// C++ counterpart of the numpy arrays joblib persists and memory-maps.
//
//   joblib::Array<double> a({1000, 3});   // zero-filled, owned, 64-byte aligned
//   a[7] = 1.5;                           // flat index in C order
//   joblib::Array<double> b = a;          // b shares a's buffer (a numpy reference)
//   joblib::Array<double> c = a.copy();   // c owns a copy
//
// Read-only arrays. An array loaded with mmap_mode r (or received by a
// process task with mmap_mode r) views a private copy-on-write mapping of
// its file: every accessor reads it in place, const or not (a[i], range-for,
// data(), span()), with no copy and no exception, exactly as an owned array
// reads; a write through it stays in this process's private pages and never
// reaches the file (is_writable() says false: writes do not reach the file).
// Load with mmap_mode r+ for writes that reach the file, or c for a mapping
// whose writes are meant to stay private.
//
// Copies share the buffer and its writability, as numpy arrays that view the
// same memory do; constness of an Array object is shallow (it selects the
// const accessors, it does not freeze the buffer for other copies).
// Thread-safety: as for a std::shared_ptr, distinct Array objects may be used
// from distinct threads; writing the same elements concurrently is a race.
#include <joblib/detail/throw.hpp>
#include <joblib/export.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace joblib {

namespace detail {

/// A block of bytes shared by Arrays and by the codec: an owned allocation
/// aligned to 64 bytes, or a window into a file mapping.
struct SharedBuffer {
  std::shared_ptr<std::byte> data;          // aliasing pointer: keeps the allocation or the mapping alive
  std::size_t size = 0;                     // in bytes
  bool writable = true;                     // false for a read-only (mmap_mode r) mapping: writes stay private
  bool mapped = false;                      // true when data lies in a file mapping
  std::shared_ptr<const std::string> file;  // the mapped file (null when owned)
};

/// Alignment of every buffer allocate_buffer() returns, and of every large
/// buffer in a dump file (joblib aligns to 16).
inline constexpr std::size_t buffer_alignment = 64;

/// Allocates `bytes` bytes aligned to buffer_alignment, writable and owned.
/// Blocks of 1 MiB and more are anonymous page mappings, filled lazily by
/// the kernel: they come zero-filled, and a size read from a bad file costs
/// no memory until the pages are written; smaller blocks are zero-filled only
/// when `zero` is true.
/// Throws std::bad_alloc when the memory cannot be had. Thread-safe.
JOBLIB_EXPORT SharedBuffer allocate_buffer(std::size_t bytes, bool zero);

/// Throws std::invalid_argument: `what` describes a shape that does not fit.
[[noreturn]] JOBLIB_EXPORT void throw_bad_shape(const std::string& what);

/// Number of elements of `shape` (1 for a 0-d shape); throws
/// std::invalid_argument when the product of the extents times `item_size`
/// overflows std::size_t.
JOBLIB_EXPORT std::size_t shape_size(std::span<const std::size_t> shape, std::size_t item_size);

}  // namespace detail

/// An n-dimensional, C-ordered array of T that owns its memory or views a
/// mapping. See the header comment for the sharing and read-only rules.
template <class T>
class Array {
  static_assert(std::is_trivially_copyable_v<T>,
                "joblib::Array<T>: T must be trivially copyable (its bytes are written, sent and mapped as they are)");
  static_assert(alignof(T) <= detail::buffer_alignment,
                "joblib::Array<T>: T's alignment must not exceed 64 bytes (the alignment of every Array buffer)");
  static_assert(!std::is_const_v<T> && !std::is_volatile_v<T>,
                "joblib::Array<T>: T must not be const or volatile (read-only arrays are a property of the buffer)");

 public:
  using value_type = T;
  using size_type = std::size_t;
  using iterator = T*;
  using const_iterator = const T*;

  /// An empty array: shape {0}, no buffer.
  Array() : shape_{0} {}

  /// A zero-filled, owned, writable array of the given shape (C order).
  /// `Array<double>({1000, 3})`. An empty shape {} is a 0-d array of one
  /// element, as in numpy. Throws std::invalid_argument when the size
  /// overflows, std::bad_alloc when memory runs out.
  explicit Array(std::vector<std::size_t> shape) : shape_(std::move(shape)) {
    size_ = detail::shape_size(shape_, sizeof(T));
    if (size_ != 0) buffer_ = detail::allocate_buffer(size_ * sizeof(T), /*zero=*/true);
  }

  /// An owned, writable array of the given shape holding a copy of `values`.
  /// Throws std::invalid_argument when values.size() differs from the shape's
  /// element count.
  Array(std::vector<std::size_t> shape, std::span<const T> values) : Array(std::move(shape), uninitialized) {
    if (values.size() != size_)
      detail::throw_bad_shape("joblib::Array: " + std::to_string(values.size()) + " values given for a shape of " +
                              std::to_string(size_) + " elements");
    if (size_ != 0) std::memcpy(buffer_.data.get(), values.data(), size_ * sizeof(T));
  }

  /// Views `buffer` (an owned allocation or a mapping, shared, not copied)
  /// as an array of the given shape; used by load and by the codec. Throws
  /// std::invalid_argument when the buffer's size is not the shape's size in
  /// bytes or its address is not aligned for T.
  Array(std::vector<std::size_t> shape, detail::SharedBuffer buffer) : shape_(std::move(shape)) {
    size_ = detail::shape_size(shape_, sizeof(T));
    if (buffer.size != size_ * sizeof(T))
      detail::throw_bad_shape("joblib::Array: a buffer of " + std::to_string(buffer.size) +
                              " bytes does not hold " + std::to_string(size_) + " elements of " +
                              std::to_string(sizeof(T)) + " bytes");
    if (size_ != 0 && reinterpret_cast<std::uintptr_t>(buffer.data.get()) % alignof(T) != 0)
      detail::throw_bad_shape("joblib::Array: buffer not aligned for the element type");
    if (size_ != 0) buffer_ = std::move(buffer);
  }

  Array(const Array&) = default;
  Array& operator=(const Array&) = default;
  /// Moving leaves the source empty (shape {0}).
  Array(Array&& o) noexcept
      : shape_(std::exchange(o.shape_, std::vector<std::size_t>{0})),
        size_(std::exchange(o.size_, 0)),
        buffer_(std::exchange(o.buffer_, {})) {}
  Array& operator=(Array&& o) noexcept {
    if (this != &o) {
      shape_ = std::exchange(o.shape_, std::vector<std::size_t>{0});
      size_ = std::exchange(o.size_, 0);
      buffer_ = std::exchange(o.buffer_, {});
    }
    return *this;
  }
  ~Array() = default;

  /// Extent of each dimension, C order.
  const std::vector<std::size_t>& shape() const noexcept { return shape_; }
  /// Number of dimensions.
  std::size_t ndim() const noexcept { return shape_.size(); }
  /// Number of elements.
  std::size_t size() const noexcept { return size_; }
  /// Size of the data in bytes.
  std::size_t nbytes() const noexcept { return size_ * sizeof(T); }
  /// True when the array has no element.
  bool empty() const noexcept { return size_ == 0; }

  /// Pointer to the first element (null when empty). Never throws.
  const T* data() const noexcept { return ptr(); }
  const T* cdata() const noexcept { return ptr(); }
  /// Pointer to the first element (null when empty). Never throws.
  T* data() noexcept { return ptr(); }

  /// The elements as a span.
  std::span<const T> span() const noexcept { return {ptr(), size_}; }
  std::span<const T> cspan() const noexcept { return {ptr(), size_}; }
  /// The elements as a mutable span. Never throws.
  std::span<T> span() noexcept { return {ptr(), size_}; }

  /// Element at flat index i (C order), unchecked.
  const T& operator[](std::size_t i) const noexcept { return ptr()[i]; }
  /// Element at flat index i, unchecked.
  T& operator[](std::size_t i) noexcept { return ptr()[i]; }

  /// Element at flat index i; throws std::out_of_range when i >= size().
  const T& at(std::size_t i) const {
    check_index(i);
    return ptr()[i];
  }
  /// Element at flat index i; throws std::out_of_range when i >= size().
  T& at(std::size_t i) {
    check_index(i);
    return ptr()[i];
  }

  const T* begin() const noexcept { return ptr(); }
  const T* end() const noexcept { return ptr() + size_; }
  const T* cbegin() const noexcept { return ptr(); }
  const T* cend() const noexcept { return ptr() + size_; }
  T* begin() noexcept { return ptr(); }
  T* end() noexcept { return ptr() + size_; }

  /// True when the data lies in a file mapping (load with an mmap_mode).
  bool is_mapped() const noexcept { return buffer_.mapped; }
  /// False for a read-only mapping (mmap_mode r), whose writes never reach
  /// the file; true otherwise.
  bool is_writable() const noexcept { return buffer_.writable; }
  /// The mapped file, or an empty path when the array owns its memory.
  std::filesystem::path filename() const { return buffer_.file ? std::filesystem::path(*buffer_.file) : std::filesystem::path(); }

  /// An owned, writable copy of the data (numpy's np.array(a)).
  Array copy() const { return Array(shape_, span()); }

  /// A view of the same buffer with another shape of the same element count.
  /// Throws std::invalid_argument when the counts differ.
  Array reshape(std::vector<std::size_t> shape) const {
    if (detail::shape_size(shape, sizeof(T)) != size_)
      detail::throw_bad_shape("joblib::Array::reshape: cannot reshape an array of " + std::to_string(size_) +
                              " elements");
    Array r(*this);
    r.shape_ = std::move(shape);
    return r;
  }

  /// The shared buffer behind the array (empty when the array is).
  const detail::SharedBuffer& buffer() const noexcept { return buffer_; }

  /// Same shape and equal elements.
  friend bool operator==(const Array& a, const Array& b)
    requires requires(const T& x) { { x == x } -> std::convertible_to<bool>; }
  {
    return a.shape_ == b.shape_ && std::equal(a.begin(), a.end(), b.begin());
  }

 private:
  struct Uninitialized {};
  static constexpr Uninitialized uninitialized{};
  Array(std::vector<std::size_t> shape, Uninitialized) : shape_(std::move(shape)) {
    size_ = detail::shape_size(shape_, sizeof(T));
    if (size_ != 0) buffer_ = detail::allocate_buffer(size_ * sizeof(T), /*zero=*/false);
  }

  T* ptr() const noexcept { return reinterpret_cast<T*>(buffer_.data.get()); }
  void check_index(std::size_t i) const {
    if (i >= size_) detail::throw_index_out_of_range("joblib::Array::at", i, size_);
  }

  std::vector<std::size_t> shape_;
  std::size_t size_ = 0;
  detail::SharedBuffer buffer_;
};

/// Adopts a vector's memory as an Array, without a copy: the Array (and its
/// copies) keep the vector alive. `shape` defaults to {v.size()}. This is the
/// one-line way to pass big data to many tasks (and to process workers, where
/// it is memory-mapped once instead of copied into every task):
///
///   auto a = joblib::as_array(std::move(values));   // no copy
///   Parallel({.n_jobs = 4}).map(f, std::vector(40, a));  // 40 tasks share a's buffer
///
/// Throws std::invalid_argument when `shape` does not hold v.size() elements.
template <class T>
Array<T> as_array(std::vector<T>&& v, std::vector<std::size_t> shape = {}) {
  if (shape.empty()) shape = {v.size()};
  if (detail::shape_size(shape, sizeof(T)) != v.size())
    detail::throw_bad_shape("joblib::as_array: a shape of " + std::to_string(detail::shape_size(shape, sizeof(T))) +
                            " elements for a vector of " + std::to_string(v.size()));
  if (v.empty()) return Array<T>(std::move(shape));
  auto owner = std::make_shared<std::vector<T>>(std::move(v));
  detail::SharedBuffer b;
  b.size = owner->size() * sizeof(T);
  b.data = std::shared_ptr<std::byte>(owner, reinterpret_cast<std::byte*>(owner->data()));
  return Array<T>(std::move(shape), std::move(b));
}

}  // namespace joblib
