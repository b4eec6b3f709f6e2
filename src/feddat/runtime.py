"""Device choice, thread count, seeding and atomic file writes shared by every part."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
from pathlib import Path
from typing import Any, Iterator

import torch

from feddat.errors import ConfigError
from safetensors.torch import save_file


#: Where every tensor that crosses the client/server boundary lives: shared parameters, updates,
#: method (server) state and client state. A client moves what it needs to its compute device
#: inside its own update and hands back CPU copies, so server code never mixes devices and
#: what an engine stores or sends is the same whatever device trained it.
HOME = torch.device("cpu")


def at_home(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` detached and on HOME (a tensor already there is not copied)."""
    return {k: v.detach().to(HOME) for k, v in tensors.items()}


def home_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy on HOME that shares no memory with `tensor` (one copy, from any device)."""
    return tensor.detach().to(HOME, copy=True)


def check_device(name: str, option: str = "run.device") -> None:
    """Refuse a device this machine lacks (cuda without a GPU, cuda:N past the count, mps) as a
    config error: one `feddat: config error:` line, exit 2, before anything loads or is written."""
    kind, _, index = name.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{option} = {name}, but no CUDA device is visible on this machine; use {option} = auto (a GPU where there is one) or cpu")
        if index.isdigit() and int(index) >= count:
            raise ConfigError(f"{option} = {name}, but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{option} = {name}, but no MPS (Apple GPU) device is available on this machine; use {option} = auto or cpu")


def pick_device(name: str = "auto") -> torch.device:
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def set_threads(threads: int = 0) -> None:
    torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast on `device`: CUDA with bf16 support, or a CPU with
    AMX or AVX512-BF16 (on this project's AMX machine about 2.2x faster per training step than
    float32; on other CPUs bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """run.precision: auto = bf16 where it is native (native_bf16), bf16 = always, fp32 = never."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast where `precision` (run.precision) asks for it; the caller computes losses
    and scores in float32. Master weights and optimiser state stay float32 either way."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """What a run's numbers depend on beyond its configuration (docs/guide/running.md, "Same seed, same
    numbers"): package versions, device, thread count, CPU model, platform."""
    from importlib import metadata

    versions = {}
    for package in ("feddat", "torch", "transformers", "peft", "safetensors", "numpy", "flwr"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    env: dict[str, Any] = {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
        "cuda": torch.version.cuda,
        "bf16_native": native_bf16(device) if device is not None else None,  # what run.precision auto picks
    }
    if device is not None and device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_int(value: Any) -> bool:
    """An integer as a count in a file is one (JSON's true is an int to Python, not to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (Python's hash() of str is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only on success, so a
    reader (or a crash) never sees half a file. The file gets the mode any new file gets
    (0o666 less the umask), not mkstemp's owner-only 0o600: results are meant to be shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    mode = tmp.stat().st_mode & 0o777  # 0o666 less the umask; some writers (safetensors) recreate the file
    try:
        yield tmp
        os.chmod(tmp, mode)
        fsync(tmp)  # the data on disk before the name points at it: a power cut leaves old or new
        os.replace(tmp, path)
        fsync(path.parent)  # and the rename itself on disk before the caller deletes what it replaces
    finally:
        if tmp.exists():
            tmp.unlink()


def clean_partial_writes(folder: Path) -> int:
    """Delete the temporaries of `atomic_path` ('.NAME.<hex>.tmp') that a kill left anywhere
    under `folder`: never read, safe to drop. Returns how many."""
    stray = list(Path(folder).rglob(".*.tmp"))
    for path in stray:
        path.unlink(missing_ok=True)
    return len(stray)


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """What a dict of tensors weighs on the wire or on disk (safetensors adds a small header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (data only: nothing in it is executed); a missing,
    cut-short or foreign file is a FileNotFoundError or ValueError naming it."""
    return load_tensors_and_metadata(path)[0]


def load_tensors_and_metadata(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`load_tensors`, and the string metadata `save_tensors` stored in the file's header."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError, no ValueError
        raise ValueError(f"{path} is not a readable safetensors file ({err}): cut short or not written by feddat") from err


def read_json(path: str | Path) -> Any:
    """A JSON file feddat wrote; a missing file is a FileNotFoundError, a broken one (cut short,
    edited, another encoding) a ValueError, both naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
