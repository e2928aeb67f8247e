"""The one precision policy: which device and number format each verb runs at, decided
from what the hardware can do natively.

The CPUs this project meets differ from machine to machine (AVX2 only; AVX-512 with
AVX512_BF16 and VNNI; AMX on newer Xeons). bf16 is fast only where the CPU has bf16
dot-product units (AVX512_BF16 or AMX); an AVX-512 CPU without them emulates bf16 and
runs it slower than fp32, so plain AVX-512 never counts as native bf16. int8 dot
products are native with VNNI (or AMX); without them ONNX Runtime still runs int8
matmuls on AVX2 (`vpmaddubsw`), faster than fp32, only by less.

Requested precisions (`--precision`):

| request | CUDA | CPU with VNNI or AMX | CPU with AVX512_BF16, no VNNI | other CPU |
|---|---|---|---|---|
| `fp32`  | fp32 | fp32 | fp32 | fp32 |
| `auto`  | bf16 if supported, else fp32 | bf16 if native, else fp32 | bf16 | fp32 |
| `fast`  | bf16 if supported, else fp32 | int8 (ONNX Runtime), else bf16 if native, else fp32 | bf16 | int8 (ONNX Runtime), else fp32 |
| `bf16`, `int8` | as named (int8: CPU only) | as named | as named | as named (bf16 emulated: slow) |

`fast` prefers int8 wherever int8 dot products are native: on the AVX-512 + AVX512_BF16 +
VNNI class, ONNX Runtime's int8 image tower ran 1.8x faster than torch's bf16 (ViT-B-16,
37.4 against 21.1 img/s), with 100% top-1 agreement with fp32 on a trained model.

Defaults per verb (`VERB_DEFAULTS`), and why: answers that are ranked labels (`predict`,
`serve`'s /predict) take `fast`, whose top-1 agreement with fp32 is tested and measured;
outputs that are numbers other work builds on (`embed`, `serve`'s /embed, `eval`'s
features) are exact fp32; training computes in fp32 unless told (`auto` = bf16 autocast
where bf16 is native).

Tests and users can override the probe with `TREECLIP_CPU_FEATURES`, a comma list of
flags (`avx2`, `avx512`, `avx512_bf16`, `amx`, `vnni`; `none` for none), so that every
branch of the table is exercised on any machine.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache

from treeclip.errors import TreeclipError

PRECISIONS = ("auto", "fast", "fp32", "bf16", "int8")
"""What `--precision` accepts for inference (predict, embed, serve, eval)."""
TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""What `treeclip train --precision` accepts (autocast; fp16 with a grad scaler on CUDA)."""

VERB_DEFAULTS = {"predict": "fast", "serve": "fast", "embed": "fp32", "serve-embed": "fp32",
                 "eval": "fp32", "train": "fp32"}
"""The default precision of each verb; see the module docstring for the reasons."""

FEATURES_ENV = "TREECLIP_CPU_FEATURES"
FLAGS = ("avx2", "avx512", "avx512_bf16", "amx", "vnni")


@dataclass(frozen=True)
class CpuFeatures:
    """The x86 features that decide precision. `source` says where they came from."""

    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False
    amx: bool = False
    vnni: bool = False
    source: str = "probe"

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX512_BF16 or AMX); plain AVX-512 emulates."""
        return self.avx512_bf16 or self.amx

    @property
    def native_int8(self) -> bool:
        """int8 dot products in hardware (VNNI or AMX)."""
        return self.vnni or self.amx

    def describe(self) -> str:
        """The flags as a short string for logs and benchmark records, e.g. `avx2`."""
        on = [f for f in FLAGS if getattr(self, f)]
        return ",".join(on) or "none"


def parse_features(text: str, source: str = FEATURES_ENV) -> CpuFeatures:
    """`CpuFeatures` from a comma list of flags (`none` for none); unknown flags are an error."""
    flags = {f.strip().lower() for f in text.split(",") if f.strip()} - {"none"}
    unknown = sorted(flags - set(FLAGS))
    if unknown:
        raise TreeclipError(f"{source}={text!r}: unknown CPU feature(s) {', '.join(unknown)}; "
                            f"expected some of {', '.join(FLAGS)} or none")
    return CpuFeatures(**{f: f in flags for f in FLAGS}, source=source)


def cpu_features() -> CpuFeatures:
    """This machine's features, or those `TREECLIP_CPU_FEATURES` forces."""
    forced = os.environ.get(FEATURES_ENV)
    if forced is not None:
        return parse_features(forced)
    return _probe()


@lru_cache(maxsize=1)
def _probe() -> CpuFeatures:
    flags = _torch_flags()
    if flags is None:
        flags = _proc_cpuinfo_flags()
    return CpuFeatures(**flags, source="probe")


def _torch_flags() -> dict[str, bool] | None:
    """PyTorch's cpuinfo-backed probes (accurate on any OS); None where they are missing."""
    try:
        import torch.cpu as tc

        return {"avx2": bool(tc._is_avx2_supported()), "avx512": bool(tc._is_avx512_supported()),
                "avx512_bf16": bool(tc._is_avx512_bf16_supported()), "amx": bool(tc._is_amx_tile_supported()),
                "vnni": bool(tc._is_vnni_supported())}
    except Exception:  # an older or newer torch without these private probes
        return None


def _proc_cpuinfo_flags() -> dict[str, bool]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        line = ""
    have = set(line.partition(":")[2].split())
    return {"avx2": "avx2" in have, "avx512": "avx512f" in have, "avx512_bf16": "avx512_bf16" in have,
            "amx": "amx_tile" in have, "vnni": bool({"avx512_vnni", "avx_vnni"} & have)}


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_device(device: str | None):
    """`auto`/None: CUDA when available, else CPU; otherwise as given (checked)."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TreeclipError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, mps or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TreeclipError(f"--device {device}: CUDA is not available on this machine")
    return dev


def resolve_precision(requested: str, device, *, features: CpuFeatures | None = None,
                      onnx: bool | None = None) -> str:
    """The concrete precision (`fp32`, `bf16` or `int8`) that `requested` means on
    `device` (a `torch.device`); see the table in the module docstring."""
    if requested not in PRECISIONS:
        raise TreeclipError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    if requested == "int8" and device.type != "cpu":
        raise TreeclipError("--precision int8 runs on the CPU only; use bf16 or fp32 on a GPU")
    if requested not in ("auto", "fast"):
        return requested
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu":
        return "fp32"  # mps and others: no claim about their bf16 speed
    features = features or cpu_features()
    has_onnx = requested == "fast" and (onnxruntime_available() if onnx is None else onnx)
    if has_onnx and features.native_int8:
        return "int8"
    if features.native_bf16:
        return "bf16"
    return "int8" if has_onnx else "fp32"


def resolve_train_precision(requested: str, device, *, features: CpuFeatures | None = None) -> str:
    """The autocast precision of training: `auto` is bf16 on CUDA with bf16 and on CPUs
    with native bf16, else fp32; fp16 on a CPU is bf16 (CPU autocast has no fp16 with a
    gradient scaler), so the run reports what it ran; the others as named."""
    if requested not in TRAIN_PRECISIONS:
        raise TreeclipError(f"unknown precision {requested!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
    if requested == "fp16" and device.type == "cpu":
        return "bf16"
    if requested != "auto":
        return requested
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and (features or cpu_features()).native_bf16:
        return "bf16"
    return "fp32"


def autocast(precision: str, device):
    """The autocast context of a resolved training precision (a no-op for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
