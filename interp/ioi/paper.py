"""The IOI paper's GPT-2 small numbers, and the automatic comparison against them."""

import json
from functools import lru_cache
from importlib.resources import files

GPT2_SMALL_SPECS = ("gpt2", "gpt2-small")


@lru_cache(maxsize=1)
def paper_reference() -> dict:
    """Wang et al. 2022's GPT-2 small circuit (26 heads, 7 classes) and headline numbers."""
    return json.loads(files("interp.data").joinpath("ioi_gpt2_small_paper.json").read_text())


def compare_with_paper(model_spec: str, head_classes: dict[str, list[str]],
                       numbers: dict[str, float]) -> dict:
    """Per-class precision/recall and headline numbers vs the paper, for GPT-2 small only.

    Args:
        model_spec: the resolved model spec (`model.interp_spec`).
        head_classes: class -> ["L9H9", ...] as found on this model.
        numbers: {"clean_logit_diff", "clean_accuracy", "faithfulness"} as measured.
    """
    if model_spec not in GPT2_SMALL_SPECS:
        return {"status": "no paper reference for this model",
                "model": model_spec, "reference_model": "gpt2"}
    ref = paper_reference()
    classes = {}
    for cls, ref_heads in ref["classes"].items():
        found = set(head_classes.get(cls, []))
        hits = found & set(ref_heads)
        classes[cls] = {"found": sorted(found), "paper": ref_heads,
                        "precision": len(hits) / len(found) if found else None,
                        "recall": len(hits) / len(ref_heads)}
    headline = {k: {"measured": numbers.get(k), "paper": ref[k]}
                for k in ("clean_logit_diff", "clean_accuracy", "faithfulness")}
    return {"status": "compared with the paper (GPT-2 small)", "classes": classes,
            "numbers": headline, "reference": ref["reference"]}
