"""Config names -> objective classes (``objective.type``)."""

from __future__ import annotations

from blackbox.evals.activation import (
    FeatureDirectionObjective,
    LpFeaturesObjective,
    NeuronObjective,
    ResidualDirectionObjective,
)
from blackbox.evals.base import Objective
from blackbox.evals.behaviour import BehaviourMatching, ReferenceObjective
from blackbox.evals.classification import Classification
from blackbox.evals.fluency import FluencyObjective
from blackbox.evals.lm_eval_task import LMEvalTask
from blackbox.evals.logit import LogitObjective
from blackbox.registry import Registry

OBJECTIVES: Registry[Objective] = Registry("objective", required=("from_config",))
for _name, _cls in (
    ("lm_eval_task", LMEvalTask),
    ("classification", Classification),
    ("behaviour", BehaviourMatching),
    ("reference", ReferenceObjective),
    ("neuron", NeuronObjective),
    ("residual_direction", ResidualDirectionObjective),
    ("feature_direction", FeatureDirectionObjective),
    ("lp_features", LpFeaturesObjective),
    ("logit", LogitObjective),
    ("fluency", FluencyObjective),
):
    OBJECTIVES.add(_cls, _name)
