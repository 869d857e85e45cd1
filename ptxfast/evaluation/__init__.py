"""Evaluate trained models on the test split the way the paper reports them.

`evaluate_runs` finds `<runs>/<model>/best.pt` for each of the eight models (one not trained is
listed as missing), scores the test split of the dataset it was trained on at the size it was
trained at, and writes `metrics.json`, `metrics.csv` and the paper's figures (mask overlays,
confusion matrices, ROC curves, recall vs F1) to the output folder.

Every model is scored through the fused forward its exported artifact runs
(`ptxfast.inference.forward.FusedScorer`). Labels follow the paper (`models.label_threshold`): classifiers
and cascades call an image positive when its probability is above 0.5; segmenters when more than `models.min_area(size)` pixels are above 0.3 (375 at 512²),
ranked for ROC-AUC by the k-th largest pixel probability (`models.segmenter_score`), which gives
the same labels at 0.3. Dice is that of the mask the pipeline reports: the pixels above 0.3 of an
image called positive, an empty mask otherwise (empty vs empty = 1); `dice` averages all test
images, `dice_pos` the images with a pneumothorax (the figure SIIM papers usually quote).

Besides the paper's cut-offs, each model gets operating points for target recalls (default 0.90
and 0.95): the highest threshold whose recall on the validation split reaches the target
(`metrics.threshold_for_recall`; segmenters on their k-th-pixel score, whose threshold is then
also the mask's pixel threshold), applied unchanged to the test split. Every row reports
sensitivity, specificity, PPV, NPV, F1 and ROC-AUC with 95% stratified-bootstrap CIs (Wilson
intervals beside them). A temperature fitted on the validation logits calibrates each model
(ECE before and after, `reliability.png`). The thresholds and the temperature are written to
`<runs>/<model>/evaluation.json` beside best.pt (`checkpoint.write_evaluation`), where `ptxfast
export --operating-point` reads them; the checkpoint itself is not touched.

Modules: `results` (EvalConfig, ModelResult, EvalReport, column names), `infer` (decoded splits,
one model over one split, figures at a threshold), `points` (paper and tuned cut-offs, operating
points, calibration), `figures` (the PNGs), `write` (metrics.json/csv, index.html,
evaluation.json content), `run` (the evaluation itself), `render` (the terminal tables).
"""

from ptxfast.evaluation.results import (
    CI_COLUMNS,
    CSV_COLUMNS,
    DEFAULT_OVERLAYS,
    DEFAULT_TARGET_RECALLS,
    METRIC_KEYS,
    N_BOOT,
    EvalConfig,
    EvalError,
    EvalReport,
    ModelResult,
    operating_point_name,
)
from ptxfast.evaluation.run import evaluate_runs, run_evaluation

__all__ = [
    "CI_COLUMNS",
    "CSV_COLUMNS",
    "DEFAULT_OVERLAYS",
    "DEFAULT_TARGET_RECALLS",
    "METRIC_KEYS",
    "N_BOOT",
    "EvalConfig",
    "EvalError",
    "EvalReport",
    "ModelResult",
    "evaluate_runs",
    "operating_point_name",
    "run_evaluation",
]
