"""over_time.png (metrics/serve_plots.py) fits its axes to the data: a budget far above a light
run's lines is named in the legend, not drawn as a line that presses them flat; the prefix cache's
blocks are a line when the step records carry them. Built from hand-written step records."""
import pytest

from moe_serve.metrics import serve_plots

pytest.importorskip("matplotlib")

# Two steps, an idle gap, one more: at most 2 running, 1 waiting, 3 KV blocks.
STEPS = [
    dict(t=0.0, dt=0.5, slots_used=1, waiting=0, kv_blocks_used=2),
    dict(t=0.5, dt=0.5, slots_used=2, waiting=1, kv_blocks_used=3),
    dict(t=2.0, dt=0.5, slots_used=1, waiting=0, kv_blocks_used=1),
]


@pytest.fixture(name="plt")
def _plt():
  plt = serve_plots._pyplot()  # pylint: disable=protected-access
  yield plt
  plt.close("all")


def _labels(ax):
  return [line.get_label() for line in ax.get_lines()]


def test_budgets_far_above_the_data_are_named_not_drawn(plt):
  fig = serve_plots.over_time(plt, STEPS, [], kv_num_blocks=1024, max_num_seqs=64)
  _, requests, kv = fig.axes
  assert requests.get_ylim() == pytest.approx((0, 2 * 1.1))  # the peak, 2 running
  assert kv.get_ylim() == pytest.approx((0, 3 * 1.1))  # 3 blocks
  assert _labels(requests) == ["running (slots used)", "waiting",
                               "slots: 64 (32x the peak, off the scale)"]
  assert _labels(kv) == ["KV blocks used", "KV budget: 1024 (341x the peak, off the scale)"]
  assert all(max(line.get_ydata(), default=0) <= 3 for ax in (requests, kv)
             for line in ax.get_lines())  # no line at 64 or 1024
  assert "cached" not in kv.get_title()


def test_a_budget_near_the_data_is_a_line_and_cached_blocks_are_drawn(plt):
  steps = [dict(s, kv_blocks_cached=c) for s, c in zip(STEPS, (0, 2, 1))]
  fig = serve_plots.over_time(plt, steps, [], kv_num_blocks=8, max_num_seqs=4)
  _, requests, kv = fig.axes
  assert requests.get_ylim() == pytest.approx((0, 4 * 1.1))  # up to the 4 slots
  assert kv.get_ylim() == pytest.approx((0, 8 * 1.1))
  assert _labels(requests)[-1] == "slots (4)" and list(requests.get_lines()[-1].get_ydata()) == [
      4, 4]
  assert _labels(kv) == ["KV blocks used", "KV blocks held by the prefix cache", "KV budget (8)"]
  cached = kv.get_lines()[1]
  # Held over each step; in the idle gap from 1.0 to 2.0 the cache keeps what the next step
  # found there (1 block), and so do the used blocks (nothing else is held then).
  assert list(cached.get_xdata()) == [0.0, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 2.5]
  assert list(cached.get_ydata()) == [0, 0, 2, 2, 1, 1, 1, 1]
  assert list(kv.get_lines()[0].get_ydata()) == [2, 2, 3, 3, 1, 1, 1, 1]
  assert kv.get_title() == "KV cache blocks used and cached"
