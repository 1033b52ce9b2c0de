"""The files a user hands lpusim, read with a bound: models, .npz inputs, chip, system and LLM configurations,
assembly programs. Every reader goes through `open_regular`: a regular file only (a directory, a device such as
/dev/zero or a pipe is refused before a byte is read, never read without end) and at most a named number of bytes.
Each refusal is one error naming the file and, for a size, the bytes it has against the bytes allowed.

`load_npz` reads an .npz archive of input arrays without pickles and looks at every array's header (its type and
shape) before reading its data: strings, objects, complex numbers and arrays larger than `MAX_TENSOR_BYTES` are
refused before anything is allocated. `write_text` writes an output file whole or not at all.
"""
from __future__ import annotations

import math
import os
import re
import stat
import zipfile

import numpy as np

from lpusim.errors import LpusimError

# The size bounds. Each is well above the largest file of its kind that lpusim itself writes or a real model needs,
# and each refuses a mistaken file (a dataset, a disk image) before it is read into memory.

# protobuf parses no message over 2 GiB, so no ONNX file larger than this can load; a larger model keeps its weights
# in external data files next to it (read by onnx, which checks each against its file's size).
MAX_MODEL_BYTES = 2 << 30
# The most bytes one tensor (an input, a weight, an activation) may take. Every tensor lives in SRAM, split at most
# over the 8 chips of a node (1,845,493,760 bytes of tsp_v1 SRAM), and the host holds a copy too (onnxruntime
# calibrates and checks the whole graph): 2 GiB is above both. A shape that would need more (a mistyped --shape, a
# declared dimension of 10^11) is refused before anything is allocated.
MAX_TENSOR_BYTES = 2 << 30
# An .npz of inputs: its file and all its arrays together, two tensors at the bound above.
MAX_INPUTS_BYTES = 2 * MAX_TENSOR_BYTES
# JSON configurations (chip, system, a Hugging Face config.json): the largest lpusim writes is the system of 145
# racks (10,440 chips, every link listed), 4.5 MB of JSON; a chip configuration or a config.json is a few kB.
MAX_JSON_BYTES = 64 << 20
# Assembly text: at 8 bytes or more a line, 1 GiB holds more instructions than tsp_v1's 144 queues of 1,048,576
# (151 million): a longer program could not be loaded onto the chip.
MAX_ASSEMBLY_BYTES = 1 << 30


def open_regular(path, what: str, limit: int, error=LpusimError):
    """`path` opened for binary reading, after checking it is a regular file of at most `limit` bytes; `error`
    (an LpusimError class) naming the file otherwise. `what` names the kind of file ("an ONNX model")."""
    name = os.fspath(path)
    try:
        # O_NONBLOCK: opening a pipe does not wait for a writer (the check below then refuses it)
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except IsADirectoryError:
        raise error(f"{name}: a directory, not a regular file ({what} is a file)") from None
    except OSError as e:
        raise error(f"{name}: cannot open {what}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{name}: a directory, not a regular file ({what} is a file)")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name}: not a regular file ({what} is a file; a device or pipe is not read)")
        if st.st_size > limit:
            raise error(f"{name}: {st.st_size:,} bytes; {what} of more than {limit:,} bytes is not read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, what: str, limit: int, error=LpusimError) -> bytes:
    """The whole of a regular file of at most `limit` bytes (see `open_regular`)."""
    with open_regular(path, what, limit, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{os.fspath(path)}: cannot read {what}: {e.strerror}") from None
    if len(data) > limit:  # it grew after the check
        raise error(f"{os.fspath(path)}: more than {limit:,} bytes; {what} of more than {limit:,} bytes is not read")
    return data


def read_text(path, what: str, limit: int, error=LpusimError) -> str:
    """A UTF-8 text file of at most `limit` bytes; a binary file (bytes that are not UTF-8, or a NUL) is refused
    naming the first offending byte."""
    data = read_bytes(path, what, limit, error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{os.fspath(path)}: not {what} (byte {e.start} is not UTF-8; a binary file?)") from None
    control = _CONTROL.search(text)
    if control:
        offset = len(text[:control.start()].encode("utf-8"))
        raise error(f"{os.fspath(path)}: not {what} (control character {ord(control[0]):#04x} at byte {offset}; a "
                    f"binary file?)")
    return text


# Characters no text file lpusim reads holds: C0 controls but tab, newline, carriage return (and form feed); C1
# controls and the Unicode line and paragraph separators (str.splitlines breaks lines at them)
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def read_json(path, what: str, error=LpusimError, limit: int = MAX_JSON_BYTES):
    """A JSON file (`read_text`), parsed; `error` naming the file and the place of a syntax error."""
    import json

    text = read_text(path, what, limit, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{os.fspath(path)}: {what} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") \
            from None
    except RecursionError:
        raise error(f"{os.fspath(path)}: {what} is nested too deeply to be a configuration") from None


# .npy dtype kinds an input may hold: booleans, signed and unsigned integers, real floats
INPUT_KINDS = "biuf"


def load_npz(path, error=LpusimError) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by name. Refused, naming the file and the array: anything not a zip of .npy
    arrays (a single .npy, a pickle), arrays of strings, objects (pickles are never loaded), complex numbers,
    records or dates, and arrays whose declared size exceeds `MAX_TENSOR_BYTES` (all together `MAX_INPUTS_BYTES`),
    each checked from its header before its data is read."""
    name = os.fspath(path)
    with open_regular(path, "an .npz file of inputs", MAX_INPUTS_BYTES, error) as f:
        head = f.read(6)
        if head.startswith(b"\x93NUMPY"):
            raise error(f"{name}: a single .npy array, not an .npz archive of arrays by input name "
                        f"(np.savez(path, input_name=array))")
        f.seek(0)
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
            raise error(f"{name}: not an .npz archive (np.savez writes one): {e}") from None
        arrays, total = {}, 0
        with archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                key = info.filename[:-4] if info.filename.endswith(".npy") else None
                if not key:
                    raise error(f"{name}: holds '{info.filename}', not an .npy array (an .npz holds arrays only)")
                try:
                    with archive.open(info) as member:
                        dtype, shape = _npy_header(member)
                        nbytes = math.prod(shape) * dtype.itemsize
                        what = f"{name}: array '{key}' is {dtype} {tuple(shape)}"
                        if dtype.hasobject or dtype.kind not in INPUT_KINDS:
                            raise error(f"{what}; inputs must be real numbers or booleans")
                        if nbytes > MAX_TENSOR_BYTES:
                            raise error(f"{what}: {nbytes:,} bytes, more than the {MAX_TENSOR_BYTES:,} one input may "
                                        f"take")
                        total += nbytes
                        if total > MAX_INPUTS_BYTES:
                            raise error(f"{name}: its arrays take {total:,} bytes or more, more than the "
                                        f"{MAX_INPUTS_BYTES:,} an .npz of inputs may hold")
                    with archive.open(info) as member:
                        arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
                except LpusimError:
                    raise
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
                    # numpy's header and size checks, zip's CRC and truncation checks
                    raise error(f"{name}: array '{key}' cannot be read (truncated or malformed?): {e}") from None
    return arrays


def _npy_header(member) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape of the .npy array `member` is at the start of, from its header alone."""
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(member)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return np.dtype(dtype), tuple(int(d) for d in shape)


def check_writable(path, what: str = "the output") -> None:
    """Refuse, before any work, an output path that cannot be written: a directory, or one in a directory that
    does not exist."""
    if path is None:
        return
    name = os.fspath(path)
    if os.path.isdir(name):
        raise LpusimError(f"{name}: a directory; cannot write {what} there")
    parent = os.path.dirname(name) or "."
    if not os.path.isdir(parent):
        raise LpusimError(f"{name}: cannot write {what}: no directory {parent}")


def write_text(path, text: str, what: str = "the output") -> None:
    """Write `text` to `path` whole or not at all: into PATH.partial, then renamed over `path` (a failed write
    leaves `path` as it was and no partial file behind); a device or pipe (-o /dev/stdout) is written as a
    stream. LpusimError naming the file on failure."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise LpusimError(f"{name}: a directory; cannot write {what} there")
    if st is not None and not stat.S_ISREG(st.st_mode):  # a device or pipe (-o /dev/stdout): written as a stream
        try:
            with open(name, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise LpusimError(f"{name}: cannot write {what}: {e.strerror or e}") from None
        return
    tmp = f"{name}.partial"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, name)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise LpusimError(f"{name}: cannot write {what}: {e.strerror or e}") from None


__all__ = ["MAX_MODEL_BYTES", "MAX_TENSOR_BYTES", "MAX_INPUTS_BYTES", "MAX_JSON_BYTES", "MAX_ASSEMBLY_BYTES",
           "open_regular", "read_bytes", "read_text", "read_json", "load_npz", "check_writable", "write_text"]
