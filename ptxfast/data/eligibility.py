"""Which inputs a chest-radiograph model may label: a rule over three DICOM header tags.

A pneumothorax model has seen frontal chest radiographs only; a head CT, an ultrasound or a
lateral view ranked among its positives is worse than no answer. `check` reads what the header
already says — Modality, ViewPosition, BodyPartExamined — before any pixel is decoded (the
reader calls it on the parsed header, `ptxfast.data.dicom.load_image(..., eligibility=...)`):

- "default": Modality CR, DX or DR is a radiograph; any other modality the standard defines
  (CT, MR, US, NM, PT, RT*, SR, SEG, ECG, MG, XA …) is not; a lateral ViewPosition is not; a
  BodyPartExamined that names another part of the body is not. A header that says nothing
  (no Modality, "OT"/"SC" captures, PNG/JPEG with no header at all) is scored, with a note.
- "strict": only a DICOM that says CR/DX/DR, and whose ViewPosition (when present) is PA or AP
  and BodyPartExamined (when present) is chest; files that say nothing are not scored.
- "off": no check.

`Verdict.reason` is the one-line reason a file is not eligible (`Modality CT`), which the scorer
turns into the row's error (`not_eligible_message`).
"""

from __future__ import annotations

from dataclasses import dataclass

RULES = ("strict", "default", "off")
DEFAULT_RULE = "default"
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})
# Say nothing about what the pixels are: other / secondary capture.
SILENT_MODALITIES = frozenset({"OT", "SC"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})
# Lateral and decubitus views (DICOM's ViewPosition defined terms and common spellings).
LATERAL_VIEWS = frozenset(
    {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL", "LL-LAT"}
)
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "THORACIC")
# Body parts (CID 4031 terms and common free text) that are clearly not a chest.
OTHER_BODY_PARTS = frozenset(
    {
        "HEAD", "BRAIN", "SKULL", "FACE", "SINUS", "ORBIT", "JAW", "TMJ", "NECK", "CSPINE",
        "TSPINE", "LSPINE", "SSPINE", "SPINE", "COCCYX", "SACRUM", "ABDOMEN", "PELVIS", "HIP",
        "KNEE", "LEG", "ANKLE", "FOOT", "HEEL", "TOE", "FEMUR", "TIBIA", "FIBULA", "ARM",
        "HUMERUS", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER", "THUMB", "SHOULDER",
        "CLAVICLE", "EXTREMITY", "BREAST", "KIDNEY", "LIVER", "HEART", "BLADDER", "PROSTATE",
        "UTERUS", "COLON", "STOMACH", "PHANTOM",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """Whether a file may be labelled, and why (not) in one phrase."""

    eligible: bool
    reason: str | None = None  # why not: "Modality CT", "ViewPosition LL", ...
    note: str | None = None  # eligible, but on no evidence: "no DICOM header", "no Modality"


def _norm(value: object) -> str | None:
    text = " ".join(str(value).upper().split()) if value is not None else ""
    return text or None


def check(
    modality: str | None,
    view_position: str | None = None,
    body_part: str | None = None,
    *,
    dicom: bool = True,
    rule: str = DEFAULT_RULE,
) -> Verdict:
    """The verdict of `rule` on a file's header tags (None: absent or empty; `dicom=False`: a
    PNG/JPEG, which has none)."""
    if rule not in RULES:
        raise ValueError(f"eligibility rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "off":
        return Verdict(True)
    strict = rule == "strict"
    if not dicom:
        if strict:
            return Verdict(False, "no DICOM header (PNG/JPEG) to say it is a chest radiograph")
        return Verdict(True, note="no DICOM header (PNG/JPEG): not checked")
    mod, view, part = _norm(modality), _norm(view_position), _norm(body_part)
    note = None
    if mod is None or mod in SILENT_MODALITIES:
        said = "no Modality" if mod is None else f"Modality {mod}"
        if strict:
            return Verdict(False, f"{said} (not CR, DX or DR)")
        note = f"{said}: not checked"
    elif mod not in RADIOGRAPH_MODALITIES:
        return Verdict(False, f"Modality {mod}")
    if view is not None:
        if view in LATERAL_VIEWS or "LAT" in view.split():
            return Verdict(False, f"ViewPosition {view} (lateral)")
        if strict and view not in FRONTAL_VIEWS:
            return Verdict(False, f"ViewPosition {view} (not PA or AP)")
    if part is not None and not any(w in part for w in CHEST_WORDS):
        words = set(part.replace("_", " ").replace("-", " ").split())
        if strict or words & OTHER_BODY_PARTS:
            return Verdict(False, f"BodyPartExamined {part}")
    return Verdict(True, note=note)


NOT_ELIGIBLE_PREFIX = "not eligible: "
_NOT_ELIGIBLE_TAIL = " (chest radiographs only; --eligibility off to score anyway)"


def not_eligible_message(reason: str) -> str:
    """The row error of a file the rule refuses (the one wording every engine writes)."""
    return f"{NOT_ELIGIBLE_PREFIX}{reason}{_NOT_ELIGIBLE_TAIL}"


def reason_of(error: str) -> str | None:
    """The reason in a row error written by `not_eligible_message`, None for other errors."""
    if not error.startswith(NOT_ELIGIBLE_PREFIX):
        return None
    return error[len(NOT_ELIGIBLE_PREFIX) :].removesuffix(_NOT_ELIGIBLE_TAIL)


__all__ = [
    "DEFAULT_RULE",
    "NOT_ELIGIBLE_PREFIX",
    "RULES",
    "Verdict",
    "check",
    "not_eligible_message",
    "reason_of",
]
