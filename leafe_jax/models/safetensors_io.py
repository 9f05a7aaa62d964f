"""Minimal safetensors reader/writer over numpy memmaps (bf16 included), so tensors load lazily by slice."""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # absolute byte offset in the file
  end: int


def read_header(path: str) -> dict[str, TensorInfo]:
  """Name -> TensorInfo for every tensor of one .safetensors file (reads only the header)."""
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", raw)
    header = json.loads(f.read(n))
  base = 8 + n
  out = {}
  for name, meta in header.items():
    if name == "__metadata__":
      continue
    if meta["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {meta['dtype']}")
    start, end = meta["data_offsets"]
    out[name] = TensorInfo(path, np.dtype(_DTYPES[meta["dtype"]]), tuple(meta["shape"]), base + start, base + end)
  return out


def load(info: TensorInfo) -> np.ndarray:
  """The tensor as a read-only memmap (no copy until sliced)."""
  count = int(np.prod(info.shape)) if info.shape else 1
  return np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.start, shape=(count,)).reshape(info.shape)


def save(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` as one safetensors file (atomically: temp name, then rename)."""
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  arrays = {}
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays[name] = array
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name in sorted(arrays):
      f.write(arrays[name].tobytes())
  os.replace(tmp, path)
