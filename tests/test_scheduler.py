"""The one window scheduler (rerank.ranking.iter_sliding) behind sliding inference and complete labels."""

import pytest

from rerank.labels import Candidates, iter_complete_labels
from rerank.ranking import SlidingPlan, SlidingState, Window, WindowRanking, iter_sliding, sliding_orders


class Recorder:
    """Largest number first; records the (qid, first passage) of every window it is asked."""

    def __init__(self):
        self.windows = []

    def rank_windows(self, windows):
        self.windows += [(w.qid, tuple(w.passages)) for w in windows]
        return [
            WindowRanking(
                order=sorted(range(len(w.passages)), key=lambda i: -int(w.passages[i])), ranked=len(w.passages)
            )
            for w in windows
        ]


def test_freezing_plan_walks_the_hand_computed_schedule():
    plan = SlidingPlan(window_size=4, stride=2, passes=None, freeze=True)
    state = SlidingState(order=list(range(7)))
    state.start_pass(plan)
    seen = []
    while not state.done:
        seen.append((state.passes, state.starts[state.step], state.is_last_window(plan)))
        state.apply([0, 1, 2, 3][: len(state.window_ids(plan))], plan)  # keep order: only the schedule matters
    # pass 1 over 7: windows at 3, 1, 0; pass 2 over the 5 after the frozen 2: 2+1, 2+0; pass 3 over 3: 4
    assert seen == [(1, 3, False), (1, 1, False), (1, 0, False), (2, 3, False), (2, 2, False), (3, 4, True)]


def test_labels_with_one_pass_equal_inference_sliding():
    """One pass of complete labels is exactly one sliding pass at inference: the same scheduler."""
    lists = [[str(x) for x in (3, 11, 7, 0, 5, 9, 2, 8, 1, 10, 6, 4)], [str(x) for x in (5, 1, 4, 2, 3, 0)]]
    infer, label = Recorder(), Recorder()
    orders = sliding_orders(infer, [Window("q", p, qid=str(i)) for i, p in enumerate(lists)], window_size=4, stride=2)
    items = [Candidates(str(i), "q", [f"d{k}" for k in range(len(p))], p) for i, p in enumerate(lists)]
    labelled = {o.item.qid: o.order for o in iter_complete_labels(label, items, window_size=4, stride=2, max_passes=1)}
    assert [labelled["0"], labelled["1"]] == orders
    assert sorted(infer.windows) == sorted(label.windows)
    assert [int(lists[0][k]) for k in orders[0][:2]] == [11, 10]  # one pass carries the best `stride` to the top


def test_top_k_goes_to_the_last_window_only():
    asked = []

    def rank_round(windows):
        asked.extend(w.top_k for w in windows)
        return [WindowRanking(order=list(range(len(w.passages))), ranked=len(w.passages)) for w in windows]

    done = list(
        iter_sliding([Window("q", [str(i) for i in range(10)])], SlidingPlan(4, 2, passes=2), rank_round, top_k=3)
    )
    assert len(done) == 1 and asked == [None] * 7 + [3]  # 4 windows a pass, 2 passes


def test_an_exception_ends_only_its_own_list():
    def rank_round(windows):
        return [ValueError("boom") if w.qid == "bad" else WindowRanking(order=[1, 0], ranked=2) for w in windows]

    done = dict(
        iter_sliding(
            [Window("q", ["a", "b"], qid="ok"), Window("q", ["a", "b"], qid="bad")], SlidingPlan(4, 2), rank_round
        )
    )
    assert done[0].error is None and done[0].order == [1, 0]
    assert done[1].error == "ValueError: boom"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window_size": 0}, "window_size and stride"),
        ({"passes": 0}, "passes must be"),
        ({"passes": None}, "needs freeze"),
        ({"window_size": 4, "stride": 3, "freeze": True}, "at most half"),
    ],
)
def test_plan_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlidingPlan(**kwargs)
