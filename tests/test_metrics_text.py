"""The Prometheus text of ``gateway.http.metrics``, pinned line by line.

Prometheus text exposition format 0.0.4: a histogram's ``le`` buckets are cumulative
and inclusive (``le`` = less than or equal), the last is ``le="+Inf"`` and equals
``_count``; ``_sum`` is the sum of all observations; label values escape ``\\``, ``"``
and newline as ``\\\\``, ``\\"`` and ``\\n``; every metric line ends with a newline.
"""

from __future__ import annotations

from gateway.http.metrics import Histogram, Metrics


def _series(text: str, prefix: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            found[name] = value
    return found


def test_an_observation_on_a_bucket_bound_counts_in_that_bucket() -> None:
    """le is inclusive: 0.005 s is in le="0.005"; 0.0051 s is not."""
    hist = Histogram()
    hist.observe(0.005)
    hist.observe(1.0)
    hist.observe(0.0051)
    lines = _series("\n".join(hist.lines("h", (("route", "r"),))), "h_bucket")
    assert lines['h_bucket{route="r",le="0.005"}'] == "1"
    assert lines['h_bucket{route="r",le="0.01"}'] == "2"
    assert lines['h_bucket{route="r",le="0.5"}'] == "2"
    assert lines['h_bucket{route="r",le="1.0"}'] == "3"


def test_buckets_are_cumulative_and_end_with_plus_inf_equal_to_count() -> None:
    hist = Histogram()
    for seconds in (0.001, 0.2, 0.2, 3.0, 100.0):
        hist.observe(seconds)
    out = hist.lines("h", (("route", "r"),))
    buckets = [line for line in out if line.startswith("h_bucket")]
    values = [int(line.rsplit(" ", 1)[1]) for line in buckets]
    assert values == sorted(values), out  # cumulative: never decreasing
    assert buckets[-1] == 'h_bucket{route="r",le="+Inf"} 5', out
    assert 'h_bucket{route="r",le="0.25"} 3' in out
    assert 'h_bucket{route="r",le="5.0"} 4' in out
    assert 'h_count{route="r"} 5' in out
    assert 'h_sum{route="r"} 103.401000' in out


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.count_error('a"b\\c\nd', "x")
    text = metrics.render()
    assert 'wallaby_errors_total{route="a\\"b\\\\c\\nd",error="x"} 1\n' in text, text


def test_a_collector_without_a_final_newline_does_not_join_the_next_line() -> None:
    metrics = Metrics()
    metrics.add_collector(lambda: "a_metric 1")
    metrics.add_collector(lambda: "b_metric 2\n")
    text = metrics.render()
    assert text.endswith("a_metric 1\nb_metric 2\n"), text[-80:]
