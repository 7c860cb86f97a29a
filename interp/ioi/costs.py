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
- classification: the FLOP floor of path patching every head to the logits, plus the
  name-mover-ablated run of the backup step from the first name mover's layer on (the
  layers before it are the clean run's), unless classification is skipped (the q/k/v
  steps are not counted);
- circuit_evaluation: the circuit C's run (1), F(0)'s run at the read positions only (every
  head is its mean there, so no position reads another: 1 / prompt length), and for each
  class K, M \\ K from K's first layer on (the layers before are the clean run's); C \\ K and
  the minimality knock-outs resume from C and are not counted;
- faithfulness_spread: one run of C per bootstrap resample of the means;
- the other stages read caches only (0).

Example:
    >>> costs = stage_costs(ioi)  # {"classification": {"wall_s": .., "forward_equivalents": ..}}
"""

from interp.nodes import parse_node
from interp.patching.sparse import first_differing_token


def _forward_flops(cfg, lengths: list[int]) -> int:
    from interp.bench import block_flops

    return sum(cfg.n_layers * block_flops(cfg, n) for n in lengths)


def _later_layers(cfg, heads) -> float:
    """Share of a forward from the first layer of `heads` on (0 without heads)."""
    if not heads:
        return 0.0
    return (cfg.n_layers - min(parse_node(h).layer for h in heads)) / cfg.n_layers


def minimums(ioi) -> dict[str, float]:
    """The least forward-equivalents each stage needs (module docstring)."""
    from interp.bench import act_patch_floor, block_flops, metric_columns, path_patch_floor

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
    backup = _later_layers(cfg, classes.get("name_movers", []))
    evaluation = 0.0
    if classes:
        evaluation = 1.0 + 1.0 / batch.clean_tokens.shape[1] + sum(
            _later_layers(cfg, heads) for heads in classes.values())
    return {"dataset": 2.0, "mean_sample": mean_tokens / batch.clean_tokens.numel(),
            "direct_logit_attribution": 0.0, "activation_patching": act,
            "attention_scores": 0.0,
            "classification": (0.0 if ioi.skipped else backup)
            + path_patch_floor(cfg, len(batch), columns) / unit,
            "copying_scores": 0.0, "circuit_evaluation": evaluation,
            "faithfulness_spread": float(config.n_resamples) if classes else 0.0,
            "figures": 0.0}


def stage_costs(ioi) -> dict[str, dict]:
    """Wall, CPU, RSS high-water, forward-equivalents and their minimum, per stage."""
    return ioi.prov.cost_table(ioi.model.cfg.n_layers, ioi.ds.batch.clean_tokens.numel(),
                               minimums(ioi))
