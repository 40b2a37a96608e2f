"""Typed parameters: one frozen dataclass per params.yaml section, and the check that params.yaml is fresh.

`conf/` is the source of truth; `params.yaml` is its Hydra composition, written by `dvc exp run` (or
`slmforge compose`). A stage loads only its own sections; an unknown or missing key is an error.

By concern: train.py (model, lora, train, scorer, domains), evaluate.py (eval), data.py (clean .. split),
sources.py (sources.*), oracle.py (oracle, rubric, calibration); load.py reads params.yaml into them and
compose.py composes conf/ and checks that params.yaml is fresh. Every name is importable from slmforge.params.
"""

from slmforge.params.compose import (OVERRIDES_HEADER, check_params_fresh, compose, compose_to_file,
                                     composed_overrides)
from slmforge.params.data import (ChatmlParams, CleanParams, DedupParams, LabelParams, LanguageParams,
                                  NormaliseParams, PiiParams, RuleParams, SplitParams, SynthesizeParams,
                                  ToxicityParams)
from slmforge.params.evaluate import EvalParams, JudgeParams, NumericsParams, VerdictParams
from slmforge.params.load import (SECTIONS, SOURCE_PARAMS, as_dict, build, load_domain_params, load_domains,
                                  load_params, load_source_params, read_params_file)
from slmforge.params.oracle import (CalibrationParams, CalibrationThresholds, DimensionParams, GatekeeperParams,
                                    OracleParams, RubricParams)
from slmforge.params.sources import (ApifyParentParams, ApifySourceParams, ArxivSourceParams, CollectCodeParams,
                                     FilesSourceParams, HfSourceParams, HttpParams, SampleSourceParams,
                                     StackExchangeSourceParams, TweetFilterParams)
from slmforge.params.train import (DomainParams, LoraParams, ModelParams, OptimParams, ScorerParams,
                                   ScorerVerdictParams, TrainParams)

__all__ = [
    "ApifyParentParams", "ApifySourceParams", "ArxivSourceParams", "CalibrationParams", "CalibrationThresholds",
    "ChatmlParams", "CleanParams", "CollectCodeParams", "DedupParams", "DimensionParams", "DomainParams",
    "EvalParams", "FilesSourceParams", "GatekeeperParams", "HfSourceParams", "HttpParams", "JudgeParams",
    "LabelParams", "LanguageParams", "LoraParams", "ModelParams", "NormaliseParams", "NumericsParams",
    "OVERRIDES_HEADER", "OptimParams", "OracleParams", "PiiParams", "RubricParams", "RuleParams", "SECTIONS",
    "SOURCE_PARAMS", "SampleSourceParams", "ScorerParams", "ScorerVerdictParams", "SplitParams",
    "StackExchangeSourceParams", "SynthesizeParams", "ToxicityParams", "TrainParams", "TweetFilterParams",
    "VerdictParams", "as_dict", "build", "check_params_fresh", "compose", "compose_to_file", "composed_overrides",
    "load_domain_params", "load_domains", "load_params", "load_source_params", "read_params_file"
]
