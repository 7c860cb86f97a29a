"""The whole IOI reproduction for one model: what `interp ioi` runs.

Stages: dataset -> clean/corrupted runs -> direct logit attribution -> activation patching ->
attention scores -> head classification (path patching) -> copying scores -> circuit
evaluation -> files (dataset.jsonl, summary.json, circuit.yaml, HTML figures).

Default mode: activation patching is estimated by attribution (EAP) and the q/k/v
path-patching steps screen senders by attribution before patching the strongest exactly; one
clean backward pass serves both. `IOIConfig(exact=True)` (`interp ioi --exact`) patches every
head and sender exactly instead.
"""

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from interp.circuit import completeness, faithfulness, minimality
from interp.dla import direct_logit_attribution
from interp.ioi.classify import CLASS_POSITIONS, Thresholds, classify_heads
from interp.ioi.dataset import build_ioi
from interp.ioi.paper import compare_with_paper
from interp.ioi.scores import attention_scores, copying_scores
from interp.mean_ablation import MeanAblation
from interp.nodes import parse_node
from interp.patching import act_patch_heads, prepare_runs
from interp.patching.gradients import act_patch_attribution
from interp.runner import ExperimentRun


@dataclass
class IOIConfig:
    """The arguments that define an IOI run (stored as summary.json's `config`)."""

    n_prompts: int = 100
    seed: int = 0
    exact: bool = False  # every sweep exact (slow); default: screen by gradients, confirm top
    top_k: int = 10  # senders patched exactly per screened path-patching step (at least)
    thresholds: dict = field(default_factory=lambda: asdict(Thresholds()))

    @property
    def paths(self) -> str:
        return "exact" if self.exact else "screen"


def _grid(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 5) for v in row] for row in t]


def _mean_stats(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values > 0).float().mean().item()


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
        with self.prov.stage("dataset"):
            self.ds = build_ioi(self.model, self.config.n_prompts, self.config.seed)
            self.ds.write_jsonl(self.folder / "dataset.jsonl")
            self.runs = prepare_runs(self.model, self.ds.batch)
        clean, acc = _mean_stats(self.runs.clean_metric)
        corrupted, corr_acc = _mean_stats(self.runs.corrupted_metric)
        self.summary.update(prepend_bos=self.ds.batch.prepend_bos, **self.ds.batch.bos.record(),
                            clean_logit_diff=clean,
                            clean_accuracy=acc, corrupted_logit_diff=corrupted,
                            corrupted_accuracy=corr_acc, n_names=len(self.ds.vocab.names))

    def attribution(self):
        with self.prov.stage("direct_logit_attribution"):
            dla = direct_logit_attribution(self.model, self.runs.clean_cache, self.ds.batch)
            self.dla = dla["heads"].mean(-1)
        with self.prov.stage("activation_patching"):
            if self.config.exact:
                self.act_all, self.act_end = (
                    act_patch_heads(self.model, self.runs, "noise", pos, progress=self.progress)
                    for pos in (None, "END"))
            else:  # EAP estimates from the clean-run gradients the classification reuses
                self.act_all, self.act_end = (act_patch_attribution(self.model, self.runs, pos)
                                              for pos in (None, "END"))
        self.summary.update(direct_logit_attribution=_grid(self.dla),
                            activation_patching_all_positions=_grid(self.act_all),
                            activation_patching_end=_grid(self.act_end),
                            activation_patching_method=("exact" if self.config.exact
                                                        else "attribution"))

    def classify(self):
        with self.prov.stage("attention_scores"):
            self.att = attention_scores(self.model, self.runs.clean_cache, self.ds.batch)
        with self.prov.stage("classification"):
            classes, clf = classify_heads(self.model, self.runs, self.att,
                                          Thresholds(**self.config.thresholds), self.progress,
                                          self.config.paths, self.config.top_k)
        self.classes = {k: [str(h) for h in v] for k, v in classes.items()}
        movers = [h for k in ("name_movers", "negative_name_movers", "backup_name_movers")
                  for h in classes[k]]
        with self.prov.stage("copying_scores"):
            copying = copying_scores(self.model, self.runs.clean_cache, self.ds.batch, movers)
        self.summary.update(
            path_patching_to_logits=_grid(clf.path_to_logits), head_classes=self.classes,
            class_scores=clf.scores, copying_scores=copying, classification_paths=(
                self.config.paths), senders_estimated_not_patched=clf.estimated,
            attention_scores={k: _grid(v) for k, v in self.att.items()})

    def evaluate(self):
        circuit = {parse_node(h): CLASS_POSITIONS[c] for c, hs in self.classes.items()
                   for h in hs}
        groups = {c: [parse_node(h) for h in hs] for c, hs in self.classes.items()}
        model, runs, progress = self.model, self.runs, self.progress
        with self.prov.stage("circuit_evaluation"):
            ev = MeanAblation(model, runs)  # shares ablated runs across the three criteria
            self.circuit_eval = {
                "positions": CLASS_POSITIONS,
                "faithfulness": faithfulness(model, runs, circuit, ev),
                "completeness": completeness(model, runs, circuit, groups, progress, ev),
                "minimality": minimality(model, runs, circuit, groups, progress=progress, ev=ev),
            }
        self.summary["circuit"] = self.circuit_eval
        self.summary["paper_comparison"] = compare_with_paper(self.spec, self.classes, {
            "clean_logit_diff": self.summary["clean_logit_diff"],
            "clean_accuracy": self.summary["clean_accuracy"],
            "faithfulness": self.circuit_eval["faithfulness"]["faithfulness"]})

    def write(self) -> Path:
        from interp.ioi.outputs import write_circuit_file, write_figures

        with self.prov.stage("figures"):
            self.summary["figures"] = write_figures(self)
        write_circuit_file(self)
        return self.run.finish(self.summary)


def run_stages(run: ExperimentRun, config: IOIConfig, progress: bool = True) -> IOIRun:
    """Every stage on `run.model`, then the files, committed as one whole run."""
    ioi = IOIRun(run, config, progress)
    for stage in (ioi.dataset, ioi.attribution, ioi.classify, ioi.evaluate):
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
