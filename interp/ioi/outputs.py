"""Files an IOI run writes besides summary.json: figures and the discovered circuit."""

from interp.circuits.format import CircuitSpec, Group, write_circuit
from interp.ioi.classify import CLASS_POSITIONS
from interp.nodes import parse_node
from interp.plotting import head_heatmap
from interp.plotting.attention import attention_views
from interp.plotting.ioi import circuit_diagram, faithfulness_figure
from interp.plotting.links import save_linked_figure

CIRCUIT_FILE = "circuit.yaml"


def _example_tokens(run):
    batch = run.ds.batch
    return batch.clean_tokens[0, : int(batch.read_positions[0]) + 1]


def _top_heads_per_class(classes: dict[str, list[str]], k: int = 2) -> list[str]:
    return [h for heads in classes.values() for h in heads[:k]]


def write_figures(run) -> dict[str, str]:
    """Write every HTML figure of the run; returns {name: file name}."""
    folder, spec, n_layers = run.folder, run.spec, run.model.cfg.n_layers
    root = folder.parent.parent  # <out> of <out>/<model>/ioi
    views = _top_heads_per_class(run.classes)
    attention_views(run.model, _example_tokens(run), views, folder, root=root)
    how = "" if run.config.exact else " (attribution estimate; --exact patches every head)"
    grids = {
        "dla_heads.html": (run.dla, f"{spec}: direct logit attribution per head (IO - S)",
                           "logit diff"),
        "path_patching_to_logits.html": (run.summary["path_patching_to_logits"],
                                         f"{spec}: path patching, head -> logits (change of "
                                         "logit diff)", "change of logit diff"),
        "activation_patching.html": (run.act_all, f"{spec}: activation patching per head, "
                                     f"corrupted -> clean, all positions{how}",
                                     "change of logit diff"),
        "activation_patching_end.html": (run.act_end, f"{spec}: activation patching per head "
                                         f"at END{how}", "change of logit diff"),
    }
    for name, (values, title, label) in grids.items():
        save_linked_figure(head_heatmap(values, title, label), folder / name, root=root,
                           heads=views)
    save_linked_figure(circuit_diagram(run.classes, n_layers, f"{spec}: IOI circuit found "
                                       "by path patching"), folder / "circuit_diagram.html",
                       root=root)
    from interp.plotting import save_figure
    save_figure(faithfulness_figure(run.circuit_eval, f"{spec}: IOI circuit faithfulness and "
                                    "completeness"), folder / "faithfulness.html", root=root)
    names = [*grids, "circuit_diagram.html", "faithfulness.html"]
    names += [f"attention_{h}.html" for h in views]
    return {n.removesuffix(".html"): n for n in names}


def write_circuit_file(run) -> None:
    """The discovered circuit as a hypothesis file that `interp evaluate-circuit` reads."""
    groups = {cls: Group(cls, [parse_node(h) for h in heads], CLASS_POSITIONS[cls])
              for cls, heads in run.classes.items() if heads}
    faith = run.circuit_eval["faithfulness"]["faithfulness"]
    spec = CircuitSpec(name=f"ioi-{run.spec}-discovered", groups=groups, ablation="mean",
                       description=f"IOI circuit found by `interp ioi` on {run.spec} "
                                   f"(n_prompts={run.config.n_prompts}, seed={run.config.seed})",
                       model=run.spec, task="ioi")
    header = (f"Written by `interp ioi` on {run.spec}; faithfulness {faith:.4f} on its "
              f"{run.config.n_prompts} prompts (seed {run.config.seed}). Not GPT-2's circuit "
              "unless the model is gpt2.")
    write_circuit(spec, run.folder / CIRCUIT_FILE, header)
    run.summary["circuit_file"] = CIRCUIT_FILE
