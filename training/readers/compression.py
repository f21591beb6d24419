"""Compressed TFRecords (--compression): each file's own compression
detected from its first bytes, or forced for every file (docs/formats.md 1.7)."""
from __future__ import annotations

import concurrent.futures
from typing import Sequence

from models.tf_compat import tf
from training.cli import UserError, first_line

COMPRESSIONS = ("auto", "none", "gzip", "zlib")
_COMPRESSION_TYPES = {"none": "", "gzip": "GZIP", "zlib": "ZLIB"}


def _masked_crc32c(data: bytes) -> int:
    """The TFRecord framing's masked CRC-32C of `data` (bitwise; used on 8 bytes)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def detect_compression(path: str) -> str:
    """TensorFlow's compression_type of a TFRecord file: '', 'GZIP' or 'ZLIB'.

    From its first 12 bytes: an uncompressed file starts with the uint64
    length of its first record and that length's masked CRC-32C (checked
    first, so a length that happens to look like a magic number is not
    taken for one); else the gzip magic 1f 8b, else a zlib header (deflate,
    window <= 32K, (CMF*256 + FLG) % 31 == 0); else '' (an empty or damaged
    file, which the reader then reports).
    """
    with tf.io.gfile.GFile(path, "rb") as handle:
        head = handle.read(12)
    if len(head) == 12 and int.from_bytes(head[8:], "little") == _masked_crc32c(head[:8]):
        return ""
    if head[:2] == b"\x1f\x8b":
        return "GZIP"
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 \
            and (head[0] * 256 + head[1]) % 31 == 0:
        return "ZLIB"
    return ""


def check_compression(compression: str) -> str:
    """`compression` (--compression) if it is one of COMPRESSIONS, else a UserError."""
    if compression not in COMPRESSIONS:
        raise UserError(f"--compression: must be one of {', '.join(COMPRESSIONS)}, "
                        f"got {compression!r}")
    return compression


def file_compressions(files: Sequence[str], compression: str = "auto",
                      flag_name: str = "") -> list[str]:
    """The compression_type ('', 'GZIP' or 'ZLIB') of each file.

    compression: --compression; 'auto' detects each file's own
    (detect_compression, a few files at a time: one small read per file),
    'none', 'gzip' and 'zlib' apply to every file without reading any.
    flag_name: the files' flag, named by the error for an unreadable file.
    """
    if check_compression(compression) != "auto":
        return [_COMPRESSION_TYPES[compression]] * len(files)

    def detect(path: str) -> str:
        try:
            return detect_compression(path)
        except tf.errors.OpError as err:
            prefix = f"--{flag_name}: " if flag_name else ""
            raise UserError(f"{prefix}{path}: cannot read ({first_line(err)})") from None

    if len(files) <= 1:
        return [detect(path) for path in files]
    with concurrent.futures.ThreadPoolExecutor(min(16, len(files))) as pool:
        return list(pool.map(detect, files))
