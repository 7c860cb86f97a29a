"""Automatic classification of IOI heads into the paper's 7 classes (Wang et al. 2022, sec. 3).

The procedure follows the paper:
1. path patching to the logits: name movers (large negative effect, moving IO: attending
   END->IO more than END->S1 and END->S2, copying score >= 0.5) and negative name movers
   (large positive effect, the same attention, negative copying score >= 0.5);
2. path patching to the name movers' queries at END: S-inhibition heads;
3. path patching to the S-inhibition heads' values at S2: induction heads (attend S2 -> S1+1
   more than S2 -> S1) and duplicate-token heads (the reverse);
4. path patching to the induction heads' keys at S1+1: previous-token heads;
5. backup name movers: heads in layers after the name movers whose direct effect, at the
   clean run's frozen final-norm scale, grows when the name movers are mean-ablated, and which
   then move IO (attention and copying as for name movers).
Heads with a strong path effect or direct effect that fit no class are listed as
`unclassified`, with their attention and copying signature and a descriptive label.

Effects are the mean change of the logit difference, in units of the clean logit difference
(e.g. -0.02 = the patch lowers it by 2% of its clean value). They are only meaningful when the
clean difference is positive: `skip_reason` says when a model does not do the task.
"""

import math
from dataclasses import dataclass, fields

import torch

from interp.arch import family_of
from interp.circuit import ablation_hooks, full_circuit, without
from interp.dla import direct_logit_attribution
from interp.errors import UserValueError
from interp.forward import run_blocks
from interp.ioi.scores import attention_scores, copying_scores
from interp.nodes import Head, all_heads
from interp.patching import Receiver, path_patch
from interp.patching.path import QueryScreen, ScreenedPaths, screened
from interp.patching.runs import AtPositions, Runs

CLASSES = ("name_movers", "backup_name_movers", "negative_name_movers", "s_inhibition",
           "induction", "duplicate_token", "previous_token")
# positions each class is kept at when the classes form a circuit (as in the paper)
CLASS_POSITIONS = {"name_movers": ["END"], "backup_name_movers": ["END"],
                   "negative_name_movers": ["END"], "s_inhibition": ["END"],
                   "induction": ["S2"], "duplicate_token": ["S2"],
                   "previous_token": ["S1+1"]}


MIN_CLEAN_LOGIT_DIFF = 1e-4  # |clean logit diff| below this: refused (effects undefined)


@dataclass
class Thresholds:
    """Classification thresholds (fractions of the clean logit difference, or attention).

    Attributes:
        name_mover: path-to-logits effect <= -name_mover (and the bar for `unclassified`).
        negative: path-to-logits effect >= +negative.
        s_inhibition: effect via the name movers' queries <= -s_inhibition.
        induction_duplicate: effect via S-inhibition values at S2 <= -induction_duplicate.
        previous_token: effect via induction keys at S1+1 <= -previous_token.
        backup: direct-effect increase (frozen final-norm scale) when name movers are
            ablated >= backup.
        copying: name movers and backups need a copying score >= copying.
        negative_copying: negative name movers need a negative copying score >= this.
        min_attention: minimum mean attention to the class's key position.
        min_accuracy: heads are only labelled when IO > S on at least this fraction.
        max_per_class: keep at most this many heads per class (strongest first).
    """

    name_mover: float = 0.02
    negative: float = 0.02
    s_inhibition: float = 0.02
    induction_duplicate: float = 0.01
    previous_token: float = 0.01
    backup: float = 0.02
    copying: float = 0.5
    negative_copying: float = 0.5
    min_attention: float = 0.05
    min_accuracy: float = 0.6
    max_per_class: int = 10

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "max_per_class":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise UserValueError(f"--threshold max_per_class={value}: must be an "
                                         "integer >= 1")
            elif not (isinstance(value, int | float) and math.isfinite(value)
                      and 0 <= value <= 1):
                raise UserValueError(f"--threshold {f.name}={value}: must be a finite number "
                                     "in [0, 1] (a fraction of the clean logit difference, an "
                                     "attention probability or a score)")


def skip_reason(clean_logit_diff: float, accuracy: float, t: Thresholds) -> str | None:
    """Why heads must not be labelled on this model (None: the model does the task).

    Raises:
        UserValueError: the clean logit difference is ~0 (or not finite): every effect is a
            fraction of it, so none is defined.
    """
    if not math.isfinite(clean_logit_diff) or abs(clean_logit_diff) < MIN_CLEAN_LOGIT_DIFF:
        raise UserValueError(f"clean logit difference is {clean_logit_diff:.3g} (about 0): the "
                             "model gives IO and S the same logit, so effects relative to it "
                             "are undefined; check the model's weights and tokenizer")
    if clean_logit_diff <= 0:
        return (f"clean logit difference {clean_logit_diff:.4f} <= 0: the model prefers S to "
                "IO, so it does not do the task")
    if accuracy < t.min_accuracy:
        return (f"IO > S accuracy {accuracy:.3f} < min_accuracy {t.min_accuracy}: the model "
                "is near chance on the task")
    return None


def unclassified_label(sig: dict[str, float], t: Thresholds) -> str:
    """A short description from a head's signature, e.g. "S-suppression: attends S2,
    negative copying"."""
    att = {k: sig[f"attn_end_to_{k.lower()}"] for k in ("IO", "S1", "S2")}
    target = max(att, key=att.get)
    if att[target] < t.min_attention:
        target = None
    if sig["negative_copying"] >= t.negative_copying:
        copy = "negative copying"
    elif sig["copying"] >= t.copying:
        copy = "copying"
    else:
        copy = "no clear copying"
    name = {None: "", "IO": "IO", "S1": "S", "S2": "S"}[target]
    role = {"negative copying": f"{name}-suppression", "copying": f"{name}-mover"}.get(copy)
    if target is None or role is None:
        role = "other"
    where = f"attends {target}" if target else "attends no name"
    return f"{role}: {where}, {copy}"


def _select(scores: dict[Head, float], keep) -> list[Head]:
    return [h for h in sorted(scores, key=lambda h: -abs(scores[h])) if keep(h)]


class Classifier:
    """Runs the five steps on prepared `Runs` and records every score used.

    Args:
        mean_runs: the runs whose corrupted cache holds the mean-ablation means (see
            `interp.ioi.means`); default `runs` (means over the batch's own p_ABC prompts).
        dla: the clean run's mean direct logit attribution per head [layer, head], when the
            caller has it (default: computed here).
        lean: free the corrupted cache and the clean gradients of `runs` once the
            path-patching steps are done (before the backup step), for a caller that reads
            neither afterwards (`interp ioi`).
    """

    def __init__(self, model, runs: Runs, attention: dict, thresholds: Thresholds,
                 progress: bool = True, paths: str = "screen", top_k: int = 10,
                 mean_runs: Runs | None = None, dla: torch.Tensor | None = None,
                 lean: bool = False):
        if paths not in ("exact", "screen"):
            raise ValueError(f"paths must be 'exact' or 'screen', got '{paths}'")
        self.model, self.runs, self.att, self.t = model, runs, attention, thresholds
        self.mean_runs = mean_runs or runs
        self.progress, self.paths, self.top_k, self.lean = progress, paths, top_k, lean
        self.estimated: dict[str, list[str]] = {}
        # per q/k/v step: its receivers, the senders whose patched receiver inputs the step
        # needs (all, unless the logits sweep's `QueryScreen` gave the estimate) and those
        # patched exactly (for `interp.ioi.costs`)
        self.step_paths: dict[str, dict] = {}
        self.step_effects: dict[str, dict[Head, float]] = {}
        self._exact: set[Head] = set()
        self._queries: QueryScreen | None = None
        self.clean = runs.clean_metric.mean().item()
        self.heads = all_heads(model.cfg.n_layers, model.cfg.n_heads)
        self.scores: dict[str, dict[str, dict[str, float]]] = {}
        self.path_to_logits: torch.Tensor | None = None
        if dla is None:
            dla = direct_logit_attribution(model, runs.clean_cache, runs.batch)["heads"].mean(-1)
        self.dla = dla
        self.copying: dict[str, dict[str, float]] = {"copying": {}, "negative_copying": {}}
        self.backup_effects: dict[str, list] = {}
        self.unclassified: dict[str, dict] = {}

    def _att(self, name: str, h: Head, att: dict | None = None) -> float:
        return float((att or self.att)[name][h.layer, h.head])

    def _moves_io(self, h: Head, att: dict | None = None) -> bool:
        """Name-mover attention: END->IO above min_attention and above END->S1 and END->S2."""
        to_io = self._att("end_to_io", h, att)
        return to_io >= self.t.min_attention and to_io > max(
            self._att("end_to_s1", h, att), self._att("end_to_s2", h, att))

    def _copy(self, h: Head, kind: str = "copying") -> float:
        if str(h) not in self.copying[kind]:
            scores = copying_scores(self.model, self.runs.clean_cache, self.runs.batch, [h])
            for k, v in scores.items():
                self.copying[k].update(v)
        return self.copying[kind][str(h)]

    def _effects(self, receivers, step: str = "logits") -> dict[Head, float]:
        """Path-patching effect of every sender on the receivers, in clean-logit-diff units.

        With paths="screen", q/k/v receivers are first scored for all senders by attribution
        (exact path to the receiver inputs x gradient); the `top_k` largest, and any whose
        estimate reaches half the smallest class threshold, are then patched exactly. Only
        exactly patched heads can be classified; the others are listed in `estimated`. The
        attribution of paths to queries at END comes from the logits step's propagation
        (`QueryScreen`); the exact step reuses the screen's receiver inputs.
        """
        senders = self.heads
        self.runs.bases.clear()  # the last step's engine (keys, values): not alive in this one
        if receivers != "logits":
            senders = [h for h in senders if h.layer < max(r.head.layer for r in receivers)]
        if not senders:
            self.step_effects[step] = {}
            return {}
        if receivers == "logits" or self.paths == "exact":
            queries = self._query_screen(senders) if receivers == "logits" else None
            values = path_patch(self.model, self.runs, senders, receivers,
                                progress=self.progress, queries=queries)
            if receivers != "logits":
                self.step_paths[step] = {"receivers": receivers, "propagated": senders,
                                         "exact": senders}
            self._queries = queries or self._queries
            out = {h: v / self.clean for h, v in zip(senders, values.tolist(), strict=True)}
            self.step_effects[step] = out
            return out
        estimate = None
        if self._queries is not None and self._queries.covers(self.runs, receivers):
            estimate = self._queries.estimate(senders, receivers)
        self.step_paths[step] = {"receivers": receivers,  # (the logits sweep propagated
                                 "propagated": senders if estimate is None else []}  # them)
        paths = ScreenedPaths(self.model, self.runs, senders, receivers, progress=self.progress,
                              estimate=estimate)
        estimate = paths.estimate / self.clean
        floor = 0.5 * min(self.t.s_inhibition, self.t.induction_duplicate, self.t.previous_token)
        chosen = screened(estimate, self.top_k, floor)
        exact = paths.exact(chosen) / self.clean
        values = dict(zip(senders, estimate.tolist(), strict=True))
        values.update({senders[i]: v for i, v in zip(chosen, exact.tolist(), strict=True)})
        exact_heads = {senders[i] for i in chosen}
        self.step_paths[step]["exact"] = [senders[i] for i in chosen]
        self.estimated[step] = [str(h) for h in senders if h not in exact_heads]
        self._exact = exact_heads
        self.step_effects[step] = values
        return values

    def _end_path_patching(self) -> None:
        """Free what only the path-patching steps read before the backup step runs: the
        logits step's query screen and the sparse engine's base runs (keys and values of
        every layer, stacked weights; rebuilt if a later caller patches again); with
        `lean`, the corrupted cache and the gradients too."""
        self._queries = None
        self.runs.bases.clear()
        if self.lean:
            self.runs.corrupted_cache.clear()
            self.runs.grads = None

    def _query_screen(self, senders: list[Head]) -> QueryScreen | None:
        """A `QueryScreen` for the logits step to fill, when the later steps screen and the
        fast engine runs this model (None otherwise)."""
        if self.paths != "screen" or family_of(self.model) is None:
            return None
        return QueryScreen(self.model, self.runs, senders)

    def _confirmed(self, h: Head) -> bool:
        return self.paths == "exact" or h in self._exact

    def _record(self, cls: str, heads: list[Head], **columns: dict[Head, float]) -> list[Head]:
        heads = heads[: self.t.max_per_class]
        self.scores[cls] = {str(h): {k: round(col[h], 5) for k, col in columns.items()}
                            for h in heads}
        return heads

    def logit_effects(self) -> dict[Head, float]:
        """Step 1's path patching to the logits (also the `path_to_logits` grid)."""
        if "logits" not in self.step_effects:
            eff = self._effects("logits")
            self.path_to_logits = torch.tensor([eff[h] * self.clean for h in self.heads]).view(
                self.model.cfg.n_layers, self.model.cfg.n_heads)
        return self.step_effects["logits"]

    def _signature(self, heads, att: dict | None = None) -> dict[str, dict[Head, float]]:
        return {f"attn_end_to_{k}": {h: self._att(f"end_to_{k}", h, att) for h in heads}
                for k in ("io", "s1", "s2")}

    def name_movers(self) -> tuple[list[Head], list[Head]]:
        eff = self.logit_effects()
        movers = [h for h in self.heads if self._moves_io(h)]
        nm = _select(eff, lambda h: eff[h] <= -self.t.name_mover and h in movers
                     and self._copy(h) >= self.t.copying)
        neg = _select(eff, lambda h: eff[h] >= self.t.negative and h in movers
                      and self._copy(h, "negative_copying") >= self.t.negative_copying)
        cols = {"path_to_logits": eff, **self._signature(nm + neg),
                "copying": {h: self._copy(h) for h in nm + neg},
                "negative_copying": {h: self._copy(h, "negative_copying") for h in nm + neg}}
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
        """Heads after the last name mover's layer whose direct effect at the clean run's
        frozen final-norm scale grows by >= `backup` when the name movers are mean-ablated,
        and which then move IO (END->IO attention in the ablated run above END->S1 and
        END->S2; copying >= `copying`). The unfrozen-scale growth is recorded too."""
        if not name_movers:
            return self._record("backup_name_movers", [])
        ablated = _ablated_run(self.model, self.runs, self.mean_runs,
                               without(full_circuit(self.model), name_movers),
                               min(h.layer for h in name_movers))
        frozen, unfrozen, att = ablated_direct_effects(self.model, self.runs, ablated)
        grow = {h: float(frozen[h.layer, h.head] - self.dla[h.layer, h.head]) / self.clean
                for h in self.heads}
        grow_unfrozen = {h: float(unfrozen[h.layer, h.head] - self.dla[h.layer, h.head])
                         / self.clean for h in self.heads}
        self.backup_effects = {"ablated": [str(h) for h in name_movers],
                               "increase_frozen_scale": _rows(grow, self.heads, self.model),
                               "increase_unfrozen_scale": _rows(grow_unfrozen, self.heads,
                                                                self.model)}
        after = max(h.layer for h in name_movers)
        heads = _select(grow, lambda h: h.layer > after and grow[h] >= self.t.backup
                        and h not in taken and self._moves_io(h, att)
                        and self._copy(h) >= self.t.copying)
        sig = {f"{k}_ablated": v for k, v in self._signature(heads, att).items()}
        return self._record("backup_name_movers", heads, direct_effect_increase=grow,
                            direct_effect_increase_unfrozen_scale=grow_unfrozen,
                            copying={h: self._copy(h) for h in heads}, **sig)

    def find_unclassified(self, classes: dict[str, list[Head]]) -> dict[str, dict]:
        """Heads with |path effect to logits| or |DLA| >= `name_mover` (in clean-logit-diff
        units) that are in no class, strongest first, with their signature and a label."""
        eff = self.logit_effects()
        taken = {h for heads in classes.values() for h in heads}
        strong = [h for h in _select(eff, lambda h: abs(eff[h]) >= self.t.name_mover
                                     or abs(self.dla[h.layer, h.head] / self.clean)
                                     >= self.t.name_mover) if h not in taken]
        out = {}
        for h in strong:
            sig = {k: round(v[h], 5) for k, v in self._signature([h]).items()}
            sig |= {"copying": self._copy(h), "negative_copying": self._copy(h, "negative_copying"),
                    "dla": round(float(self.dla[h.layer, h.head]), 5),
                    "path_to_logits": round(eff[h] * self.clean, 5),
                    "path_to_logits_relative": round(eff[h], 5)}
            out[str(h)] = {**sig, "label": unclassified_label(sig, self.t)}
        self.unclassified = out
        return out

    def run(self) -> dict[str, list[Head]]:
        nm, neg = self.name_movers()
        si = self.s_inhibition(nm)
        ind, dup = self.induction_duplicate(si)
        prev = self.previous_token(ind, set(nm + neg + si + ind + dup))
        self._end_path_patching()
        backup = self.backup(nm, set(nm + neg + si + ind + dup + prev))
        classes = {"name_movers": nm, "backup_name_movers": backup,
                   "negative_name_movers": neg, "s_inhibition": si, "induction": ind,
                   "duplicate_token": dup, "previous_token": prev}
        self.find_unclassified(classes)
        return classes


def _rows(values: dict[Head, float], heads: list[Head], model) -> list[list[float]]:
    n = model.cfg.n_heads
    flat = [round(values[h], 5) for h in heads]
    return [flat[i:i + n] for i in range(0, len(flat), n)]


ABLATED_READS = ("attn.hook_z", "attn.hook_pattern", "hook_mlp_out")  # per layer


@torch.inference_mode()
def _ablated_run(model, runs: Runs, mean_runs: Runs, circuit, start: int = 0) -> dict:
    """What the backup step reads of the clean prompts' run with everything outside `circuit`
    mean-ablated (`ABLATED_READS` per layer, the embeddings, the final norm's scale). The
    layers it runs keep their head and MLP outputs at the read position only (`AtPositions`).

    `circuit` must keep every head of the layers before `start` at all positions: those
    layers are then the clean run's, read from `runs.clean_cache`, and the ablated run
    resumes at layer `start` from the clean residual stream.
    """
    clean = runs.clean_cache
    cache = {name: clean[name] for name in ("hook_embed", "hook_pos_embed") if name in clean}
    cache |= {f"blocks.{layer}.{hook}": clean[f"blocks.{layer}.{hook}"]
              for layer in range(start) for hook in ABLATED_READS}
    names = [f"blocks.{layer}.{hook}" for layer in range(start, model.cfg.n_layers)
             for hook in ABLATED_READS] + ["ln_final.hook_scale"]

    read = runs.batch.read_positions[:, None]

    def keeper(name: str):
        def keep(act, hook):  # DLA reads head and MLP outputs at the read position only
            cache[name] = act if name.endswith("hook_pattern") else AtPositions(act, read)
            return act
        return keep

    hooks = ablation_hooks(model, mean_runs, circuit) + [(name, keeper(name)) for name in names]
    with model.hooks(fwd_hooks=hooks):  # after the ablation hooks: they see ablated values
        x = run_blocks(model, clean[f"blocks.{start}.hook_resid_pre"], start, runs.clean_kwargs)
        model.ln_final(x)
    return cache


def ablated_direct_effects(model, runs: Runs, ablated: dict):
    """Mean per-head direct effect of an ablated run, at the clean run's frozen final-norm
    scale and at the ablated run's own scale; plus the ablated run's attention scores.

    Returns:
        (frozen [layer, head], unfrozen [layer, head], attention scores dict).
    """
    batch = runs.batch
    unfrozen = direct_logit_attribution(model, ablated, batch)["heads"].mean(-1)
    frozen_cache = {**ablated, "ln_final.hook_scale": runs.clean_cache["ln_final.hook_scale"]}
    frozen = direct_logit_attribution(model, frozen_cache, batch)["heads"].mean(-1)
    return frozen, unfrozen, attention_scores(model, ablated, batch)


def classify_heads(model, runs: Runs, attention: dict, thresholds: Thresholds | None = None,
                   progress: bool = True, paths: str = "screen", top_k: int = 10,
                   mean_runs: Runs | None = None) -> tuple[dict[str, list[Head]], Classifier]:
    """Classify heads; returns class -> heads and the classifier (with `.scores`,
    `.unclassified`, `.step_effects`).

    Args:
        paths: "exact" patches every sender exactly in the q/k/v path-patching steps;
            "screen" (default) screens them by attribution and patches the strongest exactly.
        mean_runs: runs carrying the mean-ablation means (default: `runs`).
    """
    clf = Classifier(model, runs, attention, thresholds or Thresholds(), progress, paths, top_k,
                     mean_runs)
    return clf.run(), clf
