"""Automatic classification of IOI heads into the paper's 7 classes (Wang et al. 2022, sec. 3).

The procedure follows the paper:
1. path patching to the logits: name movers (large negative effect and attending to IO more
   than to S2 from END) and negative name movers (large positive effect, attending to IO);
2. path patching to the name movers' queries at END: S-inhibition heads;
3. path patching to the S-inhibition heads' values at S2: induction heads (attend S2 -> S1+1
   more than S2 -> S1) and duplicate-token heads (the reverse);
4. path patching to the induction heads' keys at S1+1: previous-token heads;
5. backup name movers: heads whose direct effect grows when the name movers are mean-ablated.

Effects are the mean change of the logit difference, in units of the clean logit difference
(e.g. -0.02 = the patch lowers it by 2% of its clean value).
"""

from dataclasses import dataclass

import torch

from interp.circuit import ablation_hooks, full_circuit, without
from interp.dla import direct_logit_attribution
from interp.nodes import Head, all_heads
from interp.patching import Receiver, path_patch
from interp.patching.path import screened
from interp.patching.runs import Runs

CLASSES = ("name_movers", "backup_name_movers", "negative_name_movers", "s_inhibition",
           "induction", "duplicate_token", "previous_token")
# positions each class is kept at when the classes form a circuit (as in the paper)
CLASS_POSITIONS = {"name_movers": ["END"], "backup_name_movers": ["END"],
                   "negative_name_movers": ["END"], "s_inhibition": ["END"],
                   "induction": ["S2"], "duplicate_token": ["S2"],
                   "previous_token": ["S1+1"]}


@dataclass
class Thresholds:
    """Classification thresholds (fractions of the clean logit difference, or attention).

    Attributes:
        name_mover: path-to-logits effect <= -name_mover.
        negative: path-to-logits effect >= +negative.
        s_inhibition: effect via the name movers' queries <= -s_inhibition.
        induction_duplicate: effect via S-inhibition values at S2 <= -induction_duplicate.
        previous_token: effect via induction keys at S1+1 <= -previous_token.
        backup: direct-effect increase when name movers are ablated >= backup.
        min_attention: minimum mean attention to the class's key position.
        max_per_class: keep at most this many heads per class (strongest first).
    """

    name_mover: float = 0.02
    negative: float = 0.02
    s_inhibition: float = 0.02
    induction_duplicate: float = 0.01
    previous_token: float = 0.01
    backup: float = 0.02
    min_attention: float = 0.05
    max_per_class: int = 10


def _select(scores: dict[Head, float], keep) -> list[Head]:
    return [h for h in sorted(scores, key=lambda h: -abs(scores[h])) if keep(h)]


class Classifier:
    """Runs the five steps on prepared `Runs` and records every score used."""

    def __init__(self, model, runs: Runs, attention: dict, thresholds: Thresholds,
                 progress: bool = True, paths: str = "screen", top_k: int = 10):
        if paths not in ("exact", "screen"):
            raise ValueError(f"paths must be 'exact' or 'screen', got '{paths}'")
        self.model, self.runs, self.att, self.t = model, runs, attention, thresholds
        self.progress, self.paths, self.top_k = progress, paths, top_k
        self.estimated: dict[str, list[str]] = {}
        self._exact: set[Head] = set()
        self.clean = runs.clean_metric.mean().item()
        self.heads = all_heads(model.cfg.n_layers, model.cfg.n_heads)
        self.scores: dict[str, dict[str, dict[str, float]]] = {}
        self.path_to_logits: torch.Tensor | None = None

    def _att(self, name: str, h: Head) -> float:
        return float(self.att[name][h.layer, h.head])

    def _effects(self, receivers, step: str = "logits") -> dict[Head, float]:
        """Path-patching effect of every sender on the receivers, in clean-logit-diff units.

        With paths="screen", q/k/v receivers are first scored for all senders by attribution
        (exact path to the receiver inputs x gradient); the `top_k` largest, and any whose
        estimate reaches half the smallest class threshold, are then patched exactly. Only
        exactly patched heads can be classified; the others are listed in `estimated`.
        """
        senders = self.heads
        if receivers == "logits" or self.paths == "exact":
            if receivers != "logits":
                senders = [h for h in senders if h.layer < max(r.head.layer for r in receivers)]
            values = path_patch(self.model, self.runs, senders, receivers,
                                progress=self.progress)
            return {h: v / self.clean for h, v in zip(senders, values.tolist(), strict=True)}
        senders = [h for h in senders if h.layer < max(r.head.layer for r in receivers)]
        estimate = path_patch(self.model, self.runs, senders, receivers, method="attribution",
                              progress=self.progress) / self.clean
        floor = 0.5 * min(self.t.s_inhibition, self.t.induction_duplicate, self.t.previous_token)
        chosen = screened(estimate, self.top_k, floor)
        exact = path_patch(self.model, self.runs, [senders[i] for i in chosen], receivers,
                           progress=self.progress) / self.clean
        values = dict(zip(senders, estimate.tolist(), strict=True))
        values.update({senders[i]: v for i, v in zip(chosen, exact.tolist(), strict=True)})
        exact_heads = {senders[i] for i in chosen}
        self.estimated[step] = [str(h) for h in senders if h not in exact_heads]
        self._exact = exact_heads
        return values

    def _confirmed(self, h: Head) -> bool:
        return self.paths == "exact" or h in self._exact

    def _record(self, cls: str, heads: list[Head], **columns: dict[Head, float]) -> list[Head]:
        heads = heads[: self.t.max_per_class]
        self.scores[cls] = {str(h): {k: round(col[h], 5) for k, col in columns.items()}
                            for h in heads}
        return heads

    def name_movers(self) -> tuple[list[Head], list[Head]]:
        eff = self._effects("logits")
        self.path_to_logits = torch.tensor([eff[h] * self.clean for h in self.heads]).view(
            self.model.cfg.n_layers, self.model.cfg.n_heads)
        to_io = {h: self._att("end_to_io", h) for h in self.heads}
        to_s2 = {h: self._att("end_to_s2", h) for h in self.heads}
        attends_io = {h for h in self.heads
                      if to_io[h] >= self.t.min_attention and to_io[h] > to_s2[h]}
        nm = _select(eff, lambda h: eff[h] <= -self.t.name_mover and h in attends_io)
        neg = _select(eff, lambda h: eff[h] >= self.t.negative and h in attends_io)
        cols = {"path_to_logits": eff, "attn_end_to_io": to_io, "attn_end_to_s2": to_s2}
        return self._record("name_movers", nm, **cols), self._record("negative_name_movers",
                                                                    neg, **cols)

    def s_inhibition(self, name_movers: list[Head]) -> list[Head]:
        if not name_movers:
            return self._record("s_inhibition", [])
        eff = self._effects([Receiver(h, "q", "END") for h in name_movers], "s_inhibition")
        s2 = {h: self._att("end_to_s2", h) for h in eff}
        heads = _select(eff, lambda h: eff[h] <= -self.t.s_inhibition and h not in name_movers
                        and self._confirmed(h))
        return self._record("s_inhibition", heads, path_to_nm_queries=eff, attn_end_to_s2=s2)

    def induction_duplicate(self, s_inhibition: list[Head]) -> tuple[list[Head], list[Head]]:
        if not s_inhibition:
            return self._record("induction", []), self._record("duplicate_token", [])
        eff = self._effects([Receiver(h, "v", "S2") for h in s_inhibition], "induction_duplicate")
        ind = {h: self._att("s2_to_s1p1", h) for h in eff}
        dup = {h: self._att("s2_to_s1", h) for h in eff}
        strong = [h for h in _select(eff, lambda h: eff[h] <= -self.t.induction_duplicate)
                  if h not in s_inhibition and self._confirmed(h)]
        cols = {"path_to_si_values": eff, "attn_s2_to_s1p1": ind, "attn_s2_to_s1": dup}
        induction = [h for h in strong if ind[h] > dup[h] and ind[h] >= self.t.min_attention]
        duplicate = [h for h in strong if dup[h] >= ind[h] and dup[h] >= self.t.min_attention]
        return (self._record("induction", induction, **cols),
                self._record("duplicate_token", duplicate, **cols))

    def previous_token(self, induction: list[Head], taken: set[Head]) -> list[Head]:
        if not induction:
            return self._record("previous_token", [])
        eff = self._effects([Receiver(h, "k", "S1+1") for h in induction], "previous_token")
        prev = {h: self._att("previous_token", h) for h in eff}
        heads = _select(eff, lambda h: eff[h] <= -self.t.previous_token and h not in taken
                        and prev[h] >= self.t.min_attention and self._confirmed(h))
        return self._record("previous_token", heads, path_to_induction_keys=eff,
                            previous_token_attention=prev)

    def backup(self, name_movers: list[Head], taken: set[Head]) -> list[Head]:
        if not name_movers:
            return self._record("backup_name_movers", [])
        before = direct_logit_attribution(self.model, self.runs.clean_cache, self.runs.batch)
        after = _dla_with_ablation(self.model, self.runs,
                                   without(full_circuit(self.model), name_movers))
        grow = {h: (after[h.layer, h.head] - before["heads"][h.layer, h.head].mean()).item()
                / self.clean for h in self.heads}
        heads = _select(grow, lambda h: grow[h] >= self.t.backup and h not in taken)
        return self._record("backup_name_movers", heads, direct_effect_increase=grow)

    def run(self) -> dict[str, list[Head]]:
        nm, neg = self.name_movers()
        si = self.s_inhibition(nm)
        ind, dup = self.induction_duplicate(si)
        prev = self.previous_token(ind, set(nm + neg + si + ind + dup))
        backup = self.backup(nm, set(nm + neg + si + ind + dup + prev))
        return {"name_movers": nm, "backup_name_movers": backup, "negative_name_movers": neg,
                "s_inhibition": si, "induction": ind, "duplicate_token": dup,
                "previous_token": prev}


@torch.inference_mode()
def _dla_with_ablation(model, runs: Runs, circuit) -> torch.Tensor:
    """Mean per-head direct effect on the clean prompts with everything outside `circuit`
    mean-ablated (the frozen final-norm scale is that of the ablated run)."""
    batch = runs.batch
    with model.hooks(fwd_hooks=ablation_hooks(model, runs, circuit)):
        _, cache = model.run_with_cache(batch.clean_tokens.to(model.cfg.device),
                                        names_filter=lambda n: "hook_z" in n
                                        or n.startswith("ln_final") or "hook_mlp_out" in n
                                        or "embed" in n)
    return direct_logit_attribution(model, cache, batch)["heads"].mean(-1)


def classify_heads(model, runs: Runs, attention: dict, thresholds: Thresholds | None = None,
                   progress: bool = True, paths: str = "screen",
                   top_k: int = 10) -> tuple[dict[str, list[Head]], Classifier]:
    """Classify heads; returns class -> heads and the classifier (with `.scores`).

    Args:
        paths: "exact" patches every sender exactly in the q/k/v path-patching steps;
            "screen" (default) screens them by attribution and patches the strongest exactly.
    """
    clf = Classifier(model, runs, attention, thresholds or Thresholds(), progress, paths, top_k)
    return clf.run(), clf
