"""The benchmark harness (``fusionzoo bench``): measurement primitives and suites."""

from fusionzoo.bench.measure import (
    REFERENCE_DIMS,
    Measurement,
    bench_callable,
    build_encoder,
    build_fusion,
    count_flops,
    fusion_inputs,
    machine_info,
    machine_tag,
    matmul_peak,
    peak_memory,
    script_command,
    time_callable,
    write_report,
)
from fusionzoo.bench.suite import SuiteOptions, run_suite

__all__ = [
    "REFERENCE_DIMS",
    "Measurement",
    "SuiteOptions",
    "bench_callable",
    "build_encoder",
    "build_fusion",
    "count_flops",
    "fusion_inputs",
    "machine_info",
    "machine_tag",
    "matmul_peak",
    "peak_memory",
    "run_suite",
    "script_command",
    "time_callable",
    "write_report",
]
