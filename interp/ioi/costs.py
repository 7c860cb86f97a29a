"""Per-stage cost of an IOI run next to the least each stage needs (summary.json `costs`).

Units: one forward-equivalent = one forward of the IOI batch (every prompt, padded, through
every block). Counted: token x block evaluations (`interp.patching.counter`; MLP-only steps
count their share of a block; backward passes not counted). Minimums are lower bounds on
forwards the stage's definition requires:

- dataset: the clean and the corrupted cached runs (2);
- mean_sample: one forward of the separate p_ABC mean sample;
- activation_patching: the clean run with gradients (1) by default; with `--exact`, the FLOP
  floor of activation patching every head (all positions and END, `interp.bench`);
- classification: the FLOP floor of path patching every head to the logits, plus the
  name-mover-ablated run (1) of the backup step, unless classification is skipped (the
  q/k/v steps are not counted);
- circuit_evaluation: the two runs that share no layer with the clean run (the circuit C
  and the empty circuit); every other criterion can resume from them;
- faithfulness_spread: one run of C per bootstrap resample of the means;
- the other stages read caches only (0).

Example:
    >>> costs = stage_costs(ioi)  # {"classification": {"wall_s": .., "forward_equivalents": ..}}
"""


def _forward_flops(cfg, lengths: list[int]) -> int:
    from interp.bench import block_flops

    return sum(cfg.n_layers * block_flops(cfg, n) for n in lengths)


def minimums(ioi) -> dict[str, float]:
    """The least forward-equivalents each stage needs (module docstring)."""
    from interp.bench import act_patch_floor, lengths, metric_columns, path_patch_floor

    cfg, batch, config = ioi.model.cfg, ioi.ds.batch, ioi.config
    columns = metric_columns(cfg, batch.metric)
    padded = [batch.clean_tokens.shape[1]] * len(batch)
    unit = _forward_flops(cfg, padded)
    mean_tokens = getattr(ioi.means, "n_tokens", 0)
    act = 1.0
    if config.exact:
        act = 2 * act_patch_floor(cfg, lengths(batch), columns) / unit
    return {"dataset": 2.0, "mean_sample": mean_tokens / batch.clean_tokens.numel(),
            "direct_logit_attribution": 0.0, "activation_patching": act,
            "attention_scores": 0.0,
            "classification": (0.0 if ioi.skipped else 1.0)
            + path_patch_floor(cfg, len(batch), columns) / unit,
            "copying_scores": 0.0, "circuit_evaluation": 2.0,
            "faithfulness_spread": float(config.n_resamples), "figures": 0.0}


def stage_costs(ioi) -> dict[str, dict]:
    """Wall, CPU, RSS high-water, forward-equivalents and their minimum, per stage."""
    return ioi.prov.cost_table(ioi.model.cfg.n_layers, ioi.ds.batch.clean_tokens.numel(),
                               minimums(ioi))
