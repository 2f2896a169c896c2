"""Config names -> objective classes (``objective.type``): one line per objective.

An objective is registered by its config section (:mod:`blackbox.evals.sections`; its ``type``
literal is the name) and the path of its class, imported when a study first asks for it.  The
study schema's ``objective:`` is assembled from this registry
(:func:`blackbox.config.schema.study_schema`) in this order, the order messages list them in.
A user's own objective registers its class: ``OBJECTIVES.add(MyObjective, "my_objective")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blackbox.evals import sections as s
from blackbox.registry import Registry

if TYPE_CHECKING:
    from blackbox.evals.base import Objective

OBJECTIVES: Registry[Objective] = Registry("objective", required=("from_config",), sections=True)
OBJECTIVES.add_lazy(s.LmEvalTaskObjectiveConfig, "blackbox.evals.lm_eval_task:LMEvalTask")
OBJECTIVES.add_lazy(s.ClassificationObjectiveConfig, "blackbox.evals.classification:Classification")
OBJECTIVES.add_lazy(s.BehaviourObjectiveConfig, "blackbox.evals.behaviour:BehaviourMatching")
OBJECTIVES.add_lazy(s.ReferenceObjectiveConfig, "blackbox.evals.behaviour:ReferenceObjective")
OBJECTIVES.add_lazy(s.NeuronObjectiveConfig, "blackbox.evals.activation:NeuronObjective")
OBJECTIVES.add_lazy(
    s.DirectionObjectiveConfig, "blackbox.evals.activation:ResidualDirectionObjective"
)
OBJECTIVES.add_lazy(s.FeatureObjectiveConfig, "blackbox.evals.activation:FeatureDirectionObjective")
OBJECTIVES.add_lazy(s.LpFeaturesObjectiveConfig, "blackbox.evals.activation:LpFeaturesObjective")
OBJECTIVES.add_lazy(s.LogitObjectiveConfig, "blackbox.evals.logit:LogitObjective")
OBJECTIVES.add_lazy(s.FluencyObjectiveConfig, "blackbox.evals.fluency:FluencyObjective")
