"""The whole IOI reproduction for one model: what `interp ioi` runs.

Stages: dataset -> clean/corrupted runs -> direct logit attribution -> activation patching ->
mean sample -> attention scores -> head classification (path patching) -> copying scores -> circuit
evaluation -> files (dataset.jsonl, summary.json, circuit.yaml, HTML figures).

Mean ablation takes its means from a separate p_ABC sample (`n_mean_prompts` per template,
see `interp.ioi.means`); faithfulness is also reported over bootstrap resamples of it.
Heads are only labelled when the model does the task (`classify.skip_reason`); otherwise the
patching maps are still written and `classification_skipped` says why.

Default mode: activation patching is estimated by attribution (EAP) and the q/k/v
path-patching steps screen senders by attribution before patching the strongest exactly; one
clean backward pass serves both. `IOIConfig(exact=True)` (`interp ioi --exact`) patches every
head and sender exactly instead.
"""

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from interp.arch import family_of
from interp.circuit import completeness, faithfulness, minimality
from interp.dla import direct_logit_attribution
from interp.ioi.classify import CLASS_POSITIONS, Classifier, Thresholds, skip_reason
from interp.ioi.costs import stage_costs
from interp.ioi.dataset import build_ioi
from interp.ioi.means import MeanSample
from interp.ioi.paper import compare_with_paper
from interp.ioi.scores import attention_scores, copying_scores
from interp.ioi.sources import DEFAULT_DATASET
from interp.mean_ablation import MeanAblation
from interp.nodes import parse_node
from interp.patching import act_patch_heads, prepare_runs
from interp.patching.counter import counting
from interp.patching.gradients import act_patch_attribution, clean_gradients
from interp.patching.runs import POSITION_READS, lean_clean_hooks, release
from interp.runner import ExperimentRun, return_freed_memory


@dataclass
class IOIConfig:
    """The arguments that define an IOI run (stored as summary.json's `config`)."""

    n_prompts: int = 100
    seed: int = 0
    exact: bool = False  # every sweep exact (slow); default: screen by gradients, confirm top
    top_k: int = 10  # senders patched exactly per screened path-patching step (at least)
    thresholds: dict = field(default_factory=lambda: asdict(Thresholds()))
    dataset: str = DEFAULT_DATASET  # "paper" or "extended" (interp.ioi.sources)
    n_mean_prompts: int = 20  # p_ABC prompts per template in the separate mean sample
    n_resamples: int = 5  # bootstrap resamples of the mean sample for the faithfulness spread

    @property
    def paths(self) -> str:
        return "exact" if self.exact else "screen"


def _grid(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 5) for v in row] for row in t]


# what the circuit evaluation (node and edge level), the spread and the figures read
AFTER_CLASSIFICATION = ("hook_resid_pre", "attn.hook_z", "attn.hook_pattern", "hook_mlp_out",
                        "hook_resid_post")

# what mean ablation of head-only circuits reads of the means (the spread's resamples)
HEAD_MEANS = ("attn.hook_z",)

CIRCUIT_FILE_HOLDS = ("the 7 classes only: the hypothesis the paper's procedure defines; "
                      "`faithfulness_with_unclassified` adds the strong unclassified heads "
                      "(kept at END) to show what the classes miss")


def _steps(clf) -> dict:
    """Every path-patching step's [layer, head] grid (clean-logit-diff units; null = not a
    sender) and which cells are attribution estimates only."""
    n_layers, n_heads = clf.model.cfg.n_layers, clf.model.cfg.n_heads
    out = {}
    for step, eff in clf.step_effects.items():
        grid = [[None] * n_heads for _ in range(n_layers)]
        for h, v in eff.items():
            grid[h.layer][h.head] = round(v, 5)
        out[step] = {"relative_effect": grid, "estimated": clf.estimated.get(step, [])}
    return out


def _mean_stats(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values > 0).float().mean().item()


# the clean gradients the path-patching screens read, at the named and read positions only
SCREEN_GRADIENTS = ("attn.hook_q", "attn.hook_k", "attn.hook_v")


def _drop_z_gradients(runs) -> None:
    """Free the clean gradients at `hook_z`: the EAP estimates of activation patching are
    their only reader (those at `SCREEN_GRADIENTS` were kept at their positions only)."""
    grads = runs.grads or {}
    for name in [n for n in grads if n.endswith("attn.hook_z")]:
        del grads[name]


def config_record(config: IOIConfig) -> dict:
    """summary.json's `config` of an IOI run (the runner adds the model)."""
    return {**asdict(config), "paths": config.paths}


class IOIRun:
    """One run of the pipeline in an `ExperimentRun`; stages fill `self.summary`."""

    def __init__(self, run: ExperimentRun, config: IOIConfig, progress: bool = True):
        self.run, self.model, self.config, self.progress = run, run.model, config, progress
        self.spec, self.prov = run.spec, run.prov
        self.summary: dict = {"model": self.spec, "n_prompts": config.n_prompts,
                              "seed": config.seed}

    @property
    def folder(self) -> Path:
        """The run's folder: staging while the stages run, `<out>/<model>/ioi/` after."""
        return self.run.folder

    def dataset(self):
        with self.run.stage("dataset"):
            self.ds = build_ioi(self.model, self.config.n_prompts, self.config.seed,
                               source=self.config.dataset)
            self.ds.write_jsonl(self.folder / "dataset.jsonl")
            # the fast engine reads only head outputs of the corrupted run; without exact
            # activation patching (it reads resid_mid everywhere) path patching alone
            # reads `POSITION_READS`, at the named positions
            fast = family_of(self.model) is not None
            sliced = POSITION_READS if fast and not self.config.exact else ()
            self.runs = prepare_runs(self.model, self.ds.batch, lean_clean_hooks(self.model),
                                     corrupted_hooks=("attn.hook_z",) if fast else None,
                                     positions_only=sliced)
        clean, acc = _mean_stats(self.runs.clean_metric)
        corrupted, corr_acc = _mean_stats(self.runs.corrupted_metric)
        self.summary.update(prepend_bos=self.ds.batch.prepend_bos, **self.ds.batch.bos.record(),
                            clean_logit_diff=clean,
                            clean_accuracy=acc, corrupted_logit_diff=corrupted,
                            corrupted_accuracy=corr_acc, n_names=len(self.ds.vocab.names),
                            dataset=self.ds.source.name,
                            n_templates=len(self.ds.source.templates),
                            words_dropped_not_single_token=self.ds.vocab.dropped)

    def mean_sample(self):
        """The means mean ablation reads (after the gradient pass: not alive during it)."""
        with self.run.stage("mean_sample"):
            self.means = MeanSample.build(self.model, self.ds.source, self.config.n_mean_prompts,
                                          self.config.seed, self.config.n_resamples)
            self.means.drop_resamples(HEAD_MEANS)  # the spread reads the heads' alone
            self.mean_runs = self.means.runs_for(self.runs, self.ds.records)
        self.summary["mean_sample"] = self.means.record()

    def attribution(self):
        with self.run.stage("direct_logit_attribution"):
            dla = direct_logit_attribution(self.model, self.runs.clean_cache, self.ds.batch)
            self.dla = dla["heads"].mean(-1)
        with self.run.stage("activation_patching"):
            if self.config.exact:
                self.act_all, self.act_end = (
                    act_patch_heads(self.model, self.runs, "noise", pos, progress=self.progress)
                    for pos in (None, "END"))
            else:  # EAP estimates from the clean-run gradients the classification reuses
                clean_gradients(self.model, self.runs, positions_only=SCREEN_GRADIENTS)
                self.act_all, self.act_end = (act_patch_attribution(self.model, self.runs, pos)
                                              for pos in (None, "END"))
                _drop_z_gradients(self.runs)
        self.summary.update(direct_logit_attribution=_grid(self.dla),
                            activation_patching_all_positions=_grid(self.act_all),
                            activation_patching_end=_grid(self.act_end),
                            activation_patching_method=("exact" if self.config.exact
                                                        else "attribution"))

    def classify(self):
        with self.run.stage("attention_scores"):
            self.att = attention_scores(self.model, self.runs.clean_cache, self.ds.batch)
        thresholds = Thresholds(**self.config.thresholds)
        s = self.summary
        self.skipped = skip_reason(s["clean_logit_diff"], s["clean_accuracy"], thresholds)
        clf = Classifier(self.model, self.runs, self.att, thresholds, self.progress,
                         self.config.paths, self.config.top_k, self.mean_runs, self.dla,
                         lean=True)  # `evaluate` frees them anyway
        with self.run.stage("classification"):
            if self.skipped:
                print(f"[interp ioi] no heads labelled: {self.skipped}", file=sys.stderr)
                clf.logit_effects()
                classes = {c: [] for c in CLASS_POSITIONS}
            else:
                classes = clf.run()
        self.clf = clf
        self.classes = {k: [str(h) for h in v] for k, v in classes.items()}
        self.unclassified = clf.unclassified
        movers = [h for k in ("name_movers", "negative_name_movers", "backup_name_movers")
                  for h in classes[k]]
        with self.run.stage("copying_scores"):
            copying = copying_scores(self.model, self.runs.clean_cache, self.ds.batch, movers)
        self.summary.update(
            classification_skipped=self.skipped,
            path_patching_to_logits=_grid(clf.path_to_logits), head_classes=self.classes,
            unclassified=self.unclassified, class_scores=clf.scores, copying_scores=copying,
            backup_direct_effects=clf.backup_effects,
            path_patching_steps=_steps(clf), classification_paths=self.config.paths,
            senders_estimated_not_patched=clf.estimated,
            attention_scores={k: _grid(v) for k, v in self.att.items()})

    def evaluate(self):
        if self.skipped:
            self.circuit_eval = None
            self.summary["circuit"] = {"skipped": self.skipped}
            self.summary["paper_comparison"] = compare_with_paper(self.spec, self.classes, {})
            return
        circuit = {parse_node(h): CLASS_POSITIONS[c] for c, hs in self.classes.items()
                   for h in hs}
        wider = {**circuit, **{parse_node(h): ["END"] for h in self.unclassified}}
        groups = {c: [parse_node(h) for h in hs] for c, hs in self.classes.items()}
        release(self.runs, AFTER_CLASSIFICATION, corrupted_keep=())  # means: mean_runs
        return_freed_memory()
        with self.run.stage("circuit_evaluation"):
            self.circuit_eval = self._node_level(circuit, wider, groups)
        with self.run.stage("edge_faithfulness"):
            edges = self._edge_level()
        self.mean_runs = self.clf.mean_runs = None  # read by the node and edge levels only
        return_freed_memory()
        with self.run.stage("faithfulness_spread"):
            self.circuit_eval["faithfulness_spread"] = self._spread(circuit, wider)
        self.means.means.clear()  # the resamples' means: read by the spread only
        self.circuit_eval["edge_faithfulness"] = edges
        self.summary["circuit"] = self.circuit_eval
        self.summary["paper_comparison"] = compare_with_paper(self.spec, self.classes, {
            "clean_logit_diff": self.summary["clean_logit_diff"],
            "clean_accuracy": self.summary["clean_accuracy"],
            "faithfulness": self.circuit_eval["faithfulness"]["faithfulness"]})

    def _node_level(self, circuit, wider, groups) -> dict:
        """Faithfulness, completeness and minimality of the classes; the evaluator's ablated
        runs are freed when it returns."""
        model, runs, progress = self.model, self.mean_runs, self.progress
        ev = MeanAblation(model, runs)  # shares ablated runs across the three criteria
        return {
            "positions": CLASS_POSITIONS,
            "faithfulness": faithfulness(model, runs, circuit, ev),
            "faithfulness_with_unclassified": faithfulness(model, runs, wider, ev),
            "circuit_file_holds": CIRCUIT_FILE_HOLDS,
            "completeness": completeness(model, runs, circuit, groups, progress, ev),
            "minimality": minimality(model, runs, circuit, groups, progress=progress, ev=ev),
        }

    def _edge_level(self) -> dict:
        """The classified circuit with its edges (`interp.ioi.edges`), edge-ablated."""
        from interp.ioi.edges import classified_spec, edge_faithfulness

        spec = classified_spec(self.classes, "classified")
        return edge_faithfulness(self.model, self.mean_runs, spec)

    def _spread(self, circuit, wider) -> dict:
        """F(C)/F(M) with the means of each bootstrap resample of the mean sample."""
        f_m = self.runs.clean_metric.mean().item()
        values = {"classes": [], "with_unclassified": []}
        for draw in range(1, self.means.n_resamples + 1):
            ev = MeanAblation(self.model, self.means.runs_for(self.runs, self.ds.records,
                                                               draw, HEAD_MEANS))
            ev.runs.corrupted_cache.clear()  # head-only circuits read `ev.z_means` alone
            f_c, f_w = ev.metrics([circuit, wider]).mean(-1)
            del ev  # before the next draw's copy of the means is made
            values["classes"].append(f_c.item() / f_m)
            values["with_unclassified"].append(f_w.item() / f_m)
        return {k: {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "values": v}
                for k, v in values.items() if v}

    def write(self) -> Path:
        from interp.ioi.outputs import write_circuit_file, write_figures

        with self.run.stage("figures"):
            self.summary["figures"] = write_figures(self)
        self.summary["costs"] = stage_costs(self)
        write_circuit_file(self)
        return self.run.finish(self.summary)


def run_stages(run: ExperimentRun, config: IOIConfig, progress: bool = True) -> IOIRun:
    """Every stage on `run.model`, then the files, committed as one whole run."""
    ioi = IOIRun(run, config, progress)
    with counting():
        for stage in (ioi.dataset, ioi.attribution, ioi.mean_sample, ioi.classify,
                      ioi.evaluate):
            if progress:
                print(f"[interp ioi] {stage.__name__} ...", file=sys.stderr)
            stage()
        ioi.write()
    return ioi


def run_ioi(model, config: IOIConfig, out: Path, overwrite: bool = False,
            progress: bool = True) -> IOIRun:
    """Run every stage and write the outputs to `<out>/<model-slug>/ioi/` (atomically)."""
    with ExperimentRun.for_model(model, out, "ioi", config_record(config), overwrite,
                                 config.seed) as run:
        return run_stages(run, config, progress)
