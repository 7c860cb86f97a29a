"""Per-stage cost of an IOI run next to the least each stage needs (summary.json `costs`).

Units: one forward-equivalent = one forward of the IOI batch (every prompt, padded, through
every block). Counted: token x block evaluations (`interp.patching.counter`; MLP-only steps
count their share of a block; backward passes not counted). Minimums are lower bounds on
forwards the stage's definition requires:

- dataset: the clean and the corrupted cached runs (2);
- mean_sample: one forward of the separate p_ABC mean sample;
- activation_patching: the clean run with gradients (1) by default; with `--exact`, the FLOP
  floor of activation patching every head at all positions (`interp.bench`, over the tokens
  from the first one the corruption changes: earlier ones are the same in both runs) plus
  at END (one token per later layer);
- classification: the FLOP floor of path patching every head to the logits; the
  name-mover-ablated run of the backup step from the first name mover's layer on (the
  layers before it are the clean run's), tokens up to the reads; and each q/k/v step's
  floor (`path_step_floor`): the screen's estimate needs every sender's patched input at
  each receiver (one MLP per layer between, at the receivers' positions), and a sender
  patched exactly needs the paper's final run from the first receiver layer above it, on
  the tokens from the receivers' first position to the read. Nothing when classification
  is skipped. (These steps used to be left out, so the minimum read 5.2 where the stage
  cannot do with less than about 14 on smollm2-135m.);
- circuit_evaluation: the circuit C's run and F(0)'s run at the read positions only (every
  head is its mean there, so no position reads another: 1 / prompt length); for each class
  K, M \\ K from K's first layer on (the layers before are the clean run's); C \\ K, the
  circuit with the unclassified heads and each single-node knock-out of the minimality,
  resumed from C at the node's layer on the tokens from its first kept position (the
  minimality's group knock-outs are not counted). Every run counts its tokens up to the
  reads only (`interp.circuit.read_share`): later ones change nothing;
- faithfulness_spread: one run of C per bootstrap resample of the means (tokens up to the
  reads);
- the other stages read caches only (0).

Example:
    >>> costs = stage_costs(ioi)  # {"classification": {"wall_s": .., "forward_equivalents": ..}}
"""

import torch

from interp.circuit import read_share
from interp.ioi.classify import CLASS_POSITIONS
from interp.nodes import parse_node
from interp.patching import counter
from interp.patching.sparse import first_differing_token


def _forward_flops(cfg, lengths: list[int]) -> int:
    from interp.bench import block_flops

    return sum(cfg.n_layers * block_flops(cfg, n) for n in lengths)


def _later_layers(cfg, heads) -> float:
    """Share of a forward from the first layer of `heads` on (0 without heads)."""
    if not heads:
        return 0.0
    return (cfg.n_layers - min(parse_node(h).layer for h in heads)) / cfg.n_layers


def _resumed(cfg, batch, layer: int, positions: list[str]) -> float:
    """A run resumed at `layer` that changes from the first of `positions` on: its tokens
    from there to the read in every layer, the read alone in the last (forward units)."""
    first = torch.stack([batch.positions[p] for p in positions]).amin(0)
    tokens = float((batch.read_positions - first + 1).sum())
    if layer >= cfg.n_layers:
        return 0.0
    return ((cfg.n_layers - 1 - layer) * tokens + len(batch)) / (
        cfg.n_layers * batch.clean_tokens.numel())


def path_step_floor(cfg, batch, step: dict) -> float:
    """The least a q/k/v path-patching step needs (forward units; `Classifier.step_paths`):
    for each sender it `propagated` (every sender of a screen's estimate or of an exact
    step), its patched input at every receiver it reaches (the MLPs of the layers from its
    own to the receiver's, at the receivers' positions); for each sender patched exactly,
    the final run from the first receiver layer above it, on the tokens from those
    receivers' first position."""
    receivers, unit = step["receivers"], cfg.n_layers * batch.clean_tokens.numel()
    mlps = 0
    for sender in step["propagated"]:
        later = [r for r in receivers if r.head.layer > sender.layer]
        if later:
            mlps += len(batch) * len({r.position for r in later}) * (
                max(r.head.layer for r in later) - sender.layer)
    final = 0.0
    for sender in step["exact"]:
        later = [r for r in receivers if r.head.layer > sender.layer]
        if later:
            start = min(r.head.layer for r in later)
            final += _resumed(cfg, batch, start, [r.position for r in later
                                                  if r.head.layer >= start])
    return counter.mlp_share(cfg) * mlps / unit + final


def _classification(ioi, cfg, columns: int, unit: float) -> float:
    from interp.bench import path_patch_floor

    logits = path_patch_floor(cfg, len(ioi.ds.batch), columns) / unit
    if ioi.skipped:
        return logits
    backup = read_share(ioi.ds.batch) * _later_layers(cfg, ioi.classes["name_movers"])
    return logits + backup + sum(path_step_floor(cfg, ioi.ds.batch, step)
                                 for step in getattr(ioi.clf, "step_paths", {}).values())


def _evaluation(ioi, cfg) -> float:
    """circuit_evaluation's floor (module docstring)."""
    batch, classes = ioi.ds.batch, ioi.classes
    share = read_share(batch)
    total = share + 1.0 / batch.clean_tokens.shape[1]
    for name, heads in classes.items():
        if heads:
            total += share * _later_layers(cfg, heads)  # M \ K
            total += _resumed(cfg, batch, min(parse_node(h).layer for h in heads),
                              CLASS_POSITIONS[name])  # C \ K
            total += sum(_resumed(cfg, batch, parse_node(h).layer, CLASS_POSITIONS[name])
                         for h in heads)  # C \ {v}
    unclassified = list(getattr(ioi, "unclassified", {}))
    if unclassified:
        total += _resumed(cfg, batch, min(parse_node(h).layer for h in unclassified), ["END"])
    return total


def minimums(ioi) -> dict[str, float]:
    """The least forward-equivalents each stage needs (module docstring)."""
    from interp.bench import act_patch_floor, block_flops, metric_columns

    cfg, batch, config = ioi.model.cfg, ioi.ds.batch, ioi.config
    columns = metric_columns(cfg, batch.metric)
    padded = [batch.clean_tokens.shape[1]] * len(batch)
    unit = _forward_flops(cfg, padded)
    mean_tokens = getattr(ioi.means, "n_tokens", 0)
    act = 1.0
    if config.exact:  # all positions (from the first token that differs) and END
        first = first_differing_token(batch).tolist()
        end = sum(cfg.n_heads * len(batch) * (cfg.n_layers - layer) * block_flops(cfg, 1)
                  for layer in range(cfg.n_layers))
        act = (act_patch_floor(cfg, (batch.read_positions + 1).tolist(), columns, first)
               + end) / unit
    classes = {} if ioi.skipped else ioi.classes
    evaluation = _evaluation(ioi, cfg) if classes else 0.0
    return {"dataset": 2.0, "mean_sample": mean_tokens / batch.clean_tokens.numel(),
            "direct_logit_attribution": 0.0, "activation_patching": act,
            "attention_scores": 0.0,
            "classification": _classification(ioi, cfg, columns, unit),
            "copying_scores": 0.0, "circuit_evaluation": evaluation,
            "faithfulness_spread": (config.n_resamples * read_share(batch)) if classes
            else 0.0,
            "figures": 0.0}


def stage_costs(ioi) -> dict[str, dict]:
    """Wall, CPU, RSS high-water, forward-equivalents and their minimum, per stage."""
    return ioi.prov.cost_table(ioi.model.cfg.n_layers, ioi.ds.batch.clean_tokens.numel(),
                               minimums(ioi))
