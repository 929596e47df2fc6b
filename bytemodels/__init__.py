"""bytemodels: small byte-level generative models (MEGABYTE) for any modality."""

from bytemodels import tokens
from bytemodels.checkpoint import CheckpointError
from bytemodels.config import PRESETS, MegabyteConfig
from bytemodels.data import ByteDataset, DataCacheError, record_prompt
from bytemodels.model import Megabyte, MegabyteOutput
from bytemodels.pretrained import ModelFileError
from bytemodels.runfolder import RunFolderError
from bytemodels.train import TrainConfig, Trainer, TrainingDiverged, TrainSummary

__all__ = [
    "ByteDataset",
    "CheckpointError",
    "DataCacheError",
    "Megabyte",
    "MegabyteConfig",
    "MegabyteOutput",
    "ModelFileError",
    "PRESETS",
    "RunFolderError",
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "TrainingDiverged",
    "record_prompt",
    "tokens",
]
__version__ = "0.1.0"
