"""Mutations of a file's bytes: blind ones (flipped, overwritten, deleted, inserted bytes, lying
integers, truncation) and ones that know the container (a pickle's opcodes, a zip's members, a PNG's
chunks), so that a mutant gets past checksums and headers to the parser behind them.

Every function takes a `random.Random` and returns new bytes; the same seed gives the same mutant.
"""

from __future__ import annotations

import io
import pickletools
import random
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable

Mutator = Callable[[random.Random, bytes], bytes]

# numbers that length and count fields get wrong: off by one, sign bits, the largest of each width
INTERESTING = (
    0,
    1,
    2,
    7,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    0x100000000,
    1 << 40,
    (1 << 62) + 5,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
)


def _interesting(rng: random.Random, size: int) -> int:
    if rng.random() < 0.3:
        return size + rng.choice((-1, 0, 1, 8, 4096))  # about the file's own length
    return rng.choice(INTERESTING)


# --------------------------------------------------------------------------- blind byte mutations


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 2, 4))):
        if out:
            out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return bytes(out)


def lying_integer(rng: random.Random, data: bytes) -> bytes:
    """An interesting number written over 1, 2, 4 or 8 bytes, little- or big-endian."""
    if not data:
        return data
    width = rng.choice((1, 2, 4, 8))
    value = _interesting(rng, len(data)) % (1 << (8 * width))
    raw = value.to_bytes(width, rng.choice(("little", "big")))
    at = rng.randrange(len(data))
    return data[:at] + raw + data[at + width :]


def delete_range(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.choice((1, 1, 2, 4, 16, 256, 4096)) :]


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    n = rng.choice((1, 1, 2, 4, 16, 256))
    chunk = rng.choice((bytes(n), b"\xff" * n, rng.randbytes(n)))
    return data[:at] + chunk + data[at:]


def duplicate_range(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.choice((1, 4, 64, 1024))]
    at = rng.randrange(len(data) + 1)
    return data[:at] + chunk + data[at:]


def truncate(rng: random.Random, data: bytes) -> bytes:
    """Cut anywhere, more often near the end (an interrupted download)."""
    if len(data) < 2:
        return b""
    if rng.random() < 0.5:
        return data[: rng.randrange(len(data))]
    return data[: max(0, len(data) - rng.choice((1, 2, 8, 64, 512, 4096)))]


def zero_range(rng: random.Random, data: bytes) -> bytes:
    """A run of zeros: a sector of a disk that went bad, a sparse hole of a broken copy."""
    if not data:
        return data
    start = rng.randrange(len(data))
    n = rng.choice((4, 64, 512, 4096))
    return data[:start] + bytes(min(n, len(data) - start)) + data[start + n :]


BLIND: tuple[Mutator, ...] = (
    flip_bits,
    flip_bits,
    set_bytes,
    lying_integer,
    lying_integer,
    delete_range,
    insert_bytes,
    duplicate_range,
    truncate,
    zero_range,
)


def blind(rng: random.Random, data: bytes) -> bytes:
    """One to three blind mutations."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        data = rng.choice(BLIND)(rng, data)
    return data


# --------------------------------------------------------------------------- pickles

# Pickled calls that would leave MARKER behind if anything ran them. {marker} is a bytes path.
_CODE_PAYLOADS = (
    b"cos\nsystem\n(S'touch {marker}'\ntR",
    b"cposix\nsystem\n(S'touch {marker}'\ntR",
    b"cnt\nsystem\n(S'touch {marker}'\ntR",
    b'c__builtin__\neval\n(S\'__import__("os").system("touch {marker}")\'\ntR',
    b'cbuiltins\nexec\n(S\'open("{marker}", "w").close()\'\ntR',
    b"csubprocess\ncheck_call\n((S'touch'\nS'{marker}'\nltR",
    b"ios\nsystem\n(S'touch {marker}'\n",  # INST: class and call in one opcode
    b"(cos\nsystem\nS'touch {marker}'\no",  # OBJ
    b"\x8c\x02os\x8c\x06system\x93\x8c\x0dtouch {marker}\x85R",  # STACK_GLOBAL (protocol 4)
    b"ccopyreg\n_reconstructor\n(cos\nsystem\nc__builtin__\nobject\nNtR",
    b"ccollections\ndefaultdict\n(cos\nsystem\ntR",
    b"ctorch._utils\n_rebuild_tensor_v2\n(cos\nsystem\n(S'touch {marker}'\ntRK\x00)K\x01\x85\x89NtR",
    b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch {marker}'\ntR",
    b"ctorch\nload\n(S'{marker}'\ntR",
    b"cnumpy.core.multiarray\n_reconstruct\n(cos\nsystem\n(S'touch {marker}'\ntRtR",
)


def code_payload(rng: random.Random, marker: bytes) -> bytes:
    payload = rng.choice(_CODE_PAYLOADS)
    if payload.startswith(b"\x8c\x02os"):  # the STACK_GLOBAL payload carries its string's length
        text = b"touch " + marker
        return b"\x8c\x02os\x8c\x06system\x93" + _short_unicode(text) + b"\x85R"
    return payload.replace(b"{marker}", marker)


def _short_unicode(text: bytes) -> bytes:
    if len(text) < 256:
        return b"\x8c" + bytes([len(text)]) + text
    return b"X" + struct.pack("<I", len(text)) + text


def opcode_spans(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, opcode name) of each opcode pickletools can read, up to the first it cannot."""
    spans: list[tuple[int, int, str]] = []
    try:
        ops = list(pickletools.genops(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - a mutated pickle: the readable prefix is enough
        ops = []
    positions = [pos for _op, _arg, pos in ops] + [len(data)]
    for (op, _arg, pos), end in zip(ops, positions[1:], strict=False):
        spans.append((pos, end, op.name))
    return spans


_COUNTED = {  # opcodes whose argument is a count or index, and its width
    "BININT": 4,
    "BININT1": 1,
    "BININT2": 2,
    "LONG1": 1,
    "LONG4": 4,
    "BINPUT": 1,
    "LONG_BINPUT": 4,
    "BINGET": 1,
    "LONG_BINGET": 4,
    "BINUNICODE": 4,
    "BINUNICODE8": 8,
    "SHORT_BINUNICODE": 1,
    "BINBYTES": 4,
    "BINBYTES8": 8,
    "SHORT_BINBYTES": 1,
    "BINSTRING": 4,
    "SHORT_BINSTRING": 1,
    "BYTEARRAY8": 8,
    "FRAME": 8,
    "PROTO": 1,
}


def pickle_mutation(rng: random.Random, data: bytes, marker: bytes) -> bytes:
    """One opcode-aware mutation of a pickle: code injected at an opcode boundary, a count or
    length argument replaced by an interesting number, an opcode deleted, duplicated or replaced."""
    spans = opcode_spans(data)
    if not spans:
        return blind(rng, data)
    start, end, name = rng.choice(spans)
    choice = rng.random()
    if choice < 0.3:
        return data[:start] + code_payload(rng, marker) + data[start:]
    if choice < 0.55 and name in _COUNTED:
        width = _COUNTED[name]
        value = _interesting(rng, len(data)) % (1 << (8 * width))
        return data[: start + 1] + value.to_bytes(width, "little") + data[start + 1 + width :]
    if choice < 0.7:
        return data[:start] + data[end:]
    if choice < 0.8:
        return data[:end] + data[start:end] + data[end:]
    if choice < 0.9:
        return data[:start] + bytes([rng.randrange(256)]) + data[start + 1 :]
    # a whole pickle that runs code, in place of the real one
    return b"\x80\x02" + code_payload(rng, marker) + b"."


# --------------------------------------------------------------------------- zip archives


def zip_members(data: bytes) -> list[tuple[str, bytes, int]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i), i.compress_type) for i in zf.infolist()]


def pack_zip(members: list[tuple[str, bytes, int]]) -> bytes:
    """A zip with correct checksums (what a mutated member looks like inside a sound archive)."""
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as zf:
        warnings.simplefilter("ignore")  # a duplicated member is one of the mutations
        for name, content, compression in members:
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), content, compress_type=compression)
    return out.getvalue()


def zip_member_mutation(
    rng: random.Random, members: list[tuple[str, bytes, int]], marker: bytes, pickle_name: str = "data.pkl"
) -> bytes:
    """Mutate one member (the pickle most often) and repack the archive with valid CRCs; or drop,
    duplicate or rename a member."""
    members = list(members)
    index = rng.randrange(len(members))
    pickles = [i for i, (n, _c, _t) in enumerate(members) if n.endswith(pickle_name)]
    if pickles and rng.random() < 0.5:
        index = rng.choice(pickles)
    name, content, compression = members[index]
    choice = rng.random()
    if choice < 0.08:
        del members[index]
    elif choice < 0.12:
        members.insert(rng.randrange(len(members) + 1), (name, content, compression))
    elif choice < 0.16:
        members[index] = (name + rng.choice(("x", "/", "0")), content, compression)
    elif choice < 0.20:
        members[index] = (name, content, zipfile.ZIP_DEFLATED)  # compressed: torch never writes that
    elif name.endswith(".pkl"):
        members[index] = (name, pickle_mutation(rng, content, marker), compression)
    else:
        members[index] = (name, blind(rng, content), compression)
    return pack_zip(members)


# --------------------------------------------------------------------------- PNG chunks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        chunks.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def pack_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [PNG_SIGNATURE]
    for kind, body in chunks:
        out += [struct.pack(">I", len(body)), kind, body, struct.pack(">I", zlib.crc32(kind + body))]
    return b"".join(out)


def png_chunk_mutation(rng: random.Random, data: bytes) -> bytes:
    """Mutate one chunk's contents (IHDR and IDAT most often) with a valid CRC; or drop, repeat or
    reorder chunks; or recompress the image data after mutating it."""
    chunks = png_chunks(data)
    if not chunks:
        return blind(rng, data)
    index = rng.randrange(len(chunks))
    if rng.random() < 0.5:
        wanted = rng.choice((b"IHDR", b"IDAT", b"eXIf", b"PLTE", b"tRNS"))
        found = [i for i, (k, _b) in enumerate(chunks) if k == wanted]
        index = rng.choice(found) if found else index
    kind, body = chunks[index]
    choice = rng.random()
    if choice < 0.1:
        del chunks[index]
    elif choice < 0.2:
        chunks.insert(rng.randrange(len(chunks) + 1), (kind, body))
    elif choice < 0.3 and kind == b"IDAT":
        try:
            raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
        except zlib.error:
            raw = b""
        chunks = [c for c in chunks if c[0] != b"IDAT"]
        chunks.insert(min(index, len(chunks) - 1), (b"IDAT", zlib.compress(blind(rng, raw))))
    else:
        chunks[index] = (kind, blind(rng, body))
    return pack_png(chunks)
