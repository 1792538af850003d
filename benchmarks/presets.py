"""Problem sizes for ``--quick`` (2 CPU cores, < 5 min), ``--full`` and ``--gpu`` (one H100/H200)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Preset:
    """Every size the suite uses; stored in the results JSON."""

    name: str
    mlp_batches: tuple[int, ...]
    conv_batches: tuple[int, ...]
    steps: tuple[int, ...]  # N for measurements 1, 2, 5
    torch_batches: tuple[int, ...]
    scaling_steps: tuple[int, ...] = (10, 100, 1000)
    scaling_batch: int = 16
    temp_elementwise: tuple[int, int] = (64, 4096)  # measurement 3: (B, floats) of the 2nd size
    seeds_batch: int = 256  # measurements 4a, 4b
    shard_batch: int = 256  # measurement 4c (per call, split over 8 devices)
    shard_devices: int = 8
    memory_batch: int = 16  # measurement 6: memory_batch x memory_dim floats
    memory_dim: int = 1 << 20
    memory_steps: tuple[int, int] = (2, 6)  # per-step time = difference / (N2 - N1)
    memory_key_impls: tuple[str, ...] = ("threefry2x32", "rbg", "philox4x32")
    memory_rw_factor: int = 10  # the read-write loop runs this many times more iterations
    call_repeats: int = 2000  # measurement 8: timed calls of each variant
    budget_s: float = 1.0  # timed seconds per variant (repeats adapt to it)
    min_repeats: int = 3
    conv_channels: int = 32
    unet_batches: tuple[int, ...] = (1, 64)  # measurement 9
    train_batches: tuple[int, ...] = (64, 512)  # measurement 10
    # measurement 11: seeds per job and batch, per model
    generate_seeds: dict = field(default_factory=lambda: {"mixture": 65536, "unet": 1024})
    generate_batch: dict = field(default_factory=lambda: {"mixture": 4096, "unet": 256})
    diffrax_batches: tuple[int, ...] = (1, 32, 4096)  # measurement 12
    solver_batches: tuple[int, ...] = (1, 4096)  # measurement 14
    likelihood_batches: tuple[int, ...] = (16, 256)  # measurement 15
    # (model, B, N) measured in measurement 1/5 on top of the product above
    extra_cases: tuple[tuple[str, int, int], ...] = ()
    # measurement ids in run order (a time budget skips the tail); empty: run.py's order
    order: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def memory_floats(self) -> int:
        return self.memory_batch * self.memory_dim


QUICK = Preset(
    name="quick",
    mlp_batches=(1, 16, 256, 4096),
    conv_batches=(1, 16),
    steps=(18,),
    torch_batches=(1, 16, 256, 4096),
    scaling_batch=16,
    seeds_batch=256,
    shard_batch=256,
    memory_batch=4,  # 4M floats (16M in --full) to stay under 5 minutes on 2 cores
    memory_dim=1 << 20,
    budget_s=0.6,
    extra_cases=(("mlp", 1, 50),),
    likelihood_batches=(16,),
)

FULL = Preset(
    name="full",
    mlp_batches=(1, 16, 256, 4096),
    conv_batches=(1, 16, 64),
    steps=(18, 50),
    torch_batches=(1, 16, 256, 4096),
    scaling_batch=256,
    seeds_batch=256,
    shard_batch=1024,
    memory_batch=16,
    memory_dim=1 << 20,
    memory_steps=(2, 10),
    budget_s=2.0,
    min_repeats=5,
)

# One H100/H200 within 5 minutes (benchmarks/gpu.sh adds a time budget as a safety net).
GPU = Preset(
    name="gpu",
    mlp_batches=(1, 256, 4096, 65536),
    conv_batches=(1, 64),
    steps=(18,),
    torch_batches=(1, 256, 4096, 65536),
    scaling_batch=256,
    seeds_batch=256,
    shard_batch=1024,
    memory_batch=64,
    memory_dim=1 << 22,  # 256M floats (1 GiB): a read-write pass takes ~0.5 ms on HBM3
    memory_steps=(4, 20),
    memory_rw_factor=4,
    budget_s=0.5,
    min_repeats=5,
    extra_cases=(("mlp", 1, 50),),
    unet_batches=(1, 1024),
    train_batches=(512, 8192, 65536),
    diffrax_batches=(1, 32, 4096, 65536),
    solver_batches=(1, 65536),
    likelihood_batches=(256, 4096),
    order=("6", "1", "5", "8", "12", "9", "11", "10", "2", "3", "7", "4ab", "4c", "13", "14", "15", "16"),
)

PRESETS = {p.name: p for p in (QUICK, FULL, GPU)}
