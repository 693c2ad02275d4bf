"""LUT compression: ``lut_flatbuffer(int8_flatbuffer)``, the int8 build with each filter
stored as b-bit indices into value tables, decoded at run time by TFLM's DECODE
operators (``tflite_micro.tensorflow.lite.micro.compression``, in the wheel sweeper
installs); ``lut_plan`` says which filters get which index width.

How TFLM decodes, and why the tables must follow the tensor's quantization. The
DECODE kernel (tflite-micro ``kernels/decode_state_lut.cc``, ``DecodeStateLut::Setup``)
takes its channel count from the *decoded tensor's quantization* (the number of scales),
not from the table layout the compressor wrote: a per-tensor-quantized tensor is decoded
with one table, a per-channel one with a table per channel, stepping by the table
stride. So:

- a dense kernel (one scale here) compressed with a table per output row is decoded
  with row 0's table for every row: right only when every row happens to hold the same
  set of values. Ternary and binary rows do ({-127, 0, 127}, {-127, 127}), which is why
  their LUT builds matched the int8 build while an int4 one (rows with different
  subsets of up to 16 values) did not: the cause of the discrepancy the issue reports;
- a convolution (a scale per channel) compressed with one table is decoded reading
  channel c's "table" at c x stride, past the only table: garbage.

``lut_plan`` therefore gives each filter the table layout of its quantization: one table
per quantization channel (axis 0 for CONV_2D, 3 for DEPTHWISE_CONV_2D) or one for the
tensor, and the smallest index width that holds the most distinct values any table
holds (1 to 7 bits: the DECODE format's limit). The decoded values are the int8 build's
exactly, so a LUT build's outputs must equal the int8 build's bit for bit
(``builds`` checks it on the samples it is given).

The cost: DECODE writes each decoded filter into the arena (reference TFLM, no
alternate decompression memory), so the arena grows by about the largest filter.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeper.deploy.common import DeployError
from sweeper.deploy.filters import Filter, filters, read

MAX_INDEX_BITS = 7  # the DECODE format's widest index (LutAncillaryData.MAX_BITWIDTH)
DCM_BYTES = 16  # the decode metadata header before each filter's value tables


@dataclass(frozen=True)
class LutTensor:
    """One filter the LUT build compresses: its index width and its size before/after."""

    filter: Filter
    bits: int

    @property
    def compressed_bytes(self) -> int:
        """Packed indices + one table per row, each padded to the longest, + header."""
        indices = -(-self.filter.size * self.bits // 8)
        return indices + len(self.filter.channels) * self.filter.distinct + DCM_BYTES


def index_bits(distinct: int) -> int:
    """The smallest index width that addresses ``distinct`` table entries (1 at least)."""
    return max(1, (distinct - 1).bit_length())


def lut_plan(model) -> list[LutTensor]:
    """The filters worth compressing: those whose most-populated table needs at most
    7-bit indices and whose indices and tables take fewer bytes than the int8 values."""
    plan = []
    for item in filters(model):
        bits = index_bits(item.distinct)
        if bits <= MAX_INDEX_BITS:
            candidate = LutTensor(item, bits)
            if candidate.compressed_bytes < item.size:
                plan.append(candidate)
    return plan


def lut_flatbuffer(int8_flatbuffer: bytes) -> tuple[bytes, str]:
    """The LUT-compressed flatbuffer and a one-line summary of what was compressed, or
    ``DeployError`` saying why no filter can be."""
    from tflite_micro.tensorflow.lite.micro.compression import compress, spec

    model = read(int8_flatbuffer)
    plan = lut_plan(model)
    if not plan:
        most = max((f.distinct for f in filters(model)), default=0)
        raise DeployError(f"no filter gains from LUT compression: up to {most} distinct int8 "
                          f"values per table need {index_bits(most)}-bit indices "
                          f"(the DECODE format holds at most {MAX_INDEX_BITS})")
    specs = [spec.Tensor(subgraph=0, tensor=item.filter.tensor, compression=[
        spec.LookUpTableCompression(index_bitwidth=item.bits, mode=(
            spec.PerTensor() if item.filter.axis is None else spec.PerChannel(axis=item.filter.axis)))])
        for item in plan]
    compressed = bytes(compress(int8_flatbuffer, specs))
    widths = sorted({item.bits for item in plan})
    return compressed, (f"{len(plan)} of {len(filters(model))} filters as "
                        f"{'/'.join(map(str, widths))}-bit indices")
