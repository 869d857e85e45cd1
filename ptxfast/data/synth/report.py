"""The free-text report of a phantom's findings, as the CANDID-PTX CSV carries one per image.

Its words follow the findings (`PhantomMeta`), so a report never contradicts the mask; the
phrasing varies by the image's own generator.
"""

from __future__ import annotations

import numpy as np

from ptxfast.data.phantom import PhantomMeta, Pneumothorax

_SITE_WORDS = {
    "apical": "apical",
    "apicolateral": "apicolateral",
    "lateral": "lateral",
    "basal": "basal",
    "large": "",
}
_NEGATIVE = (
    "No pneumothorax.",
    "No pneumothorax. Lungs are clear.",
    "Lungs clear. No pneumothorax or pleural effusion.",
    "No evidence of pneumothorax.",
)


def _pneumothorax_sentence(ptx: list[Pneumothorax], rng: np.random.Generator) -> str:
    """None, one, bilateral, or two components in one lung, in a radiologist's words."""
    if not ptx:
        return str(rng.choice(list(_NEGATIVE)))
    if len(ptx) == 1:
        p = ptx[0]
        if p.site == "large":
            return f"Large {p.side} pneumothorax with partial collapse of the {p.side} lung."
        return f"{p.size.capitalize()} {p.side} {_SITE_WORDS[p.site]} pneumothorax."
    if ptx[0].side != ptx[1].side:
        a, b = sorted(ptx, key=lambda q: q.side != "right")
        words = [
            f"{q.size} {q.side} {_SITE_WORDS[q.site]}".replace("  ", " ").strip() for q in (a, b)
        ]
        return f"Bilateral pneumothoraces: {words[0]} and {words[1]}."
    return (
        f"Loculated {ptx[0].side} pneumothorax: {ptx[0].size} {_SITE_WORDS[ptx[0].site]} "
        f"and {ptx[1].size} {_SITE_WORDS[ptx[1].site]} components."
    )


def findings_report(meta: PhantomMeta, rng: np.random.Generator) -> str:
    """A short free-text report of the findings, in a radiologist's words."""
    parts: list[str] = []
    if meta.view == "AP" and rng.random() < 0.5:
        parts.append("AP portable chest.")
    parts.append(_pneumothorax_sentence(meta.pneumothoraces, rng))
    if meta.chest_tube:
        side = meta.chest_tube.capitalize()
        parts.append(
            str(rng.choice([f"{side} chest tube in situ.", f"{side} intercostal drain in place."]))
        )
    if meta.skin_fold and rng.random() < 0.7:
        parts.append(f"Skin fold projects over the {meta.skin_fold} hemithorax.")
    if meta.ecg_leads and rng.random() < 0.5:
        parts.append("ECG leads overlie the chest.")
    return " ".join(parts)
