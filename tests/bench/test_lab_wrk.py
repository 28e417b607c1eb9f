"""wrk as the serving benchmarks' load generator (bench/lab/wrk.py): its Lua script's result line read back,
rounds merged into the results row, and a real short wrk run against a real service on loopback."""

import shutil
from pathlib import Path

import pytest

from dynadapter.bench.lab.images import HEADERS, multipart_body
from dynadapter.bench.lab.rows import LoadRow
from dynadapter.bench.lab.wrk import BenchError, WrkRound, parse_output, run_wrk, summarize_rounds
from tests.support.service import serving
from tests.support.tiny_onnx_model import TinyWeights, png_bytes, write_model_version

#: wrk 4.1.0's output of a 1 s, 1-connection run of the script (recorded: 8 of 23 answers were 422; the histogram
#: shortened and one timeout added, so that every field is read).
RECORDED = """Running 1s test @ http://127.0.0.1:40929
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    42.40ms    9.24ms  47.97ms   95.65%
    Req/Sec    23.00      4.83    30.00     70.00%
  Latency Distribution
     50%   43.97ms
     99%   47.97ms
  23 requests in 1.00s, 2.79KB read
  Non-2xx or 3xx responses: 8
Requests/sec:     22.99
DYNADAPTER-WRK-RESULT {"responses":23,"duration_us":1000534,"non2xx":8,"connect":0,"read":0,"write":0,"timeout":1,\
"latency_us":[[359,1],[43346,1],[43840,4],[43906,10],[44048,5],[47936,1],[47971,1]]}
"""


def test_the_result_line_is_read_from_wrks_output() -> None:
    one = parse_output(RECORDED)
    assert (one.responses, one.non2xx, one.seconds) == (23, 8, 1.000534)
    assert one.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 1}
    # A timed-out request was sent and got no answer: it counts as a request and an error.
    assert (one.requests, one.errors, one.answered) == (24, 9, 15)
    assert one.latency_us[2] == (43840, 4) and sum(n for _, n in one.latency_us) == 23


def test_output_without_the_result_line_is_an_error() -> None:
    with pytest.raises(BenchError, match="wrk printed no result"):
        parse_output("Running 1s test @ http://127.0.0.1:1\n  0 requests in 1.00s\n")


def test_rounds_merge_into_one_row_with_exact_percentiles() -> None:
    """Percentiles come from the merged latency histograms, not averages of each round's."""
    fast = WrkRound(4, 1.0, 0, dict.fromkeys(("connect", "read", "write", "timeout"), 0), [(1000, 4)])
    slow = WrkRound(6, 2.0, 2, {"connect": 0, "read": 1, "write": 0, "timeout": 0}, [(3000, 5), (9000, 1)])
    row = summarize_rounds("balanced", 32, [fast, slow])
    assert row["errors_by_kind"] == {"non2xx": 2, "connect": 0, "read": 1, "write": 0, "timeout": 0}
    assert row["p50_ms"] == 3.0 and row["p99_ms"] == pytest.approx(8.46)  # numpy's linear rule over 10 values
    assert (row["requests"], row["errors"]) == (10, 3)
    assert row["throughput_rps"] == pytest.approx(7 / 3.0)  # a read error is no answer
    assert row["throughput_rps_rounds"] == [4.0, 1.5]
    parsed = LoadRow.model_validate(row)
    assert (parsed.answered, parsed.p99_ms) == (7, row["p99_ms"])


@pytest.mark.load
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_a_real_wrk_run_against_the_service_counts_non_2xx_answers_as_errors(tmp_path: Path) -> None:
    """Two PNGs and one upload that is no image, cycled by one connection for 1 s: every third answer is a 4xx."""
    write_model_version(tmp_path / "repo", TinyWeights.random(0))
    bodies = [multipart_body(png_bytes(1)), multipart_body(png_bytes(2)), multipart_body(b"not an image")]
    with serving(tmp_path / "repo") as server:
        one = run_wrk(server.url + "/classify?mode=balanced", bodies, HEADERS["content-type"], 1, 1)
    assert one.responses > 3 and sum(one.socket_errors.values()) == 0
    # In order on one connection, every third body is the bad one (wrk may take the first body for its own
    # check of the script, so the cycle's phase is not known: the count is n // 3 or one more).
    assert one.responses // 3 <= one.non2xx <= -(-one.responses // 3)
    assert one.latency_us and all(value > 0 and n > 0 for value, n in one.latency_us)
    row = summarize_rounds("balanced", 1, [one])
    assert row["errors"] == one.non2xx and 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
