"""Token ids the core model sees.

Ids 0-255 are byte values and every one of them is data (0x00 is audio silence, a black pixel).
Special ids come after the bytes, so nothing is ever padded with a byte value:

====================  ==========================================================
id                    meaning
====================  ==========================================================
0 ... 255             the byte values
256 (``PAD_ID``)      padding; ignored by the loss, never generated
257 (``BOS_ID``)      begin of a document
258 (``EOS_ID``)      end of a document; generation stops here
259 ... (``tag_id``)  modality tags, claimed by codecs through a tag index
====================  ==========================================================
"""

from __future__ import annotations

NUM_BYTES = 256
PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
FIRST_TAG_ID = 259
#: How many modality tags the default vocabulary reserves (259 ... 271): vocabulary size 272.
DEFAULT_NUM_TAGS = 13


def tag_id(index: int, num_tags: int = DEFAULT_NUM_TAGS) -> int:
    """Token id of modality tag ``index`` (a codec's ``tag``), checked against the vocabulary."""
    if not 0 <= index < num_tags:
        raise ValueError(f"modality tag index {index} is outside 0..{num_tags - 1}")
    return FIRST_TAG_ID + index


def vocab_size(num_tags: int = DEFAULT_NUM_TAGS) -> int:
    """Vocabulary size: 256 bytes, PAD, BOS, EOS and ``num_tags`` modality tags."""
    return FIRST_TAG_ID + num_tags


def is_special(token: int) -> bool:
    """True for ids that are not byte values."""
    return token >= NUM_BYTES
