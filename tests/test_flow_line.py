import json

import pytest

from batchscope import ConfigError
from batchscope.flow import Line, Station, capacity, example_line, load_line, make_line


def test_capacity_formula():
    # B / (setup + B p): 5 / (10 + 5*2) = 0.25; two resources double it.
    assert capacity(10.0, 2.0, 5) == pytest.approx(0.25)
    assert capacity(10.0, 2.0, 5, resources=2) == pytest.approx(0.5)
    assert capacity(0.0, 2.0, 1) == pytest.approx(0.5)
    # Set-up matters less as the batch grows: capacity rises toward 1/p and stays below it.
    caps = [capacity(30.0, 2.0, b) for b in (1, 10, 100, 10_000)]
    assert caps == sorted(caps)
    assert caps[-1] < 0.5 and caps[-1] == pytest.approx(0.5, rel=2e-3)


def test_bottleneck_moves_with_the_process_batch():
    line = make_line([1.0, 2.0], 100, setups=[60.0, 0.0], process_batch=10, names=["long setup", "slow"])
    # B=10: 10/70 = 0.143 vs 10/20 = 0.5; B=100: 100/160 = 0.625 vs 0.5.
    assert line.capacities() == pytest.approx([10 / 70, 0.5])
    assert line.stations[line.bottleneck()].name == "long setup"
    assert line.stations[line.with_(process_batch=100).bottleneck()].name == "slow"


def test_defaults_and_ragged_batches():
    assert make_line([1.0], 3, distribution="exponential").stations[0].cv == 1.0
    line = make_line([1.0], 10, process_batch=4)
    assert line.transfer_batch == 4
    assert line.process_batches() == [(0, 4), (4, 8), (8, 10)]
    assert make_line([1.0], 10).process_batch == 10


@pytest.mark.parametrize("build, message", [
    (lambda: Line((), 10), r"The line 'line' has no stations\. Give at least one station"),
    (lambda: make_line([1.0, 2.0], 10, process_batch=4, transfer_batch=5),
     r"The transfer batch of line \(5\) is larger than the process batch \(4\); .* at most 4\."),
    (lambda: make_line([1.0, 2.0], 10, setups=[1.0, -3.0]),
     r"The 'setup' parameter of station 'S2' must be a non-negative finite number \(a time\)\. Got -3\.0 instead\."),
    (lambda: make_line([1.0, -2.0], 10),
     r"The 'unit_time' parameter of station 'S2' must be a positive finite number \(a time\)\. Got -2\.0 instead\."),
    (lambda: make_line([1.0], 5, process_batch=6),
     r"The process batch \(6\) is larger than the order quantity \(5\)\. Use a process batch of at most 5\."),
    (lambda: make_line([1.0], 0), r"The 'order_quantity' parameter of line 'line' must be a positive integer\. Got 0"),
    (lambda: make_line([1.0], 5, distribution="weibull"), r"must be one of deterministic, exponential"),
    (lambda: make_line([1.0], 5, distribution="uniform", cv=0.9), r"needs 0 < cv <= 1/sqrt\(3\)"),
    (lambda: make_line([1.0], 5, distribution="lognormal"), r"needs cv > 0 .* use distribution 'deterministic'"),
    (lambda: make_line([1.0], 5, cv=0.3), r"A cv of 0\.3 of station 'S1' needs a random distribution"),
    (lambda: make_line([1.0], 5, distribution="exponential", cv=0.5),
     r"The exponential distribution of station 'S1' has cv = 1"),
    (lambda: make_line([1.0, 1.0], 5, names=["a", "a"]), r"Station names must be unique\. Got \['a', 'a'\]"),
    (lambda: make_line([1.0, 1.0], 5, setups=[1.0]), r"Give one value per station for 'setups': 2 station"),
    (lambda: Station("s", 1.0, resources=0), r"The 'resources' parameter of station 's' must be a positive integer"),
])
def test_bad_lines_say_what_and_how_to_fix(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_dict_round_trip_and_unknown_fields():
    line = example_line()
    assert Line.from_dict(json.loads(json.dumps(line.to_dict()))) == line
    d = line.to_dict()
    d["stations"][0]["speed"] = 3
    with pytest.raises(ConfigError, match=r"station 'saw' has unknown field\(s\) \['speed'\]"):
        Line.from_dict(d)
    with pytest.raises(ConfigError, match=r"The line has unknown field\(s\) \['oops'\]"):
        Line.from_dict({**line.to_dict(), "oops": 1})


TOML = """
name = "cell"
order_quantity = 12
process_batch = 6
transfer_batch = 3

[[stations]]
name = "cut"
unit_time = 1.0
setup = 4

[[stations]]
name = "weld"
unit_time = 2.0
resources = 2
distribution = "gamma"
cv = 0.3
"""


def test_load_toml_and_json(tmp_path):
    toml_path = tmp_path / "line.toml"
    toml_path.write_text(TOML)
    line = load_line(toml_path)
    assert (line.name, line.order_quantity, line.process_batch, line.transfer_batch) == ("cell", 12, 6, 3)
    assert line.stations[1] == Station("weld", 2.0, resources=2, distribution="gamma", cv=0.3)
    json_path = tmp_path / "line.json"
    json_path.write_text(json.dumps(line.to_dict()))
    assert load_line(json_path) == line


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist\. Give a \.toml or \.json file, or use --example"):
        load_line(tmp_path / "missing.toml")
    (tmp_path / "line.yaml").write_text("x: 1")
    with pytest.raises(ConfigError, match=r"must end in \.toml or \.json\. Got 'line\.yaml'"):
        load_line(tmp_path / "line.yaml")
    (tmp_path / "bad.toml").write_text("order_quantity = = 3")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_line(tmp_path / "bad.toml")
    (tmp_path / "empty.toml").write_text("order_quantity = 3\nstations = []\n")
    with pytest.raises(ConfigError, match=r"has no stations"):
        load_line(tmp_path / "empty.toml")
