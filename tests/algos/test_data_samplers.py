"""The one prompt-sampler registry (rlpost/algos/data_samplers.py) and the builder of rlpost/samplers.py."""
import sys

import pytest

import rlpost.algos  # noqa: F401  (registers every sampler)
import rlpost.samplers  # noqa: F401
import rlpost.trainer  # noqa: F401  (imports everything the training loop wires)
from rlpost.algos.data_samplers import DATA_SAMPLERS, RandomSampler, UniformSampler
from rlpost.config import ConfigError
from rlpost.registry import Registry
from rlpost.samplers import PendingScores, build_sampler


def test_one_registry_holds_each_sampler_name_once():
    modules = [m for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("rlpost")]
    registries = {id(obj): obj for m in modules for obj in vars(m).values()
                  if isinstance(obj, Registry) and "sampler" in obj.kind}
    assert list(registries.values()) == [DATA_SAMPLERS]
    names = DATA_SAMPLERS.names()
    assert {"uniform", "random", "gain_rl"} <= set(names)
    classes = [DATA_SAMPLERS.get(n) for n in names]
    assert len(set(classes)) == len(classes), "a sampler class is registered under two names"


@pytest.mark.parametrize("name, cls, stream, state", [
    # pinned from the two samplers before they were merged: the streams (and checkpoint keys) did not change
    ("uniform", UniformSampler, [0, 2, 1, 3, 4, 1, 3], {"epoch": 1, "position": 2}),
    ("random", RandomSampler, [1, 0, 3, 4, 2, 0, 3], {"epoch": 1, "pos": 2}),
])
def test_config_names_build_the_same_streams_as_before(name, cls, stream, state):
    s = build_sampler(name, 5, 3, True)
    assert type(s) is cls
    assert s.next_indices(3) + s.next_indices(4) == stream and s.state_dict() == state
    resumed = build_sampler({"name": name}, 5, 3, True)
    resumed.load_state_dict(state)
    assert resumed.next_indices(6) == s.next_indices(6)


@pytest.mark.parametrize("name", ["uniform", "random"])
def test_shuffle_dataset_false_keeps_dataset_order(name):
    assert build_sampler(name, 5, 3, False).next_indices(7) == [0, 1, 2, 3, 4, 0, 1]


def test_builder_errors_and_pending_scores():
    with pytest.raises(ConfigError, match="unknown sampler 'unifrom'.*uniform"):
        build_sampler("unifrom", 5, 0, True)
    with pytest.raises(ConfigError, match="unknown key data.sampler \\(uniform\\).oops"):
        build_sampler({"name": "uniform", "oops": 1}, 5, 0, True)
    assert isinstance(build_sampler("gain_rl", 5, 0, True), PendingScores)
