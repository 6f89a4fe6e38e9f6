"""The accelerator's parameters (docs/hardware.md §1), shared by the compiler, the cycle model,
the cost model and the generated Verilog."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError

# Fixed by the design (docs/hardware.md §1).
MAX_WEIGHT_BITS = 8
MAX_ACT_BITS = 8
ACC_BITS = 32
MULTIPLIER_BITS = 32
MAX_SHIFT = 63
CODEBOOK_INDEX_BITS = 2
CODEBOOK_SIZE = 4
DESCRIPTOR_WORDS = 16
PARAM_WORDS_PER_CHANNEL = 3


@dataclass(frozen=True)
class AccelConfig:
    pe: int = 8                         # R: output channels in parallel
    simd: int = 8                       # C: input terms per row per cycle
    bus_bits: int = 64                  # external memory word, bits per cycle
    act_buffer_bytes: int = 65536       # each of the two activation buffers
    weight_buffer_entries: int = 65536  # weights of one channel group
    max_kernel: int = 7
    clock_mhz: float = 200.0

    def __post_init__(self):
        for name in ("pe", "simd", "act_buffer_bytes", "weight_buffer_entries", "max_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"accelerator {name} must be a positive integer, got {value!r}")
        if not isinstance(self.bus_bits, int) or self.bus_bits < 32 or self.bus_bits % 32:
            raise ConfigError(f"accelerator bus_bits must be a positive multiple of 32, got {self.bus_bits!r}")
        if not self.clock_mhz > 0:
            raise ConfigError(f"accelerator clock_mhz must be positive, got {self.clock_mhz!r}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "AccelConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown accelerator parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)
