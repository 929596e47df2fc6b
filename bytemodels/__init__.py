"""bytemodels: small byte-level generative models (MEGABYTE) for any modality."""

from bytemodels import tokens
from bytemodels.binary import CompressedFileError
from bytemodels.checkpoint import CheckpointError
from bytemodels.compress import compress, decompress  # the functions shadow the module name
from bytemodels.config import PRESETS, MegabyteConfig
from bytemodels.data import ByteDataset, DataCacheError, record_prompt
from bytemodels.model import Megabyte, MegabyteOutput
from bytemodels.pretrained import ModelFileError
from bytemodels.runfolder import RunFolderError
from bytemodels.train import TrainConfig, Trainer, TrainingDiverged, TrainSummary

__all__ = [
    "ByteDataset",
    "CheckpointError",
    "CompressedFileError",
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
    "compress",
    "decompress",
    "record_prompt",
    "tokens",
]
__version__ = "0.1.0"
