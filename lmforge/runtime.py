"""The one place that decides device, precision, compile and distributed setup.

Everything else receives a `Runtime` and asks it (`runtime.autocast()`,
`runtime.device`, ...) instead of inspecting the hardware itself.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import torch
import torch.distributed as dist

Precision = Literal["auto", "bf16", "fp16", "fp32"]

# Width from which bf16 autocast pays on a CPU with AMX. Measured by
# bench/throughput.py on a 2-core AVX-512+AMX machine: at n_embd 128 the casts
# and small ops around the matmuls cost more than AMX saves (bf16 ~0.8x fp32);
# from 256 on, bf16 wins (see README "Throughput").
CPU_BF16_MIN_WIDTH = 256


@lru_cache(maxsize=1)
def cpu_has_amx_or_avx512_bf16() -> bool:
    """True when the CPU has native bf16 matmul units (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


@dataclass
class Runtime:
    """Resolved device/precision/distributed facts for one process."""

    device: torch.device
    precision: Literal["bf16", "fp16", "fp32"]
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    compile: bool = False
    notes: list[str] = field(default_factory=list)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # fsdp: the trainer shards the model (training/fsdp.py) and wrap leaves it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        """FSDP: parameters are sharded over the processes and checkpoints are written by all of them (DCP format,
        also on one process, so the slots load on any number)."""
        return self.parallel == "fsdp"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling; bf16 and fp32 don't (the scaler is then disabled)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def fused_adamw_supported(self) -> bool:
        return self.device.type in ("cuda", "cpu", "mps")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def memory_stats(self) -> dict[str, float]:
        """Peak accelerator memory in GiB, or the process's max RSS on CPU."""
        if self.device.type == "cuda":
            return {"mem_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
        try:
            import resource

            return {"mem_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        except (ImportError, OSError):
            return {}

    def available_memory(self) -> int | None:
        """Bytes free for this process's tensors: the accelerator's free memory, or MemAvailable on CPU (None: unknown)."""
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0])
        if self.device.type != "cpu":
            return None
        try:
            with open("/proc/meminfo") as f:
                line = next(line for line in f if line.startswith("MemAvailable:"))
            return int(line.split()[1]) * 1024
        except (OSError, StopIteration, ValueError):
            return None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's value on every rank (used for the interactive preset choice)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def wrap(self, model: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        """The module a train step runs: compiled when asked, DDP-wrapped under torchrun (the raw one is what is saved)."""
        if self.compile:
            model = torch.compile(model)
        if self.distributed and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                                            find_unused_parameters=find_unused_parameters)
        return model

    def gradient_sync(self, model: torch.nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Gradient accumulation: reduce gradients over the processes only on the last micro-batch of a step."""
        from torch.distributed.fsdp import FSDPModule
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(model, DistributedDataParallel) and not last_micro_batch:
            return model.no_sync()
        inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the sharded module
        if isinstance(inner, FSDPModule):
            inner.set_requires_gradient_sync(last_micro_batch)
        return contextlib.nullcontext()

    def all_reduce_mean_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks, on the device (a NaN on any rank makes the mean NaN, so all ranks see it)."""
        if not self.distributed:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.world_size

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
              "Timed out", "timed out", "Socket Timeout", "DistNetworkError")


def is_peer_failure(err: BaseException) -> bool:
    """A collective failed because another process of the run died or stopped answering (not a bug in this one)."""
    if isinstance(err, (dist.DistNetworkError, dist.DistBackendError)):
        return True
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # the group may be gone by now: ask torchrun's environment
    return isinstance(err, RuntimeError) and distributed and any(p in str(err) for p in _PEER_LOST)


def _pick_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _pick_precision(requested: Precision, device: torch.device, model_width: int | None, notes: list[str]) -> str:
    if requested != "auto":
        if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision 'bf16' is not supported on this GPU; use 'fp16' or 'auto'")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_amx_or_avx512_bf16():
        if model_width is not None and model_width < CPU_BF16_MIN_WIDTH:
            notes.append(f"precision fp32: width {model_width} < {CPU_BF16_MIN_WIDTH}, where bf16 does not pay on CPU")
            return "fp32"
        return "bf16"
    return "fp32"


def init_distributed(device: torch.device) -> tuple[int, int, int]:
    """Join the process group torchrun describes in the environment; (rank, local_rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10), **kwargs)
    return rank, local_rank, world


def setup_runtime(
    device: str = "auto",
    precision: Precision = "auto",
    compile: bool = False,
    model_width: int | None = None,
    deterministic: bool = False,
    parallel: Literal["ddp", "fsdp"] = "ddp",
) -> Runtime:
    """Resolve the runtime once per process; pass the result down."""
    notes: list[str] = []
    dev = _pick_device(device)
    rank, local_rank, world = init_distributed(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 on Ampere+: ~free speed for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    prec = _pick_precision(precision, dev, model_width, notes)
    if compile and dev.type == "mps":
        notes.append("torch.compile is not used on mps")
        compile = False
    return Runtime(dev, prec, rank, local_rank, world, compile, notes, parallel)


# Dense bf16/fp16 tensor-core peaks (no sparsity), FLOP/s, by device-name fragment.
# From the vendors' data sheets; MFU on these is tokens/s * FLOPs/token / peak.
_CUDA_PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def lookup_cuda_peak_flops(name: str) -> float | None:
    for key, value in _CUDA_PEAK_FLOPS.items():
        if key in name:
            return value
    return None


def measure_matmul_peak_flops(runtime: Runtime, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-N square matmul throughput in the runtime's compute dtype: the MFU denominator on CPUs without shapes."""
    return measure_gemm_peak_flops(runtime, [(size, size, size)], repeats)


GemmShape = tuple[int, int, int]  # (M tokens, K in features, N out features) of one Linear's forward matmul


def gemm_shapes(model: torch.nn.Module, tokens: int) -> list[GemmShape]:
    """The distinct forward matmuls of the model's Linear layers on a micro-batch of `tokens` tokens."""
    return sorted({(tokens, m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)})


def measure_gemm_peak_flops(runtime: Runtime, shapes: list[GemmShape], repeats: int = 10) -> float:
    """The best FLOP/s any of the model's own matmuls reaches (best of `repeats` each, compute dtype).

    The operands come from a generator of their own: the run's random stream (dropout, data order) must not depend
    on whether the peak was measured now or read from the cache."""
    import time

    dtype = runtime.autocast_dtype or torch.float32
    generator = torch.Generator(device=runtime.device).manual_seed(0)
    best_rate = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=runtime.device, dtype=dtype, generator=generator)
        b = torch.randn(k, n, device=runtime.device, dtype=dtype, generator=generator)
        a @ b  # warm-up: kernel selection
        best = float("inf")
        for _ in range(repeats):
            runtime.synchronize()
            t0 = time.perf_counter()
            a @ b
            runtime.synchronize()
            best = min(best, time.perf_counter() - t0)
        best_rate = max(best_rate, 2 * m * k * n / max(best, 1e-9))
    return best_rate


def _machine() -> str:
    """This CPU's model name (the key of its measured peaks)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "cpu")
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def peak_cache_path() -> str:
    """Where measured peaks are kept: $LMFORGE_CACHE_DIR (default ~/.cache/lmforge) / peak_flops.json."""
    return os.path.join(os.path.expanduser(os.environ.get("LMFORGE_CACHE_DIR", "~/.cache/lmforge")), "peak_flops.json")


def cached_peak_flops(runtime: Runtime, shapes: list[GemmShape]) -> float:
    """The measured peak for this machine, dtype, thread count and GEMM shapes: measured once and kept in
    `peak_cache_path()` (so two runs of a config divide by the same number); LMFORGE_REMEASURE_PEAK=1 measures again."""
    import json

    dtype = str(runtime.autocast_dtype or torch.float32).replace("torch.", "")
    device = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else f"cpu {_machine()}"
    key = f"{device} | {dtype} | threads {torch.get_num_threads()} | {shapes}"
    path = peak_cache_path()
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {}
    if key in table and os.environ.get("LMFORGE_REMEASURE_PEAK", "") in ("", "0"):
        return float(table[key])
    table[key] = measure_gemm_peak_flops(runtime, shapes)
    try:  # best effort: a read-only home only costs a re-measurement next time
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(table, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    return float(table[key])


def peak_flops(runtime: Runtime, override: float | None = None, shapes: list[GemmShape] | None = None) -> float:
    """The peak MFU is measured against: the user's number, a data-sheet value for known GPUs, else the best rate
    of the model's own GEMM `shapes` measured once per machine and dtype (cached), else a square-matmul probe."""
    if override:
        return override
    if runtime.device.type == "cuda":
        found = lookup_cuda_peak_flops(torch.cuda.get_device_name(runtime.device))
        if found:
            return found
    if shapes:
        return cached_peak_flops(runtime, shapes)
    return measure_matmul_peak_flops(runtime)
