"""bytemodels: small byte-level generative models (MEGABYTE) for any modality."""

from bytemodels import tokens
from bytemodels.config import PRESETS, MegabyteConfig
from bytemodels.model import Megabyte, MegabyteOutput
from bytemodels.pretrained import ModelFileError

__all__ = ["Megabyte", "MegabyteConfig", "MegabyteOutput", "ModelFileError", "PRESETS", "tokens"]
__version__ = "0.1.0"
