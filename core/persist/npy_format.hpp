#pragma once
// numpy's array formats, shared by .npy, .npz and pickle files: dtypes as
// (kind, item size, byte order), the .npy header (read from any sequential
// source, written for any shape) and the conversion of raw array bytes to a
// C-order, native-order buffer.
#include <joblib/array.hpp>
#include <joblib/numpy.hpp>  // dtype_name, AnyArray

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace joblib::detail {

/// A numeric dtype: kind b/i/u/f/c, item size, and whether its bytes are in
/// the other byte order than this machine's.
struct NpyDescr {
  char kind = 0;
  std::size_t size = 0;
  bool swapped = false;
};

/// Parses numpy's dtype string ("<f8", "|b1", ">c16", "=i4", "f8") whose
/// byte order is `order` when the string has none. Returns false when it is
/// not one of b1, i1-i8, u1-u8, f4, f8, c8, c16 in some byte order.
bool parse_npy_descr(std::string_view text, NpyDescr& out, char order = '=');

/// What a .npy header says.
struct NpyLayout {
  NpyDescr descr;
  std::string descr_text;  // as the header spells it: "<f8"
  bool fortran = false;
  std::vector<std::size_t> shape;
  std::size_t count = 0;        // elements
  std::size_t bytes = 0;        // data bytes
  std::size_t data_offset = 0;  // from the start of the .npy data
};

/// Reads up to dest.size() bytes from a sequential source; fewer only at
/// its end.
using NpyRead = std::function<std::size_t(std::span<std::byte>)>;

/// Reads and checks a .npy header (magic, version 1.0-3.0, the dict) from
/// `read`, which is left at the first data byte. `name` starts every error.
/// Throws StoreError "{name}: not a valid .npy file: {why}".
NpyLayout read_npy_header(const NpyRead& read, const std::string& name);

/// The header save_npy writes for (kind, size, shape): the oldest version
/// that fits, padded so the data starts at a multiple of 64 bytes.
std::string npy_header(char kind, std::size_t item_size, const std::vector<std::size_t>& shape);

/// Element count of `shape` times `item`; throws StoreError "{name}: {what}
/// has a shape whose size overflows" when it does not fit std::size_t.
std::size_t npy_checked_bytes(const std::vector<std::size_t>& shape, std::size_t item, const std::string& name,
                              std::string_view what);

/// Turns raw array bytes (`count` items of `d`, Fortran order when
/// `fortran` and the shape has two or more dimensions above 1) into a
/// C-order buffer in native byte order, bools as 0 or 1. May return a new
/// buffer.
SharedBuffer npy_to_native(SharedBuffer raw, const NpyDescr& d, bool fortran, const std::vector<std::size_t>& shape,
                           std::size_t count);

/// True when an array of `shape` in Fortran order is laid out differently
/// from the same array in C order.
bool npy_fortran_differs(const std::vector<std::size_t>& shape);

/// Allocates `bytes` for array data read from a file; a size that cannot be
/// had is a StoreError naming `name`, not std::bad_alloc.
SharedBuffer npy_allocate(std::size_t bytes, const std::string& name);

}  // namespace joblib::detail
