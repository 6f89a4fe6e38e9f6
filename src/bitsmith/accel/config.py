"""The accelerator's parameters (docs/hardware.md §1), shared by the compiler, the cycle model,
the cost model and the generated Verilog."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bitsmith.errors import ConfigError
from bitsmith.integer.arithmetic import MAX_SHIFT
from bitsmith.integer.arithmetic import MULTIPLIER_BITS as IR_MULTIPLIER_BITS

# Fixed by the design (docs/hardware.md §1). Each hardware width is named once, here; the compiler,
# the cycle model, the memory writer/readers, the cost model and the Verilog generator import it.
# Where the IR has its own limit (bitsmith.integer.arithmetic) the hardware must hold it, checked below.
MAX_WEIGHT_BITS = 8          # widest dense weight; W8.hex stores every dense weight in one byte
MAX_ACT_BITS = 8             # widest activation code; the activation memory holds one byte per code
WEIGHT_BYTE_BITS = 8         # bits per dense weight in W8.hex and per weight-ring entry
ACC_BITS = 32                # the PE rows' accumulators and raw (no-requant) outputs
MULTIPLIER_BITS = 32         # the requant unit's signed multiplier register (m ≥ 0, so m < 2^31)
SHIFT_FIELD_BITS = 6         # the requant unit's shift field: it can hold 0..63; the IR's limit
                             # (integer.arithmetic.MAX_SHIFT = 62) is what the compiler accepts
PARAM_WORD_BITS = 32         # param.hex words (descriptors, bias / multiplier / shift tables)
CODEBOOK_INDEX_BITS = 2      # a codebook layer's weight index, W2.hex
CODEBOOK_SIZE = 1 << CODEBOOK_INDEX_BITS   # codebook registers per layer
CODEBOOK_VALUE_BITS = 8      # each codebook register (signed), CB8.hex
DESCRIPTOR_WORDS = 22
DESCRIPTOR_FIELD_MAX = 255   # kernel / stride / padding descriptor fields are 8 bits
PARAM_WORDS_PER_CHANNEL = 3  # bias, multiplier, shift (+ one input address word when a layer has a channel map)
LANE_MULTIPLIER_BITS = 16    # the pool lanes' signed multiplier register (Add's m_a, m_b; 1 for average pools):
                             # m ≥ 0, so m ≤ 2^15 − 1, which is what lowering chooses (docs/arithmetic.md §5a)

ACC_MIN, ACC_MAX = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
MULTIPLIER_MAX = (1 << (MULTIPLIER_BITS - 1)) - 1
LANE_MULTIPLIER_MAX = (1 << (LANE_MULTIPLIER_BITS - 1)) - 1

# The hardware holds everything the IR can express for the ops it runs.
assert MAX_SHIFT < 1 << SHIFT_FIELD_BITS, "the requant shift field cannot hold the IR's largest shift"
assert MULTIPLIER_BITS == IR_MULTIPLIER_BITS[1], "the requant multiplier register holds the IR's widest multiplier"
assert WEIGHT_BYTE_BITS >= MAX_WEIGHT_BITS and CODEBOOK_VALUE_BITS <= MAX_WEIGHT_BITS


#: What the PE array's controller skips (docs/hardware.md §5, "Zero skipping"): nothing; a term block
#: whose weights are all zero in the channel group; or also a block whose every product has a zero
#: operand (zero weight, or an activation equal to its zero point / a padding position).
ZERO_SKIP = ("none", "weights", "both")


@dataclass(frozen=True)
class AccelConfig:
    pe: int = 8                         # R: output channels in parallel
    simd: int = 8                       # C: input terms per row per cycle
    bus_bits: int = 64                  # external memory word, bits per cycle
    act_buffer_bytes: int = 131072      # the one activation memory (every live map, §6); the
                                        # two 64 KiB ping-pong buffers it replaced held as much
    weight_buffer_entries: int = 65536  # the weight ring, in 8-bit entries (§4, §5)
    max_kernel: int = 7
    clock_mhz: float = 200.0
    zero_skip: str = "none"             # one of ZERO_SKIP; changes cycles only, never a value

    def __post_init__(self):
        for name in ("pe", "simd", "act_buffer_bytes", "weight_buffer_entries", "max_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"accelerator {name} must be a positive integer, got {value!r}")
        if not isinstance(self.bus_bits, int) or self.bus_bits < 32 or self.bus_bits % 32:
            raise ConfigError(f"accelerator bus_bits must be a positive multiple of 32, got {self.bus_bits!r}")
        if self.zero_skip not in ZERO_SKIP:
            raise ConfigError(f"accelerator zero_skip must be one of {', '.join(ZERO_SKIP)}, got {self.zero_skip!r}")
        if not self.clock_mhz > 0:
            raise ConfigError(f"accelerator clock_mhz must be positive, got {self.clock_mhz!r}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, **options) -> "AccelConfig":
        """The configuration from command-line style options: None means "the default"; an unknown
        name is a ConfigError. Every command builds its configuration this one way."""
        return cls.from_json({k: v for k, v in options.items() if v is not None})

    @classmethod
    def from_json(cls, data: dict) -> "AccelConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown accelerator parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)
