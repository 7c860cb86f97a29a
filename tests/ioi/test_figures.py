import torch

from interp.dla import logit_directions
from interp.ioi.dataset import build_ioi
from interp.ioi.scores import io_attention_and_projection
from interp.nodes import Head
from interp.patching import prepare_runs
from interp.plotting.ioi_extra import copying_bars, step_heatmap


def test_step_heatmap_marks_estimated_cells():
    grid = [[0.1, None], [-0.2, 0.05]]
    fig = step_heatmap(grid, ["L1H0"], "t (x: estimate only)", "effect")
    marks = [t for t in fig.data if t.type == "scatter"]
    assert len(marks) == 1 and list(marks[0].x) == [0] and list(marks[0].y) == [1]
    assert torch.isnan(torch.tensor(fig.data[0].z[0][1]))
    assert not [t for t in step_heatmap(grid, [], "t", "e").data if t.type == "scatter"]


def test_copying_bars_one_bar_per_head_and_kind():
    fig = copying_bars({"copying": {"L0H1": 0.9}, "negative_copying": {"L0H1": 0.0}},
                       {"L0H1": "name_movers"}, "t")
    assert [list(t.y) for t in fig.data] == [[0.9], [0.0]]


def test_scatter_projection_equals_knocking_the_head_out(tiny):
    """The projection is the head's share of attn_out at END (attn_out minus attn_out with
    the head's z zeroed), dotted with W_U[IO] - W_U[S]."""
    batch = build_ioi(tiny, 6, 0).batch
    runs = prepare_runs(tiny, batch)
    head = Head(1, 2)
    data = io_attention_and_projection(tiny, runs.clean_cache, batch, [head])["L1H2"]
    rows, end = torch.arange(len(batch)), batch.read_positions
    full = runs.clean_cache["blocks.1.hook_attn_out"][rows, end]

    def zero(z, hook=None):
        z = z.clone()
        z[:, :, head.head] = 0
        return z

    out = {}
    with tiny.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero)]):
        _, cache = tiny.run_with_cache(batch.clean_tokens, names_filter=lambda n: n.endswith(
            "attn_out"))
        out = cache["blocks.1.hook_attn_out"][rows, end]
    ref = ((full - out) * logit_directions(tiny, batch.metric)).sum(-1)
    assert torch.allclose(torch.tensor(data["projection"]), ref, atol=1e-4)
    pattern = runs.clean_cache["blocks.1.attn.hook_pattern"][rows, 2, end, batch.positions["IO"]]
    assert torch.allclose(torch.tensor(data["attn_end_to_io"]), pattern)
