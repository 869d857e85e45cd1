"""Side-by-side backend benchmark: throughput, latency percentiles, memory, GPU telemetry, parity.

`run_bench(BenchConfig(...))` times one model on every backend variant that can run here (eager
fp32 / fp16 / bf16, TorchScript, inductor, TensorRT, ONNX Runtime, OpenVINO, and an exported
artifact) at several batch sizes, the way timm's benchmark.py and nanoGPT's bench.py do:
warm-up first, the device synchronised around each timed step, `time.perf_counter`, inputs
rotated among pre-made device buffers, and several repeats so the spread between them shows.
Each variant × batch size is one flat dict (a row). A variant that cannot run here is a row
too, with the reason; one that fails while running is a row with its error, and the others go
on. Then, per variant:

- parity against eager fp32 on a labelled set (a dataset's test split, or synthetic phantoms in
  memory): F1, recall, label agreement, max |Δprob| (`ptxfast.metrics.parity`);
- the stages of scoring — decoding real files, the pinned host→device copy, the model, the
  device→host copy — as ms per image and the images/s each stage alone allows, so the user sees
  what bounds end-to-end speed.

The report (JSON with every figure, and markdown) is rewritten after each row, so a run that is
cut short still leaves what it measured.

The modules, one idea each:
- `config`: `BenchConfig`, `BenchError`, the defaults per device type;
- `ptxfast.timing` (beside this package, since the scorer uses it too): warm-up,
  synchronised timing of a callable, percentiles, the scorer's model-only images/s;
- `measure`: one throughput row's figures (timing, peak memory, GPU telemetry, energy);
- `plan`: the model to time and the variants to build, and building them;
- `parity`: the labelled set, the eager fp32 reference, parity rows;
- `stages`: the stages of scoring timed apart;
- `results`: `BenchReport` and its row keys;
- `render`: the tables, markdown, terminal output and plots;
- `run`: `run_bench`, the run loop.
"""

from ptxfast.benchmarking.config import BenchConfig, BenchError
from ptxfast.benchmarking.measure import energy_per_image, measure
from ptxfast.benchmarking.parity import agreement_row
from ptxfast.benchmarking.plan import DEFAULT_CPU, DEFAULT_GPU, VARIANTS, plan_variants
from ptxfast.benchmarking.render import to_markdown, write_plots
from ptxfast.benchmarking.results import PARITY_KEYS, ROW_KEYS, STAGE_KEYS, BenchReport
from ptxfast.benchmarking.run import run_bench
from ptxfast.benchmarking.stages import measure_stages, stage_figures
from ptxfast.timing import (
    latency_ms,
    model_only_images_per_s,
    percentiles,
    summarize_times,
    time_predictor,
)

__all__ = [
    "DEFAULT_CPU",
    "DEFAULT_GPU",
    "PARITY_KEYS",
    "ROW_KEYS",
    "STAGE_KEYS",
    "VARIANTS",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "energy_per_image",
    "latency_ms",
    "measure",
    "measure_stages",
    "model_only_images_per_s",
    "agreement_row",
    "percentiles",
    "plan_variants",
    "run_bench",
    "stage_figures",
    "summarize_times",
    "time_predictor",
    "to_markdown",
    "write_plots",
]
