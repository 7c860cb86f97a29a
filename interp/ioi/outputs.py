"""Files an IOI run writes besides summary.json: figures and the discovered circuit."""

from interp.circuits.format import write_circuit
from interp.ioi.edges import classified_spec
from interp.ioi.scores import io_attention_and_projection
from interp.nodes import parse_node
from interp.plotting import head_heatmap, save_figure
from interp.plotting.attention import attention_views
from interp.plotting.ioi import circuit_diagram, faithfulness_figure
from interp.plotting.ioi_extra import copying_bars, name_mover_scatter, step_heatmap
from interp.plotting.links import save_linked_figure

CIRCUIT_FILE = "circuit.yaml"
STEP_TITLES = {  # path-patching step -> what its receivers are
    "logits": "head -> logits",
    "s_inhibition": "head -> name movers' queries at END",
    "induction_duplicate": "head -> S-inhibition heads' values at S2",
    "previous_token": "head -> induction heads' keys at S1+1",
}


def _example_tokens(run):
    batch = run.ds.batch
    return batch.clean_tokens[0, : int(batch.read_positions[0]) + 1]


def _top_heads_per_class(classes: dict[str, list[str]], k: int = 2) -> list[str]:
    return [h for heads in classes.values() for h in heads[:k]]


def _step_figures(run, folder, root) -> list[str]:
    names = []
    for step, data in run.summary["path_patching_steps"].items():
        if all(v is None for row in data["relative_effect"] for v in row):
            continue  # no sender before the receivers (e.g. name movers in layer 0)
        marked = " (x: attribution estimate only, not patched exactly)" if data[
            "estimated"] else " (every sender patched exactly)"
        title = f"{run.spec}: path patching, {STEP_TITLES[step]}{marked}"
        name = f"path_patching_step_{step}.html"
        save_figure(step_heatmap(data["relative_effect"], data["estimated"], title,
                                 "change of logit diff / clean"), folder / name, root=root)
        names.append(name)
    return names


def _head_figures(run, folder, root) -> list[str]:
    """Copying-score bars of the labelled heads and the name-mover scatter."""
    spec, names = run.spec, []
    head_class = {h: cls for cls, heads in run.classes.items() for h in heads}
    head_class |= {h: "unclassified" for h in run.unclassified}
    if head_class:
        copying = run.clf.copying
        for h in head_class:  # score heads of the other classes too
            run.clf._copy(parse_node(h))
        save_figure(copying_bars(copying, head_class, f"{spec}: copying scores of the "
                                 "classified and unclassified heads"), folder / "copying.html",
                    root=root)
        names.append("copying.html")
    movers = run.classes["name_movers"][:3]
    if movers:
        data = io_attention_and_projection(run.model, run.runs.clean_cache, run.ds.batch,
                                           [parse_node(h) for h in movers])
        save_figure(name_mover_scatter(data, f"{spec}: name movers, attention to IO vs "
                                       "projection on the IO - S unembedding (per prompt)"),
                    folder / "name_mover_scatter.html", root=root)
        names.append("name_mover_scatter.html")
    return names


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
    names = [*grids, *_step_figures(run, folder, root), *_head_figures(run, folder, root)]
    diagram = {**run.classes, "unclassified": list(run.unclassified)}
    skipped = f" (no heads labelled: {run.skipped})" if run.skipped else ""
    save_linked_figure(circuit_diagram(diagram, n_layers, f"{spec}: IOI circuit found by path "
                                       f"patching; grey: strong unclassified heads{skipped}"),
                       folder / "circuit_diagram.html", root=root)
    names.append("circuit_diagram.html")
    if run.circuit_eval:
        save_figure(faithfulness_figure(run.circuit_eval, f"{spec}: IOI circuit faithfulness "
                                        "and completeness"), folder / "faithfulness.html",
                    root=root)
        names.append("faithfulness.html")
    names += [f"attention_{h}.html" for h in views]
    return {n.removesuffix(".html"): n for n in names}


def _edge_note(run) -> str:
    edge = run.circuit_eval.get("edge_faithfulness", {})
    if "faithfulness" not in edge:
        return ""
    return (f" Edges: the classes' edges of the paper's fig. 2 found here; edge-level "
            f"faithfulness {edge['faithfulness']:.4f} (`interp evaluate-circuit` on this file).")


def write_circuit_file(run) -> None:
    """The discovered circuit as a hypothesis file that `interp evaluate-circuit` reads."""
    spec = classified_spec(run.classes, f"ioi-{run.spec}-discovered",
                           description=f"IOI circuit found by `interp ioi` on {run.spec} "
                                       f"(n_prompts={run.config.n_prompts}, "
                                       f"seed={run.config.seed})", model=run.spec, task="ioi")
    if spec is None:  # nothing labelled (or the model fails the task): no hypothesis to write
        run.summary["circuit_file"] = None
        return
    faith = run.circuit_eval["faithfulness"]["faithfulness"]
    wider = run.circuit_eval["faithfulness_with_unclassified"]["faithfulness"]
    header = (f"Written by `interp ioi` on {run.spec}; faithfulness {faith:.4f} on its "
              f"{run.config.n_prompts} prompts (seed {run.config.seed}). Not GPT-2's circuit "
              f"unless the model is gpt2. The 7 classes only: the {len(run.unclassified)} "
              f"strong unclassified heads of summary.json are left out (with them at END: "
              f"{wider:.4f}).{_edge_note(run)}")
    write_circuit(spec, run.folder / CIRCUIT_FILE, header)
    run.summary["circuit_file"] = CIRCUIT_FILE
