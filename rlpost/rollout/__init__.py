"""The rollout side of the RL cycle: the schedule (which prompts, seeds and policy version make each step's batch),
scoring, held-out evaluation, and the pipeline that runs them with any lookahead (``rollout.async_level``)."""
from rlpost.rollout.pipeline import JobResult, RolloutPipeline, snapshot  # noqa: F401
from rlpost.rollout.schedule import (RolloutJob, assign_group_ids, behaviour_version, check_async,  # noqa: F401
                                     derived_seed, is_settings, sampling_params)
from rlpost.rollout.scoring import Scorer  # noqa: F401
